"""The Stripe gateway: Recobra's ``PaymentGateway`` on one Stripe account.

Two modes (``mode`` setting, see docs/stripe.md):

* ``billing``: Stripe Billing makes the invoices. A retry is ``invoices.pay`` on the
  Stripe invoice, sent with the attempt's idempotency key. Before paying, the
  invoice's metadata gets ``recobra_attempt`` = the key, so that the attempt can be
  found again by the invoice's latest charge after a crash.
* ``payment_intents``: the operator bills; a retry is an off-session PaymentIntent
  on the saved payment method, confirmed at once, with the key as Stripe's
  idempotency key and in the PaymentIntent's metadata (``recobra_idempotency_key``).

Every SDK exception is caught here and becomes a ``ChargeResult`` or a
``GatewayError``; nothing from the SDK crosses the port.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import stripe

from recobra.ports import ChargeRequest, ChargeResult, ChargeStatus, GatewayError
from recobra.stripe import mapping
from recobra.stripe.config import Mode, StripeSettings

log = logging.getLogger(__name__)

ATTEMPT_METADATA = "recobra_attempt"
KEY_METADATA = "recobra_idempotency_key"

# Errors that say nothing about the card: the same request may work later.
_TRANSIENT = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError, stripe.IdempotencyError)


def invoice_of_key(idempotency_key: str) -> str | None:
    """The invoice a Recobra attempt key is about: keys are ``recobra:<case>:<n>`` and a
    case is named after its invoice (``case_<invoice id>``). None for any other key."""
    parts = idempotency_key.split(":")
    if len(parts) != 3 or parts[0] != "recobra" or not parts[1].startswith("case_"):
        return None
    return parts[1].removeprefix("case_") or None


def _dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict()
    return dict(obj)


def _error_body(exc: stripe.StripeError) -> dict[str, Any]:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error")
    return error if isinstance(error, dict) else {}


class StripeGateway:
    """``PaymentGateway`` for Stripe. Build it with :func:`from_settings`."""

    name = "stripe"

    def __init__(self, settings: StripeSettings, client: stripe.StripeClient | None = None) -> None:
        self.settings = settings
        self.client = client or settings.client()

    # ------------------------------------------------------------------ charges

    def charge(self, request: ChargeRequest) -> ChargeResult:
        key = request.idempotency_key
        try:
            if self.settings.mode is Mode.BILLING:
                return self._pay_invoice(request)
            return self._payment_intent(request)
        except stripe.CardError as exc:
            return self._declined_from_error(key, exc)
        except _TRANSIENT as exc:
            log.warning("stripe charge: no answer", extra={"key": key, "error": type(exc).__name__})
            return ChargeResult(ChargeStatus.ERROR, key, message=f"{type(exc).__name__}: {exc.user_message}")
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            # The account's keys are wrong: nothing was charged, and an operator must act.
            log.error("stripe charge refused: %s", exc.user_message, extra={"key": key})
            return ChargeResult(ChargeStatus.ERROR, key, message=f"{type(exc).__name__}: {exc.user_message}")
        except stripe.StripeError as exc:
            # Stripe refused the request itself (an unknown invoice, a detached card):
            # recorded as a decline with Stripe's error code, never retried blindly.
            error = _error_body(exc)
            return ChargeResult(
                ChargeStatus.DECLINED,
                key,
                decline_code=str(error.get("code") or exc.code or "invalid_request"),
                message=str(exc.user_message or exc),
            )

    def _pay_invoice(self, request: ChargeRequest) -> ChargeResult:
        key = request.idempotency_key
        invoices = self.client.v1.invoices
        invoice = _dict(invoices.retrieve(request.invoice_id))
        status = invoice.get("status")
        ours = (invoice.get("metadata") or {}).get(ATTEMPT_METADATA) == key
        if status == "paid":
            reference = self._invoice_outcome(invoice, key).gateway_reference if ours else None
            return ChargeResult(
                ChargeStatus.SUCCEEDED,
                key,
                gateway_reference=reference,
                message="" if ours else "the invoice was already paid",
            )
        if status != "open":
            return ChargeResult(
                ChargeStatus.DECLINED,
                key,
                decline_code=f"invoice_{status}",
                message=f"the invoice is {status}: nothing to collect",
            )
        if ours:
            # Sent before with this key and the answer was lost: read it, never pay twice.
            earlier = self._invoice_outcome(invoice, key)
            if earlier.status is not ChargeStatus.NOT_FOUND:
                return earlier
        invoices.update(
            request.invoice_id,
            {"metadata": {ATTEMPT_METADATA: key}},
            {"idempotency_key": f"{key}:mark"},
        )
        params: dict[str, Any] = {}
        token = request.payment_method.gateway_token
        if token != self._collection_method(invoice):
            # Legacy cards and sources (card_..., src_...) are paid with as a source.
            params["source" if token.startswith(("card_", "src_")) else "payment_method"] = token
        try:
            paid = _dict(invoices.pay(request.invoice_id, params or None, {"idempotency_key": key}))  # type: ignore[arg-type]
        except stripe.CardError as exc:
            after = _dict(invoices.retrieve(request.invoice_id))
            outcome = self._invoice_outcome(after, key)
            return outcome if outcome.status is ChargeStatus.DECLINED else self._declined_from_error(key, exc)
        except stripe.InvalidRequestError as exc:
            if exc.code != "invoice_payment_intent_requires_action":
                raise
            return ChargeResult(
                ChargeStatus.DECLINED,
                key,
                decline_code="authentication_required",
                message="the customer must authenticate this payment (3-D Secure)",
            )
        return self._invoice_outcome(paid, key)

    def _collection_method(self, invoice: Mapping[str, Any]) -> str | None:
        """The payment method Stripe charges the invoice with when given none."""
        direct = mapping.ref(invoice.get("default_payment_method")) or mapping.ref(
            invoice.get("default_source")
        )
        if direct:
            return direct
        sub_id = mapping.invoice_subscription_id(invoice)
        if sub_id:
            sub = _dict(self.client.v1.subscriptions.retrieve(sub_id))
            found = mapping.ref(sub.get("default_payment_method")) or mapping.ref(sub.get("default_source"))
            if found:
                return found
        customer_id = mapping.ref(invoice.get("customer"))
        if not customer_id:
            return None
        cus = _dict(self.client.v1.customers.retrieve(customer_id))
        settings = cus.get("invoice_settings") or {}
        return mapping.ref(settings.get("default_payment_method")) or mapping.ref(cus.get("default_source"))

    def _invoice_payment_intent(self, invoice: Mapping[str, Any]) -> str | None:
        found = mapping.invoice_payment_intent_id(invoice)
        if found or "payment_intent" in invoice:
            return found
        # Since API 2025-03-31.basil an invoice's payments are listed apart.
        listed = self.client.v1.invoice_payments.list({"invoice": str(invoice["id"])})
        return mapping.invoice_payment_intent_id({"payments": _dict(listed)})

    def _invoice_outcome(self, invoice: Mapping[str, Any], key: str) -> ChargeResult:
        """What the invoice's latest payment says."""
        pi_id = self._invoice_payment_intent(invoice)
        if invoice.get("status") == "paid":
            reference = None
            if pi_id:
                pi = _dict(self.client.v1.payment_intents.retrieve(pi_id))
                reference = mapping.ref(pi.get("latest_charge")) or pi_id
            return ChargeResult(ChargeStatus.SUCCEEDED, key, gateway_reference=reference)
        if not pi_id:
            return ChargeResult(ChargeStatus.NOT_FOUND, key)
        return self._intent_outcome(pi_id, key)

    def _intent_outcome(self, pi_id: str, key: str) -> ChargeResult:
        pi = _dict(self.client.v1.payment_intents.retrieve(pi_id, {"expand": ["latest_charge"]}))
        return self._outcome_of(pi, key)

    def _outcome_of(self, pi: Mapping[str, Any], key: str) -> ChargeResult:
        charge = pi.get("latest_charge") if isinstance(pi.get("latest_charge"), Mapping) else None
        reference = mapping.ref(pi.get("latest_charge")) or mapping.ref(pi.get("id"))
        status = pi.get("status")
        if status in ("succeeded", "requires_capture"):
            return ChargeResult(ChargeStatus.SUCCEEDED, key, gateway_reference=reference)
        if status == "processing":
            return ChargeResult(ChargeStatus.ERROR, key, reference, message="the payment is still processing")
        if status == "requires_action":
            return ChargeResult(
                ChargeStatus.DECLINED,
                key,
                reference,
                decline_code="authentication_required",
                message="the customer must authenticate this payment (3-D Secure)",
            )
        codes = mapping.decline_codes(error=pi.get("last_payment_error"), charge=charge)
        return ChargeResult(
            ChargeStatus.DECLINED,
            key,
            codes.charge_id or reference,
            codes.code,
            codes.network_code,
            codes.advice_code,
            codes.message,
        )

    def _payment_intent(self, request: ChargeRequest) -> ChargeResult:
        key = request.idempotency_key
        pi = self.client.v1.payment_intents.create(
            {
                "amount": request.amount.amount_minor,
                "currency": request.amount.currency.lower(),
                "customer": request.customer_id,
                "payment_method": request.payment_method.gateway_token,
                "off_session": True,
                "confirm": True,
                "metadata": {KEY_METADATA: key, "recobra_invoice": request.invoice_id},
            },
            {"idempotency_key": key},
        )
        return self._intent_outcome(str(pi.id), key)

    def _declined_from_error(self, key: str, exc: stripe.StripeError) -> ChargeResult:
        error = _error_body(exc)
        charge: dict[str, Any] | None = None
        charge_id = mapping.ref(error.get("charge"))
        if charge_id:
            try:
                charge = _dict(self.client.v1.charges.retrieve(charge_id))
            except stripe.StripeError:
                charge = None  # the error's own codes are enough to classify
        pi = error.get("payment_intent") or {}
        if isinstance(pi, Mapping) and pi.get("status") == "requires_action":
            error = {**error, "decline_code": error.get("decline_code") or "authentication_required"}
        codes = mapping.decline_codes(error=error, charge=charge)
        return ChargeResult(
            ChargeStatus.DECLINED,
            key,
            codes.charge_id,
            codes.code or exc.code,
            codes.network_code,
            codes.advice_code,
            codes.message or str(exc.user_message or ""),
        )

    # ------------------------------------------------------------------ lookups

    def attempt_status(self, idempotency_key: str) -> ChargeResult:
        key = idempotency_key
        try:
            if self.settings.mode is Mode.BILLING:
                invoice_id = invoice_of_key(key)
                if invoice_id is None:
                    return ChargeResult(ChargeStatus.NOT_FOUND, key, message="not a Recobra attempt key")
                invoice = _dict(self.client.v1.invoices.retrieve(invoice_id))
                if (invoice.get("metadata") or {}).get(ATTEMPT_METADATA) != key:
                    # The key never reached Stripe (or a later attempt replaced it; that one
                    # was only sent after this one was settled).
                    return ChargeResult(ChargeStatus.NOT_FOUND, key)
                return self._invoice_outcome(invoice, key)
            # Search is eventually consistent (about a minute); a key it misses is sent
            # again with the same Idempotency-Key, which Stripe answers from its record.
            found = self.client.v1.payment_intents.search(
                {"query": f"metadata['{KEY_METADATA}']:'{key}'", "limit": 10}
            )
            intents = sorted((_dict(p) for p in found.data), key=lambda p: p.get("created") or 0)
            if not intents:
                return ChargeResult(ChargeStatus.NOT_FOUND, key)
            return self._intent_outcome(str(intents[-1]["id"]), key)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return ChargeResult(ChargeStatus.NOT_FOUND, key, message=str(exc.user_message or ""))
            return ChargeResult(ChargeStatus.ERROR, key, message=str(exc.user_message or exc))
        except stripe.StripeError as exc:
            return ChargeResult(ChargeStatus.ERROR, key, message=f"{type(exc).__name__}: {exc.user_message}")

    # ------------------------------------------------------------------ final actions

    def cancel_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        """Cancel at once (no proration, no final invoice)."""
        with _translated("cancel the subscription"):
            sub = _dict(self.client.v1.subscriptions.retrieve(subscription_id))
            if sub.get("status") in ("canceled", "incomplete_expired"):
                return
            self.client.v1.subscriptions.cancel(subscription_id, options={"idempotency_key": idempotency_key})

    def pause_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        """Pause collection: the subscription stays, its invoices are voided while paused."""
        with _translated("pause the subscription"):
            sub = _dict(self.client.v1.subscriptions.retrieve(subscription_id))
            if sub.get("pause_collection"):
                return
            self.client.v1.subscriptions.update(
                subscription_id,
                {"pause_collection": {"behavior": "void"}},
                {"idempotency_key": idempotency_key},
            )

    def mark_unpaid(self, invoice_id: str, *, at: datetime, idempotency_key: str) -> None:
        """Mark the invoice uncollectible."""
        with _translated("mark the invoice uncollectible"):
            invoice = _dict(self.client.v1.invoices.retrieve(invoice_id))
            if invoice.get("status") in ("uncollectible", "paid", "void"):
                return
            self.client.v1.invoices.mark_uncollectible(
                invoice_id, options={"idempotency_key": idempotency_key}
            )


class _translated:
    """Turns SDK exceptions into ``GatewayError`` (transient when retrying may help)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if exc is None or not isinstance(exc, stripe.StripeError):
            return
        transient = isinstance(exc, _TRANSIENT)
        raise GatewayError(
            f"Stripe could not {self.what}: {exc.user_message or exc}",
            code=exc.code or type(exc).__name__,
            transient=transient,
        ) from exc


def from_settings(settings: Mapping[str, str]) -> StripeGateway:
    """The ``stripe`` gateway's factory (entry point ``recobra.gateways``)."""
    return StripeGateway(StripeSettings.from_mapping(settings))
