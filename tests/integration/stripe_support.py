"""A local, stateful Stripe fake for the Stripe tests: the ``localstripe`` package run
as a separate process (it is GPL-licensed: started, never imported), plus helpers
that set up customers, cards and subscriptions on it with the official SDK.

Card numbers appear only here, as Stripe's published test cards sent to the fake
(as Stripe.js would send them to Stripe): Recobra's code never sees one.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import stripe

from recobra.stripe.config import StripeSettings
from recobra.stripe.gateway import StripeGateway

SECRET_KEY = "sk_test_recobra"
WEBHOOK_SECRET = "whsec_recobra_test_secret"
PUBLISHABLE_KEY = "pk_test_recobra"

CARD_OK = "4242424242424242"
CARD_DECLINED_ON_CHARGE = "4000000000000341"  # attaches, then every charge declines
CARD_NEEDS_AUTHENTICATION = "4000002760003184"  # 3-D Secure on every charge


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def localstripe_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A localstripe server for the session (one process; objects are unique per test)."""
    port = _free_port()
    workdir = tmp_path_factory.mktemp("localstripe")
    log = (workdir / "localstripe.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "localstripe", "--port", str(port), "--from-scratch"],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/v1/customers", headers={"Authorization": f"Bearer {SECRET_KEY}"}, timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"localstripe did not start: {(workdir / 'localstripe.log').read_text()}")
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def settings_for(url: str, **extra: str) -> dict[str, str]:
    return {
        "secret_key": SECRET_KEY,
        "webhook_secret": WEBHOOK_SECRET,
        "publishable_key": PUBLISHABLE_KEY,
        "api_base": url,
        "max_network_retries": "0",
        **extra,
    }


@pytest.fixture
def stripe_client(localstripe_url: str) -> stripe.StripeClient:
    return StripeSettings.from_mapping(settings_for(localstripe_url)).client()


@pytest.fixture
def stripe_gateway(localstripe_url: str) -> StripeGateway:
    return StripeGateway(StripeSettings.from_mapping(settings_for(localstripe_url)))


@dataclass
class Account:
    """Objects made on the fake for one test."""

    client: stripe.StripeClient

    def card(self, customer_id: str, number: str, *, default: bool = True) -> str:
        card = {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}
        pm = self.client.v1.payment_methods.create({"type": "card", "card": card})
        self.client.v1.payment_methods.attach(pm.id, {"customer": customer_id})
        if default:
            self.client.v1.customers.update(
                customer_id, {"invoice_settings": {"default_payment_method": pm.id}}
            )
        return str(pm.id)

    def customer(self, email: str = "ana@example.com", *, locale: str = "es") -> str:
        cus = self.client.v1.customers.create(
            {
                "email": email,
                "name": "Ana",
                "preferred_locales": [locale],
                "metadata": {"timezone": "America/Bogota"},
            }
        )
        return str(cus.id)

    def price(self, amount: int = 4900) -> str:
        product = self.client.v1.products.create({"name": "Pro"})
        plan = self.client.v1.plans.create(
            {
                "amount": amount,
                "currency": "usd",
                "interval": "month",
                "product": product.id,
                "nickname": "Pro",
            }
        )
        return str(plan.id)

    def subscription(self, customer_id: str, price_id: str) -> dict[str, Any]:
        sub = self.client.v1.subscriptions.create({"customer": customer_id, "items": [{"plan": price_id}]})
        return sub.to_dict()

    def events(self, kind: str) -> list[dict[str, Any]]:
        """Events of a type, newest first, as Stripe would deliver them."""
        listed = self.client.v1.events.list({"type": kind, "limit": 100})
        return [e.to_dict() for e in listed.data]


@pytest.fixture
def account(stripe_client: stripe.StripeClient) -> Account:
    return Account(stripe_client)


def signed(
    payload: dict[str, Any] | str, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> tuple[str, dict[str, str]]:
    """A body and its ``Stripe-Signature`` header, made with the SDK's signing scheme."""
    body = payload if isinstance(payload, str) else json.dumps(payload)
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp)
    return body, {"Stripe-Signature": header, "Content-Type": "application/json"}
