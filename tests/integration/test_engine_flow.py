"""The engine end to end on a real database: events open and close cases, ticks charge
through the gateway, the policy's budget and final action, duplicates, and the audit trail."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from conftest import T0, Commands, Db

from recobra.domain.errors import IllegalTransition
from recobra.engine.service import Engine
from recobra.gateways.simulated import ActionKind, SimulatedGateway, SubscriptionAction
from recobra.ports import ChargeStatus, GatewayError

DAY = timedelta(days=1)
CASE = Commands.case_id("1")
# TEST_POLICY: retries at +1d, +3d, +6d; window 10 days; 2 days' grace; cancel.
FINAL_AT = T0 + 12 * DAY


def charged_keys(gateway: SimulatedGateway) -> list[str]:
    return [c.idempotency_key for c in gateway.charges()]


def test_failed_payment_opens_one_case_with_a_scheduled_retry(engine: Engine, commands: Commands, db: Db):
    cmd = commands.payment_failed("1", decline_code="do_not_honor")

    result = engine.handle(cmd)

    assert result.case_ids == (CASE,)
    assert not result.duplicate
    assert db.count("cases") == 1
    case = db.check_case(CASE)
    assert case["status"] == "open"
    assert case["invoice_id"] == "in_1"
    assert case["opened_at"] == T0
    assert case["attempts"] == 0
    assert case["budget_used"] == 0
    assert case["last_code"] == "do_not_honor"
    assert case["last_category"] == "temporary"
    assert case["next_action"] == "retry"
    assert case["next_action_at"] == T0 + DAY
    reason = case["next_action_reason"]
    assert reason.startswith("Retry on 2025-03-04 12:00 UTC")
    assert "temporary issuer decline" in reason
    assert "step 1 of 3" in reason
    # The billing run's failed charge is on record, outside the retry count.
    (billing,) = db.attempts(CASE)
    assert billing["number"] == 0
    assert billing["trigger"] == "billing"
    assert billing["status"] == "failed"
    assert billing["code"] == "do_not_honor"
    assert billing["idempotency_key"] == f"billing:{cmd.event_id}"
    assert db.subscription("sub_1")["status"] == "past_due"
    assert db.invoice("in_1")["status"] == "open"
    kinds = [e["kind"] for e in db.events(CASE)]
    assert kinds == ["opened", "retry_scheduled"]


def test_tick_charges_at_the_due_time_with_the_attempt_key(
    engine: Engine, gateway: SimulatedGateway, commands: Commands, db: Db
):
    engine.handle(commands.payment_failed("1", token="tok_sim_decline_do_not_honor"))

    early = engine.tick(T0 + DAY - timedelta(seconds=1))
    assert early.claimed == 0
    assert gateway.charges() == []

    report = engine.tick(T0 + DAY)

    assert report.claimed == 1
    assert report.attempts == 1
    assert report.declined == 1
    (charge,) = gateway.charges()
    assert charge.idempotency_key == f"recobra:{CASE}:1"
    assert charge.attempt_number == 1
    assert charge.invoice_id == "in_1"
    assert charge.token == "tok_sim_decline_do_not_honor"
    assert charge.at == T0 + DAY
    attempt = db.attempts(CASE)[-1]
    assert attempt["number"] == 1
    assert attempt["idempotency_key"] == f"recobra:{CASE}:1"
    assert attempt["status"] == "failed"
    assert attempt["trigger"] == "policy"
    assert attempt["code"] == "do_not_honor"
    assert attempt["gateway_reference"] == charge.result.gateway_reference
    case = db.check_case(CASE)
    assert case["status"] == "open"
    assert (case["attempts"], case["budget_used"]) == (1, 1)
    assert case["next_action"] == "retry"
    assert case["next_action_at"] == T0 + 3 * DAY
    assert case["claimed_by"] is None
    assert case["claim_expires_at"] is None
    # Nothing is due any more at that time.
    assert engine.tick(T0 + DAY).claimed == 0
    assert len(gateway.charges()) == 1


def test_new_payment_method_retries_at_once_outside_the_budget_and_recovers(
    engine: Engine, gateway: SimulatedGateway, commands: Commands, db: Db
):
    engine.handle(
        commands.payment_failed(
            "1", token="tok_sim_decline_insufficient_funds", decline_code="insufficient_funds"
        )
    )
    engine.tick(T0 + DAY)
    before = db.case(CASE)
    assert (before["attempts"], before["budget_used"]) == (1, 1)
    assert gateway.charges()[0].result.status is ChargeStatus.DECLINED

    updated_at = T0 + DAY + timedelta(hours=2)
    result = engine.handle(commands.payment_method_updated("1", at=updated_at, token="tok_sim_ok"))

    assert result.case_ids == (CASE,)
    charges = gateway.charges()
    assert [c.idempotency_key for c in charges] == [f"recobra:{CASE}:1", f"recobra:{CASE}:2"]
    assert charges[1].token == "tok_sim_ok"
    assert charges[1].result.status is ChargeStatus.SUCCEEDED
    case = db.check_case(CASE)
    assert case["status"] == "recovered"
    assert case["attempts"] == 2  # the immediate retry counts as an attempt ...
    assert case["budget_used"] == 1  # ... but does not spend the policy's budget
    assert case["payment_method_id"] == "pm_1_new"
    assert case["closed_at"] == updated_at
    retry = db.attempts(CASE)[-1]
    assert (retry["number"], retry["trigger"], retry["status"]) == (2, "payment_method", "succeeded")
    assert retry["payment_method_id"] == "pm_1_new"
    invoice = db.invoice("in_1")
    assert invoice["status"] == "paid"
    assert invoice["paid_at"] == updated_at
    assert db.subscription("sub_1")["status"] == "active"
    # The new card became the customer's only default card.
    defaults = [m["id"] for m in db.rows("payment_methods", customer_id="cus_1") if m["is_default"]]
    assert defaults == ["pm_1_new"]
    kinds = [e["kind"] for e in db.events(CASE)]
    assert "payment_method_updated" in kinds
    assert kinds[-1] == "status_changed"
    # Recovered cases are never ticked again.
    assert engine.tick(T0 + 30 * DAY).claimed == 0
    assert len(gateway.charges()) == 2


def test_hard_decline_is_never_retried_and_gets_the_final_action(
    engine: Engine, gateway: SimulatedGateway, commands: Commands, db: Db
):
    engine.handle(
        commands.payment_failed("1", token="tok_sim_decline_expired_card", decline_code="expired_card")
    )

    case = db.check_case(CASE)
    assert case["status"] == "exhausted"
    assert case["last_category"] == "hard"
    assert case["next_action"] == "final_action"
    assert case["next_action_at"] == FINAL_AT
    assert "cancel" in case["next_action_reason"]
    kinds = [e["kind"] for e in db.events(CASE)]
    assert "retry_scheduled" not in kinds
    assert "retry_skipped" in kinds

    for day in (1, 3, 6, 10):
        assert engine.tick(T0 + day * DAY).claimed == 0
    assert engine.tick(FINAL_AT - timedelta(seconds=1)).claimed == 0
    assert gateway.charges() == []
    assert gateway.subscription_actions() == []

    report = engine.tick(FINAL_AT)

    assert report.final_actions == 1
    assert gateway.charges() == []  # never retried
    assert gateway.subscription_actions() == [
        SubscriptionAction(f"recobra:{CASE}:final", ActionKind.CANCEL, "sub_1", FINAL_AT)
    ]
    case = db.check_case(CASE)
    assert case["status"] == "final_action_done"
    assert case["final_action"] == "cancel"
    assert case["closed_at"] == FINAL_AT
    assert db.subscription("sub_1")["status"] == "canceled"
    assert db.invoice("in_1")["status"] == "uncollectible"
    assert case["attempts"] == 0


def test_hard_decline_on_a_retry_stops_retrying(
    engine: Engine, gateway: SimulatedGateway, commands: Commands, db: Db
):
    # The billing run saw a soft decline; Recobra's first retry learns the card expired.
    engine.handle(
        commands.payment_failed("1", token="tok_sim_decline_expired_card", decline_code="do_not_honor")
    )
    engine.tick(T0 + DAY)

    case = db.check_case(CASE)
    assert case["status"] == "exhausted"
    assert case["last_code"] == "expired_card"
    assert case["next_action"] == "final_action"
    assert case["next_action_at"] == FINAL_AT
    for day in (3, 6, 10):
        engine.tick(T0 + day * DAY)
    assert charged_keys(gateway) == [f"recobra:{CASE}:1"]

    engine.tick(FINAL_AT)
    assert db.check_case(CASE)["status"] == "final_action_done"
    assert [a.kind for a in gateway.subscription_actions()] == [ActionKind.CANCEL]


def test_soft_decline_is_retried_until_the_budget_is_spent(
    engine: Engine, gateway: SimulatedGateway, commands: Commands, db: Db
):
    engine.handle(commands.payment_failed("1", token="tok_sim_decline_do_not_honor"))

    for n, day in enumerate((1, 3, 6), start=1):
        case = db.case(CASE)
        assert case["status"] == "open"
        assert case["next_action_at"] == T0 + day * DAY
        assert engine.tick(T0 + day * DAY).attempts == 1
        assert charged_keys(gateway)[-1] == f"recobra:{CASE}:{n}"

    case = db.check_case(CASE)
    assert case["status"] == "exhausted"
    assert (case["attempts"], case["budget_used"]) == (3, 3)
    assert case["next_action"] == "final_action"
    assert case["next_action_at"] == FINAL_AT
    exhausted = [e for e in db.events(CASE) if e["to_status"] == "exhausted"]
    assert len(exhausted) == 1
    assert "attempt budget spent (3 of 3)" in exhausted[0]["reason"]

    assert engine.tick(FINAL_AT - timedelta(minutes=1)).claimed == 0
    engine.tick(FINAL_AT)

    assert len(gateway.charges()) == 3
    assert gateway.subscription_actions() == [
        SubscriptionAction(f"recobra:{CASE}:final", ActionKind.CANCEL, "sub_1", FINAL_AT)
    ]
    case = db.check_case(CASE)
    assert case["status"] == "final_action_done"
    assert db.subscription("sub_1")["status"] == "canceled"
    # Done is done: later ticks find nothing.
    assert engine.tick(FINAL_AT + 30 * DAY).claimed == 0


def test_duplicate_events_are_ignored(engine: Engine, commands: Commands, db: Db):
    cmd = commands.payment_failed("1", event_id="evt_dup")

    first = engine.handle(cmd)
    second = engine.handle(cmd)

    assert not first.duplicate
    assert second.duplicate
    assert second.case_ids == ()
    assert db.count("cases") == 1
    assert db.count("processed_events") == 1
    assert len(db.attempts(CASE)) == 1
    assert len(db.events(CASE)) == 2
    db.check_case(CASE)


def test_duplicate_events_within_one_batch_are_ignored(engine: Engine, commands: Commands, db: Db):
    a = commands.payment_failed("1", event_id="evt_a")
    b = commands.payment_failed("2", event_id="evt_b")
    cancel = commands.subscription_canceled("2", at=T0 + timedelta(hours=1), event_id="evt_c")

    results = engine.handle_many([a, a, b, cancel, b, cancel])

    assert [r.duplicate for r in results] == [False, True, False, False, True, True]
    assert [r.event_id for r in results] == ["evt_a", "evt_a", "evt_b", "evt_c", "evt_b", "evt_c"]
    assert db.count("processed_events") == 3
    assert db.count("cases") == 2
    assert db.count("attempts") == 2
    assert db.check_case(Commands.case_id("1"))["status"] == "open"
    assert db.check_case(Commands.case_id("2"))["status"] == "canceled"
    # The same batch delivered again is all duplicates.
    again = engine.handle_many([a, b, cancel])
    assert all(r.duplicate for r in again)
    assert db.count("case_events") == len(db.events(Commands.case_id("1"))) + len(
        db.events(Commands.case_id("2"))
    )


def test_subscription_canceled_closes_the_active_case(
    engine: Engine, gateway: SimulatedGateway, commands: Commands, db: Db
):
    engine.handle(commands.payment_failed("1"))
    engine.tick(T0 + DAY)
    at = T0 + DAY + timedelta(hours=3)

    result = engine.handle(commands.subscription_canceled("1", at=at, reason="moving abroad"))

    assert result.case_ids == (CASE,)
    case = db.check_case(CASE)
    assert case["status"] == "canceled"
    assert case["closed_at"] == at
    assert "moving abroad" in db.events(CASE)[-1]["reason"]
    assert db.subscription("sub_1")["status"] == "canceled"
    assert db.invoice("in_1")["status"] == "void"
    assert engine.tick(T0 + 30 * DAY).claimed == 0
    assert len(gateway.charges()) == 1


def test_invoice_paid_out_of_band_closes_the_case(
    engine: Engine, gateway: SimulatedGateway, commands: Commands, db: Db
):
    engine.handle(commands.payment_failed("1"))
    at = T0 + timedelta(hours=5)

    engine.handle(commands.paid_out_of_band("1", at=at, note="bank transfer ref 991"))

    case = db.check_case(CASE)
    assert case["status"] == "paid_out_of_band"
    assert case["closed_at"] == at
    assert "bank transfer ref 991" in db.events(CASE)[-1]["reason"]
    invoice = db.invoice("in_1")
    assert (invoice["status"], invoice["paid_at"]) == ("paid", at)
    assert db.subscription("sub_1")["status"] == "active"
    assert engine.tick(T0 + 30 * DAY).claimed == 0
    assert gateway.charges() == []


def test_payment_succeeded_recovers_the_case(engine: Engine, commands: Commands, db: Db):
    engine.handle(commands.payment_failed("1"))
    engine.tick(T0 + DAY)
    at = T0 + 2 * DAY

    result = engine.handle(commands.payment_succeeded("1", at=at))

    assert result.case_ids == (CASE,)
    case = db.check_case(CASE)
    assert case["status"] == "recovered"
    assert case["closed_at"] == at
    invoice = db.invoice("in_1")
    assert (invoice["status"], invoice["paid_at"]) == ("paid", at)
    assert db.subscription("sub_1")["status"] == "active"


def test_events_for_a_closed_or_unknown_invoice_change_no_case(engine: Engine, commands: Commands, db: Db):
    engine.handle(commands.payment_failed("1"))
    engine.handle(commands.payment_succeeded("1", at=T0 + DAY))

    again = engine.handle(commands.paid_out_of_band("1", at=T0 + 2 * DAY))
    unknown = engine.handle(commands.payment_succeeded("404", at=T0 + 2 * DAY))

    assert again.case_ids == ()
    assert unknown.case_ids == ()
    assert db.check_case(CASE)["status"] == "recovered"
    assert db.count("cases") == 1


def test_second_failure_of_the_same_invoice_opens_no_second_case(engine: Engine, commands: Commands, db: Db):
    engine.handle(commands.payment_failed("1"))
    later = commands.payment_failed(
        "1", occurred_at=T0 + timedelta(hours=6), decline_code="insufficient_funds"
    )

    result = engine.handle(later)

    assert result.case_ids == (CASE,)
    assert result.note == "case already exists"
    assert db.count("cases") == 1
    case = db.check_case(CASE)
    assert case["status"] == "open"
    assert case["opened_at"] == T0
    assert case["last_code"] == "insufficient_funds"
    billing = db.attempts(CASE)
    assert [(a["number"], a["trigger"]) for a in billing] == [(-1, "billing"), (0, "billing")]
    assert case["attempts"] == 0
    assert db.events(CASE)[-1]["kind"] == "attempt_failed"
    assert "outside Recobra" in db.events(CASE)[-1]["reason"]


def test_second_failure_in_the_same_batch_opens_no_second_case(engine: Engine, commands: Commands, db: Db):
    first = commands.payment_failed("1")
    second = commands.payment_failed("1", occurred_at=T0 + timedelta(minutes=30))

    results = engine.handle_many([first, second])

    assert [r.case_ids for r in results] == [(CASE,), (CASE,)]
    assert db.count("cases") == 1
    assert len(db.attempts(CASE)) == 2
    db.check_case(CASE)


def test_late_failure_of_a_paid_invoice_leaves_it_paid(engine: Engine, commands: Commands, db: Db):
    """An out-of-order PaymentFailed (delivered after the invoice was collected) must
    not turn the paid invoice of a recovered case back into an open one."""
    engine.handle(commands.payment_failed("1"))
    paid_at = T0 + DAY
    engine.handle(commands.payment_succeeded("1", at=paid_at))

    engine.handle(commands.payment_failed("1", occurred_at=T0 - timedelta(minutes=1)))

    assert db.check_case(CASE)["status"] == "recovered"
    invoice = db.invoice("in_1")
    assert (invoice["status"], invoice["paid_at"]) == ("paid", paid_at)


def test_many_cases_in_one_batch_keep_their_counters(
    engine: Engine, gateway: SimulatedGateway, commands: Commands, db: Db
):
    """Bulk paths: a batch of failures, ticks over mixed outcomes, every case consistent."""
    n = 40
    tokens = ["tok_sim_ok", "tok_sim_decline_do_not_honor", "tok_sim_decline_expired_card", "tok_sim_error"]
    engine.handle_many([commands.payment_failed(str(i), token=tokens[i % 4]) for i in range(n)])
    for day in (1, 3, 6, 12):
        engine.tick(T0 + day * DAY + timedelta(hours=1))

    statuses = {}
    for i in range(n):
        statuses[i] = db.check_case(Commands.case_id(str(i)))["status"]
    assert {statuses[i] for i in range(0, n, 4)} == {"recovered"}
    assert {statuses[i] for i in range(1, n, 4)} == {"final_action_done"}
    assert {statuses[i] for i in range(2, n, 4)} == {"final_action_done"}
    # No answer from the gateway spends the budget too (each unknown attempt checked first).
    assert {statuses[i] for i in range(3, n, 4)} == {"final_action_done"}
    keys = charged_keys(gateway)
    assert len(keys) == len(set(keys))


def test_late_failure_after_the_final_action_keeps_the_subscription_canceled(
    engine: Engine, commands: Commands, db: Db
):
    """The billing system's own retry failing after Recobra gave up must not make the
    canceled subscription active again nor reopen the uncollectible invoice."""
    engine.handle(commands.payment_failed("1", decline_code="expired_card"))
    engine.tick(FINAL_AT)
    assert db.subscription("sub_1")["status"] == "canceled"

    engine.handle(commands.payment_failed("1", occurred_at=FINAL_AT + DAY, decline_code="expired_card"))

    assert db.check_case(CASE)["status"] == "final_action_done"
    assert db.subscription("sub_1")["status"] == "canceled"
    assert db.invoice("in_1")["status"] == "uncollectible"


def test_the_same_failed_charge_reported_twice_is_recorded_once(engine: Engine, commands: Commands, db: Db):
    """Two events (say ``invoice.payment_failed`` and ``charge.failed``) for one failed
    charge carry the same gateway reference under different event ids."""
    first = commands.payment_failed("1", gateway_reference="ch_failed_1")
    echo = commands.payment_failed(
        "1", gateway_reference="ch_failed_1", occurred_at=T0 + timedelta(seconds=2)
    )

    engine.handle(first)
    engine.handle(echo)

    assert db.count("processed_events") == 2
    assert db.count("cases") == 1
    assert [a["idempotency_key"] for a in db.attempts(CASE)] == ["ch_failed_1"]
    db.check_case(CASE)


def test_final_action_failing_at_the_gateway_is_tried_again_an_hour_later(
    engine_factory, gateway: SimulatedGateway, commands: Commands, db: Db
):
    class FlakyCancel:
        """The simulated gateway, but cancellations fail once."""

        name = "flaky"

        def __init__(self) -> None:
            self.failures = 0

        def __getattr__(self, name: str):
            return getattr(gateway, name)

        def cancel_subscription(self, subscription_id, *, at, idempotency_key):
            if self.failures == 0:
                self.failures += 1
                raise GatewayError("503 from the gateway", code="unavailable")
            gateway.cancel_subscription(subscription_id, at=at, idempotency_key=idempotency_key)

    engine = engine_factory(gateway=FlakyCancel())
    engine.handle(commands.payment_failed("1", decline_code="expired_card"))

    report = engine.tick(FINAL_AT)

    assert (report.final_actions, report.final_action_failures) == (0, 1)
    case = db.check_case(CASE)
    assert case["status"] == "exhausted"
    assert (case["next_action"], case["next_action_at"]) == ("final_action", FINAL_AT + timedelta(hours=1))
    assert db.events(CASE)[-1]["kind"] == "final_action_failed"
    assert engine.tick(FINAL_AT + timedelta(minutes=59)).claimed == 0

    assert engine.tick(FINAL_AT + timedelta(hours=1)).final_actions == 1
    assert db.check_case(CASE)["status"] == "final_action_done"
    assert [a.idempotency_key for a in gateway.subscription_actions()] == [f"recobra:{CASE}:final"]


def test_new_card_on_an_exhausted_case_reopens_it_when_its_decline_is_retryable(
    engine: Engine, gateway: SimulatedGateway, commands: Commands, db: Db
):
    engine.handle(
        commands.payment_failed("1", token="tok_sim_decline_expired_card", decline_code="expired_card")
    )
    assert db.case(CASE)["status"] == "exhausted"
    at = T0 + timedelta(hours=2)

    engine.handle(commands.payment_method_updated("1", at=at, token="tok_sim_decline_do_not_honor"))

    assert [c.idempotency_key for c in gateway.charges()] == [f"recobra:{CASE}:1"]
    case = db.check_case(CASE)
    assert case["status"] == "open"
    assert (case["attempts"], case["budget_used"]) == (1, 0)
    assert (case["next_action"], case["next_action_at"]) == ("retry", T0 + DAY)
    assert [e["to_status"] for e in db.events(CASE) if e["kind"] == "status_changed"] == ["exhausted", "open"]


def test_times_in_any_zone_are_the_same_instants(engine: Engine, commands: Commands, db: Db):
    tokyo = ZoneInfo("Asia/Tokyo")
    engine.handle(commands.payment_failed("1", occurred_at=T0.astimezone(ZoneInfo("America/Lima"))))

    assert engine.tick((T0 + DAY - timedelta(seconds=1)).astimezone(tokyo)).claimed == 0
    assert engine.tick((T0 + DAY).astimezone(tokyo)).attempts == 1

    case = db.check_case(CASE)
    assert case["opened_at"] == T0
    assert case["next_action_at"] == T0 + 3 * DAY
    assert db.attempts(CASE)[-1]["at"] == T0 + DAY


def test_an_operator_write_off_stops_retries_and_the_final_action(
    engine: Engine, gateway: SimulatedGateway, commands: Commands, db: Db
):
    engine.handle(commands.payment_failed("1"))
    at = T0 + timedelta(hours=5)

    engine.write_off(CASE, at, reason="customer in bankruptcy", operator="ana")

    case = db.check_case(CASE)
    assert (case["status"], case["closed_at"], case["next_action_at"]) == ("written_off", at, None)
    assert "written off by ana: customer in bankruptcy" in db.events(CASE)[-1]["reason"]
    assert db.invoice("in_1")["status"] == "uncollectible"
    assert engine.tick(FINAL_AT + DAY).claimed == 0
    assert gateway.charges() == []  # never charged by Recobra
    assert gateway.subscription_actions() == []
    with pytest.raises(IllegalTransition):
        engine.write_off(CASE, at, reason="again")
    with pytest.raises(LookupError):
        engine.write_off("case_nope", at, reason="x")
