"""Events that come into the engine, as validated commands.

Adapters (API, webhooks, the simulator, ``recobra events ingest``) parse their
input into these; the engine trusts their types. Each carries the id of the
event it came from, so a duplicate delivery is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from recobra.domain.model import (
    Customer,
    Invoice,
    PaymentMethod,
    Subscription,
    canonical_phone,
    require_aware,
)


class _Event:
    """Common checks: an event id, and an aware time kept in UTC (day arithmetic on
    local wall clocks goes wrong across daylight-saving changes)."""

    event_id: str
    occurred_at: datetime

    def __post_init__(self) -> None:
        if not self.event_id:
            raise ValueError("event_id: must not be empty")
        object.__setattr__(
            self, "occurred_at", require_aware("occurred_at", self.occurred_at).astimezone(UTC)
        )


@dataclass(frozen=True, slots=True)
class PaymentFailed(_Event):
    """The billing system's charge of an invoice failed: opens a dunning case."""

    event_id: str
    occurred_at: datetime
    customer: Customer
    invoice: Invoice
    payment_method: PaymentMethod
    subscription: Subscription | None = None
    decline_code: str | None = None
    network_code: str | None = None
    advice_code: str | None = None
    gateway_reference: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentSucceeded(_Event):
    """The invoice was collected by the gateway (our retry or any other charge)."""

    event_id: str
    occurred_at: datetime
    invoice_id: str
    gateway_reference: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentMethodUpdated(_Event):
    """A payment method was added or updated (customer, card updater, operator)."""

    event_id: str
    occurred_at: datetime
    payment_method: PaymentMethod


@dataclass(frozen=True, slots=True)
class SubscriptionCanceled(_Event):
    """The customer canceled: every active case of the subscription stops."""

    event_id: str
    occurred_at: datetime
    subscription_id: str
    reason: str = ""
    surveyed: bool = False
    """The customer already answered the exit survey (the hosted journey): the
    confirmation then does not ask for it again."""


@dataclass(frozen=True, slots=True)
class SubscriptionPaused(_Event):
    """The customer accepted a pause: nothing is collected until ``until``."""

    event_id: str
    occurred_at: datetime
    subscription_id: str
    until: datetime
    reason: str = ""

    def __post_init__(self) -> None:
        _Event.__post_init__(self)
        object.__setattr__(self, "until", require_aware("until", self.until).astimezone(UTC))
        if self.until <= self.occurred_at:
            raise ValueError("until: a pause must end after it starts")


@dataclass(frozen=True, slots=True)
class DiscountGranted(_Event):
    """The customer accepted ``percent`` off the next ``cycles`` invoices."""

    event_id: str
    occurred_at: datetime
    subscription_id: str
    percent: int
    cycles: int
    reason: str = ""

    def __post_init__(self) -> None:
        _Event.__post_init__(self)
        if not 1 <= self.percent <= 100:
            raise ValueError(f"percent: must be 1-100, got {self.percent}")
        if self.cycles < 1:
            raise ValueError(f"cycles: must be at least 1, got {self.cycles}")


@dataclass(frozen=True, slots=True)
class PlanChanged(_Event):
    """The customer moved to another (known) plan."""

    event_id: str
    occurred_at: datetime
    subscription_id: str
    plan_id: str
    reason: str = ""

    def __post_init__(self) -> None:
        _Event.__post_init__(self)
        if not self.plan_id:
            raise ValueError("plan_id: must not be empty")


@dataclass(frozen=True, slots=True)
class SubscriptionReactivated(_Event):
    """A canceled or paused customer comes back: the subscription is active again
    once any invoice still owed is paid (it is retried at once)."""

    event_id: str
    occurred_at: datetime
    subscription_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class InvoicePaidOutOfBand(_Event):
    """The invoice was settled outside the gateway (bank transfer, cash, credit note)."""

    event_id: str
    occurred_at: datetime
    invoice_id: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class SubscriptionUpdated(_Event):
    """The billing system's view of a subscription and its card (created, renewed,
    card changed): what pre-dunning reminders are planned from."""

    event_id: str
    occurred_at: datetime
    customer: Customer
    subscription: Subscription
    payment_method: PaymentMethod | None = None


@dataclass(frozen=True, slots=True)
class ContactPreferencesChanged(_Event):
    """Consent and opt-outs given by the customer (None: unchanged)."""

    event_id: str
    occurred_at: datetime
    customer_id: str
    sms_consent: bool | None = None
    voice_consent: bool | None = None
    unsubscribed: bool | None = None
    win_back_opt_in: bool | None = None


@dataclass(frozen=True, slots=True)
class SmsReceived(_Event):
    """A customer's SMS reply (STOP, START ...), from the SMS provider's webhook."""

    event_id: str
    occurred_at: datetime
    phone: str
    body: str

    def __post_init__(self) -> None:
        _Event.__post_init__(self)
        object.__setattr__(self, "phone", canonical_phone(self.phone))


@dataclass(frozen=True, slots=True)
class PushSubscribed(_Event):
    """A customer's browser subscribed to web push (the subscription JSON as sent by it)."""

    event_id: str
    occurred_at: datetime
    customer_id: str
    endpoint: str
    subscription: str


Command = (
    PaymentFailed
    | PaymentSucceeded
    | PaymentMethodUpdated
    | SubscriptionCanceled
    | InvoicePaidOutOfBand
    | SubscriptionUpdated
    | ContactPreferencesChanged
    | SmsReceived
    | PushSubscribed
    | SubscriptionPaused
    | DiscountGranted
    | PlanChanged
)
"""Everything ``Engine.handle`` takes. ``SubscriptionReactivated`` is not among them: it
may charge, so it goes through ``Engine.reactivate``."""
