"""Stripe's objects, as decoded JSON, to Recobra's domain objects and commands.

Pure functions over plain ``dict``s (``StripeObject.to_dict()`` or a webhook's
``data.object``): no I/O, no clock, no SDK types. They read both the shapes of the
pinned API version and the older ones that accounts on earlier versions still send:

* an invoice's subscription is ``parent.subscription_details.subscription`` (since
  2025-03-31.basil) or ``subscription`` (before);
* a subscription's period end is on its items (basil on) or on itself (before);
* a plan's price is ``items.data[].price`` or the legacy ``plan``.

Stripe references: https://docs.stripe.com/api/invoices/object,
https://docs.stripe.com/api/charges/object (``outcome``),
https://docs.stripe.com/declines/codes, https://docs.stripe.com/api/errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
    check_timezone,
)
from recobra.domain.money import Money

Obj = Mapping[str, Any]

# Stripe subscription statuses -> Recobra's. ``incomplete`` is a first invoice not
# yet paid (Recobra's "past due"); ``incomplete_expired`` never started.
_SUBSCRIPTION_STATUS = {
    "active": SubscriptionStatus.ACTIVE,
    "trialing": SubscriptionStatus.ACTIVE,
    "past_due": SubscriptionStatus.PAST_DUE,
    "incomplete": SubscriptionStatus.PAST_DUE,
    "unpaid": SubscriptionStatus.UNPAID,
    "paused": SubscriptionStatus.PAUSED,
    "canceled": SubscriptionStatus.CANCELED,
    "incomplete_expired": SubscriptionStatus.CANCELED,
}

_INVOICE_STATUS = {
    "draft": InvoiceStatus.OPEN,
    "open": InvoiceStatus.OPEN,
    "paid": InvoiceStatus.PAID,
    "uncollectible": InvoiceStatus.UNCOLLECTIBLE,
    "void": InvoiceStatus.VOID,
}


class MappingError(ValueError):
    """A Stripe object lacks something Recobra needs; the message names the field."""


def ref(value: Any) -> str | None:
    """The id of a reference that may be expanded (an object) or not (a string)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        found = value.get("id")
        return str(found) if found else None
    return str(value) or None


def timestamp(value: Any, field: str) -> datetime:
    """Stripe's Unix seconds as an aware UTC datetime."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise MappingError(f"{field}: expected Unix seconds, got {value!r}")
    return datetime.fromtimestamp(value, UTC)


def _opt_timestamp(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int) and value > 0 else None


def funding(value: Any) -> Funding:
    try:
        return Funding(value)
    except ValueError:
        return Funding.UNKNOWN


def _locale(preferred: Any) -> str:
    for tag in preferred or ():
        lang = str(tag).split("-")[0].lower()
        if lang in ("es", "en"):
            return lang
    return "en"


def _country(*candidates: Any) -> str:
    for value in candidates:
        if isinstance(value, str) and len(value) == 2 and value.isalpha():
            return value.upper()
    return "US"


def _timezone(metadata: Obj) -> str:
    """Stripe keeps no time zone for a customer; operators may put one in the
    customer's metadata (``timezone``: an IANA name). Anything else means UTC."""
    zone = metadata.get("timezone") if metadata else None
    if isinstance(zone, str) and zone:
        try:
            check_timezone("timezone", zone)
        except ValueError:
            return "UTC"
        return zone
    return "UTC"


def customer(obj: Obj, *, fallback_email: str | None = None) -> Customer:
    """A Stripe customer. Locale from ``preferred_locales`` (``es``/``en``), country
    from the address, time zone from ``metadata.timezone``."""
    email = obj.get("email") or fallback_email
    if not email:
        raise MappingError(f"customer {obj.get('id')}: has no email address")
    metadata = obj.get("metadata") or {}
    address = obj.get("address") or {}
    shipping = (obj.get("shipping") or {}).get("address") or {}
    return Customer(
        id=str(obj["id"]),
        email=str(email),
        locale=_locale(obj.get("preferred_locales")),
        timezone=_timezone(metadata),
        country=_country(address.get("country"), shipping.get("country"), metadata.get("country")),
        name=str(obj.get("name") or "")[:200],
        phone=(str(obj["phone"])[:32] if obj.get("phone") else None),
        created_at=_opt_timestamp(obj.get("created")),
    )


