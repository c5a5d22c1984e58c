"""Customer messages as data: kinds, channels, and the rules for when and how to send.

No I/O here: rendering (Jinja2, Babel) and sending (SMTP, Twilio, web push ...)
are adapters. The engine decides *that* a message is due; the delivery rules in
this module decide *whether*, *when* and *on which channel* it may go.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo


class MessageKind(StrEnum):
    """What a message is about. Each kind has templates per channel and locale."""

    CARD_EXPIRING = "card_expiring"
    """Pre-dunning: the card on file expires soon (30 and 7 days before the month ends)."""
    RENEWAL_UPCOMING = "renewal_upcoming"
    """Pre-dunning: an annual renewal is coming; the value of the service first."""
    RENEWAL_OFFER = "renewal_offer"
    """Pre-dunning: an optional offer before an annual renewal."""
    PAYMENT_FAILED = "payment_failed"
    """Dunning: first notice, sent with the first failure."""
    PAYMENT_REMINDER = "payment_reminder"
    """Dunning: each later reminder."""
    FINAL_NOTICE = "final_notice"
    """Dunning: before the final action, with its date."""
    PAYMENT_RECOVERED = "payment_recovered"
    """The payment went through: thanks."""
    PAYMENT_METHOD_UPDATED = "payment_method_updated"
    """Confirmation that a new payment method was saved."""
    SUBSCRIPTION_CANCELED = "subscription_canceled"
    """Basecamp-style confirmation: no further charges or emails, data, how to come back."""
    WIN_BACK = "win_back"
    """Opt-in, some weeks after a cancellation."""


TRANSACTIONAL = frozenset(
    {MessageKind.PAYMENT_RECOVERED, MessageKind.PAYMENT_METHOD_UPDATED, MessageKind.SUBSCRIPTION_CANCELED}
)
"""Kinds that confirm something the customer did or that happened to their money;
the cancellation confirmation reaches even suppressed customers."""


class ChannelKind(StrEnum):
    """Where a message goes."""

    EMAIL = "email"
    SMS = "sms"
    VOICE = "voice"
    PUSH = "push"
    IN_APP = "in_app"
    WEBHOOK = "webhook"
    FILE = "file"
    """Writes messages to files or the console: the demo's channel."""


CONSENT_REQUIRED = frozenset({ChannelKind.SMS, ChannelKind.VOICE})
"""Channels that need the customer's explicit consent (and honour STOP)."""


# ---------------------------------------------------------------- delivery rules


@dataclass(frozen=True, slots=True)
class Reachability:
    """How a customer can be reached, and what they agreed to."""

    email: str | None = None
    phone: str | None = None
    push_subscriptions: int = 0
    sms_consent: bool = False
    voice_consent: bool = False
    sms_stopped: bool = False
    """The customer replied STOP (or the provider says they did)."""
    unsubscribed: bool = False
    """The customer unsubscribed from dunning and reminder messages."""
    suppressed: bool = False
    """Canceled: nothing but the transactional cancellation confirmation."""
    win_back_opt_in: bool = False
    """Agreed to hear from us after canceling."""

    def can_receive(self, channel: ChannelKind) -> tuple[bool, str]:
        """Whether ``channel`` reaches this customer, and if not, why."""
        match channel:
            case ChannelKind.EMAIL:
                return (self.email is not None, "no email address")
            case ChannelKind.SMS:
                if self.phone is None:
                    return False, "no phone number"
                if self.sms_stopped:
                    return False, "the customer replied STOP"
                return (self.sms_consent, "no consent for SMS")
            case ChannelKind.VOICE:
                if self.phone is None:
                    return False, "no phone number"
                return (self.voice_consent, "no consent for calls")
            case ChannelKind.PUSH:
                return (self.push_subscriptions > 0, "no push subscription")
            case _:
                return True, ""


