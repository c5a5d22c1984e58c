"""The webhook channel against a real HTTP server (the standard library's, on 127.0.0.1).

Signatures are checked here with an independent HMAC computation, not with the
module's own helpers."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from recobra.channels.webhook import WebhookChannel, from_settings, sign, verify_signature
from recobra.ports import DeliveryStatus, OutgoingMessage

SECRET = "whsec_test_0123456789abcdef"
T0 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stall: float = 0.0
    """Seconds to wait before answering (until the test ends, at most)."""


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A scripted webhook receiver: answers with ``replies`` in turn (then 200)."""

    url: str = ""
    replies: list[Reply] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def take(self, request: Request) -> Reply:
        with self.lock:
            self.requests.append(request)
            return self.replies.pop(0) if self.replies else Reply()


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            reply = receiver.take(Request(self.path, headers, body))
            if reply.stall:
                receiver.released.wait(reply.stall)
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except OSError:  # the client gave up (a timeout test)
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = False  # server_close() joins the request threads
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/recobra"
    try:
        yield receiver
    finally:
        receiver.released.set()
        server.shutdown()
        server.server_close()
        thread.join()


class Clock:
    """Starts at T0; every reading is one second later than the one before."""

    def __init__(self) -> None:
        self.readings = 0

    def __call__(self) -> datetime:
        self.readings += 1
        return T0 + timedelta(seconds=self.readings - 1)


def _message(**changes: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "key": "recobra:case_42:1:webhook",
        "customer_id": "cus_42",
        "kind": "payment_failed",
        "channel": "webhook",
        "locale": "es",
        "to": "cus_42",
        "data": {"invoice_id": "in_7", "amount": "19,99 €", "nota": "¿mañana?", "kind": "overridden"},
    }
    fields.update(changes)
    return OutgoingMessage(**fields)


def _channel(url: str, sleeps: list[float], **kwargs: Any) -> WebhookChannel:
    kwargs.setdefault("now", lambda: T0)
    kwargs.setdefault("jitter", lambda delay: delay)
    kwargs.setdefault("timeout", 2.0)
    return WebhookChannel(url, SECRET, sleep=sleeps.append, **kwargs)


def _independent_signature_check(header: str, body: bytes, secret: str = SECRET) -> int:
    """The receiver's side, written from the documented scheme: returns the timestamp."""
    fields = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, fields["v1"])
    return int(fields["t"])


# --------------------------------------------------------------------------- delivery


def test_posts_signed_json(receiver: Receiver) -> None:
    sleeps: list[float] = []
    result = _channel(receiver.url, sleeps).send(_message())

    assert result.status is DeliveryStatus.SENT, result.error
    assert sleeps == []
    [request] = receiver.requests
    assert request.path == "/hooks/recobra"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["recobra-event-id"] == "recobra:case_42:1:webhook"
    assert request.headers["user-agent"].startswith("Recobra/")
    timestamp = _independent_signature_check(request.headers["recobra-signature"], request.body)
    assert timestamp == int(T0.timestamp())
    assert json.loads(request.body.decode("utf-8")) == {
        "id": "recobra:case_42:1:webhook",
        "type": "payment_failed",
        "created": int(T0.timestamp()),
        "data": {
            "invoice_id": "in_7",
            "amount": "19,99 €",
            "nota": "¿mañana?",
            "customer_id": "cus_42",
            "kind": "payment_failed",
            "channel": "webhook",
            "locale": "es",
        },
    }


def test_a_url_in_to_overrides_the_configured_one(receiver: Receiver) -> None:
    sleeps: list[float] = []
    channel = _channel("http://127.0.0.1:9/unused", sleeps)
    result = channel.send(_message(to=receiver.url.replace("/hooks/recobra", "/crm/acme?x=1")))
    assert result.status is DeliveryStatus.SENT, result.error
    assert [r.path for r in receiver.requests] == ["/crm/acme?x=1"]


def test_a_non_http_url_in_to_is_permanent(receiver: Receiver) -> None:
    result = _channel(receiver.url, []).send(_message(to="ftp://files.acme.test/drop"))
    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert "not an http(s) URL" in result.error
    assert receiver.requests == []


def test_an_injected_client_is_used_and_left_open(receiver: Receiver) -> None:
    with httpx.Client() as client:
        channel = _channel(receiver.url, [], client=client)
        assert channel.send(_message()).status is DeliveryStatus.SENT
        assert channel.send(_message()).status is DeliveryStatus.SENT
        assert not client.is_closed
    assert len(receiver.requests) == 2


# --------------------------------------------------------------------------- retries


