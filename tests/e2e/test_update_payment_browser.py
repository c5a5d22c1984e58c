"""The update-payment journey in a real Chromium, in Spanish and in English."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import sync_playwright
from sqlalchemy import text

from recobra.bootstrap import build_engine, open_store
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
from recobra.domain.money import Money
from recobra.engine.commands import PaymentFailed
from recobra.gateways.simulated import SimulatedGateway
from recobra.messages.links import LinkSigner
from recobra.policyfile import load_default_policy
from recobra.settings import Settings
from recobra.store.migrate import upgrade
from recobra.store.sql import make_engine
from recobra.web.app import create_app
from recobra.web.services import Services

CHROMIUM = os.environ.get("RECOBRA_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
SECRET = "u" * 40
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Services]]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium package (make test does)")
    url = f"sqlite:///{tmp_path / 'r.db'}"
    db = make_engine(url)
    upgrade(db)
    db.dispose()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    settings = Settings(database_url=url, link_secret=SECRET, public_url=base, company_name="Acme Cloud")
    store = open_store(url)
    engine = build_engine(
        settings, store=store, gateway=SimulatedGateway(seed=1), policies=load_default_policy()
    )
    services = Services(settings=settings, store=store, engine=engine, links=LinkSigner(SECRET, base))
    now = datetime.now(UTC)
    for i, (locale, country, tz, money) in enumerate(
        [
            ("es", "MX", "America/Mexico_City", Money(29900, "MXN")),
            ("en", "US", "America/New_York", Money(1900, "USD")),
        ]
    ):
        customer = Customer(
            f"cus_{i}", f"c{i}@example.com", locale, tz, country, "Ana" if locale == "es" else "Alex"
        )
        plan = Plan(f"pro-{money.currency.lower()}", "Pro", Interval.MONTH, money)
        sub = Subscription(
            f"sub_{i}", customer.id, plan, SubscriptionStatus.ACTIVE, now - timedelta(days=200)
        )
        method = PaymentMethod(
            f"pm_{i}",
            customer.id,
            "tok_sim_decline_insufficient_funds",
            "visa",
            "4242",
            12,
            2030,
            Funding.DEBIT,
        )
        invoice = Invoice(f"in_{i}", customer.id, sub.id, money, InvoiceStatus.OPEN, now - timedelta(hours=2))
        engine.handle(
            PaymentFailed(
                f"evt_{i}",
                now - timedelta(hours=2),
                customer,
                invoice,
                method,
                sub,
                "insufficient_funds",
                "51",
            )
        )
    server = uvicorn.Server(
        uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield base, services
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("case", "lang", "title", "done"),
    [
        ("case_in_0", "es", "Actualiza tu método de pago", "Cobramos"),
        ("case_in_1", "en", "Update your payment method", "We collected"),
    ],
)
def test_a_customer_fixes_the_payment_from_the_link(
    served, case: str, lang: str, title: str, done: str
) -> None:  # type: ignore[no-untyped-def]
    base, services = served
    link = services.links.make("update_payment", case, now=datetime.now(UTC), ttl=timedelta(days=7))
    assert link.startswith(base)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            tab = browser.new_page(viewport={"width": 390, "height": 844})
            tab.goto(link)
            assert tab.locator("h1").inner_text() == title
            assert tab.get_attribute("html", "lang") == lang
            tab.screenshot(path=str(ARTIFACTS / f"update-payment-{lang}.png"), full_page=True)
            # Submitting an invalid card shows the errors next to the fields.
            tab.fill("#last4", "12")
            tab.click("button[type=submit]")
            assert tab.locator("[role=alert]").is_visible()
            assert tab.get_attribute("#last4", "aria-invalid") == "true"
            # Keyboard only: labels lead to fields, the form submits.
            tab.get_by_label("Últimos 4 dígitos" if lang == "es" else "Last 4 digits").fill("4242")
            tab.fill("#exp_month", "11")
            tab.fill("#exp_year", str(datetime.now(UTC).year + 3))
            tab.focus("button[type=submit]")
            tab.keyboard.press("Enter")
            tab.wait_for_selector("h1")
            assert done in tab.locator("p").first.inner_text()
            tab.screenshot(path=str(ARTIFACTS / f"update-payment-{lang}-done.png"), full_page=True)
            # The link is spent.
            tab.goto(link)
            assert tab.locator("h1").inner_text() in ("Este enlace ya se usó", "This link was already used")
        finally:
            browser.close()
    with services.store.engine.connect() as conn:
        assert conn.scalar(text("select status from cases where id = :c"), {"c": case}) == "recovered"
