"""Incoming events (JSON) -> the engine's commands; every error names its field.

The format is documented in docs/events.md. Parsing is two-layered, like policy
files: pydantic checks shapes and types (a discriminated union on ``type``;
unknown keys are errors, so a typo never silently falls back to a default),
then the domain's constructors check their own invariants. Nothing is returned
unless everything is valid: a batch with one bad event raises for the batch.

Amounts are JSON integers of minor units (cents); never floats, strings or
booleans. Every date-time carries a time zone. Card data is never accepted:
a payment method is a gateway token plus what may be shown of the card.
Phone numbers of incoming SMS are normalised to E.164; a browser's push
subscription is checked and kept as canonical JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Self, TypeVar, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from recobra.channels.phone import InvalidPhone, normalise_phone
from recobra.domain.errors import DomainError
from recobra.domain.model import (
    Customer,
    Funding,
    Interval,
    Invoice,
    InvoiceStatus,
    PaymentMethod,
    Plan,
    Subscription,
    SubscriptionStatus,
)
from recobra.domain.money import Money, normalise_currency
from recobra.engine.commands import (
    Command,
    ContactPreferencesChanged,
    InvoicePaidOutOfBand,
    PaymentFailed,
    PaymentMethodUpdated,
    PaymentSucceeded,
    PushSubscribed,
    SmsReceived,
    SubscriptionCanceled,
    SubscriptionUpdated,
)

__all__ = [
    "EVENT_TYPES",
    "EventError",
    "event_json_schema",
    "parse_event",
    "parse_events",
    "parse_events_text",
]

EVENT_TYPES = (
    "payment_failed",
    "payment_succeeded",
    "payment_method_updated",
    "subscription_canceled",
    "invoice_paid_out_of_band",
    "subscription_updated",
    "contact_preferences_changed",
    "sms_received",
    "push_subscribed",
)
"""Every accepted value of an event's ``type``."""

MAX_MINOR_UNITS = 2**63 - 1
"""Largest amount accepted: what a signed 64-bit column holds."""
MAX_SMS_BODY = 1600
"""Longest SMS body accepted (characters): what SMS providers deliver as one message."""
PREFERENCES = ("sms_consent", "voice_consent", "unsubscribed", "win_back_opt_in")
"""The keys of ``contact_preferences_changed``, at least one of which is given."""

_ROOT = "(event)"
_JSON = "(json)"
_AWARE_EXAMPLE = "2026-11-01T10:00:00Z"
_CARD_DATA_REASON = (
    "card data is never accepted: send the gateway's token (gateway_token) and at most "
    "brand, last4, expiry and funding; never a card number or security code"
)


class EventError(ValueError):
    """Invalid event(s). ``problems`` lists (field path, reason) pairs.

    Field paths look like ``"events[3].invoice.amount_minor"``; ``"(event)"`` is a whole
    event and ``"(json)"`` the input text itself.
    """

    def __init__(self, problems: list[tuple[str, str]], *, source: str = "") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  {field}: {reason}" for field, reason in problems)
        head = f"{source}: invalid events" if source else "invalid events"
        super().__init__(f"{head}\n{lines}")


# --- field types ---------------------------------------------------------------------


def _show(value: object, limit: int = 40) -> str:
    """A short JSON-ish rendering of a rejected value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, int | float | str):
        return _kind(value)
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: object) -> str:
    """The JSON type of a decoded value, with its article."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _minor_units(value: object) -> object:
    if isinstance(value, bool):
        raise PydanticCustomError(
            "minor_units",
            "must be an integer number of minor units (cents), not a boolean ({value})",
            {"value": _show(value)},
        )
    if isinstance(value, int):
        if value < 0:
            raise PydanticCustomError(
                "minor_units", "must not be negative, got {value}", {"value": _show(value)}
            )
        return value
    if isinstance(value, str):
        raise PydanticCustomError(
            "minor_units",
            "must be an integer number of minor units (cents), not the string {value}",
            {"value": _show(value)},
        )
    if isinstance(value, float):
        raise PydanticCustomError(
            "minor_units",
            "must be an integer number of minor units (cents), not {value}",
            {"value": _show(value)},
        )
    raise PydanticCustomError(
        "minor_units",
        "must be an integer number of minor units (cents), not {value}",
        {"value": _kind(value)},
    )


