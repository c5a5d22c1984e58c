"""What the browser tests share: Debian's Chromium launched by path (``RECOBRA_CHROMIUM``
overrides it; no browser download), the application served by uvicorn on a free
loopback port, and screenshots in ``test-artifacts/``."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright

from recobra.bootstrap import build_engine, open_store
from recobra.domain.model import Customer, Interval, Plan, Subscription, SubscriptionStatus
from recobra.domain.money import Money
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
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def require_chromium() -> None:
    """Fail (never skip) when Chromium is missing."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium package (make test does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def migrated_sqlite(path: Path) -> str:
    """The URL of a new SQLite database at ``path``, migrated."""
    url = f"sqlite:///{path}"
    db = make_engine(url)
    try:
        upgrade(db)
    finally:
        db.dispose()
    return url


def simulated_services(url: str, secret: str, **settings: Any) -> Services:
    """The services on ``url`` with the simulated gateway and the shipped default policy,
    to be served at ``http://127.0.0.1:<a free port>`` (their ``public_url``)."""
    base = f"http://127.0.0.1:{free_port()}"
    config = Settings(database_url=url, link_secret=secret, public_url=base, **settings)
    store = open_store(url)
    engine = build_engine(
        config, store=store, gateway=SimulatedGateway(seed=1), policies=load_default_policy()
    )
    return Services(settings=config, store=store, engine=engine, links=LinkSigner(secret, base))


def two_subscribers(now: datetime) -> list[tuple[Customer, Subscription]]:
    """Ana in Mexico (es, MXN) as ``cus_0``/``sub_0`` and Alex in the US (en, USD) as
    ``cus_1``/``sub_1``, each on a monthly Pro plan for 200 days."""
    people = [
        ("es", "MX", "America/Mexico_City", Money(29900, "MXN"), "Ana"),
        ("en", "US", "America/New_York", Money(1900, "USD"), "Alex"),
    ]
    subscribers = []
    for i, (locale, country, tz, money, name) in enumerate(people):
        customer = Customer(f"cus_{i}", f"c{i}@example.com", locale, tz, country, name)
        plan = Plan(f"pro-{money.currency.lower()}", "Pro", Interval.MONTH, money)
        started = now - timedelta(days=200)
        sub = Subscription(f"sub_{i}", customer.id, plan, SubscriptionStatus.ACTIVE, started)
        subscribers.append((customer, sub))
    return subscribers


@contextmanager
def serving(services: Services) -> Iterator[str]:
    """The application under uvicorn at its ``public_url`` (on loopback) until the
    block ends; yields that address."""
    base = services.settings.public_url
    port = int(base.rsplit(":", 1)[1])
    server = uvicorn.Server(
        uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the service did not start"
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


def shot(tab: Page, name: str, *, full_page: bool = True) -> None:
    """A screenshot ``test-artifacts/<name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def fits(tab: Page, width: int) -> None:
    """Nothing sticks out sideways: the page reads without horizontal scrolling."""
    scroll = tab.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"the page scrolls sideways ({scroll}px on a {width}px screen)"
