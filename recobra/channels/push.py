"""Web push notifications (RFC 8030) with VAPID (RFC 8292) through ``pywebpush``.

``message.to`` holds the browser's push subscription as JSON, exactly what
``PushSubscription.toJSON()`` returns::

    {"endpoint": "https://push.example/...", "keys": {"p256dh": "...", "auth": "..."}}

The payload is a small JSON document (``title``, ``body``, ``url``, ``key``,
``kind``) encrypted for the subscription with ``aes128gcm`` (RFC 8291) and sent
with a VAPID ``Authorization: vapid t=<JWT>, k=<public key>`` header whose
audience is the endpoint's origin. The service worker shows it.

A subscription the push service no longer knows (404, 410) comes back as a
permanent failure whose error is exactly ``"push subscription gone"``: the
store must drop that subscription.

Operators create the VAPID key pair once (``generate_vapid_keys``); the public
half is the ``applicationServerKey`` browsers subscribe with.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid  # type: ignore[import-untyped]  # py-vapid ships no type information
from pywebpush import WebPushException, webpush  # type: ignore[import-untyped]  # nor does pywebpush

from recobra.domain.messages import ChannelKind
from recobra.ports import DeliveryResult, DeliveryStatus, OutgoingMessage

__all__ = [
    "DEFAULT_TTL",
    "MAX_PAYLOAD_BYTES",
    "SUBSCRIPTION_GONE",
    "WebPushChannel",
    "from_settings",
    "generate_vapid_keys",
]

DEFAULT_TTL = 86400
"""Seconds the push service keeps a message for an offline browser (one day)."""
MAX_TTL = 28 * 86400
DEFAULT_TIMEOUT = 10.0
MAX_PAYLOAD_BYTES = 3993
"""Largest plaintext that fits the 4096-byte limit push services must accept
once encrypted with aes128gcm (86-byte header, 16-byte tag, 1 padding delimiter)."""
SUBSCRIPTION_GONE = "push subscription gone"
"""The error of a ``PERMANENT_FAILURE`` for an expired or unsubscribed endpoint."""

_MAILTO = re.compile(r"mailto:[^@\s]+@[^@\s]+\.[^@\s]+|mailto:[^@\s]+@localhost", re.IGNORECASE)


def _b64url_decode(text: str) -> bytes:
    data = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    return base64.b64decode(data + "=" * (-len(data) % 4), altchars=b"-_", validate=True)


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _public_point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _load_private_key(value: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from PEM (PKCS#8 or SEC 1), base64url raw (32 bytes) or base64url DER."""
    error = "vapid_private_key: not a PEM or base64url-encoded P-256 private key"
    text = value.strip().replace("\\n", "\n") if isinstance(value, str) else ""
    if not text:
        raise ValueError("vapid_private_key: missing")
    key: object
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        else:
            raw = _b64url_decode(text)
            if len(raw) == 32:
                key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
            else:
                key = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        raise ValueError(error) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("vapid_private_key: VAPID needs an elliptic-curve P-256 (prime256v1) key")
    return key


def _check_subject(subject: str) -> str:
    text = subject.strip() if isinstance(subject, str) else ""
    if _MAILTO.fullmatch(text):
        return text
    parts = urlsplit(text)
    if parts.scheme == "https" and parts.hostname:
        return text
    raise ValueError(
        f"vapid_subject: expected a 'mailto:' address or an https URL to contact the sender, got {subject!r}"
    )


def _check_ttl(ttl: int) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL:
        raise ValueError(f"ttl: expected whole seconds between 0 and {MAX_TTL}, got {ttl!r}")
    return ttl


def generate_vapid_keys() -> tuple[str, str]:
    """Create a VAPID key pair: ``(private_pem, public_key_b64url)``.

    Keep the PEM secret (it is ``vapid_private_key``); publish the public key
    (unpadded base64url of the uncompressed P-256 point) to the web app, which
    passes it as ``applicationServerKey`` to ``pushManager.subscribe``.
    Subscriptions are tied to this key: replacing it orphans them all.
    """
    vapid = Vapid()
    vapid.generate_keys()
    private_pem = bytes(vapid.private_pem()).decode("ascii")
    public = _public_point(vapid.public_key)
    return private_pem, _b64url_encode(public)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_subscription(raw: str) -> dict[str, Any]:
    """The subscription as pywebpush wants it, or ``ValueError`` saying what is wrong."""
    try:
        sub = json.loads(raw)
    except (TypeError, ValueError):
        raise ValueError("not JSON") from None
    if not isinstance(sub, dict):
        raise ValueError("not a JSON object")
    endpoint = sub.get("endpoint")
    if not isinstance(endpoint, str):
        raise ValueError("no endpoint")
    parts = urlsplit(endpoint)
    if not parts.hostname or not (
        parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname))
    ):
        raise ValueError("endpoint is not an https URL")
    keys = sub.get("keys")
    if not isinstance(keys, dict):
        raise ValueError("no keys")
    p256dh, auth = keys.get("p256dh"), keys.get("auth")
    if not isinstance(p256dh, str) or not isinstance(auth, str):
        raise ValueError("keys.p256dh and keys.auth must be strings")
    try:
        point = _b64url_decode(p256dh)
        secret = _b64url_decode(auth)
    except (ValueError, binascii.Error):
        raise ValueError("keys are not base64url") from None
    try:
        if len(point) != 65:
            raise ValueError
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise ValueError("keys.p256dh is not an uncompressed P-256 point") from None
    if len(secret) != 16:
        raise ValueError("keys.auth is not a 16-byte secret")
    return {"endpoint": endpoint, "keys": {"p256dh": _b64url_encode(point), "auth": _b64url_encode(secret)}}


