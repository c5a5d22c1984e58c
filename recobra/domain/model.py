"""Customers, plans, subscriptions, invoices, payment methods and attempts.

Plain values: no I/O, no clock. Times are timezone-aware datetimes supplied by
the caller. Card data is limited to what a gateway token stands for: brand,
last four digits, expiry and funding; never a card number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from recobra.domain.declines import Decline
from recobra.domain.errors import DomainError
from recobra.domain.money import Money

LOCALES = ("es", "en")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


_PHONE_NOISE = re.compile(r"[\s().\-/]")


def canonical_phone(phone: str) -> str:
    """A phone number without spaces, dots, dashes or brackets ("+52 55 1234-5678" ->
    "+525512345678"), so numbers written differently compare equal. Full E.164
    validation, which needs the numbering plan, happens at the edges."""
    return _PHONE_NOISE.sub("", phone)


def require_aware(field: str, value: datetime) -> datetime:
    """Reject naive datetimes: every time in Recobra carries its zone."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise DomainError(field, "must be a timezone-aware datetime")
    return value


def check_timezone(field: str, name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise DomainError(field, f"unknown IANA time zone {name!r}") from None


class Interval(StrEnum):
    """How often a plan renews."""

    MONTH = "month"
    YEAR = "year"


class SubscriptionStatus(StrEnum):
    """Where a subscription stands, as the billing system and Recobra see it."""

    ACTIVE = "active"
    """Paid up and renewing."""
    PAST_DUE = "past_due"
    """A renewal failed and a dunning case is open."""
    PAUSED = "paused"
    """Collection paused (final action ``pause`` or a save offer)."""
    CANCELED = "canceled"
    """Ended, by the customer or by the final action ``cancel``."""
    UNPAID = "unpaid"
    """Kept but marked unpaid (final action ``mark_unpaid``)."""


class Funding(StrEnum):
    """Card funding type, which shapes decline mixes and payday timing."""

    CREDIT = "credit"
    DEBIT = "debit"
    PREPAID = "prepaid"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Customer:
    """Someone who pays. Locale is ``es`` or ``en``; time zone is IANA; country ISO 3166-1."""

    id: str
    email: str
    locale: str = "en"
    timezone: str = "UTC"
    country: str = "US"
    name: str = ""
    phone: str | None = None
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise DomainError("customer.id", "must not be empty")
        if not _EMAIL.match(self.email):
            raise DomainError("customer.email", f"not an email address: {self.email!r}")
        if self.locale not in LOCALES:
            raise DomainError("customer.locale", f"must be one of {LOCALES}, got {self.locale!r}")
        check_timezone("customer.timezone", self.timezone)
        if not _COUNTRY.match(self.country):
            raise DomainError("customer.country", f"must be an ISO 3166-1 alpha-2 code, got {self.country!r}")
        if self.created_at is not None:
            require_aware("customer.created_at", self.created_at)
        if self.phone is not None:
            object.__setattr__(self, "phone", canonical_phone(self.phone) or None)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a subscription buys, at what price and how often."""

    id: str
    name: str
    interval: Interval
    price: Money

    def __post_init__(self) -> None:
        if self.price.amount_minor < 0:
            raise DomainError("plan.price", "must not be negative")


@dataclass(frozen=True, slots=True)
class Subscription:
    """A customer's subscription to a plan. ``renews_at`` is the end of the current
    period (the next renewal), when known: pre-dunning reminders count back from it."""

    id: str
    customer_id: str
    plan: Plan
    status: SubscriptionStatus
    started_at: datetime
    renews_at: datetime | None = None

    def __post_init__(self) -> None:
        require_aware("subscription.started_at", self.started_at)
        if self.renews_at is not None:
            require_aware("subscription.renews_at", self.renews_at)


@dataclass(frozen=True, slots=True)
class PaymentMethod:
    """A gateway token and what may be shown of the card. Never a card number."""

    id: str
    customer_id: str
    gateway_token: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    funding: Funding = Funding.UNKNOWN
    is_default: bool = True

    def __post_init__(self) -> None:
        if not (len(self.last4) == 4 and self.last4.isdigit()):
            raise DomainError("payment_method.last4", f"must be 4 digits, got {self.last4!r}")
        if not 1 <= self.exp_month <= 12:
            raise DomainError("payment_method.exp_month", f"must be 1-12, got {self.exp_month}")
        if not 2000 <= self.exp_year <= 2200:
            raise DomainError("payment_method.exp_year", f"implausible year {self.exp_year}")

    def expires_before(self, day: date) -> bool:
        """True when the card's last valid month ends before ``day``."""
        return (self.exp_year, self.exp_month) < (day.year, day.month)


class InvoiceStatus(StrEnum):
    """An invoice's collection state."""

    OPEN = "open"
    """Issued and not yet paid."""
    PAID = "paid"
    """Collected (by the billing run, a retry or out of band)."""
    UNCOLLECTIBLE = "uncollectible"
    """Given up on."""
    VOID = "void"
    """Canceled before collection."""


@dataclass(frozen=True, slots=True)
class Invoice:
    """One bill for one period of a subscription."""

    id: str
    customer_id: str
    subscription_id: str | None
    amount: Money
    status: InvoiceStatus
    created_at: datetime

    def __post_init__(self) -> None:
        if self.amount.amount_minor <= 0:
            raise DomainError("invoice.amount", "must be a positive amount of minor units")
        require_aware("invoice.created_at", self.created_at)


class AttemptStatus(StrEnum):
    """The outcome of one charge attempt."""

    PENDING = "pending"
    """Written before the gateway is called; a crash leaves it here for reconciliation."""
    SUCCEEDED = "succeeded"
    """The gateway collected the money."""
    FAILED = "failed"
    """The gateway declined; the decline says why."""
    UNKNOWN = "unknown"
    """No answer (timeout, transport error): the status must be checked before retrying."""


class AttemptTrigger(StrEnum):
    """Why an attempt was made."""

    BILLING = "billing"
    """The billing system's own first charge of the invoice (the failure that opened the case)."""
    POLICY = "policy"
    """A retry scheduled by the policy; counts against its attempt budget."""
    PAYMENT_METHOD = "payment_method"
    """An immediate retry after a new or updated payment method; outside the budget."""
    OPERATOR = "operator"
    """A retry requested by an operator; outside the budget."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One charge attempt, as recorded."""

    case_id: str
    number: int
    payment_method_id: str
    idempotency_key: str
    at: datetime
    status: AttemptStatus
    trigger: AttemptTrigger
    decline: Decline | None = None
    gateway_reference: str | None = None


def idempotency_key(case_id: str, number: int) -> str:
    """Deterministic key of a case's attempt: a rerun after a crash reuses it."""
    return f"recobra:{case_id}:{number}"
