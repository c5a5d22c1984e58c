"""Stripe end to end: the official SDK talking HTTP to a local stateful Stripe fake
(localstripe, a separate process), the real engine and store, and the webhook route
through the application. Webhook bodies are signed with the SDK's signing scheme.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import stripe
import stripe_support
from conftest import TEST_POLICY, Db, EngineFactory
from fastapi.testclient import TestClient
from stripe_support import (
    CARD_DECLINED_ON_CHARGE,
    CARD_NEEDS_AUTHENTICATION,
    CARD_OK,
    WEBHOOK_SECRET,
    Account,
    settings_for,
    signed,
)

from recobra.domain.model import Funding
from recobra.domain.money import Money
from recobra.messages.links import LinkSigner
from recobra.ports import CardRef, ChargeRequest, ChargeStatus, GatewayError
from recobra.settings import Settings
from recobra.store.sql import SqlStore
from recobra.stripe.config import StripeSettings
from recobra.stripe.gateway import StripeGateway
from recobra.stripe.inbox import process_pending
from recobra.web.app import create_app
from recobra.web.services import Services

# The fake Stripe's fixtures, by name (pytest finds fixtures in the test module).
localstripe_url = stripe_support.localstripe_url
stripe_client = stripe_support.stripe_client
account = stripe_support.account

LINK_SECRET = "s" * 40
PUBLIC = "https://pay.example.com"


@dataclass
class StripeApp:
    client: TestClient
    services: Services
    account: Account
    gateway: StripeGateway
    db: Db

    def send(self, event: dict[str, Any], **kwargs: Any) -> Any:
        body, headers = signed(event, **kwargs)
        return self.client.post("/webhooks/stripe", content=body, headers=headers)

    def event(
        self, kind: str, obj: dict[str, Any], *, created: int | None = None, eid: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": eid or f"evt_{kind.replace('.', '_')}_{obj['id']}_{created or ''}",
            "object": "event",
            "type": kind,
            "created": created or int(time.time()),
            "livemode": False,
            "api_version": "2026-10-28.endive",
            "data": {"object": obj},
        }

    def inbox(self) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in self.db.rows("stripe_events")}


@pytest.fixture
def app(
    store: SqlStore,
    engine_factory: EngineFactory,
    db: Db,
    database_url: str,
    localstripe_url: str,
    account: Account,
) -> Iterator[StripeApp]:
    gateway = StripeGateway(StripeSettings.from_mapping(settings_for(localstripe_url)))
    engine = engine_factory(gateway=gateway)
    settings = Settings(
        database_url=database_url,
        link_secret=LINK_SECRET,
        public_url=PUBLIC,
        gateway="stripe",
        gateway_settings=settings_for(localstripe_url),
    )
    services = Services(settings=settings, store=store, engine=engine, links=LinkSigner(LINK_SECRET, PUBLIC))
    with TestClient(create_app(services), base_url=PUBLIC) as client:
        yield StripeApp(client, services, account, gateway, db)


def failing_subscription(acct: Account, card: str = CARD_DECLINED_ON_CHARGE) -> tuple[str, dict[str, Any]]:
    """A customer whose subscription's first invoice was declined at the fake."""
    customer = acct.customer()
    acct.card(customer, card)
    sub = acct.subscription(customer, acct.price())
    invoice = acct.client.v1.invoices.retrieve(sub["latest_invoice"]).to_dict()
    assert invoice["status"] == "open"
    return customer, invoice


# --------------------------------------------------------------------------- the journey


