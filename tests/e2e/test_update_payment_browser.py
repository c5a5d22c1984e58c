"""The update-payment journey in a real Chromium, in Spanish and in English."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser
from sqlalchemy import text

from recobra.domain.model import (
    Funding,
    Invoice,
    InvoiceStatus,
    PaymentMethod,
)
from recobra.engine.commands import PaymentFailed, SubscriptionUpdated
from recobra.web.services import Services

from .browser import (
    PHONE,
    migrated_sqlite,
    require_chromium,
    serving,
    shot,
    simulated_services,
    two_subscribers,
)

SECRET = "u" * 40

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Services]]:
    require_chromium()
    services = simulated_services(migrated_sqlite(tmp_path / "r.db"), SECRET, company_name="Acme Cloud")
    now = datetime.now(UTC)
    for i, (customer, sub) in enumerate(two_subscribers(now)):
        money = sub.plan.price
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
        services.engine.handle(
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
    with serving(services) as base:
        yield base, services


@pytest.mark.parametrize(
    ("case", "lang", "title", "done"),
    [
        ("case_in_0", "es", "Actualiza tu método de pago", "Cobramos"),
        ("case_in_1", "en", "Update your payment method", "We collected"),
    ],
)
def test_a_customer_fixes_the_payment_from_the_link(
    served: tuple[str, Services], browser: Browser, case: str, lang: str, title: str, done: str
) -> None:
    base, services = served
    link = services.links.make("update_payment", case, now=datetime.now(UTC), ttl=timedelta(days=7))
    assert link.startswith(base)
    tab = browser.new_page(viewport=PHONE)
    tab.goto(link)
    assert tab.locator("h1").inner_text() == title
    assert tab.get_attribute("html", "lang") == lang
    shot(tab, f"update-payment-{lang}")
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
    shot(tab, f"update-payment-{lang}-done")
    # The link is spent.
    tab.goto(link)
    assert tab.locator("h1").inner_text() in ("Este enlace ya se usó", "This link was already used")
    with services.store.engine.connect() as conn:
        assert conn.scalar(text("select status from cases where id = :c"), {"c": case}) == "recovered"


# --------------------------------------------------------------------------- card only


@pytest.fixture
def reminded(tmp_path: Path) -> Iterator[tuple[str, Services]]:
    """Two subscribers whose cards expire at the end of next month, with nothing failing:
    what an expiring-card reminder's link leads to."""
    require_chromium()
    services = simulated_services(migrated_sqlite(tmp_path / "r.db"), SECRET, company_name="Acme Cloud")
    now = datetime.now(UTC)
    soon = (now.replace(day=1) + timedelta(days=32)).replace(day=1)
    for i, (customer, sub) in enumerate(two_subscribers(now)):
        card = PaymentMethod(f"pm_{i}", customer.id, "tok_sim_ok", "visa", "4242", soon.month, soon.year)
        services.engine.handle(SubscriptionUpdated(f"evt_{i}", now - timedelta(hours=2), customer, sub, card))
    with serving(services) as base:
        yield base, services


@pytest.mark.parametrize(
    ("customer", "lang", "title", "other_title", "done"),
    [
        ("cus_0", "es", "Mantén tu tarjeta al día", "Keep your card up to date", "Tu tarjeta quedó guardada"),
        ("cus_1", "en", "Keep your card up to date", "Mantén tu tarjeta al día", "Your card is saved"),
    ],
)
def test_a_customer_replaces_an_expiring_card_from_the_reminder(
    reminded: tuple[str, Services],
    browser: Browser,
    customer: str,
    lang: str,
    title: str,
    other_title: str,
    done: str,
) -> None:
    base, services = reminded
    link = services.links.make("update_payment", customer, now=datetime.now(UTC), ttl=timedelta(days=40))
    assert link.startswith(base)
    tab = browser.new_page(viewport=PHONE)
    tab.goto(link)
    assert tab.locator("h1").inner_text() == title
    assert tab.get_attribute("html", "lang") == lang
    assert tab.locator("#card-expiry").is_visible()  # "expires soon"
    assert "4242" in tab.locator(".card").inner_text()
    # The language switch shows the same card-only page in the other language, and back.
    tab.click("header a")
    assert tab.locator("h1").inner_text() == other_title
    tab.click("header a")
    assert tab.locator("h1").inner_text() == title
    shot(tab, f"update-card-{lang}")
    # An invalid expiry is named by its field.
    tab.get_by_label("Últimos 4 dígitos" if lang == "es" else "Last 4 digits").fill("5454")
    tab.select_option("#brand", "mastercard")
    tab.fill("#exp_month", "13")
    tab.fill("#exp_year", str(datetime.now(UTC).year + 3))
    tab.click("button[type=submit]")
    assert tab.locator("[role=alert]").is_visible()
    assert tab.get_attribute("#exp_month", "aria-invalid") == "true"
    tab.fill("#exp_month", "9")
    tab.focus("button[type=submit]")
    tab.keyboard.press("Enter")
    tab.wait_for_selector("h1")
    assert tab.locator("h1").inner_text() == done
    assert "5454" in tab.locator(".card").inner_text()
    shot(tab, f"update-card-{lang}-done")
    tab.goto(link)
    assert tab.locator("h1").inner_text() in ("Este enlace ya se usó", "This link was already used")
    with services.store.engine.connect() as conn:
        saved = conn.execute(
            text("select last4, exp_month from payment_methods where customer_id = :c and is_default"),
            {"c": customer},
        ).all()
    assert [tuple(row) for row in saved] == [("5454", 9)]
