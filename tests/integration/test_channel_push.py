"""Web push with VAPID against a local push endpoint.

The test plays the browser: it makes a real subscription key pair, receives the
request on a stdlib HTTP server on 127.0.0.1, decrypts the aes128gcm body with
``http_ece`` and checks the VAPID JWT with ``cryptography`` alone.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import http_ece  # type: ignore[import-untyped]
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from recobra.channels.push import (
    MAX_PAYLOAD_BYTES,
    SUBSCRIPTION_GONE,
    WebPushChannel,
    from_settings,
    generate_vapid_keys,
)
from recobra.ports import Channel, DeliveryStatus, OutgoingMessage

SUBJECT = "mailto:ops@recobra.example"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class PushService:
    origin: str = ""
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def only(self) -> Received:
        assert len(self.received) == 1, self.received
        return self.received[0]


@pytest.fixture
def push_service() -> Iterator[PushService]:
    service = PushService()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            service.received.append(
                Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            status = service.statuses.pop(0) if service.statuses else 201
            self.send_response(status)
            if status == 201:
                self.send_header("Location", f"{service.origin}/message/m-{len(service.received)}")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    service.origin = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Browser:
    """A push subscription as a browser makes it: its private key stays here."""

    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    endpoint: str

    @classmethod
    def subscribe(cls, endpoint: str) -> Browser:
        return cls(ec.generate_private_key(ec.SECP256R1()), os.urandom(16), endpoint)

    def subscription(self) -> str:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return json.dumps(
            {
                "endpoint": self.endpoint,
                "expirationTime": None,
                "keys": {"p256dh": b64url(point), "auth": b64url(self.auth)},
            }
        )

    def decrypt(self, body: bytes) -> Any:
        plain = http_ece.decrypt(
            body, private_key=self.private_key, auth_secret=self.auth, version="aes128gcm"
        )
        return json.loads(plain.decode("utf-8"))


@pytest.fixture
def vapid() -> tuple[str, str]:
    return generate_vapid_keys()


def _msg(to: str, **kw: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "key": "case-7/step-1/push",
        "customer_id": "cus_7",
        "kind": "payment_failed",
        "channel": "push",
        "locale": "es-MX",
        "to": to,
        "subject": "Tu pago no se pudo procesar",
        "text": "Actualiza tu método de pago para seguir con tu suscripción: 199,00 MXN. ¡Gracias!",
        "data": {"url": "https://app.example/billing?ref=ñ"},
    }
    fields.update(kw)
    return OutgoingMessage(**fields)


def _verify_vapid(authorization: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Check the ES256 JWT with the public key ``k`` from the header; return header, claims, k."""
    scheme, _, rest = authorization.partition(" ")
    assert scheme == "vapid"
    params = dict(part.strip().split("=", 1) for part in rest.split(","))
    assert set(params) == {"t", "k"}
    token, k = params["t"], params["k"]
    signing_input, _, signature = token.rpartition(".")
    header_b64, _, claims_b64 = signing_input.partition(".")
    raw_sig = unb64url(signature)
    assert len(raw_sig) == 64
    der = encode_dss_signature(int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big"))
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(k))
    public.verify(der, signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))  # raises if forged
    with pytest.raises(InvalidSignature):
        public.verify(der, signing_input.encode("ascii") + b"x", ec.ECDSA(hashes.SHA256()))
    return json.loads(unb64url(header_b64)), json.loads(unb64url(claims_b64)), k