def test_a_declining_card_opens_a_case_and_a_new_card_recovers_it(app: StripeApp) -> None:
    customer, invoice = failing_subscription(app.account)

    answer = app.send(app.event("invoice.payment_failed", invoice, created=invoice["created"]))

    assert answer.status_code == 200
    assert answer.json() == {"received": True, "stored": True, "duplicate": False}
    case = app.db.case(f"case_{invoice['id']}")
    assert case["status"] == "open"
    assert case["last_code"] == "card_declined"
    assert case["customer_id"] == customer
    assert case["amount_minor"] == 4900
    row = app.db.rows("customers", id=customer)[0]
    assert (row["email"], row["locale"], row["timezone"]) == ("ana@example.com", "es", "America/Bogota")
    assert app.db.subscription(invoice["subscription"])["status"] == "past_due"
    assert app.inbox()[f"evt_invoice_payment_failed_{invoice['id']}_{invoice['created']}"]["status"] == "done"

    # The customer saves a new card on the hosted page (a SetupIntent confirmed by
    # Stripe's element; here confirmed with the SDK, as Stripe.js would).
    new_card = app.account.card(customer, CARD_OK, default=False)
    intent = app.account.client.v1.setup_intents.create(
        {
            "customer": customer,
            "metadata": {"recobra_case": case["id"], "recobra_subscription": invoice["subscription"]},
        }
    )
    confirmed = app.account.client.v1.setup_intents.confirm(intent.id, {"payment_method": new_card}).to_dict()
    assert confirmed["status"] == "succeeded"

    answer = app.send(app.event("setup_intent.succeeded", confirmed))

    assert answer.status_code == 200
    case = app.db.case(case["id"])
    assert case["status"] == "recovered"
    assert case["payment_method_id"] == new_card
    assert app.account.client.v1.invoices.retrieve(invoice["id"]).status == "paid"
    cus = app.account.client.v1.customers.retrieve(customer)
    assert cus.invoice_settings.default_payment_method == new_card
    attempts = app.db.attempts(case["id"])
    assert [(a["trigger"], a["status"]) for a in attempts] == [
        ("billing", "failed"),
        ("payment_method", "succeeded"),
    ]
    app.db.check_case(case["id"])


def test_a_card_updater_event_retries_at_once(app: StripeApp) -> None:
    customer, invoice = failing_subscription(app.account)
    app.send(app.event("invoice.payment_failed", invoice, created=invoice["created"]))
    # The network's card updater gave the customer's bank a working card: Stripe
    # reports the same payment method with new details. (The fake has no card
    # updater; the card it charges next is made to succeed by a new default.)
    working = app.account.card(customer, CARD_OK)
    pm = app.account.client.v1.payment_methods.retrieve(working).to_dict()

    app.send(app.event("payment_method.automatically_updated", pm))

    assert app.db.case(f"case_{invoice['id']}")["status"] == "recovered"


def test_the_same_attempt_sent_twice_charges_once(app: StripeApp) -> None:
    customer, invoice = failing_subscription(app.account)
    good = app.account.card(customer, CARD_OK)
    request = charge_request(invoice, customer, good, key=f"recobra:case_{invoice['id']}:1")

    first = app.gateway.charge(request)
    second = app.gateway.charge(request)

    assert first.status is ChargeStatus.SUCCEEDED
    assert second == first
    paid = app.account.client.v1.invoices.retrieve(invoice["id"])
    assert paid.status == "paid"
    assert paid.metadata["recobra_attempt"] == request.idempotency_key
    assert app.gateway.attempt_status(request.idempotency_key) == first
    assert app.gateway.attempt_status(f"recobra:case_{invoice['id']}:2").status is ChargeStatus.NOT_FOUND


def test_a_declined_retry_sent_twice_is_one_decline(app: StripeApp) -> None:
    customer, invoice = failing_subscription(app.account)
    token = app.account.client.v1.customers.retrieve(customer).invoice_settings.default_payment_method
    request = charge_request(invoice, customer, token, key=f"recobra:case_{invoice['id']}:1")

    first = app.gateway.charge(request)
    intent = app.account.client.v1.invoices.retrieve(invoice["id"]).payment_intent
    second = app.gateway.charge(request)

    assert first.status is ChargeStatus.DECLINED
    assert first.decline_code == "card_declined"
    assert second == first
    assert app.account.client.v1.invoices.retrieve(invoice["id"]).payment_intent == intent


def charge_request(invoice: dict[str, Any], customer: str, token: str, *, key: str) -> ChargeRequest:
    return ChargeRequest(
        idempotency_key=key,
        invoice_id=invoice["id"],
        customer_id=customer,
        subscription_id=invoice.get("subscription"),
        amount=Money(invoice["amount_due"], invoice["currency"]),
        payment_method=CardRef(token, token, "visa", "4242", 12, 2034, Funding.CREDIT),
        attempt_number=1,
        attempted_at=datetime.now(UTC),
        customer_country="CO",
        customer_timezone="America/Bogota",
    )


