"""Stripe's Payment Element on the hosted update-payment page.

The page asks Stripe for a SetupIntent for the case's customer (one per link and
attempt, through an idempotency key, so a reload shows the same one) and renders
Stripe's element with its client secret; card data goes from the customer's browser
to Stripe, never to Recobra. Stripe sends the browser back to
``/p/update_payment/{token}/stripe?setup_intent=seti_...``; there the SetupIntent is
read from Stripe with the secret key (the query string is never trusted), checked
against the case, its card becomes the default, and the engine retries at once.

A customer's card-only page (an expiring-card or renewal reminder: no case, nothing
owed) gets a SetupIntent for that customer alone (``CardOnly``); coming back, its card
becomes the default the same way, and the engine retries any open case of the customer.

When the last decline asked for authentication (3-D Secure / SCA) and the invoice's
PaymentIntent is waiting for it, the page instead lets the customer authenticate
that very payment (``stripe.handleNextAction``); the browser comes back with
``payment_intent=pi_...``, checked the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import stripe

from recobra.domain.case import DunningCase
from recobra.domain.declines import DeclineCategory
from recobra.engine.commands import Command, PaymentSucceeded
from recobra.stripe import mapping
from recobra.stripe.config import Mode
from recobra.stripe.gateway import StripeGateway
from recobra.stripe.inbox import SETUP_CUSTOMER_METADATA, SETUP_METADATA, EventProcessor, Skip, as_dict

SCRIPT_URL = "https://js.stripe.com/v3/"
"""Stripe.js must be loaded from Stripe (https://docs.stripe.com/js/including)."""


def content_security_policy(nonce: str) -> str:
    """What the page with Stripe's element may load (https://docs.stripe.com/security/guide#content-security-policy)."""
    return (
        "default-src 'none'; style-src 'unsafe-inline'; "
        f"script-src 'nonce-{nonce}' https://js.stripe.com; "
        "frame-src https://js.stripe.com https://hooks.stripe.com; "
        "connect-src https://api.stripe.com; img-src https://*.stripe.com; "
        "form-action 'self'; frame-ancestors 'none'"
    )


class ElementUnavailable(Exception):
    """Stripe could not be reached to prepare the element; the page says so."""


@dataclass(frozen=True, slots=True)
class Element:
    """What the template needs to show Stripe's element."""

    publishable_key: str
    client_secret: str
    intent: str
    """``setup`` (a new card) or ``authenticate`` (3-D Secure of the pending payment)."""
    return_url: str
    script_url: str = SCRIPT_URL


@dataclass(frozen=True, slots=True)
class CardOnly:
    """A customer's card-only page: no case, only the card on file to replace."""

    customer_id: str
    card_on_file: str | None
    """The default payment method's id: once a new card is saved, a fresh SetupIntent."""


def element(gateway: StripeGateway, page: DunningCase | CardOnly, *, nonce: str, return_url: str) -> Element:
    """The SetupIntent (or the payment to authenticate) for this case's page, or the
    SetupIntent for a customer's card-only page."""
    key = gateway.settings.publishable_key
    if not key:
        raise ElementUnavailable("publishable_key is not configured")
    client = gateway.client
    try:
        if isinstance(page, CardOnly):
            customer_id = page.customer_id
            metadata = {SETUP_CUSTOMER_METADATA: page.customer_id}
            # One per link and card on file: a reload shows the same one, and once a
            # card is saved (then declined by an open case) the next try gets a fresh one.
            idempotency_key = f"recobra:setup:{nonce}:card:{page.card_on_file or ''}"
        else:
            case = page
            if case.last_decline.category is DeclineCategory.AUTHENTICATION_REQUIRED:
                secret = _payment_to_authenticate(gateway, case)
                if secret:
                    return Element(key, secret, "authenticate", return_url)
            customer_id = case.customer_id
            metadata = {SETUP_METADATA: case.id}
            if case.subscription_id:
                metadata["recobra_subscription"] = case.subscription_id
            # One per link and attempt: a reload shows the same one, and after a card
            # that was saved then declined the next try gets a fresh SetupIntent.
            idempotency_key = f"recobra:setup:{nonce}:{case.attempts}"
        intent = client.v1.setup_intents.create(
            {"customer": customer_id, "usage": "off_session", "metadata": metadata},
            {"idempotency_key": idempotency_key},
        )
    except stripe.StripeError as exc:
        raise ElementUnavailable(str(exc.user_message or exc)) from exc
    return Element(key, str(intent.client_secret), "setup", return_url)


def _payment_to_authenticate(gateway: StripeGateway, case: DunningCase) -> str | None:
    if gateway.settings.mode is not Mode.BILLING:
        return None
    invoice = as_dict(gateway.client.v1.invoices.retrieve(case.invoice_id))
    pi_id = mapping.invoice_payment_intent_id(invoice)
    if not pi_id:
        return None
    pi = gateway.client.v1.payment_intents.retrieve(pi_id)
    return str(pi.client_secret) if pi.status == "requires_action" else None


@dataclass(frozen=True, slots=True)
class Returned:
    """What the browser came back with, as checked with Stripe."""

    command: Command | None
    """The engine command to apply (None: nothing to do yet)."""
    state: str
    """``succeeded``, ``processing`` or ``failed``."""


def _made_for(intent: dict[str, Any], page: DunningCase | CardOnly) -> bool:
    """Whether a SetupIntent was made by this page: its metadata names the case (or,
    on a card-only page, the customer) and it belongs to that customer."""
    metadata = intent.get("metadata") or {}
    if isinstance(page, CardOnly):
        owner, customer_id = metadata.get(SETUP_CUSTOMER_METADATA) == page.customer_id, page.customer_id
    else:
        owner, customer_id = metadata.get(SETUP_METADATA) == page.id, page.customer_id
    return owner and mapping.ref(intent.get("customer")) == customer_id


def returned(
    gateway: StripeGateway,
    engine: Any,
    page: DunningCase | CardOnly,
    params: dict[str, str],
    now: datetime,
) -> Returned:
    """Read the SetupIntent or PaymentIntent named in the return address from Stripe
    and check that it belongs to this case (or, on a card-only page, to this customer;
    there only a SetupIntent is expected). ``LookupError`` when it does not;
    ``ElementUnavailable`` when Stripe cannot be reached."""
    client = gateway.client
    try:
        if params.get("setup_intent"):
            intent = as_dict(client.v1.setup_intents.retrieve(params["setup_intent"]))
            if not _made_for(intent, page):
                raise LookupError("the SetupIntent was not made for this page")
            if intent.get("status") == "processing":
                return Returned(None, "processing")
            if intent.get("status") != "succeeded":
                return Returned(None, "failed")
            processor = EventProcessor(engine, gateway.settings, client)
            try:
                return Returned(processor.new_default_card(intent, now), "succeeded")
            except Skip:
                return Returned(None, "failed")
        if params.get("payment_intent") and isinstance(page, DunningCase):
            case = page
            pi = as_dict(client.v1.payment_intents.retrieve(params["payment_intent"]))
            invoice = as_dict(client.v1.invoices.retrieve(case.invoice_id))
            if pi.get("id") != mapping.invoice_payment_intent_id(invoice):
                raise LookupError("the PaymentIntent is not this case's")
            if pi.get("status") == "processing":
                return Returned(None, "processing")
            if pi.get("status") != "succeeded":
                return Returned(None, "failed")
            command = PaymentSucceeded(
                f"stripe:payment_intent:{pi['id']}", now, case.invoice_id, gateway_reference=str(pi["id"])
            )
            return Returned(command, "succeeded")
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            raise LookupError(str(exc.user_message or exc)) from exc
        raise ElementUnavailable(str(exc.user_message or exc)) from exc
    except stripe.StripeError as exc:
        raise ElementUnavailable(str(exc.user_message or exc)) from exc
    raise LookupError("no setup_intent or payment_intent in the address")
