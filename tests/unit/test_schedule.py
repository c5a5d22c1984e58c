"""The scheduler: paydays, local hours, time zones and DST, and plan_retry's guarantees."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import holidays as holidays_lib
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from recobra.calendars import PublicHolidays
from recobra.domain.case import FinalAction
from recobra.domain.declines import STRIPE_DECLINE_CODES, Decline, DeclineCategory, classify
from recobra.domain.errors import DomainError
from recobra.domain.model import Funding
from recobra.domain.policy import PaydayRule, RetryPolicy, Strategy, Timing
from recobra.domain.schedule import (
    NoHolidays,
    RetryContext,
    fit_local_hours,
    is_business_day,
    next_payday,
    paydays_in_month,
    plan_retry,
)

D = timedelta(days=1)
H = timedelta(hours=1)
M = timedelta(minutes=1)
LBD = PaydayRule.LAST_BUSINESS_DAY
DEFAULT_RULES: tuple[int | PaydayRule, ...] = (1, 15, LBD)

MEXICO = ZoneInfo("America/Mexico_City")
MADRID = ZoneInfo("Europe/Madrid")
SANTIAGO = ZoneInfo("America/Santiago")

# One calendar for the whole module: it caches (country, year) lookups.
HOLIDAYS = PublicHolidays()
NONE = NoHolidays()

CODE_OF = {
    DeclineCategory.HARD: "expired_card",
    DeclineCategory.INSUFFICIENT_FUNDS: "insufficient_funds",
    DeclineCategory.TEMPORARY: "generic_decline",
    DeclineCategory.PROCESSING_ERROR: "processing_error",
    DeclineCategory.FRAUD_SUSPECT: "fraudulent",
    DeclineCategory.AUTHENTICATION_REQUIRED: "authentication_required",
    DeclineCategory.UNKNOWN: "duplicate_transaction",
}
RETRYABLE = [c for c in DeclineCategory if c.retryable]
NOT_RETRYABLE = [c for c in DeclineCategory if not c.retryable]


def d(text: str) -> date:
    return date.fromisoformat(text)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def is_public_holiday(country: str, day: date) -> bool:
    """Straight from the holidays library, to check the dates these tests rely on."""
    return day in holidays_lib.country_holidays(country, years=day.year)


def test_category_codes_are_what_they_say() -> None:
    for category, code in CODE_OF.items():
        assert classify(code).category is category


# -- paydays ------------------------------------------------------------------------


def test_paydays_without_holidays() -> None:
    # June 2026: 1st Monday, 15th Monday, 30th Tuesday.
    assert paydays_in_month(2026, 6, DEFAULT_RULES, "MX", NONE) == [
        d("2026-06-01"),
        d("2026-06-15"),
        d("2026-06-30"),
    ]


def test_weekend_paydays_move_to_the_business_day_before() -> None:
    # March 2026: the 1st and the 15th are Sundays; the 1st is paid on Friday Feb 27.
    assert paydays_in_month(2026, 3, DEFAULT_RULES, "MX", NONE) == [
        d("2026-02-27"),
        d("2026-03-13"),
        d("2026-03-31"),
    ]
    # May 2026: the 31st is a Sunday, so the last business day is Friday the 29th.
    assert paydays_in_month(2026, 5, (LBD,), "MX", NONE) == [d("2026-05-29")]


def test_day_31_means_the_month_end_in_short_months() -> None:
    assert paydays_in_month(2027, 2, (31,), "MX", NONE) == [d("2027-02-26")]  # Sun 28 -> Fri 26
    assert paydays_in_month(2028, 2, (30,), "MX", NONE) == [d("2028-02-29")]  # leap year, Tuesday
    assert paydays_in_month(2026, 4, (31,), "MX", NONE) == [d("2026-04-30")]


def test_paydays_that_land_on_the_same_day_are_listed_once() -> None:
    # Aug 2026: the 15th is a Saturday, so 14 and 15 are both paid on Friday the 14th.
    assert paydays_in_month(2026, 8, (15, 14), "MX", NONE) == [d("2026-08-14")]
    assert paydays_in_month(2026, 7, (31, LBD), "MX", NONE) == [d("2026-07-31")]


@pytest.mark.parametrize(
    ("country", "holiday", "year", "month", "rule", "paid_on"),
    [
        # Mexico: Independence Day, Wednesday Sept 16 2026.
        ("MX", "2026-09-16", 2026, 9, 16, "2026-09-15"),
        # Mexico: Revolution Day, Monday Nov 15 2027: paid the Friday before.
        ("MX", "2027-11-15", 2027, 11, 15, "2027-11-12"),
        # Mexico: Constitution Day, Monday Feb 1 2027: paid in January.
        ("MX", "2027-02-01", 2027, 2, 1, "2027-01-29"),
        # Colombia: Sacred Heart (observed), Monday June 15 2026.
        ("CO", "2026-06-15", 2026, 6, 15, "2026-06-12"),
        # Colombia: Monday June 30 2025 is a holiday, so June's last business day is the 27th.
        ("CO", "2025-06-30", 2025, 6, LBD, "2025-06-27"),
        # Colombia: Corpus Christi (observed), Monday May 31 2027.
        ("CO", "2027-05-31", 2027, 5, LBD, "2027-05-28"),
        # Spain: Assumption Day, Friday Aug 15 2025.
        ("ES", "2025-08-15", 2025, 8, 15, "2025-08-14"),
        # Spain: Labour Day, Friday May 1 2026: paid on April 30.
        ("ES", "2026-05-01", 2026, 5, 1, "2026-04-30"),
        # Spain: New Year's Day, Friday Jan 1 2027: paid on Dec 31 2026, across the year end.
        ("ES", "2027-01-01", 2027, 1, 1, "2026-12-31"),
    ],
)
def test_holiday_paydays_move_to_the_business_day_before(
    country: str, holiday: str, year: int, month: int, rule: int | PaydayRule, paid_on: str
) -> None:
    assert is_public_holiday(country, d(holiday)), "the test's premise: a real public holiday"
    assert d(holiday).weekday() < 5
    assert HOLIDAYS.is_holiday(country, d(holiday))
    assert paydays_in_month(year, month, (rule,), country, HOLIDAYS) == [d(paid_on)]
    # without the calendar the nominal day is kept
    assert paydays_in_month(year, month, (rule,), country, NONE) == [d(holiday)]


def test_a_holiday_in_another_country_does_not_move_the_payday() -> None:
    assert not is_public_holiday("ES", d("2026-09-16"))
    assert paydays_in_month(2026, 9, (16,), "ES", HOLIDAYS) == [d("2026-09-16")]


def test_business_days() -> None:
    assert is_business_day(d("2026-09-15"), "MX", HOLIDAYS)
    assert not is_business_day(d("2026-09-16"), "MX", HOLIDAYS)
    assert is_business_day(d("2026-09-16"), "MX", NONE)
    assert not is_business_day(d("2026-09-19"), "MX", NONE)  # Saturday
    assert not is_business_day(d("2026-09-20"), "MX", NONE)  # Sunday


@pytest.mark.parametrize(
    ("on_or_after", "rules", "country", "expected"),
    [
        ("2026-03-10", DEFAULT_RULES, "MX", "2026-03-13"),
        ("2026-03-13", DEFAULT_RULES, "MX", "2026-03-13"),  # on the day itself
        ("2026-03-14", DEFAULT_RULES, "MX", "2026-03-31"),
        ("2026-04-01", DEFAULT_RULES, "MX", "2026-04-01"),
        # across a month end: only the 15th is a payday
        ("2026-03-16", (15,), "MX", "2026-04-15"),
        # across the year end
        ("2026-12-16", (15,), "ES", "2027-01-15"),
        ("2026-12-30", (1,), "ES", "2026-12-31"),  # Jan 1 2027 is a holiday: paid Dec 31
        ("2027-01-01", (1,), "ES", "2027-02-01"),
        ("2025-12-20", (LBD,), "CO", "2025-12-31"),
        ("2026-01-01", (LBD,), "CO", "2026-01-30"),  # Sat 31 -> Fri 30
        # the month-end payday of the next month moved into this one
        ("2026-07-20", (1,), "MX", "2026-07-31"),  # Aug 1 2026 is a Saturday
        # a holiday payday moved earlier, seen from before and after it
        ("2026-09-01", (16,), "MX", "2026-09-15"),
        ("2026-09-16", (16,), "MX", "2026-10-16"),
    ],
)
def test_next_payday(
    on_or_after: str, rules: tuple[int | PaydayRule, ...], country: str, expected: str
) -> None:
    assert next_payday(d(on_or_after), rules, country, HOLIDAYS) == d(expected)


rules_strategy = st.lists(st.one_of(st.integers(1, 31), st.just(LBD)), min_size=1, max_size=4).map(tuple)


@settings(max_examples=200, deadline=None)
@given(
    day=st.dates(date(2020, 1, 1), date(2035, 12, 31)),
    rules=rules_strategy,
    country=st.sampled_from(["MX", "CO", "ES", "CL"]),
)
def test_next_payday_is_the_first_business_payday_on_or_after(
    day: date, rules: tuple[int | PaydayRule, ...], country: str
) -> None:
    payday = next_payday(day, rules, country, HOLIDAYS)
    assert payday >= day
    assert is_business_day(payday, country, HOLIDAYS)
    assert payday - day <= timedelta(days=62)
    months = {
        (payday.year, payday.month),
        ((payday + timedelta(days=10)).year, (payday + timedelta(days=10)).month),
    }
    assert any(payday in paydays_in_month(y, m, rules, country, HOLIDAYS) for y, m in months)
    # nothing in between is a payday
    if payday > day:
        assert next_payday(payday - timedelta(days=1), rules, country, HOLIDAYS) == payday


# -- local hours --------------------------------------------------------------------

NO_JITTER = Timing(jitter_minutes=0)


def local(dt: datetime, zone: ZoneInfo) -> datetime:
    return dt.astimezone(zone)


@pytest.mark.parametrize(
    ("local_time", "expected_local"),
    [
        ((2026, 3, 11, 3, 0), (2026, 3, 11, 9, 0)),  # night: moved to start_hour
        ((2026, 3, 11, 0, 0), (2026, 3, 11, 9, 0)),
        ((2026, 3, 11, 9, 0), (2026, 3, 11, 9, 0)),  # start_hour itself is in
        ((2026, 3, 11, 12, 34), (2026, 3, 11, 12, 34)),  # inside: unchanged
        ((2026, 3, 11, 19, 59), (2026, 3, 11, 19, 59)),
        ((2026, 3, 11, 20, 0), (2026, 3, 12, 9, 0)),  # end_hour is out
        ((2026, 3, 11, 22, 30), (2026, 3, 12, 9, 0)),  # evening: next morning
        ((2026, 3, 31, 23, 0), (2026, 4, 1, 9, 0)),  # across a month end
        ((2026, 12, 31, 21, 0), (2027, 1, 1, 9, 0)),  # and a year end
    ],
)
def test_fit_local_hours(local_time: tuple[int, ...], expected_local: tuple[int, ...]) -> None:
    at = datetime(*local_time, tzinfo=MEXICO).astimezone(UTC)  # type: ignore[misc]
    fitted = fit_local_hours(at, MEXICO, NO_JITTER, "MX", HOLIDAYS)
    assert fitted.tzinfo is UTC, "the answer keeps the caller's time zone"
    assert fitted.astimezone(MEXICO) == datetime(*expected_local, tzinfo=MEXICO)  # type: ignore[misc]


def test_fit_local_hours_uses_the_customers_zone_not_utc() -> None:
    # 14:00 UTC is 23:00 in Tokyo: too late there, so the next Tokyo morning.
    fitted = fit_local_hours(utc(2026, 3, 11, 14, 0), ZoneInfo("Asia/Tokyo"), NO_JITTER, "JP", NONE)
    assert fitted == utc(2026, 3, 12, 0, 0)  # 09:00 JST


def test_weekdays_only_skips_weekends_and_holidays() -> None:
    timing = Timing(weekdays_only=True, jitter_minutes=0)
    monday_9 = datetime(2026, 9, 14, 9, 0, tzinfo=MEXICO)
    thursday_9 = datetime(2026, 9, 17, 9, 0, tzinfo=MEXICO)
    saturday = datetime(2026, 9, 12, 10, 0, tzinfo=MEXICO)
    assert fit_local_hours(saturday, MEXICO, timing, "MX", HOLIDAYS) == monday_9
    # Independence Day (a Wednesday) is skipped too
    holiday = datetime(2026, 9, 16, 10, 0, tzinfo=MEXICO)
    assert fit_local_hours(holiday, MEXICO, timing, "MX", HOLIDAYS) == thursday_9
    # Tuesday evening -> Wednesday is a holiday -> Thursday morning
    evening = datetime(2026, 9, 15, 21, 0, tzinfo=MEXICO)
    assert fit_local_hours(evening, MEXICO, timing, "MX", HOLIDAYS) == thursday_9
    # without weekdays_only the weekend and the holiday are fine
    assert fit_local_hours(holiday, MEXICO, NO_JITTER, "MX", HOLIDAYS) == holiday
    assert fit_local_hours(saturday, MEXICO, NO_JITTER, "MX", HOLIDAYS) == saturday


def test_end_hour_24_means_until_midnight() -> None:
    timing = Timing(start_hour=6, end_hour=24, jitter_minutes=0)
    late = datetime(2026, 3, 11, 23, 59, tzinfo=MEXICO)
    assert fit_local_hours(late, MEXICO, timing, "MX", NONE) == late
    early = datetime(2026, 3, 12, 0, 30, tzinfo=MEXICO)
    assert fit_local_hours(early, MEXICO, timing, "MX", NONE) == datetime(2026, 3, 12, 6, 0, tzinfo=MEXICO)


@pytest.mark.parametrize(
    ("zone", "instant", "expected"),
    [
        # Madrid springs forward on 2026-03-29 (02:00 -> 03:00 CEST): 03:30 local -> 09:00 CEST.
        (MADRID, utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 7, 0)),
        # ... and 01:30 CET, before the jump, also -> 09:00 CEST.
        (MADRID, utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 7, 0)),
        # Madrid falls back on 2026-10-25 (03:00 CEST -> 02:00 CET): both 02:30s -> 09:00 CET.
        (MADRID, utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 8, 0)),
        (MADRID, utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 8, 0)),
        # Madrid, 21:00 CEST the evening before the fall back -> 09:00 CET next day.
        (MADRID, utc(2026, 10, 24, 19, 0), utc(2026, 10, 25, 8, 0)),
        # Santiago springs forward at midnight on 2026-09-06 (00:00 -04 -> 01:00 -03):
        # Saturday 23:00 -04 -> Sunday 09:00 -03.
        (SANTIAGO, utc(2026, 9, 6, 3, 0), utc(2026, 9, 6, 12, 0)),
        # Santiago falls back at midnight on 2026-04-05 (Saturday 24:00 -03 -> 23:00 -04):
        # both Saturday 23:30s -> Sunday 09:00 -04.
        (SANTIAGO, utc(2026, 4, 5, 2, 30), utc(2026, 4, 5, 13, 0)),
        (SANTIAGO, utc(2026, 4, 5, 3, 30), utc(2026, 4, 5, 13, 0)),
        # inside hours on a DST day: unchanged
        (SANTIAGO, utc(2026, 9, 6, 15, 0), utc(2026, 9, 6, 15, 0)),
        (MADRID, utc(2026, 3, 29, 10, 0), utc(2026, 3, 29, 10, 0)),
    ],
)
def test_fit_local_hours_across_dst(zone: ZoneInfo, instant: datetime, expected: datetime) -> None:
    fitted = fit_local_hours(instant, zone, NO_JITTER, "ES", NONE)
    assert fitted == expected
    assert fitted >= instant
    assert 9 <= fitted.astimezone(zone).hour < 20


@pytest.mark.parametrize(
    ("zone", "instant", "timing"),
    [
        # The whole 02:00-03:00 window does not exist in Madrid on 2026-03-29.
        (MADRID, utc(2026, 3, 29, 0, 30), Timing(start_hour=2, end_hour=3, payday_hour=2, jitter_minutes=0)),
        # The whole 00:00-01:00 window does not exist in Santiago on 2026-09-06.
        (SANTIAGO, utc(2026, 9, 5, 12, 0), Timing(start_hour=0, end_hour=1, payday_hour=0, jitter_minutes=0)),
    ],
    ids=["madrid-02-03", "santiago-00-01"],
)
def test_fit_local_hours_skips_a_window_that_dst_removed(
    zone: ZoneInfo, instant: datetime, timing: Timing
) -> None:
    # Bug: fit_local_hours returns the non-existent start time, which resolves to one
    # hour later (03:00 CEST / 01:00 -03): outside start_hour..end_hour.
    fitted = fit_local_hours(instant, zone, timing, "ES", NONE)
    assert fitted > instant
    assert timing.start_hour <= fitted.astimezone(zone).hour < timing.end_hour


ZONES = [
    "UTC",
    "America/Santiago",
    "Europe/Madrid",
    "America/Mexico_City",
    "America/Bogota",
    "America/New_York",
    "America/Sao_Paulo",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "Africa/Casablanca",
]
COUNTRIES = ["MX", "CO", "ES", "CL", "US", "JP", "BR"]
zones = st.sampled_from(ZONES).map(ZoneInfo)


@st.composite
def timings(draw: st.DrawFn, *, jitter: bool = True) -> Timing:
    start = draw(st.integers(0, 23))
    end = draw(st.integers(start + 1, 24))
    return Timing(
        start_hour=start,
        end_hour=end,
        weekdays_only=draw(st.booleans()),
        # Paydays are never empty here: see test_empty_paydays_are_rejected_or_harmless.
        paydays=draw(rules_strategy),
        payday_hour=draw(st.integers(start, end - 1)),
        payday_flex=timedelta(hours=draw(st.integers(0, 240))),
        jitter_minutes=draw(st.integers(0, 180)) if jitter else 0,
    )


def _dst_transitions(year: int) -> list[datetime]:
    """Instants (to the hour) at which a zone of ZONES changed its UTC offset in ``year``."""
    found = []
    for name in ZONES:
        zone = ZoneInfo(name)
        t = datetime(year, 1, 1, tzinfo=UTC)
        offset = t.astimezone(zone).utcoffset()
        while t.year == year:
            t += H
            now = t.astimezone(zone).utcoffset()
            if now != offset:
                found.append(t)
            offset = now
    return found


DST_TRANSITIONS = _dst_transitions(2026)

any_instants = st.datetimes(
    datetime(2020, 1, 1),  # noqa: DTZ001 (hypothesis wants naive bounds)
    datetime(2035, 12, 31),  # noqa: DTZ001
    timezones=zones,
    allow_imaginary=False,
)
# Instants within a day and a half of a DST change, written in any zone.
near_dst = st.builds(
    lambda base, minutes, zone: (base + timedelta(minutes=minutes)).astimezone(zone),
    st.sampled_from(DST_TRANSITIONS),
    st.integers(-36 * 60, 36 * 60),
    zones,
)
instants = st.one_of(any_instants, near_dst)


@settings(max_examples=200, deadline=None)
@given(at=instants, zone=zones, timing=timings(), country=st.sampled_from(COUNTRIES))
# Found by this test: 03:45 on Chatham's spring-forward day, inside a 03:00-04:00
# window whose 03:00 does not exist that day (the clocks go from 02:45 to 03:45).
@example(
    at=datetime(2026, 9, 26, 14, 0, tzinfo=UTC),
    zone=ZoneInfo("Pacific/Chatham"),
    timing=Timing(start_hour=3, end_hour=4, payday_hour=3, jitter_minutes=0),
    country="MX",
)
def test_fit_local_hours_property(at: datetime, zone: ZoneInfo, timing: Timing, country: str) -> None:
    fitted = fit_local_hours(at, zone, timing, country, HOLIDAYS)
    # Compare instants: aware datetimes sharing a tzinfo compare by wall clock.
    assert fitted.astimezone(UTC) >= at.astimezone(UTC)
    assert fitted.astimezone(UTC) - at.astimezone(UTC) < timedelta(days=15)
    there = fitted.astimezone(zone)
    assert timing.start_hour <= there.hour < timing.end_hour
    if timing.weekdays_only:
        assert is_business_day(there.date(), country, HOLIDAYS)
    here = at.astimezone(zone)
    if timing.start_hour <= here.hour < timing.end_hour and (
        not timing.weekdays_only or is_business_day(here.date(), country, HOLIDAYS)
    ):
        assert fitted.astimezone(UTC) == at.astimezone(UTC), "a time already inside the hours is kept"


# -- plan_retry: worked examples ----------------------------------------------------

STEPS = (1 * D, 3 * D, 5 * D)
OPENED = utc(2026, 3, 10, 15, 0)  # Tuesday, 09:00 in Mexico City (UTC-6, no DST)


def make_policy(strategy: Strategy, **overrides: Any) -> RetryPolicy:
    fields: dict[str, Any] = {
        "name": "p",
        "strategy": strategy,
        "steps": STEPS,
        "max_attempts": 3,
        "max_days": 10,
        "grace_days": 7,
        "final_action": FinalAction.CANCEL,
        "timing": Timing(jitter_minutes=0),
        "min_interval": 10 * M,
        "processing_backoff": (15 * M, H, 4 * H),
    }
    fields.update(overrides)
    return RetryPolicy(**fields)


def make_ctx(
    category: DeclineCategory | Decline = DeclineCategory.TEMPORARY, **overrides: Any
) -> RetryContext:
    decline = category if isinstance(category, Decline) else classify(CODE_OF[category])
    fields: dict[str, Any] = {
        "case_id": "case_in_1",
        "opened_at": OPENED,
        "last_attempt_at": OPENED,
        "budget_used": 0,
        "decline": decline,
        "consecutive_processing_errors": 0,
        "timezone": "America/Mexico_City",
        "country": "MX",
        "funding": Funding.DEBIT,
    }
    fields.update(overrides)
    return RetryContext(**fields)


@pytest.mark.parametrize("strategy", list(Strategy))
@pytest.mark.parametrize("category", NOT_RETRYABLE)
def test_non_retryable_declines_are_never_retried(strategy: Strategy, category: DeclineCategory) -> None:
    plan = plan_retry(make_policy(strategy), make_ctx(category), HOLIDAYS)
    assert plan.at is None
    words = {
        DeclineCategory.HARD: "hard decline",
        DeclineCategory.FRAUD_SUSPECT: "fraud",
        DeclineCategory.AUTHENTICATION_REQUIRED: "authenticat",
    }[category]
    assert words in plan.reason


WORDS = {
    DeclineCategory.INSUFFICIENT_FUNDS: "insufficient funds",
    DeclineCategory.TEMPORARY: "temporary issuer decline",
    DeclineCategory.PROCESSING_ERROR: "processing error",
    DeclineCategory.UNKNOWN: "unknown outcome",
}


@pytest.mark.parametrize("strategy", list(Strategy))
@pytest.mark.parametrize("category", RETRYABLE)
def test_every_strategy_retries_every_retryable_category(
    strategy: Strategy, category: DeclineCategory
) -> None:
    plan = plan_retry(make_policy(strategy), make_ctx(category), HOLIDAYS)
    assert plan.at is not None
    assert plan.at > OPENED
    assert plan.reason.startswith("Retry on ")
    assert "America/Mexico_City" in plan.reason
    assert WORDS[category] in plan.reason
    local_text = plan.at.astimezone(MEXICO).strftime("%Y-%m-%d %H:%M")
    assert local_text in plan.reason, "the reason shows the customer's local time"


@pytest.mark.parametrize("category", RETRYABLE)
def test_fixed_follows_the_steps_whatever_the_category(category: DeclineCategory) -> None:
    policy = make_policy(Strategy.FIXED)
    for used, step in enumerate(STEPS):
        plan = plan_retry(policy, make_ctx(category, budget_used=used), HOLIDAYS)
        assert plan.at == OPENED + step
        assert f"step {used + 1} of 3" in plan.reason


def test_fixed_ignores_local_hours() -> None:
    night = utc(2026, 3, 10, 8, 0)  # 02:00 in Mexico City
    plan = plan_retry(make_policy(Strategy.FIXED), make_ctx(opened_at=night, last_attempt_at=night), HOLIDAYS)
    assert plan.at == night + D
    assert plan.reason == (
        "Retry on 2026-03-11 02:00 America/Mexico_City: temporary issuer decline, step 1 of 3 (day 1d)"
    )


@pytest.mark.parametrize(("errors", "delay"), [(0, 15 * M), (1, 15 * M), (2, H), (3, 4 * H), (9, 4 * H)])
def test_decline_aware_processing_errors_back_off_fast(errors: int, delay: timedelta) -> None:
    last = OPENED + 2 * H
    ctx = make_ctx(
        DeclineCategory.PROCESSING_ERROR, last_attempt_at=last, consecutive_processing_errors=errors
    )
    plan = plan_retry(make_policy(Strategy.DECLINE_AWARE), ctx, HOLIDAYS)
    assert plan.at == last + delay
    assert "fast backoff" in plan.reason
    assert "after the last attempt" in plan.reason


def test_processing_backoff_does_not_need_a_step() -> None:
    ctx = make_ctx(DeclineCategory.PROCESSING_ERROR, budget_used=3, consecutive_processing_errors=1)
    policy = make_policy(Strategy.DECLINE_AWARE, max_attempts=5)
    assert plan_retry(policy, ctx, HOLIDAYS).at == OPENED + 15 * M
    # other categories have run out of steps
    plan = plan_retry(policy, make_ctx(DeclineCategory.TEMPORARY, budget_used=3), HOLIDAYS)
    assert plan.at is None
    assert "no retry step left" in plan.reason


def test_min_interval_beats_a_shorter_backoff() -> None:
    policy = make_policy(Strategy.DECLINE_AWARE, min_interval=H)
    plan = plan_retry(policy, make_ctx(DeclineCategory.PROCESSING_ERROR), HOLIDAYS)
    assert plan.at == OPENED + H


def test_min_interval_beats_a_step_already_passed() -> None:
    last = OPENED + 3 * D + 5 * H  # the second step (day 3) is already behind
    plan = plan_retry(
        make_policy(Strategy.DECLINE_AWARE), make_ctx(budget_used=1, last_attempt_at=last), HOLIDAYS
    )
    assert plan.at == last + 10 * M


@pytest.mark.parametrize(
    "category", [DeclineCategory.TEMPORARY, DeclineCategory.UNKNOWN, DeclineCategory.INSUFFICIENT_FUNDS]
)
def test_decline_aware_follows_the_steps(category: DeclineCategory) -> None:
    plan = plan_retry(make_policy(Strategy.DECLINE_AWARE), make_ctx(category, budget_used=1), HOLIDAYS)
    assert plan.at == OPENED + 3 * D
    assert "step 2 of 3 (day 3d)" in plan.reason


def test_timing_aware_insufficient_funds_waits_for_payday() -> None:
    # Step 1 is Wed 2026-03-11 09:00 local; the 15th is a Sunday, so payday is Friday the 13th.
    plan = plan_retry(
        make_policy(Strategy.TIMING_AWARE), make_ctx(DeclineCategory.INSUFFICIENT_FUNDS), HOLIDAYS
    )
    assert plan.at == datetime(2026, 3, 13, 10, 0, tzinfo=MEXICO)
    assert plan.reason == (
        "Retry on 2026-03-13 10:00 America/Mexico_City: insufficient funds, next payday "
        "(2026-03-13, when money is likely to arrive); inside the customer's local hours 09-20"
    )


def test_timing_aware_insufficient_funds_keeps_the_step_when_payday_is_too_far() -> None:
    policy = make_policy(Strategy.TIMING_AWARE, timing=Timing(jitter_minutes=0, payday_flex=D))
    plan = plan_retry(policy, make_ctx(DeclineCategory.INSUFFICIENT_FUNDS), HOLIDAYS)
    assert plan.at == OPENED + D
    assert "payday" not in plan.reason
    assert "step 1 of 3" in plan.reason


def test_timing_aware_payday_respects_holidays() -> None:
    # Opened Friday 2026-09-11 in Mexico City; step 1 -> Sat 12th; the only payday rule is
    # the 16th, Independence Day, so the money comes on Tuesday the 15th at payday_hour.
    opened = datetime(2026, 9, 11, 11, 0, tzinfo=MEXICO)
    policy = make_policy(Strategy.TIMING_AWARE, timing=Timing(paydays=(16,), jitter_minutes=0))
    plan = plan_retry(
        policy,
        make_ctx(DeclineCategory.INSUFFICIENT_FUNDS, opened_at=opened, last_attempt_at=opened),
        HOLIDAYS,
    )
    assert plan.at == datetime(2026, 9, 15, 10, 0, tzinfo=MEXICO)
    assert "2026-09-15" in plan.reason
    plan = plan_retry(
        policy, make_ctx(DeclineCategory.INSUFFICIENT_FUNDS, opened_at=opened, last_attempt_at=opened), NONE
    )
    assert plan.at == datetime(2026, 9, 16, 10, 0, tzinfo=MEXICO)


@pytest.mark.parametrize(
    "category", [DeclineCategory.TEMPORARY, DeclineCategory.UNKNOWN, DeclineCategory.PROCESSING_ERROR]
)
def test_timing_aware_moves_night_retries_to_the_morning(category: DeclineCategory) -> None:
    late = datetime(2026, 3, 10, 23, 0, tzinfo=MEXICO)  # 23:00 local
    plan = plan_retry(
        make_policy(Strategy.TIMING_AWARE), make_ctx(category, opened_at=late, last_attempt_at=late), HOLIDAYS
    )
    assert plan.at is not None
    expected = datetime(2026, 3, 11, 9, 0, tzinfo=MEXICO)  # the backoff's next morning
    if category is not DeclineCategory.PROCESSING_ERROR:
        expected = datetime(2026, 3, 12, 9, 0, tzinfo=MEXICO)  # day 1 is 23:00 on the 11th
    assert plan.at == expected
    assert "local hours 09-20" in plan.reason
    assert "09:00 America/Mexico_City" in plan.reason


def test_timing_aware_in_the_customers_zone_across_dst() -> None:
    # Madrid: failed Saturday 2026-03-28 at 23:30 CET; day 1 is 23:30 on Sunday (CEST now),
    # outside the hours, so Monday 09:00 CEST.
    opened = datetime(2026, 3, 28, 22, 30, tzinfo=UTC)
    plan = plan_retry(
        make_policy(Strategy.TIMING_AWARE),
        make_ctx(opened_at=opened, last_attempt_at=opened, timezone="Europe/Madrid", country="ES"),
        HOLIDAYS,
    )
    assert plan.at == datetime(2026, 3, 30, 9, 0, tzinfo=MADRID)
    assert "2026-03-30 09:00 Europe/Madrid" in plan.reason


def test_jitter_is_deterministic_and_bounded() -> None:
    policy = make_policy(Strategy.TIMING_AWARE, timing=Timing(jitter_minutes=30))
    at_noon = datetime(2026, 3, 10, 12, 0, tzinfo=MEXICO)
    ctx = make_ctx(opened_at=at_noon, last_attempt_at=at_noon)
    first = plan_retry(policy, ctx, HOLIDAYS)
    assert first == plan_retry(policy, ctx, HOLIDAYS)
    assert first.at is not None
    assert at_noon + D <= first.at < at_noon + D + 30 * M
    spread = {
        plan_retry(
            policy, make_ctx(case_id=f"case_{i}", opened_at=at_noon, last_attempt_at=at_noon), HOLIDAYS
        ).at
        for i in range(20)
    }
    assert len(spread) > 1, "jitter spreads cases out"


def test_budget_spent() -> None:
    plan = plan_retry(make_policy(Strategy.DECLINE_AWARE), make_ctx(budget_used=3), HOLIDAYS)
    assert plan.at is None
    assert plan.reason == "attempt budget spent (3 of 3)"
    plan = plan_retry(
        make_policy(Strategy.DECLINE_AWARE),
        make_ctx(DeclineCategory.PROCESSING_ERROR, budget_used=4),
        HOLIDAYS,
    )
    assert plan.at is None


@pytest.mark.parametrize("strategy", list(Strategy))
def test_no_retry_after_the_dunning_window(strategy: Strategy) -> None:
    last = OPENED + 10 * D - 5 * M  # 5 minutes before the window closes; min_interval is 10m
    plan = plan_retry(make_policy(strategy), make_ctx(budget_used=2, last_attempt_at=last), HOLIDAYS)
    assert plan.at is None
    assert "after the dunning window closes at day 10" in plan.reason
    assert "America/Mexico_City" in plan.reason


def test_the_last_step_inside_the_window_is_kept() -> None:
    policy = make_policy(Strategy.FIXED, steps=(1 * D, 10 * D))
    plan = plan_retry(policy, make_ctx(budget_used=1), HOLIDAYS)
    assert plan.at == OPENED + 10 * D


def test_naive_last_attempt_is_rejected() -> None:
    with pytest.raises(ValueError, match="last_attempt_at"):
        plan_retry(
            make_policy(Strategy.FIXED),
            make_ctx(last_attempt_at=datetime(2026, 3, 10, 15, 0)),  # noqa: DTZ001
            HOLIDAYS,
        )


def test_empty_paydays_are_rejected_or_harmless() -> None:
    # Bug: Timing accepts paydays=() (and so does a policy file with `paydays = []`), but
    # next_payday then finds no payday and plan_retry dies with AssertionError. Either fix
    # is fine: reject the timing, or keep the step when there is no payday.
    try:
        timing = Timing(paydays=(), jitter_minutes=0)
    except DomainError as exc:
        rejected: DomainError | None = exc
    else:
        rejected = None
    if rejected is not None:
        assert rejected.field == "timing.paydays"
        return
    policy = make_policy(Strategy.TIMING_AWARE, timing=timing)
    plan = plan_retry(policy, make_ctx(DeclineCategory.INSUFFICIENT_FUNDS), HOLIDAYS)
    assert plan.at == OPENED + D


# -- plan_retry: non-UTC inputs across DST ------------------------------------------


def test_retry_after_a_fall_back_attempt_is_after_it() -> None:
    # The last attempt was at 02:30 CET, the *second* 02:30 of 2026-10-25 in Madrid
    # (01:30 UTC). The 15-minute backoff is added to the wall clock, which drops fold=1:
    # 02:45 *CEST* = 00:45 UTC, 45 minutes before the attempt it follows.
    last = datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=MADRID)
    assert last.astimezone(UTC) == utc(2026, 10, 25, 1, 30)
    ctx = make_ctx(
        DeclineCategory.PROCESSING_ERROR,
        opened_at=last,
        last_attempt_at=last,
        timezone="Europe/Madrid",
        country="ES",
        consecutive_processing_errors=1,
    )
    plan = plan_retry(make_policy(Strategy.DECLINE_AWARE), ctx, HOLIDAYS)
    assert plan.at is not None
    assert plan.at.astimezone(UTC) - last.astimezone(UTC) >= 15 * M


def test_min_interval_holds_across_spring_forward() -> None:
    # Last attempt 01:30 CET on 2026-03-29 in Madrid; min_interval 2h. On the wall clock
    # that is 03:30 CEST, only one real hour later.
    last = datetime(2026, 3, 29, 1, 30, tzinfo=MADRID)
    policy = make_policy(Strategy.FIXED, steps=(timedelta(0),), min_interval=2 * H)
    plan = plan_retry(
        policy,
        make_ctx(opened_at=last, last_attempt_at=last, timezone="Europe/Madrid", country="ES"),
        HOLIDAYS,
    )
    assert plan.at is not None
    assert plan.at.astimezone(UTC) - last.astimezone(UTC) >= 2 * H


def test_the_same_cases_in_utc_are_fine() -> None:
    last = datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=MADRID).astimezone(UTC)
    ctx = make_ctx(
        DeclineCategory.PROCESSING_ERROR,
        opened_at=last,
        last_attempt_at=last,
        timezone="Europe/Madrid",
        country="ES",
        consecutive_processing_errors=1,
    )
    assert plan_retry(make_policy(Strategy.DECLINE_AWARE), ctx, HOLIDAYS).at == last + 15 * M
    last = datetime(2026, 3, 29, 1, 30, tzinfo=MADRID).astimezone(UTC)
    policy = make_policy(Strategy.FIXED, steps=(timedelta(0),), min_interval=2 * H)
    plan = plan_retry(
        policy,
        make_ctx(opened_at=last, last_attempt_at=last, timezone="Europe/Madrid", country="ES"),
        HOLIDAYS,
    )
    assert plan.at == last + 2 * H


# -- plan_retry: properties ---------------------------------------------------------

CODES = sorted(STRIPE_DECLINE_CODES)


def test_stripe_codes_cover_every_category() -> None:
    assert {classify(code).category for code in CODES} == set(DeclineCategory)


@st.composite
def policies(draw: st.DrawFn, strategy: Strategy | None = None) -> RetryPolicy:
    max_days = draw(st.integers(1, 120))
    steps = sorted(draw(st.lists(st.integers(0, max_days * 24 * 60), min_size=1, max_size=10)))
    return RetryPolicy(
        name="random",
        strategy=strategy or draw(st.sampled_from(Strategy)),
        steps=tuple(timedelta(minutes=m) for m in steps),
        max_attempts=draw(st.integers(1, 30)),
        max_days=max_days,
        grace_days=draw(st.integers(0, 90)),
        final_action=draw(st.sampled_from(FinalAction)),
        timing=draw(timings()),
        min_interval=timedelta(minutes=draw(st.integers(1, 2 * 24 * 60))),
        processing_backoff=tuple(
            timedelta(minutes=m) for m in draw(st.lists(st.integers(1, 2 * 24 * 60), min_size=1, max_size=5))
        ),
    )


def declines(categories: list[DeclineCategory] | None = None) -> st.SearchStrategy[Decline]:
    codes = [c for c in CODES if categories is None or STRIPE_DECLINE_CODES[c][0] in categories]
    return st.sampled_from(codes).map(classify)


@st.composite
def contexts(
    draw: st.DrawFn,
    decline: st.SearchStrategy[Decline] | None = None,
    budget: st.SearchStrategy[int] | None = None,
) -> RetryContext:
    opened_at = draw(instants)
    # The last attempt is the failure itself or a later one (possibly after the window),
    # written in any zone.
    since = timedelta(minutes=draw(st.one_of(st.just(0), st.integers(0, 130 * 24 * 60))))
    last_attempt_at = (opened_at.astimezone(UTC) + since).astimezone(draw(zones))
    return RetryContext(
        case_id=draw(st.from_regex(r"case_[a-z0-9]{1,12}", fullmatch=True)),
        opened_at=opened_at,
        last_attempt_at=last_attempt_at,
        budget_used=draw(budget if budget is not None else st.integers(0, 35)),
        decline=draw(decline if decline is not None else declines()),
        consecutive_processing_errors=draw(st.integers(0, 10)),
        timezone=draw(st.sampled_from(ZONES)),
        country=draw(st.sampled_from(COUNTRIES)),
        funding=draw(st.sampled_from(Funding)),
    )


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FALL_BACK = datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=MADRID)
SPRING_FORWARD = datetime(2026, 3, 29, 1, 30, tzinfo=MADRID)


@PROPERTY
@given(policy=policies(), ctx=contexts(decline=declines(NOT_RETRYABLE)))
def test_property_non_retryable_declines_get_no_retry_time(policy: RetryPolicy, ctx: RetryContext) -> None:
    plan = plan_retry(policy, ctx, HOLIDAYS)
    assert plan.at is None
    assert plan.reason


@PROPERTY
@given(data=st.data(), policy=policies())
def test_property_a_spent_budget_yields_no_retry(data: st.DataObject, policy: RetryPolicy) -> None:
    ctx = data.draw(contexts(budget=st.integers(policy.max_attempts, policy.max_attempts + 10)))
    plan = plan_retry(policy, ctx, HOLIDAYS)
    assert plan.at is None
    assert plan.reason


@PROPERTY
@given(policy=policies(), ctx=contexts())
@example(  # see test_retry_after_a_fall_back_attempt_is_after_it
    policy=make_policy(Strategy.DECLINE_AWARE),
    ctx=make_ctx(
        DeclineCategory.PROCESSING_ERROR,
        opened_at=FALL_BACK,
        last_attempt_at=FALL_BACK,
        timezone="Europe/Madrid",
        country="ES",
        consecutive_processing_errors=1,
    ),
)
@example(  # see test_min_interval_holds_across_spring_forward
    policy=make_policy(Strategy.FIXED, steps=(timedelta(0),), min_interval=2 * H),
    ctx=make_ctx(
        opened_at=SPRING_FORWARD, last_attempt_at=SPRING_FORWARD, timezone="Europe/Madrid", country="ES"
    ),
)
def test_property_retry_times_are_after_the_last_attempt_and_inside_the_window(
    policy: RetryPolicy, ctx: RetryContext
) -> None:
    plan = plan_retry(policy, ctx, HOLIDAYS)
    assert plan.reason
    if plan.at is None:
        return
    # Compare instants (UTC), not wall clocks.
    at = plan.at.astimezone(UTC)
    last = ctx.last_attempt_at.astimezone(UTC)
    opened = ctx.opened_at.astimezone(UTC)
    assert plan.at.utcoffset() is not None
    assert ctx.decline.category.retryable
    assert ctx.budget_used < policy.max_attempts
    assert at > last >= opened
    assert at - last >= policy.min_interval
    assert at <= opened + policy.window
    assert plan.reason.startswith("Retry on ")
    assert ctx.timezone in plan.reason


@PROPERTY
@given(policy=policies(Strategy.TIMING_AWARE), ctx=contexts())
def test_property_timing_aware_retries_land_in_local_hours(policy: RetryPolicy, ctx: RetryContext) -> None:
    plan = plan_retry(policy, ctx, HOLIDAYS)
    if plan.at is None:
        return
    there = plan.at.astimezone(ZoneInfo(ctx.timezone))
    assert policy.timing.start_hour <= there.hour < policy.timing.end_hour
    if policy.timing.weekdays_only:
        assert is_business_day(there.date(), ctx.country, HOLIDAYS)
    assert f"{there:%Y-%m-%d %H:%M} {ctx.timezone}" in plan.reason
    assert f"local hours {policy.timing.start_hour:02d}-{policy.timing.end_hour:02d}" in plan.reason


@PROPERTY
@given(policy=policies(), ctx=contexts(decline=declines(RETRYABLE)))
def test_property_plan_retry_is_deterministic(policy: RetryPolicy, ctx: RetryContext) -> None:
    assert plan_retry(policy, ctx, HOLIDAYS) == plan_retry(policy, ctx, HOLIDAYS)
