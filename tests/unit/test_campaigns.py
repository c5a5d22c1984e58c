"""Pre-dunning campaigns: when a card stops working, which reminders an update plans
(and under which keys), and whether a planned reminder still applies when due."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from recobra.domain.messages import ChannelKind, MessageKind
from recobra.domain.model import Customer, Interval, PaymentMethod, Plan, Subscription, SubscriptionStatus
from recobra.domain.money import Money
from recobra.domain.policy import Campaign
from recobra.engine.campaigns import campaign_messages, card_expiry_end, still_relevant

DAY, HOUR = timedelta(days=1), timedelta(hours=1)
NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
RENEWS_AT = datetime(2025, 5, 10, 15, 0, tzinfo=UTC)

CARD_CAMPAIGN = Campaign(
    "card-expiring", MessageKind.CARD_EXPIRING, (30 * DAY, 7 * DAY), (ChannelKind.EMAIL, ChannelKind.IN_APP)
)
RENEWAL_CAMPAIGN = Campaign(
    "annual-renewal",
    MessageKind.RENEWAL_UPCOMING,
    (30 * DAY,),
    (ChannelKind.EMAIL,),
    intervals=frozenset({Interval.YEAR}),
)
OFFER_CAMPAIGN = Campaign(
    "renewal-offer",
    MessageKind.RENEWAL_OFFER,
    (14 * DAY + 12 * HOUR,),
    (ChannelKind.EMAIL,),
    offer="20% off if you renew this week",
)


def customer(timezone: str = "UTC") -> Customer:
    return Customer(id="cus_1", email="ana@example.com", locale="es", timezone=timezone, country="ES")


def card(pm_id: str = "pm_1", *, exp_month: int = 4, exp_year: int = 2025) -> PaymentMethod:
    return PaymentMethod(
        id=pm_id,
        customer_id="cus_1",
        gateway_token="tok",
        brand="visa",
        last4="4242",
        exp_month=exp_month,
        exp_year=exp_year,
    )


def subscription(
    *, interval: Interval = Interval.YEAR, renews_at: datetime | None = RENEWS_AT
) -> Subscription:
    plan = Plan(id="plan_pro", name="Pro", interval=interval, price=Money(19900, "EUR"))
    return Subscription(
        id="sub_1",
        customer_id="cus_1",
        plan=plan,
        status=SubscriptionStatus.ACTIVE,
        started_at=NOW - 300 * DAY,
        renews_at=renews_at,
    )


# --------------------------------------------------------------------------- card_expiry_end


@pytest.mark.parametrize(
    ("exp_month", "exp_year", "timezone", "end"),
    [
        (4, 2025, "UTC", datetime(2025, 5, 1, tzinfo=UTC)),
        # December: the card works until the new year begins.
        (12, 2025, "UTC", datetime(2026, 1, 1, tzinfo=UTC)),
        # Local midnight: Bogotá is UTC-5, Tokyo UTC+9.
        (4, 2025, "America/Bogota", datetime(2025, 5, 1, 5, 0, tzinfo=UTC)),
        (4, 2025, "Asia/Tokyo", datetime(2025, 4, 30, 15, 0, tzinfo=UTC)),
        # Madrid in summer time (CEST, UTC+2) and in winter time (CET, UTC+1).
        (3, 2025, "Europe/Madrid", datetime(2025, 3, 31, 22, 0, tzinfo=UTC)),
        (10, 2025, "Europe/Madrid", datetime(2025, 10, 31, 23, 0, tzinfo=UTC)),
        # February of a leap year.
        (2, 2028, "UTC", datetime(2028, 3, 1, tzinfo=UTC)),
    ],
)
def test_a_card_stops_working_when_its_expiry_month_ends_locally(
    exp_month: int, exp_year: int, timezone: str, end: datetime
):
    result = card_expiry_end(card(exp_month=exp_month, exp_year=exp_year), timezone)
    assert result == end
    assert result.tzinfo is UTC
    local = result.astimezone(ZoneInfo(timezone))
    assert (local.day, local.hour, local.minute) == (1, 0, 0)


# --------------------------------------------------------------------------- campaign_messages


def test_card_reminders_at_each_offset_on_each_channel():
    entries = campaign_messages([CARD_CAMPAIGN], customer(), subscription(), card(), now=NOW)

    end = datetime(2025, 5, 1, tzinfo=UTC)
    assert [(e.key, e.channel, e.due_at) for e in entries] == [
        ("card:pm_1:2025-04:card-expiring:30d:email", ChannelKind.EMAIL, end - 30 * DAY),
        ("card:pm_1:2025-04:card-expiring:30d:in_app", ChannelKind.IN_APP, end - 30 * DAY),
        ("card:pm_1:2025-04:card-expiring:7d:email", ChannelKind.EMAIL, end - 7 * DAY),
        ("card:pm_1:2025-04:card-expiring:7d:in_app", ChannelKind.IN_APP, end - 7 * DAY),
    ]
    for entry in entries:
        assert entry.kind is MessageKind.CARD_EXPIRING
        assert (entry.customer_id, entry.case_id) == ("cus_1", None)
        assert entry.step == f"card-expiring:{entry.key.split(':')[4]}"
        assert dict(entry.context) == {"payment_method": "pm_1", "subscription": "sub_1"}
        assert (entry.fallback, entry.fallback_after, entry.only_if_unclicked) == ((), None, False)


def test_renewal_reminders_carry_the_subscription_and_its_date():
    (entry,) = campaign_messages([RENEWAL_CAMPAIGN], customer(), subscription(), card(), now=NOW)

    assert entry.key == "renewal:sub_1:20250510:annual-renewal:30d:email"
    assert entry.kind is MessageKind.RENEWAL_UPCOMING
    assert entry.due_at == RENEWS_AT - 30 * DAY
    assert dict(entry.context) == {"subscription": "sub_1", "renews_at": "2025-05-10T15:00:00+00:00"}


def test_a_renewal_date_in_another_zone_is_the_same_renewal():
    madrid = RENEWS_AT.astimezone(ZoneInfo("Europe/Madrid"))
    a = campaign_messages([RENEWAL_CAMPAIGN], customer(), subscription(), None, now=NOW)
    b = campaign_messages([RENEWAL_CAMPAIGN], customer(), subscription(renews_at=madrid), None, now=NOW)
    assert a == b


def test_an_offer_campaign_keeps_its_offer_and_names_odd_durations():
    (entry,) = campaign_messages([OFFER_CAMPAIGN], customer(), subscription(), None, now=NOW)
    assert entry.step == "renewal-offer:14d12h"
    assert entry.due_at == RENEWS_AT - 14 * DAY - 12 * HOUR
    assert dict(entry.context)["offer"] == "20% off if you renew this week"


def test_reminders_already_past_are_not_planned_and_one_due_now_is():
    now = datetime(2025, 4, 24, tzinfo=UTC)  # exactly 7 days before the card's end
    entries = campaign_messages([CARD_CAMPAIGN], customer(), subscription(), card(), now=now)
    assert {e.step for e in entries} == {"card-expiring:7d"}
    assert {e.due_at for e in entries} == {now}
    later = campaign_messages([CARD_CAMPAIGN], customer(), subscription(), card(), now=now + DAY)
    assert later == []


def test_nothing_to_plan_without_a_card_a_renewal_date_or_the_right_interval():
    campaigns = [CARD_CAMPAIGN, RENEWAL_CAMPAIGN]
    assert campaign_messages(campaigns, customer(), subscription(renews_at=None), None, now=NOW) == []
    monthly = campaign_messages(campaigns, customer(), subscription(interval=Interval.MONTH), None, now=NOW)
    assert monthly == []
    any_interval = Campaign("renewal", MessageKind.RENEWAL_UPCOMING, (30 * DAY,), (ChannelKind.EMAIL,))
    assert (
        len(
            campaign_messages(
                [any_interval], customer(), subscription(interval=Interval.MONTH), None, now=NOW
            )
        )
        == 1
    )


def test_the_same_update_plans_the_same_keys_and_a_new_card_or_date_new_ones():
    campaigns = [CARD_CAMPAIGN, RENEWAL_CAMPAIGN]
    first = campaign_messages(campaigns, customer(), subscription(), card(), now=NOW)
    again = campaign_messages(campaigns, customer(), subscription(), card(), now=NOW + DAY)
    assert [e.key for e in again] == [e.key for e in first]
    new_card = campaign_messages(campaigns, customer(), subscription(), card("pm_2", exp_year=2025), now=NOW)
    card_keys = {e.key for e in new_card if e.kind is MessageKind.CARD_EXPIRING}
    assert card_keys.isdisjoint({e.key for e in first})
    moved = subscription(renews_at=RENEWS_AT + DAY)
    renewed = campaign_messages(campaigns, customer(), moved, card(), now=NOW)
    renewal_keys = {e.key for e in renewed if e.kind is MessageKind.RENEWAL_UPCOMING}
    assert renewal_keys
    assert renewal_keys.isdisjoint({e.key for e in first})
    # The same card, renewed with a new expiry, is a new card as far as reminders go.
    extended = campaign_messages([CARD_CAMPAIGN], customer(), subscription(), card(exp_year=2026), now=NOW)
    assert {e.key for e in extended}.isdisjoint({e.key for e in first})


def test_card_reminders_follow_the_customers_zone():
    entries = campaign_messages([CARD_CAMPAIGN], customer("America/Bogota"), subscription(), card(), now=NOW)
    end = datetime(2025, 5, 1, 5, tzinfo=UTC)  # midnight in Bogotá (UTC-5)
    assert {e.due_at for e in entries} == {end - 30 * DAY, end - 7 * DAY}


# --------------------------------------------------------------------------- still_relevant


def _context(entry_index: int = 0, campaigns: list[Campaign] | None = None) -> Mapping[str, str]:
    """The context a planned reminder carries (checked again when it comes due)."""
    entries = campaign_messages(campaigns or [CARD_CAMPAIGN], customer(), subscription(), card(), now=NOW)
    return entries[entry_index].context


def test_a_card_reminder_is_relevant_while_the_card_is_the_default():
    assert still_relevant(
        _context(), default_method_id="pm_1", subscription_status="active", renews_at=None
    ) == (True, "")


@pytest.mark.parametrize("default", ["pm_2", None])
def test_a_replaced_card_drops_its_reminders(default: str | None):
    assert still_relevant(
        _context(), default_method_id=default, subscription_status="active", renews_at=RENEWS_AT
    ) == (False, "the card was replaced")


@pytest.mark.parametrize("status", ["active", "past_due"])
def test_a_renewal_reminder_is_relevant_for_a_live_subscription_on_the_same_date(status: str):
    context = _context(campaigns=[RENEWAL_CAMPAIGN])
    verdict = still_relevant(context, default_method_id=None, subscription_status=status, renews_at=RENEWS_AT)
    assert verdict == (True, "")
    madrid = RENEWS_AT.astimezone(ZoneInfo("Europe/Madrid"))
    assert still_relevant(context, default_method_id=None, subscription_status=status, renews_at=madrid)[0]


@pytest.mark.parametrize("status", ["canceled", "paused", "unpaid", None])
def test_a_renewal_reminder_is_dropped_when_the_subscription_is_not_live(status: str | None):
    context = _context(campaigns=[RENEWAL_CAMPAIGN])
    verdict = still_relevant(context, default_method_id=None, subscription_status=status, renews_at=RENEWS_AT)
    assert verdict == (False, f"the subscription is {status}")


@pytest.mark.parametrize("renews_at", [RENEWS_AT + DAY, RENEWS_AT - timedelta(seconds=1), None])
def test_a_renewal_reminder_is_dropped_when_the_date_changed(renews_at: datetime | None):
    context = _context(campaigns=[RENEWAL_CAMPAIGN])
    verdict = still_relevant(
        context, default_method_id=None, subscription_status="active", renews_at=renews_at
    )
    assert verdict == (False, "the renewal date changed")


def test_an_entry_without_a_context_is_always_relevant():
    assert still_relevant({}, default_method_id=None, subscription_status=None, renews_at=None) == (True, "")
