"""Where the next retry goes: pure functions of the policy, the case and ``now``.

Nothing here reads a clock. Public holidays come through ``HolidayCalendar``;
jitter is derived from the case id so the same inputs give the same answer.
"""

from __future__ import annotations

import calendar as _calendar
import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from recobra.domain.declines import Decline, DeclineCategory
from recobra.domain.model import Funding, require_aware
from recobra.domain.policy import PaydayRule, RetryPolicy, Strategy, Timing

_WHY_NOT = {
    DeclineCategory.HARD: "hard decline: never retried; waiting for a new payment method",
    DeclineCategory.FRAUD_SUSPECT: "suspected fraud: retries stopped; the customer must be contacted",
    DeclineCategory.AUTHENTICATION_REQUIRED: (
        "authentication required: no blind retry; the customer must authenticate"
    ),
}

_CATEGORY_WORDS = {
    DeclineCategory.INSUFFICIENT_FUNDS: "insufficient funds",
    DeclineCategory.TEMPORARY: "temporary issuer decline",
    DeclineCategory.PROCESSING_ERROR: "processing error",
    DeclineCategory.UNKNOWN: "unknown outcome (status checked before charging)",
}


class HolidayCalendar(Protocol):
    """Public holidays by country (ISO 3166-1 alpha-2)."""

    def is_holiday(self, country: str, day: date) -> bool: ...


class NoHolidays:
    """A calendar with weekends only: for tests and countries without data."""

    def is_holiday(self, country: str, day: date) -> bool:
        return False


def is_business_day(day: date, country: str, holidays: HolidayCalendar) -> bool:
    return day.weekday() < 5 and not holidays.is_holiday(country, day)


def _previous_business_day(day: date, country: str, holidays: HolidayCalendar) -> date:
    while not is_business_day(day, country, holidays):
        day -= timedelta(days=1)
    return day


def paydays_in_month(
    year: int,
    month: int,
    rules: tuple[int | PaydayRule, ...],
    country: str,
    holidays: HolidayCalendar,
) -> list[date]:
    """Paydays of a month. A payday on a weekend or holiday is paid the business day before,
    as payroll usually is; ``last_business_day`` is the month's last business day."""
    last = _calendar.monthrange(year, month)[1]
    days: set[date] = set()
    for rule in rules:
        nominal = date(year, month, last if rule == PaydayRule.LAST_BUSINESS_DAY else min(rule, last))
        days.add(_previous_business_day(nominal, country, holidays))
    return sorted(days)


def next_payday(
    on_or_after: date,
    rules: tuple[int | PaydayRule, ...],
    country: str,
    holidays: HolidayCalendar,
) -> date:
    """The first payday on or after ``on_or_after``."""
    year, month = on_or_after.year, on_or_after.month
    for _ in range(3):
        for day in paydays_in_month(year, month, rules, country, holidays):
            if day >= on_or_after:
                return day
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    raise AssertionError("a payday always exists within three months")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class RetryContext:
    """What the scheduler knows about a case at the moment it decides."""

    case_id: str
    opened_at: datetime
    last_attempt_at: datetime
    budget_used: int
    decline: Decline
    consecutive_processing_errors: int
    timezone: str
    country: str
    funding: Funding = Funding.UNKNOWN


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """A retry time and its explanation, or ``at is None`` and why not."""

    at: datetime | None
    reason: str


def _jitter(case_id: str, attempt: int, minutes: int) -> timedelta:
    if minutes <= 0:
        return timedelta(0)
    digest = hashlib.blake2b(f"{case_id}:{attempt}".encode(), digest_size=4).digest()
    return timedelta(minutes=int.from_bytes(digest) % minutes)