def _payload(message: OutgoingMessage) -> str:
    data = message.data or {}
    url = data.get("url")
    return json.dumps(
        {
            "title": message.subject,
            "body": message.text,
            "url": url if isinstance(url, str) and url else None,
            "key": message.key,
            "kind": message.kind,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _from_status(status: int, reason: str) -> DeliveryResult:
    if status in (404, 410):
        return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=SUBSCRIPTION_GONE)
    if status == 413:
        return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error="push payload too large (HTTP 413)")
    error = f"push service HTTP {status}" + (f": {reason}" if reason else "")
    if status in (408, 425, 429) or status >= 500:
        return DeliveryResult(DeliveryStatus.TRANSIENT_FAILURE, error=error)
    return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=error)


class WebPushChannel:
    """Browser push notifications signed with the operator's VAPID key.

    ``vapid_private_key``: PEM, or base64url of the raw 32-byte key (what most
    VAPID generators print) or of its DER form. ``vapid_subject``: how push
    services can reach the operator, ``mailto:...`` or an https URL. ``ttl``:
    seconds the push service keeps the message for an offline browser.
    Endpoints must be https (plain http only on loopback, for tests).
    """

    kind: str = ChannelKind.PUSH.value

    def __init__(
        self,
        vapid_private_key: str,
        vapid_subject: str,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        key = _load_private_key(vapid_private_key)
        self.subject = _check_subject(vapid_subject)
        self.ttl = _check_ttl(ttl)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"timeout: must be > 0, got {timeout!r}")
        self.timeout = float(timeout)
        # "no-strict": accept any https subject (py-vapid's own check rejects URL paths);
        # _check_subject has validated it already.
        self._vapid = Vapid(private_key=key, conf={"no-strict": True})
        self.public_key = _b64url_encode(_public_point(key.public_key()))
        """The application server key browsers subscribe with (base64url)."""
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"WebPushChannel(subject={self.subject!r}, public_key={self.public_key!r}, ttl={self.ttl})"

    def send(self, message: OutgoingMessage) -> DeliveryResult:
        try:
            subscription = _parse_subscription(message.to)
        except ValueError as exc:
            return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=f"invalid push subscription: {exc}")
        payload = _payload(message)
        if len(payload.encode("utf-8")) > MAX_PAYLOAD_BYTES:
            return DeliveryResult(
                DeliveryStatus.PERMANENT_FAILURE,
                error=f"push payload too large ({len(payload.encode('utf-8'))} > {MAX_PAYLOAD_BYTES} bytes)",
            )
        try:
            response = webpush(
                subscription_info=subscription,
                data=payload,
                vapid_private_key=self._vapid,
                # a fresh dict per call: webpush adds "aud" (the endpoint's origin) and "exp" to it
                vapid_claims={"sub": self.subject},
                content_encoding="aes128gcm",
                timeout=self.timeout,
                ttl=self.ttl,
                requests_session=self._session,
            )
        except WebPushException as exc:
            if exc.response is None:
                return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=f"push: {exc.message}")
            return _from_status(int(exc.response.status_code), str(exc.response.reason or ""))
        except requests.RequestException as exc:
            return DeliveryResult(
                DeliveryStatus.TRANSIENT_FAILURE, error=f"push network error: {type(exc).__name__}: {exc}"
            )
        status = int(response.status_code)
        if not 200 <= status < 300:  # webpush raises above 202 only
            return _from_status(status, str(response.reason or ""))
        location = response.headers.get("Location")
        return DeliveryResult(DeliveryStatus.SENT, provider_id=str(location) if location else None)


def from_settings(settings: Mapping[str, object]) -> WebPushChannel:
    """Build the push channel (entry point ``recobra.channels: push``).

    Keys: ``vapid_private_key`` and ``vapid_subject`` (required), ``ttl``
    (seconds, default one day), ``timeout`` (seconds). Bad values raise
    ``ValueError`` naming the key (the private key's value is never shown).
    """
    known = ("vapid_private_key", "vapid_subject", "ttl", "timeout")
    values: dict[str, str] = {}
    for key, value in settings.items():
        if key not in known:
            raise ValueError(f"{key}: unknown push setting (known: {', '.join(known)})")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"{key}: expected a string, got {type(value).__name__}")
        if str(value).strip():
            values[key] = str(value).strip()
    for key in ("vapid_private_key", "vapid_subject"):
        if key not in values:
            raise ValueError(f"{key}: missing")
    ttl = DEFAULT_TTL
    if "ttl" in values:
        try:
            ttl = int(values["ttl"])
        except ValueError:
            raise ValueError(f"ttl: not a whole number of seconds: {values['ttl']!r}") from None
    timeout = DEFAULT_TIMEOUT
    if "timeout" in values:
        try:
            timeout = float(values["timeout"])
        except ValueError:
            raise ValueError(f"timeout: not a number: {values['timeout']!r}") from None
    return WebPushChannel(values["vapid_private_key"], values["vapid_subject"], ttl=ttl, timeout=timeout)