def test_retries_on_500_then_succeeds(receiver: Receiver) -> None:
    receiver.script(Reply(500, body=b"oops"), Reply(502), Reply(200))
    sleeps: list[float] = []
    clock = Clock()
    result = _channel(receiver.url, sleeps, now=clock).send(_message())

    assert result.status is DeliveryStatus.SENT, result.error
    assert len(receiver.requests) == 3
    assert sleeps == [0.5, 2.0]
    # The same body and event id each time, signed afresh at each attempt.
    assert len({r.body for r in receiver.requests}) == 1
    assert {r.headers["recobra-event-id"] for r in receiver.requests} == {"recobra:case_42:1:webhook"}
    stamps = [_independent_signature_check(r.headers["recobra-signature"], r.body) for r in receiver.requests]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 3


def test_gives_up_after_max_attempts_as_transient(receiver: Receiver) -> None:
    receiver.script(*[Reply(503, body=b"maintenance")] * 4)
    sleeps: list[float] = []
    result = _channel(receiver.url, sleeps).send(_message())
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert len(receiver.requests) == 4
    assert sleeps == [0.5, 2.0, 8.0]
    assert "HTTP 503" in result.error
    assert "maintenance" in result.error
    assert "after 4 attempts" in result.error


def test_the_last_backoff_repeats_and_jitter_varies_it(receiver: Receiver) -> None:
    receiver.script(*[Reply(500)] * 5)
    sleeps: list[float] = []
    channel = WebhookChannel(
        receiver.url, SECRET, sleep=sleeps.append, max_attempts=6, backoff=(1.0, 4.0), now=lambda: T0
    )
    assert channel.send(_message()).status is DeliveryStatus.SENT
    nominal = [1.0, 4.0, 4.0, 4.0, 4.0]
    assert len(sleeps) == len(nominal)
    for slept, delay in zip(sleeps, nominal, strict=True):
        assert 0.8 * delay <= slept <= 1.2 * delay


@pytest.mark.parametrize("status", [408, 409, 429])
def test_retryable_4xx(receiver: Receiver, status: int) -> None:
    receiver.script(Reply(status))
    sleeps: list[float] = []
    assert _channel(receiver.url, sleeps).send(_message()).status is DeliveryStatus.SENT
    assert len(receiver.requests) == 2
    assert sleeps == [0.5]


def test_retry_after_in_seconds_is_honoured(receiver: Receiver) -> None:
    receiver.script(Reply(429, {"Retry-After": "3"}))
    sleeps: list[float] = []
    assert _channel(receiver.url, sleeps).send(_message()).status is DeliveryStatus.SENT
    assert sleeps == [3.0]


def test_retry_after_as_a_date_is_honoured(receiver: Receiver) -> None:
    receiver.script(Reply(503, {"Retry-After": format_datetime(T0 + timedelta(seconds=7), usegmt=True)}))
    sleeps: list[float] = []
    assert _channel(receiver.url, sleeps).send(_message()).status is DeliveryStatus.SENT
    assert sleeps == [7.0]


def test_a_long_retry_after_ends_the_delivery_without_blocking(receiver: Receiver) -> None:
    receiver.script(Reply(429, {"Retry-After": "3600"}))
    sleeps: list[float] = []
    result = _channel(receiver.url, sleeps, max_retry_after=60).send(_message())
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert "retry after 3600 s" in result.error
    assert sleeps == []
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_other_4xx_are_permanent_without_retry(receiver: Receiver, status: int) -> None:
    receiver.script(Reply(status, body=b'{"error": "unknown event type"}'))
    sleeps: list[float] = []
    result = _channel(receiver.url, sleeps).send(_message())
    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert f"HTTP {status}" in result.error
    assert "unknown event type" in result.error
    assert len(receiver.requests) == 1
    assert sleeps == []


def test_a_redirect_is_permanent(receiver: Receiver) -> None:
    receiver.script(Reply(301, {"Location": "https://crm.acme.test/new"}))
    result = _channel(receiver.url, []).send(_message())
    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert "https://crm.acme.test/new" in result.error
    assert len(receiver.requests) == 1


def test_timeouts_are_retried_then_transient(receiver: Receiver) -> None:
    receiver.script(*[Reply(200, stall=5.0)] * 3)
    sleeps: list[float] = []
    result = _channel(receiver.url, sleeps, timeout=0.2, max_attempts=3).send(_message())
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert "timeout" in result.error
    assert "after 3 attempts" in result.error
    assert len(receiver.requests) == 3
    assert sleeps == [0.5, 2.0]


def test_a_timeout_then_success(receiver: Receiver) -> None:
    receiver.script(Reply(200, stall=5.0))
    sleeps: list[float] = []
    result = _channel(receiver.url, sleeps, timeout=0.2).send(_message())
    assert result.status is DeliveryStatus.SENT, result.error
    assert len(receiver.requests) == 2


