"""The Stripe mapping over Stripe's own example objects (``fixtures3.json``, the
fixtures Stripe publishes with its API description), so that it follows Stripe's real
shapes. Where an example leaves a field null, the test fills it with a value
Stripe documents, on the example's own keys (never a key the example lacks).

The fixtures are read from ``$RECOBRA_STRIPE_FIXTURES`` or from
``shared/data/stripe/fixtures3.json`` beside the repository.
"""

from __future__ import annotations

import copy
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from recobra.domain.declines import DeclineCategory, classify
from recobra.domain.model import Funding, Interval, InvoiceStatus, SubscriptionStatus
from recobra.domain.money import Money
from recobra.stripe import mapping
from recobra.stripe.config import Mode, StripeSettings
from recobra.stripe.gateway import invoice_of_key

FIXTURES_ENV = "RECOBRA_STRIPE_FIXTURES"


def _fixtures_path() -> Path:
    explicit = os.environ.get(FIXTURES_ENV)
    if explicit:
        return Path(explicit)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "stripe" / "fixtures3.json"


@pytest.fixture(scope="module")
def fixtures() -> dict[str, Any]:
    path = _fixtures_path()
    if not path.exists():
        pytest.fail(f"Stripe's example objects not found at {path}: set {FIXTURES_ENV}", pytrace=False)
    resources: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["resources"]
    return resources


