"""Shared fixtures: a migrated database per test on every configured backend, the
store and gateway on it, an engine factory and a builder for incoming events.

Backends: SQLite always (a migrated template file, copied per test); PostgreSQL
as well when ``RECOBRA_TEST_DATABASE_URL`` is set (migrated once per session,
every table truncated before each test). When that variable is set and the
server does not answer, the PostgreSQL tests fail: they never skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import OperationalError

from recobra.domain.model import (
    Customer,
    Funding,
    Interval,
    Invoice,
    InvoiceStatus,
    PaymentMethod,
    Plan,
    Subscription,
    SubscriptionStatus,
)
from recobra.domain.money import Money
from recobra.domain.schedule import HolidayCalendar, NoHolidays
from recobra.engine.commands import (
    InvoicePaidOutOfBand,
    PaymentFailed,
    PaymentMethodUpdated,
    PaymentSucceeded,
    SubscriptionCanceled,
)
from recobra.engine.service import Engine
from recobra.gateways.simulated import SimulatedGateway
from recobra.messages.links import LinkSigner
from recobra.policyfile import parse_policy
from recobra.ports import PaymentGateway
from recobra.settings import Settings
from recobra.store.migrate import upgrade
from recobra.store.sql import SqlStore, make_engine
from recobra.store.tables import Base
from recobra.web.services import Services

DATABASE_URL_ENV = "RECOBRA_TEST_DATABASE_URL"

# A Monday, midday UTC: far from any month end, so nothing below depends on paydays.
T0 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


def fixed_policy(*more_steps: str, name: str = "integration", extra: str = "") -> str:
    """A "fixed" policy: retries land exactly at opened_at + step, so tests can name
    the due times. Three retries (+1d, +3d, +6d) in a 10-day window, 2 days' grace,
    then cancel; ``more_steps`` (TOML inline tables, messages say) after them, and
    ``extra`` (more tables) after the policy."""
    retries = '{ after = "1d" }, { after = "3d" }, { after = "6d" }'
    steps = f"[\n    {retries},\n    " + ",\n    ".join(more_steps) + ",\n]" if more_steps else f"[{retries}]"
    return f"""\
name = "{name}"
version = 1
default_policy = "standard"

[policies.standard]
strategy = "fixed"
max_attempts = 3
max_days = 10
grace_days = 2
final_action = "cancel"
min_interval = "1h"
steps = {steps}
{extra}"""


TEST_POLICY = fixed_policy()


def web_services(
    store: SqlStore,
    engine: Engine,
    database_url: str,
    *,
    secret: str,
    public_url: str,
    clock: Callable[[], datetime],
    **settings: Any,
) -> Services:
    """The web application's services on the test store and engine, at ``clock``'s time."""
    return Services(
        settings=Settings(database_url=database_url, link_secret=secret, public_url=public_url, **settings),
        store=store,
        engine=engine,
        links=LinkSigner(secret, public_url),
        clock=clock,
    )


# --------------------------------------------------------------------------- databases


def _backend_params() -> list[Any]:
    params = [pytest.param("sqlite", id="sqlite")]
    if os.environ.get(DATABASE_URL_ENV):
        params.append(pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres))
    return params


def _table_names() -> list[str]:
    return [t.name for t in Base.metadata.sorted_tables]


def _probe_postgres(url: str) -> None:
    """Fail (never skip) when the configured server does not answer."""
    probe = create_engine(url, connect_args={"connect_timeout": 10})
    try:
        with probe.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        pytest.fail(f"{DATABASE_URL_ENV} is set but the server does not answer: {exc}", pytrace=False)
    finally:
        probe.dispose()


def drop_recobra_schema(url: str) -> None:
    """Drop every Recobra table and ``alembic_version`` (a stale schema never leaks in)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '10s'"))
            for name in [*reversed(_table_names()), "alembic_version"]:
                conn.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
    finally:
        engine.dispose()


def migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session; tests get copies of it."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL test database, rebuilt from scratch and migrated once per session."""
    url = os.environ.get(DATABASE_URL_ENV, "")
    if not url:
        pytest.fail(f"{DATABASE_URL_ENV} is not set", pytrace=False)
    _probe_postgres(url)
    drop_recobra_schema(url)
    migrate(url)
    return url


def _copy_sqlite(template: Path, target: Path) -> str:
    for suffix in ("", "-wal", "-shm"):
        source = template.with_name(template.name + suffix)
        if source.exists():
            shutil.copyfile(source, target.with_name(target.name + suffix))
    return f"sqlite:///{target}"


