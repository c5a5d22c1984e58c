"""Customer messages end to end on a real database: the engine queues them, the
Messenger sends them through real channels (SMTP against an aiosmtpd server, in-app,
files for SMS, push and voice) and records every outcome in the outbox.

Timings are exact: the policies are "fixed" and every dispatch is given its ``now``.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email import policy as email_policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from conftest import T0, Commands, Db, fixed_policy
from sqlalchemy import text

from recobra.channels.email import SmtpEmailChannel
from recobra.channels.file import FileChannel, file_name
from recobra.channels.in_app import InAppChannel
from recobra.domain.messages import ChannelKind, DeliveryRules, MessageStatus
from recobra.domain.model import Interval, PaymentMethod, Plan, Subscription, SubscriptionStatus
from recobra.domain.money import Money
from recobra.domain.policy import PolicySet
from recobra.domain.schedule import NoHolidays
from recobra.engine.commands import (
    ContactPreferencesChanged,
    PaymentFailed,
    PushSubscribed,
    SmsReceived,
    SubscriptionUpdated,
)
from recobra.engine.messenger import DispatchReport, Messenger
from recobra.engine.service import Engine
from recobra.gateways.simulated import SimulatedGateway
from recobra.messages.composer import Sender, TemplateComposer
from recobra.messages.links import LinkSigner
from recobra.messages.render import Renderer
from recobra.policyfile import parse_policy
from recobra.store.sql import SqlStore

DAY, HOUR, MINUTE = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)
LINK_SECRET = "integration-link-secret-0123456789abcdef"
BASE_URL = "https://pay.example.com"
SENDER = "Acme Billing <billing@acme.test>"
COMPANY = Sender("Acme", "help@acme.test")
LINK_RE = re.compile(r"https://pay\.example\.com/p/(?P<purpose>[a-z_]+)/(?P<token>[A-Za-z0-9_.-]+)")

NOTIFICATIONS = """
[notifications]
payment_recovered = { channels = ["email"] }
payment_method_updated = { channels = ["email"] }
subscription_canceled = { channels = ["email"] }
win_back = { channels = ["email"], delay = "30d" }
"""


def policy(messages: str, *, extra: str = NOTIFICATIONS) -> str:
    """A "fixed" policy (retries at +1d, +3d, +6d; final action at +12d) with these
    message steps (TOML inline tables, one per line)."""
    return fixed_policy(*messages.strip().splitlines(), name="messages", extra=extra)


DUNNING = policy(
    """
{ action = "message", after = "0m", kind = "payment_failed", channels = ["email", "in_app"] }
{ action = "message", after = "2d", kind = "payment_reminder", channels = ["email"] }
{ action = "message", after = "5d", kind = "payment_reminder", channels = ["email"] }
{ action = "message", before_final = "2d", kind = "final_notice", channels = ["email"] }
"""
)
FINAL_AT = T0 + 12 * DAY  # max_days 10 + grace_days 2


def key(case_id: str, step: str, channel: str) -> str:
    return f"{case_id}:{step}:{channel}"


# --------------------------------------------------------------------------- SMTP server


@dataclass
class SmtpSink:
    """An aiosmtpd handler that keeps every message it accepts and refuses recipients
    on demand: ``refuse`` always, ``refuse_next`` once per queued reply."""

    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: list[tuple[tuple[str, ...], bytes]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    refuse_next: dict[str, list[str]] = field(default_factory=dict)
    rcpt_seen: list[str] = field(default_factory=list)
    data_delay_s: float = 0.0
    """Seconds to wait before answering each DATA (a slow server)."""

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self.lock:
            self.rcpt_seen.append(address)
            if address in self.refuse:
                return self.refuse[address]
            queued = self.refuse_next.get(address)
            if queued:
                return queued.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content
        assert isinstance(content, bytes)
        with self.lock:
            self.received.append((tuple(envelope.rcpt_tos), content))
        if self.data_delay_s:
            await asyncio.sleep(self.data_delay_s)
        return "250 2.0.0 Message accepted"

    def messages(self) -> list[EmailMessage]:
        with self.lock:
            raw = [content for _, content in self.received]
        parsed = []
        for content in raw:
            message = BytesParser(policy=email_policy.default).parsebytes(content)
            assert isinstance(message, EmailMessage)
            parsed.append(message)
        return parsed

    def sent_keys(self) -> list[str]:
        return [str(m["X-Recobra-Key"]) for m in self.messages()]

    def by_key(self, message_key: str) -> EmailMessage:
        found = [m for m in self.messages() if m["X-Recobra-Key"] == message_key]
        assert len(found) == 1, f"{len(found)} emails with key {message_key}: {self.sent_keys()}"
        return found[0]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink(port=_free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


# --------------------------------------------------------------------------- the messenger


def as_policies(policy_text: str | PolicySet) -> PolicySet:
    if isinstance(policy_text, PolicySet):
        return policy_text
    return parse_policy(policy_text, "<test policy>").policies


MessengerFactory = Callable[..., Messenger]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    return tmp_path / "outbox"


@pytest.fixture
def messenger_factory(store: SqlStore, smtp: SmtpSink, files: Path) -> MessengerFactory:
    """``messenger_factory(policy_text, *, store=..., rules=..., worker_id=..., batch_size=...)``."""

    def make(
        policy_text: str | PolicySet = DUNNING,
        *,
        store: SqlStore = store,
        rules: DeliveryRules | None = None,
        worker_id: str = "messenger-1",
        batch_size: int = 200,
    ) -> Messenger:
        policies = as_policies(policy_text)
        composer = TemplateComposer(Renderer(), LinkSigner(LINK_SECRET, BASE_URL), policies, COMPANY)
        channels = {
            ChannelKind.EMAIL: SmtpEmailChannel(
                "127.0.0.1", smtp.port, sender=SENDER, timeout=10.0, now=lambda: T0
            ),
            ChannelKind.IN_APP: InAppChannel(),
            ChannelKind.SMS: FileChannel(files),
            ChannelKind.PUSH: FileChannel(files),
            ChannelKind.VOICE: FileChannel(files),
        }
        return Messenger(store, channels, composer, rules=rules, worker_id=worker_id, batch_size=batch_size)

    return make


@dataclass
class World:
    """The engine and the messenger on one policy, and the database reader."""

    engine: Engine
    messenger: Messenger
    db: Db
    commands: Commands
    smtp: SmtpSink
    files: Path

    def handle(self, *commands: Any) -> None:
        for command in commands:
            self.engine.handle(command)

    def dispatch(self, now: datetime) -> DispatchReport:
        return self.messenger.dispatch(now)

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        return self.db.rows("messages", order_by=("id",), **where)

    def row(self, message_key: str) -> dict[str, Any]:
        rows = self.rows(key=message_key)
        assert len(rows) == 1, f"no message {message_key}: {[r['key'] for r in self.rows()]}"
        return rows[0]

    def statuses(self) -> dict[str, str]:
        return {r["key"]: r["status"] for r in self.rows()}

    def execute(self, sql: str, **params: Any) -> None:
        """Change the database directly (what another service, or the API, would do)."""
        with self.db.store.engine.begin() as conn:
            conn.execute(text(sql), params)

    def sms_file(self, message_key: str) -> Path:
        return self.files / file_name(message_key, "txt")


WorldFactory = Callable[..., World]


@pytest.fixture
def world_factory(
    store: SqlStore,
    gateway: SimulatedGateway,
    messenger_factory: MessengerFactory,
    db: Db,
    commands: Commands,
    smtp: SmtpSink,
    files: Path,
) -> WorldFactory:
    def make(policy_text: str | PolicySet = DUNNING, *, rules: DeliveryRules | None = None) -> World:
        engine = Engine(store, gateway, as_policies(policy_text), NoHolidays(), worker_id="engine-1")
        return World(engine, messenger_factory(policy_text, rules=rules), db, commands, smtp, files)

    return make


@pytest.fixture
def world(world_factory: WorldFactory) -> World:
    return world_factory()


def failed(
    commands: Commands,
    key_: str,
    *,
    locale: str = "en",
    timezone: str = "UTC",
    country: str = "US",
    phone: str | None = None,
    currency: str = "USD",
    amount: int = 1900,
    token: str = "tok_sim_decline_do_not_honor",
    occurred_at: datetime | None = None,
) -> PaymentFailed:
    cmd = commands.payment_failed(
        key_,
        timezone=timezone,
        country=country,
        currency=currency,
        amount=amount,
        token=token,
        occurred_at=occurred_at,
    )
    return replace(cmd, customer=replace(cmd.customer, locale=locale, phone=phone))


def preferences(commands: Commands, key_: str, at: datetime, **values: bool) -> ContactPreferencesChanged:
    return ContactPreferencesChanged(
        event_id=commands.event_id(), occurred_at=at, customer_id=f"cus_{key_}", **values
    )


def consenting(
    commands: Commands, key_: str, **consent: bool
) -> tuple[PaymentFailed, ContactPreferencesChanged]:
    """A failed payment of a customer with a phone, and the consent they gave before it."""
    return failed(commands, key_, phone=PHONE), preferences(commands, key_, T0, **consent)


def links(text_: str) -> dict[str, str]:
    """purpose -> token of every signed link in a text."""
    return {m["purpose"]: m["token"] for m in LINK_RE.finditer(text_)}


def parts(message: EmailMessage) -> tuple[str, str]:
    """The (text, html) alternatives of a multipart message."""
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert plain is not None
    assert html is not None
    return str(plain.get_content()), str(html.get_content())


# =========================================================================== 1. dunning messages


def test_a_failed_payment_queues_the_policys_message_steps(world: World):
    world.handle(failed(world.commands, "1"))

    case = Commands.case_id("1")
    rows = world.rows()
    assert [(r["key"], r["kind"], r["status"], r["due_at"]) for r in rows] == [
        (key(case, "m0", "email"), "payment_failed", "scheduled", T0),
        (key(case, "m0", "in_app"), "payment_failed", "scheduled", T0),
        (key(case, "m1", "email"), "payment_reminder", "scheduled", T0 + 2 * DAY),
        (key(case, "m2", "email"), "payment_reminder", "scheduled", T0 + 5 * DAY),
        (key(case, "m3", "email"), "final_notice", "scheduled", FINAL_AT - 2 * DAY),
    ]
    assert all(r["attempts"] == 0 and r["sent_at"] is None for r in rows)
    # A duplicate event queues nothing twice.
    world.handle(failed(world.commands, "1"))
    assert len(world.rows()) == 5


def test_the_first_notice_goes_out_by_smtp_in_spanish_with_a_signed_link(world: World):
    world.handle(
        failed(
            world.commands,
            "es",
            locale="es",
            timezone="Europe/Madrid",
            country="ES",
            currency="EUR",
            amount=1950,
        )
    )
    case = Commands.case_id("es")
    assert world.dispatch(T0 - timedelta(seconds=1)).claimed == 0

    report = world.dispatch(T0)

    assert (report.claimed, report.sent, report.failed) == (2, 2, 0)
    assert report.by_kind_channel == {"payment_failed/email": 1, "payment_failed/in_app": 1}
    email_key = key(case, "m0", "email")
    message = world.smtp.by_key(email_key)
    assert len(world.smtp.received) == 1
    assert world.smtp.received[0][0] == ("es@example.com",)
    assert message["To"] == "es@example.com"
    assert message["From"] == SENDER
    assert message["Subject"] == "No pudimos procesar tu pago de Pro"
    assert message["Content-Language"] == "es"
    plain, html = parts(message)
    assert plain.startswith("Hola, Customer es:")
    assert "19,50\xa0€" in plain
    assert "19,50\xa0€" in html or "19,50&nbsp;€" in html
    assert "3 de marzo de 2025" in plain  # the failure, in the customer's words
    # The signed fix link: genuine, for this case and this message, valid for weeks.
    found = links(plain)
    assert set(found) >= {"update_payment", "unsubscribe"}
    signer = LinkSigner(LINK_SECRET, BASE_URL)
    fix = signer.verify("update_payment", found["update_payment"], now=T0 + 20 * DAY)
    assert fix.subject == case
    assert fix.extra["message"] == email_key
    assert fix.issued_at == T0
    assert found["update_payment"] in html
    # One-click unsubscribe (RFC 8058), signed for the customer.
    unsubscribe = re.fullmatch(r"<(.+)>", str(message["List-Unsubscribe"]))
    assert unsubscribe is not None
    match = LINK_RE.fullmatch(unsubscribe.group(1))
    assert match is not None
    assert match["purpose"] == "unsubscribe"
    assert signer.verify("unsubscribe", match["token"], now=T0).subject == "cus_es"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    row = world.row(email_key)
    assert (row["status"], row["attempts"], row["sent_at"], row["due_at"]) == ("sent", 1, T0, None)
    assert row["provider_id"] == message["Message-ID"]
    assert (row["claimed_by"], row["claim_expires_at"]) == (None, None)
    # The in-app notice is the row itself: its rendered text is stored with it.
    in_app = world.row(key(case, "m0", "in_app"))
    assert (in_app["status"], in_app["sent_at"]) == ("sent", T0)
    assert in_app["data"]["kind"] == "payment_failed"
    assert in_app["data"]["subject"]
    assert re.search(r"19,50\s€", in_app["data"]["text"])  # one line: any space
    assert LINK_RE.fullmatch(str(in_app["data"]["link"]))
    # Nothing more is due now.
    assert world.dispatch(T0).claimed == 0
    assert len(world.smtp.received) == 1


def test_reminders_go_out_at_their_offsets_and_the_final_notice_carries_its_date(world: World):
    world.handle(
        failed(world.commands, "es", locale="es", timezone="Europe/Madrid", country="ES", currency="EUR")
    )
    case = Commands.case_id("es")
    world.dispatch(T0)
    expected = [key(case, "m0", "email")]
    for step, due in (("m1", T0 + 2 * DAY), ("m2", T0 + 5 * DAY), ("m3", FINAL_AT - 2 * DAY)):
        assert world.dispatch(due - timedelta(seconds=1)).sent == 0
        assert world.smtp.sent_keys() == expected
        report = world.dispatch(due)
        assert report.sent == 1, report
        expected.append(key(case, step, "email"))
        assert world.smtp.sent_keys() == expected
        assert world.row(key(case, step, "email"))["sent_at"] == due

    reminder = world.smtp.by_key(key(case, "m1", "email"))
    plain, _ = parts(reminder)
    assert "todavía no se ha completado" in plain
    assert "update_payment" in links(plain)
    final = world.smtp.by_key(key(case, "m3", "email"))
    plain, html = parts(final)
    # The final action (cancel) is at T0 + 12 days: 15 March 2025 in Madrid.
    assert "El 15 de marzo de 2025, tu suscripción a Pro se cancelará." in plain
    assert "15 de marzo de 2025" in html
    token = links(plain)["update_payment"]
    assert LinkSigner(LINK_SECRET, BASE_URL).verify("update_payment", token, now=FINAL_AT).subject == case
    assert set(world.statuses().values()) == {"sent"}


# =========================================================================== 2. notifications


def test_recovery_cancels_pending_reminders_and_sends_the_thanks(world: World):
    world.handle(failed(world.commands, "1", token="tok_sim_ok"))
    case = Commands.case_id("1")
    world.dispatch(T0)

    tick = world.engine.tick(T0 + DAY)  # the first retry succeeds

    assert tick.recovered == 1
    thanks = [r for r in world.rows() if r["kind"] == "payment_recovered"]
    assert [(r["channel"], r["due_at"], r["status"]) for r in thanks] == [("email", T0 + DAY, "scheduled")]
    report = world.dispatch(T0 + DAY)
    assert report.sent == 1
    message = world.smtp.by_key(thanks[0]["key"])
    assert message["To"] == "1@example.com"
    assert "List-Unsubscribe" in message  # transactional, yet the link is always there
    for due in (T0 + 2 * DAY, T0 + 5 * DAY, FINAL_AT - 2 * DAY):
        world.dispatch(due)
    for step in ("m1", "m2", "m3"):
        row = world.row(key(case, step, "email"))
        assert row["status"] == "canceled"
        assert row["reason"] == "not needed: the case is recovered"
        assert row["sent_at"] is None
        assert row["due_at"] is None
    assert world.smtp.sent_keys() == [key(case, "m0", "email"), thanks[0]["key"]]


def test_a_new_card_sends_the_payment_method_updated_confirmation(world: World):
    world.handle(failed(world.commands, "1"))
    case = Commands.case_id("1")
    world.dispatch(T0)
    at = T0 + DAY + 2 * HOUR

    # The new card is declined too: the case stays open and the reminders keep coming.
    world.handle(world.commands.payment_method_updated("1", at=at, token="tok_sim_decline_do_not_honor"))

    (confirmation,) = [r for r in world.rows() if r["kind"] == "payment_method_updated"]
    assert confirmation["due_at"] == at
    assert world.dispatch(at).sent == 1
    message = world.smtp.by_key(confirmation["key"])
    plain, _ = parts(message)
    assert "1881" in plain  # the new card, as the customer knows it
    assert world.row(confirmation["key"])["status"] == "sent"
    assert world.dispatch(T0 + 2 * DAY).sent == 1
    assert world.row(key(case, "m1", "email"))["status"] == "sent"


def test_a_cancellation_is_confirmed_and_nothing_else_is_sent_afterwards(world: World):
    world.handle(failed(world.commands, "1"))
    case = Commands.case_id("1")
    world.dispatch(T0)
    at = T0 + DAY

    world.handle(world.commands.subscription_canceled("1", at=at))

    assert world.db.scalar("SELECT suppressed FROM contact_preferences WHERE customer_id = 'cus_1'")
    assert world.dispatch(at).sent == 1
    (confirmation,) = [r for r in world.rows() if r["kind"] == "subscription_canceled"]
    assert confirmation["status"] == "sent"
    message = world.smtp.by_key(confirmation["key"])
    plain, _ = parts(message)
    assert "has been canceled" in plain
    assert "You won't be charged again." in plain
    found = links(plain)
    assert "update_payment" not in found
    signer = LinkSigner(LINK_SECRET, BASE_URL)
    assert signer.verify("reactivate", found["reactivate"], now=at).subject == "sub_1"
    # Canceled elsewhere (not on the hosted page): the email asks for the exit survey.
    assert signer.verify("cancel", found["cancel"], now=at).subject == "sub_1"
    # Later: reminders are canceled, the win-back (no opt-in) is skipped; no email.
    for due in (T0 + 2 * DAY, T0 + 5 * DAY, FINAL_AT - 2 * DAY, at + 30 * DAY):
        world.dispatch(due)
    assert world.smtp.sent_keys() == [key(case, "m0", "email"), confirmation["key"]]
    for step in ("m1", "m2", "m3"):
        row = world.row(key(case, step, "email"))
        assert (row["status"], row["reason"]) == ("canceled", "not needed: the case is canceled")
    (win_back,) = [r for r in world.rows() if r["kind"] == "win_back"]
    assert win_back["status"] == "skipped"
    assert win_back["reason"] == "win-back is sent only to customers who opted in"


def test_win_back_goes_only_to_customers_who_opted_in_after_its_delay(world: World):
    for k in ("in", "out"):
        world.handle(failed(world.commands, k))
    world.handle(preferences(world.commands, "in", T0, win_back_opt_in=True))
    world.dispatch(T0)
    at = T0 + DAY
    for k in ("in", "out"):
        world.handle(world.commands.subscription_canceled(k, at=at))
    assert world.dispatch(at).sent == 2  # both confirmations

    win_backs = {r["customer_id"]: r for r in world.rows() if r["kind"] == "win_back"}
    assert {c: r["due_at"] for c, r in win_backs.items()} == {
        "cus_in": at + 30 * DAY,
        "cus_out": at + 30 * DAY,
    }
    assert world.dispatch(at + 30 * DAY - MINUTE).sent == 0  # (the reminders are canceled)

    report = world.dispatch(at + 30 * DAY)

    assert (report.sent, report.skipped) == (1, 1)
    sent = world.smtp.by_key(win_backs["cus_in"]["key"])
    assert sent["To"] == "in@example.com"
    plain, _ = parts(sent)
    assert "reactivate" in links(plain)
    assert world.row(win_backs["cus_in"]["key"])["status"] == "sent"
    out = world.row(win_backs["cus_out"]["key"])
    assert (out["status"], out["reason"]) == ("skipped", "win-back is sent only to customers who opted in")
    assert not [
        m
        for m in world.smtp.messages()
        if m["To"] == "out@example.com" and m["X-Recobra-Key"] == win_backs["cus_out"]["key"]
    ]


# =========================================================================== 3. delivery rules


@pytest.mark.parametrize(
    ("timezone", "failed_at", "local_8am"),
    [
        # 06:00 in Mexico City (UTC-6 all year): waits until 08:00 there.
        ("America/Mexico_City", T0, datetime(2025, 3, 3, 14, 0, tzinfo=UTC)),
        # 22:30 the evening before in New York, the day daylight saving starts there:
        # 08:00 EDT next morning is 12:00 UTC (it would be 13:00 in winter).
        (
            "America/New_York",
            datetime(2025, 3, 9, 2, 30, tzinfo=UTC),
            datetime(2025, 3, 9, 12, 0, tzinfo=UTC),
        ),
        # 23:00 in Tokyo: waits until 08:00 the next day there (23:00 UTC).
        ("Asia/Tokyo", datetime(2025, 3, 3, 14, 0, tzinfo=UTC), datetime(2025, 3, 3, 23, 0, tzinfo=UTC)),
    ],
)
def test_quiet_hours_in_the_customers_zone_defer_email_until_they_end(
    world: World, timezone: str, failed_at: datetime, local_8am: datetime
):
    world.handle(failed(world.commands, "q", timezone=timezone, occurred_at=failed_at))
    case = Commands.case_id("q")
    email_key = key(case, "m0", "email")

    report = world.dispatch(failed_at)

    assert (report.deferred, report.sent) == (1, 1)  # in-app is not a quiet channel
    row = world.row(email_key)
    assert (row["status"], row["due_at"], row["attempts"]) == ("scheduled", local_8am, 0)
    assert row["reason"] == f"quiet hours in {timezone}: waits until 08:00 local"
    assert (row["claimed_by"], row["claim_expires_at"]) == (None, None)
    assert world.row(key(case, "m0", "in_app"))["status"] == "sent"
    assert world.dispatch(local_8am - timedelta(seconds=1)).claimed == 0
    assert world.smtp.received == []

    assert world.dispatch(local_8am).sent == 1

    assert world.smtp.sent_keys() == [email_key]
    assert world.row(email_key)["sent_at"] == local_8am


CAPPED = policy(
    """
{ action = "message", after = "0m", kind = "payment_failed", channels = ["email"] }
{ action = "message", after = "1h", kind = "payment_reminder", channels = ["email"] }
{ action = "message", after = "2h", kind = "payment_reminder", channels = ["email"] }
{ action = "message", after = "1d1h", kind = "payment_reminder", channels = ["email"] }
"""
)


def test_daily_and_weekly_caps_defer_messages(world_factory: WorldFactory):
    world = world_factory(CAPPED, rules=DeliveryRules(max_per_day=2, max_per_week=3))
    world.handle(failed(world.commands, "1"))
    case = Commands.case_id("1")
    assert world.dispatch(T0).sent == 1
    assert world.dispatch(T0 + HOUR).sent == 1

    report = world.dispatch(T0 + 2 * HOUR)

    assert (report.sent, report.deferred) == (0, 1)
    third = world.row(key(case, "m2", "email"))
    assert (third["status"], third["due_at"]) == ("scheduled", T0 + DAY)  # 24h after the first
    assert third["reason"] == "daily cap of 2 messages reached"
    assert world.dispatch(T0 + DAY - timedelta(seconds=1)).claimed == 0
    assert world.dispatch(T0 + DAY).sent == 1
    # The fourth: one message in the last day, but three this week.
    report = world.dispatch(T0 + DAY + HOUR)
    assert report.deferred == 1
    fourth = world.row(key(case, "m3", "email"))
    assert (fourth["status"], fourth["due_at"]) == ("scheduled", T0 + 7 * DAY)
    assert fourth["reason"] == "weekly cap of 3 messages reached"
    assert world.dispatch(T0 + 7 * DAY).sent == 1
    assert len(world.smtp.received) == 4


def test_caps_hold_when_several_messages_fall_due_in_one_dispatch(world_factory: WorldFactory):
    """The dispatcher was down for a few hours: three reminders are due at once. The
    daily cap of two still holds (the third waits a day)."""
    world = world_factory(CAPPED, rules=DeliveryRules(max_per_day=2, max_per_week=5))
    world.handle(failed(world.commands, "1"))

    report = world.dispatch(T0 + 3 * HOUR)

    assert report.claimed == 3
    assert len(world.smtp.received) <= 2, (
        f"{len(world.smtp.received)} emails in one day to one customer with a daily cap of 2"
    )
    assert (report.sent, report.deferred) == (2, 1)


SMS_STEPS = policy(
    """
{ action = "message", after = "0m", kind = "payment_failed", channels = ["sms"] }
{ action = "message", after = "2d", kind = "payment_reminder", channels = ["sms"] }
{ action = "message", after = "4d", kind = "payment_reminder", channels = ["sms"] }
"""
)
PHONE = "+5215512345678"


def test_sms_needs_a_phone_and_consent(world_factory: WorldFactory):
    world = world_factory(SMS_STEPS)
    world.handle(
        failed(world.commands, "nophone"),
        failed(world.commands, "noconsent", phone="+5215500000001"),
        failed(world.commands, "ok", phone=PHONE),
        preferences(world.commands, "ok", T0, sms_consent=True),
        preferences(world.commands, "nophone", T0, sms_consent=True),
    )

    report = world.dispatch(T0)

    assert (report.sent, report.skipped) == (1, 2)
    nophone = world.row(key(Commands.case_id("nophone"), "m0", "sms"))
    assert (nophone["status"], nophone["reason"]) == ("skipped", "sms unavailable: no phone number")
    noconsent = world.row(key(Commands.case_id("noconsent"), "m0", "sms"))
    assert (noconsent["status"], noconsent["reason"]) == ("skipped", "sms unavailable: no consent for SMS")
    ok_key = key(Commands.case_id("ok"), "m0", "sms")
    assert world.row(ok_key)["status"] == "sent"
    sms = world.sms_file(ok_key).read_text(encoding="utf-8")
    assert f"To: {PHONE}" in sms
    assert "Channel: sms" in sms
    assert "https://pay.example.com/p/update_payment/" in sms
    assert sorted(p.name for p in world.files.iterdir()) == [file_name(ok_key, "txt")]


def test_a_stop_reply_stops_sms_and_start_resumes_it(world_factory: WorldFactory):
    world = world_factory(SMS_STEPS)
    case = Commands.case_id("1")
    world.handle(*consenting(world.commands, "1", sms_consent=True))
    assert world.dispatch(T0).sent == 1

    world.handle(SmsReceived(event_id="sms_1", occurred_at=T0 + HOUR, phone=PHONE, body=" stop please"))
    assert world.dispatch(T0 + 2 * DAY).skipped == 1
    stopped = world.row(key(case, "m1", "sms"))
    assert (stopped["status"], stopped["reason"]) == ("skipped", "sms unavailable: the customer replied STOP")
    assert not world.sms_file(key(case, "m1", "sms")).exists()

    world.handle(SmsReceived(event_id="sms_2", occurred_at=T0 + 3 * DAY, phone=PHONE, body="START"))
    assert world.dispatch(T0 + 4 * DAY).sent == 1
    assert world.row(key(case, "m2", "sms"))["status"] == "sent"
    assert world.sms_file(key(case, "m2", "sms")).exists()


def test_a_stop_reply_matches_the_customers_number_however_it_was_written(world_factory: WorldFactory):
    """The customer's number came from the billing system with spaces; SMS providers
    send replies in E.164. The STOP is for that customer all the same."""
    world = world_factory(SMS_STEPS)
    case = Commands.case_id("1")
    world.handle(
        failed(world.commands, "1", phone="+52 55 1234 5678"),
        preferences(world.commands, "1", T0, sms_consent=True),
    )
    assert world.dispatch(T0).sent == 1

    result = world.engine.handle(
        SmsReceived(event_id="sms_1", occurred_at=T0 + HOUR, phone="+525512345678", body="STOP")
    )

    assert result.note == "STOP for 1 customer(s)"
    assert world.dispatch(T0 + 2 * DAY).sent == 0
    assert world.row(key(case, "m1", "sms"))["reason"] == "sms unavailable: the customer replied STOP"


def test_unsubscribed_customers_get_only_transactional_messages(world: World):
    world.handle(failed(world.commands, "1", token="tok_sim_ok"))
    world.handle(preferences(world.commands, "1", T0 - MINUTE, unsubscribed=True))
    case = Commands.case_id("1")

    report = world.dispatch(T0)

    assert (report.sent, report.skipped) == (0, 2)
    for channel in ("email", "in_app"):
        row = world.row(key(case, "m0", channel))
        assert (row["status"], row["reason"]) == ("skipped", "customer unsubscribed from reminders")
    world.engine.tick(T0 + DAY)  # recovered
    assert world.dispatch(T0 + DAY).sent == 1
    (message,) = world.smtp.messages()
    assert "payment_recovered" in str(message["X-Recobra-Key"])


def test_a_customer_who_canceled_and_came_back_is_dunned_again(world: World):
    """Canceling suppresses the customer's messages; reactivating the subscription (the
    billing system reports it active again) must lift that, or a later failed payment
    is never told to them."""
    world.handle(failed(world.commands, "1"))
    world.handle(world.commands.subscription_canceled("1", at=T0 + DAY))
    world.dispatch(T0 + DAY)
    back = T0 + 10 * DAY
    customer = world.commands.customer("1")
    world.handle(
        SubscriptionUpdated(
            event_id="evt_back",
            occurred_at=back,
            customer=customer,
            subscription=world.commands.subscription("1"),
        )
    )
    later = T0 + 40 * DAY
    again = failed(world.commands, "1", occurred_at=later)
    world.handle(replace(again, invoice=replace(again.invoice, id="in_1_again")))
    case = "case_in_1_again"

    report = world.dispatch(later)

    email = world.row(key(case, "m0", "email"))
    assert (email["status"], email["reason"]) == ("sent", "sent by email")
    assert report.sent == 2
    assert key(case, "m0", "email") in world.smtp.sent_keys()


# =========================================================================== 4. fallbacks


def fallback_policy(step: str) -> str:
    return policy(step, extra=NOTIFICATIONS)


def test_message_steps_keep_their_fallback_channels_from_the_policy_file():
    policies = parse_policy(
        fallback_policy(
            '{ action = "message", after = "0m", kind = "payment_failed", channels = ["email"], '
            'fallback = ["sms", "voice"], fallback_after = "2d" }'
        )
    ).policies
    (step,) = policies.policies["standard"].messages
    assert step.fallback == (ChannelKind.SMS, ChannelKind.VOICE)
    assert step.fallback_after == 2 * DAY


def test_an_unreachable_primary_channel_brings_in_the_fallback_once(world_factory: WorldFactory):
    world = world_factory(
        fallback_policy(
            '{ action = "message", after = "0m", kind = "payment_failed", channels = ["push"], '
            'fallback = ["email"] }'
        )
    )
    world.handle(failed(world.commands, "1"))
    case = Commands.case_id("1")

    report = world.dispatch(T0)

    assert (report.skipped, report.fallbacks) == (1, 1)
    push = world.row(key(case, "m0", "push"))
    assert (push["status"], push["reason"]) == ("skipped", "push unavailable: no push subscription")
    email = world.row(key(case, "m0", "email"))
    assert (email["status"], email["due_at"], email["kind"]) == ("scheduled", T0, "payment_failed")
    assert world.dispatch(T0).sent == 1
    assert world.smtp.sent_keys() == [key(case, "m0", "email")]
    assert world.dispatch(T0 + HOUR).claimed == 0
    assert len(world.rows()) == 2
    assert len(world.smtp.received) == 1


def test_a_reachable_push_channel_needs_no_fallback(world_factory: WorldFactory):
    world = world_factory(
        fallback_policy(
            '{ action = "message", after = "0m", kind = "payment_failed", channels = ["push"], '
            'fallback = ["email"] }'
        )
    )
    world.handle(failed(world.commands, "1"))
    subscription = '{"endpoint": "https://push.example.test/abc", "keys": {"p256dh": "x", "auth": "y"}}'
    world.handle(
        PushSubscribed(
            event_id="push_1",
            occurred_at=T0 - HOUR,
            customer_id="cus_1",
            endpoint="https://push.example.test/abc",
            subscription=subscription,
        )
    )
    case = Commands.case_id("1")

    report = world.dispatch(T0)

    assert (report.sent, report.fallbacks) == (1, 0)
    push_key = key(case, "m0", "push")
    assert world.row(push_key)["status"] == "sent"
    assert f"To: {subscription}" in world.sms_file(push_key).read_text(encoding="utf-8")
    assert world.dispatch(T0).claimed == 0
    assert world.smtp.received == []


def test_a_permanent_smtp_failure_brings_in_the_fallback_once(world_factory: WorldFactory):
    world = world_factory(
        fallback_policy(
            '{ action = "message", after = "0m", kind = "payment_failed", channels = ["email"], '
            'fallback = ["sms"] }'
        )
    )
    world.smtp.refuse["1@example.com"] = "550 5.1.1 No such user"
    world.handle(*consenting(world.commands, "1", sms_consent=True))
    case = Commands.case_id("1")

    report = world.dispatch(T0)

    assert (report.failed, report.fallbacks, report.retried) == (1, 1, 0)
    email = world.row(key(case, "m0", "email"))
    assert (email["status"], email["attempts"], email["due_at"]) == ("failed", 1, None)
    assert "550" in email["reason"]
    sms_key = key(case, "m0", "sms")
    assert (world.row(sms_key)["status"], world.row(sms_key)["due_at"]) == ("scheduled", T0)
    assert world.dispatch(T0).sent == 1
    assert world.row(sms_key)["status"] == "sent"
    assert world.sms_file(sms_key).exists()
    assert world.dispatch(T0 + DAY).claimed == 0
    assert world.smtp.received == []
    assert world.smtp.rcpt_seen == ["1@example.com"]  # tried once, never again


def test_two_failed_channels_of_a_step_bring_in_one_fallback(world_factory: WorldFactory):
    """Push cannot reach the customer (skipped while claiming) and email bounces (failed
    after sending): both call for the SMS fallback, which is queued and sent once."""
    world = world_factory(
        fallback_policy(
            '{ action = "message", after = "0m", kind = "payment_failed", channels = ["email", "push"], '
            'fallback = ["sms"] }'
        )
    )
    world.smtp.refuse["1@example.com"] = "550 5.1.1 No such user"
    world.handle(*consenting(world.commands, "1", sms_consent=True))
    case = Commands.case_id("1")

    world.dispatch(T0)

    assert world.statuses() == {
        key(case, "m0", "email"): "failed",
        key(case, "m0", "push"): "skipped",
        key(case, "m0", "sms"): "scheduled",
    }
    assert world.dispatch(T0).sent == 1
    assert world.dispatch(T0 + HOUR).claimed == 0
    assert [p.name for p in world.files.iterdir()] == [file_name(key(case, "m0", "sms"), "txt")]


def test_fallbacks_are_tried_in_the_listed_order(world_factory: WorldFactory):
    """Email bounces, the customer gave no SMS consent: the next fallback, a call, goes."""
    world = world_factory(
        fallback_policy(
            '{ action = "message", after = "0m", kind = "final_notice", channels = ["email"], '
            'fallback = ["sms", "voice"] }'
        )
    )
    world.smtp.refuse["1@example.com"] = "550 5.1.1 No such user"
    world.handle(*consenting(world.commands, "1", voice_consent=True))
    case = Commands.case_id("1")

    world.dispatch(T0)
    world.dispatch(T0)
    world.dispatch(T0)

    assert world.statuses() == {
        key(case, "m0", "email"): "failed",
        key(case, "m0", "sms"): "skipped",
        key(case, "m0", "voice"): "sent",
    }
    assert world.row(key(case, "m0", "sms"))["reason"] == "sms unavailable: no consent for SMS"
    script = world.sms_file(key(case, "m0", "voice")).read_text(encoding="utf-8")
    assert f"To: {PHONE}" in script
    assert "Channel: voice" in script
    assert world.dispatch(T0 + DAY).claimed == 0


def with_fallback(policy_text: str, step: int, *channels: ChannelKind) -> PolicySet:
    """The parsed policy with ``fallback`` set on one message step, in code."""
    policies = parse_policy(policy_text).policies
    standard = policies.policies["standard"]
    messages = list(standard.messages)
    messages[step] = replace(messages[step], fallback=channels)
    return replace(policies, policies={"standard": replace(standard, messages=tuple(messages))})


def test_a_queued_fallback_does_not_break_the_dispatch(world_factory: WorldFactory):
    """A fallback row is queued (here from a policy built in code): dispatching it, and
    every other message due in the same batch, still works."""
    world = world_factory(
        with_fallback(
            policy('{ action = "message", after = "0m", kind = "payment_failed", channels = ["push"] }'),
            0,
            ChannelKind.EMAIL,
        )
    )
    world.handle(failed(world.commands, "a"))
    assert world.dispatch(T0).fallbacks == 1
    world.handle(failed(world.commands, "b", occurred_at=T0 + MINUTE))

    report = world.dispatch(T0 + MINUTE)

    assert report.fallbacks == 1  # b's push
    assert world.row(key(Commands.case_id("a"), "m0", "email"))["status"] == "sent"
    assert world.dispatch(T0 + MINUTE).sent == 1
    assert sorted(world.smtp.sent_keys()) == [key(Commands.case_id(c), "m0", "email") for c in ("a", "b")]


def test_a_transient_smtp_failure_is_retried_with_backoff_then_succeeds(world: World):
    world.smtp.refuse_next["1@example.com"] = ["451 4.7.1 Greylisted, try later"] * 2
    world.handle(failed(world.commands, "1"))
    email_key = key(Commands.case_id("1"), "m0", "email")

    report = world.dispatch(T0)

    assert (report.retried, report.failed) == (1, 0)
    row = world.row(email_key)
    assert (row["status"], row["attempts"], row["due_at"]) == ("scheduled", 1, T0 + MINUTE)
    assert "451" in row["reason"]
    assert "trying again in 0:01:00" in row["reason"]
    assert (row["claimed_by"], row["claim_expires_at"]) == (None, None)
    assert world.dispatch(T0 + MINUTE - timedelta(seconds=1)).claimed == 0
    assert world.dispatch(T0 + MINUTE).retried == 1
    row = world.row(email_key)
    assert (row["status"], row["attempts"], row["due_at"]) == ("scheduled", 2, T0 + 11 * MINUTE)

    assert world.dispatch(T0 + 11 * MINUTE).sent == 1

    row = world.row(email_key)
    assert (row["status"], row["attempts"], row["sent_at"]) == ("sent", 3, T0 + 11 * MINUTE)
    assert world.smtp.sent_keys() == [email_key]


def test_transient_failures_give_up_after_the_backoff_runs_out(world: World):
    world.smtp.refuse["1@example.com"] = "421 4.3.2 Service not available"
    world.handle(failed(world.commands, "1"))
    email_key = key(Commands.case_id("1"), "m0", "email")
    now = T0
    for attempt, wait in enumerate((MINUTE, 10 * MINUTE, HOUR, 4 * HOUR), start=1):
        world.dispatch(now)
        row = world.row(email_key)
        assert (row["status"], row["attempts"], row["due_at"]) == ("scheduled", attempt, now + wait)
        now += wait

    report = world.dispatch(now)

    assert report.failed == 1
    row = world.row(email_key)
    assert (row["status"], row["attempts"], row["due_at"]) == ("failed", 5, None)
    assert world.smtp.rcpt_seen.count("1@example.com") == 5
    assert world.smtp.received == []


FALLBACK_AFTER = fallback_policy(
    '{ action = "message", after = "0m", kind = "payment_failed", channels = ["email"], '
    'fallback = ["sms"], fallback_after = "2d" }'
)


def test_fallback_after_with_no_click_sends_the_fallback_later(world_factory: WorldFactory):
    world = world_factory(FALLBACK_AFTER)
    world.handle(*consenting(world.commands, "1", sms_consent=True))
    case = Commands.case_id("1")
    assert world.dispatch(T0).sent == 1
    sms_key = key(case, "m0", "sms")
    assert (world.row(sms_key)["status"], world.row(sms_key)["due_at"]) == ("scheduled", T0 + 2 * DAY)
    assert world.dispatch(T0 + 2 * DAY - MINUTE).claimed == 0

    assert world.dispatch(T0 + 2 * DAY).sent == 1

    assert world.row(sms_key)["status"] == "sent"
    assert world.sms_file(sms_key).exists()


def test_fallback_after_is_canceled_when_the_customer_clicked(world_factory: WorldFactory):
    world = world_factory(FALLBACK_AFTER)
    world.handle(*consenting(world.commands, "1", sms_consent=True))
    case = Commands.case_id("1")
    assert world.dispatch(T0).sent == 1
    sms_key = key(case, "m0", "sms")
    assert world.row(sms_key)["status"] == "scheduled"

    world.execute(
        "UPDATE messages SET clicked_at = :at WHERE key = :key",
        at=T0 + 5 * HOUR,
        key=key(case, "m0", "email"),
    )
    report = world.dispatch(T0 + 2 * DAY)

    assert (report.canceled, report.sent) == (1, 0)
    row = world.row(sms_key)
    assert (row["status"], row["reason"]) == ("canceled", "not needed: the customer clicked")
    assert not world.sms_file(sms_key).exists()


# =========================================================================== 5. pre-dunning


CAMPAIGNS = policy(
    '{ action = "message", after = "0m", kind = "payment_failed", channels = ["email"] }',
    extra=NOTIFICATIONS
    + """