def test_the_final_action_cancels_the_subscription(app: StripeApp) -> None:
    _customer, invoice = failing_subscription(app.account)
    app.send(app.event("invoice.payment_failed", invoice, created=invoice["created"]))
    case_id = f"case_{invoice['id']}"

    # The test policy: three declined retries, then cancel after the window and grace.
    start = app.db.case(case_id)["opened_at"]
    for days in (1, 3, 6, 13):
        app.services.engine.tick(start + timedelta(days=days, minutes=1))

    case = app.db.case(case_id)
    assert case["status"] == "final_action_done"
    assert case["final_action"] == "cancel"
    assert app.account.client.v1.subscriptions.retrieve(invoice["subscription"]).status == "canceled"
    declines = [a for a in app.db.attempts(case_id) if a["trigger"] == "policy"]
    assert len(declines) == 3
    # Canceling again (a rerun after a crash) is a no-op.
    app.gateway.cancel_subscription(invoice["subscription"], at=datetime.now(UTC), idempotency_key="again")


# --------------------------------------------------------------------------- PaymentIntents mode


@pytest.fixture
def pi_gateway(localstripe_url: str) -> StripeGateway:
    return StripeGateway(StripeSettings.from_mapping(settings_for(localstripe_url, mode="payment_intents")))


@pytest.mark.parametrize(
    ("card", "status", "code"),
    [
        (CARD_OK, ChargeStatus.SUCCEEDED, None),
        (CARD_DECLINED_ON_CHARGE, ChargeStatus.DECLINED, "card_declined"),
        (CARD_NEEDS_AUTHENTICATION, ChargeStatus.DECLINED, "authentication_required"),
    ],
)
def test_payment_intents_mode_charges_off_session(
    pi_gateway: StripeGateway, account: Account, card: str, status: ChargeStatus, code: str | None
) -> None:
    customer = account.customer()
    token = account.card(customer, card)
    request = ChargeRequest(
        idempotency_key=f"recobra:case_inv_{token}:1",
        invoice_id=f"inv_{token}",
        customer_id=customer,
        subscription_id=None,
        amount=Money(2500, "EUR"),
        payment_method=CardRef(token, token, "visa", "0000", 12, 2034, Funding.CREDIT),
        attempt_number=1,
        attempted_at=datetime.now(UTC),
        customer_country="ES",
        customer_timezone="Europe/Madrid",
    )

    result = pi_gateway.charge(request)

    assert result.status is status
    assert result.decline_code == code
    assert result.gateway_reference


# --------------------------------------------------------------------------- webhooks


def test_tampered_badly_signed_stale_and_unsigned_payloads_are_refused(app: StripeApp) -> None:
    event = app.event("invoice.paid", {"id": "in_x", "object": "invoice"})
    body, headers = signed(event)

    tampered = body.replace("in_x", "in_y")
    assert app.client.post("/webhooks/stripe", content=tampered, headers=headers).status_code == 400
    wrong = signed(event, secret="whsec_someone_else")
    assert app.client.post("/webhooks/stripe", content=wrong[0], headers=wrong[1]).status_code == 400
    old = signed(event, timestamp=int(time.time()) - 3600)
    answer = app.client.post("/webhooks/stripe", content=old[0], headers=old[1])
    assert answer.status_code == 400
    assert "timestamp" in answer.json()["detail"].lower()
    unsigned = app.client.post("/webhooks/stripe", content=body, headers={"Content-Type": "application/json"})
    assert unsigned.status_code == 400
    assert app.inbox() == {}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("{not json", "not JSON"),
        ('{"object": "invoice", "id": "in_1"}', "not a Stripe event"),
        (
            '{"object": "event", "id": "evt_1", "type": "invoice.paid", "created": "yesterday", "data": {}}',
            "created: Unix seconds are required; data.object: an object is required",
        ),
    ],
)
def test_bad_payloads_get_a_400_that_names_the_problem(app: StripeApp, body: str, problem: str) -> None:
    body, headers = signed(body)
    answer = app.client.post("/webhooks/stripe", content=body, headers=headers)
    assert answer.status_code == 400
    assert problem in answer.json()["detail"]
    assert app.inbox() == {}


