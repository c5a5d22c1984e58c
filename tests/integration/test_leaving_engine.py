"""The engine's commands for customers' own changes: pause, discount, plan change,
cancellation from the hosted page, reactivation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import T0, TEST_POLICY, Commands, Db, EngineFactory

from recobra.domain.model import Interval, Plan, Subscription, SubscriptionStatus
from recobra.domain.money import Money
from recobra.engine.commands import (
    DiscountGranted,
    PlanChanged,
    SubscriptionCanceled,
    SubscriptionPaused,
    SubscriptionReactivated,
    SubscriptionUpdated,
)
from recobra.engine.service import Engine, ReactivationOutcome

AT = T0 + timedelta(hours=1)


@pytest.fixture
def subscribed(engine: Engine, commands: Commands) -> Engine:
    sub = commands.subscription("1")
    engine.handle(SubscriptionUpdated("evt_sub", T0, commands.customer("1"), sub))
    basic = Plan("basic", "Basic", Interval.MONTH, Money(900, "USD"))
    engine.handle(
        SubscriptionUpdated(
            "evt_other",
            T0,
            commands.customer("2"),
            Subscription("sub_2", "cus_2", basic, SubscriptionStatus.ACTIVE, T0),
        )
    )
    return engine


def test_a_pause_is_recorded_once(subscribed: Engine, db: Db) -> None:
    pause = SubscriptionPaused("evt_p", AT, "sub_1", AT + timedelta(days=30), reason="save offer")
    assert not subscribed.handle(pause).duplicate
    assert subscribed.handle(pause).duplicate
    sub = db.subscription("sub_1")
    assert (sub["status"], sub["paused_until"]) == ("paused", AT + timedelta(days=30))
    (change,) = db.rows("subscription_events")
    assert (change["kind"], change["customer_id"]) == ("paused", "cus_1")
    assert "save offer" in change["reason"]


def test_a_discount_and_a_plan_change(subscribed: Engine, db: Db) -> None:
    subscribed.handle(DiscountGranted("evt_d", AT, "sub_1", 20, 2))
    subscribed.handle(PlanChanged("evt_c", AT, "sub_1", "basic"))
    sub = db.subscription("sub_1")
    assert (sub["discount_percent"], sub["discount_cycles"], sub["plan_id"]) == (20, 2, "basic")
    assert [c["kind"] for c in db.rows("subscription_events", order_by=("id",))] == [
        "discounted",
        "plan_changed",
    ]


def test_unknown_subscriptions_and_plans_are_ignored(subscribed: Engine, db: Db) -> None:
    assert "unknown subscription" in subscribed.handle(DiscountGranted("evt_x", AT, "sub_404", 20, 2)).note
    assert "unknown plan" in subscribed.handle(PlanChanged("evt_y", AT, "sub_1", "gold")).note
    assert db.subscription("sub_1")["plan_id"] == "plan_usd_1900"
    assert db.rows("subscription_events") == []


def test_commands_check_their_values() -> None:
    with pytest.raises(ValueError, match="until"):
        SubscriptionPaused("e", AT, "sub_1", AT)
    with pytest.raises(ValueError, match="percent"):
        DiscountGranted("e", AT, "sub_1", 0, 2)
    with pytest.raises(ValueError, match="cycles"):
        DiscountGranted("e", AT, "sub_1", 10, 0)
    with pytest.raises(ValueError, match="plan_id"):
        PlanChanged("e", AT, "sub_1", "")


def test_reactivation_outcomes(subscribed: Engine, commands: Commands, db: Db) -> None:
    assert subscribed.reactivate(SubscriptionReactivated("evt_r0", AT, "sub_404")).outcome is (
        ReactivationOutcome.UNKNOWN
    )
    assert subscribed.reactivate(SubscriptionReactivated("evt_r1", AT, "sub_1")).outcome is (
        ReactivationOutcome.NOT_NEEDED
    )
    subscribed.handle(commands.subscription_canceled("1", at=AT))
    back = SubscriptionReactivated("evt_r2", AT + timedelta(days=1), "sub_1")
    assert subscribed.reactivate(back).outcome is ReactivationOutcome.ACTIVE
    assert subscribed.reactivate(back).outcome is ReactivationOutcome.DUPLICATE
    assert db.subscription("sub_1")["status"] == "active"
    assert [c["kind"] for c in db.rows("subscription_events", order_by=("id",))] == [
        "canceled",
        "reactivated",
    ]


def test_only_a_cancellation_on_the_hosted_page_skips_the_survey_link(
    engine_factory: EngineFactory, commands: Commands, db: Db
) -> None:
    engine = engine_factory(
        TEST_POLICY + '\n[notifications]\nsubscription_canceled = { channels = ["email"] }\n'
    )
    for key in ("1", "2"):
        engine.handle(
            SubscriptionUpdated(f"evt_{key}", T0, commands.customer(key), commands.subscription(key))
        )
    engine.handle(commands.subscription_canceled("1", at=AT))  # reported by billing
    engine.customer_change(SubscriptionCanceled("hosted:cancel:n2", AT, "sub_2", surveyed=True))
    contexts = {
        r["customer_id"]: r["data"]["context"] for r in db.rows("messages", kind="subscription_canceled")
    }
    assert contexts == {
        "cus_1": {"for_subscription": "sub_1"},
        "cus_2": {"for_subscription": "sub_2", "surveyed": "yes"},
    }
    assert db.subscription("sub_1")["canceled_at"] == AT
