"""A real dispatcher process killed (SIGKILL) while an email is ``sending``: the SMTP
server has the message but never answered. After the claim's lease runs out the next
dispatcher marks it ``unknown`` and never sends it again (at most once)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import policy as email_policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from conftest import T0, Commands, Db

from recobra.channels.email import SmtpEmailChannel
from recobra.channels.in_app import InAppChannel
from recobra.domain.messages import ChannelKind
from recobra.engine.messenger import Messenger
from recobra.messages.composer import Sender, TemplateComposer
from recobra.messages.links import LinkSigner
from recobra.messages.render import Renderer
from recobra.policyfile import parse_policy
from recobra.store.sql import SqlStore

pytestmark = pytest.mark.slow

WORKER_SCRIPT = Path(__file__).with_name("message_worker.py")
LEASE = timedelta(minutes=5)  # the Messenger's default, used by the worker process
WAIT_S = 60.0  # bound on waiting for the worker to reach the SMTP server
HOLD_S = 90.0  # bound on how long the server holds a DATA command
MINUTE = timedelta(minutes=1)

POLICY = """\
name = "crash"
version = 1
default_policy = "standard"

[policies.standard]
strategy = "fixed"
max_attempts = 3
max_days = 10
grace_days = 2
final_action = "cancel"
steps = [
    { after = "1d" },
    { after = "3d" },
    { action = "message", after = "0m", kind = "payment_failed", channels = ["email"] },
]
"""


def email_key(customer: str) -> str:
    return f"{Commands.case_id(customer)}:m0:email"


@dataclass
class HoldingSink:
    """An SMTP handler that records each message as its DATA arrives, and holds the first
    one (no reply) until ``release`` is set or ``HOLD_S`` passes."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    received: list[bytes] = field(default_factory=list)
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    _held: bool = False

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content
        assert isinstance(content, bytes)
        with self.lock:
            self.received.append(content)
            hold, self._held = not self._held, True
        if hold:
            self.holding.set()
            deadline = time.monotonic() + HOLD_S
            while not self.release.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        return "250 2.0.0 Message accepted"

    def received_keys(self) -> list[str]:
        with self.lock:
            raw = list(self.received)
        return [str(BytesParser(policy=email_policy.default).parsebytes(c)["X-Recobra-Key"]) for c in raw]


@pytest.fixture
def sink() -> Iterator[tuple[HoldingSink, int]]:
    handler = HoldingSink()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        handler.release.set()
        controller.stop()


def _output(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-4000:] if path.exists() else ""