def test_a_replayed_event_is_acknowledged_and_dropped(app: StripeApp) -> None:
    _customer, invoice = failing_subscription(app.account)
    event = app.event("invoice.payment_failed", invoice, created=invoice["created"])

    assert app.send(event).json()["stored"] is True
    again = app.send(event)

    assert again.status_code == 200
    assert again.json() == {"received": True, "stored": False, "duplicate": True}
    assert len(app.inbox()) == 1
    assert len(app.db.attempts(f"case_{invoice['id']}")) == 1


def test_an_older_failure_after_the_payment_does_not_reopen_a_case(app: StripeApp) -> None:
    customer, invoice = failing_subscription(app.account)
    failed_at = invoice["created"]
    # The invoice is paid (say, by the customer on Stripe's hosted invoice page) ...
    app.account.card(customer, CARD_OK)
    app.account.client.v1.invoices.pay(invoice["id"])
    paid = app.account.client.v1.invoices.retrieve(invoice["id"]).to_dict()
    # ... and Stripe delivers invoice.paid before the older invoice.payment_failed.
    app.send(app.event("invoice.paid", paid, created=failed_at + 60, eid="evt_paid"))
    app.send(app.event("invoice.payment_failed", invoice, created=failed_at, eid="evt_failed"))

    inbox = app.inbox()
    assert inbox["evt_paid"]["status"] == "done"
    assert inbox["evt_failed"]["status"] == "stale"
    assert app.db.rows("cases") == []


def test_a_failure_of_an_invoice_paid_meanwhile_is_ignored(app: StripeApp) -> None:
    customer, invoice = failing_subscription(app.account)
    app.account.card(customer, CARD_OK)
    app.account.client.v1.invoices.pay(invoice["id"])

    app.send(app.event("invoice.payment_failed", invoice, created=invoice["created"], eid="evt_late"))

    assert app.inbox()["evt_late"]["status"] == "ignored"
    assert "paid now" in app.inbox()["evt_late"]["note"]
    assert app.db.rows("cases") == []


def test_events_that_do_not_concern_us_are_acknowledged_and_ignored(app: StripeApp) -> None:
    answer = app.send(app.event("charge.dispute.created", {"id": "dp_1", "object": "dispute"}))
    assert answer.status_code == 200
    row = app.inbox()["evt_charge_dispute_created_dp_1_"]
    assert row["status"] == "ignored"


def test_subscription_updates_and_deletion_reach_the_engine(app: StripeApp) -> None:
    _customer, invoice = failing_subscription(app.account)
    app.send(app.event("invoice.payment_failed", invoice, created=invoice["created"]))
    sub = app.account.client.v1.subscriptions.retrieve(invoice["subscription"]).to_dict()

    app.send(app.event("customer.subscription.updated", sub, created=invoice["created"] + 1))
    app.account.client.v1.subscriptions.cancel(sub["id"])
    ended = app.account.client.v1.subscriptions.retrieve(sub["id"]).to_dict()
    app.send(app.event("customer.subscription.deleted", ended, created=invoice["created"] + 2))

    assert app.db.case(f"case_{invoice['id']}")["status"] == "canceled"
    assert app.db.subscription(sub["id"])["status"] == "canceled"
    # An older update delivered late does not bring the subscription back.
    app.send(app.event("customer.subscription.updated", sub, created=invoice["created"] + 1, eid="evt_old"))
    assert app.inbox()["evt_old"]["status"] == "stale"
    assert app.db.subscription(sub["id"])["status"] == "canceled"


def test_webhooks_are_not_served_without_stripe(
    store: SqlStore, engine_factory: EngineFactory, database_url: str
) -> None:
    services = Services(
        settings=Settings(database_url=database_url, link_secret=LINK_SECRET),
        store=store,
        engine=engine_factory(),
        links=LinkSigner(LINK_SECRET, PUBLIC),
    )
    body, headers = signed({"id": "evt_1"})
    with TestClient(create_app(services)) as client:
        assert client.post("/webhooks/stripe", content=body, headers=headers).status_code == 404


def test_the_api_version_is_the_sdk_s(stripe_client: stripe.StripeClient) -> None:
    from recobra.stripe.config import API_VERSION  # noqa: PLC0415

    assert stripe.api_version == API_VERSION
    assert WEBHOOK_SECRET.startswith("whsec_")


# --------------------------------------------------------------------------- the hosted page


