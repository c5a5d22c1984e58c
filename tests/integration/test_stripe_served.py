"""``recobra serve --with-worker`` on the Stripe gateway, with the local Stripe fake
delivering its own webhooks to it over HTTP, signed by the fake (an implementation of
Stripe's signing scheme other than the SDK's)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import stripe_support
from sqlalchemy import create_engine, text
from stripe_support import CARD_DECLINED_ON_CHARGE, CARD_OK, SECRET_KEY, WEBHOOK_SECRET, Account, settings_for

pytestmark = pytest.mark.slow

localstripe_url = stripe_support.localstripe_url
stripe_client = stripe_support.stripe_client
account = stripe_support.account

STARTUP_TIMEOUT = 30.0


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status(url: str, case_id: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            value = conn.execute(text("SELECT status FROM cases WHERE id = :id"), {"id": case_id}).scalar()
            return None if value is None else str(value)
    finally:
        engine.dispose()


def _wait_for(url: str, case_id: str, status: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while _status(url, case_id) != status:
        assert time.monotonic() < deadline, (
            f"case {case_id} is {_status(url, case_id)}, not {status}:\n{log.read_text(errors='replace')}"
        )
        time.sleep(0.2)


@pytest.fixture
def served(tmp_path: Path, localstripe_url: str) -> Iterator[tuple[str, str, Path]]:
    database = f"sqlite:///{tmp_path / 'recobra.db'}"
    env = {
        **os.environ,
        "RECOBRA_LINK_SECRET": "s" * 40,
        "RECOBRA_POLL_INTERVAL_S": "0.5",
        "RECOBRA_DATABASE_URL": database,
        "RECOBRA_GATEWAY": "stripe",
    }
    for key, value in settings_for(localstripe_url).items():
        env[f"RECOBRA_GATEWAY_SETTING_{key.upper()}"] = value
    init = subprocess.run(
        [sys.executable, "-m", "recobra.cli", "init"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    port = _port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "recobra.cli", "serve", "--port", str(port), "--with-worker"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        yield base, database, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_stripe_s_own_deliveries_close_the_case(
    served: tuple[str, str, Path], localstripe_url: str, account: Account
) -> None:
    base, database, log = served
    # The fake delivers to the served endpoint, signing with the endpoint's secret.
    httpx.post(
        f"{localstripe_url}/_config/webhooks/recobra",
        data={
            "url": f"{base}/webhooks/stripe",
            "secret": WEBHOOK_SECRET,
            "events[0]": "invoice.payment_succeeded",
            "events[1]": "customer.subscription.deleted",
        },
        headers={"Authorization": f"Bearer {SECRET_KEY}"},
    ).raise_for_status()
    customer = account.customer()
    account.card(customer, CARD_DECLINED_ON_CHARGE)
    sub = account.subscription(customer, account.price())
    invoice = account.client.v1.invoices.retrieve(sub["latest_invoice"]).to_dict()
    # The fake does not send invoice.payment_failed for a subscription's invoice:
    # send it as Stripe would, signed with the SDK.
    event = {
        "id": f"evt_failed_{invoice['id']}",
        "object": "event",
        "type": "invoice.payment_failed",
        "created": invoice["created"],
        "data": {"object": invoice},
    }
    body, headers = stripe_support.signed(event)
    assert httpx.post(f"{base}/webhooks/stripe", content=body, headers=headers).status_code == 200
    case_id = f"case_{invoice['id']}"
    _wait_for(database, case_id, "open", log)

    # The customer pays on Stripe's side with another card; the fake tells Recobra.
    account.card(customer, CARD_OK)
    account.client.v1.invoices.pay(invoice["id"])

    _wait_for(database, case_id, "recovered", log)