def kill_worker_while_sending(
    database_url: str,
    tmp_path: Path,
    handler: HoldingSink,
    port: int,
    now: datetime,
    batch_size: int,
    check: Callable[[], None] | None = None,
) -> int:
    """Start a worker dispatching at ``now``; once the SMTP server holds its first message,
    run ``check`` (the worker is blocked waiting for the reply), then SIGKILL the worker.
    Returns its exit code."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    out, err = tmp_path / "worker.out", tmp_path / "worker.err"
    args = [
        sys.executable,
        str(WORKER_SCRIPT),
        database_url,
        str(policy),
        now.isoformat(),
        "worker-doomed",
        str(port),
        str(batch_size),
    ]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + WAIT_S
            while not handler.holding.wait(timeout=0.05):
                if proc.poll() is not None:
                    pytest.fail(
                        f"the worker exited ({proc.returncode}) before sending:\n"
                        f"{_output(out)}\n{_output(err)}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"no message at the SMTP server after {WAIT_S:.0f}s:\n{_output(out)}\n{_output(err)}"
                    )
            if check is not None:
                check()
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert "done" not in _output(out), "the worker finished before it was killed"
    return proc.returncode


def fresh_messenger(store: SqlStore) -> Messenger:
    policies = parse_policy(POLICY).policies
    composer = TemplateComposer(
        Renderer(),
        LinkSigner("fresh-worker-link-secret-0123456789abcdef", "https://pay.example.com"),
        policies,
        Sender("Acme", "help@acme.test"),
    )
    return Messenger(store, {ChannelKind.IN_APP: InAppChannel()}, composer, worker_id="worker-fresh")


def with_email(messenger: Messenger, port: int) -> Messenger:
    messenger.channels[ChannelKind.EMAIL] = SmtpEmailChannel(
        "127.0.0.1", port, sender="Acme <billing@acme.test>", timeout=30.0
    )
    return messenger


def test_a_worker_killed_while_sending_leaves_the_message_unknown_and_it_is_never_resent(
    database_url: str,
    engine_factory,
    commands: Commands,
    db: Db,
    store: SqlStore,
    tmp_path: Path,
    sink: tuple[HoldingSink, int],
):
    handler, port = sink
    engine = engine_factory(POLICY)
    engine.handle(commands.payment_failed("a"))
    engine.handle(commands.payment_failed("b"))

    def while_held() -> None:
        (held,) = handler.received_keys()
        row = db.rows("messages", key=held)[0]
        assert (row["status"], row["attempts"]) == ("sending", 1)
        assert (row["claimed_by"], row["claim_expires_at"]) == ("worker-doomed", T0 + LEASE)

    returncode = kill_worker_while_sending(database_url, tmp_path, handler, port, T0, 200, while_held)

    assert returncode == -signal.SIGKILL
    (held,) = handler.received_keys()
    assert held in (email_key("a"), email_key("b"))
    assert db.rows("messages", key=held)[0]["status"] == "sending"

    messenger = with_email(fresh_messenger(store), port)
    early = messenger.dispatch(T0 + LEASE - timedelta(seconds=1))  # the lease still runs
    assert (early.reaped, early.sent) == (0, 0)
    assert db.rows("messages", key=held)[0]["status"] == "sending"

    report = messenger.dispatch(T0 + LEASE + MINUTE)

    assert report.reaped >= 1
    row = db.rows("messages", key=held)[0]
    assert row["status"] == "unknown"
    assert row["reason"] == "a worker stopped while sending it: it may have gone out, so it is not sent again"
    assert (row["due_at"], row["sent_at"]) == (None, None)
    assert (row["claimed_by"], row["claim_expires_at"]) == (None, None)
    messenger.dispatch(T0 + 2 * LEASE)
    messenger.dispatch(T0 + timedelta(days=1))
    keys = handler.received_keys()
    assert keys.count(held) == 1  # received once, never again
    # The other email was in the killed worker's batch: whatever became of it, it never
    # reached the server twice.
    other = email_key("b") if held == email_key("a") else email_key("a")
    assert keys.count(other) <= 1
    assert db.rows("messages", key=other)[0]["status"] in ("unknown", "sent")


def test_messages_the_killed_worker_had_not_claimed_are_sent_by_the_next(
    database_url: str,
    engine_factory,
    commands: Commands,
    db: Db,
    store: SqlStore,
    tmp_path: Path,
    sink: tuple[HoldingSink, int],
):
    handler, port = sink
    engine = engine_factory(POLICY)
    engine.handle(commands.payment_failed("a"))
    engine.handle(commands.payment_failed("b", occurred_at=T0 + MINUTE))
    now = T0 + MINUTE

    def while_held() -> None:
        assert handler.received_keys() == [email_key("a")]  # claimed first: due first
        b = db.rows("messages", key=email_key("b"))[0]
        assert (b["status"], b["claimed_by"]) == ("scheduled", None)

    returncode = kill_worker_while_sending(database_url, tmp_path, handler, port, now, 1, while_held)

    assert returncode == -signal.SIGKILL
    messenger = with_email(fresh_messenger(store), port)
    report = messenger.dispatch(now + MINUTE)  # a's lease still runs: b goes, a waits
    assert (report.sent, report.reaped) == (1, 0)
    assert db.rows("messages", key=email_key("b"))[0]["status"] == "sent"
    assert db.rows("messages", key=email_key("a"))[0]["status"] == "sending"

    report = messenger.dispatch(now + LEASE + MINUTE)

    assert (report.reaped, report.sent) == (1, 0)
    assert db.rows("messages", key=email_key("a"))[0]["status"] == "unknown"
    assert sorted(handler.received_keys()) == [email_key("a"), email_key("b")]