def _link(app: StripeApp, case_id: str) -> str:
    token = app.services.links.token("update_payment", case_id, now=datetime.now(UTC), ttl=timedelta(days=7))
    return f"/p/update_payment/{token}"


def _open_case(app: StripeApp) -> tuple[str, dict[str, Any], str]:
    customer, invoice = failing_subscription(app.account)
    app.send(app.event("invoice.payment_failed", invoice, created=invoice["created"]))
    return customer, invoice, f"case_{invoice['id']}"


def test_the_page_shows_stripe_s_element_and_no_card_form(app: StripeApp) -> None:
    _customer, _invoice, case_id = _open_case(app)

    answer = app.client.get(_link(app, case_id) + "?lang=en")

    assert answer.status_code == 200
    html = answer.text
    assert '<script src="https://js.stripe.com/v3/"' in html
    assert "pk_test_recobra" in html
    assert 'id="payment-element"' in html
    assert 'name="last4"' not in html
    assert "Simulated gateway" not in html
    csp = answer.headers["Content-Security-Policy"]
    assert "script-src 'nonce-" in csp
    assert "https://js.stripe.com" in csp
    assert "frame-src https://js.stripe.com https://hooks.stripe.com" in csp
    secret = html.split('"secret": "')[1].split('"')[0]
    intent = app.account.client.v1.setup_intents.retrieve(secret.split("_secret_")[0])
    assert intent.metadata["recobra_case"] == case_id
    assert intent.customer == app.db.case(case_id)["customer_id"]


def test_back_from_stripe_with_a_saved_card_the_payment_is_retried_at_once(app: StripeApp) -> None:
    customer, invoice, case_id = _open_case(app)
    link = _link(app, case_id)
    html = app.client.get(link + "?lang=es").text
    seti = html.split('"secret": "')[1].split("_secret_")[0]
    # What Stripe.js does in the customer's browser: confirm the SetupIntent with the card.
    card = app.account.card(customer, CARD_OK, default=False)
    app.account.client.v1.setup_intents.confirm(seti, {"payment_method": card})

    answer = app.client.get(f"{link}/stripe?lang=es&setup_intent={seti}&redirect_status=succeeded")

    assert answer.status_code == 200
    assert "¡Gracias, todo listo!" in answer.text
    assert app.db.case(case_id)["status"] == "recovered"
    assert app.account.client.v1.invoices.retrieve(invoice["id"]).status == "paid"
    # The webhook for the same SetupIntent changes nothing more; the link is spent.
    confirmed = app.account.client.v1.setup_intents.retrieve(seti).to_dict()
    app.send(app.event("setup_intent.succeeded", confirmed))
    assert [a["trigger"] for a in app.db.attempts(case_id)] == ["billing", "payment_method"]
    assert app.client.get(link).status_code == 410


def test_back_from_stripe_with_a_card_that_declines(app: StripeApp) -> None:
    customer, _invoice, case_id = _open_case(app)
    link = _link(app, case_id)
    seti = app.client.get(link).text.split('"secret": "')[1].split("_secret_")[0]
    card = app.account.card(customer, CARD_DECLINED_ON_CHARGE, default=False)
    app.account.client.v1.setup_intents.confirm(seti, {"payment_method": card})

    answer = app.client.get(f"{link}/stripe?setup_intent={seti}")

    assert answer.status_code == 402
    assert app.db.case(case_id)["status"] == "open"
    assert app.client.get(link).status_code == 200  # the customer may try another card


def test_a_setup_intent_of_someone_else_is_refused(app: StripeApp) -> None:
    _customer, _invoice, case_id = _open_case(app)
    stranger = app.account.customer("eve@example.com")
    card = app.account.card(stranger, CARD_OK, default=False)
    theirs = app.account.client.v1.setup_intents.create(
        {"customer": stranger, "metadata": {"recobra_case": case_id}}
    )
    app.account.client.v1.setup_intents.confirm(theirs.id, {"payment_method": card})

    answer = app.client.get(f"{_link(app, case_id)}/stripe?setup_intent={theirs.id}")

    assert answer.status_code == 404
    assert app.db.case(case_id)["status"] == "open"


