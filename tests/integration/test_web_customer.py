"""In-app notices and Twilio webhooks through the real application and store."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from conftest import T0, Commands, Db, EngineFactory
from fastapi.testclient import TestClient
from sqlalchemy import text

from recobra.channels.in_app import InAppChannel
from recobra.domain.messages import ChannelKind
from recobra.engine.commands import ContactPreferencesChanged
from recobra.engine.messenger import Messenger
from recobra.messages.composer import Sender, TemplateComposer
from recobra.messages.links import LinkSigner
from recobra.messages.render import Renderer
from recobra.policyfile import parse_policy
from recobra.settings import Settings
from recobra.store.keys import create_key
from recobra.store.sql import SqlStore
from recobra.web.app import create_app
from recobra.web.services import Services

SECRET = "k" * 40
TWILIO_TOKEN = "twilio-auth-token-for-tests"
PUBLIC = "https://pay.example.com"
POLICY = """\
name = "web"
version = 1
default_policy = "p"
[policies.p]
strategy = "fixed"
max_attempts = 2
max_days = 10
grace_days = 2
final_action = "cancel"
steps = [
  { action = "message", after = "0m", kind = "payment_failed", channels = ["in_app", "voice"] },
  { after = "1d" }, { after = "3d" },
]
"""


class World:
    def __init__(self, client: TestClient, services: Services, messenger: Messenger, db: Db) -> None:
        self.client = client
        self.services = services
        self.messenger = messenger
        self.db = db
        self.now = T0 + timedelta(hours=13)  # 13:00 UTC: outside quiet hours in UTC

    def token(self, customer: str = "cus_1") -> str:
        return self.services.links.token("notices", customer, now=self.now, ttl=timedelta(hours=1))


@pytest.fixture
def world(store: SqlStore, engine_factory: EngineFactory, db: Db, database_url: str) -> Iterator[World]:
    policies = parse_policy(POLICY).policies
    engine = engine_factory(POLICY)
    settings = Settings(
        database_url=database_url,
        link_secret=SECRET,
        public_url=PUBLIC,
        in_app_origins=["https://app.example.com"],
        channel_settings={"sms": {"auth_token": TWILIO_TOKEN}, "voice": {"auth_token": TWILIO_TOKEN}},
    )
    links = LinkSigner(SECRET, PUBLIC)
    holder: dict[str, World] = {}
    services = Services(
        settings=settings, store=store, engine=engine, links=links, clock=lambda: holder["w"].now
    )
    composer = TemplateComposer(Renderer(), links, policies, Sender("Acme", "help@example.com"))
    messenger = Messenger(store, {ChannelKind.IN_APP: InAppChannel()}, composer)
    app = create_app(services)
    with TestClient(app, base_url=PUBLIC) as client:
        holder["w"] = World(client, services, messenger, db)
        yield holder["w"]


def open_case(world: World, commands: Commands) -> None:
    world.services.engine.handle(commands.payment_failed("1", occurred_at=world.now - timedelta(hours=1)))
    world.messenger.dispatch(world.now)


def twilio_signature(url: str, params: dict[str, str]) -> str:
    """Twilio's documented scheme, computed independently of the SDK."""
    payload = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(TWILIO_TOKEN.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def test_the_customer_sees_their_unseen_notice_once(world: World, commands: Commands) -> None:
    open_case(world, commands)

    first = world.client.get(
        "/notices", params={"token": world.token()}, headers={"Origin": "https://app.example.com"}
    )
    assert first.status_code == 200
    assert first.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    notices = first.json()["notices"]
    assert len(notices) == 1
    notice = notices[0]
    assert notice["kind"] == "payment_failed"
    assert notice["title"]
    assert notice["body"]
    assert notice["link"].startswith(f"{PUBLIC}/p/update_payment/")

    seen = world.client.post(f"/notices/{notice['key']}/seen", params={"token": world.token()})
    assert seen.status_code == 204
    assert world.client.get("/notices", params={"token": world.token()}).json()["notices"] == []
    again = world.client.post(f"/notices/{notice['key']}/seen", params={"token": world.token()})
    assert again.status_code == 404
    assert again.headers["content-type"].startswith("application/problem+json")


def test_notices_need_a_valid_token_for_that_customer(world: World, commands: Commands) -> None:
    open_case(world, commands)
    other = world.client.get("/notices", params={"token": world.token("cus_someone_else")})
    assert other.json()["notices"] == []  # a token only ever shows its own customer's notices
    tampered = world.token()[:-3] + "AAA"
    bad = world.client.get("/notices", params={"token": tampered})
    assert bad.status_code == 401
    assert bad.json()["title"] == "Invalid notices token"
    expired = world.services.links.token(
        "notices", "cus_1", now=world.now - timedelta(hours=3), ttl=timedelta(hours=1)
    )
    assert world.client.get("/notices", params={"token": expired}).status_code == 401
    wrong_purpose = world.services.links.token("unsubscribe", "cus_1", now=world.now, ttl=timedelta(hours=1))
    assert world.client.get("/notices", params={"token": wrong_purpose}).status_code == 401
    key = world.db.rows("messages")[0]["key"]
    assert (
        world.client.post(f"/notices/{key}/seen", params={"token": world.token("cus_x")}).status_code == 404
    )


def test_an_unlisted_origin_gets_no_cors_permission(world: World, commands: Commands) -> None:
    open_case(world, commands)
    answer = world.client.get(
        "/notices", params={"token": world.token()}, headers={"Origin": "https://evil.example.net"}
    )
    assert answer.status_code == 200
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_the_banner_script_is_served(world: World) -> None:
    script = world.client.get("/static/recobra-banner.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "data-token" in script.text
    assert 'role", "status"' in script.text


def test_a_signed_stop_reply_stops_sms_and_start_resumes_it(world: World, commands: Commands) -> None:
    open_case(world, commands)
    world.services.engine.handle(ContactPreferencesChanged("evt_pref", world.now, "cus_1", sms_consent=True))
    phone = world.db.rows("customers")[0]["phone"] or "+15005550006"
    url = f"{PUBLIC}/webhooks/twilio/sms"
    for body, stopped in (("Baja.", True), ("START", False)):
        form = {"From": phone, "To": "+15005550001", "Body": body, "MessageSid": f"SM{body[:3]}"}
        answer = world.client.post(
            "/webhooks/twilio/sms",
            content=urlencode(form),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": twilio_signature(url, form),
            },
        )
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/xml")
        prefs = world.db.rows("contact_preferences")
        if world.db.rows("customers")[0]["phone"]:
            assert prefs[0]["sms_stopped"] is stopped


def test_an_unsigned_or_forged_twilio_request_changes_nothing(world: World, commands: Commands) -> None:
    open_case(world, commands)
    form = {"From": "+15005550006", "Body": "STOP", "MessageSid": "SM1"}
    for signature in ("", "forged", twilio_signature(f"{PUBLIC}/webhooks/twilio/other", form)):
        answer = world.client.post(
            "/webhooks/twilio/sms",
            content=urlencode(form),
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature},
        )
        assert answer.status_code == 403
    assert world.db.rows("contact_preferences") == []


