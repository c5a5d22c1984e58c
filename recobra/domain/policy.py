"""Policies as data: segments choose a policy; a policy lays out retries on a timeline.

These are the validated, immutable forms. Files are parsed into them by
``recobra.policyfile`` (which names the field of any error); the invariants
below hold whatever the source.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from recobra.domain.case import FinalAction
from recobra.domain.errors import DomainError
from recobra.domain.leaving import ExitReason, SaveOffer
from recobra.domain.messages import ChannelKind, MessageKind
from recobra.domain.model import Funding, Interval

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


def parse_duration(field_name: str, text: str) -> timedelta:
    """``"3d"``, ``"12h"``, ``"1d12h"``, ``"30m"``, ``"0d"`` -> timedelta."""
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not match or not text.strip():
        raise DomainError(field_name, f"not a duration like '3d', '12h', '1d6h' or '30m': {text!r}")
    days, hours, minutes = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


def format_duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{mins}m" if mins else ""]
    return "".join(parts) or "0m"


class Strategy(StrEnum):
    """How a policy places its retries."""

    FIXED = "fixed"
    """Each retry at its step's offset from the failure. Only the engine's
    safety rules (no retry of hard declines, card-network limits) apply."""
    DECLINE_AWARE = "decline_aware"
    """The decline category decides: processing errors back off fast from the
    last attempt; temporary and insufficient-funds declines follow the steps."""
    TIMING_AWARE = "timing_aware"
    """Decline-aware, and each retry lands in the customer's local business
    hours, with insufficient-funds retries moved to the next payday."""


class PaydayRule(StrEnum):
    """Named payday rules besides plain days of the month."""

    LAST_BUSINESS_DAY = "last_business_day"


@dataclass(frozen=True, slots=True)
class Timing:
    """Timing rules of the timing-aware strategy (all in the customer's time zone)."""

    start_hour: int = 9
    end_hour: int = 20
    weekdays_only: bool = False
    paydays: tuple[int | PaydayRule, ...] = (1, 15, PaydayRule.LAST_BUSINESS_DAY)
    payday_hour: int = 10
    payday_flex: timedelta = timedelta(days=5)
    jitter_minutes: int = 30

    def __post_init__(self) -> None:
        if not 0 <= self.start_hour < self.end_hour <= 24:
            raise DomainError("timing.hours", "need 0 <= start_hour < end_hour <= 24")
        if not self.start_hour <= self.payday_hour < self.end_hour:
            raise DomainError("timing.payday_hour", "must fall inside start_hour..end_hour")
        if not self.paydays:
            raise DomainError(
                "timing.paydays", "needs at least one payday (a day of the month or 'last_business_day')"
            )
        for day in self.paydays:
            if isinstance(day, int) and not 1 <= day <= 31:
                raise DomainError("timing.paydays", f"day of month must be 1-31, got {day}")
        if not 0 <= self.jitter_minutes <= 180:
            raise DomainError("timing.jitter_minutes", "must be 0-180")


DUNNING_KINDS = frozenset(
    {MessageKind.PAYMENT_FAILED, MessageKind.PAYMENT_REMINDER, MessageKind.FINAL_NOTICE}
)


def _check_channels(where: str, channels: tuple[ChannelKind, ...]) -> None:
    if not channels:
        raise DomainError(f"{where}.channels", "needs at least one channel")
    if len(set(channels)) != len(channels):
        raise DomainError(f"{where}.channels", "a channel is listed twice")


@dataclass(frozen=True, slots=True)
class MessageStep:
    """A message on the dunning timeline: ``after`` the failure, or ``before_final``
    the final action. It goes out on every one of ``channels`` the customer can
    receive. ``fallback`` channels are tried in order when none of them could
    deliver it (no address, no consent, permanent failure) or, with
    ``fallback_after``, when nobody clicked its link within that time."""

    name: str
    kind: MessageKind
    channels: tuple[ChannelKind, ...]
    after: timedelta | None = None
    before_final: timedelta | None = None
    fallback: tuple[ChannelKind, ...] = ()
    fallback_after: timedelta | None = None

    def __post_init__(self) -> None:
        if (self.after is None) == (self.before_final is None):
            raise DomainError(self.name, "a message step needs either 'after' or 'before_final'")
        if self.kind not in DUNNING_KINDS:
            raise DomainError(
                f"{self.name}.kind",
                f"{self.kind} is not a dunning message; use one of {sorted(DUNNING_KINDS)}",
            )
        _check_channels(self.name, self.channels)
        if set(self.fallback) & set(self.channels):
            raise DomainError(f"{self.name}.fallback", "a fallback channel is already in 'channels'")
        if self.fallback_after is not None and not self.fallback:
            raise DomainError(f"{self.name}.fallback_after", "needs 'fallback' channels")


@dataclass(frozen=True, slots=True)
class Notification:
    """A message sent when something happens (recovery, new card, cancellation),
    ``delay`` after it (a win-back some weeks after a cancellation)."""

    kind: MessageKind
    channels: tuple[ChannelKind, ...]
    delay: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        _check_channels(f"notifications.{self.kind}", self.channels)


@dataclass(frozen=True, slots=True)
class Campaign:
    """Pre-dunning: messages ``before`` a card expires or a renewal is due."""

    name: str
    kind: MessageKind
    before: tuple[timedelta, ...]
    channels: tuple[ChannelKind, ...]
    intervals: frozenset[Interval] = frozenset()
    offer: str | None = None

    def __post_init__(self) -> None:
        allowed = {MessageKind.CARD_EXPIRING, MessageKind.RENEWAL_UPCOMING, MessageKind.RENEWAL_OFFER}
        if self.kind not in allowed:
            raise DomainError(f"{self.name}.kind", f"campaigns send one of {sorted(allowed)}")
        if not self.before:
            raise DomainError(f"{self.name}.before", "needs at least one time before the event")
        if self.kind is MessageKind.RENEWAL_OFFER and not self.offer:
            raise DomainError(f"{self.name}.offer", "a renewal offer needs the offer's text")
        _check_channels(self.name, self.channels)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A timeline of retries, its limits, the grace period and the final action.

    ``steps`` are offsets from the failure, one per policy retry, in order.
    """

    name: str
    strategy: Strategy
    steps: tuple[timedelta, ...]
    max_attempts: int
    max_days: int
    grace_days: int
    final_action: FinalAction
    timing: Timing = field(default_factory=Timing)
    min_interval: timedelta = timedelta(hours=1)
    processing_backoff: tuple[timedelta, ...] = (
        timedelta(minutes=15),
        timedelta(hours=1),
        timedelta(hours=4),
    )
    messages: tuple[MessageStep, ...] = ()

    def __post_init__(self) -> None:
        where = f"policies.{self.name}"
        if not self.steps:
            raise DomainError(f"{where}.steps", "needs at least one retry step")
        if list(self.steps) != sorted(self.steps):
            raise DomainError(f"{where}.steps", "retry steps must be in time order")
        if not 1 <= self.max_attempts <= 30:
            raise DomainError(f"{where}.max_attempts", "must be 1-30")
        if not 1 <= self.max_days <= 120:
            raise DomainError(f"{where}.max_days", "must be 1-120")
        if self.steps[-1] > timedelta(days=self.max_days):
            raise DomainError(
                f"{where}.steps",
                f"last step ({format_duration(self.steps[-1])}) is after max_days ({self.max_days})",
            )
        if not 0 <= self.grace_days <= 90:
            raise DomainError(f"{where}.grace_days", "must be 0-90")
        if self.min_interval < timedelta(minutes=1):
            raise DomainError(f"{where}.min_interval", "must be at least 1m")
        if not self.processing_backoff:
            raise DomainError(f"{where}.processing_backoff", "needs at least one delay")

    @property
    def window(self) -> timedelta:
        return timedelta(days=self.max_days)

    @property
    def final_offset(self) -> timedelta:
        """From the failure to the final action: the window plus the grace period."""
        return timedelta(days=self.max_days + self.grace_days)

    def message_offset(self, step: MessageStep) -> timedelta:
        """When a message step is due, from the failure."""
        if step.after is not None:
            return step.after
        assert step.before_final is not None
        return max(self.final_offset - step.before_final, timedelta(0))


@dataclass(frozen=True, slots=True)
class SegmentContext:
    """What segments may match on, for one failed invoice."""

    plan_id: str
    interval: Interval | None
    amount_minor: int
    currency: str
    country: str
    tenure_days: int
    funding: Funding


@dataclass(frozen=True, slots=True)
class SegmentRule:
    """Conditions, all of which must hold (an empty rule matches everything)."""

    plans: frozenset[str] = frozenset()
    intervals: frozenset[Interval] = frozenset()
    currencies: frozenset[str] = frozenset()
    countries: frozenset[str] = frozenset()
    funding: frozenset[Funding] = frozenset()
    amount_min: int | None = None
    amount_max: int | None = None
    tenure_days_min: int | None = None
    tenure_days_max: int | None = None

    def matches(self, ctx: SegmentContext) -> bool:
        checks = (
            not self.plans or ctx.plan_id in self.plans,
            not self.intervals or ctx.interval in self.intervals,
            not self.currencies or ctx.currency in self.currencies,
            not self.countries or ctx.country in self.countries,
            not self.funding or ctx.funding in self.funding,
            self.amount_min is None or ctx.amount_minor >= self.amount_min,
            self.amount_max is None or ctx.amount_minor <= self.amount_max,
            self.tenure_days_min is None or ctx.tenure_days >= self.tenure_days_min,
            self.tenure_days_max is None or ctx.tenure_days <= self.tenure_days_max,
        )
        return all(checks)


@dataclass(frozen=True, slots=True)
class Segment:
    """A named group of customers and the policy it uses."""

    name: str
    rule: SegmentRule
    policy: str


@dataclass(frozen=True, slots=True)
class PolicySet:
    """A whole policy file: segments in order (first match wins) and the policies."""

    name: str
    version: int
    segments: tuple[Segment, ...]
    policies: Mapping[str, RetryPolicy]
    default_policy: str
    notifications: Mapping[MessageKind, Notification] = field(default_factory=dict)
    campaigns: tuple[Campaign, ...] = ()
    benefits: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    """Per plan id, per locale: what the customer would lose (used by messages)."""
    save_offers: Mapping[ExitReason, SaveOffer] = field(default_factory=dict)
    """Per exit reason, the save offer a canceling customer sees (absent: none)."""

    def __post_init__(self) -> None:
        if self.default_policy not in self.policies:
            raise DomainError(
                "default_policy", f"{self.default_policy!r} is not one of {sorted(self.policies)}"
            )
        for i, segment in enumerate(self.segments):
            if segment.policy not in self.policies:
                raise DomainError(
                    f"segments[{i}].policy",
                    f"{segment.policy!r} is not one of {sorted(self.policies)}",
                )
        names = [s.name for s in self.segments]
        if len(set(names)) != len(names):
            raise DomainError("segments", "segment names must be unique")

    def choose(self, ctx: SegmentContext) -> tuple[str, RetryPolicy]:
        """The first matching segment's name and policy, else ``("default", default policy)``."""
        for segment in self.segments:
            if segment.rule.matches(ctx):
                return segment.name, self.policies[segment.policy]
        return "default", self.policies[self.default_policy]
