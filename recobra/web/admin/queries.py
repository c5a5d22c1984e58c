"""What the dashboard reads: plain queries on the tables (writes go through the engine).

Every function takes an open SQLAlchemy ``Session`` and returns plain data.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from recobra.domain.case import CaseStatus
from recobra.domain.money import CURRENCY_EXPONENTS
from recobra.store.tables import (
    AttemptRow,
    CaseEventRow,
    CaseRow,
    ContactPreferenceRow,
    CustomerRow,
    ExitSurveyRow,
    MessageRow,
    PaymentMethodRow,
    PlanRow,
    PolicyVersionRow,
    SubscriptionRow,
)

ACTIVE = (CaseStatus.OPEN.value, CaseStatus.EXHAUSTED.value)
LOST = (CaseStatus.FINAL_ACTION_DONE.value, CaseStatus.WRITTEN_OFF.value, CaseStatus.CANCELED.value)
"""Closed without the money: the final action, a write-off, or the customer canceled."""
CLOSED = (CaseStatus.RECOVERED.value, CaseStatus.PAID_OUT_OF_BAND.value, *LOST)


# ---------------------------------------------------------------- overview


@dataclass(slots=True)
class Overview:
    open_cases: int = 0
    at_risk: dict[str, int] = field(default_factory=dict)
    """Currency -> minor units owed on open and exhausted cases."""
    recovered: int = 0
    recovered_amount: dict[str, int] = field(default_factory=dict)
    closed: int = 0
    """Cases closed in the period (the recovery rate's denominator)."""
    final_actions: dict[str, int] = field(default_factory=dict)
    """Final action -> cases where it was done in the period."""

    @property
    def rate(self) -> float | None:
        return self.recovered / self.closed if self.closed else None


def overview(session: Session, start: datetime) -> Overview:
    out = Overview()
    for currency, count, amount in session.execute(
        select(CaseRow.currency, func.count(), func.sum(CaseRow.amount_minor))
        .where(CaseRow.status.in_(ACTIVE))
        .group_by(CaseRow.currency)
    ):
        out.open_cases += count
        out.at_risk[currency] = int(amount or 0)
    in_period = CaseRow.closed_at >= start
    for status, currency, count, amount in session.execute(
        select(CaseRow.status, CaseRow.currency, func.count(), func.sum(CaseRow.amount_minor))
        .where(in_period, CaseRow.status.in_(CLOSED))
        .group_by(CaseRow.status, CaseRow.currency)
    ):
        out.closed += count
        if status == CaseStatus.RECOVERED:
            out.recovered += count
            out.recovered_amount[currency] = int(amount or 0)
    for action, count in session.execute(
        select(CaseRow.final_action, func.count())
        .where(in_period, CaseRow.status == CaseStatus.FINAL_ACTION_DONE.value)
        .group_by(CaseRow.final_action)
    ):
        out.final_actions[action or "unknown"] = count
    return out


def closed_by_bucket(
    session: Session, start: datetime, end: datetime, bucket: timedelta
) -> tuple[list[datetime], list[int], list[int]]:
    """Bucket starts, cases recovered and cases lost in each (closed between start and end)."""
    n = max(1, -(-int((end - start).total_seconds()) // int(bucket.total_seconds())))
    starts = [start + bucket * i for i in range(n)]
    recovered, lost = [0] * n, [0] * n
    rows = session.execute(
        select(CaseRow.closed_at, CaseRow.status).where(
            CaseRow.closed_at >= start,
            CaseRow.closed_at < end,
            CaseRow.status.in_((CaseStatus.RECOVERED.value, *LOST)),
        )
    )
    for closed_at, status in rows:
        index = min(int((closed_at - start) / bucket), n - 1)
        if status == CaseStatus.RECOVERED:
            recovered[index] += 1
        else:
            lost[index] += 1
    return starts, recovered, lost


def outcomes_by_category(session: Session, start: datetime) -> dict[str, dict[str, int]]:
    """For cases opened since ``start``: first decline category -> outcome -> cases.
    Outcomes are ``recovered``, ``lost``, ``open`` and ``other`` (paid out of band)."""
    first = select(AttemptRow.case_id, AttemptRow.category).where(AttemptRow.number == 0).subquery()
    rows = session.execute(
        select(func.coalesce(first.c.category, CaseRow.last_category), CaseRow.status, func.count())
        .select_from(CaseRow)
        .outerjoin(first, first.c.case_id == CaseRow.id)
        .where(CaseRow.opened_at >= start)
        .group_by(func.coalesce(first.c.category, CaseRow.last_category), CaseRow.status)
    )
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for category, status, count in rows:
        outcome = (
            "recovered"
            if status == CaseStatus.RECOVERED
            else "lost"
            if status in LOST
            else "open"
            if status in ACTIVE
            else "other"
        )
        out[category or "unknown"][outcome] += count
    return {k: dict(v) for k, v in sorted(out.items())}


# ---------------------------------------------------------------- cases


@dataclass(frozen=True, slots=True)
class CaseFilters:
    status: str | None = None
    segment: str | None = None
    category: str | None = None
    amount_min: Decimal | None = None
    amount_max: Decimal | None = None
    customer_id: str | None = None


def _minor(value: Decimal) -> Any:
    """``value`` major units as minor units of each case's own currency (SQL)."""
    whens = [
        (CaseRow.currency == code, int(value * 10**exp))
        for code, exp in CURRENCY_EXPONENTS.items()
        if exp != 2
    ]
    return case(*whens, else_=int(value * 100))


def _case_conditions(f: CaseFilters) -> list[Any]:
    where: list[Any] = []
    if f.status:
        where.append(CaseRow.status == f.status)
    if f.segment:
        where.append(CaseRow.segment == f.segment)
    if f.category:
        where.append(CaseRow.last_category == f.category)
    if f.amount_min is not None:
        where.append(CaseRow.amount_minor >= _minor(f.amount_min))
    if f.amount_max is not None:
        where.append(CaseRow.amount_minor <= _minor(f.amount_max))
    if f.customer_id:
        where.append(CaseRow.customer_id == f.customer_id)
    return where


def cases(session: Session, f: CaseFilters, *, page: int, per_page: int) -> tuple[list[CaseRow], int]:
    """One page of cases (newest first) and how many match in all."""
    where = _case_conditions(f)
    total = session.scalar(select(func.count()).select_from(CaseRow).where(*where)) or 0
    rows = session.scalars(
        select(CaseRow)
        .where(*where)
        .order_by(CaseRow.opened_at.desc(), CaseRow.id.desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    return list(rows), int(total)


def segments(session: Session) -> list[str]:
    return list(session.scalars(select(CaseRow.segment).distinct().order_by(CaseRow.segment)))


@dataclass(frozen=True, slots=True)
class TimelineItem:
    at: datetime
    what: str
    """``event``, ``attempt`` or ``message``."""
    title: str
    detail: str
    status: str = ""


def timeline(session: Session, case_id: str) -> list[TimelineItem]:
    """The case's events (with their reasons), attempts and messages in time order."""
    items: list[tuple[datetime, int, int, TimelineItem]] = []
    for e in session.scalars(select(CaseEventRow).where(CaseEventRow.case_id == case_id)):
        title = e.kind.replace("_", " ")
        if e.to_status:
            title += f": {e.from_status} → {e.to_status}"
        items.append((e.at, 1, e.id, TimelineItem(e.at, "event", title, e.reason)))
    for a in session.scalars(select(AttemptRow).where(AttemptRow.case_id == case_id)):
        label = {0: "billing system's charge", -1: "charge outside Recobra"}.get(
            a.number, f"attempt {a.number}"
        )
        detail = f"{a.trigger}; card {a.payment_method_id}"
        if a.category:
            detail += f"; decline {a.category} ({a.code or a.network_code or 'no code'})"
        items.append((a.at, 0, a.id, TimelineItem(a.at, "attempt", label, detail, a.status)))
    for m in session.scalars(select(MessageRow).where(MessageRow.case_id == case_id)):
        at = m.sent_at or m.due_at or m.created_at
        times = []
        if m.due_at:
            times.append(f"due {m.due_at:%Y-%m-%d %H:%M}")
        if m.sent_at:
            times.append(f"sent {m.sent_at:%Y-%m-%d %H:%M}")
        if m.clicked_at:
            times.append(f"clicked {m.clicked_at:%Y-%m-%d %H:%M}")
        detail = "; ".join(times) + (f". {m.reason}" if m.reason else "")
        title = f"{m.kind.replace('_', ' ')} by {m.channel}"
        items.append((at, 2, m.id, TimelineItem(at, "message", title, detail, m.status)))
    items.sort(key=lambda t: (t[0], t[1], t[2]))
    return [t[3] for t in items]


# ---------------------------------------------------------------- customers


def customers(session: Session, q: str, *, page: int, per_page: int) -> tuple[list[Any], int]:
    """Customers whose email contains ``q`` or whose id starts with it; with their case counts."""
    where: list[Any] = []
    if q:
        like = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(
            or_(
                func.lower(CustomerRow.email).like(f"%{like}%", escape="\\"),
                CustomerRow.id.like(f"{like}%", escape="\\"),
                CustomerRow.id == q,
            )
        )
    total = session.scalar(select(func.count()).select_from(CustomerRow).where(*where)) or 0
    open_cases = (
        select(func.count())
        .where(CaseRow.customer_id == CustomerRow.id, CaseRow.status.in_(ACTIVE))
        .scalar_subquery()
    )
    rows = session.execute(
        select(CustomerRow, open_cases.label("open_cases"))
        .where(*where)
        .order_by(CustomerRow.id)
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    return list(rows), int(total)


@dataclass(slots=True)
class CustomerView:
    customer: CustomerRow
    subscriptions: list[tuple[SubscriptionRow, PlanRow]]
    methods: list[PaymentMethodRow]
    cases: list[CaseRow]
    preferences: ContactPreferenceRow | None


def customer(session: Session, customer_id: str) -> CustomerView | None:
    row = session.get(CustomerRow, customer_id)
    if row is None:
        return None
    subs = session.execute(
        select(SubscriptionRow, PlanRow)
        .join(PlanRow, PlanRow.id == SubscriptionRow.plan_id)
        .where(SubscriptionRow.customer_id == customer_id)
        .order_by(SubscriptionRow.started_at)
    ).all()
    methods = session.scalars(
        select(PaymentMethodRow)
        .where(PaymentMethodRow.customer_id == customer_id)
        .order_by(PaymentMethodRow.id)
    ).all()
    case_rows = session.scalars(
        select(CaseRow)
        .where(CaseRow.customer_id == customer_id)
        .order_by(CaseRow.opened_at.desc())
        .limit(100)
    ).all()
    return CustomerView(
        row,
        [(s, p) for s, p in subs],
        list(methods),
        list(case_rows),
        session.get(ContactPreferenceRow, customer_id),
    )


# ---------------------------------------------------------------- policies and surveys


def policy_versions(session: Session) -> list[PolicyVersionRow]:
    """Newest first."""
    return list(session.scalars(select(PolicyVersionRow).order_by(PolicyVersionRow.version.desc())))


def survey_reasons(session: Session, start: datetime) -> dict[str, int]:
    rows = session.execute(
        select(ExitSurveyRow.reason, func.count())
        .where(ExitSurveyRow.created_at >= start)
        .group_by(ExitSurveyRow.reason)
        .order_by(func.count().desc(), ExitSurveyRow.reason)
    )
    return {str(key): int(count) for key, count in rows.all()}


def survey_reasons_over_time(
    session: Session, start: datetime, end: datetime, bucket: timedelta
) -> tuple[list[datetime], dict[str, list[int]]]:
    """Bucket starts, and for each reason its answers in each bucket."""
    n = max(1, -(-int((end - start).total_seconds()) // int(bucket.total_seconds())))
    starts = [start + bucket * i for i in range(n)]
    out: dict[str, list[int]] = {}
    rows = session.execute(
        select(ExitSurveyRow.reason, ExitSurveyRow.created_at).where(
            ExitSurveyRow.created_at >= start, ExitSurveyRow.created_at < end
        )
    )
    for reason, at in rows:
        index = min(int((at - start) / bucket), n - 1)
        out.setdefault(reason, [0] * n)[index] += 1
    return starts, dict(sorted(out.items()))


def survey_outcomes(session: Session, start: datetime) -> dict[str, int]:
    rows = session.execute(
        select(ExitSurveyRow.outcome, func.count())
        .where(ExitSurveyRow.created_at >= start)
        .group_by(ExitSurveyRow.outcome)
    )
    return {str(key): int(count) for key, count in rows.all()}


def survey_comments(session: Session, start: datetime, *, limit: int = 200) -> list[ExitSurveyRow]:
    """Answers with a comment, newest first."""
    return list(
        session.scalars(
            select(ExitSurveyRow)
            .where(ExitSurveyRow.created_at >= start, ExitSurveyRow.comment != "")
            .order_by(ExitSurveyRow.created_at.desc(), ExitSurveyRow.id.desc())
            .limit(limit)
        )
    )