MinorUnits = Annotated[
    int,
    Field(ge=0, le=MAX_MINOR_UNITS, description="integer minor units (cents); 12.50 USD is 1250"),
    BeforeValidator(_minor_units),
]


def _currency(value: object) -> str:
    try:
        return normalise_currency(value)
    except DomainError as exc:
        raise PydanticCustomError("currency", "{reason}", {"reason": exc.reason}) from None


Currency = Annotated[
    str,
    BeforeValidator(_currency),
    Field(description="ISO 4217 code such as USD, EUR, COP, JPY (lower case accepted)"),
]


def _datetime(value: object) -> object:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError(
            "datetime",
            "must be an ISO 8601 date-time string such as {example}, not {value}",
            {"example": _AWARE_EXAMPLE, "value": _kind(value)},
        )
    try:
        return datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise PydanticCustomError(
            "datetime",
            "not an ISO 8601 date-time: {value}; expected e.g. {example}",
            {"value": _show(value), "example": _AWARE_EXAMPLE},
        ) from None


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise PydanticCustomError(
            "datetime_naive",
            "must include a time zone, e.g. {example}",
            {"example": _AWARE_EXAMPLE},
        )
    return value


AwareDatetime = Annotated[
    datetime,
    BeforeValidator(_datetime),
    AfterValidator(_aware),
    Field(description=f"ISO 8601 date-time with a time zone, e.g. {_AWARE_EXAMPLE}"),
]


def _identifier(value: str) -> str:
    if value != value.strip():
        raise PydanticCustomError("identifier", "must not start or end with whitespace", {})
    if any(ch < " " or ch == "\x7f" for ch in value):
        raise PydanticCustomError("identifier", "must not contain control characters", {})
    return value


EventId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    AfterValidator(_identifier),
    Field(description="the event's unique id (a duplicate delivery is ignored)"),
]
Id = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_identifier)]
Code = Annotated[str, StringConstraints(max_length=128)]
Text = Annotated[str, StringConstraints(max_length=2000)]


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch not in " -")


def _not_a_card_number(value: str) -> str:
    digits = _digits(value)
    if 12 <= len(digits) <= 19 and digits.isascii() and digits.isdigit() and _luhn(digits):
        raise PydanticCustomError("card_data", "looks like a card number; " + _CARD_DATA_REASON)
    return value


def _last4(value: str) -> str:
    digits = _digits(value)
    if len(digits) > 4 and digits.isdigit():
        raise PydanticCustomError("card_data", "takes only the last four digits; " + _CARD_DATA_REASON)
    return value


_CARD_KEYS = frozenset({
    "number", "cardnumber", "cardno", "pan", "primaryaccountnumber", "accountnumber",
    "ccnumber", "ccnum", "creditcardnumber", "cvc", "cvc2", "cvv", "cvv2", "cid", "csc",
    "securitycode", "cardsecuritycode", "cardverificationcode", "track1", "track2",
    "trackdata", "pin",
})  # fmt: skip


def _is_card_key(key: object) -> bool:
    """Whether an (unknown) key looks like it carries card data."""
    if not isinstance(key, str):
        return False
    k = "".join(ch for ch in key.lower() if ch.isalnum())
    return k in _CARD_KEYS or ("card" in k and ("number" in k or k.endswith("no")))


def _e164(value: str) -> str:
    try:
        return normalise_phone(value, default_region=None)
    except InvalidPhone as exc:
        raise PydanticCustomError(
            "phone", "not a valid E.164 phone number: {reason}", {"reason": exc.reason}
        ) from None


E164Phone = Annotated[
    str,
    StringConstraints(min_length=1, max_length=32),
    AfterValidator(_e164),
    Field(description="E.164 phone number with its country code, e.g. +34600123456"),
]


def _https_url(value: str) -> str:
    """An https URL with a host; the URL itself (a capability) is never echoed."""
    if any(ch <= " " or ch == "\x7f" for ch in value):
        raise PydanticCustomError("url", "must not contain whitespace or control characters", {})
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # raises ValueError for a malformed port
    except ValueError:
        raise PydanticCustomError("url", "not a valid URL", {}) from None
    if parts.scheme.lower() != "https":
        raise PydanticCustomError("url", "must be an https URL (the push service's endpoint)", {})
    if not parts.hostname:
        raise PydanticCustomError("url", "must be an https URL with a host", {})
    return value


