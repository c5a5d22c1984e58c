"""Delivery rules: who can be reached on which channel, suppression, consent, quiet hours
in the customer's zone (across midnight and daylight-saving changes) and frequency caps."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from recobra.domain.messages import (
    TRANSACTIONAL,
    ChannelKind,
    DeliveryRules,
    MessageKind,
    Reachability,
    Verdict,
    decide_delivery,
    end_of_quiet_hours,
    in_quiet_hours,
)

RULES = DeliveryRules()  # quiet 21:00-08:00, 2 a day, 5 a week
NOON = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)  # a Monday
EVERYONE = Reachability(
    email="ana@example.com",
    phone="+34600000000",
    push_subscriptions=1,
    sms_consent=True,
    voice_consent=True,
)
HOUR, DAY = timedelta(hours=1), timedelta(days=1)


def decide(
    kind: MessageKind = MessageKind.PAYMENT_REMINDER,
    channel: ChannelKind = ChannelKind.EMAIL,
    reach: Reachability = EVERYONE,
    *,
    now: datetime = NOON,
    timezone: str = "UTC",
    recent: list[datetime] | None = None,
    rules: DeliveryRules = RULES,
) -> Verdict:
    return decide_delivery(kind, channel, reach, now=now, timezone=timezone, recent=recent or [], rules=rules)


# --------------------------------------------------------------------------- reachability


@pytest.mark.parametrize(
    ("reach", "channel", "expected"),
    [
        (Reachability(), ChannelKind.EMAIL, (False, "no email address")),
        (Reachability(email="a@example.com"), ChannelKind.EMAIL, (True, "no email address")),
        (Reachability(sms_consent=True), ChannelKind.SMS, (False, "no phone number")),
        (Reachability(phone="+1555"), ChannelKind.SMS, (False, "no consent for SMS")),
        (Reachability(phone="+1555", sms_consent=True), ChannelKind.SMS, (True, "no consent for SMS")),
        (
            Reachability(phone="+1555", sms_consent=True, sms_stopped=True),
            ChannelKind.SMS,
            (False, "the customer replied STOP"),
        ),
        (Reachability(voice_consent=True), ChannelKind.VOICE, (False, "no phone number")),
        (Reachability(phone="+1555", sms_consent=True), ChannelKind.VOICE, (False, "no consent for calls")),
        (Reachability(phone="+1555", voice_consent=True), ChannelKind.VOICE, (True, "no consent for calls")),
        (Reachability(), ChannelKind.PUSH, (False, "no push subscription")),
        (Reachability(push_subscriptions=2), ChannelKind.PUSH, (True, "no push subscription")),
        (Reachability(), ChannelKind.IN_APP, (True, "")),
        (Reachability(), ChannelKind.WEBHOOK, (True, "")),
        (Reachability(), ChannelKind.FILE, (True, "")),
    ],
)
def test_can_receive(reach: Reachability, channel: ChannelKind, expected: tuple[bool, str]):
    assert reach.can_receive(channel) == expected


def test_sms_consent_does_not_cover_calls_nor_the_reverse():
    assert not Reachability(phone="+1555", sms_consent=True).can_receive(ChannelKind.VOICE)[0]
    assert not Reachability(phone="+1555", voice_consent=True).can_receive(ChannelKind.SMS)[0]


# --------------------------------------------------------------------------- suppression and consent


def test_a_reachable_customer_at_noon_gets_the_message():
    verdict = decide()
    assert verdict == Verdict(ChannelKind.EMAIL, None, "send by email")
    assert verdict.send


def test_win_back_needs_the_opt_in_even_for_a_suppressed_customer():
    suppressed = Reachability(email="a@example.com", suppressed=True)
    verdict = decide(MessageKind.WIN_BACK, reach=suppressed)
    assert (verdict.send, verdict.defer_until) == (False, None)
    assert verdict.reason == "win-back is sent only to customers who opted in"
    opted_in = Reachability(email="a@example.com", suppressed=True, win_back_opt_in=True)
    assert decide(MessageKind.WIN_BACK, reach=opted_in).send


@pytest.mark.parametrize(
    "kind", sorted(set(MessageKind) - {MessageKind.SUBSCRIPTION_CANCELED, MessageKind.WIN_BACK})
)
def test_a_suppressed_customer_gets_nothing_but_the_cancellation_confirmation(kind: MessageKind):
    reach = Reachability(email="a@example.com", suppressed=True, win_back_opt_in=True)
    verdict = decide(kind, reach=reach)
    assert not verdict.send
    assert verdict.defer_until is None
    assert verdict.reason == "customer canceled: only the cancellation confirmation is sent"
    assert decide(MessageKind.SUBSCRIPTION_CANCELED, reach=reach).send


@pytest.mark.parametrize("kind", list(MessageKind))
def test_unsubscribed_customers_get_only_transactional_messages(kind: MessageKind):
    reach = Reachability(email="a@example.com", unsubscribed=True, win_back_opt_in=True)
    verdict = decide(kind, reach=reach)
    if kind in TRANSACTIONAL:
        assert verdict.send
    else:
        assert (verdict.send, verdict.defer_until) == (False, None)
        assert verdict.reason == "customer unsubscribed from reminders"


def test_transactional_messages_still_need_consent_and_an_address():
    verdict = decide(MessageKind.PAYMENT_RECOVERED, ChannelKind.SMS, Reachability(phone="+1555"))
    assert (verdict.send, verdict.defer_until) == (False, None)
    assert verdict.reason == "sms unavailable: no consent for SMS"
    verdict = decide(MessageKind.PAYMENT_RECOVERED, ChannelKind.EMAIL, Reachability())
    assert verdict.reason == "email unavailable: no email address"


def test_a_stop_reply_skips_sms_with_the_reason():
    reach = Reachability(phone="+1555", sms_consent=True, sms_stopped=True)
    verdict = decide(channel=ChannelKind.SMS, reach=reach)
    assert (verdict.channel, verdict.defer_until) == (None, None)
    assert verdict.reason == "sms unavailable: the customer replied STOP"


# --------------------------------------------------------------------------- quiet hours


@pytest.mark.parametrize(
    ("hour", "quiet"),
    [(20, False), (21, True), (23, True), (0, True), (7, True), (8, False), (12, False)],
)
def test_quiet_hours_across_midnight(hour: int, quiet: bool):
    assert in_quiet_hours(datetime(2025, 3, 3, hour, 30, tzinfo=UTC), RULES) is quiet


@pytest.mark.parametrize(("hour", "quiet"), [(0, False), (1, True), (5, True), (6, False), (22, False)])
def test_quiet_hours_within_one_day(hour: int, quiet: bool):
    rules = DeliveryRules(quiet_start=1, quiet_end=6)
    assert in_quiet_hours(datetime(2025, 3, 3, hour, 0, tzinfo=UTC), rules) is quiet


def test_equal_start_and_end_means_no_quiet_hours():
    rules = DeliveryRules(quiet_start=8, quiet_end=8)
    assert not any(in_quiet_hours(datetime(2025, 3, 3, h, tzinfo=UTC), rules) for h in range(24))


@pytest.mark.parametrize(
    ("now", "timezone", "until"),
    [
        # 22:00 in Madrid (CET): until 08:00 the next morning.
        (datetime(2025, 3, 3, 21, 0, tzinfo=UTC), "Europe/Madrid", datetime(2025, 3, 4, 7, 0, tzinfo=UTC)),
        # 03:00 in Madrid: until 08:00 the same morning.
        (datetime(2025, 3, 4, 2, 0, tzinfo=UTC), "Europe/Madrid", datetime(2025, 3, 4, 7, 0, tzinfo=UTC)),
        # The night summer time starts in Madrid (02:00 -> 03:00): 08:00 CEST is 06:00 UTC.
        (datetime(2025, 3, 29, 21, 0, tzinfo=UTC), "Europe/Madrid", datetime(2025, 3, 30, 6, 0, tzinfo=UTC)),
        # The night it ends (03:00 -> 02:00): 08:00 CET is 07:00 UTC.
        (datetime(2025, 10, 25, 21, tzinfo=UTC), "Europe/Madrid", datetime(2025, 10, 26, 7, tzinfo=UTC)),
        # In the repeated hour itself (02:30 CET, the second time round).
        (datetime(2025, 10, 26, 1, 30, tzinfo=UTC), "Europe/Madrid", datetime(2025, 10, 26, 7, tzinfo=UTC)),
        # New York, the night daylight saving starts: 08:00 EDT is 12:00 UTC.
        (datetime(2025, 3, 9, 3, 0, tzinfo=UTC), "America/New_York", datetime(2025, 3, 9, 12, 0, tzinfo=UTC)),
        # Santiago de Chile, the night summer time ends there (April 2025).
        (datetime(2025, 4, 6, 5, 0, tzinfo=UTC), "America/Santiago", datetime(2025, 4, 6, 12, 0, tzinfo=UTC)),
        # Kathmandu (UTC+05:45): 23:00 local, until 08:00 local = 02:15 UTC.
        (datetime(2025, 3, 3, 17, 15, tzinfo=UTC), "Asia/Kathmandu", datetime(2025, 3, 4, 2, 15, tzinfo=UTC)),
    ],
)
def test_quiet_hours_defer_to_the_local_end_of_quiet_hours(now: datetime, timezone: str, until: datetime):
    verdict = decide(now=now, timezone=timezone)
    assert verdict == Verdict(ChannelKind.EMAIL, until, f"quiet hours in {timezone}: waits until 08:00 local")
    assert end_of_quiet_hours(now, ZoneInfo(timezone), RULES) == until
    assert until.astimezone(ZoneInfo(timezone)).hour == 8


def test_a_quiet_end_that_does_not_exist_that_day_lands_after_the_gap():
    """02:00 does not exist in New York on 9 March 2025 (clocks go from 02:00 to 03:00)."""
    rules = DeliveryRules(quiet_start=22, quiet_end=2)
    now = datetime(2025, 3, 9, 6, 30, tzinfo=UTC)  # 01:30 EST
    verdict = decide(now=now, timezone="America/New_York", rules=rules)
    assert verdict.defer_until == datetime(2025, 3, 9, 7, 0, tzinfo=UTC)  # 03:00 EDT
    assert verdict.defer_until > now


def test_when_the_only_allowed_hour_does_not_exist_that_day_the_message_waits_for_the_next():
    """Quiet from 03:00 to 02:00: only 02:00-02:59 is allowed, and on 9 March 2025 New York
    skips it. The first deferral lands at 03:00 EDT (quiet again), the next one at 02:00
    EDT on the 10th, when the message goes."""
    rules = DeliveryRules(quiet_start=3, quiet_end=2)
    now = datetime(2025, 3, 9, 6, 30, tzinfo=UTC)  # 01:30 EST
    first = decide(now=now, timezone="America/New_York", rules=rules).defer_until
    assert first == datetime(2025, 3, 9, 7, 0, tzinfo=UTC)
    second = decide(now=first, timezone="America/New_York", rules=rules).defer_until
    assert second == datetime(2025, 3, 10, 6, 0, tzinfo=UTC)
    assert decide(now=second, timezone="America/New_York", rules=rules).send


@pytest.mark.parametrize("channel", [ChannelKind.EMAIL, ChannelKind.SMS, ChannelKind.VOICE, ChannelKind.PUSH])
def test_quiet_hours_apply_to_the_quiet_channels(channel: ChannelKind):
    night = datetime(2025, 3, 3, 23, 0, tzinfo=UTC)
    assert decide(channel=channel, now=night).defer_until == datetime(2025, 3, 4, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize("channel", [ChannelKind.IN_APP, ChannelKind.WEBHOOK, ChannelKind.FILE])
def test_quiet_hours_do_not_hold_silent_channels(channel: ChannelKind):
    assert decide(channel=channel, now=datetime(2025, 3, 3, 23, 0, tzinfo=UTC)).send


def test_transactional_email_goes_at_once_but_a_transactional_sms_waits_for_the_morning():
    night = datetime(2025, 3, 3, 23, 0, tzinfo=UTC)
    for kind in TRANSACTIONAL:
        assert decide(kind, ChannelKind.EMAIL, now=night).send
        assert decide(kind, ChannelKind.SMS, now=night).defer_until == datetime(2025, 3, 4, 8, 0, tzinfo=UTC)


def test_quiet_hours_are_the_customers_not_the_servers():
    # 12:00 UTC is 21:00 in Tokyo: quiet there.
    assert decide(timezone="Asia/Tokyo").defer_until == datetime(2025, 3, 3, 23, 0, tzinfo=UTC)
    # 02:00 UTC is 20:00 the day before in Mexico City: not quiet.
    assert decide(now=datetime(2025, 3, 4, 2, 0, tzinfo=UTC), timezone="America/Mexico_City").send


def test_now_in_another_zone_is_the_same_instant():
    madrid = NOON.astimezone(ZoneInfo("Europe/Madrid"))
    assert decide(now=madrid, timezone="Asia/Tokyo") == decide(now=NOON, timezone="Asia/Tokyo")


# --------------------------------------------------------------------------- caps


def test_the_daily_cap_waits_until_the_oldest_counted_message_is_a_day_old():
    recent = [NOON - 3 * HOUR, NOON - HOUR]
    verdict = decide(recent=recent)
    assert verdict == Verdict(ChannelKind.EMAIL, NOON + 21 * HOUR, "daily cap of 2 messages reached")


def test_a_message_exactly_a_day_old_no_longer_counts():
    assert decide(recent=[NOON - DAY, NOON - HOUR]).send


def test_the_weekly_cap_waits_until_the_oldest_counted_message_is_a_week_old():
    recent = [NOON - 6 * DAY, NOON - 5 * DAY, NOON - 4 * DAY, NOON - 3 * DAY, NOON - 2 * DAY]
    verdict = decide(recent=recent)
    assert verdict == Verdict(ChannelKind.EMAIL, NOON + DAY, "weekly cap of 5 messages reached")


def test_caps_count_in_any_order_and_ignore_older_messages():
    recent = [NOON - HOUR, NOON - 30 * DAY, NOON - 2 * HOUR]
    assert decide(recent=recent).defer_until == NOON - 2 * HOUR + DAY


def test_transactional_messages_skip_the_caps():
    recent = [NOON - HOUR * i for i in range(1, 8)]
    for kind in TRANSACTIONAL:
        assert decide(kind, recent=recent).send
    assert not decide(MessageKind.PAYMENT_FAILED, recent=recent).send


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quiet_start": 24}, "quiet hours must be 0-23"),
        ({"quiet_end": -1}, "quiet hours must be 0-23"),
        ({"max_per_day": 0}, "max_per_day"),
        ({"max_per_day": 3, "max_per_week": 2}, "max_per_day"),
    ],
)
def test_rules_are_validated(kwargs: dict[str, int], message: str):
    with pytest.raises(ValueError, match=message):
        DeliveryRules(**kwargs)


# --------------------------------------------------------------------------- properties

ZONES = [
    "UTC",
    "Europe/Madrid",
    "Europe/London",
    "America/New_York",
    "America/Mexico_City",
    "America/Santiago",
    "America/Sao_Paulo",
    "America/Havana",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Apia",
    "America/St_Johns",
]
instants = st.datetimes(
    min_value=datetime(2010, 1, 1),  # noqa: DTZ001 - hypothesis takes naive bounds
    max_value=datetime(2035, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)
quiet_channels = st.sampled_from([ChannelKind.EMAIL, ChannelKind.SMS, ChannelKind.VOICE, ChannelKind.PUSH])
hours = st.integers(0, 23)


@settings(max_examples=600, deadline=None)
@example(
    now=datetime(2025, 3, 9, 6, 30, tzinfo=UTC),
    timezone="America/New_York",
    start=3,
    end=2,
    channel=ChannelKind.EMAIL,
)
@example(
    now=datetime(2025, 3, 29, 23, 0, tzinfo=UTC),
    timezone="Europe/Madrid",
    start=21,
    end=2,
    channel=ChannelKind.SMS,
)
@given(now=instants, timezone=st.sampled_from(ZONES), start=hours, end=hours, channel=quiet_channels)
def test_a_quiet_hours_deferral_is_in_the_future_and_outside_quiet_hours(
    now: datetime, timezone: str, start: int, end: int, channel: ChannelKind
):
    rules = DeliveryRules(quiet_start=start, quiet_end=end)
    zone = ZoneInfo(timezone)
    verdict = decide(channel=channel, now=now, timezone=timezone, rules=rules)
    local = now.astimezone(zone)
    if verdict.defer_until is None:
        assert verdict.send
        assert not in_quiet_hours(local, rules)
        return
    until = verdict.defer_until
    assert in_quiet_hours(local, rules)
    assert until.tzinfo is not None
    assert until > now
    assert until - now <= timedelta(hours=26)  # never skips a whole day
    local_until = until.astimezone(zone)
    if in_quiet_hours(local_until, rules):
        # Only when quiet_end did not exist on that day (clocks jumped over it) and the
        # hour after the jump is quiet again: see the test of that case above.
        assert not _exists(local_until.date(), end, zone), (local, local_until)
        until = decide(channel=channel, now=until, timezone=timezone, rules=rules).defer_until
        assert until is not None
        assert not in_quiet_hours(until.astimezone(zone), rules)
    # At that time, the message goes.
    assert decide(channel=channel, now=until, timezone=timezone, rules=rules).send


def _exists(day: date, hour: int, zone: ZoneInfo) -> bool:
    wall = datetime.combine(day, time(hour), zone)
    return wall.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall.replace(tzinfo=None)


@settings(max_examples=400, deadline=None)
@given(
    now=instants,
    timezone=st.sampled_from(ZONES),
    ago=st.lists(st.integers(0, 8 * 24 * 60), max_size=12),
    per_day=st.integers(1, 4),
    extra_week=st.integers(0, 6),
)
def test_following_deferrals_a_message_goes_out_outside_quiet_hours_and_within_the_caps(
    now: datetime, timezone: str, ago: list[int], per_day: int, extra_week: int
):
    rules = DeliveryRules(max_per_day=per_day, max_per_week=per_day + extra_week)
    zone = ZoneInfo(timezone)
    recent = [now - timedelta(minutes=m) for m in ago]
    at = now
    for _ in range(20):
        verdict = decide(now=at, timezone=timezone, recent=recent, rules=rules)
        if verdict.send:
            break
        assert verdict.defer_until is not None
        assert verdict.defer_until > at  # every deferral moves forward
        at = verdict.defer_until
    else:
        pytest.fail(f"still deferred after 20 decisions (at {at})")
    assert not in_quiet_hours(at.astimezone(zone), rules)
    assert sum(1 for t in recent if at - DAY < t <= at) < rules.max_per_day
    assert sum(1 for t in recent if at - 7 * DAY < t <= at) < rules.max_per_week