def example(fixtures: dict[str, Any], resource: str, /, **changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(fixtures[resource])
    for key, value in changes.items():
        assert key in obj, f"the {resource} example has no {key!r}: the mapping must not invent fields"
        obj[key] = value
    return obj


# --------------------------------------------------------------------------- customers and cards


def test_a_customer(fixtures: dict[str, Any]) -> None:
    cus = example(
        fixtures,
        "customer",
        email="ana@example.com",
        name="Ana",
        preferred_locales=["es-419", "en"],
        metadata={"timezone": "America/Bogota"},
        address={**fixtures["customer"]["address"], "country": "co"},
    )
    customer = mapping.customer(cus)
    assert customer.id == "cus_QXg1o8vcGmoR32"
    assert (customer.email, customer.name, customer.locale) == ("ana@example.com", "Ana", "es")
    assert (customer.timezone, customer.country) == ("America/Bogota", "CO")
    assert customer.created_at == datetime.fromtimestamp(1234567890, UTC)


def test_a_customer_with_no_hints_gets_the_defaults_and_one_without_email_is_refused(
    fixtures: dict[str, Any],
) -> None:
    cus = example(fixtures, "customer", email="x@example.com", metadata={"timezone": "Mars/Olympus"})
    customer = mapping.customer(cus)
    assert (customer.locale, customer.timezone, customer.country) == ("en", "UTC", "US")
    with pytest.raises(mapping.MappingError, match="has no email"):
        mapping.customer(example(fixtures, "customer"))


def test_a_card_payment_method(fixtures: dict[str, Any]) -> None:
    pm = example(fixtures, "payment_method", customer="cus_QXg1o8vcGmoR32")
    method = mapping.payment_method(pm)
    assert method is not None
    assert method.id == method.gateway_token == "pm_1Pgc75B7WZ01zgkWlHVgdEGJ"
    assert (method.brand, method.last4, method.exp_month, method.exp_year) == ("visa", "4242", 8, 2030)
    assert method.funding is Funding.CREDIT
    assert method.customer_id == "cus_QXg1o8vcGmoR32"


def test_a_payment_method_with_no_customer_is_refused_and_a_legacy_card_is_read(
    fixtures: dict[str, Any],
) -> None:
    with pytest.raises(mapping.MappingError, match="belongs to no customer"):
        mapping.payment_method(example(fixtures, "payment_method"))
    card = mapping.payment_method(example(fixtures, "card", customer="cus_1"))
    assert card is not None
    assert (card.id, card.brand, card.last4, card.funding) == (
        "card_1PgaftB7WZ01zgkWm3waTcFp",
        "visa",
        "4242",
        Funding.CREDIT,
    )


def test_a_non_card_source_is_not_a_card(fixtures: dict[str, Any]) -> None:
    assert mapping.payment_method(example(fixtures, "source"), customer_id="cus_1") is None


def test_the_card_of_a_charge(fixtures: dict[str, Any]) -> None:
    method = mapping.payment_method_from_charge(example(fixtures, "charge"), "cus_1")
    assert method is not None
    assert (method.id, method.brand, method.last4, method.exp_year) == (
        "card_1PgaftB7WZ01zgkWm3waTcFp",
        "visa",
        "4242",
        2030,
    )


# --------------------------------------------------------------------------- declines


def test_the_example_charge_outcome_has_every_code_the_taxonomy_reads(fixtures: dict[str, Any]) -> None:
    outcome = fixtures["charge"]["outcome"]
    assert {"advice_code", "network_advice_code", "network_decline_code", "reason", "type"} <= set(outcome)


def test_decline_codes_of_a_failed_charge(fixtures: dict[str, Any]) -> None:
    outcome = {
        **fixtures["charge"]["outcome"],
        "type": "issuer_declined",
        "reason": "insufficient_funds",
        "network_decline_code": "51",
        "network_advice_code": "24",
        "advice_code": "try_again_later",
        "seller_message": "The bank returned the decline code `insufficient_funds`.",
    }
    charge = example(
        fixtures,
        "charge",
        status="failed",
        paid=False,
        failure_code="card_declined",
        failure_message="Your card has insufficient funds.",
        outcome=outcome,
    )
    codes = mapping.decline_codes(charge=charge)
    assert codes == mapping.DeclineCodes(
        "insufficient_funds", "51", "24", "Your card has insufficient funds.", "ch_1PgafuB7WZ01zgkWXYmPNZs8"
    )
    decline = classify(codes.code, network_code=codes.network_code, advice_code=codes.advice_code)
    assert decline.category is DeclineCategory.INSUFFICIENT_FUNDS


def test_the_payment_intent_s_error_wins_over_the_charge(fixtures: dict[str, Any]) -> None:
    error = {
        **fixtures["payment_intent"]["last_payment_error"],
        "type": "card_error",
        "code": "card_declined",
        "decline_code": "stolen_card",
        "network_decline_code": "43",
        "advice_code": "do_not_try_again",
        "charge": "ch_1",
        "message": "Your card was declined.",
    }
    charge = example(fixtures, "charge", failure_code="card_declined")
    codes = mapping.decline_codes(error=error, charge=charge)
    assert (codes.code, codes.network_code, codes.advice_code, codes.charge_id) == (
        "stolen_card",
        "43",
        "do_not_try_again",
        "ch_1",
    )
    assert classify(codes.code, network_code=codes.network_code).category is DeclineCategory.HARD


def test_authentication_required_is_its_own_category(fixtures: dict[str, Any]) -> None:
    error = {
        **fixtures["payment_intent"]["last_payment_error"],
        "type": "card_error",
        "code": "authentication_required",
        "decline_code": "authentication_required",
    }
    codes = mapping.decline_codes(error=error)
    assert codes.authentication_required
    assert classify(codes.code).category is DeclineCategory.AUTHENTICATION_REQUIRED
    assert not classify(codes.code).retryable


def test_a_card_error_without_a_decline_code_keeps_the_error_code(fixtures: dict[str, Any]) -> None:
    error = {**fixtures["payment_intent"]["last_payment_error"], "type": "card_error", "code": "expired_card"}
    assert mapping.decline_codes(error=error).code == "expired_card"
    assert classify("expired_card").category is DeclineCategory.HARD


# --------------------------------------------------------------------------- subscriptions and invoices


def test_a_subscription(fixtures: dict[str, Any]) -> None:
    sub = example(fixtures, "subscription", cancel_at_period_end=False, pause_collection=None)
    subscription = mapping.subscription(sub)
    assert subscription.id == "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw"
    assert subscription.customer_id == "cus_QXg1o8vcGmoR32"
    assert subscription.status is SubscriptionStatus.ACTIVE
    assert subscription.plan.id == "price_1PgafmB7WZ01zgkW6dKueIc5"
    assert subscription.plan.name == "prod_QXg1hqf4jFNsqG"
    assert subscription.plan.interval is Interval.MONTH
    assert subscription.plan.price == Money(2000, "USD")
    assert subscription.started_at == datetime.fromtimestamp(1234567890, UTC)
    # Since the basil API version the period end lives on the item.
    period_end = fixtures["subscription"]["items"]["data"][0]["current_period_end"]
    assert subscription.renews_at == datetime.fromtimestamp(period_end, UTC)


def test_a_paused_or_ending_subscription(fixtures: dict[str, Any]) -> None:
    sub = mapping.subscription(example(fixtures, "subscription"))
    assert sub.status is SubscriptionStatus.PAUSED  # pause_collection is set in the example
    assert sub.renews_at is None  # cancel_at_period_end: it will not renew
    statuses = [
        ("past_due", SubscriptionStatus.PAST_DUE),
        ("unpaid", SubscriptionStatus.UNPAID),
        ("canceled", SubscriptionStatus.CANCELED),
        ("trialing", SubscriptionStatus.ACTIVE),
        ("incomplete", SubscriptionStatus.PAST_DUE),
    ]
    for stripe_status, ours in statuses:
        changed = example(fixtures, "subscription", status=stripe_status, pause_collection=None)
        assert mapping.subscription_status(changed) is ours


def test_an_invoice(fixtures: dict[str, Any]) -> None:
    inv = example(fixtures, "invoice", status="open")
    invoice = mapping.invoice(inv)
    assert invoice.id == "in_1Pgc6tB7WZ01zgkWu9fdqL6I"
    assert invoice.customer_id == "cus_QXg1o8vcGmoR32"
    assert invoice.amount == Money(1000, "USD")
    assert invoice.status is InvoiceStatus.OPEN
    # The example's subscription is in parent.subscription_details (basil on).
    assert invoice.subscription_id == fixtures["invoice"]["parent"]["subscription_details"]["subscription"]


def test_an_invoice_in_the_legacy_shape_and_one_with_nothing_owed(fixtures: dict[str, Any]) -> None:
    legacy = example(fixtures, "invoice", parent=None, subscription="sub_old")
    assert mapping.invoice_subscription_id(legacy) == "sub_old"
    with pytest.raises(mapping.MappingError, match="nothing is owed"):
        mapping.invoice(example(fixtures, "invoice", amount_remaining=0))


def test_the_payment_intent_of_an_invoice(fixtures: dict[str, Any]) -> None:
    payment = copy.deepcopy(fixtures["invoice_payment"])
    payment["payment"] = {"type": "payment_intent", "payment_intent": "pi_new"}
    assert mapping.invoice_payment_intent_id({"payments": {"data": [payment]}}) == "pi_new"
    assert mapping.invoice_payment_intent_id({"payment_intent": {"id": "pi_legacy"}}) == "pi_legacy"
    assert mapping.invoice_payment_intent_id(example(fixtures, "invoice")) is None


def test_an_event_names_its_object(fixtures: dict[str, Any]) -> None:
    event = fixtures["event"]
    assert mapping.event_object_id(event) == event["data"]["object"]["id"]
    assert mapping.timestamp(event["created"], "event.created") == datetime.fromtimestamp(1234567890, UTC)
    with pytest.raises(mapping.MappingError, match="Unix seconds"):
        mapping.timestamp("2024-01-01", "event.created")


def test_a_setup_intent_is_read_for_its_card(fixtures: dict[str, Any]) -> None:
    intent = fixtures["setup_intent"]
    assert mapping.ref(intent["payment_method"]) is None
    assert mapping.ref({"id": "pm_1"}) == "pm_1"


# --------------------------------------------------------------------------- settings


def test_settings_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="secret_key: required"):
        StripeSettings.from_mapping({})
    with pytest.raises(ValueError, match="secret_key: must be a secret"):
        StripeSettings.from_mapping({"secret_key": "pk_test_x"})
    with pytest.raises(ValueError, match="mode: must be one of billing, payment_intents"):
        StripeSettings.from_mapping({"secret_key": "sk_test_x", "mode": "magic"})
    with pytest.raises(ValueError, match="webhook_secret: must start with whsec_"):
        StripeSettings.from_mapping({"secret_key": "sk_test_x", "webhook_secret": "abc"})
    with pytest.raises(ValueError, match="max_network_retries: must be an integer"):
        StripeSettings.from_mapping({"secret_key": "sk_test_x", "max_network_retries": "many"})
    with pytest.raises(ValueError, match="colour: unknown Stripe setting"):
        StripeSettings.from_mapping({"secret_key": "sk_test_x", "colour": "blue"})
    settings = StripeSettings.from_mapping({"secret_key": "sk_test_x", "mode": "payment_intents"})
    assert settings.mode is Mode.PAYMENT_INTENTS
    assert settings.max_network_retries == 2


def test_attempt_keys_name_their_invoice() -> None:
    assert invoice_of_key("recobra:case_in_123:4") == "in_123"
    assert invoice_of_key("billing:evt_1") is None
    assert invoice_of_key("recobra:other:1") is None