@dataclass(frozen=True, slots=True)
class DeliveryRules:
    """Limits the engine enforces on every message, whatever the templates say."""

    quiet_start: int = 21
    """Local hour from which nothing is sent (until ``quiet_end``)."""
    quiet_end: int = 8
    max_per_day: int = 2
    max_per_week: int = 5
    quiet_channels: frozenset[ChannelKind] = field(
        default_factory=lambda: frozenset(
            {ChannelKind.EMAIL, ChannelKind.SMS, ChannelKind.VOICE, ChannelKind.PUSH}
        )
    )

    def __post_init__(self) -> None:
        if not (0 <= self.quiet_start <= 23 and 0 <= self.quiet_end <= 23):
            raise ValueError("delivery.quiet hours must be 0-23")
        if self.max_per_day < 1 or self.max_per_week < self.max_per_day:
            raise ValueError("delivery caps: need 1 <= max_per_day <= max_per_week")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a due message: send now on ``channel``, wait until ``defer_until``,
    or skip it (``channel is None`` and no deferral) for ``reason``."""

    channel: ChannelKind | None
    defer_until: datetime | None
    reason: str

    @property
    def send(self) -> bool:
        return self.channel is not None and self.defer_until is None


def in_quiet_hours(local: datetime, rules: DeliveryRules) -> bool:
    hour = local.hour
    if rules.quiet_start > rules.quiet_end:
        return hour >= rules.quiet_start or hour < rules.quiet_end
    return rules.quiet_start <= hour < rules.quiet_end


def end_of_quiet_hours(now: datetime, zone: ZoneInfo, rules: DeliveryRules) -> datetime:
    """The next instant (UTC) at ``quiet_end`` local time after ``now``."""
    local = now.astimezone(zone)
    day = local.date() if local.hour < rules.quiet_end else local.date() + timedelta(days=1)
    return datetime.combine(day, time(rules.quiet_end), zone).astimezone(UTC)


def decide_delivery(
    kind: MessageKind,
    channel: ChannelKind,
    reach: Reachability,
    *,
    now: datetime,
    timezone: str,
    recent: list[datetime],
    rules: DeliveryRules,
) -> Verdict:
    """Apply suppression, consent, quiet hours and frequency caps to one due message.

    ``recent`` holds the times of non-transactional messages already sent to this
    customer (any channel). Transactional messages skip the caps and quiet hours
    for email (a confirmation is expected at once), but never consent.
    """
    transactional = kind in TRANSACTIONAL
    if kind is MessageKind.WIN_BACK and not reach.win_back_opt_in:
        return Verdict(None, None, "win-back is sent only to customers who opted in")
    exempt = {MessageKind.SUBSCRIPTION_CANCELED, MessageKind.WIN_BACK}
    if reach.suppressed and kind not in exempt:
        return Verdict(None, None, "customer canceled: only the cancellation confirmation is sent")
    if reach.unsubscribed and not transactional:
        return Verdict(None, None, "customer unsubscribed from reminders")
    ok, why = reach.can_receive(channel)
    if not ok:
        return Verdict(None, None, f"{channel} unavailable: {why}")
    zone = ZoneInfo(timezone)
    now = now.astimezone(UTC)
    quiet_applies = channel in rules.quiet_channels and not (transactional and channel is ChannelKind.EMAIL)
    if quiet_applies and in_quiet_hours(now.astimezone(zone), rules):
        until = end_of_quiet_hours(now, zone, rules)
        why = f"quiet hours in {timezone}: waits until {rules.quiet_end:02d}:00 local"
        return Verdict(channel, until, why)
    if not transactional:
        day_ago, week_ago = now - timedelta(days=1), now - timedelta(days=7)
        last_day = sorted(t for t in recent if t > day_ago)
        last_week = sorted(t for t in recent if t > week_ago)
        if len(last_day) >= rules.max_per_day:
            until = last_day[len(last_day) - rules.max_per_day] + timedelta(days=1)
            return Verdict(channel, until, f"daily cap of {rules.max_per_day} messages reached")
        if len(last_week) >= rules.max_per_week:
            until = last_week[len(last_week) - rules.max_per_week] + timedelta(days=7)
            return Verdict(channel, until, f"weekly cap of {rules.max_per_week} messages reached")
    return Verdict(channel, None, f"send by {channel}")


# ---------------------------------------------------------------- the outbox


class MessageStatus(StrEnum):
    """Where a message stands in the outbox."""

    SCHEDULED = "scheduled"
    """Waiting for its due time (or deferred by quiet hours, caps, a transient failure)."""
    SENDING = "sending"
    """Handed to the channel; a worker that stops here leaves it for the reaper."""
    SENT = "sent"
    """Accepted by the provider (for in-app: waiting to be seen)."""
    FAILED = "failed"
    """Failed for good (permanent error, or transient errors exhausted); fallback used."""
    SKIPPED = "skipped"
    """Not sent by rule: suppressed, unsubscribed, no consent, no address."""
    CANCELED = "canceled"
    """No longer needed: the case was recovered or closed, or a fallback was not needed."""
    UNKNOWN = "unknown"
    """A worker stopped while sending: it may have gone out. Never resent (at most once)."""
    BOUNCED = "bounced"
    """Accepted by the provider, then reported undeliverable (bounce, carrier failure)."""


SETTLED = frozenset(
    {
        MessageStatus.SENT,
        MessageStatus.FAILED,
        MessageStatus.SKIPPED,
        MessageStatus.CANCELED,
        MessageStatus.UNKNOWN,
    }
)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A message to send at ``due_at``. ``key`` is unique: a (case or campaign, step,
    channel) is queued, and so sent, at most once."""

    key: str
    customer_id: str
    case_id: str | None
    kind: MessageKind
    channel: ChannelKind
    step: str
    due_at: datetime
    fallback: tuple[ChannelKind, ...] = ()
    fallback_after: timedelta | None = None
    only_if_unclicked: bool = False
    """A fallback sent only if nobody clicked the step's earlier messages."""
    is_fallback: bool = False
    """Queued because the step's channels could not deliver it (or were not clicked)."""
    context: Mapping[str, str] = field(default_factory=dict)
    """What a reminder is about (its card, its renewal date, an offer): checked again
    when it comes due, and given to the templates."""


def message_key(scope: str, step: str, channel: ChannelKind) -> str:
    return f"{scope}:{step}:{channel}"
