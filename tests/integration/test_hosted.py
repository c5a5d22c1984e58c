"""The hosted update-payment page through the real application, engine and store."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
from conftest import T0, Commands, Db, EngineFactory, web_services
from fastapi.testclient import TestClient

from recobra.domain.messages import ChannelKind, MessageKind, OutboxEntry
from recobra.store.sql import SqlStore
from recobra.web.app import create_app
from recobra.web.services import Services

SECRET = "h" * 40
PUBLIC = "https://pay.example.com"
CASE = Commands.case_id("1")


class Page:
    def __init__(self, client: TestClient, services: Services, db: Db) -> None:
        self.client = client
        self.services = services
        self.db = db
        self.now = T0 + timedelta(hours=2)

    def link(
        self,
        *,
        purpose: str = "update_payment",
        subject: str = CASE,
        ttl: timedelta = timedelta(days=7),
        message: str | None = None,
    ) -> str:
        extra = {"message": message} if message else None
        token = self.services.links.token(
            purpose, subject, now=self.now - timedelta(hours=1), ttl=ttl, extra=extra
        )
        return f"/p/update_payment/{token}"


@pytest.fixture
def page(
    store: SqlStore, engine_factory: EngineFactory, db: Db, database_url: str, commands: Commands
) -> Iterator[Page]:
    engine = engine_factory()
    holder: dict[str, Page] = {}
    services = web_services(
        store,
        engine,
        database_url,
        secret=SECRET,
        public_url=PUBLIC,
        clock=lambda: holder["p"].now,
        company_name="Acme",
    )
    engine.handle(commands.payment_failed("1", decline_code="insufficient_funds", network_code="51"))
    with TestClient(create_app(services), base_url=PUBLIC) as client:
        holder["p"] = Page(client, services, db)
        yield holder["p"]


def card(**overrides: str) -> dict[str, str]:
    return {
        "brand": "visa",
        "last4": "4242",
        "exp_month": "12",
        "exp_year": "2031",
        "outcome": "ok",
        **overrides,
    }


def test_the_page_says_what_is_owed_and_why_in_plain_words(page: Page) -> None:
    answer = page.client.get(page.link())
    assert answer.status_code == 200
    html = answer.text
    assert 'lang="en"' in html
    assert "$19.00" in html
    assert "insufficient_funds" not in html  # never a raw code
    assert " 51" not in html
    assert "Update your payment method" in html
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    spanish = page.client.get(page.link() + "?lang=es")
    assert 'lang="es"' in spanish.text
    assert "Actualiza tu método de pago" in spanish.text
    assert "Simulated gateway" in answer.text  # the demo form says what it is


def test_opening_the_link_records_the_click_on_its_message(page: Page) -> None:
    with page.services.store.unit_of_work() as uow:
        uow.add_messages(
            [
                OutboxEntry(
                    f"{CASE}:m0:email", "cus_1", CASE, MessageKind.PAYMENT_FAILED, ChannelKind.EMAIL, "m0", T0
                )
            ]
        )
        uow.commit()
    page.client.get(page.link(message=f"{CASE}:m0:email"))
    row = page.db.rows("messages")[0]
    assert row["clicked_at"] == page.now


def test_invalid_card_details_are_named_and_change_nothing(page: Page) -> None:
    answer = page.client.post(page.link(), data=card(last4="42a", exp_month="13", exp_year="2019"))
    assert answer.status_code == 422
    assert 'role="alert"' in answer.text
    assert "Enter the last 4 digits of the card." in answer.text
    assert 'aria-invalid="true"' in answer.text
    assert page.db.count("payment_methods") == 1
    assert page.db.case(CASE)["attempts"] == 0


def test_a_good_card_recovers_the_payment_and_spends_the_link(page: Page) -> None:
    link = page.link()
    answer = page.client.post(link, data=card())
    assert answer.status_code == 200
    assert "all set" in answer.text
    assert "We collected $19.00" in answer.text
    case = page.db.check_case(CASE)
    assert case["status"] == "recovered"
    assert case["budget_used"] == 0  # the immediate retry is outside the policy's budget
    methods = {m["id"]: m for m in page.db.rows("payment_methods")}
    new = next(m for m in methods.values() if m["id"].startswith("pm_hosted_"))
    assert (new["last4"], new["exp_month"], new["exp_year"], new["is_default"]) == ("4242", 12, 2031, True)
    # The link has done its job: reopening or reposting it changes nothing.
    again = page.client.get(link)
    assert again.status_code == 410
    assert "already used" in again.text
    repost = page.client.post(link, data=card(last4="1111"))
    assert repost.status_code == 410
    assert page.db.count("payment_methods") == 2


@pytest.mark.parametrize("typed", ["31", "031", "0031", "2031"])
def test_the_expiry_year_is_stored_as_it_was_checked(page: Page, typed: str) -> None:
    answer = page.client.post(page.link(), data=card(exp_year=typed))
    assert answer.status_code == 200
    new = next(m for m in page.db.rows("payment_methods") if m["id"].startswith("pm_hosted_"))
    assert new["exp_year"] == 2031


def test_a_declined_card_says_so_and_the_link_still_works(page: Page) -> None:
    link = page.link()
    answer = page.client.post(link + "?lang=es", data=card(outcome="declined"))
    assert answer.status_code == 402
    assert "Esa tarjeta tampoco funcionó" in answer.text
    assert page.db.check_case(CASE)["status"] == "open"
    assert page.client.get(link).status_code == 200
    assert page.client.post(link, data=card()).status_code == 200
    assert page.db.check_case(CASE)["status"] == "recovered"


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (lambda p: p.link()[:-4] + "AAAA", 404, "not valid"),
        (lambda p: p.link(ttl=timedelta(minutes=30)), 410, "expired"),
        (lambda p: p.link(purpose="unsubscribe"), 404, "not valid"),
        (lambda p: p.link(subject="case_nope"), 404, "not valid"),
    ],
    ids=["tampered", "expired", "wrong-purpose", "unknown-case"],
)
def test_bad_links_get_a_clear_page_and_change_nothing(page: Page, make, status: int, words: str) -> None:  # type: ignore[no-untyped-def]
    link = make(page)
    assert page.client.get(link).status_code == status
    posted = page.client.post(link, data=card())
    assert posted.status_code == status
    assert words in posted.text
    assert page.db.count("payment_methods") == 1
    assert page.db.case(CASE)["status"] == "open"


def test_a_settled_case_has_nothing_to_pay(page: Page, commands: Commands) -> None:
    page.services.engine.handle(commands.paid_out_of_band("1", at=T0 + timedelta(hours=1)))
    answer = page.client.get(page.link())
    assert answer.status_code == 200
    assert "Nothing to pay" in answer.text


def test_one_click_unsubscribe_stops_reminders_but_not_confirmations(page: Page) -> None:
    token = page.services.links.token("unsubscribe", "cus_1", now=page.now, ttl=timedelta(days=30))
    shown = page.client.get(f"/p/unsubscribe/{token}")
    assert shown.status_code == 200
    assert "Unsubscribe" in shown.text
    # RFC 8058: the mail client POSTs "List-Unsubscribe=One-Click" with no confirmation.
    done = page.client.post(
        f"/p/unsubscribe/{token}",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 200
    assert "You are unsubscribed" in done.text
    prefs = page.db.rows("contact_preferences")
    assert prefs[0]["unsubscribed"] is True
    tampered = page.client.post(f"/p/unsubscribe/{token[:-4]}AAAA")
    assert tampered.status_code == 404
    wrong = page.services.links.token("update_payment", "cus_1", now=page.now, ttl=timedelta(days=1))
    assert page.client.post(f"/p/unsubscribe/{wrong}").status_code == 404


def test_with_the_simulated_gateway_the_page_loads_no_outside_script(page: Page) -> None:
    answer = page.client.get(page.link())
    assert answer.status_code == 200
    assert "<script" not in answer.text
    assert "js.stripe.com" not in answer.headers["Content-Security-Policy"]
    assert 'name="last4"' in answer.text


@pytest.mark.parametrize("purpose", ["update_payment", "unsubscribe", "cancel", "reactivate"])
def test_the_access_log_never_shows_a_links_token(
    page: Page, caplog: pytest.LogCaptureFixture, purpose: str
) -> None:
    """The link is the customer's credential: the server's access log keeps the page
    it led to, never the token."""
    token = page.link().rsplit("/", 1)[1]
    access = logging.getLogger("uvicorn.access")
    line = '%s - "%s %s HTTP/%s" %d'  # as uvicorn logs a request
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info(line, "203.0.113.9:5000", "GET", f"/p/{purpose}/{token}?lang=es", "1.1", 200)
        access.info(line, "203.0.113.9:5000", "POST", f"/p/{purpose}/{token}/stripe", "1.1", 200)
    assert token not in caplog.text
    assert f"/p/{purpose}/[link]?lang=es" in caplog.text
    assert f"/p/{purpose}/[link]/stripe" in caplog.text