def test_push_is_encrypted_for_the_browser_and_signed_with_vapid(
    push_service: PushService, vapid: tuple[str, str]
) -> None:
    private_pem, public_key = vapid
    channel = WebPushChannel(private_pem, SUBJECT)
    assert isinstance(channel, Channel)
    assert channel.kind == "push"
    assert channel.public_key == public_key
    browser = Browser.subscribe(f"{push_service.origin}/push/v2/gAAAAABf-token_123")
    message = _msg(browser.subscription())

    before = time.time()
    result = channel.send(message)

    assert result.status is DeliveryStatus.SENT
    assert result.provider_id == f"{push_service.origin}/message/m-1"
    received = push_service.only()
    assert received.path == "/push/v2/gAAAAABf-token_123"
    assert received.headers["content-encoding"] == "aes128gcm"
    assert received.headers["ttl"] == "86400"
    assert browser.decrypt(received.body) == {
        "title": "Tu pago no se pudo procesar",
        "body": "Actualiza tu método de pago para seguir con tu suscripción: 199,00 MXN. ¡Gracias!",
        "url": "https://app.example/billing?ref=ñ",
        "key": "case-7/step-1/push",
        "kind": "payment_failed",
    }

    header, claims, k = _verify_vapid(received.headers["authorization"])
    assert header == {"typ": "JWT", "alg": "ES256"}
    assert k == public_key
    assert claims["aud"] == push_service.origin
    assert claims["sub"] == SUBJECT
    assert before < claims["exp"] <= time.time() + 24 * 3600


def test_raw_private_key_ttl_and_no_url(push_service: PushService) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    raw = b64url(private.private_numbers().private_value.to_bytes(32, "big"))
    channel = WebPushChannel(raw, "https://recobra.example/contact", ttl=600)
    browser = Browser.subscribe(f"{push_service.origin}/p/1")

    result = channel.send(_msg(browser.subscription(), data=None, subject="", text="Hola"))

    assert result.status is DeliveryStatus.SENT
    received = push_service.only()
    assert received.headers["ttl"] == "600"
    assert browser.decrypt(received.body)["url"] is None
    _, claims, k = _verify_vapid(received.headers["authorization"])
    assert claims["sub"] == "https://recobra.example/contact"
    expected_k = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert unb64url(k) == expected_k


@pytest.mark.parametrize(
    ("status", "expected", "error"),
    [
        (410, DeliveryStatus.PERMANENT_FAILURE, SUBSCRIPTION_GONE),
        (404, DeliveryStatus.PERMANENT_FAILURE, SUBSCRIPTION_GONE),
        (413, DeliveryStatus.PERMANENT_FAILURE, "push payload too large (HTTP 413)"),
        (400, DeliveryStatus.PERMANENT_FAILURE, "push service HTTP 400: Bad Request"),
        (403, DeliveryStatus.PERMANENT_FAILURE, "push service HTTP 403: Forbidden"),
        (429, DeliveryStatus.TRANSIENT_FAILURE, "push service HTTP 429: Too Many Requests"),
        (500, DeliveryStatus.TRANSIENT_FAILURE, "push service HTTP 500: Internal Server Error"),
        (503, DeliveryStatus.TRANSIENT_FAILURE, "push service HTTP 503: Service Unavailable"),
        (202, DeliveryStatus.SENT, ""),
    ],
)
def test_push_service_answers(
    push_service: PushService, vapid: tuple[str, str], status: int, expected: DeliveryStatus, error: str
) -> None:
    push_service.statuses.append(status)
    browser = Browser.subscribe(f"{push_service.origin}/push/x")

    result = WebPushChannel(vapid[0], SUBJECT).send(_msg(browser.subscription()))

    assert result.status is expected
    assert result.error == error
    assert len(push_service.received) == 1


