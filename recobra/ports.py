"""The ports the engine needs. Adapters implement them; the engine sees nothing else.

Each port is a small Protocol with frozen dataclasses in and out (no SDK types
cross this line). Gateways translate their provider's errors into a
``ChargeResult`` at the edge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from recobra.domain.case import DunningCase
from recobra.domain.leaving import Standing, SubscriptionChange
from recobra.domain.messages import MessageStatus, OutboxEntry, Reachability
from recobra.domain.model import (
    Attempt,
    Customer,
    Funding,
    Invoice,
    InvoiceStatus,
    PaymentMethod,
    Plan,
    Subscription,
    SubscriptionStatus,
)
from recobra.domain.money import Money
from recobra.domain.network import PriorAttempt
from recobra.domain.policy import PolicySet
from recobra.domain.schedule import HolidayCalendar

__all__ = [
    "CardRef",
    "CaseBundle",
    "Channel",
    "ChargeRequest",
    "ChargeResult",
    "ChargeStatus",
    "ConcurrentUpdate",
    "DeliveryResult",
    "DeliveryStatus",
    "GatewayError",
    "GatewayFactory",
    "HolidayCalendar",
    "MessageBundle",
    "MessageComposer",
    "MessageUpdate",
    "OutgoingMessage",
    "PaymentGateway",
    "RelayedEvent",
    "Store",
    "UnitOfWork",
]


@dataclass(frozen=True, slots=True)
class CardRef:
    """The payment method as the gateway needs it: a token and its public details."""

    id: str
    gateway_token: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    funding: Funding


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """Everything a gateway gets to collect one invoice once.

    ``idempotency_key`` is derived from the case and attempt number: sending the
    same request twice must never charge twice. ``attempt_number`` is 0 for the
    billing run's own first charge and 1, 2, ... for Recobra's retries.
    """

    idempotency_key: str
    invoice_id: str
    customer_id: str
    subscription_id: str | None
    amount: Money
    payment_method: CardRef
    attempt_number: int
    attempted_at: datetime
    customer_country: str
    customer_timezone: str


class ChargeStatus(StrEnum):
    """Normalised outcome of a charge or of a status lookup."""

    SUCCEEDED = "succeeded"
    """Money collected."""
    DECLINED = "declined"
    """Refused by the issuer, network or gateway; the codes say why."""
    ERROR = "error"
    """No definite answer (transport error, timeout, gateway outage)."""
    NOT_FOUND = "not_found"
    """Status lookup only: the gateway never received this idempotency key."""


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """What the gateway answered. Raw codes are kept exactly as given."""

    status: ChargeStatus
    idempotency_key: str
    gateway_reference: str | None = None
    decline_code: str | None = None
    network_code: str | None = None
    advice_code: str | None = None
    message: str = ""


class GatewayError(Exception):
    """A gateway operation other than a charge failed; the engine retries it later."""

    def __init__(self, message: str, *, code: str | None = None, transient: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


@runtime_checkable
class PaymentGateway(Protocol):
    """A payment processor, as the engine uses it. See docs/gateways.md."""

    name: str

    def charge(self, request: ChargeRequest) -> ChargeResult:
        """Try to collect ``request.amount``. Must be idempotent on ``request.idempotency_key``.

        Never raises for declines or transport problems: those are results.
        """
        ...

    def attempt_status(self, idempotency_key: str) -> ChargeResult:
        """What became of an earlier charge with this key (``NOT_FOUND`` if never received)."""
        ...

    def cancel_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        """End the subscription so that nothing more is charged. Idempotent; raises GatewayError."""
        ...

    def pause_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        """Stop collecting without ending the subscription. Idempotent; raises GatewayError."""
        ...

    def mark_unpaid(self, invoice_id: str, *, at: datetime, idempotency_key: str) -> None:
        """Mark the invoice uncollectible / the subscription unpaid. Idempotent; raises GatewayError."""
        ...


class GatewayFactory(Protocol):
    """Builds a gateway from settings (strings, usually from the environment or config file)."""

    def __call__(self, settings: Mapping[str, str]) -> PaymentGateway: ...


class ConcurrentUpdate(Exception):
    """A case changed in the store since it was loaded; the unit of work must be redone."""


@dataclass(frozen=True, slots=True)
class CaseBundle:
    """A claimed case with what the engine needs to act on it, loaded in one go."""

    case: DunningCase
    customer: Customer
    payment_method: PaymentMethod
    card_history: tuple[PriorAttempt, ...]
    pending: Attempt | None
    """An attempt written but never finished (a crashed worker): reconcile it first."""
    last_status_unknown: Attempt | None = None
    """The last attempt, when the gateway gave no answer: check its status before charging."""


class UnitOfWork(Protocol):
    """One transaction on the store. Leaving the ``with`` block without ``commit`` rolls back."""

    def __enter__(self) -> UnitOfWork: ...

    def __exit__(self, *exc: object) -> None: ...

    def commit(self) -> None: ...

    def rehearse_commit(self) -> None:
        """What ``commit`` does, every write sent and checked by the database, but ending
        in a rollback: nothing is kept (``Engine.rehearse``)."""
        ...

    def remember_events(self, events: Sequence[tuple[str, str, datetime]]) -> set[str]:
        """Record incoming (event id, kind, time); returns the ids not seen before."""
        ...

    def upsert_customers(self, customers: Sequence[Customer]) -> None: ...

    def upsert_payment_methods(self, methods: Sequence[PaymentMethod]) -> None:
        """Insert or update; a default method makes the customer's other methods non-default."""
        ...

    def upsert_subscriptions(
        self, subscriptions: Sequence[Subscription], *, update_status: bool = False
    ) -> None:
        """Insert or update; an existing subscription's status changes only with ``update_status``."""
        ...

    def upsert_invoices(self, invoices: Sequence[Invoice]) -> None: ...

    def set_invoice_status(self, invoice_id: str, status: InvoiceStatus, at: datetime) -> None: ...

    def set_subscription_statuses(self, statuses: Sequence[tuple[str, SubscriptionStatus]]) -> None: ...

    def cases_for_invoices(self, invoice_ids: Sequence[str]) -> dict[str, DunningCase]: ...

    def active_cases(
        self, *, customer_id: str | None = None, subscription_id: str | None = None
    ) -> list[DunningCase]:
        """Open and exhausted cases of a customer or a subscription, oldest first."""
        ...

    def load_bundles(self, case_ids: Sequence[str], now: datetime) -> list[CaseBundle]: ...

    def lock_cases(self, case_ids: Sequence[str]) -> dict[str, int]:
        """Lock the cases' rows for the rest of the unit of work; returns their versions."""
        ...

    def known_customers(self, customer_ids: Sequence[str]) -> set[str]: ...

    def add_cases(self, cases: Sequence[DunningCase]) -> None:
        """Insert new cases and their collected events."""
        ...

    def save_cases(self, cases: Sequence[DunningCase], *, release_claims: bool) -> None:
        """Update cases, append their collected events, optionally release their claims.

        Raises ``ConcurrentUpdate`` if any case's stored version is no longer the one
        it was loaded with; on success each case's ``version`` is bumped."""
        ...

    def add_attempts(self, attempts: Sequence[Attempt]) -> None:
        """Insert attempts. Billing attempts (reported by the billing system) already
        recorded under the same key are skipped; any other duplicate key is an error."""
        ...

    def finish_attempts(self, attempts: Sequence[Attempt]) -> None:
        """Write the outcome of attempts added earlier (matched by idempotency key)."""
        ...

    def add_messages(self, entries: Sequence[OutboxEntry]) -> None:
        """Queue messages; an entry whose key is already queued is ignored."""
        ...

    def set_suppressed(self, customer_id: str, at: datetime) -> None:
        """The customer canceled: from now on only the cancellation confirmation reaches them."""
        ...

    def set_sms_stopped(self, customer_id: str, stopped: bool, at: datetime) -> None: ...

    def set_preferences(self, customer_id: str, at: datetime, **values: bool) -> None: ...

    def add_push_subscription(
        self, customer_id: str, endpoint: str, subscription: str, at: datetime
    ) -> None: ...

    def customers_with_phone(self, phone: str) -> list[str]: ...

    def customer_of_subscription(self, subscription_id: str) -> str | None: ...

    def standing(self, subscription_id: str) -> Standing | None:
        """A subscription, its plan and the customer's own changes to it (None if unknown)."""
        ...

    def plans(self, plan_ids: Sequence[str]) -> dict[str, Plan]: ...

    def update_subscription(self, subscription_id: str, **values: Any) -> None:
        """Set ``canceled_at``, ``paused_until``, ``discount_percent``, ``discount_cycles``
        or ``plan_id`` (the status goes through ``set_subscription_statuses``)."""
        ...

    def add_subscription_changes(self, changes: Sequence[SubscriptionChange]) -> None:
        """Append to the subscriptions' event stream (relayed to the operator)."""
        ...

    def subscription_changes_after(
        self, event_id: int, *, limit: int
    ) -> list[tuple[int, SubscriptionChange]]: ...

    def unpaid_case(self, subscription_id: str) -> DunningCase | None:
        """The subscription's latest case closed by a final action with its invoice unpaid."""
        ...

    def default_payment_method(self, customer_id: str) -> PaymentMethod | None: ...

    def reap_messages(self, now: datetime) -> int:
        """Messages left 'sending' by a stopped worker become 'unknown' (never resent)."""
        ...

    def claim_due_messages(
        self, now: datetime, *, limit: int, worker_id: str, lease: timedelta
    ) -> list[int]: ...

    def load_messages(self, ids: Sequence[int], now: datetime) -> list[MessageBundle]: ...

    def update_messages(self, updates: Sequence[MessageUpdate], *, release_claims: bool) -> None: ...

    def claim_relay(self, name: str, now: datetime, *, worker_id: str, lease: timedelta) -> int | None:
        """Claim the named event stream; returns the last delivered event id, or None if
        another worker holds it."""
        ...

    def release_relay(self, name: str, last_event_id: int, now: datetime) -> None: ...

    def case_events_after(self, event_id: int, *, limit: int) -> list[RelayedEvent]: ...

    def claim_due(
        self,
        now: datetime,
        *,
        limit: int,
        worker_id: str,
        lease: timedelta,
        case_ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Claim up to ``limit`` cases due at ``now`` and not claimed by a live worker
        (a claim whose lease expired is taken over). With ``case_ids``, claim those
        active cases whatever their due time (an immediate retry)."""
        ...


@dataclass(frozen=True, slots=True)
class MessageBundle:
    """A claimed outbox message with what deciding, rendering and sending it needs."""

    id: int
    entry: OutboxEntry
    attempts: int
    customer: Customer
    reach: Reachability
    push_subscription: str | None
    case: DunningCase | None
    payment_method: PaymentMethod | None
    plan_id: str | None
    plan_name: str | None
    subscription_status: str | None
    renews_at: datetime | None
    siblings: tuple[tuple[str, str, bool], ...]
    """Other messages of the same step: (channel, status, clicked)."""
    recent: tuple[datetime, ...]
    """When non-transactional messages were last sent to this customer (7 days)."""


@dataclass(frozen=True, slots=True)
class MessageUpdate:
    """The new state of an outbox message after a dispatch."""

    id: int
    status: MessageStatus
    due_at: datetime | None
    reason: str
    attempts: int
    sent_at: datetime | None = None
    provider_id: str | None = None
    payload: Mapping[str, object] | None = None


class MessageComposer(Protocol):
    """Renders a due message for its channel and resolves the address (an adapter:
    templates, locale formatting, signed links)."""

    def compose(self, bundle: MessageBundle, now: datetime) -> OutgoingMessage:
        """Raises ``ValueError`` when the message cannot be rendered (a template problem)."""
        ...


@dataclass(frozen=True, slots=True)
class RelayedEvent:
    """A case event, as published to the operator's systems."""

    id: int
    case_id: str
    customer_id: str
    invoice_id: str
    amount_minor: int
    currency: str
    at: datetime
    kind: str
    reason: str
    from_status: str | None
    to_status: str | None
    data: Mapping[str, object] | None


class Store(Protocol):
    """Durable state: hands out units of work."""

    def unit_of_work(self) -> UnitOfWork: ...

    def next_due_at(self) -> datetime | None:
        """The earliest ``next_action_at`` of an active case (for the simulator's clock)."""
        ...

    def next_message_due_at(self) -> datetime | None:
        """The earliest due time of a scheduled message."""
        ...


# ---------------------------------------------------------------- messages


class DeliveryStatus(StrEnum):
    """What a channel says after trying to deliver one message."""

    SENT = "sent"
    """Accepted by the provider (SMTP server, Twilio, push service, webhook receiver)."""
    TRANSIENT_FAILURE = "transient_failure"
    """Try again later (timeout, 5xx, rate limit, greylisting)."""
    PERMANENT_FAILURE = "permanent_failure"
    """Will never work as is (invalid address or number, unsubscribed push endpoint,
    4xx): use the fallback channel."""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A rendered message, ready for one channel. ``key`` is unique per (case or
    campaign, step, channel) and is sent to providers as an idempotency hint."""

    key: str
    customer_id: str
    kind: str
    channel: str
    locale: str
    to: str
    """Email address, E.164 phone number, push subscription (JSON), webhook URL, or
    the customer id for in-app and file channels."""
    subject: str = ""
    text: str = ""
    html: str = ""
    data: Mapping[str, object] | None = None
    """Structured payload (webhook body, push data, in-app fields, voice options)."""
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The channel's answer; ``provider_id`` is the provider's message id when known."""

    status: DeliveryStatus
    provider_id: str | None = None
    error: str = ""


@runtime_checkable
class Channel(Protocol):
    """A way of reaching customers. Adapters translate provider errors into
    ``DeliveryResult``; they never raise for a failed delivery."""

    kind: str

    def send(self, message: OutgoingMessage) -> DeliveryResult: ...


class PolicySource(Protocol):
    """Where the engine finds its policies when they can change while it runs
    (versions stored and activated from the API or the command line).

    ``active()`` is asked at the start of every batch of events and every tick, so it
    must be cheap: a cached set, checked against the store now and then. Its
    ``version`` is the number cases opened under it record. ``version(n)`` is the set
    stored as version ``n`` (cases follow the version they opened under to the end),
    or None when no such version is known."""

    def active(self) -> PolicySet: ...

    def version(self, number: int) -> PolicySet | None: ...