def _truncate_postgres(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '10s'"))
            names = ", ".join(f'"{n}"' for n in _table_names())
            conn.execute(text(f"TRUNCATE TABLE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(params=_backend_params())
def backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql``."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database for this test."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        return _copy_sqlite(template, tmp_path / "recobra.db")
    url: str = request.getfixturevalue("postgres_url")
    _truncate_postgres(url)
    return url


@pytest.fixture
def empty_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no Recobra schema at all (for migration tests).

    On PostgreSQL the session's database is emptied, and migrated again afterwards
    so that the tests after this one find the schema they expect.
    """
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    drop_recobra_schema(url)
    try:
        yield url
    finally:
        drop_recobra_schema(url)
        migrate(url)


# --------------------------------------------------------------------------- store, gateway, engine


@pytest.fixture
def store_factory(database_url: str) -> Iterator[Callable[[], SqlStore]]:
    """Opens more stores (own connection pools) on the test database; all disposed after."""
    stores: list[SqlStore] = []

    def make() -> SqlStore:
        store = SqlStore(make_engine(database_url))
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.dispose()


@pytest.fixture
def store(store_factory: Callable[[], SqlStore]) -> SqlStore:
    return store_factory()


@pytest.fixture
def gateway() -> Iterator[SimulatedGateway]:
    with SimulatedGateway(seed=1) as gw:
        yield gw


EngineFactory = Callable[..., Engine]


@pytest.fixture
def engine_factory(store: SqlStore, gateway: SimulatedGateway) -> EngineFactory:
    """``engine_factory(policy_text=TEST_POLICY, *, gateway=..., worker_id=..., store=..., ...)``."""

    def make(
        policy_text: str = TEST_POLICY,
        *,
        gateway: PaymentGateway = gateway,
        worker_id: str = "worker-1",
        store: SqlStore = store,
        holidays: HolidayCalendar | None = None,
        lease: timedelta = timedelta(minutes=5),
        batch_size: int = 500,
    ) -> Engine:
        return Engine(
            store,
            gateway,
            parse_policy(policy_text, "<test policy>").policies,
            holidays or NoHolidays(),
            lease=lease,
            batch_size=batch_size,
            worker_id=worker_id,
        )

    return make


@pytest.fixture
def engine(engine_factory: EngineFactory) -> Engine:
    """The engine on the test store and gateway with ``TEST_POLICY``."""
    return engine_factory()


# --------------------------------------------------------------------------- events


@dataclass
class Commands:
    """Builds incoming events with consistent ids derived from one ``key``:
    customer ``cus_<key>``, invoice ``in_<key>``, subscription ``sub_<key>``,
    card ``pm_<key>`` and the case ``case_in_<key>``. Event ids are unique unless given."""

    t0: datetime = T0
    _events: Iterator[int] = field(default_factory=count)

    def event_id(self) -> str:
        return f"evt_{next(self._events)}"

    @staticmethod
    def case_id(key: str) -> str:
        return f"case_in_{key}"

    def customer(self, key: str, *, timezone: str = "UTC", country: str = "US") -> Customer:
        return Customer(
            id=f"cus_{key}",
            email=f"{key}@example.com",
            timezone=timezone,
            country=country,
            name=f"Customer {key}",
            created_at=self.t0 - timedelta(days=400),
        )

    def card(
        self,
        key: str,
        *,
        token: str = "tok_sim_ok",
        pm_id: str | None = None,
        brand: str = "amex",
        funding: Funding = Funding.CREDIT,
        last4: str = "4242",
        is_default: bool = True,
    ) -> PaymentMethod:
        return PaymentMethod(
            id=pm_id or f"pm_{key}",
            customer_id=f"cus_{key}",
            gateway_token=token,
            brand=brand,
            last4=last4,
            exp_month=12,
            exp_year=2030,
            funding=funding,
            is_default=is_default,
        )

    def subscription(self, key: str, *, amount: int = 1900, currency: str = "USD") -> Subscription:
        plan = Plan(
            id=f"plan_{currency.lower()}_{amount}",
            name="Pro",
            interval=Interval.MONTH,
            price=Money(amount, currency),
        )
        return Subscription(
            id=f"sub_{key}",
            customer_id=f"cus_{key}",
            plan=plan,
            status=SubscriptionStatus.ACTIVE,
            started_at=self.t0 - timedelta(days=200),
        )

    def payment_failed(
        self,
        key: str = "1",
        *,
        token: str = "tok_sim_decline_do_not_honor",
        brand: str = "amex",
        funding: Funding = Funding.CREDIT,
        decline_code: str | None = "do_not_honor",
        network_code: str | None = None,
        advice_code: str | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
        amount: int = 1900,
        currency: str = "USD",
        with_subscription: bool = True,
        gateway_reference: str | None = None,
        timezone: str = "UTC",
        country: str = "US",
    ) -> PaymentFailed:
        at = occurred_at or self.t0
        return PaymentFailed(
            event_id=event_id or self.event_id(),
            occurred_at=at,
            customer=self.customer(key, timezone=timezone, country=country),
            invoice=Invoice(
                id=f"in_{key}",
                customer_id=f"cus_{key}",
                subscription_id=f"sub_{key}" if with_subscription else None,
                amount=Money(amount, currency),
                status=InvoiceStatus.OPEN,
                created_at=at - timedelta(minutes=5),
            ),
            payment_method=self.card(key, token=token, brand=brand, funding=funding),
            subscription=self.subscription(key, amount=amount, currency=currency)
            if with_subscription
            else None,
            decline_code=decline_code,
            network_code=network_code,
            advice_code=advice_code,
            gateway_reference=gateway_reference,
        )

    def payment_method_updated(
        self,
        key: str,
        *,
        at: datetime,
        token: str = "tok_sim_ok",
        pm_id: str | None = None,
        brand: str = "amex",
        last4: str = "1881",
        event_id: str | None = None,
    ) -> PaymentMethodUpdated:
        return PaymentMethodUpdated(
            event_id=event_id or self.event_id(),
            occurred_at=at,
            payment_method=self.card(
                key, token=token, pm_id=pm_id or f"pm_{key}_new", brand=brand, last4=last4
            ),
        )

    def payment_succeeded(self, key: str, *, at: datetime, event_id: str | None = None) -> PaymentSucceeded:
        return PaymentSucceeded(
            event_id=event_id or self.event_id(),
            occurred_at=at,
            invoice_id=f"in_{key}",
            gateway_reference=f"ch_{key}",
        )

    def paid_out_of_band(
        self, key: str, *, at: datetime, note: str = "bank transfer", event_id: str | None = None
    ) -> InvoicePaidOutOfBand:
        return InvoicePaidOutOfBand(
            event_id=event_id or self.event_id(), occurred_at=at, invoice_id=f"in_{key}", note=note
        )

    def subscription_canceled(
        self, key: str, *, at: datetime, reason: str = "too expensive", event_id: str | None = None
    ) -> SubscriptionCanceled:
        return SubscriptionCanceled(
            event_id=event_id or self.event_id(), occurred_at=at, subscription_id=f"sub_{key}", reason=reason
        )


@pytest.fixture
def commands() -> Commands:
    return Commands()


# --------------------------------------------------------------------------- reading the database


@dataclass
class Db:
    """Reads the test database directly (plain SQL, no engine code involved)."""

    store: SqlStore

    def rows(self, table: str, order_by: tuple[str, ...] = (), **where: Any) -> list[dict[str, Any]]:
        """Rows of ``table`` (typed by the models: aware datetimes on every backend)."""
        t = Base.metadata.tables[table]
        stmt = select(t).where(*(t.c[k] == v for k, v in where.items()))
        stmt = stmt.order_by(*(t.c[k] for k in order_by))
        with self.store.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.store.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def count(self, table: str) -> int:
        return int(self.scalar(f'SELECT COUNT(*) FROM "{table}"'))

    def counts(self) -> dict[str, int]:
        return {name: self.count(name) for name in _table_names()}

    def case(self, case_id: str) -> dict[str, Any]:
        rows = self.rows("cases", id=case_id)
        assert len(rows) == 1, f"expected one case {case_id}, found {len(rows)}"
        return rows[0]

    def attempts(self, case_id: str) -> list[dict[str, Any]]:
        return self.rows("attempts", order_by=("number", "id"), case_id=case_id)

    def events(self, case_id: str) -> list[dict[str, Any]]:
        return self.rows("case_events", order_by=("id",), case_id=case_id)

    def invoice(self, invoice_id: str) -> dict[str, Any]:
        (row,) = self.rows("invoices", id=invoice_id)
        return row

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        (row,) = self.rows("subscriptions", id=subscription_id)
        return row

    def check_case(self, case_id: str) -> dict[str, Any]:
        """Invariants every stored case keeps; returns the case row.

        * every case event has a reason, and the status changes chain from ``open``
          to the case's current status;
        * the explicit ``attempts`` counter equals the number of retry attempt rows
          (numbered 1..n, one row per number), ``budget_used`` the policy ones;
        * one ``attempt_started`` event per retry attempt.
        """
        case = self.case(case_id)
        events = self.events(case_id)
        assert events, f"{case_id}: no case events"
        assert events[0]["kind"] == "opened"
        for e in events:
            assert (e["reason"] or "").strip(), f"{case_id}: event {e['kind']} without a reason"
        status = "open"
        for e in events:
            if e["kind"] == "status_changed":
                assert e["from_status"] == status, f"{case_id}: {e}"
                status = e["to_status"]
        assert status == case["status"], f"{case_id}: events end at {status}, case is {case['status']}"
        retries = [a for a in self.attempts(case_id) if a["number"] >= 1]
        assert [a["number"] for a in retries] == list(range(1, len(retries) + 1))
        assert case["attempts"] == len(retries)
        assert case["budget_used"] == sum(1 for a in retries if a["trigger"] == "policy")
        assert all(a["trigger"] != "billing" for a in retries)
        started = [e for e in events if e["kind"] == "attempt_started"]
        assert len(started) == len(retries)
        if case["status"] in ("open", "exhausted"):
            assert case["next_action"] is not None
            assert case["next_action_at"] is not None
            assert case["next_action_reason"]
        else:
            assert case["next_action"] is None
            assert case["next_action_at"] is None
            assert case["closed_at"] is not None
        return case


@pytest.fixture
def db(store: SqlStore) -> Db:
    return Db(store)