_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def _base64url(value: str) -> bytes:
    if not _BASE64URL.fullmatch(value):
        raise PydanticCustomError(
            "base64url", "must be a base64url string (A-Z, a-z, 0-9, '-' and '_'; no spaces)", {}
        )
    data = value.rstrip("=")
    try:
        return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except (ValueError, binascii.Error):
        raise PydanticCustomError("base64url", "not valid base64url (wrong length)", {}) from None


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _p256dh(value: str) -> str:
    key = _base64url(value)
    if len(key) != 65 or key[0] != 4:
        raise PydanticCustomError(
            "p256dh",
            "must be the browser's P-256 public key: an uncompressed point of 65 bytes, "
            "base64url-encoded (got {size} bytes)",
            {"size": len(key)},
        )
    return _encode(key)


def _auth(value: str) -> str:
    secret = _base64url(value)
    if len(secret) != 16:
        raise PydanticCustomError(
            "auth",
            "must be the browser's 16-byte authentication secret, base64url-encoded (got {size} bytes)",
            {"size": len(secret)},
        )
    return _encode(secret)


# --- the JSON shape -------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CustomerIn(_Model):
    """Someone who pays."""

    id: Id
    email: Annotated[str, StringConstraints(max_length=254)]
    name: Annotated[str, StringConstraints(max_length=200)] = ""
    phone: Annotated[str, StringConstraints(max_length=32)] | None = None
    locale: Annotated[str, Field(max_length=16, description="es or en")] = "en"
    timezone: Annotated[str, Field(max_length=64, description="IANA time zone")] = "UTC"
    country: Annotated[str, Field(max_length=8, description="ISO 3166-1 alpha-2")] = "US"
    created_at: AwareDatetime | None = None


class PlanIn(_Model):
    """What a subscription buys."""

    id: Id
    name: Annotated[str, StringConstraints(max_length=200)]
    interval: Interval
    amount_minor: MinorUnits
    currency: Currency


class SubscriptionIn(_Model):
    """A subscription: the one a failed invoice belongs to, or one that was updated."""

    id: Id
    status: SubscriptionStatus
    started_at: AwareDatetime
    plan: PlanIn
    customer_id: Id | None = Field(default=None, description="defaults to customer.id")
    renews_at: AwareDatetime | None = Field(
        default=None, description="end of the current period (the next renewal), if known"
    )


class InvoiceIn(_Model):
    """The invoice whose charge failed (always open)."""

    id: Id
    amount_minor: MinorUnits
    currency: Currency
    created_at: AwareDatetime
    customer_id: Id | None = Field(default=None, description="defaults to customer.id")
    subscription_id: Id | None = Field(default=None, description="defaults to subscription.id")
    status: Literal["open"] = Field(default="open", description="always open for a failure")


class _CardIn(_Model):
    id: Id
    gateway_token: Annotated[
        str,
        StringConstraints(min_length=1, max_length=512),
        AfterValidator(_not_a_card_number),
        Field(description="the gateway's reusable token for the card; never a card number"),
    ]
    brand: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    last4: Annotated[
        str,
        StringConstraints(max_length=32),
        AfterValidator(_last4),
        Field(description="the card's last four digits, as a string"),
    ]
    exp_month: StrictInt
    exp_year: StrictInt
    funding: Funding = Funding.UNKNOWN


class FailedPaymentMethodIn(_CardIn):
    """The payment method that was charged."""

    customer_id: Id | None = Field(default=None, description="defaults to customer.id")


class UpdatedPaymentMethodIn(_CardIn):
    """A new or updated payment method."""

    customer_id: Id
    is_default: StrictBool = True


class SubscriptionPaymentMethodIn(_CardIn):
    """The card a subscription is charged to."""

    customer_id: Id | None = Field(default=None, description="defaults to customer.id")
    is_default: StrictBool = True


class PushKeysIn(_Model):
    """The subscription's encryption keys (RFC 8291), base64url as the browser sends them."""

    p256dh: Annotated[
        str,
        StringConstraints(min_length=1, max_length=200),
        AfterValidator(_p256dh),
        Field(description="the browser's P-256 public key (65 bytes, base64url)"),
    ]
    auth: Annotated[
        str,
        StringConstraints(min_length=1, max_length=64),
        AfterValidator(_auth),
        Field(description="the browser's authentication secret (16 bytes, base64url)"),
    ]


