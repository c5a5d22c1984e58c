"""Every case event reaches the operator's webhook, signed, once each, in order."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import T0, Commands, Db

from recobra.channels.webhook import WebhookChannel
from recobra.engine.relay import EventRelay
from recobra.engine.service import Engine
from recobra.store.sql import SqlStore

SECRET = "whsec_test_0123456789abcdef0123456789"


class Receiver:
    """A real HTTP endpoint on loopback that records what it is sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail_next = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.fail_next:
                    receiver.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.requests.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/recobra"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def events(self) -> list[dict[str, object]]:
        return [json.loads(body) for _, body in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()
    r.thread.join(timeout=5)


def relay_for(store: SqlStore, receiver: Receiver, **kwargs: object) -> EventRelay:
    channel = WebhookChannel(receiver.url, SECRET, max_attempts=1, sleep=lambda _: None)
    return EventRelay(store, channel, **kwargs)  # type: ignore[arg-type]


def independent_signature_ok(headers: dict[str, str], body: bytes) -> bool:
    parts = dict(p.split("=", 1) for p in headers["Recobra-Signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


def test_every_case_event_is_delivered_signed_in_order_once(
    engine: Engine, store: SqlStore, commands: Commands, db: Db, receiver: Receiver
) -> None:
    engine.handle(commands.payment_failed("1"))
    engine.handle(commands.paid_out_of_band("1", at=T0 + timedelta(hours=2)))
    relay = relay_for(store, receiver)

    report = relay.relay(T0 + timedelta(hours=3))

    timeline = db.events(Commands.case_id("1"))
    assert report.delivered == len(timeline) > 2
    sent = receiver.events()
    assert [e["id"] for e in sent] == [f"evt_{e['id']}" for e in timeline]
    assert [e["type"] for e in sent] == [f"case.{e['kind']}" for e in timeline]
    assert sent[-1]["data"]["to_status"] == "paid_out_of_band"  # type: ignore[index]
    assert all(independent_signature_ok(h, b) for h, b in receiver.requests)
    assert all(h["Recobra-Event-Id"] == json.loads(b)["id"] for h, b in receiver.requests)

    # Nothing new: nothing sent again.
    assert relay.relay(T0 + timedelta(hours=4)).delivered == 0
    assert len(receiver.requests) == len(timeline)


def test_a_transient_failure_holds_the_stream_and_resumes_from_the_same_event(
    engine: Engine, store: SqlStore, commands: Commands, receiver: Receiver
) -> None:
    engine.handle(commands.payment_failed("1"))
    relay = relay_for(store, receiver)
    receiver.fail_next = 1

    held = relay.relay(T0 + timedelta(hours=1))
    resumed = relay.relay(T0 + timedelta(hours=2))

    assert held.held
    assert held.delivered == 0
    assert resumed.delivered >= 1
    ids = [e["id"] for e in receiver.events()]
    assert ids == sorted(set(ids), key=ids.index)  # no event twice, order kept


def test_only_the_chosen_kinds_are_sent(
    engine: Engine, store: SqlStore, commands: Commands, receiver: Receiver
) -> None:
    engine.handle(commands.payment_failed("1"))
    engine.handle(commands.paid_out_of_band("1", at=T0 + timedelta(hours=2)))
    report = relay_for(store, receiver, kinds=frozenset({"status_changed"})).relay(T0 + timedelta(hours=3))
    assert report.delivered == 1
    assert report.filtered >= 1
    assert [e["type"] for e in receiver.events()] == ["case.status_changed"]


def test_one_worker_at_a_time_holds_the_stream(
    engine: Engine, store: SqlStore, commands: Commands, receiver: Receiver
) -> None:
    engine.handle(commands.payment_failed("1"))
    now = T0 + timedelta(hours=1)
    with store.unit_of_work() as uow:
        assert uow.claim_relay("webhook", now, worker_id="other", lease=timedelta(minutes=5)) == 0
        uow.commit()
    assert relay_for(store, receiver).relay(now).delivered == 0  # held by the other worker
    assert relay_for(store, receiver).relay(now + timedelta(minutes=6)).delivered >= 1  # its lease expired
