"""SQLAlchemy implementation of the store port, for SQLite and PostgreSQL.

Statements are SQLAlchemy Core on the mapped tables, in batches (``executemany``),
because a tick acts on hundreds of cases at once. Rows are translated to domain
objects here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from recobra.domain.case import CaseEvent, CaseStatus, DunningCase, FinalAction, NextAction
from recobra.domain.declines import Decline, DeclineCategory, classify
from recobra.domain.model import (
    Attempt,
    AttemptStatus,
    AttemptTrigger,
    Customer,
    Funding,
    Invoice,
    InvoiceStatus,
    PaymentMethod,
    Subscription,
    SubscriptionStatus,
)
from recobra.domain.money import Money
from recobra.domain.network import PriorAttempt
from recobra.ports import CaseBundle
from recobra.store.tables import (
    AttemptRow,
    CaseEventRow,
    CaseRow,
    CustomerRow,
    InvoiceRow,
    PaymentMethodRow,
    PlanRow,
    ProcessedEventRow,
    SubscriptionRow,
)

CARD_HISTORY = timedelta(days=30)
ACTIVE = [CaseStatus.OPEN.value, CaseStatus.EXHAUSTED.value]

cases_t = CaseRow.__table__
attempts_t = AttemptRow.__table__
events_t = CaseEventRow.__table__


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # One writer at a time: take the write lock at BEGIN, not at the first
            # write, so two processes never deadlock upgrading their locks.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own is off).
        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True)


def _upsert(conn: Connection, table: Any, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    if not rows:
        return
    dialect = conn.dialect.name
    ins: Any = (postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table))
    cols = [c for c in rows[0] if c not in keys]
    stmt = ins.on_conflict_do_update(
        index_elements=list(keys), set_={c: getattr(ins.excluded, c) for c in cols}
    )
    conn.execute(stmt, rows)


def _decline(category: str | None, code: str | None, network: str | None,
             advice: str | None) -> Decline:
    decline = classify(code or None, network_code=network, advice_code=advice)
    if category and decline.category.value != category:
        decline = replace(decline, category=DeclineCategory(category))
    return decline


def _case_from_row(r: Row[Any]) -> DunningCase:
    return DunningCase(
        id=r.id, invoice_id=r.invoice_id, customer_id=r.customer_id,
        subscription_id=r.subscription_id, amount=Money(r.amount_minor, r.currency),
        opened_at=r.opened_at, policy_name=r.policy_name, policy_version=r.policy_version,
        segment=r.segment, payment_method_id=r.payment_method_id,
        last_decline=_decline(r.last_category, r.last_code, r.last_network_code,
                              r.last_advice_code),
        last_attempt_at=r.last_attempt_at, status=CaseStatus(r.status), attempts=r.attempts,
        budget_used=r.budget_used, errors_in_row=r.errors_in_row,
        next_action=NextAction(r.next_action) if r.next_action else None,
        next_action_at=r.next_action_at, next_action_reason=r.next_action_reason,
        closed_at=r.closed_at,
        final_action=FinalAction(r.final_action) if r.final_action else None,
    )


def _case_values(case: DunningCase) -> dict[str, Any]:
    d = case.last_decline
    return {
        "status": case.status.value, "closed_at": case.closed_at,
        "payment_method_id": case.payment_method_id, "last_category": d.category.value,
        "last_code": d.code, "last_network_code": d.network_code,
        "last_advice_code": d.advice_code, "last_attempt_at": case.last_attempt_at,
        "attempts": case.attempts, "budget_used": case.budget_used,
        "errors_in_row": case.errors_in_row,
        "next_action": case.next_action.value if case.next_action else None,
        "next_action_at": case.next_action_at, "next_action_reason": case.next_action_reason,
        "final_action": case.final_action.value if case.final_action else None,
    }


def _event_values(events: Iterable[CaseEvent]) -> list[dict[str, Any]]:
    return [
        {"case_id": e.case_id, "at": e.at, "kind": e.kind.value, "reason": e.reason,
         "from_status": e.from_status.value if e.from_status else None,
         "to_status": e.to_status.value if e.to_status else None,
         "data": e.data or None}
        for e in events
    ]


def _attempt_from_row(r: Row[Any]) -> Attempt:
    decline = (_decline(r.category, r.code, r.network_code, r.advice_code)
               if r.category else None)
    return Attempt(r.case_id, r.number, r.payment_method_id, r.idempotency_key, r.at,
                   AttemptStatus(r.status), AttemptTrigger(r.trigger), decline,
                   r.gateway_reference)


class SqlUnitOfWork:
    """One database transaction implementing ``recobra.ports.UnitOfWork``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.conn: Connection

    def __enter__(self) -> SqlUnitOfWork:
        self.conn = self._engine.connect()
        self._tx = self.conn.begin()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._tx.is_active:
                self._tx.rollback()
        finally:
            self.conn.close()

    def commit(self) -> None:
        self._tx.commit()

    # -- events
    def remember_event(self, event_id: str, kind: str, at: datetime) -> bool:
        ins: Any = (postgresql.insert(ProcessedEventRow) if self.conn.dialect.name == "postgresql"
                    else sqlite.insert(ProcessedEventRow))
        result = self.conn.execute(
            ins.values(event_id=event_id, kind=kind, occurred_at=at).on_conflict_do_nothing()
        )
        return bool(result.rowcount)

    # -- reference data
    def upsert_customer(self, customer: Customer) -> None:
        _upsert(self.conn, CustomerRow.__table__, [{
            "id": customer.id, "email": customer.email, "name": customer.name,
            "phone": customer.phone, "locale": customer.locale, "timezone": customer.timezone,
            "country": customer.country, "created_at": customer.created_at}], ["id"])

    def upsert_payment_method(self, method: PaymentMethod) -> None:
        if method.is_default:
            self.conn.execute(
                update(PaymentMethodRow)
                .where(PaymentMethodRow.customer_id == method.customer_id,
                       PaymentMethodRow.id != method.id, PaymentMethodRow.is_default)
                .values(is_default=False))
        _upsert(self.conn, PaymentMethodRow.__table__, [{
            "id": method.id, "customer_id": method.customer_id,
            "gateway_token": method.gateway_token, "brand": method.brand,
            "last4": method.last4, "exp_month": method.exp_month, "exp_year": method.exp_year,
            "funding": method.funding.value, "is_default": method.is_default}], ["id"])

    def upsert_subscription(self, subscription: Subscription) -> None:
        plan = subscription.plan
        _upsert(self.conn, PlanRow.__table__, [{
            "id": plan.id, "name": plan.name, "interval": plan.interval.value,
            "amount_minor": plan.price.amount_minor, "currency": plan.price.currency}], ["id"])
        _upsert(self.conn, SubscriptionRow.__table__, [{
            "id": subscription.id, "customer_id": subscription.customer_id, "plan_id": plan.id,
            "status": subscription.status.value, "started_at": subscription.started_at}], ["id"])

    def upsert_invoice(self, invoice: Invoice) -> None:
        _upsert(self.conn, InvoiceRow.__table__, [{
            "id": invoice.id, "customer_id": invoice.customer_id,
            "subscription_id": invoice.subscription_id,
            "amount_minor": invoice.amount.amount_minor, "currency": invoice.amount.currency,
            "status": invoice.status.value, "created_at": invoice.created_at,
            "paid_at": None}], ["id"])

    def set_invoice_status(self, invoice_id: str, status: InvoiceStatus, at: datetime) -> None:
        values: dict[str, Any] = {"status": status.value}
        if status is InvoiceStatus.PAID:
            values["paid_at"] = at
        self.conn.execute(update(InvoiceRow).where(InvoiceRow.id == invoice_id).values(**values))

    def set_subscription_status(self, subscription_id: str, status: SubscriptionStatus) -> None:
        self.conn.execute(update(SubscriptionRow).where(SubscriptionRow.id == subscription_id)
                          .values(status=status.value))

    # -- cases
    def case_for_invoice(self, invoice_id: str) -> DunningCase | None:
        row = self.conn.execute(select(cases_t).where(cases_t.c.invoice_id == invoice_id)).first()
        return _case_from_row(row) if row else None

    def active_case_ids(self, *, customer_id: str | None = None,
                        subscription_id: str | None = None) -> list[str]:
        stmt = select(cases_t.c.id).where(cases_t.c.status.in_(ACTIVE))
        if customer_id is not None:
            stmt = stmt.where(cases_t.c.customer_id == customer_id)
        if subscription_id is not None:
            stmt = stmt.where(cases_t.c.subscription_id == subscription_id)
        return list(self.conn.scalars(stmt.order_by(cases_t.c.opened_at)))

    def load_bundles(self, case_ids: Sequence[str], now: datetime) -> list[CaseBundle]:
        if not case_ids:
            return []
        ids = list(case_ids)
        rows = self.conn.execute(select(cases_t).where(cases_t.c.id.in_(ids))).all()
        cases = [_case_from_row(r) for r in rows]
        customers = {
            r.id: Customer(id=r.id, email=r.email, locale=r.locale, timezone=r.timezone,
                           country=r.country, name=r.name, phone=r.phone,
                           created_at=r.created_at)
            for r in self.conn.execute(select(CustomerRow.__table__).where(
                CustomerRow.id.in_({c.customer_id for c in cases})))
        }
        pm_ids = {c.payment_method_id for c in cases}
        methods = {
            r.id: PaymentMethod(id=r.id, customer_id=r.customer_id, gateway_token=r.gateway_token,
                                brand=r.brand, last4=r.last4, exp_month=r.exp_month,
                                exp_year=r.exp_year, funding=Funding(r.funding),
                                is_default=r.is_default)
            for r in self.conn.execute(select(PaymentMethodRow.__table__).where(
                PaymentMethodRow.id.in_(pm_ids)))
        }
        open_attempts: dict[str, list[Attempt]] = {}
        for r in self.conn.execute(select(attempts_t).where(
                attempts_t.c.case_id.in_(ids),
                attempts_t.c.status.in_([AttemptStatus.PENDING.value,
                                         AttemptStatus.UNKNOWN.value]))):
            open_attempts.setdefault(r.case_id, []).append(_attempt_from_row(r))
        history: dict[str, list[PriorAttempt]] = {}
        for r in self.conn.execute(
                select(attempts_t.c.payment_method_id, attempts_t.c.at, attempts_t.c.status,
                       attempts_t.c.category, attempts_t.c.code, attempts_t.c.network_code,
                       attempts_t.c.advice_code)
                .where(attempts_t.c.payment_method_id.in_(pm_ids),
                       attempts_t.c.at >= now - CARD_HISTORY,
                       attempts_t.c.status != AttemptStatus.PENDING.value)):
            decline = (None if r.status == AttemptStatus.SUCCEEDED.value
                       else _decline(r.category, r.code, r.network_code, r.advice_code))
            history.setdefault(r.payment_method_id, []).append(PriorAttempt(r.at, decline))
        bundles = []
        for case in cases:
            extra = open_attempts.get(case.id, [])
            pending = next((a for a in extra if a.status is AttemptStatus.PENDING), None)
            unknown = next((a for a in extra if a.status is AttemptStatus.UNKNOWN
                            and a.number == case.attempts), None)
            bundles.append(CaseBundle(
                case=case, customer=customers[case.customer_id],
                payment_method=methods[case.payment_method_id],
                card_history=tuple(sorted(history.get(case.payment_method_id, ()),
                                          key=lambda p: p.at)),
                pending=pending, last_status_unknown=unknown))
        return bundles

    def add_case(self, case: DunningCase) -> None:
        values = _case_values(case)
        values.update(id=case.id, invoice_id=case.invoice_id, customer_id=case.customer_id,
                      subscription_id=case.subscription_id,
                      amount_minor=case.amount.amount_minor, currency=case.amount.currency,
                      opened_at=case.opened_at, policy_name=case.policy_name,
                      policy_version=case.policy_version, segment=case.segment)
        self.conn.execute(cases_t.insert(), [values])
        events = _event_values(case.collect_events())
        if events:
            self.conn.execute(events_t.insert(), events)

    def add_cases(self, cases: Sequence[DunningCase]) -> None:
        """Bulk form of ``add_case``."""
        rows, events = [], []
        for case in cases:
            values = _case_values(case)
            values.update(id=case.id, invoice_id=case.invoice_id, customer_id=case.customer_id,
                          subscription_id=case.subscription_id,
                          amount_minor=case.amount.amount_minor, currency=case.amount.currency,
                          opened_at=case.opened_at, policy_name=case.policy_name,
                          policy_version=case.policy_version, segment=case.segment)
            rows.append(values)
            events.extend(_event_values(case.collect_events()))
        if rows:
            self.conn.execute(cases_t.insert(), rows)
        if events:
            self.conn.execute(events_t.insert(), events)

    def save_cases(self, cases: Sequence[DunningCase], *, release_claims: bool) -> None:
        if not cases:
            return
        rows, events = [], []
        for case in cases:
            values = {f"v_{k}": v for k, v in _case_values(case).items()}
            values["k_id"] = case.id
            rows.append(values)
            events.extend(_event_values(case.collect_events()))
        cols = {k[2:]: bindparam(k) for k in rows[0] if k.startswith("v_")}
        if release_claims:
            cols.update(claimed_by=None, claim_expires_at=None)  # type: ignore[dict-item]
        stmt = update(cases_t).where(cases_t.c.id == bindparam("k_id")).values(**cols)
        self.conn.execute(stmt, rows)
        if events:
            self.conn.execute(events_t.insert(), events)

    def add_attempts(self, attempts: Sequence[Attempt]) -> None:
        if not attempts:
            return
        self.conn.execute(attempts_t.insert(), [_attempt_values(a) for a in attempts])

    def finish_attempts(self, attempts: Sequence[Attempt]) -> None:
        if not attempts:
            return
        rows = []
        for a in attempts:
            v = _attempt_values(a)
            rows.append({"k_key": v["idempotency_key"], "v_status": v["status"], "v_at": v["at"],
                         "v_category": v["category"], "v_code": v["code"],
                         "v_network_code": v["network_code"], "v_advice_code": v["advice_code"],
                         "v_gateway_reference": v["gateway_reference"]})
        stmt = (update(attempts_t).where(attempts_t.c.idempotency_key == bindparam("k_key"))
                .values(status=bindparam("v_status"), at=bindparam("v_at"),
                        category=bindparam("v_category"), code=bindparam("v_code"),
                        network_code=bindparam("v_network_code"),
                        advice_code=bindparam("v_advice_code"),
                        gateway_reference=bindparam("v_gateway_reference")))
        self.conn.execute(stmt, rows)

    def claim_due(self, now: datetime, *, limit: int, worker_id: str, lease: timedelta,
                  case_ids: Sequence[str] | None = None) -> list[str]:
        free = or_(cases_t.c.claim_expires_at.is_(None), cases_t.c.claim_expires_at < now)
        due = select(cases_t.c.id).where(free)
        if case_ids is not None:
            due = due.where(cases_t.c.id.in_(list(case_ids)), cases_t.c.status.in_(ACTIVE))
        else:
            due = due.where(cases_t.c.next_action_at <= now).order_by(cases_t.c.next_action_at)
        due = due.limit(limit)
        if self.conn.dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        stmt = (update(cases_t).where(and_(cases_t.c.id.in_(due.scalar_subquery()), free))
                .values(claimed_by=worker_id, claim_expires_at=now + lease)
                .returning(cases_t.c.id))
        return list(self.conn.scalars(stmt))


def _attempt_values(a: Attempt) -> dict[str, Any]:
    d = a.decline
    return {"case_id": a.case_id, "number": a.number, "payment_method_id": a.payment_method_id,
            "idempotency_key": a.idempotency_key, "at": a.at, "status": a.status.value,
            "trigger": a.trigger.value, "category": d.category.value if d else None,
            "code": d.code if d else None, "network_code": d.network_code if d else None,
            "advice_code": d.advice_code if d else None,
            "gateway_reference": a.gateway_reference}


class SqlStore:
    """The store port on a SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> SqlStore:
        return cls(make_engine(url))

    def unit_of_work(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine)

    def next_due_at(self) -> datetime | None:
        with self.engine.connect() as conn:
            value: datetime | None = conn.scalar(select(func.min(cases_t.c.next_action_at)))
            return value

    def dispose(self) -> None:
        self.engine.dispose()