def test_a_payment_that_needs_3d_secure_is_authenticated_by_the_customer(app: StripeApp) -> None:
    _customer, invoice = failing_subscription(app.account, CARD_NEEDS_AUTHENTICATION)
    app.send(app.event("invoice.payment_failed", invoice, created=invoice["created"]))
    case_id = f"case_{invoice['id']}"
    case = app.db.case(case_id)
    assert case["last_category"] == "authentication_required"
    assert case["next_action"] != "retry"  # no blind retry

    link = _link(app, case_id)
    html = app.client.get(link + "?lang=en").text
    assert 'data-intent="authenticate"' in html
    assert "Your bank asks you to confirm this payment" in html
    assert 'id="payment-element"' not in html
    secret = html.split('"secret": "')[1].split('"')[0]
    pi = secret.split("_secret_")[0]
    assert pi == app.account.client.v1.invoices.retrieve(invoice["id"]).payment_intent
    # What Stripe.js does when the customer passes the bank's challenge (the fake's
    # own endpoint for it).
    httpx.post(
        f"{app.gateway.settings.api_base}/v1/payment_intents/{pi}/_authenticate",
        data={"client_secret": secret, "success": "true"},
        headers={"Authorization": "Bearer sk_test_recobra"},
    ).raise_for_status()

    answer = app.client.get(f"{link}/stripe?lang=en&payment_intent={pi}")

    assert answer.status_code == 200
    assert "We collected $49.00" in answer.text
    assert app.db.case(case_id)["status"] == "recovered"


def _known_customer(app: StripeApp) -> str:
    """A customer Recobra knows from an upcoming renewal, with nothing failing."""
    customer = app.account.customer("lia@example.com", locale="en")
    app.account.card(customer, CARD_OK)
    sub = app.account.subscription(customer, app.account.price(12000))
    upcoming = {
        "id": f"upcoming_{sub['id']}",
        "object": "invoice",
        "customer": customer,
        "subscription": sub["id"],
        "amount_due": 12000,
        "currency": "usd",
    }
    app.send(app.event("invoice.upcoming", upcoming))
    assert app.db.rows("customers", id=customer)
    return customer


def test_the_card_only_page_saves_a_card_for_the_customer(app: StripeApp) -> None:
    customer = _known_customer(app)
    link = _link(app, customer)  # a reminder's link names the customer, not a case

    html = app.client.get(link + "?lang=en").text

    assert "Keep your card up to date" in html
    assert 'id="payment-element"' in html
    assert 'name="last4"' not in html
    seti = html.split('"secret": "')[1].split("_secret_")[0]
    intent = app.account.client.v1.setup_intents.retrieve(seti)
    assert intent.customer == customer
    assert intent.metadata.to_dict() == {"recobra_customer": customer}
    # What Stripe.js does in the customer's browser: confirm the SetupIntent with the card.
    card = app.account.card(customer, CARD_OK, default=False)
    app.account.client.v1.setup_intents.confirm(seti, {"payment_method": card})

    answer = app.client.get(f"{link}/stripe?lang=en&setup_intent={seti}&redirect_status=succeeded")

    assert answer.status_code == 200
    assert "Your card is saved" in answer.text
    assert "Visa ending in 4242" in answer.text
    assert app.account.client.v1.customers.retrieve(customer).invoice_settings.default_payment_method == card
    (default,) = [m for m in app.db.rows("payment_methods", customer_id=customer) if m["is_default"]]
    assert default["id"] == card
    assert app.db.rows("cases") == []
    # The webhook for the same SetupIntent is the same event for the engine; the link is spent.
    confirmed = app.account.client.v1.setup_intents.retrieve(seti).to_dict()
    assert app.send(app.event("setup_intent.succeeded", confirmed)).status_code == 200
    assert app.inbox()[f"evt_setup_intent_succeeded_{seti}_"]["status"] == "done"
    assert app.client.get(link).status_code == 410
    assert app.client.get(f"{link}/stripe?setup_intent={seti}").status_code == 410