def fit_local_hours(
    at: datetime, zone: ZoneInfo, timing: Timing, country: str, holidays: HolidayCalendar
) -> datetime:
    """The first instant at or after ``at`` inside the customer's local retry hours (UTC).

    Computed on instants, not wall clocks: a daylight-saving jump can shorten a
    day's window or remove it altogether, and then the next day's window is used.
    """
    instant = at.astimezone(UTC)
    day = instant.astimezone(zone).date()
    for _ in range(15):
        if not timing.weekdays_only or is_business_day(day, country, holidays):
            start = datetime.combine(day, time(timing.start_hour), zone).astimezone(UTC)
            # The instant itself first: when the window opens inside a daylight-saving
            # jump, its start hour does not exist and ``start`` (read with the offset
            # before the jump) falls after a window the instant may already be in.
            for candidate in (instant, max(instant, start)):
                local = candidate.astimezone(zone)
                if local.date() == day and timing.start_hour <= local.hour < timing.end_hour:
                    return candidate
        day += timedelta(days=1)
        instant = max(instant, datetime.combine(day, time(0), zone).astimezone(UTC))
    raise AssertionError("a retry hour always exists within two weeks")  # pragma: no cover


def _describe(at: datetime, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M ") + str(zone)


def plan_retry(policy: RetryPolicy, ctx: RetryContext, holidays: HolidayCalendar) -> RetryPlan:
    """Decide when the next policy retry happens, or why there is none.

    Guarantees: the time is strictly after ``ctx.last_attempt_at`` (which is at or
    after the failure), at least ``policy.min_interval`` after it, and no later
    than the end of the dunning window; hard, fraud and authentication declines
    are never retried.
    """
    require_aware("last_attempt_at", ctx.last_attempt_at)
    require_aware("opened_at", ctx.opened_at)
    # All arithmetic on UTC instants: adding hours to a local wall clock goes wrong
    # across daylight-saving changes.
    opened = ctx.opened_at.astimezone(UTC)
    last = ctx.last_attempt_at.astimezone(UTC)
    category = ctx.decline.category
    if not category.retryable:
        return RetryPlan(None, _WHY_NOT.get(category, f"{category}: not retryable"))
    if ctx.budget_used >= policy.max_attempts:
        return RetryPlan(None, f"attempt budget spent ({ctx.budget_used} of {policy.max_attempts})")
    window_end = opened + policy.window
    zone = ZoneInfo(ctx.timezone)
    aware = policy.strategy is not Strategy.FIXED
    words = _CATEGORY_WORDS.get(category, str(category))

    if aware and category is DeclineCategory.PROCESSING_ERROR:
        backoff = policy.processing_backoff
        delay = backoff[min(max(ctx.consecutive_processing_errors - 1, 0), len(backoff) - 1)]
        at = last + delay
        why = f"{words}, fast backoff ({_fmt(delay)} after the last attempt)"
    else:
        if ctx.budget_used >= len(policy.steps):
            return RetryPlan(None, f"no retry step left in the timeline ({len(policy.steps)} steps)")
        offset = policy.steps[ctx.budget_used]
        at = opened + offset
        why = f"{words}, step {ctx.budget_used + 1} of {len(policy.steps)} (day {_fmt(offset)})"

    earliest = last + policy.min_interval
    at = max(at, earliest)

    if policy.strategy is Strategy.TIMING_AWARE:
        timing = policy.timing
        if category is DeclineCategory.INSUFFICIENT_FUNDS:
            local_day = at.astimezone(zone).date()
            payday = next_payday(local_day, timing.paydays, ctx.country, holidays)
            payday_at = datetime.combine(payday, time(timing.payday_hour), zone).astimezone(UTC)
            if payday_at - at <= timing.payday_flex:
                at = max(at, payday_at)
                why = f"{words}, next payday ({payday.isoformat()}, when money is likely to arrive)"
        at = fit_local_hours(
            at + _jitter(ctx.case_id, ctx.budget_used, timing.jitter_minutes),
            zone,
            timing,
            ctx.country,
            holidays,
        )
        why += f"; inside the customer's local hours {timing.start_hour:02d}-{timing.end_hour:02d}"

    if at > window_end:
        return RetryPlan(
            None,
            f"next retry ({_describe(at, zone)}) would fall after the dunning window "
            f"closes at day {policy.max_days}",
        )
    return RetryPlan(at, f"Retry on {_describe(at, zone)}: {why}")


def _fmt(delta: timedelta) -> str:
    total = int(delta.total_seconds())
    if total % 86400 == 0:
        return f"{total // 86400}d"
    if total % 3600 == 0:
        return f"{total // 3600}h"
    return f"{total // 60}m"