def test_connection_refused_is_retried_then_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps: list[float] = []
    result = _channel(f"http://127.0.0.1:{port}/hook", sleeps).send(_message())
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert "ConnectError" in result.error
    assert sleeps == [0.5, 2.0, 8.0]


def test_a_key_that_cannot_be_a_header_is_permanent(receiver: Receiver) -> None:
    result = _channel(receiver.url, []).send(_message(key="k\r\nX-Evil: 1"))
    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert receiver.requests == []


# --------------------------------------------------------------------------- signatures


def test_sign_matches_an_independent_hmac() -> None:
    body = b'{"id":"k"}'
    header = sign(SECRET, body, 1_700_000_000)
    assert _independent_signature_check(header, body) == 1_700_000_000
    assert header.startswith("t=1700000000,v1=")


def test_verify_signature_accepts_a_fresh_untampered_request(receiver: Receiver) -> None:
    assert _channel(receiver.url, []).send(_message()).status is DeliveryStatus.SENT
    [request] = receiver.requests
    header = request.headers["recobra-signature"]
    assert verify_signature(SECRET, header, request.body, now=T0 + timedelta(seconds=299))
    assert verify_signature(SECRET.encode(), header, request.body, now=T0)


def test_verify_signature_rejects_tampering_replays_and_garbage() -> None:
    body = b'{"id":"recobra:case_42:1:webhook","data":{"amount":1999}}'
    stamp = int(T0.timestamp())
    header = sign(SECRET, body, stamp)
    assert verify_signature(SECRET, header, body, now=T0)
    assert not verify_signature(SECRET, header, body.replace(b"1999", b"1"), now=T0)  # tampered body
    assert not verify_signature("whsec_other", header, body, now=T0)  # wrong secret
    assert not verify_signature(SECRET, header, body, now=T0 + timedelta(seconds=301))  # too old
    assert not verify_signature(SECRET, header, body, now=T0 - timedelta(seconds=301))  # from the future
    assert verify_signature(SECRET, header, body, now=T0 + timedelta(seconds=1000), tolerance=1000)
    # The timestamp is signed: moving it to look fresh breaks the signature.
    moved = header.replace(f"t={stamp}", f"t={stamp + 600}")
    assert not verify_signature(SECRET, moved, body, now=T0 + timedelta(seconds=600))
    for garbage in ("", "v1=abc", f"t={stamp}", f"t=soon,v1={'0' * 64}", "t=1,v1=ñ", "nonsense"):
        assert not verify_signature(SECRET, garbage, body, now=T0)


def test_verify_signature_accepts_any_of_several_signatures() -> None:
    body = b"{}"
    stamp = int(T0.timestamp())
    old = sign("whsec_old", body, stamp).split(",")[1]
    rotated = sign(SECRET, body, stamp) + "," + old
    assert verify_signature(SECRET, rotated, body, now=T0)
    assert verify_signature("whsec_old", rotated, body, now=T0)


# --------------------------------------------------------------------------- settings


def test_from_settings(receiver: Receiver) -> None:
    channel = from_settings(
        {
            "url": receiver.url,
            "secret": SECRET,
            "timeout": "2.5",
            "max_attempts": "2",
            "backoff": "0.1, 0.2",
            "max_retry_after": "30",
        }
    )
    assert channel.kind == "webhook"
    assert (channel.timeout, channel.max_attempts, channel.backoff) == (2.5, 2, (0.1, 0.2))
    assert channel.max_retry_after == 30.0
    assert SECRET not in repr(channel)
    assert channel.send(_message()).status is DeliveryStatus.SENT
    _independent_signature_check(receiver.requests[0].headers["recobra-signature"], receiver.requests[0].body)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"secret": SECRET}, "url"),
        ({"url": "https://crm.acme.test/hook"}, "secret"),
        ({"url": "crm.acme.test/hook", "secret": SECRET}, "url"),
        ({"url": "https://crm.acme.test/hook", "secret": SECRET, "timeout": "0"}, "timeout"),
        ({"url": "https://crm.acme.test/hook", "secret": SECRET, "max_attempts": "0"}, "max_attempts"),
        ({"url": "https://crm.acme.test/hook", "secret": SECRET, "max_attempts": "x"}, "max_attempts"),
        ({"url": "https://crm.acme.test/hook", "secret": SECRET, "backoff": "1,-2"}, "backoff"),
        ({"url": "https://crm.acme.test/hook", "secret": SECRET, "backoff": "1,,2"}, "backoff"),
        ({"url": "https://crm.acme.test/hook", "secret": SECRET, "retries": "3"}, "retries"),
    ],
)
def test_from_settings_rejects_bad_values_naming_the_key(settings: dict[str, str], key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}:") as caught:
        from_settings(settings)
    assert SECRET not in str(caught.value)