def test_network_errors_are_transient(vapid: tuple[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    browser = Browser.subscribe(f"http://127.0.0.1:{port}/push/x")

    result = WebPushChannel(vapid[0], SUBJECT, timeout=2).send(_msg(browser.subscription()))

    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert result.error.startswith("push network error: ConnectionError")


def _sub(endpoint: str = "https://push.example/x", p256dh: str | None = None, auth: str | None = None) -> str:
    browser = Browser.subscribe(endpoint)
    doc = json.loads(browser.subscription())
    if p256dh is not None:
        doc["keys"]["p256dh"] = p256dh
    if auth is not None:
        doc["keys"]["auth"] = auth
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("to", "reason"),
    [
        ("", "not JSON"),
        ("{not json", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"keys": {"p256dh": "x", "auth": "y"}}', "no endpoint"),
        (_sub("ftp://push.example/x"), "endpoint is not an https URL"),
        (_sub("http://push.example/x"), "endpoint is not an https URL"),
        ('{"endpoint": "https://push.example/x"}', "no keys"),
        (
            '{"endpoint": "https://push.example/x", "keys": {"p256dh": 1, "auth": "a"}}',
            "keys.p256dh and keys.auth must be strings",
        ),
        (_sub(p256dh=b64url(b"\x04" + b"\x01" * 64)), "keys.p256dh is not an uncompressed P-256 point"),
        (_sub(p256dh=b64url(b"\x04" * 33)), "keys.p256dh is not an uncompressed P-256 point"),
        (_sub(p256dh="@@@"), "keys are not base64url"),
        (_sub(auth=b64url(b"short")), "keys.auth is not a 16-byte secret"),
    ],
)
def test_invalid_subscriptions_are_permanent_without_a_request(
    push_service: PushService, vapid: tuple[str, str], to: str, reason: str
) -> None:
    result = WebPushChannel(vapid[0], SUBJECT).send(_msg(to))

    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert result.error == f"invalid push subscription: {reason}"
    assert push_service.received == []


def test_oversized_payload_is_permanent_without_a_request(
    push_service: PushService, vapid: tuple[str, str]
) -> None:
    browser = Browser.subscribe(f"{push_service.origin}/push/x")

    result = WebPushChannel(vapid[0], SUBJECT).send(
        _msg(browser.subscription(), text="€" * MAX_PAYLOAD_BYTES)
    )

    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert result.error.startswith("push payload too large")
    assert push_service.received == []


def test_generated_keys_are_a_p256_pair(vapid: tuple[str, str]) -> None:
    private_pem, public_key = vapid
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert unb64url(public_key) == point
    assert "=" not in public_key


def test_settings(push_service: PushService, vapid: tuple[str, str]) -> None:
    escaped = vapid[0].replace("\n", "\\n")  # as it often ends up in environment variables
    channel = from_settings({"vapid_private_key": escaped, "vapid_subject": SUBJECT, "ttl": "3600"})
    browser = Browser.subscribe(f"{push_service.origin}/push/x")

    assert channel.send(_msg(browser.subscription())).status is DeliveryStatus.SENT
    assert push_service.only().headers["ttl"] == "3600"
    assert channel.public_key == vapid[1]
    assert vapid[0] not in repr(channel)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"vapid_subject": SUBJECT}, "vapid_private_key"),
        ({"vapid_private_key": "not a key", "vapid_subject": SUBJECT}, "vapid_private_key"),
        ({"vapid_private_key": "PEM", "vapid_subject": "ops@recobra.example"}, "vapid_subject"),
        ({"vapid_private_key": "PEM", "vapid_subject": "http://recobra.example"}, "vapid_subject"),
        ({"vapid_private_key": "PEM"}, "vapid_subject"),
        ({"vapid_private_key": "PEM", "vapid_subject": SUBJECT, "ttl": "1h"}, "ttl"),
        ({"vapid_private_key": "PEM", "vapid_subject": SUBJECT, "ttl": "-1"}, "ttl"),
        ({"vapid_private_key": "PEM", "vapid_subject": SUBJECT, "timeout": "0"}, "timeout"),
        ({"vapid_private_key": "PEM", "vapid_subject": SUBJECT, "endpoint": "x"}, "endpoint"),
    ],
)
def test_settings_errors_name_the_key(vapid: tuple[str, str], settings: dict[str, str], key: str) -> None:
    if settings.get("vapid_private_key") == "PEM":
        settings = {**settings, "vapid_private_key": vapid[0]}
    with pytest.raises(ValueError, match=rf"^{key}: ") as excinfo:
        from_settings(settings)
    assert "PRIVATE KEY" not in str(excinfo.value)


def test_rsa_keys_are_refused() -> None:
    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    with pytest.raises(ValueError, match=r"^vapid_private_key: VAPID needs"):
        WebPushChannel(pem, SUBJECT)