class PushSubscriptionIn(_Model):
    """A browser's push subscription: what ``PushSubscription.toJSON()`` returns."""

    endpoint: Annotated[
        str,
        StringConstraints(min_length=1, max_length=1000),
        AfterValidator(_https_url),
        Field(description="the push service's https URL for this browser"),
    ]
    expirationTime: StrictInt | None = Field(  # the browser's own key (camelCase)
        default=None, ge=0, description="when the subscription expires (ms since the epoch), if ever"
    )
    keys: PushKeysIn

    def canonical(self) -> str:
        """Compact JSON with sorted keys: the same subscription is always the same text."""
        data: dict[str, object] = {
            "endpoint": self.endpoint,
            "keys": {"p256dh": self.keys.p256dh, "auth": self.keys.auth},
        }
        if self.expirationTime is not None:
            data["expirationTime"] = self.expirationTime
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class DeclineIn(_Model):
    """The gateway's raw decline codes, kept as given (see docs/declines.md)."""

    code: Code | None = None
    network_code: Code | None = None
    advice_code: Code | None = None


class PaymentFailedEvent(_Model):
    """The billing system's charge of an invoice failed: opens a dunning case."""

    type: Literal["payment_failed"]
    id: EventId
    occurred_at: AwareDatetime
    customer: CustomerIn
    subscription: SubscriptionIn | None = None
    invoice: InvoiceIn
    payment_method: FailedPaymentMethodIn
    decline: DeclineIn | None = Field(default=None, description="absent: unknown outcome")
    gateway_reference: Id | None = None


class PaymentSucceededEvent(_Model):
    """The invoice was collected by the gateway."""

    type: Literal["payment_succeeded"]
    id: EventId
    occurred_at: AwareDatetime
    invoice_id: Id
    gateway_reference: Id | None = None


class PaymentMethodUpdatedEvent(_Model):
    """A payment method was added or updated."""

    type: Literal["payment_method_updated"]
    id: EventId
    occurred_at: AwareDatetime
    payment_method: UpdatedPaymentMethodIn


class SubscriptionCanceledEvent(_Model):
    """The customer canceled the subscription."""

    type: Literal["subscription_canceled"]
    id: EventId
    occurred_at: AwareDatetime
    subscription_id: Id
    reason: Text | None = None


class InvoicePaidOutOfBandEvent(_Model):
    """The invoice was settled outside the gateway."""

    type: Literal["invoice_paid_out_of_band"]
    id: EventId
    occurred_at: AwareDatetime
    invoice_id: Id
    note: Text | None = None


class SubscriptionUpdatedEvent(_Model):
    """The billing system's view of a subscription (created, renewed, card changed)."""

    type: Literal["subscription_updated"]
    id: EventId
    occurred_at: AwareDatetime
    customer: CustomerIn
    subscription: SubscriptionIn
    payment_method: SubscriptionPaymentMethodIn | None = None


class ContactPreferencesChangedEvent(_Model):
    """Consent and opt-outs given by the customer; an absent (or null) key is unchanged."""

    type: Literal["contact_preferences_changed"]
    id: EventId
    occurred_at: AwareDatetime
    customer_id: Id
    sms_consent: StrictBool | None = None
    voice_consent: StrictBool | None = None
    unsubscribed: StrictBool | None = None
    win_back_opt_in: StrictBool | None = None

    @model_validator(mode="after")
    def _something_changed(self) -> Self:
        if all(getattr(self, name) is None for name in PREFERENCES):
            raise PydanticCustomError(
                "preferences",
                "changes nothing: give at least one of {keys} (true or false)",
                {"keys": ", ".join(PREFERENCES)},
            )
        return self


class SmsReceivedEvent(_Model):
    """A customer's SMS reply, from the SMS provider's webhook."""

    type: Literal["sms_received"]
    id: EventId
    occurred_at: AwareDatetime
    phone: E164Phone
    body: Annotated[
        str,
        StringConstraints(max_length=MAX_SMS_BODY),
        Field(description="the message text as received"),
    ]


class PushSubscribedEvent(_Model):
    """A customer's browser subscribed to web push."""

    type: Literal["push_subscribed"]
    id: EventId
    occurred_at: AwareDatetime
    customer_id: Id
    subscription: PushSubscriptionIn


_EventModel = (
    PaymentFailedEvent
    | PaymentSucceededEvent
    | PaymentMethodUpdatedEvent
    | SubscriptionCanceledEvent
    | InvoicePaidOutOfBandEvent
    | SubscriptionUpdatedEvent
    | ContactPreferencesChangedEvent
    | SmsReceivedEvent
    | PushSubscribedEvent
)
Event = Annotated[_EventModel, Field(discriminator="type")]
"""One incoming event: a union discriminated by ``type``."""