def customer_from_invoice(invoice: Obj) -> Customer:
    """The customer as an invoice describes it (when the customer object is not at hand)."""
    address = invoice.get("customer_address") or {}
    email = invoice.get("customer_email")
    if not email:
        raise MappingError(f"invoice {invoice.get('id')}: customer_email is missing")
    return Customer(
        id=str(ref(invoice.get("customer"))),
        email=str(email),
        country=_country(address.get("country")),
        name=str(invoice.get("customer_name") or "")[:200],
        phone=(str(invoice["customer_phone"])[:32] if invoice.get("customer_phone") else None),
    )


def card_details(obj: Obj) -> Obj | None:
    """The card part of a PaymentMethod (``card``), a legacy Card or card source, or a
    charge's ``payment_method_details.card``."""
    if obj.get("object") == "card" or (obj.get("object") == "source" and obj.get("type") == "card"):
        return obj.get("card") if obj.get("object") == "source" else obj
    if isinstance(obj.get("card"), Mapping):
        card: Obj = obj["card"]
        return card
    details = obj.get("payment_method_details")
    if isinstance(details, Mapping) and isinstance(details.get("card"), Mapping):
        inner: Obj = details["card"]
        return inner
    return None


def payment_method(
    obj: Obj, *, customer_id: str | None = None, is_default: bool = True
) -> PaymentMethod | None:
    """A card PaymentMethod (``pm_``) or legacy card (``card_``/``src_``) as a Recobra
    payment method; None for anything that is not a card (Recobra retries cards)."""
    card = card_details(obj)
    if card is None:
        return None
    owner = customer_id or ref(obj.get("customer"))
    if not owner:
        raise MappingError(f"payment method {obj.get('id')}: belongs to no customer")
    last4 = card.get("last4") or card.get("dynamic_last4")
    return PaymentMethod(
        id=str(obj["id"]),
        customer_id=owner,
        gateway_token=str(obj["id"]),
        brand=str(card.get("brand") or "unknown").lower().replace(" ", "_"),
        last4=str(last4 or ""),
        exp_month=int(card.get("exp_month") or 0),
        exp_year=int(card.get("exp_year") or 0),
        funding=funding(card.get("funding")),
        is_default=is_default,
    )


def payment_method_from_charge(charge: Obj, customer_id: str) -> PaymentMethod | None:
    """The card a charge was made on, from ``payment_method_details.card``."""
    token = charge.get("payment_method") or ref(charge.get("source"))
    card = card_details(charge)
    if not token or card is None:
        return None
    return PaymentMethod(
        id=str(token),
        customer_id=customer_id,
        gateway_token=str(token),
        brand=str(card.get("brand") or card.get("network") or "unknown").lower(),
        last4=str(card.get("last4") or ""),
        exp_month=int(card.get("exp_month") or 0),
        exp_year=int(card.get("exp_year") or 0),
        funding=funding(card.get("funding")),
    )


@dataclass(frozen=True, slots=True)
class DeclineCodes:
    """The raw codes of a failed charge, as Recobra's decline taxonomy takes them."""

    code: str | None = None
    """Stripe's ``decline_code``, else the error ``code`` (``card_declined`` ...)."""
    network_code: str | None = None
    """``network_decline_code``: the issuer's ISO 8583 answer (``"51"``)."""
    advice_code: str | None = None
    """Mastercard's ``network_advice_code`` when given, else Stripe's ``advice_code``."""
    message: str = ""
    charge_id: str | None = None

    @property
    def authentication_required(self) -> bool:
        return self.code in {"authentication_required", "payment_intent_authentication_failure"}


def decline_codes(*, error: Obj | None = None, charge: Obj | None = None) -> DeclineCodes:
    """Codes from an API error body (``last_payment_error`` or a card error) and/or
    the failed charge's ``outcome``; the error's own codes win where both give one."""
    error = error or {}
    charge = charge or {}
    outcome = charge.get("outcome") or {}
    reason = outcome.get("reason") if outcome.get("type") in {"issuer_declined", "blocked"} else None
    code = error.get("decline_code") or reason or error.get("code") or charge.get("failure_code") or None
    network = error.get("network_decline_code") or outcome.get("network_decline_code") or None
    advice = (
        error.get("network_advice_code")
        or outcome.get("network_advice_code")
        or error.get("advice_code")
        or outcome.get("advice_code")
        or None
    )
    message = error.get("message") or charge.get("failure_message") or outcome.get("seller_message") or ""
    charge_id = ref(error.get("charge")) or ref(charge.get("id"))
    return DeclineCodes(
        str(code) if code else None,
        str(network) if network else None,
        str(advice) if advice else None,
        str(message),
        charge_id,
    )


