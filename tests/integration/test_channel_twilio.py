"""SMS and voice through Twilio's SDK against a local fake of Twilio's REST API.

The fake (a stdlib HTTP server on 127.0.0.1) implements ``POST
/2010-04-01/Accounts/{sid}/Messages.json`` and ``/Calls.json`` with realistic
JSON answers or Twilio-shaped errors, and records every request so the tests
check what went on the wire: path, Basic auth, form fields, TwiML.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import re
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest

from recobra.channels.twilio import (
    OPT_IN_KEYWORDS,
    OPT_OUT_KEYWORDS,
    TwilioSmsChannel,
    TwilioVoiceChannel,
    handle_gather,
    parse_inbound_sms,
    sms_from_settings,
    validate_twilio_signature,
    voice_from_settings,
    voice_language,
)
from recobra.ports import Channel, DeliveryStatus, OutgoingMessage

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "f00dfeedcafe1234f00dfeedcafe1234"
MG_SID = "MG" + "fedcba9876543210" * 2
FROM = "+34911234567"
CALLBACK = "https://recobra.example/twilio/status"
GATHER = "https://recobra.example/twilio/gather"
SPANISH = (
    "Hola Begoña: tu pago de 29,00 € no se pudo cobrar. Actualiza tu tarjeta aquí: https://pay.example/ñ"
)

_PATH = re.compile(
    r"^(?P<prefix>.*)/2010-04-01/Accounts/(?P<sid>AC[0-9a-f]{32})/(?P<res>Messages|Calls)\.json$"
)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]]


@dataclass
class FakeTwilio:
    """What the fake server saw, and the errors it should answer with next."""

    base_url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    errors: list[tuple[int, bytes, str]] = field(default_factory=list)
    delay: float = 0.0
    counter: int = 0

    def fail_next(self, status: int, code: int | None = None, message: str = "Error") -> None:
        if code is None:
            self.errors.append((status, b"<html><body>Bad gateway</body></html>", "text/html"))
            return
        body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        self.errors.append((status, json.dumps(body).encode(), "application/json"))

    def only(self) -> Recorded:
        assert len(self.requests) == 1, self.requests
        return self.requests[0]


def _message_json(sid: str, account: str, form: Mapping[str, list[str]]) -> dict[str, Any]:
    now = "Mon, 01 Jun 2026 10:00:00 +0000"
    return {
        "account_sid": account,
        "api_version": "2010-04-01",
        "body": form.get("Body", [""])[0],
        "date_created": now,
        "date_sent": None,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": form.get("From", [None])[0],
        "messaging_service_sid": form.get("MessagingServiceSid", [None])[0],
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": "accepted" if "MessagingServiceSid" in form else "queued",
        "subresource_uris": {"media": f"/2010-04-01/Accounts/{account}/Messages/{sid}/Media.json"},
        "to": form["To"][0],
        "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
    }


def _call_json(sid: str, account: str, form: Mapping[str, list[str]]) -> dict[str, Any]:
    now = "Mon, 01 Jun 2026 10:00:00 +0000"
    return {
        "account_sid": account,
        "annotation": None,
        "answered_by": None,
        "api_version": "2010-04-01",
        "caller_name": None,
        "date_created": now,
        "date_updated": now,
        "direction": "outbound-api",
        "duration": None,
        "end_time": None,
        "forwarded_from": None,
        "from": form["From"][0],
        "from_formatted": form["From"][0],
        "group_sid": None,
        "parent_call_sid": None,
        "phone_number_sid": "PN" + "1" * 32,
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "start_time": None,
        "status": "queued",
        "subresource_uris": {},
        "to": form["To"][0],
        "to_formatted": form["To"][0],
        "trunk_sid": None,
        "uri": f"/2010-04-01/Accounts/{account}/Calls/{sid}.json",
        "queue_time": "0",
    }


def _handler(fake: FakeTwilio) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client timed out
                self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
            fake.requests.append(Recorded("POST", self.path, dict(self.headers.items()), form))
            if fake.delay:
                time.sleep(fake.delay)
            match = _PATH.match(self.path)
            if match is None:
                self._send(404, b'{"code": 20404, "message": "not found", "status": 404}', "application/json")
                return
            if fake.errors:
                self._send(*fake.errors.pop(0))
                return
            fake.counter += 1
            if match["res"] == "Messages":
                sid = f"SM{fake.counter:032x}"
                doc = _message_json(sid, match["sid"], form)
            else:
                sid = f"CA{fake.counter:032x}"
                doc = _call_json(sid, match["sid"], form)
            self._send(201, json.dumps(doc).encode(), "application/json")

    return Handler


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _msg(
    to: str = "+34 600 12 34 56", *, channel: str = "sms", text: str = SPANISH, **kw: Any
) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "key": "case-1/step-2/sms",
        "customer_id": "cus_1",
        "kind": "payment_failed",
        "channel": channel,
        "locale": "es",
        "to": to,
        "text": text,
    }
    fields.update(kw)
    return OutgoingMessage(**fields)


def _sms(fake: FakeTwilio, **kw: Any) -> TwilioSmsChannel:
    kw.setdefault("from_number", FROM)
    return TwilioSmsChannel(SID, TOKEN, base_url=fake.base_url, **kw)


def _voice(fake: FakeTwilio, **kw: Any) -> TwilioVoiceChannel:
    return TwilioVoiceChannel(SID, TOKEN, from_number=FROM, base_url=fake.base_url, **kw)


def _basic(headers: Mapping[str, str]) -> tuple[str, str]:
    scheme, _, value = headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(value).decode().partition(":")
    return user, password


# ---------------------------------------------------------------- SMS


def test_sms_goes_on_the_wire_as_twilio_expects(twilio: FakeTwilio) -> None:
    channel = _sms(twilio, status_callback=CALLBACK)
    assert isinstance(channel, Channel)
    assert channel.kind == "sms"

    result = channel.send(_msg())

    assert result.status is DeliveryStatus.SENT
    assert result.provider_id == "SM" + "0" * 31 + "1"
    assert result.error == ""
    sent = twilio.only()
    assert sent.method == "POST"
    assert sent.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert _basic(sent.headers) == (SID, TOKEN)
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent.form == {
        "To": ["+34600123456"],
        "From": [FROM],
        "Body": [SPANISH],
        "StatusCallback": [CALLBACK],
    }


def test_sms_through_a_messaging_service(twilio: FakeTwilio) -> None:
    channel = TwilioSmsChannel(SID, TOKEN, messaging_service_sid=MG_SID, base_url=twilio.base_url)

    result = channel.send(_msg("+52 55 1234 5678", text="Tu pago falló."))

    assert result.status is DeliveryStatus.SENT
    sent = twilio.only()
    assert sent.form == {"To": ["+525512345678"], "MessagingServiceSid": [MG_SID], "Body": ["Tu pago falló."]}


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 21211), (400, 21610), (400, 21614), (400, 21408), (400, 21602), (401, 20003)],
)
def test_sms_permanent_errors_keep_the_twilio_code(twilio: FakeTwilio, status: int, code: int) -> None:
    twilio.fail_next(status, code, "The message From/To pair violates a blacklist rule.")

    result = _sms(twilio).send(_msg())

    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert result.error == f"twilio {code}: The message From/To pair violates a blacklist rule."
    assert result.provider_id is None
    assert len(twilio.requests) == 1


def test_stop_is_recognisable_in_the_error(twilio: FakeTwilio) -> None:
    twilio.fail_next(400, 21610, "Attempt to send to unsubscribed recipient")

    result = _sms(twilio).send(_msg())

    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert result.error.startswith("twilio 21610:")


@pytest.mark.parametrize(
    ("status", "code"), [(429, 20429), (500, 20500), (503, 20503), (502, None), (503, None)]
)
def test_sms_transient_errors(twilio: FakeTwilio, status: int, code: int | None) -> None:
    twilio.fail_next(status, code, "Too Many Requests")

    result = _sms(twilio).send(_msg())

    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert result.error.startswith(f"twilio {code or status}:")


def test_sms_network_errors_are_transient() -> None:
    channel = TwilioSmsChannel(SID, TOKEN, from_number=FROM, base_url=f"http://127.0.0.1:{_closed_port()}")

    result = channel.send(_msg())

    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert result.error.startswith("twilio network error: ConnectionError")


def test_sms_timeouts_are_transient(twilio: FakeTwilio) -> None:
    twilio.delay = 1.0
    result = _sms(twilio, timeout=0.2).send(_msg())

    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert "Timeout" in result.error


@pytest.mark.parametrize(
    ("to", "reason"),
    [
        ("600123456", "no country code"),
        ("+34 123", "too short"),
        ("+44 7700 900123", "not a valid number"),
        ("call me maybe", "not a phone number"),
        ("", "empty"),
    ],
)
def test_invalid_numbers_never_reach_twilio(twilio: FakeTwilio, to: str, reason: str) -> None:
    for channel in (_sms(twilio), _voice(twilio)):
        result = channel.send(_msg(to))
        assert result.status is DeliveryStatus.PERMANENT_FAILURE
        assert reason in result.error
    assert twilio.requests == []


def test_empty_sms_is_not_sent(twilio: FakeTwilio) -> None:
    result = _sms(twilio).send(_msg(text="  "))

    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert twilio.requests == []


def test_base_url_keeps_a_path_prefix_and_wins_over_edge_settings(
    twilio: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    channel = TwilioSmsChannel(SID, TOKEN, from_number=FROM, base_url=twilio.base_url + "/proxy/")

    assert channel.send(_msg()).status is DeliveryStatus.SENT
    assert twilio.only().path == f"/proxy/2010-04-01/Accounts/{SID}/Messages.json"


def test_the_token_is_never_logged(twilio: FakeTwilio, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    channel = _sms(twilio)
    channel.send(_msg())
    twilio.fail_next(400, 21610, "unsubscribed")
    channel.send(_msg())

    assert caplog.records  # the SDK does log its requests
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(channel)
    assert base64.b64encode(f"{SID}:{TOKEN}".encode()).decode() not in caplog.text


# ---------------------------------------------------------------- voice


def _twiml(recorded: Recorded) -> ET.Element:
    root = ET.fromstring(recorded.form["Twiml"][0])
    assert root.tag == "Response"
    return root


def test_voice_call_in_spanish_from_spain_offers_the_link_by_sms(twilio: FakeTwilio) -> None:
    channel = _voice(twilio, status_callback=CALLBACK, gather_action_url=GATHER)
    assert isinstance(channel, Channel)
    assert channel.kind == "voice"
    script = "Hola, le llamamos de Acme: no hemos podido cobrar su suscripción de 29,00 euros."

    result = channel.send(_msg(channel="voice", text=script, data={"offer_sms_link": True}))

    assert result.status is DeliveryStatus.SENT
    assert result.provider_id == "CA" + "0" * 31 + "1"
    sent = twilio.only()
    assert sent.path == f"/2010-04-01/Accounts/{SID}/Calls.json"
    assert _basic(sent.headers) == (SID, TOKEN)
    assert sent.form["To"] == ["+34600123456"]
    assert sent.form["From"] == [FROM]
    assert sent.form["StatusCallback"] == [CALLBACK]
    assert "Url" not in sent.form

    root = _twiml(sent)
    assert [child.tag for child in root] == ["Say", "Gather", "Say"]
    intro, gather, goodbye = root
    assert intro.get("language") == "es-ES"
    assert intro.text == script
    assert gather.get("numDigits") == "1"
    assert gather.get("method") == "POST"
    action = urlsplit(gather.get("action") or "")
    assert f"{action.scheme}://{action.netloc}{action.path}" == GATHER
    assert parse_qsl(action.query) == [("key", "case-1/step-2/sms")]
    (prompt,) = gather
    assert prompt.tag == "Say"
    assert prompt.get("language") == "es-ES"
    assert prompt.text == "Pulse 1 para recibir el enlace por SMS."
    assert goodbye.get("language") == "es-ES"
    assert goodbye.text == "Gracias por su atención. Hasta luego."


def test_voice_call_to_mexico_uses_mexican_spanish(twilio: FakeTwilio) -> None:
    channel = _voice(twilio, gather_action_url=GATHER + "?tenant=acme")

    channel.send(_msg("+52 55 1234 5678", channel="voice", text="Hola.", data={"offer_sms_link": True}))

    root = _twiml(twilio.only())
    assert {el.get("language") for el in root.iter("Say")} == {"es-MX"}
    gather = root.find("Gather")
    assert gather is not None
    assert parse_qsl(urlsplit(gather.get("action") or "").query) == [
        ("tenant", "acme"),
        ("key", "case-1/step-2/sms"),
    ]
    assert "StatusCallback" not in twilio.only().form


def test_voice_call_in_english_without_the_offer(twilio: FakeTwilio) -> None:
    channel = _voice(twilio, gather_action_url=GATHER)

    channel.send(_msg("+1 212 555 0123", channel="voice", locale="en", text="Hello from Acme."))

    root = _twiml(twilio.only())
    assert [child.tag for child in root] == ["Say", "Say"]
    assert [el.get("language") for el in root] == ["en-US", "en-US"]
    assert root[0].text == "Hello from Acme."
    assert root[1].text == "Thank you for your time. Goodbye."


@pytest.mark.parametrize(("flag", "offered"), [("true", True), (1, False), ("no", False), (None, False)])
def test_voice_offer_flag(twilio: FakeTwilio, flag: object, offered: bool) -> None:
    _voice(twilio, gather_action_url=GATHER).send(
        _msg(channel="voice", text="Hola.", data={"offer_sms_link": flag})
    )

    assert (_twiml(twilio.only()).find("Gather") is not None) is offered


def test_voice_offer_needs_a_gather_url(twilio: FakeTwilio) -> None:
    _voice(twilio).send(_msg(channel="voice", locale="en", text="Hello.", data={"offer_sms_link": True}))

    assert [child.tag for child in _twiml(twilio.only())] == ["Say", "Say"]


def test_english_offer_prompt(twilio: FakeTwilio) -> None:
    _voice(twilio, gather_action_url=GATHER).send(
        _msg("+1 212 555 0123", channel="voice", locale="en-US", text="Hi.", data={"offer_sms_link": True})
    )

    gather = _twiml(twilio.only()).find("Gather")
    assert gather is not None
    assert [say.text for say in gather] == ["Press 1 to receive the link by SMS."]


def test_voice_errors_are_mapped(twilio: FakeTwilio) -> None:
    channel = _voice(twilio)
    twilio.fail_next(400, 21215, "Account not authorized to call +34600123456.")
    twilio.fail_next(503, 20503, "Service unavailable")

    first = channel.send(_msg(channel="voice", text="Hola."))
    second = channel.send(_msg(channel="voice", text="Hola."))

    assert first.status is DeliveryStatus.PERMANENT_FAILURE
    assert first.error.startswith("twilio 21215:")
    assert second.status is DeliveryStatus.TRANSIENT_FAILURE


def test_empty_voice_script_is_not_called(twilio: FakeTwilio) -> None:
    result = _voice(twilio).send(_msg(channel="voice", text=""))

    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert twilio.requests == []


@pytest.mark.parametrize(
    ("locale", "phone", "expected"),
    [
        ("es", "+34600123456", "es-ES"),
        ("es", "+525512345678", "es-MX"),
        ("es", "+5491123456789", "es-MX"),
        ("es", "+12125550123", "es-MX"),
        ("es", "+447911123456", "es-ES"),
        ("es", None, "es-ES"),
        ("es-MX", "+34600123456", "es-MX"),
        ("es_AR", None, "es-MX"),
        ("es-419", None, "es-MX"),
        ("es-ES", "+525512345678", "es-ES"),
        ("es-FR", "+525512345678", "es-MX"),
        ("en", "+34600123456", "en-US"),
        ("en-GB", None, "en-US"),
        ("pt-BR", "+5511987654321", "en-US"),
    ],
)
def test_voice_language(locale: str, phone: str | None, expected: str) -> None:
    assert voice_language(locale, phone) == expected


@pytest.mark.parametrize(
    ("digits", "key", "expected"),
    [
        ("1", "k", True),
        (" 1 ", "k", True),
        ("2", "k", False),
        ("", "k", False),
        ("11", "k", False),
        ("1", "", False),
    ],
)
def test_handle_gather(digits: str, key: str, expected: bool) -> None:
    assert handle_gather(digits, key) is expected


# ---------------------------------------------------------------- inbound


@pytest.mark.parametrize(
    "body",
    ["STOP", "stop", " Stop ", "STOPALL", "Unsubscribe", "cancel", "END", "quit", "PARAR", "Baja.", "baja",
     "CANCELAR", "alto", "Alto!"],
)  # fmt: skip
def test_opt_out_keywords(body: str) -> None:
    inbound = parse_inbound_sms({"From": "+34600123456", "To": FROM, "Body": body, "MessageSid": "SM1"})

    assert inbound.is_stop
    assert not inbound.is_start
    assert inbound.from_number == "+34600123456"
    assert inbound.body == body
    assert inbound.to_number == FROM
    assert inbound.message_sid == "SM1"


@pytest.mark.parametrize("body", ["START", "start", "YES", "unstop", "ALTA", "Sí", "si", "SÍ."])
def test_opt_in_keywords(body: str) -> None:
    inbound = parse_inbound_sms({"From": "+525512345678", "Body": body})

    assert inbound.is_start
    assert not inbound.is_stop


@pytest.mark.parametrize("body", ["", "Hola, ya pagué", "stop calling me", "no", "HELP", "¿baja de qué?"])
def test_other_messages_are_neither(body: str) -> None:
    inbound = parse_inbound_sms({"From": "+34600123456", "Body": body})

    assert not inbound.is_stop
    assert not inbound.is_start


def test_advanced_opt_out_type_wins() -> None:
    assert parse_inbound_sms({"From": "+1", "Body": "Arrêtez", "OptOutType": "STOP"}).is_stop
    started = parse_inbound_sms({"From": "+1", "Body": "go", "OptOutType": "START"})
    assert started.is_start
    assert not started.is_stop


def test_keyword_sets() -> None:
    assert {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"} <= OPT_OUT_KEYWORDS
    assert {"PARAR", "BAJA", "CANCELAR", "ALTO"} <= OPT_OUT_KEYWORDS
    assert {"START", "YES", "UNSTOP", "ALTA", "SI"} <= OPT_IN_KEYWORDS
    assert not OPT_IN_KEYWORDS & OPT_OUT_KEYWORDS


def _signature(token: str, url: str, params: Mapping[str, str]) -> str:
    """Twilio's documented algorithm, written independently of the SDK."""
    data = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(token.encode(), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def test_signature_validation() -> None:
    url = "https://recobra.example/twilio/inbound?tenant=acme"
    params = {
        "From": "+34600123456",
        "To": FROM,
        "Body": "BAJA ñ",
        "MessageSid": "SM" + "a" * 32,
        "AccountSid": SID,
    }
    signature = _signature(TOKEN, url, params)

    assert validate_twilio_signature(TOKEN, url, params, signature)
    assert not validate_twilio_signature(TOKEN, url, {**params, "Body": "ALTA"}, signature)
    assert not validate_twilio_signature(TOKEN, url.replace("acme", "evil"), params, signature)
    assert not validate_twilio_signature("0" * 32, url, params, signature)
    assert not validate_twilio_signature(TOKEN, url, params, "")
    assert not validate_twilio_signature(TOKEN, url, params, "not base64 at all")
    assert not validate_twilio_signature("", url, params, signature)


# ---------------------------------------------------------------- construction and settings


def test_settings_build_working_channels(twilio: FakeTwilio) -> None:
    common = {"account_sid": SID, "auth_token": TOKEN, "base_url": twilio.base_url, "from_number": FROM}
    sms = sms_from_settings({**common, "status_callback": CALLBACK, "gather_action_url": GATHER})
    voice = voice_from_settings({**common, "gather_action_url": GATHER, "timeout": "5"})

    assert sms.send(_msg()).status is DeliveryStatus.SENT
    assert voice.send(_msg(channel="voice", text="Hola.", data={"offer_sms_link": True})).status is (
        DeliveryStatus.SENT
    )
    assert [r.path.rsplit("/", 1)[1] for r in twilio.requests] == ["Messages.json", "Calls.json"]
    assert twilio.requests[0].form["StatusCallback"] == [CALLBACK]
    assert _twiml(twilio.requests[1]).find("Gather") is not None


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"auth_token": TOKEN, "from_number": FROM}, "account_sid"),
        ({"account_sid": "AC123", "auth_token": TOKEN, "from_number": FROM}, "account_sid"),
        ({"account_sid": SID, "from_number": FROM}, "auth_token"),
        ({"account_sid": SID, "auth_token": "  ", "from_number": FROM}, "auth_token"),
        ({"account_sid": SID, "auth_token": TOKEN}, "from_number"),
        ({"account_sid": SID, "auth_token": TOKEN, "from_number": "911234567"}, "from_number"),
        ({"account_sid": SID, "auth_token": TOKEN, "messaging_service_sid": "MG1"}, "messaging_service_sid"),
        (
            {"account_sid": SID, "auth_token": TOKEN, "from_number": FROM, "status_callback": "x"},
            "status_callback",
        ),
        ({"account_sid": SID, "auth_token": TOKEN, "from_number": FROM, "base_url": "ftp://x"}, "base_url"),
        ({"account_sid": SID, "auth_token": TOKEN, "from_number": FROM, "timeout": "0"}, "timeout"),
        ({"account_sid": SID, "auth_token": TOKEN, "from_number": FROM, "token": TOKEN}, "token"),
    ],
)
def test_sms_settings_errors_name_the_key(settings: dict[str, str], key: str) -> None:
    with pytest.raises(ValueError, match=rf"^{key}: ") as excinfo:
        sms_from_settings(settings)
    assert TOKEN not in str(excinfo.value).split(":", 1)[1]


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"account_sid": SID, "auth_token": TOKEN, "messaging_service_sid": MG_SID}, "from_number"),
        ({"account_sid": SID, "auth_token": TOKEN, "from_number": "Acme"}, "from_number"),
        (
            {"account_sid": SID, "auth_token": TOKEN, "from_number": FROM, "gather_action_url": "/g"},
            "gather_action_url",
        ),
    ],
)
def test_voice_settings_errors_name_the_key(settings: dict[str, str], key: str) -> None:
    with pytest.raises(ValueError, match=rf"^{key}: "):
        voice_from_settings(settings)


def test_sms_senders() -> None:
    assert TwilioSmsChannel(SID, TOKEN, from_number="Acme Pay").from_number == "Acme Pay"
    assert TwilioSmsChannel(SID, TOKEN, from_number="24365").from_number == "24365"
    assert TwilioSmsChannel(SID, TOKEN, from_number="+34 911 23 45 67").from_number == FROM
    with pytest.raises(ValueError, match=r"^from_number: "):
        TwilioSmsChannel(SID, TOKEN, from_number="Acme Payments Ltd")


def test_a_ready_client_excludes_base_url() -> None:
    with pytest.raises(ValueError, match=r"^base_url: "):
        TwilioSmsChannel(SID, TOKEN, from_number=FROM, client=object(), base_url="http://127.0.0.1:1")