def test_the_card_only_page_refuses_another_customer_s_setup_intent(app: StripeApp) -> None:
    customer = _known_customer(app)
    (before,) = [m["id"] for m in app.db.rows("payment_methods", customer_id=customer) if m["is_default"]]
    link = _link(app, customer)
    stranger = app.account.customer("eve@example.com")
    card = app.account.card(stranger, CARD_OK, default=False)
    theirs = app.account.client.v1.setup_intents.create(
        {"customer": stranger, "metadata": {"recobra_customer": stranger}}
    )
    app.account.client.v1.setup_intents.confirm(theirs.id, {"payment_method": card})
    # Nor one of the stranger's that claims to be this customer's.
    claimed = app.account.client.v1.setup_intents.create(
        {"customer": stranger, "metadata": {"recobra_customer": customer}}
    )
    app.account.client.v1.setup_intents.confirm(claimed.id, {"payment_method": card})

    for seti in (theirs.id, claimed.id):
        answer = app.client.get(f"{link}/stripe?lang=en&setup_intent={seti}")
        assert answer.status_code == 404
        assert "not valid" in answer.text
    assert app.client.get(f"{link}/stripe?payment_intent=pi_123").status_code == 404

    assert [m["id"] for m in app.db.rows("payment_methods", customer_id=customer) if m["is_default"]] == [
        before
    ]
    at_stripe = app.account.client.v1.customers.retrieve(customer)
    assert at_stripe.invoice_settings.default_payment_method == before
    assert app.client.get(link).status_code == 200  # the link is not spent


# --------------------------------------------------------------------------- more events


def test_an_event_whose_processing_failed_is_processed_by_the_worker(
    app: StripeApp, store: SqlStore, engine_factory: EngineFactory, database_url: str
) -> None:
    _customer, invoice = failing_subscription(app.account)
    # The service answering the webhook cannot reach Stripe right now.
    offline = StripeGateway(StripeSettings.from_mapping(settings_for("http://127.0.0.1:9")))
    services = Services(
        settings=app.services.settings,
        store=store,
        engine=engine_factory(gateway=offline),
        links=LinkSigner(LINK_SECRET, PUBLIC),
    )
    event = app.event("invoice.payment_failed", invoice, created=invoice["created"], eid="evt_w")
    body, headers = signed(event)
    with TestClient(create_app(services), base_url=PUBLIC) as client:
        assert client.post("/webhooks/stripe", content=body, headers=headers).status_code == 200
    row = app.inbox()["evt_w"]
    assert row["status"] == "failed"
    assert "APIConnectionError" in row["note"]
    assert app.db.rows("cases") == []

    report = process_pending(app.services.engine, datetime.now(UTC))

    assert (report.done, report.failed) == (1, 0)
    assert app.inbox()["evt_w"]["status"] == "done"
    assert app.db.case(f"case_{invoice['id']}")["status"] == "open"


def test_an_invoice_marked_uncollectible_in_stripe_writes_the_case_off(app: StripeApp) -> None:
    _customer, invoice, case_id = _open_case(app)

    app.send(
        app.event(
            "invoice.marked_uncollectible",
            {**invoice, "status": "uncollectible"},
            created=invoice["created"] + 5,
        )
    )

    case = app.db.case(case_id)
    assert case["status"] == "written_off"
    assert app.db.invoice(invoice["id"])["status"] == "uncollectible"


def test_a_card_attached_but_not_default_is_stored_without_a_retry(app: StripeApp) -> None:
    customer, _invoice, case_id = _open_case(app)
    spare = app.account.card(customer, CARD_OK, default=False)
    pm = app.account.client.v1.payment_methods.retrieve(spare).to_dict()

    app.send(app.event("payment_method.attached", pm))

    (row,) = app.db.rows("payment_methods", id=spare)
    assert (row["last4"], row["is_default"]) == ("4242", False)
    assert app.db.case(case_id)["status"] == "open"
    assert len(app.db.attempts(case_id)) == 1


def test_an_upcoming_renewal_plans_the_subscription_again(app: StripeApp) -> None:
    customer = app.account.customer("olga@example.com", locale="en")
    app.account.card(customer, CARD_OK)
    sub = app.account.subscription(customer, app.account.price(12000))
    upcoming = {
        "id": f"upcoming_{sub['id']}",
        "object": "invoice",
        "customer": customer,
        "subscription": sub["id"],
        "amount_due": 12000,
        "currency": "usd",
    }

    app.send(app.event("invoice.upcoming", upcoming))

    row = app.db.subscription(sub["id"])
    assert row["status"] == "active"
    assert row["renews_at"] == datetime.fromtimestamp(sub["current_period_end"], UTC)
    assert app.db.rows("customers", id=customer)[0]["email"] == "olga@example.com"


