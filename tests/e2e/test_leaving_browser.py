"""The cancel and reactivate journeys in a real Chromium, in Spanish and English, on a
phone-sized screen and a desktop one, and once with the keyboard only."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser
from sqlalchemy import text

from recobra.engine.commands import SubscriptionUpdated
from recobra.web.services import Services

from .browser import (
    DESKTOP,
    PHONE,
    fits,
    migrated_sqlite,
    require_chromium,
    serving,
    shot,
    simulated_services,
    two_subscribers,
)

SECRET = "c" * 40
SUBSCRIPTION = {"es": "sub_0", "en": "sub_1"}

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Services]]:
    require_chromium()
    url = migrated_sqlite(tmp_path / "r.db")
    services = simulated_services(url, SECRET, company_name="Acme Cloud", support_email="help@acme.example")
    now = datetime.now(UTC)
    for i, (customer, sub) in enumerate(two_subscribers(now)):
        services.engine.handle(SubscriptionUpdated(f"evt_{i}", now - timedelta(hours=1), customer, sub))
    with serving(services) as base:
        yield base, services


def _link(services: Services, purpose: str, subject: str) -> str:
    return services.links.make(purpose, subject, now=datetime.now(UTC), ttl=timedelta(days=7))


def _status(services: Services, subscription: str) -> str:
    with services.store.engine.connect() as conn:
        return str(conn.scalar(text("select status from subscriptions where id = :s"), {"s": subscription}))


WORDS = {
    "es": {
        "title": "Cancela tu suscripción",
        "expensive": "Es demasiado caro",
        "not_using": "No lo uso lo suficiente",
        "comment": "¿Quieres agregar algo? (opcional)",
        "continue": "Continuar",
        "offer": "Antes de irte: una oferta para ti",
        "decline": "No, gracias: cancelar mi suscripción",
        "canceled": "Tu suscripción ha sido cancelada",
        "reactivate": "Reactivar mi suscripción",
        "back": "¡Bienvenido de nuevo!",
        "pause": "Pausar mi suscripción",
        "saved": "Gracias por quedarte",
        "error": "Elige el motivo que mejor te describe.",
    },
    "en": {
        "title": "Cancel your subscription",
        "expensive": "It is too expensive",
        "not_using": "I am not using it enough",
        "comment": "Anything you would like to add? (optional)",
        "continue": "Continue",
        "offer": "Before you go: an offer for you",
        "decline": "No thanks, cancel my subscription",
        "canceled": "Your subscription has been canceled",
        "reactivate": "Reactivate my subscription",
        "back": "Welcome back!",
        "pause": "Pause my subscription",
        "saved": "Thank you for staying",
        "error": "Choose the reason that fits best.",
    },
}


@pytest.mark.parametrize("lang", ["es", "en"])
@pytest.mark.parametrize(("screen", "size"), [("phone", PHONE), ("desktop", DESKTOP)])
def test_cancel_decline_the_offer_then_come_back(
    served: tuple[str, Services], browser: Browser, lang: str, screen: str, size: dict[str, int]
) -> None:
    _base, services = served
    w, sub = WORDS[lang], SUBSCRIPTION[lang]
    tab = browser.new_page(viewport=size)
    tab.goto(_link(services, "cancel", sub))
    assert tab.get_attribute("html", "lang") == lang
    assert tab.locator("h1").inner_text() == w["title"]
    fits(tab, size["width"])
    shot(tab, f"cancel-{lang}-{screen}-1-reason")
    # Continuing without a reason: the error is named next to the field.
    tab.get_by_role("button", name=w["continue"]).click()
    assert tab.locator("[role=alert]").is_visible()
    assert w["error"] in tab.locator("#reason-error").inner_text()
    shot(tab, f"cancel-{lang}-{screen}-2-error")

    tab.get_by_label(w["expensive"]).check()
    tab.get_by_label(w["comment"]).fill("Demasiado para mí" if lang == "es" else "Too much for me")
    tab.get_by_role("button", name=w["continue"]).click()
    assert tab.locator("h1").inner_text() == w["offer"]
    assert "25%" in tab.locator("#offer").inner_text()
    fits(tab, size["width"])
    shot(tab, f"cancel-{lang}-{screen}-3-offer")

    tab.get_by_role("button", name=w["decline"]).click()
    assert tab.locator("h1").inner_text() == w["canceled"]
    fits(tab, size["width"])
    shot(tab, f"cancel-{lang}-{screen}-4-canceled")
    assert _status(services, sub) == "canceled"

    # How to come back, from the confirmation page itself.
    tab.get_by_role("link", name=w["reactivate"]).click()
    tab.get_by_role("button", name=w["reactivate"]).click()
    assert tab.locator("h1").inner_text() == w["back"]
    shot(tab, f"cancel-{lang}-{screen}-5-reactivated")
    assert _status(services, sub) == "active"


@pytest.mark.parametrize("lang", ["es", "en"])
def test_cancel_accept_the_offer(served: tuple[str, Services], browser: Browser, lang: str) -> None:
    _base, services = served
    w, sub = WORDS[lang], SUBSCRIPTION[lang]
    tab = browser.new_page(viewport=PHONE)
    tab.goto(_link(services, "cancel", sub))
    tab.get_by_label(w["not_using"]).check()
    tab.get_by_role("button", name=w["continue"]).click()
    assert tab.locator("h1").inner_text() == w["offer"]
    shot(tab, f"cancel-{lang}-accept-1-offer")
    tab.get_by_role("button", name=w["pause"]).click()
    assert tab.locator("h1").inner_text() == w["saved"]
    fits(tab, PHONE["width"])
    shot(tab, f"cancel-{lang}-accept-2-saved")
    assert _status(services, sub) == "paused"

    # A paused customer comes back in one step.
    tab.goto(_link(services, "reactivate", sub))
    shot(tab, f"reactivate-{lang}-1-page")
    tab.get_by_role("button", name=w["reactivate"]).click()
    assert tab.locator("h1").inner_text() == w["back"]
    shot(tab, f"reactivate-{lang}-2-done")
    assert _status(services, sub) == "active"


def test_keyboard_only(served: tuple[str, Services], browser: Browser) -> None:
    _base, services = served
    tab = browser.new_page(viewport=PHONE)
    tab.goto(_link(services, "cancel", "sub_1"))
    focused = "document.activeElement && (document.activeElement.id || document.activeElement.textContent)"
    # Tab from the top: the language switch, then the reasons.
    tab.keyboard.press("Tab")
    assert tab.evaluate("document.activeElement.tagName") == "A"
    tab.keyboard.press("Tab")
    assert tab.evaluate(focused) == "reason-too_expensive"
    # Arrow keys move through the radio group and choose.
    tab.keyboard.press("ArrowDown")
    assert tab.evaluate(focused) == "reason-not_using"
    assert tab.is_checked("#reason-not_using")
    tab.keyboard.press("Tab")
    assert tab.evaluate(focused) == "comment"
    tab.keyboard.type("Back after the summer")
    tab.keyboard.press("Tab")
    assert tab.evaluate(focused) == "anonymous"
    tab.keyboard.press("Space")
    assert tab.is_checked("#anonymous")
    tab.keyboard.press("Tab")
    assert tab.evaluate("document.activeElement.tagName") == "BUTTON"
    # A visible focus ring on the focused control.
    outline = tab.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
    tab.keyboard.press("Enter")
    tab.wait_for_selector("#offer")
    # The offer: the first button accepts; Tab reaches "no thanks", Enter cancels.
    tab.keyboard.press("Tab")
    tab.keyboard.press("Tab")
    tab.keyboard.press("Tab")
    assert tab.evaluate(focused) == WORDS["en"]["decline"]
    shot(tab, "cancel-keyboard-offer")
    tab.keyboard.press("Enter")
    tab.wait_for_selector("h1")
    assert tab.locator("h1").inner_text() == WORDS["en"]["canceled"]
    shot(tab, "cancel-keyboard-canceled")
    with services.store.engine.connect() as conn:
        row = conn.execute(text("select customer_id, reason, comment, outcome from exit_surveys")).one()
    assert tuple(row) == (None, "not_using", "Back after the summer", "canceled")


def test_tampered_and_expired_links_get_a_clear_page(served: tuple[str, Services], browser: Browser) -> None:
    _base, services = served
    tab = browser.new_page(viewport=PHONE)
    good = _link(services, "cancel", "sub_0")
    tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    answer = tab.goto(tampered + "?lang=es")
    assert answer is not None
    assert answer.status == 404
    assert tab.locator("h1").inner_text() == "Este enlace no es válido"
    shot(tab, "cancel-link-tampered-es")
    expired = services.links.make(
        "cancel", "sub_0", now=datetime.now(UTC) - timedelta(days=30), ttl=timedelta(days=7)
    )
    answer = tab.goto(expired)
    assert answer is not None
    assert answer.status == 410
    assert tab.locator("h1").inner_text() == "This link has expired"
    shot(tab, "cancel-link-expired-en")
    assert _status(services, "sub_0") == "active"