[[campaigns]]
name = "card-expiring"
kind = "card_expiring"
before = ["30d", "7d"]
channels = ["email"]

[[campaigns]]
name = "annual-renewal"
kind = "renewal_upcoming"
before = ["30d", "7d"]
intervals = ["year"]
channels = ["email"]
""",
)
RENEWS_AT = datetime(2025, 5, 10, 15, 0, tzinfo=UTC)  # 10:00 in Bogotá
# A card that expires in April 2025 stops working on 1 May 2025 at midnight in Bogotá (UTC-5).
CARD_END = datetime(2025, 5, 1, 5, 0, tzinfo=UTC)


def card(
    pm_id: str = "pm_1", *, exp_month: int = 4, exp_year: int = 2025, last4: str = "4242"
) -> PaymentMethod:
    return PaymentMethod(
        id=pm_id,
        customer_id="cus_1",
        gateway_token="tok_sim_ok",
        brand="visa",
        last4=last4,
        exp_month=exp_month,
        exp_year=exp_year,
    )


def subscription_updated(
    commands: Commands,
    *,
    at: datetime = T0,
    renews_at: datetime | None = RENEWS_AT,
    method: PaymentMethod | None = None,
    interval: Interval = Interval.YEAR,
    status: SubscriptionStatus = SubscriptionStatus.ACTIVE,
) -> SubscriptionUpdated:
    customer = replace(commands.customer("1", timezone="America/Bogota", country="CO"), locale="es")
    plan = Plan(id=f"plan_{interval}", name="Pro anual", interval=interval, price=Money(19900, "USD"))
    sub = Subscription(
        id="sub_1",
        customer_id="cus_1",
        plan=plan,
        status=status,
        started_at=T0 - 300 * DAY,
        renews_at=renews_at,
    )
    return SubscriptionUpdated(
        event_id=commands.event_id(),
        occurred_at=at,
        customer=customer,
        subscription=sub,
        payment_method=method or card(),
    )


def test_subscription_updates_plan_renewal_and_card_reminders_once(world_factory: WorldFactory):
    world = world_factory(CAMPAIGNS)

    world.handle(subscription_updated(world.commands))

    planned = {(r["kind"], r["due_at"]) for r in world.rows()}
    assert planned == {
        ("card_expiring", CARD_END - 30 * DAY),
        ("card_expiring", CARD_END - 7 * DAY),
        ("renewal_upcoming", RENEWS_AT - 30 * DAY),
        ("renewal_upcoming", RENEWS_AT - 7 * DAY),
    }
    rows = world.rows()
    assert all(r["case_id"] is None and r["status"] == "scheduled" for r in rows)
    assert {r["key"] for r in rows if r["kind"] == "card_expiring"} == {
        "card:pm_1:2025-04:card-expiring:30d:email",
        "card:pm_1:2025-04:card-expiring:7d:email",
    }
    # The same update again (a new event id) plans nothing twice.
    world.handle(subscription_updated(world.commands, at=T0 + HOUR))
    assert [(r["key"], r["due_at"]) for r in world.rows()] == [(r["key"], r["due_at"]) for r in rows]
    # Nothing is due for weeks.
    assert world.dispatch(T0 + DAY).claimed == 0


def test_pre_dunning_reminders_are_sent_at_their_offsets(world_factory: WorldFactory):
    world = world_factory(CAMPAIGNS)
    world.handle(subscription_updated(world.commands))
    renewal_key = next(
        r["key"]
        for r in world.rows()
        if r["kind"] == "renewal_upcoming" and r["due_at"] == RENEWS_AT - 30 * DAY
    )
    card_key = "card:pm_1:2025-04:card-expiring:30d:email"

    # The card reminder falls at midnight in Bogotá: quiet hours hold it until 08:00 there.
    report = world.dispatch(CARD_END - 30 * DAY)
    assert (report.deferred, report.sent) == (1, 0)
    assert world.row(card_key)["due_at"] == CARD_END - 30 * DAY + 8 * HOUR
    assert world.dispatch(CARD_END - 30 * DAY + 8 * HOUR).sent == 1
    plain, _ = parts(world.smtp.by_key(card_key))
    assert "abril de 2025" in plain
    assert "4242" in plain
    fix = links(plain)["update_payment"]
    verified = LinkSigner(LINK_SECRET, BASE_URL).verify("update_payment", fix, now=CARD_END - 29 * DAY)
    assert verified.subject == "cus_1"

    assert world.dispatch(RENEWS_AT - 30 * DAY).sent == 1
    renewal = world.smtp.by_key(renewal_key)
    plain, _ = parts(renewal)
    assert "10 de mayo de 2025" in plain
    assert "Pro anual" in plain
    assert world.row(renewal_key)["status"] == "sent"


def test_a_monthly_plan_gets_only_the_card_reminders(world_factory: WorldFactory):
    world = world_factory(CAMPAIGNS)
    world.handle(subscription_updated(world.commands, interval=Interval.MONTH))
    assert {r["kind"] for r in world.rows()} == {"card_expiring"}


def test_a_new_card_cancels_the_old_cards_reminders_at_send_time(world_factory: WorldFactory):
    world = world_factory(CAMPAIGNS)
    world.handle(subscription_updated(world.commands))
    old_30d = "card:pm_1:2025-04:card-expiring:30d:email"

    world.handle(
        subscription_updated(
            world.commands, at=T0 + DAY, method=card("pm_2", exp_month=9, exp_year=2027, last4="1881")
        )
    )

    assert world.row(old_30d)["status"] == "scheduled"  # dropped only when due
    assert "card:pm_2:2027-09:card-expiring:30d:email" in world.statuses()
    report = world.dispatch(CARD_END - 30 * DAY + 8 * HOUR)
    assert report.canceled == 1
    row = world.row(old_30d)
    assert (row["status"], row["reason"]) == ("canceled", "not needed: the card was replaced")
    assert row["sent_at"] is None
    world.dispatch(CARD_END - 7 * DAY + 8 * HOUR)
    assert world.row("card:pm_1:2025-04:card-expiring:7d:email")["status"] == "canceled"
    assert not [k for k in world.smtp.sent_keys() if k.startswith("card:")]


def test_a_changed_renewal_date_cancels_the_old_renewal_reminders(world_factory: WorldFactory):
    world = world_factory(CAMPAIGNS)
    world.handle(subscription_updated(world.commands))
    old = {r["key"] for r in world.rows() if r["kind"] == "renewal_upcoming"}
    later = datetime(2025, 6, 1, 15, 0, tzinfo=UTC)

    world.handle(subscription_updated(world.commands, at=T0 + DAY, renews_at=later))

    new = {r["key"]: r["due_at"] for r in world.rows() if r["kind"] == "renewal_upcoming"}
    assert {v for k, v in new.items() if k not in old} == {later - 30 * DAY, later - 7 * DAY}
    world.dispatch(RENEWS_AT - 30 * DAY)
    world.dispatch(RENEWS_AT - 7 * DAY)
    for k in old:
        row = world.row(k)
        assert (row["status"], row["reason"]) == ("canceled", "not needed: the renewal date changed")
    world.dispatch(later - 30 * DAY)
    sent = [k for k in world.smtp.sent_keys() if k.startswith("renewal:")]
    assert sent == [k for k, v in new.items() if v == later - 30 * DAY]


def test_a_canceled_subscription_gets_no_more_pre_dunning_reminders(world_factory: WorldFactory):
    world = world_factory(CAMPAIGNS)
    world.handle(subscription_updated(world.commands))

    world.handle(world.commands.subscription_canceled("1", at=T0 + DAY))
    for due in sorted({r["due_at"] for r in world.rows()}):
        world.dispatch(due + 8 * HOUR)

    # Only the cancellation confirmation goes out; every reminder is dropped.
    sent = world.smtp.sent_keys()
    assert len(sent) == 1
    assert sent[0].startswith("sub:sub_1:subscription_canceled@")
    statuses = {
        r["key"]: (r["status"], r["reason"]) for r in world.rows() if "subscription_canceled" not in r["key"]
    }
    assert all(s in ("canceled", "skipped") for s, _ in statuses.values()), statuses


# =========================================================================== 6. exactly once


def test_two_dispatchers_at_the_same_time_send_each_message_once(
    world_factory: WorldFactory, messenger_factory: MessengerFactory, store_factory: Callable[[], SqlStore]
):
    world = world_factory()
    world.smtp.data_delay_s = 0.01  # the two dispatchers' phases interleave
    customers = [f"c{i}" for i in range(12)]
    world.handle(*(failed(world.commands, c) for c in customers))
    messengers = [
        messenger_factory(store=store_factory(), worker_id=f"messenger-{i}", batch_size=3) for i in range(2)
    ]
    barrier = threading.Barrier(2, timeout=30)
    reports: list[DispatchReport] = []
    errors: list[BaseException] = []

    def run(messenger: Messenger) -> None:
        try:
            barrier.wait()
            reports.append(messenger.dispatch(T0))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m in messengers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a dispatcher hung"
    assert errors == []

    expected = sorted(key(Commands.case_id(c), "m0", "email") for c in customers)
    assert sorted(world.smtp.sent_keys()) == expected  # exactly one reception per key
    assert sum(r.sent for r in reports) == 2 * len(customers)
    assert sum(r.claimed for r in reports) == 2 * len(customers)
    rows = [r for r in world.rows() if r["due_at"] is None or r["due_at"] <= T0]
    assert {r["status"] for r in rows} == {MessageStatus.SENT.value}
    assert {r["attempts"] for r in rows} == {1}
    # And again, both at once: nothing is due, nothing is sent.
    assert [m.dispatch(T0).claimed for m in messengers] == [0, 0]
    assert len(world.smtp.received) == len(customers)