def _first_item(subscription: Obj) -> Obj:
    items = (subscription.get("items") or {}).get("data") or []
    return items[0] if items else {}


def plan(subscription: Obj) -> Plan:
    """The subscription's first item as a plan: the price (or legacy plan), its
    interval (yearly plans are ``year``; everything shorter renews as ``month``) and
    the amount times the quantity."""
    item = _first_item(subscription)
    price = item.get("price") or item.get("plan") or subscription.get("plan") or {}
    recurring = price.get("recurring") or {}
    interval = recurring.get("interval") or price.get("interval")
    amount = price.get("unit_amount")
    if amount is None:
        amount = price.get("amount")
    quantity = item.get("quantity") or subscription.get("quantity") or 1
    currency = price.get("currency") or subscription.get("currency")
    if not currency or not isinstance(amount, int):
        raise MappingError(f"subscription {subscription.get('id')}: its price has no amount or currency")
    return Plan(
        id=str(price.get("id") or "unknown"),
        name=str(price.get("nickname") or ref(price.get("product")) or price.get("id") or "")[:200],
        interval=Interval.YEAR if interval == "year" else Interval.MONTH,
        price=Money(int(amount) * int(quantity), str(currency)),
    )


def subscription_status(subscription: Obj) -> SubscriptionStatus:
    if subscription.get("pause_collection") and subscription.get("status") in ("active", "past_due"):
        return SubscriptionStatus.PAUSED
    return _SUBSCRIPTION_STATUS.get(str(subscription.get("status")), SubscriptionStatus.ACTIVE)


def subscription(obj: Obj) -> Subscription:
    """A Stripe subscription; ``renews_at`` is the current period's end (on the item
    since basil, on the subscription before), None once it will not renew."""
    item = _first_item(obj)
    period_end = item.get("current_period_end") or obj.get("current_period_end")
    renews = None if obj.get("cancel_at_period_end") or obj.get("status") == "canceled" else period_end
    return Subscription(
        id=str(obj["id"]),
        customer_id=str(ref(obj.get("customer"))),
        plan=plan(obj),
        status=subscription_status(obj),
        started_at=timestamp(obj.get("start_date") or obj.get("created"), "subscription.start_date"),
        renews_at=_opt_timestamp(renews),
    )


def invoice_subscription_id(invoice: Obj) -> str | None:
    parent = invoice.get("parent") or {}
    details = parent.get("subscription_details") or {}
    return ref(details.get("subscription")) or ref(invoice.get("subscription"))


def invoice(obj: Obj) -> Invoice:
    """A Stripe invoice; the amount is what is still owed (``amount_remaining``)."""
    amount = obj.get("amount_remaining")
    if amount is None:
        amount = obj.get("amount_due")
    if not isinstance(amount, int) or amount <= 0:
        raise MappingError(f"invoice {obj.get('id')}: nothing is owed on it")
    return Invoice(
        id=str(obj["id"]),
        customer_id=str(ref(obj.get("customer"))),
        subscription_id=invoice_subscription_id(obj),
        amount=Money(amount, str(obj["currency"])),
        status=_INVOICE_STATUS.get(str(obj.get("status")), InvoiceStatus.OPEN),
        created_at=timestamp(obj.get("created"), "invoice.created"),
    )


def invoice_payment_intent_id(invoice: Obj) -> str | None:
    """The invoice's latest PaymentIntent: from ``payments`` (basil on; expanded or
    listed) or the legacy ``payment_intent`` field."""
    payments = (invoice.get("payments") or {}).get("data") or []
    ranked = sorted(payments, key=lambda p: (bool(p.get("is_default")), p.get("created") or 0))
    for entry in reversed(ranked):
        payment = entry.get("payment") or {}
        found = ref(payment.get("payment_intent"))
        if found:
            return found
    return ref(invoice.get("payment_intent"))


def event_object_id(event: Obj) -> str | None:
    """The id of the object an event is about (``data.object.id``)."""
    data = event.get("data") or {}
    obj = data.get("object") or {}
    return ref(obj.get("id"))
