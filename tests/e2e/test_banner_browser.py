"""The in-app banner in a real Chromium, on an operator page of another origin.

The application runs under uvicorn on loopback; the operator's page is served by a
second server (another origin) and embeds the script with a notices token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser
from sqlalchemy import text

from recobra.bootstrap import build_engine, open_store
from recobra.channels.in_app import InAppChannel
from recobra.domain.messages import ChannelKind
from recobra.domain.model import Customer, Funding, Invoice, InvoiceStatus, PaymentMethod
from recobra.domain.money import Money
from recobra.engine.commands import PaymentFailed
from recobra.engine.messenger import Messenger
from recobra.messages.composer import Sender, TemplateComposer
from recobra.messages.links import LinkSigner
from recobra.messages.render import Renderer
from recobra.policyfile import parse_policy
from recobra.settings import Settings
from recobra.web.services import Services

from .browser import PHONE, free_port, migrated_sqlite, require_chromium, serving, shot

SECRET = "b" * 40
POLICY = """\
name = "browser"
version = 1
default_policy = "p"
[policies.p]
strategy = "fixed"
max_attempts = 1
max_days = 5
final_action = "cancel"
steps = [
  { action = "message", after = "0m", kind = "payment_failed", channels = ["in_app"] },
  { after = "1d" },
]
"""

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, Services]]:
    require_chromium()
    url = migrated_sqlite(tmp_path / "r.db")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    now = datetime.now(UTC)
    settings = Settings(database_url=url, link_secret=SECRET, public_url=base, in_app_origins=[])
    store = open_store(url)
    policies = parse_policy(POLICY)
    engine = build_engine(settings, store=store, policies=policies)
    links = LinkSigner(SECRET, base)
    services = Services(settings=settings, store=store, engine=engine, links=links)

    customer = Customer("cus_1", "ana@example.com", "es", "UTC", "MX", "Ana")
    method = PaymentMethod("pm_1", "cus_1", "tok_1", "visa", "4242", 12, 2030, Funding.DEBIT)
    invoice = Invoice(
        "in_1", "cus_1", None, Money(29900, "MXN"), InvoiceStatus.OPEN, now - timedelta(hours=1)
    )
    engine.handle(
        PaymentFailed(
            "evt_1", now - timedelta(hours=1), customer, invoice, method, decline_code="insufficient_funds"
        )
    )
    composer = TemplateComposer(Renderer(), links, policies.policies, Sender("Acme", "ayuda@example.com"))
    Messenger(store, {ChannelKind.IN_APP: InAppChannel()}, composer).dispatch(now)

    with serving(services):
        yield base, services


@pytest.fixture
def operator_page() -> Iterator[tuple[ThreadingHTTPServer, dict[str, str]]]:
    """The operator's own app, on another origin, embedding the banner script."""
    page: dict[str, str] = {"html": ""}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = page["html"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, page
    finally:
        server.shutdown()
        server.server_close()


def test_the_banner_shows_the_notice_and_marks_it_seen(
    service: tuple[str, Services],
    operator_page: tuple[ThreadingHTTPServer, dict[str, str]],
    browser: Browser,
) -> None:
    base, services = service
    server, page = operator_page
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    services.settings.in_app_origins.append(origin)
    token = services.links.token("notices", "cus_1", now=datetime.now(UTC), ttl=timedelta(hours=1))
    page["html"] = (
        '<!doctype html><html lang="es"><head><title>Mi cuenta</title></head><body>'
        "<h1>Mi cuenta</h1>"
        f'<script src="{base}/static/recobra-banner.js" data-token="{token}" defer></script>'
        "</body></html>"
    )
    tab = browser.new_page(viewport=PHONE)  # a phone-sized screen
    tab.goto(origin + "/")
    banner = tab.wait_for_selector(".recobra-banner", timeout=15_000)
    assert banner is not None
    assert banner.get_attribute("role") == "status"
    assert "Actualizar" in banner.inner_text() or "tarjeta" in banner.inner_text().lower()
    link = tab.get_attribute(".recobra-banner a", "href")
    assert link is not None
    assert link.startswith(f"{base}/p/update_payment/")
    shot(tab, "in-app-banner", full_page=False)
    tab.click(".recobra-banner button")
    assert tab.query_selector(".recobra-banner") is None
    deadline = time.monotonic() + 10
    seen = None
    while time.monotonic() < deadline and seen is None:
        with services.store.engine.connect() as conn:
            seen = conn.scalar(text("select seen_at from messages where channel = 'in_app'"))
        time.sleep(0.1)
    assert seen is not None, "showing the banner marks the notice seen"
