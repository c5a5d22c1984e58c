"""The cancel and reactivate pages through the real application, engine and store."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from conftest import T0, TEST_POLICY, Commands, Db, EngineFactory, web_services
from fastapi.testclient import TestClient

from recobra.domain.model import Interval, Plan, Subscription, SubscriptionStatus
from recobra.domain.money import Money
from recobra.engine.commands import SubscriptionUpdated
from recobra.engine.relay import EventRelay
from recobra.engine.service import Engine
from recobra.gateways.simulated import SimulatedGateway
from recobra.messages.composer import Sender, TemplateComposer
from recobra.messages.links import LinkExpired
from recobra.messages.render import Renderer
from recobra.ports import DeliveryResult, DeliveryStatus, GatewayError, OutgoingMessage
from recobra.store.sql import SqlStore
from recobra.web.app import create_app
from recobra.web.services import Services

SECRET = "l" * 40
PUBLIC = "https://pay.example.com"
CASE = Commands.case_id("1")

POLICY = (
    TEST_POLICY
    + """
[notifications]
subscription_canceled = { channels = ["email"] }

[save_offers]
too_expensive = { offer = "discount", percent = 25, cycles = 3 }
not_using = { offer = "pause", months = 2 }
temporary = { offer = "pause", months = 1 }
missing_feature = { offer = "downgrade", plan = "basic" }
switching = { offer = "none" }
"""
)


class Journey:
    def __init__(self, client: TestClient, services: Services, db: Db, gateway: SimulatedGateway) -> None:
        self.client = client
        self.services = services
        self.db = db
        self.gateway = gateway
        self.now = T0 + timedelta(hours=2)

    def link(
        self, purpose: str = "cancel", subject: str = "sub_1", ttl: timedelta = timedelta(days=7)
    ) -> str:
        token = self.services.links.token(purpose, subject, now=self.now - timedelta(hours=1), ttl=ttl)
        return f"/p/{purpose}/{token}"

    def surveys(self) -> list[dict[str, object]]:
        return self.db.rows("exit_surveys", order_by=("id",))

    def changes(self) -> list[dict[str, object]]:
        return self.db.rows("subscription_events", order_by=("id",))


@pytest.fixture
def journey(
    store: SqlStore,
    engine_factory: EngineFactory,
    db: Db,
    database_url: str,
    commands: Commands,
    gateway: SimulatedGateway,
) -> Iterator[Journey]:
    engine = engine_factory(POLICY)
    holder: dict[str, Journey] = {}
    services = web_services(
        store,
        engine,
        database_url,
        secret=SECRET,
        public_url=PUBLIC,
        clock=lambda: holder["j"].now,
        company_name="Acme",
        support_email="help@acme.example",
    )
    # A customer in dunning (an open case), and a cheaper plan known from another customer.
    engine.handle(commands.payment_failed("1", decline_code="insufficient_funds", network_code="51"))
    basic = Plan("basic", "Basic", Interval.MONTH, Money(900, "USD"))
    engine.handle(
        SubscriptionUpdated(
            "evt_basic",
            T0,
            commands.customer("9"),
            Subscription("sub_9", "cus_9", basic, SubscriptionStatus.ACTIVE, T0 - timedelta(days=30)),
        )
    )
    with TestClient(create_app(services), base_url=PUBLIC) as client:
        holder["j"] = Journey(client, services, db, gateway)
        yield holder["j"]


def run_out(engine: Engine) -> None:
    """Every retry declines; the final action (cancel) runs on day 12."""
    for day in (1, 3, 6, 12):
        engine.tick(T0 + timedelta(days=day))


def actions(gateway: SimulatedGateway) -> list[tuple[str, str]]:
    return [(str(a.kind), a.target_id) for a in gateway.subscription_actions()]


REASONS = (
    "too_expensive",
    "not_using",
    "missing_feature",
    "switching",
    "technical_problems",
    "temporary",
    "other",
)
"""Every exit reason the page offers, spelt out (not read from the code under test)."""


def form(reason: str, step: str = "reason", **extra: str) -> dict[str, str]:
    return {"step": step, "reason": reason, "comment": "", **extra}


def test_the_reason_form_is_labelled_and_in_the_customers_language(journey: Journey) -> None:
    page = journey.client.get(journey.link())
    assert page.status_code == 200
    assert 'lang="en"' in page.text
    assert "Cancel your subscription" in page.text
    assert "$19.00" in page.text
    for reason in REASONS:
        assert f'<label class="choice" for="reason-{reason}">' in page.text
    assert 'for="anonymous"' in page.text
    assert page.headers["Cache-Control"] == "no-store"
    spanish = journey.client.get(journey.link() + "?lang=es")
    assert 'lang="es"' in spanish.text
    assert "¿Por qué te vas?" in spanish.text


def test_declining_the_offer_cancels_stops_dunning_and_confirms(journey: Journey) -> None:
    link = journey.link()
    offer = journey.client.post(link, data=form("too_expensive", comment="a bit much"))
    assert offer.status_code == 200
    assert "25% off your next 3 invoices" in offer.text
    assert journey.db.subscription("sub_1")["status"] == "past_due"  # nothing changed yet

    done = journey.client.post(
        link, data=form("too_expensive", "offer", comment="a bit much", decision="decline")
    )

    assert done.status_code == 200
    text = done.text
    for words in (
        "Your subscription has been canceled",
        "You won&#39;t be charged again.",
        "We&#39;ll leave you in peace.",
        "What happens to your data",
        "May 2, 2025",
        "Reactivate my subscription",
        "Thanks again",
    ):
        assert words in text, words
    sub = journey.db.subscription("sub_1")
    assert sub["status"] == "canceled"
    assert sub["canceled_at"] == journey.now
    assert journey.db.case(CASE)["status"] == "canceled"
    journey.db.check_case(CASE)
    assert actions(journey.gateway) == [("cancel", "sub_1")]  # the gateway ends the charges
    messages = journey.db.rows("messages", kind="subscription_canceled")
    assert [m["channel"] for m in messages] == ["email"]
    assert messages[0]["data"]["context"]["surveyed"] == "yes"  # the email does not ask again
    # Dunning messages still queued will not go: the customer is suppressed.
    assert journey.db.scalar("SELECT suppressed FROM contact_preferences WHERE customer_id = 'cus_1'")
    (survey,) = journey.surveys()
    assert (survey["customer_id"], survey["subscription_id"], survey["plan_id"]) == (
        "cus_1",
        "sub_1",
        "plan_usd_1900",
    )
    assert (survey["reason"], survey["comment"], survey["offer"], survey["outcome"]) == (
        "too_expensive",
        "a bit much",
        "discount",
        "canceled",
    )
    assert [c["kind"] for c in journey.changes()] == ["canceled"]
    # The reactivate link on the page works.
    back = re.search(r'href="(/p/reactivate/[^"]+)"', text)
    assert back is not None
    assert journey.client.get(back.group(1).replace("&amp;", "&")).status_code == 200


def test_a_reused_link_gets_a_clear_page_and_changes_nothing(journey: Journey) -> None:
    link = journey.link()
    journey.client.post(link, data=form("switching", "confirm", decision="decline"))
    before = journey.db.counts()

    again = journey.client.post(link, data=form("switching", "confirm", decision="decline"))
    page = journey.client.get(link)

    assert again.status_code == page.status_code == 410
    assert "This link was already used" in page.text
    assert "Your subscription is canceled." in page.text
    assert journey.db.counts() == before


def test_without_an_offer_the_customer_confirms_then_cancels(journey: Journey) -> None:
    link = journey.link()
    confirm = journey.client.post(link, data=form("switching"))
    assert "Cancel your subscription?" in confirm.text
    assert 'value="decline"' in confirm.text
    assert journey.db.subscription("sub_1")["status"] == "past_due"
    journey.client.post(link, data=form("switching", "confirm", decision="decline"))
    assert journey.db.subscription("sub_1")["status"] == "canceled"
    assert journey.surveys()[0]["offer"] is None


@pytest.mark.parametrize("reason", REASONS)
def test_every_reason_completes_the_journey(journey: Journey, reason: str) -> None:
    link = journey.link()
    data = form(reason, comment="because" if reason == "other" else "")
    first = journey.client.post(link, data=data)
    assert first.status_code == 200
    step = "offer" if 'value="accept"' in first.text else "confirm"
    done = journey.client.post(link, data={**data, "step": step, "decision": "decline"})
    assert "Your subscription has been canceled" in done.text
    (survey,) = journey.surveys()
    assert survey["reason"] == reason
    assert survey["outcome"] == "canceled"


def test_an_anonymous_answer_is_not_linked_to_the_customer(journey: Journey) -> None:
    link = journey.link()
    journey.client.post(
        link, data=form("other", "confirm", comment="moving abroad", anonymous="yes", decision="decline")
    )
    (survey,) = journey.surveys()
    assert (survey["customer_id"], survey["subscription_id"]) == (None, None)
    assert (survey["plan_id"], survey["reason"], survey["comment"]) == (
        "plan_usd_1900",
        "other",
        "moving abroad",
    )
    # Nor through the engine's records of the cancellation.
    for row in journey.changes() + journey.db.events(CASE):
        assert "other" not in row["reason"]
        assert "moving abroad" not in row["reason"]


def test_accepting_a_pause(journey: Journey) -> None:
    link = journey.link()
    offer = journey.client.post(link, data=form("not_using"))
    assert "pause your subscription for 2 months" in offer.text
    done = journey.client.post(link, data=form("not_using", "offer", decision="accept"))
    assert done.status_code == 200
    assert "Thank you for staying" in done.text
    assert "May 3, 2025" in done.text
    sub = journey.db.subscription("sub_1")
    assert sub["status"] == "paused"
    assert sub["paused_until"] == journey.now.replace(month=5)
    assert actions(journey.gateway) == [("pause", "sub_1")]
    (change,) = journey.changes()
    assert change["kind"] == "paused"
    assert change["data"] == {"resumes_at": "2025-05-03T14:00:00+00:00"}
    (survey,) = journey.surveys()
    assert (survey["offer"], survey["outcome"]) == ("pause", "saved")
    assert not journey.db.rows("messages", kind="subscription_canceled")


def test_accepting_a_discount(journey: Journey) -> None:
    link = journey.link()
    journey.client.post(link, data=form("too_expensive"))
    done = journey.client.post(link, data=form("too_expensive", "offer", decision="accept"))
    assert "25% off your next 3 invoices" in done.text
    sub = journey.db.subscription("sub_1")
    assert (sub["status"], sub["discount_percent"], sub["discount_cycles"]) == ("past_due", 25, 3)
    (change,) = journey.changes()
    assert (change["kind"], change["data"]) == ("discounted", {"percent_off": 25, "invoices": 3})
    assert journey.surveys()[0]["offer"] == "discount"


def test_accepting_a_cheaper_plan(journey: Journey) -> None:
    link = journey.link()
    offer = journey.client.post(link, data=form("missing_feature"))
    assert "Switch to Basic for $9.00 instead of $19.00" in offer.text
    done = journey.client.post(link, data=form("missing_feature", "offer", decision="accept"))
    assert "you are now on Basic at $9.00" in done.text
    assert journey.db.subscription("sub_1")["plan_id"] == "basic"
    (change,) = journey.changes()
    assert change["data"] == {"from_plan": "plan_usd_1900", "to_plan": "basic"}
    assert journey.surveys()[0]["offer"] == "downgrade"


def test_a_double_submit_changes_things_once(journey: Journey) -> None:
    link = journey.link()
    journey.client.post(link, data=form("not_using", "offer", decision="accept"))
    # The same event reaches the engine again (say, a second request that passed the
    # used-link check at the same moment): a duplicate, nothing more happens.
    from recobra.engine.commands import SubscriptionPaused  # noqa: PLC0415

    nonce = journey.db.rows("used_links")[0]["nonce"]
    result = journey.services.engine.customer_change(
        SubscriptionPaused(f"hosted:cancel:{nonce}", journey.now, "sub_1", journey.now + timedelta(days=9))
    )
    assert result.duplicate
    assert len(journey.changes()) == 1
    assert len(journey.surveys()) == 1


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"reason": ""}, "reason", "Choose the reason that fits best."),
        ({"reason": "bored"}, "reason", "Choose the reason that fits best."),
        ({"reason": "other", "comment": "   "}, "comment", "since you chose “something else”"),
        ({"reason": "switching", "comment": "x" * 2001}, "comment", "under 2,000 characters"),
        ({"reason": "switching", "comment": "x" * 20000}, "comment", "under 2,000 characters"),
        ({"reason": "y" * 500}, "reason", "Choose the reason that fits best."),
        ({"reason": "not_using", "step": "offer", "decision": "maybe"}, "decision", "Choose one of the two"),
    ],
)
def test_bad_input_is_named_and_changes_nothing(
    journey: Journey, data: dict[str, str], field: str, message: str
) -> None:
    before = journey.db.counts()
    answer = journey.client.post(journey.link(), data={"step": "reason", "comment": "", **data})
    assert answer.status_code == 422
    assert message in answer.text
    assert 'role="alert"' in answer.text
    assert f'href="#{field}"' in answer.text
    assert journey.db.counts() == before
    assert journey.db.subscription("sub_1")["status"] == "past_due"


def test_tampered_expired_and_wrong_purpose_links_change_nothing(journey: Journey) -> None:
    before = journey.db.counts()
    good = journey.link()
    token = good.rsplit("/", 1)[1]
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    expired = journey.link(ttl=timedelta(minutes=30))
    other = journey.link("update_payment", CASE).replace("/p/update_payment/", "/p/cancel/")
    for url, status, words in (
        (tampered, 404, "This link is not valid"),
        (expired, 410, "This link has expired"),
        (other, 404, "This link is not valid"),
        (f"/p/reactivate/{token}", 404, "This link is not valid"),
    ):
        for method in ("get", "post"):
            page = (
                getattr(journey.client, method)(url, data=form("switching", "confirm", decision="decline"))
                if method == "post"
                else journey.client.get(url)
            )
            assert page.status_code == status, (url, method)
            assert words in page.text
    assert journey.db.counts() == before
    assert journey.db.subscription("sub_1")["status"] == "past_due"


def test_a_gateway_error_changes_nothing(journey: Journey, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kw: object) -> None:
        raise GatewayError("gateway down")

    monkeypatch.setattr(journey.gateway, "cancel_subscription", refuse)
    before = journey.db.counts()
    page = journey.client.post(journey.link(), data=form("switching", "confirm", decision="decline"))
    assert page.status_code == 503
    assert "Nothing has changed" in page.text
    assert journey.db.counts() == before


def test_older_links_naming_the_case_or_the_customer_find_the_subscription(journey: Journey) -> None:
    for subject in (CASE, "cus_1"):
        page = journey.client.get(journey.link(subject=subject))
        assert page.status_code == 200
        assert "$19.00" in page.text


def test_after_a_cancellation_elsewhere_the_link_asks_only_the_survey(
    journey: Journey, commands: Commands
) -> None:
    journey.services.engine.handle(commands.subscription_canceled("1", at=journey.now))
    link = journey.link()
    page = journey.client.get(link)
    assert "Help us improve" in page.text
    done = journey.client.post(link, data=form("technical_problems", comment="slow"))
    assert "Thank you" in done.text
    (survey,) = journey.surveys()
    assert (survey["outcome"], survey["offer"]) == ("canceled", None)


# ---------------------------------------------------------------- reactivation


def test_reactivation_after_a_cancellation(journey: Journey) -> None:
    journey.client.post(journey.link(), data=form("switching", "confirm", decision="decline"))
    journey.now += timedelta(days=3)
    link = journey.link("reactivate")
    page = journey.client.get(link)
    assert "Reactivate Pro ($19.00) in one step." in page.text
    done = journey.client.post(link)
    assert done.status_code == 200
    assert "Welcome back!" in done.text
    sub = journey.db.subscription("sub_1")
    assert (sub["status"], sub["canceled_at"]) == ("active", None)
    assert not journey.db.scalar("SELECT suppressed FROM contact_preferences WHERE customer_id = 'cus_1'")
    assert [c["kind"] for c in journey.changes()] == ["canceled", "reactivated"]
    assert journey.client.post(link).status_code == 410  # spent


def test_reactivation_after_a_pause(journey: Journey) -> None:
    journey.client.post(journey.link(), data=form("not_using", "offer", decision="accept"))
    link = journey.link("reactivate")
    assert "paused until May 3, 2025" in journey.client.get(link).text
    journey.client.post(link)
    sub = journey.db.subscription("sub_1")
    assert (sub["status"], sub["paused_until"]) == ("active", None)


def test_reactivation_retries_an_unpaid_invoice_and_succeeds(journey: Journey, commands: Commands) -> None:
    engine = journey.services.engine
    run_out(engine)  # retries declined, then the final action: canceled
    assert journey.db.case(CASE)["status"] == "final_action_done"
    assert journey.db.subscription("sub_1")["status"] == "canceled"
    # The customer's card works again (a new default card on file).
    engine.handle(commands.payment_method_updated("1", at=T0 + timedelta(days=21), token="tok_sim_ok"))
    journey.now = T0 + timedelta(days=22)
    link = journey.link("reactivate")
    assert "$19.00 is still owed from before" in journey.client.get(link).text

    done = journey.client.post(link)

    assert "We collected $19.00" in done.text
    case = journey.db.check_case(CASE)
    assert case["status"] == "recovered"
    assert journey.db.invoice("in_1")["status"] == "paid"
    assert journey.db.subscription("sub_1")["status"] == "active"
    assert journey.changes()[-1]["data"]["paid_invoice"] == "in_1"


def test_reactivation_with_a_declined_card_offers_the_update_payment_page(journey: Journey) -> None:
    engine = journey.services.engine
    run_out(engine)
    journey.now = T0 + timedelta(days=22)
    link = journey.link("reactivate")

    declined = journey.client.post(link)

    assert declined.status_code == 402
    assert "The payment did not go through" in declined.text
    case = journey.db.check_case(CASE)
    assert case["status"] == "exhausted"
    assert case["next_action"] == "final_action"
    assert case["next_action_at"] == journey.now + timedelta(days=2)  # the policy's grace
    assert journey.db.subscription("sub_1")["status"] == "canceled"  # not back until paid
    fix = re.search(r'href="(/p/update_payment/[^"]+)"', declined.text)
    assert fix is not None
    update = journey.client.get(fix.group(1).replace("&amp;", "&"))
    assert "Update your payment method" in update.text
    # Submitting again shows the same, and charges nothing more.
    attempts = len(journey.db.attempts(CASE))
    assert journey.client.post(link).status_code == 402
    assert len(journey.db.attempts(CASE)) == attempts


def test_an_active_subscription_has_nothing_to_reactivate(journey: Journey) -> None:
    page = journey.client.get(journey.link("reactivate", "sub_9"))
    assert "already active" in page.text
    assert journey.client.post(journey.link("reactivate", "sub_9")).status_code == 200
    assert journey.changes() == []


class _Receiver:
    kind = "webhook"

    def __init__(self) -> None:
        self.got: list[OutgoingMessage] = []

    def send(self, message: OutgoingMessage) -> DeliveryResult:
        self.got.append(message)
        return DeliveryResult(DeliveryStatus.SENT)


def test_the_changes_reach_the_operators_webhook(journey: Journey) -> None:
    journey.client.post(journey.link(), data=form("too_expensive", "offer", decision="accept"))
    receiver = _Receiver()
    EventRelay(journey.services.store, receiver).relay(journey.now)
    kinds = [m.kind for m in receiver.got]
    assert kinds[-1] == "subscription.discounted"
    last = receiver.got[-1]
    assert last.key == "sub_evt_1"
    assert last.data is not None
    assert last.data["subscription_id"] == "sub_1"
    assert last.data["details"] == {"percent_off": 25, "invoices": 3}
    again = _Receiver()
    EventRelay(journey.services.store, again).relay(journey.now)
    assert again.got == []  # delivered once


def test_the_confirmation_email_links_back_and_does_not_ask_the_survey_again(journey: Journey) -> None:
    journey.client.post(journey.link(), data=form("switching", "confirm", decision="decline"))
    (row,) = journey.db.rows("messages", kind="subscription_canceled")
    composer = TemplateComposer(
        Renderer(),
        journey.services.links,
        journey.services.engine.policies,
        Sender("Acme", "help@acme.example"),
    )
    with journey.services.store.unit_of_work() as uow:
        (bundle,) = uow.load_messages([row["id"]], journey.now)
    context = composer.context(bundle, journey.now)
    assert context.survey_url is None
    assert context.reactivate_url is not None
    token = context.reactivate_url.rsplit("/", 1)[1]
    assert journey.services.links.verify("reactivate", token, now=journey.now).subject == "sub_1"
    assert context.data_kept_until is not None


def test_the_way_back_stays_open_as_long_as_the_data_is_kept(journey: Journey) -> None:
    journey.client.post(journey.link(), data=form("switching", "confirm", decision="decline"))
    (row,) = journey.db.rows("messages", kind="subscription_canceled")
    composer = TemplateComposer(
        Renderer(),
        journey.services.links,
        journey.services.engine.policies,
        Sender("Acme", "help@acme.example", data_retention_days=90),
    )
    with journey.services.store.unit_of_work() as uow:
        (bundle,) = uow.load_messages([row["id"]], journey.now)
    context = composer.context(bundle, journey.now)
    assert context.reactivate_url is not None
    token = context.reactivate_url.rsplit("/", 1)[1]
    links = journey.services.links
    assert links.verify("reactivate", token, now=journey.now + timedelta(days=89)).subject == "sub_1"
    with pytest.raises(LinkExpired):
        links.verify("reactivate", token, now=journey.now + timedelta(days=91))
