"""``recobra stripe import`` against the local Stripe fake: everything comes in once,
an interrupted import resumes where it stopped, and a rerun changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
import stripe_support
from conftest import Db, EngineFactory
from stripe_support import CARD_DECLINED_ON_CHARGE, CARD_OK, SECRET_KEY, Account, settings_for
from typer.testing import CliRunner

from recobra.cli import app as cli
from recobra.store.sql import SqlStore
from recobra.stripe.config import StripeSettings
from recobra.stripe.gateway import StripeGateway
from recobra.stripe.importer import StripeImport

localstripe_url = stripe_support.localstripe_url
stripe_client = stripe_support.stripe_client
account = stripe_support.account


class Stop(Exception):
    """Stands for an import cut short (Ctrl-C, a lost connection)."""


@pytest.fixture
def fresh_account(localstripe_url: str, account: Account) -> Account:
    """The fake emptied, then: Bea and Carla pay; Dan's renewal failed; Eve has no email."""
    httpx.delete(f"{localstripe_url}/_config/data", headers={"Authorization": f"Bearer {SECRET_KEY}"})
    price = account.price()
    for name in ("bea", "carla"):
        cus = account.customer(f"{name}@example.com", locale="en")
        account.card(cus, CARD_OK)
        account.subscription(cus, price)
    dan = account.customer("dan@example.com")
    account.card(dan, CARD_DECLINED_ON_CHARGE)
    account.subscription(dan, price)
    account.client.v1.customers.create({"name": "Eve"})
    return account


def _import(engine_factory: EngineFactory, url: str, **kwargs: object) -> StripeImport:
    gateway = StripeGateway(StripeSettings.from_mapping(settings_for(url)))
    engine = engine_factory(gateway=gateway)
    return StripeImport(
        engine,
        gateway.settings,
        gateway.client,
        now=lambda: datetime.now(UTC),
        **kwargs,  # type: ignore[arg-type]
    )


def test_an_account_comes_in_once(
    fresh_account: Account, engine_factory: EngineFactory, localstripe_url: str, db: Db
) -> None:
    report = _import(engine_factory, localstripe_url).run()

    counts = (report.customers, report.payment_methods, report.subscriptions, report.cases_opened)
    assert counts == (3, 3, 3, 1)
    (skipped,) = report.skipped
    assert skipped.startswith("customer cus_")
    assert "has no email" in skipped
    (case,) = db.rows("cases")
    assert case["last_code"] == "card_declined"
    assert db.count("subscriptions") == 3
    assert {r["status"] for r in db.rows("subscriptions")} == {"active", "past_due"}

    again = _import(engine_factory, localstripe_url).run()
    assert again.already_done == ["customers", "subscriptions"]
    restarted = _import(engine_factory, localstripe_url).run(restart=True)
    assert restarted.cases_opened == 0
    assert db.count("cases") == 1
    assert db.count("customers") == 3
    assert db.count("payment_methods") == 3


def test_an_interrupted_import_resumes_where_it_stopped(
    fresh_account: Account, engine_factory: EngineFactory, localstripe_url: str, db: Db
) -> None:
    seen: list[tuple[str, int]] = []

    def stop_after_first_page(resource: str, count: int) -> None:
        seen.append((resource, count))
        raise Stop

    with pytest.raises(Stop):
        _import(engine_factory, localstripe_url, page_size=2, progress=stop_after_first_page).run()
    assert seen == [("customers", 2)]
    assert db.count("customers") in (1, 2)  # two listed; one may lack an email
    cursor = db.rows("stripe_import_cursors")[0]
    assert cursor["resource"] == "customers"
    assert cursor["imported"] == 2
    assert cursor["finished_at"] is None

    report = _import(engine_factory, localstripe_url, page_size=2).run()

    assert report.resumed == ["customers"]
    assert db.count("customers") == 3
    assert db.count("cases") == 1
    assert {r["resource"]: r["imported"] for r in db.rows("stripe_import_cursors")} == {
        "customers": 4,
        "subscriptions": 3,
    }


def test_the_command_imports_with_a_progress_bar(
    fresh_account: Account,
    localstripe_url: str,
    database_url: str,
    store: SqlStore,
    monkeypatch: pytest.MonkeyPatch,
    db: Db,
) -> None:
    monkeypatch.setenv("RECOBRA_DATABASE_URL", database_url)
    monkeypatch.setenv("RECOBRA_GATEWAY", "stripe")
    for key, value in settings_for(localstripe_url).items():
        monkeypatch.setenv(f"RECOBRA_GATEWAY_SETTING_{key.upper()}", value)

    result = CliRunner().invoke(cli, ["stripe", "import"])

    assert result.exit_code == 0, result.output
    assert "customers 3, payment methods 3, subscriptions 3, cases opened 1" in result.stdout
    assert db.count("cases") == 1


def test_the_command_says_when_stripe_is_not_the_gateway(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOBRA_DATABASE_URL", database_url)
    monkeypatch.setenv("RECOBRA_GATEWAY", "simulated")

    result = CliRunner().invoke(cli, ["stripe", "import"])

    assert result.exit_code == 2
    assert "the configured gateway is 'simulated'" in result.output