def test_pressing_1_on_the_call_queues_the_link_by_sms_once(world: World, commands: Commands) -> None:
    open_case(world, commands)
    voice = next(r for r in world.db.rows("messages") if r["channel"] == "voice")
    url = f"{PUBLIC}/webhooks/twilio/gather?key={voice['key']}"
    form = {"Digits": "1", "CallSid": "CA1"}
    for _ in range(2):  # Twilio may retry: still one SMS
        answer = world.client.post(
            f"/webhooks/twilio/gather?key={voice['key']}",
            content=urlencode(form),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": twilio_signature(url, form),
            },
        )
        assert answer.status_code == 200
        assert "<Say" in answer.text
    sms = [r for r in world.db.rows("messages") if r["channel"] == "sms"]
    assert len(sms) == 1
    assert sms[0]["key"] == f"{voice['key']}:sms"
    assert sms[0]["data"]["context"]["requested_by_customer"] == "1"

    other = {"Digits": "2", "CallSid": "CA2"}
    answer = world.client.post(
        f"/webhooks/twilio/gather?key={voice['key']}",
        content=urlencode(other),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(url, other),
        },
    )
    assert answer.status_code == 200
    assert len([r for r in world.db.rows("messages") if r["channel"] == "sms"]) == 1


def api_key(world: World) -> str:
    _, plaintext = create_key(world.services.store.engine, "tests", world.now)
    return plaintext


def test_a_provider_bounce_marks_the_message_bounced(world: World, commands: Commands) -> None:
    open_case(world, commands)
    notice = next(r for r in world.db.rows("messages") if r["status"] == "sent")
    headers = {"Authorization": f"Bearer {api_key(world)}"}

    answer = world.client.post(
        "/api/v1/messages/bounces",
        headers=headers,
        json={"key": notice["key"], "reason": "550 mailbox unavailable"},
    )

    assert answer.status_code == 200
    assert answer.json() == {"key": notice["key"], "status": "bounced"}
    row = next(r for r in world.db.rows("messages") if r["key"] == notice["key"])
    assert (row["status"], row["reason"]) == ("bounced", "bounced: 550 mailbox unavailable")
    missing = world.client.post(
        "/api/v1/messages/bounces", headers=headers, json={"provider_id": "nope", "reason": "x"}
    )
    assert missing.status_code == 404
    both = world.client.post(
        "/api/v1/messages/bounces", headers=headers, json={"provider_id": "a", "key": "b", "reason": "x"}
    )
    assert both.status_code == 422
    assert both.headers["content-type"].startswith("application/problem+json")
    unauthenticated = world.client.post(
        "/api/v1/messages/bounces", json={"key": notice["key"], "reason": "x"}
    )
    assert unauthenticated.status_code == 401


def test_twilio_reports_an_undelivered_sms_as_bounced(world: World, commands: Commands, db: Db) -> None:
    open_case(world, commands)
    key = next(r["key"] for r in db.rows("messages") if r["status"] == "sent")
    with world.services.store.unit_of_work() as uow:
        uow.conn.execute(text("update messages set provider_id = 'SM123' where key = :k"), {"k": key})
        uow.commit()
    url = f"{PUBLIC}/webhooks/twilio/status"
    for status in ("delivered", "undelivered"):
        form = {"MessageSid": "SM123", "MessageStatus": status, "ErrorCode": "30003"}
        answer = world.client.post(
            "/webhooks/twilio/status",
            content=urlencode(form),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": twilio_signature(url, form),
            },
        )
        assert answer.status_code == 204
        row = next(r for r in db.rows("messages") if r["key"] == key)
        assert row["status"] == ("sent" if status == "delivered" else "bounced")
    assert "twilio undelivered (error 30003)" in row["reason"]