def test_a_failure_of_a_customer_without_email_is_marked_invalid_not_retried(app: StripeApp) -> None:
    nameless = str(app.account.client.v1.customers.create({"name": "No Mail"}).id)
    app.account.card(nameless, CARD_DECLINED_ON_CHARGE)
    sub = app.account.subscription(nameless, app.account.price())
    invoice = app.account.client.v1.invoices.retrieve(sub["latest_invoice"]).to_dict()

    assert app.send(app.event("invoice.payment_failed", invoice, eid="evt_nomail")).status_code == 200

    row = app.inbox()["evt_nomail"]
    assert row["status"] == "invalid"
    assert "has no email" in row["note"]
    assert process_pending(app.services.engine, datetime.now(UTC)).invalid == 0  # not picked up again


EXPIRY_POLICY = (
    TEST_POLICY
    + """
[[campaigns]]
name = "card-expiring"
kind = "card_expiring"
before = ["30d", "7d"]
channels = ["email"]
"""
)


def test_an_expiring_card_plans_the_expiry_reminders(app: StripeApp, engine_factory: EngineFactory) -> None:
    app.services.engine = engine_factory(EXPIRY_POLICY, gateway=app.gateway)
    customer = app.account.customer("pia@example.com")
    app.account.card(customer, CARD_OK)
    sub = app.account.subscription(customer, app.account.price())
    # A legacy card source on the customer, expiring at the end of next month.
    soon = datetime.now(UTC) + timedelta(days=40)
    token = app.account.client.v1.tokens.create(
        {"card": {"number": CARD_OK, "exp_month": soon.month, "exp_year": soon.year, "cvc": "123"}}
    )
    source = app.account.client.v1.customers.payment_sources.create(customer, {"source": token.id}).to_dict()

    app.send(app.event("customer.source.expiring", source, eid="evt_expiring"))

    assert app.inbox()["evt_expiring"]["status"] == "done"
    (row,) = app.db.rows("payment_methods", id=source["id"])
    assert (row["exp_month"], row["exp_year"]) == (soon.month, soon.year)
    assert app.db.subscription(sub["id"])["status"] == "active"
    reminders = app.db.rows("messages", customer_id=customer)
    assert {m["kind"] for m in reminders} == {"card_expiring"}
    assert len(reminders) >= 1


def test_final_action_errors_say_whether_trying_again_can_help(app: StripeApp) -> None:
    _customer, invoice = failing_subscription(app.account)
    offline = StripeGateway(StripeSettings.from_mapping(settings_for("http://127.0.0.1:9")))
    now = datetime.now(UTC)

    with pytest.raises(GatewayError) as unreachable:
        offline.cancel_subscription(invoice["subscription"], at=now, idempotency_key="k1")
    assert unreachable.value.transient
    with pytest.raises(GatewayError) as unknown:
        app.gateway.cancel_subscription("sub_nobody", at=now, idempotency_key="k2")
    assert not unknown.value.transient
    assert "Stripe could not cancel the subscription" in str(unknown.value)


def test_a_charge_stripe_cannot_answer_is_an_error_not_a_decline(app: StripeApp) -> None:
    customer, invoice = failing_subscription(app.account)
    offline = StripeGateway(StripeSettings.from_mapping(settings_for("http://127.0.0.1:9")))
    request = charge_request(invoice, customer, "pm_x", key=f"recobra:case_{invoice['id']}:1")

    result = offline.charge(request)

    assert result.status is ChargeStatus.ERROR
    assert "APIConnectionError" in result.message
    assert offline.attempt_status(request.idempotency_key).status is ChargeStatus.ERROR


def test_the_page_says_so_when_stripe_cannot_be_reached(app: StripeApp) -> None:
    _customer, _invoice, case_id = _open_case(app)
    link = _link(app, case_id)
    app.services.engine.gateway = StripeGateway(
        StripeSettings.from_mapping({**settings_for("http://127.0.0.1:9"), "publishable_key": "pk_test_x"})
    )

    page = app.client.get(link + "?lang=en")
    back = app.client.get(f"{link}/stripe?setup_intent=seti_123")

    assert page.status_code == back.status_code == 503
    assert "The payment form is not available right now" in page.text
    assert "js.stripe.com" not in page.text
    assert app.db.case(case_id)["status"] == "open"
