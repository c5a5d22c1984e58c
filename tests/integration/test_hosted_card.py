"""The update-payment page in card-only mode: the link of a message sent before
anything failed (an expiring card) names the customer, not a case. Through the real
composer, application, engine and store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from conftest import T0, Commands, Db, EngineFactory, fixed_policy, web_services
from fastapi.testclient import TestClient

from recobra.domain.model import Interval, PaymentMethod, Plan, Subscription, SubscriptionStatus
from recobra.domain.money import Money
from recobra.engine.commands import SubscriptionUpdated
from recobra.messages.composer import Sender, TemplateComposer
from recobra.messages.render import Renderer
from recobra.policyfile import parse_policy
from recobra.store.sql import SqlStore
from recobra.web.app import create_app
from recobra.web.services import Services

SECRET = "c" * 40
PUBLIC = "https://pay.example.com"
POLICY = fixed_policy(
    extra="""
[[campaigns]]
name = "card-expiring"
kind = "card_expiring"
before = ["30d", "7d"]
channels = ["email"]
"""
)
# The card expires in April 2025: it stops working on 1 May 2025 at midnight in Bogotá.
CARD_END = datetime(2025, 5, 1, 5, 0, tzinfo=UTC)
REMINDED_AT = CARD_END - timedelta(days=30) + timedelta(hours=9)


class CardPage:
    def __init__(self, client: TestClient, services: Services, db: Db, commands: Commands) -> None:
        self.client = client
        self.services = services
        self.db = db
        self.commands = commands
        self.now = REMINDED_AT

    def remind(self, key: str = "2", *, locale: str = "es") -> None:
        """An annual subscription whose card expires in April 2025: the campaign plans
        the card reminders."""
        customer = replace(
            self.commands.customer(key, timezone="America/Bogota", country="CO"), locale=locale
        )
        plan = Plan(id="plan_year", name="Pro anual", interval=Interval.YEAR, price=Money(19900, "USD"))
        sub = Subscription(
            id=f"sub_{key}",
            customer_id=customer.id,
            plan=plan,
            status=SubscriptionStatus.ACTIVE,
            started_at=T0 - timedelta(days=300),
            renews_at=T0 + timedelta(days=200),
        )
        card = PaymentMethod(
            id=f"pm_{key}",
            customer_id=customer.id,
            gateway_token="tok_sim_ok",
            brand="visa",
            last4="4242",
            exp_month=4,
            exp_year=2025,
        )
        self.services.engine.handle(SubscriptionUpdated(self.commands.event_id(), T0, customer, sub, card))

    def reminder_link(self, customer_id: str = "cus_2") -> str:
        """The update-payment link of the customer's card_expiring email, as the
        composer writes it when the message is sent."""
        (row, *_rest) = self.db.rows("messages", order_by=("due_at",), customer_id=customer_id)
        assert row["kind"] == "card_expiring"
        composer = TemplateComposer(
            Renderer(),
            self.services.links,
            parse_policy(POLICY, "<test policy>").policies,
            Sender("Acme", "help@acme.test"),
        )
        with self.services.store.unit_of_work() as uow:
            (bundle,) = uow.load_messages([row["id"]], self.now)
        message = composer.compose(bundle, self.now)
        link = str(message.data["link"])
        assert link.startswith(f"{PUBLIC}/p/update_payment/")
        assert link in message.text
        return link.removeprefix(PUBLIC)

    def link(self, subject: str) -> str:
        token = self.services.links.token(
            "update_payment", subject, now=self.now - timedelta(hours=1), ttl=timedelta(days=7)
        )
        return f"/p/update_payment/{token}"

    def default_card(self, customer_id: str) -> dict[str, object]:
        (row,) = [m for m in self.db.rows("payment_methods", customer_id=customer_id) if m["is_default"]]
        return row


@pytest.fixture
def page(
    store: SqlStore, engine_factory: EngineFactory, db: Db, database_url: str, commands: Commands
) -> Iterator[CardPage]:
    engine = engine_factory(POLICY)
    holder: dict[str, CardPage] = {}
    services = web_services(
        store,
        engine,
        database_url,
        secret=SECRET,
        public_url=PUBLIC,
        clock=lambda: holder["p"].now,
        company_name="Acme",
    )
    with TestClient(create_app(services), base_url=PUBLIC) as client:
        holder["p"] = CardPage(client, services, db, commands)
        yield holder["p"]


def card(**overrides: str) -> dict[str, str]:
    return {"brand": "mastercard", "last4": "5454", "exp_month": "9", "exp_year": "2029", **overrides}


def test_the_card_reminder_link_opens_the_card_only_page(page: CardPage) -> None:
    page.remind(locale="es")
    link = page.reminder_link()

    answer = page.client.get(link)

    assert answer.status_code == 200
    html = answer.text
    assert 'lang="es"' in html
    assert "Mantén tu tarjeta al día" in html
    assert "No debes nada" in html
    assert "Visa terminada en 4242, válida hasta el final de abril de 2025" in html
    assert "Vence pronto." in html
    assert "$" not in html  # never an amount
    assert "Guardar tarjeta" in html
    assert 'name="last4"' in html
    assert 'name="outcome"' not in html  # no payment to retry: no bank answer to choose
    english = page.client.get(link + "?lang=en")
    assert 'lang="en"' in english.text
    assert "Keep your card up to date" in english.text
    assert "Visa ending in 4242, valid until the end of April 2025." in english.text
    assert "It expires soon." in english.text
    switch = link.split("?")[0] + "?lang=es"
    assert f'href="{switch}"' in english.text  # the language switch keeps the card-only page
    # Opening the link counts as the message's click.
    (row, *_rest) = page.db.rows("messages", order_by=("due_at",), customer_id="cus_2")
    assert row["clicked_at"] == page.now


def test_an_expired_card_is_called_expired(page: CardPage) -> None:
    page.remind(locale="en")
    link = page.reminder_link()
    page.now = CARD_END + timedelta(days=2)
    assert "It has expired." in page.client.get(link).text


def test_a_new_card_becomes_the_default_and_spends_the_link(page: CardPage) -> None:
    page.remind(locale="en")
    link = page.reminder_link()

    answer = page.client.post(link, data=card())

    assert answer.status_code == 200
    assert "Your card is saved" in answer.text
    assert "Mastercard ending in 5454" in answer.text
    assert "collected" not in answer.text
    new = page.default_card("cus_2")
    assert str(new["id"]).startswith("pm_hosted_")
    assert (new["last4"], new["exp_month"], new["exp_year"]) == ("5454", 9, 2029)
    assert [m["id"] for m in page.db.rows("payment_methods", customer_id="cus_2") if m["is_default"]] == [
        new["id"]
    ]
    assert page.db.rows("cases") == []
    # Spent: a reused link says so and changes nothing.
    again = page.client.get(link)
    assert again.status_code == 410
    assert "already used" in again.text
    repost = page.client.post(link, data=card(last4="1111"))
    assert repost.status_code == 410
    assert page.default_card("cus_2")["id"] == new["id"]
    assert page.db.count("payment_methods") == 2


def test_invalid_card_details_are_named_and_change_nothing(page: CardPage) -> None:
    page.remind(locale="es")
    link = page.reminder_link()

    answer = page.client.post(link, data=card(last4="54a", exp_month="13", exp_year="2019"))

    assert answer.status_code == 422
    html = answer.text
    assert 'role="alert"' in html
    assert "Ingresa los últimos 4 dígitos de la tarjeta." in html
    assert 'id="last4-error"' in html
    assert 'id="exp_month-error"' in html
    assert 'aria-invalid="true"' in html
    assert "Mantén tu tarjeta al día" in html  # still the card-only page
    assert page.default_card("cus_2")["id"] == "pm_2"
    assert page.client.get(link).status_code == 200  # not spent


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (lambda p: p.reminder_link()[:-4] + "AAAA", 404, "not valid"),
        (lambda p: p.link("cus_nobody"), 404, "not valid"),
    ],
    ids=["tampered", "unknown-customer"],
)
def test_bad_links_get_a_clear_page_and_change_nothing(page: CardPage, make, status: int, words: str) -> None:  # type: ignore[no-untyped-def]
    page.remind(locale="en")
    link = make(page)
    assert page.client.get(link).status_code == status
    posted = page.client.post(link, data=card())
    assert posted.status_code == status
    assert words in posted.text
    assert page.default_card("cus_2")["id"] == "pm_2"


def test_an_expired_link_is_refused(page: CardPage) -> None:
    page.remind(locale="en")
    link = page.reminder_link()
    page.now = CARD_END + timedelta(days=8)  # the link lives a week past the card's end
    answer = page.client.post(link, data=card())
    assert answer.status_code == 410
    assert "expired" in answer.text
    assert page.default_card("cus_2")["id"] == "pm_2"


def test_an_open_case_of_the_customer_is_retried_with_the_new_card(page: CardPage) -> None:
    page.now = T0 + timedelta(hours=2)
    page.services.engine.handle(page.commands.payment_failed("1", decline_code="insufficient_funds"))
    case_id = Commands.case_id("1")
    link = page.link("cus_1")

    shown = page.client.get(link)
    assert shown.status_code == 200
    assert "Keep your card up to date" in shown.text
    assert "You also have a payment pending" in shown.text
    assert "$19.00" not in shown.text
    assert 'name="outcome"' in shown.text  # the demo may choose how the retry goes

    answer = page.client.post(link, data=card(outcome="ok"))

    assert answer.status_code == 200
    assert "Your card is saved" in answer.text
    assert "We also collected your pending payment of $19.00 for Pro." in answer.text
    case = page.db.check_case(case_id)
    assert case["status"] == "recovered"
    assert [a["trigger"] for a in page.db.attempts(case_id)][-1] == "payment_method"
    assert page.client.get(link).status_code == 410


def test_when_the_open_case_declines_the_new_card_the_link_stays_usable(page: CardPage) -> None:
    page.now = T0 + timedelta(hours=2)
    page.services.engine.handle(page.commands.payment_failed("1", decline_code="insufficient_funds"))
    link = page.link("cus_1")

    answer = page.client.post(link, data=card(outcome="declined"))

    assert answer.status_code == 402
    assert "That card did not work either" in answer.text
    assert page.db.case(Commands.case_id("1"))["status"] == "open"
    assert page.client.get(link).status_code == 200
    assert page.client.post(link, data=card(outcome="ok", last4="1881")).status_code == 200
    assert page.db.check_case(Commands.case_id("1"))["status"] == "recovered"