_EVENT_MODELS: dict[str, type[_Model]] = {
    "payment_failed": PaymentFailedEvent,
    "payment_succeeded": PaymentSucceededEvent,
    "payment_method_updated": PaymentMethodUpdatedEvent,
    "subscription_canceled": SubscriptionCanceledEvent,
    "invoice_paid_out_of_band": InvoicePaidOutOfBandEvent,
    "subscription_updated": SubscriptionUpdatedEvent,
    "contact_preferences_changed": ContactPreferencesChangedEvent,
    "sms_received": SmsReceivedEvent,
    "push_subscribed": PushSubscribedEvent,
}
_ADAPTER: TypeAdapter[_EventModel] = TypeAdapter(Event)


def event_json_schema() -> dict[str, object]:
    """JSON Schema (draft 2020-12, as pydantic generates it) of one event."""
    schema: dict[str, object] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Recobra event",
        "description": "One incoming event; see docs/events.md.",
    }
    schema.update(_ADAPTER.json_schema())
    return schema


# --- errors -> (field, reason) --------------------------------------------------------


def _loc_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _join(where: str, path: str) -> str:
    if not path:
        return where or _ROOT
    if not where:
        return path
    return where + path if path.startswith("[") else f"{where}.{path}"


def _model_at(model: type[BaseModel], keys: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class that validates the object at ``keys`` below ``model``."""
    current: type[BaseModel] = model
    for key in keys:
        field = current.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            return None
        nested = [
            a
            for a in (field.annotation, *get_args(field.annotation))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not nested:
            return None
        current = nested[0]
    return current


def _reason(error: Any, model: type[BaseModel] | None, loc: Sequence[int | str]) -> str:
    kind: str = error["type"]
    if kind == "extra_forbidden":
        key = loc[-1] if loc else ""
        if _is_card_key(key):
            return _CARD_DATA_REASON
        owner = _model_at(model, loc[:-1]) if model is not None else None
        if owner is None:
            return "unknown key"
        return "unknown key; expected one of: " + ", ".join(owner.model_fields)
    if kind == "missing":
        return "required"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return f"must be a JSON object, not {_kind(error.get('input'))}"
    if kind.endswith("_type") and "input" in error:
        return f"{error['msg']}, not {_kind(error['input'])}"
    return str(error["msg"])


def _problems(exc: ValidationError, where: str, tag: str) -> list[tuple[str, str]]:
    model = _EVENT_MODELS.get(tag)
    problems = []
    for error in exc.errors():
        loc: tuple[int | str, ...] = tuple(error["loc"])
        if loc and loc[0] == tag:
            loc = loc[1:]  # the union branch: the event type, already known
        problems.append((_join(where, _loc_path(loc)), _reason(error, model, loc)))
    return problems


# --- shape -> commands ----------------------------------------------------------------

_T = TypeVar("_T")
_RENAMES = {"amount": "amount_minor", "price": "amount_minor"}


class _Builder:
    """Runs the domain's constructors, turning each ``DomainError`` into a problem."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def build(self, prefix: str, factory: Callable[[], _T]) -> _T | None:
        try:
            return factory()
        except DomainError as exc:
            *_, last = exc.field.split(".")
            self.problems.append((f"{prefix}.{_RENAMES.get(last, last)}", exc.reason))
            return None

    def same(self, field: str, given: str | None, expected: str, expected_name: str) -> str:
        if given is not None and given != expected:
            self.problems.append((field, f"must equal {expected_name} ({expected!r}) if given"))
        return expected


def _customer(c: CustomerIn, b: _Builder) -> Customer | None:
    return b.build(
        "customer",
        lambda: Customer(
            id=c.id,
            email=c.email,
            locale=c.locale,
            timezone=c.timezone,
            country=c.country,
            name=c.name,
            phone=c.phone,
            created_at=c.created_at,
        ),
    )


def _subscription(sub: SubscriptionIn, customer_id: str, b: _Builder) -> Subscription | None:
    p = sub.plan
    sub_customer = b.same("subscription.customer_id", sub.customer_id, customer_id, "customer.id")
    plan = b.build(
        "subscription.plan",
        lambda: Plan(id=p.id, name=p.name, interval=p.interval, price=Money.of(p.amount_minor, p.currency)),
    )
    if plan is None:
        return None
    return b.build(
        "subscription",
        lambda: Subscription(
            id=sub.id,
            customer_id=sub_customer,
            plan=plan,
            status=sub.status,
            started_at=sub.started_at,
            renews_at=sub.renews_at,
        ),
    )


def _method(pm: _CardIn, customer_id: str, b: _Builder, *, is_default: bool = True) -> PaymentMethod | None:
    return b.build(
        "payment_method",
        lambda: PaymentMethod(
            id=pm.id,
            customer_id=customer_id,
            gateway_token=pm.gateway_token,
            brand=pm.brand,
            last4=pm.last4,
            exp_month=pm.exp_month,
            exp_year=pm.exp_year,
            funding=pm.funding,
            is_default=is_default,
        ),
    )


def _payment_failed(event: PaymentFailedEvent, b: _Builder) -> PaymentFailed | None:
    c, inv, pm, sub = event.customer, event.invoice, event.payment_method, event.subscription
    customer = _customer(c, b)
    subscription = None if sub is None else _subscription(sub, c.id, b)
    inv_customer = b.same("invoice.customer_id", inv.customer_id, c.id, "customer.id")
    inv_subscription = inv.subscription_id
    if sub is not None:
        inv_subscription = b.same("invoice.subscription_id", inv.subscription_id, sub.id, "subscription.id")
    invoice = b.build(
        "invoice",
        lambda: Invoice(
            id=inv.id,
            customer_id=inv_customer,
            subscription_id=inv_subscription,
            amount=Money.of(inv.amount_minor, inv.currency),
            status=InvoiceStatus.OPEN,
            created_at=inv.created_at,
        ),
    )
    pm_customer = b.same("payment_method.customer_id", pm.customer_id, c.id, "customer.id")
    method = _method(pm, pm_customer, b)
    if customer is None or invoice is None or method is None or b.problems:
        return None
    decline = event.decline or DeclineIn()
    return PaymentFailed(
        event_id=event.id,
        occurred_at=event.occurred_at,
        customer=customer,
        invoice=invoice,
        payment_method=method,
        subscription=subscription,
        decline_code=decline.code or None,
        network_code=decline.network_code or None,
        advice_code=decline.advice_code or None,
        gateway_reference=event.gateway_reference,
    )


def _subscription_updated(event: SubscriptionUpdatedEvent, b: _Builder) -> SubscriptionUpdated | None:
    c, pm = event.customer, event.payment_method
    customer = _customer(c, b)
    subscription = _subscription(event.subscription, c.id, b)
    method: PaymentMethod | None = None
    if pm is not None:
        pm_customer = b.same("payment_method.customer_id", pm.customer_id, c.id, "customer.id")
        method = _method(pm, pm_customer, b, is_default=pm.is_default)
    if customer is None or subscription is None or b.problems:
        return None
    return SubscriptionUpdated(event.id, event.occurred_at, customer, subscription, method)


def _command(event: _EventModel, b: _Builder) -> Command | None:
    if isinstance(event, PaymentFailedEvent):
        return _payment_failed(event, b)
    if isinstance(event, PaymentSucceededEvent):
        return PaymentSucceeded(event.id, event.occurred_at, event.invoice_id, event.gateway_reference)
    if isinstance(event, PaymentMethodUpdatedEvent):
        pm = event.payment_method
        method = _method(pm, pm.customer_id, b, is_default=pm.is_default)
        return None if method is None else PaymentMethodUpdated(event.id, event.occurred_at, method)
    if isinstance(event, SubscriptionCanceledEvent):
        return SubscriptionCanceled(event.id, event.occurred_at, event.subscription_id, event.reason or "")
    if isinstance(event, InvoicePaidOutOfBandEvent):
        return InvoicePaidOutOfBand(event.id, event.occurred_at, event.invoice_id, event.note or "")
    if isinstance(event, SubscriptionUpdatedEvent):
        return _subscription_updated(event, b)
    if isinstance(event, ContactPreferencesChangedEvent):
        return ContactPreferencesChanged(
            event.id,
            event.occurred_at,
            event.customer_id,
            sms_consent=event.sms_consent,
            voice_consent=event.voice_consent,
            unsubscribed=event.unsubscribed,
            win_back_opt_in=event.win_back_opt_in,
        )
    if isinstance(event, SmsReceivedEvent):
        return SmsReceived(event.id, event.occurred_at, event.phone, event.body)
    sub = event.subscription
    return PushSubscribed(event.id, event.occurred_at, event.customer_id, sub.endpoint, sub.canonical())


# --- public API -----------------------------------------------------------------------


def parse_event(data: object, *, where: str = "") -> Command:
    """One decoded JSON object -> its command; raises ``EventError`` naming every problem.

    ``where`` prefixes every field path (``"events[3]"``).
    """
    if not isinstance(data, dict):
        raise EventError([(where or _ROOT, f"must be a JSON object, not {_kind(data)}")])
    tag = data.get("type")
    if not isinstance(tag, str) or tag not in _EVENT_MODELS:
        known = ", ".join(EVENT_TYPES)
        reason = (
            f"required; one of: {known}"
            if "type" not in data
            else f"unknown event type {_show(tag)}; known types: {known}"
        )
        raise EventError([(_join(where, "type"), reason)])
    try:
        event = _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise EventError(_problems(exc, where, tag)) from None
    builder = _Builder()
    command = _command(event, builder)
    if builder.problems or command is None:
        raise EventError([(_join(where, f), r) for f, r in builder.problems])
    return command


def parse_events(data: object) -> list[Command]:
    """A decoded JSON array of events -> their commands, all or nothing.

    Every event is validated; one ``EventError`` lists every problem of every event,
    each path starting with the event's index (``events[3].invoice.amount_minor``).
    """
    if not isinstance(data, list):
        raise EventError([("events", f"must be a JSON array of events, not {_kind(data)}")])
    commands: list[Command] = []
    problems: list[tuple[str, str]] = []
    for i, item in enumerate(data):
        try:
            commands.append(parse_event(item, where=f"events[{i}]"))
        except EventError as exc:
            problems.extend(exc.problems)
    if problems:
        raise EventError(problems)
    return commands


class _JsonProblem(ValueError):
    """Valid JSON syntax that is still not acceptable (NaN, duplicate keys)."""


def _no_nan(name: str) -> object:
    raise _JsonProblem(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _JsonProblem(f"duplicate key {_show(key)} in an object")
        out[key] = value
    return out


def _loads(text: str) -> object:
    return json.loads(text, parse_constant=_no_nan, object_pairs_hook=_no_duplicates)


def _json_problem(exc: ValueError | RecursionError, line_offset: int = 0) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON (line {exc.lineno + line_offset}, column {exc.colno}): {exc.msg}"
    if isinstance(exc, RecursionError):
        return "not acceptable JSON: nested too deeply"
    return f"not acceptable JSON: {exc}"


def parse_events_text(text: str, *, source: str = "<input>") -> list[Command]:
    """Events from text: a JSON array, a single JSON object, or JSON Lines.

    JSON Lines is one object per line; blank lines are allowed and each event's index
    counts non-blank lines from 0 (reasons also name the line). All or nothing: any
    problem raises one ``EventError`` (``source`` names the input in its message).
    """
    text = text.removeprefix("\ufeff")
    if not text.strip():
        return []
    try:
        data = _loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            raise EventError([(_JSON, _json_problem(exc))], source=source) from None
        return _parse_lines(text, source)
    except (ValueError, RecursionError) as exc:
        raise EventError([(_JSON, _json_problem(exc))], source=source) from None
    try:
        if isinstance(data, list):
            return parse_events(data)
        if isinstance(data, dict):
            return [parse_event(data)]
    except EventError as exc:
        raise EventError(exc.problems, source=source) from None
    raise EventError(
        [(_JSON, f"expected a JSON array of events, one event object or JSON Lines, not {_kind(data)}")],
        source=source,
    )


def _parse_lines(text: str, source: str) -> list[Command]:
    commands: list[Command] = []
    problems: list[tuple[str, str]] = []
    index = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"events[{index}]"
        index += 1
        try:
            data = _loads(line)
        except json.JSONDecodeError as exc:
            problems.append((where, _json_problem(exc, number - 1)))
            continue
        except (ValueError, RecursionError) as exc:
            problems.append((where, f"{_json_problem(exc)} (line {number})"))
            continue
        try:
            commands.append(parse_event(data, where=where))
        except EventError as exc:
            problems.extend((field, f"{reason} (line {number})") for field, reason in exc.problems)
    if problems:
        raise EventError(problems, source=source)
    return commands
