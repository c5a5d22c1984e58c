"""Several workers on one database: claims keep them apart, a stopped worker's claim
expires and its pending attempt is reconciled with the gateway, never charged twice."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from conftest import T0, Commands, Db

from recobra.engine.service import TickReport
from recobra.gateways.simulated import SimulatedGateway
from recobra.ports import ChargeRequest, ChargeResult, ChargeStatus

DAY = timedelta(days=1)
LEASE = timedelta(minutes=5)
CASE = Commands.case_id("1")
WAIT_S = 60  # upper bound of every wait on another thread


class WorkerKilled(Exception):
    """Stands for a worker process dying at a chosen point."""


class DyingGateway:
    """A real gateway in front of which the worker dies, before or after the charge
    reached the gateway (``reached=True``: the gateway charged, nobody heard back)."""

    name = "simulated"

    def __init__(self, inner: SimulatedGateway, *, reached: bool) -> None:
        self.inner, self.reached = inner, reached

    def charge(self, request: ChargeRequest) -> ChargeResult:
        if self.reached:
            self.inner.charge(request)
        raise WorkerKilled(request.idempotency_key)

    def attempt_status(self, idempotency_key: str) -> ChargeResult:
        return self.inner.attempt_status(idempotency_key)

    def cancel_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        self.inner.cancel_subscription(subscription_id, at=at, idempotency_key=idempotency_key)

    def pause_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        self.inner.pause_subscription(subscription_id, at=at, idempotency_key=idempotency_key)

    def mark_unpaid(self, invoice_id: str, *, at: datetime, idempotency_key: str) -> None:
        self.inner.mark_unpaid(invoice_id, at=at, idempotency_key=idempotency_key)


class SlowGateway(DyingGateway):
    """Charges through the real gateway, then holds the answer until the test lets go
    (a slow network): the worker sits between its two transactions meanwhile."""

    def __init__(self, inner: SimulatedGateway) -> None:
        super().__init__(inner, reached=True)
        self.charging = threading.Event()
        self.answer = threading.Event()

    def charge(self, request: ChargeRequest) -> ChargeResult:
        result = self.inner.charge(request)
        self.charging.set()
        if not self.answer.wait(WAIT_S):
            raise TimeoutError("the test never let the gateway answer")
        return result


# --------------------------------------------------------------------------- concurrent ticks


def test_two_workers_ticking_at_once_process_every_case_once(
    engine_factory, store_factory, commands: Commands, db: Db
):
    n = 200
    # Model tokens: the simulated gateway decides each retry (mixed outcomes).
    engine_factory().handle_many(
        [
            commands.payment_failed(str(i), token=f"tok_card_{i}", brand=("amex", "discover")[i % 2])
            for i in range(n)
        ]
    )
    now = T0 + DAY + timedelta(hours=1)
    with SimulatedGateway(seed=1, latency_s=0.001) as gateway:
        workers = [
            engine_factory(gateway=gateway, worker_id=f"worker-{w}", store=store_factory(), batch_size=20)
            for w in (1, 2)
        ]
        start = threading.Barrier(len(workers), timeout=WAIT_S)

        def run(index: int) -> TickReport:
            start.wait()
            return workers[index].tick(now)

        with ThreadPoolExecutor(max_workers=len(workers)) as pool:
            futures = [pool.submit(run, i) for i in range(len(workers))]
            reports = [f.result(timeout=WAIT_S) for f in futures]
        charges = gateway.charges()

    assert sum(r.claimed for r in reports) == n
    assert sum(r.attempts for r in reports) == n
    assert all(r.claimed > 0 for r in reports), "both workers should have had work"
    keys = Counter(c.idempotency_key for c in charges)
    assert keys == Counter({f"recobra:{Commands.case_id(str(i))}:1": 1 for i in range(n)})
    outcomes = Counter(c.result.status for c in charges)
    assert outcomes[ChargeStatus.SUCCEEDED] > 0
    assert outcomes[ChargeStatus.DECLINED] > 0
    numbers = Counter((a["case_id"], a["number"]) for a in db.rows("attempts"))
    assert all(count == 1 for count in numbers.values())
    for i in range(n):
        case = db.check_case(Commands.case_id(str(i)))
        assert (case["attempts"], case["budget_used"]) == (1, 1)
        assert case["claimed_by"] is None
        (attempt,) = [a for a in db.attempts(case["id"]) if a["number"] == 1]
        assert attempt["status"] in ("succeeded", "failed")
    # Nothing is left due at that time, for either worker.
    assert workers[0].tick(now).claimed == 0


# --------------------------------------------------------------------------- stale claims


@pytest.mark.parametrize("token", ["tok_sim_ok", "tok_sim_decline_do_not_honor"])
def test_a_stopped_workers_attempt_that_never_reached_the_gateway_is_sent_with_the_same_key(
    engine_factory, gateway: SimulatedGateway, commands: Commands, db: Db, token: str
):
    engine_factory().handle(commands.payment_failed("1", token=token))
    due = T0 + DAY
    dying = engine_factory(gateway=DyingGateway(gateway, reached=False), worker_id="worker-dead")

    with pytest.raises(WorkerKilled):
        dying.tick(due)

    # What a dead worker leaves: its claim and a pending attempt; the gateway saw nothing.
    case = db.case(CASE)
    assert (case["claimed_by"], case["claim_expires_at"]) == ("worker-dead", due + LEASE)
    assert (case["attempts"], case["budget_used"]) == (1, 1)
    (pending,) = [a for a in db.attempts(CASE) if a["number"] == 1]
    assert pending["status"] == "pending"
    assert gateway.charges() == []

    other = engine_factory(worker_id="worker-2")
    assert other.tick(due + LEASE - timedelta(seconds=1)).claimed == 0  # the claim still holds
    later = due + LEASE + timedelta(seconds=1)
    report = other.tick(later)

    assert (report.claimed, report.reconciled, report.attempts) == (1, 1, 1)
    (charge,) = gateway.charges()
    assert charge.idempotency_key == pending["idempotency_key"] == f"recobra:{CASE}:1"
    attempts = [a for a in db.attempts(CASE) if a["number"] >= 1]
    assert len(attempts) == 1
    assert attempts[0]["status"] != "pending"
    assert attempts[0]["gateway_reference"] == charge.result.gateway_reference
    case = db.check_case(CASE)
    assert (case["attempts"], case["budget_used"]) == (1, 1)
    assert case["claimed_by"] is None
    if token == "tok_sim_ok":
        assert attempts[0]["status"] == "succeeded"
        assert case["status"] == "recovered"
    else:
        assert (attempts[0]["status"], attempts[0]["code"]) == ("failed", "do_not_honor")
        assert (case["status"], case["next_action_at"]) == ("open", T0 + 3 * DAY)
    reconciled = [e for e in db.events(CASE) if e["kind"] == "attempt_reconciled"]
    assert len(reconciled) == 1
    assert "left pending by a stopped worker" in reconciled[0]["reason"]


@pytest.mark.parametrize("token", ["tok_sim_ok", "tok_sim_decline_do_not_honor"])
def test_a_stopped_workers_attempt_that_the_gateway_charged_is_recorded_without_charging_again(
    engine_factory, gateway: SimulatedGateway, commands: Commands, db: Db, token: str
):
    engine_factory().handle(commands.payment_failed("1", token=token))
    due = T0 + DAY
    dying = engine_factory(gateway=DyingGateway(gateway, reached=True), worker_id="worker-dead")

    with pytest.raises(WorkerKilled):
        dying.tick(due)

    (charge,) = gateway.charges()
    assert [a["status"] for a in db.attempts(CASE) if a["number"] == 1] == ["pending"]
    assert db.case(CASE)["claimed_by"] == "worker-dead"

    report = engine_factory(worker_id="worker-2").tick(due + LEASE + timedelta(seconds=1))

    assert (report.claimed, report.reconciled, report.attempts) == (1, 1, 0)
    assert gateway.charges() == [charge]  # no second charge
    (attempt,) = [a for a in db.attempts(CASE) if a["number"] >= 1]
    assert attempt["idempotency_key"] == charge.idempotency_key
    assert attempt["status"] == {"tok_sim_ok": "succeeded"}.get(token, "failed")
    assert attempt["gateway_reference"] == charge.result.gateway_reference
    assert attempt["code"] == charge.result.decline_code
    case = db.check_case(CASE)
    assert case["claimed_by"] is None
    assert case["status"] == {"tok_sim_ok": "recovered"}.get(token, "open")
    reconciled = [e for e in db.events(CASE) if e["kind"] == "attempt_reconciled"]
    assert len(reconciled) == 1
    assert f"gateway says {charge.result.status}" in reconciled[0]["reason"]


def test_an_expired_claim_without_pending_attempt_is_simply_taken_over(
    engine_factory, gateway: SimulatedGateway, commands: Commands, db: Db, store
):
    """A worker that died right after claiming (before writing any attempt)."""
    engine_factory().handle(commands.payment_failed("1", token="tok_sim_ok"))
    due = T0 + DAY
    with store.unit_of_work() as uow:
        assert uow.claim_due(due, limit=10, worker_id="worker-dead", lease=LEASE) == [CASE]
        uow.commit()

    other = engine_factory(worker_id="worker-2")
    assert other.tick(due + timedelta(minutes=1)).claimed == 0
    report = other.tick(due + LEASE + timedelta(seconds=1))

    assert (report.claimed, report.reconciled, report.attempts, report.recovered) == (1, 0, 1, 1)
    assert [c.idempotency_key for c in gateway.charges()] == [f"recobra:{CASE}:1"]
    assert db.check_case(CASE)["status"] == "recovered"


# --------------------------------------------------------------------------- events during a tick


def _tick_with_event_in_between(engine_factory, store_factory, gateway, event_engine, command) -> None:
    """A worker charges case 1 at T0 + 1 day; while the gateway is still answering,
    ``command`` is handled by another engine; then the worker finishes."""
    slow = SlowGateway(gateway)
    worker = engine_factory(gateway=slow, worker_id="worker-slow", store=store_factory())
    with ThreadPoolExecutor(max_workers=1) as pool:
        ticking = pool.submit(worker.tick, T0 + DAY)
        try:
            assert slow.charging.wait(WAIT_S), "the worker never reached the gateway"
            event_engine.handle(command)
        finally:
            slow.answer.set()
        ticking.result(timeout=WAIT_S)


def test_a_cancellation_during_a_tick_is_not_undone_by_the_worker(
    engine_factory, store_factory, gateway: SimulatedGateway, commands: Commands, db: Db
):
    events = engine_factory()
    events.handle(commands.payment_failed("1", token="tok_sim_decline_do_not_honor"))
    canceled_at = T0 + DAY + timedelta(seconds=30)

    _tick_with_event_in_between(
        engine_factory, store_factory, gateway, events, commands.subscription_canceled("1", at=canceled_at)
    )

    case = db.case(CASE)
    assert case["status"] == "canceled", (
        "the worker's save overwrote the cancellation made while it waited for the gateway"
    )
    assert case["next_action"] is None
    events.tick(T0 + 30 * DAY)
    assert len(gateway.charges()) == 1  # a canceled subscription is never charged again
    db.check_case(CASE)


def test_a_new_card_given_during_a_tick_is_not_lost(
    engine_factory, store_factory, gateway: SimulatedGateway, commands: Commands, db: Db
):
    events = engine_factory()
    events.handle(commands.payment_failed("1", token="tok_sim_decline_do_not_honor"))
    updated_at = T0 + DAY + timedelta(seconds=30)

    _tick_with_event_in_between(
        engine_factory,
        store_factory,
        gateway,
        events,
        commands.payment_method_updated("1", at=updated_at, token="tok_sim_ok"),
    )

    case = db.case(CASE)
    assert case["payment_method_id"] == "pm_1_new", (
        "the worker's save put the old card back over the one given while it waited for the gateway"
    )
    # The immediate retry the new card asked for happens on the next tick at the latest.
    events.tick(T0 + DAY + timedelta(minutes=1))
    case = db.check_case(CASE)
    assert case["status"] == "recovered"
    assert gateway.charges()[-1].token == "tok_sim_ok"
