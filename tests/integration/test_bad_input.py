"""A batch of events is all or nothing: when ``handle_many`` fails part-way through,
nothing of that batch reaches the database, and the same batch can be delivered again."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import T0, Commands, Db
from sqlalchemy.exc import IntegrityError

from recobra.domain.errors import DomainError
from recobra.domain.model import Customer
from recobra.engine.commands import Command
from recobra.gateways.simulated import SimulatedGateway
from recobra.ports import ChargeRequest, ChargeResult, ChargeStatus
from recobra.store.sql import SqlStore

CASE = Commands.case_id("1")


class StoreDown(RuntimeError):
    """What the failing store raises."""


class FailingUnitOfWork:
    """A real unit of work whose ``method`` raises on its ``nth`` call with data."""

    def __init__(self, inner: Any, store: FailingStore) -> None:
        self._inner = inner
        self._store = store

    def __enter__(self) -> FailingUnitOfWork:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._store.method:
            return attr

        def failing(*args: Any, **kwargs: Any) -> Any:
            if args and args[0]:  # only calls that would write something count
                self._store.calls += 1
                if self._store.calls == self._store.nth:
                    raise StoreDown(f"{name}: the database went away (call {self._store.calls})")
            return attr(*args, **kwargs)

        return failing


class FailingStore:
    """The SQL store, failing once at a chosen point of a unit of work."""

    def __init__(self, inner: SqlStore, method: str, nth: int = 1) -> None:
        self.inner, self.method, self.nth, self.calls = inner, method, nth, 0

    def unit_of_work(self) -> FailingUnitOfWork:
        return FailingUnitOfWork(self.inner.unit_of_work(), self)

    def next_due_at(self) -> datetime | None:
        return self.inner.next_due_at()


class UnreachableGateway:
    """A gateway whose network is down: every call raises (a contract breach: a real
    adapter should return ChargeStatus.ERROR), like a crash in the middle of a call."""

    name = "unreachable"

    def __init__(self) -> None:
        self.calls = 0

    def charge(self, request: ChargeRequest) -> ChargeResult:
        self.calls += 1
        raise ConnectionError(f"cannot reach the gateway for {request.idempotency_key}")

    def attempt_status(self, idempotency_key: str) -> ChargeResult:
        self.calls += 1
        raise ConnectionError("cannot reach the gateway")

    def cancel_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        raise ConnectionError("cannot reach the gateway")

    def pause_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        raise ConnectionError("cannot reach the gateway")

    def mark_unpaid(self, invoice_id: str, *, at: datetime, idempotency_key: str) -> None:
        raise ConnectionError("cannot reach the gateway")


def mixed_batch(commands: Commands) -> list[Command]:
    """Failures, a payment outside Recobra, a cancellation, a card update, more failures."""
    return [
        commands.payment_failed("1"),
        commands.payment_failed("2"),
        commands.paid_out_of_band("1", at=T0 + timedelta(minutes=5)),
        commands.subscription_canceled("2", at=T0 + timedelta(minutes=6)),
        commands.payment_failed("3", token="tok_sim_decline_insufficient_funds"),
        commands.payment_method_updated("3", at=T0 + timedelta(minutes=7), token="tok_sim_ok"),
        commands.payment_failed("4"),
    ]


def assert_empty(db: Db) -> None:
    counts = db.counts()
    assert counts == dict.fromkeys(counts, 0), counts


def test_an_invalid_customer_cannot_even_be_built():
    with pytest.raises(DomainError, match=r"customer\.email"):
        Customer(id="cus_1", email="not an email")
    with pytest.raises(DomainError, match=r"customer\.country"):
        Customer(id="cus_1", email="a@example.com", country="Mexico")
    with pytest.raises(DomainError, match=r"customer\.timezone"):
        Customer(id="cus_1", email="a@example.com", timezone="Mars/Olympus_Mons")


def test_a_naive_time_in_the_batch_rejects_the_whole_batch(engine_factory, commands: Commands, db: Db):
    engine = engine_factory()
    batch = mixed_batch(commands)

    # A command with a naive time cannot even be built, so no batch can carry one.
    with pytest.raises(DomainError, match="occurred_at"):
        replace(batch[4], occurred_at=datetime(2025, 3, 3, 12, 0))  # noqa: DTZ001 - on purpose

    assert_empty(db)
    # The valid events go through afterwards, as if the failed batch never happened.
    results = engine.handle_many(batch)
    assert not any(r.duplicate for r in results)
    assert db.count("processed_events") == len(batch)


@pytest.mark.parametrize(
    ("method", "nth"),
    [
        ("remember_events", 1),
        ("add_cases", 1),
        ("add_attempts", 1),
        ("save_cases", 1),  # the out-of-band payment, after two cases were written
        ("save_cases", 2),  # the cancellation
        ("set_invoice_status", 2),
        ("add_cases", 2),  # the third failure, after a payment, a cancellation ...
        ("add_attempts", 2),  # ... and its billing attempt: the batch's next to last write
    ],
)
def test_a_store_error_part_way_leaves_nothing_of_the_batch(
    engine_factory,
    gateway: SimulatedGateway,
    store: SqlStore,
    commands: Commands,
    db: Db,
    method: str,
    nth: int,
):
    failing = FailingStore(store, method, nth)
    engine = engine_factory(store=failing)
    batch = mixed_batch(commands)

    with pytest.raises(StoreDown):
        engine.handle_many(batch)

    assert failing.calls == nth
    assert_empty(db)
    assert gateway.charges() == []
    # Delivered again to a healthy store, the batch is applied once, in full.
    engine_factory().handle_many(batch)
    assert db.count("processed_events") == len(batch)
    assert {c["id"]: c["status"] for c in db.rows("cases")} == {
        "case_in_1": "paid_out_of_band",
        "case_in_2": "canceled",
        "case_in_3": "recovered",
        "case_in_4": "open",
    }


def test_a_database_constraint_violation_part_way_leaves_nothing_of_the_batch(
    engine_factory, commands: Commands, db: Db
):
    engine = engine_factory()
    # A subscription that names a customer Recobra has never seen: its foreign key fails.
    third = commands.payment_failed("3")
    assert third.subscription is not None
    orphan = replace(third, subscription=replace(third.subscription, customer_id="cus_nobody"))
    batch = [commands.payment_failed("1"), commands.payment_failed("2"), orphan]

    with pytest.raises(IntegrityError):
        engine.handle_many(batch)

    assert_empty(db)


def test_a_card_for_an_unknown_customer_is_ignored_not_fatal(engine_factory, commands: Commands, db: Db):
    engine = engine_factory()
    stranger = commands.payment_method_updated("stranger", at=T0 + timedelta(minutes=1))
    batch = [
        commands.payment_failed("1"),
        commands.payment_failed("2"),
        stranger,
        commands.payment_failed("3"),
    ]

    results = engine.handle_many(batch)

    assert results[2].note == "unknown customer: no case to act on"
    assert db.count("cases") == 3
    assert db.count("processed_events") == 4
    assert db.count("payment_methods") == 3


def test_a_gateway_failure_after_the_batch_committed_is_reconciled_later(
    engine_factory, gateway: SimulatedGateway, commands: Commands, db: Db
):
    """The event batch commits before the immediate retry calls the gateway (see
    ``Engine.handle_many``), so a gateway that blows up cannot undo the batch: the
    attempt stays pending under an expiring claim and the next worker reconciles it."""
    broken = UnreachableGateway()
    engine = engine_factory(gateway=broken)
    updated_at = T0 + timedelta(hours=2)
    batch = [
        commands.payment_failed("1", token="tok_sim_decline_do_not_honor"),
        commands.payment_method_updated("1", at=updated_at, token="tok_sim_ok"),
    ]

    with pytest.raises(ConnectionError):
        engine.handle_many(batch)

    assert broken.calls == 1
    case = db.case(CASE)
    assert (case["status"], case["attempts"], case["budget_used"]) == ("open", 1, 0)
    assert case["claimed_by"] == "worker-1"
    assert case["claim_expires_at"] == updated_at + timedelta(minutes=5)
    pending = db.attempts(CASE)[-1]
    assert (pending["number"], pending["status"], pending["trigger"]) == (1, "pending", "payment_method")
    assert pending["idempotency_key"] == f"recobra:{CASE}:1"

    # The sender retries the delivery: every event is a duplicate, nothing runs twice.
    assert all(r.duplicate for r in engine.handle_many(batch))
    assert broken.calls == 1
    # A healthy worker leaves the claim alone until it expires, then sends the same key.
    healthy = engine_factory(worker_id="worker-2")
    assert healthy.tick(updated_at + timedelta(minutes=4)).claimed == 0
    report = healthy.tick(updated_at + timedelta(minutes=5, seconds=1))

    assert (report.claimed, report.reconciled, report.recovered) == (1, 1, 1)
    assert [c.idempotency_key for c in gateway.charges()] == [f"recobra:{CASE}:1"]
    assert gateway.charges()[0].result.status is ChargeStatus.SUCCEEDED
    case = db.check_case(CASE)
    assert (case["status"], case["attempts"], case["budget_used"]) == ("recovered", 1, 0)
    assert case["claimed_by"] is None
    assert db.attempts(CASE)[-1]["status"] == "succeeded"
