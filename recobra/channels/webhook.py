"""Outgoing webhooks: each message is POSTed as signed JSON to the operator's CRM,
support desk or automation tool.

The body::

    {"id": "<message key>", "type": "<message kind>", "created": <unix seconds>,
     "data": {...message.data, "customer_id": ..., "kind": ..., "channel": ..., "locale": ...}}

Headers: ``Recobra-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
(keyed with the shared secret; Stripe's scheme), ``Recobra-Event-Id`` (the message
key: receivers deduplicate on it) and ``User-Agent: Recobra/<version>``.
Receivers check signatures with :func:`verify_signature` (or the snippet in
docs/channels.md). Delivery is retried with backoff; failures come back as a
:class:`~recobra.ports.DeliveryResult`, never as exceptions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit

import httpx

from recobra.ports import DeliveryResult, DeliveryStatus, OutgoingMessage

__all__ = [
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "USER_AGENT",
    "WebhookChannel",
    "encode_body",
    "event_payload",
    "from_settings",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "Recobra-Signature"
EVENT_ID_HEADER = "Recobra-Event-Id"


def _version() -> str:
    try:
        return version("recobra")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0"


USER_AGENT = f"Recobra/{_version()}"

# Statuses worth trying again: request timeout, conflict (the receiver is busy with the
# same event), rate limited; and every 5xx.
_RETRYABLE = frozenset({408, 409, 429})


# --------------------------------------------------------------------------- body and signature


def event_payload(message: OutgoingMessage, created: datetime) -> dict[str, object]:
    """The JSON object sent for ``message``: ``data`` is ``message.data`` plus the
    customer id, kind, channel and locale (which win over keys of the same name)."""
    data: dict[str, object] = dict(message.data or {})
    data.update(
        customer_id=message.customer_id, kind=message.kind, channel=message.channel, locale=message.locale
    )
    return {"id": message.key, "type": message.kind, "created": int(created.timestamp()), "data": data}


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"webhook data: {type(value).__name__} is not JSON serializable")


def encode_body(payload: Mapping[str, object], *, indent: int | None = None) -> bytes:
    """UTF-8 JSON (compact unless ``indent``); datetimes as ISO 8601, Decimals as strings."""
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(
        payload, ensure_ascii=False, separators=separators, indent=indent, default=_json_default
    )
    return text.encode("utf-8")


def _digest(secret: str | bytes, timestamp: int, body: bytes) -> str:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The ``Recobra-Signature`` header value for ``body`` sent at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify_signature(
    secret: str | bytes, header: str, body: bytes, *, now: datetime, tolerance: float = 300
) -> bool:
    """Whether ``header`` (a ``Recobra-Signature`` value) signs exactly ``body`` with
    ``secret``, at a time within ``tolerance`` seconds of ``now`` (replays of old
    requests fail). Several ``v1`` entries are accepted (one per secret while rotating).
    The comparison takes constant time."""
    timestamp: int | None = None
    candidates: list[bytes] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif name == "v1":
            candidates.append(value.encode("utf-8", "replace"))
    if timestamp is None or not candidates:
        return False
    if abs(now.timestamp() - timestamp) > tolerance:
        return False
    expected = _digest(secret, timestamp, body).encode("ascii")
    matches = [hmac.compare_digest(expected, candidate) for candidate in candidates]
    return any(matches)


# --------------------------------------------------------------------------- channel


@dataclass(frozen=True, slots=True)
class _Outcome:
    final: DeliveryResult | None = None
    error: str = ""
    retry_after: float | None = None


def _equal_jitter(delay: float) -> float:
    return delay * random.uniform(0.8, 1.2)


def _check_url(url: str, *, name: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name}: {url!r} is not an http(s) URL")
    return url


class WebhookChannel:
    """POSTs each message to ``url`` (or to ``message.to`` when that is an http(s) URL).

    Up to ``max_attempts`` attempts: connection errors, timeouts, 408, 409, 429 and 5xx
    are retried after ``backoff[i]`` seconds (the last value repeats), varied by
    ``jitter`` (default: +-20 %), or after the receiver's ``Retry-After`` when it gives
    one. A ``Retry-After`` longer than ``max_retry_after`` ends the delivery as a
    transient failure at once (the engine tries again later) instead of blocking.
    Other 4xx (and 3xx: configure the final URL) fail permanently; 2xx is success.
    Each attempt is signed afresh with the time from ``now``.
    """

    kind = "webhook"

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        timeout: float = 5.0,
        max_attempts: int = 4,
        backoff: Sequence[float] = (0.5, 2.0, 8.0),
        sleep: Callable[[float], None] = time.sleep,
        client: httpx.Client | None = None,
        now: Callable[[], datetime] | None = None,
        jitter: Callable[[float], float] | None = None,
        max_retry_after: float = 60.0,
    ) -> None:
        _check_url(url, name="url")
        if not secret:
            raise ValueError("secret: required")
        if not timeout > 0:
            raise ValueError(f"timeout: must be > 0, got {timeout}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts: must be >= 1, got {max_attempts}")
        if not backoff or any(not 0 <= delay < float("inf") for delay in backoff):
            raise ValueError(f"backoff: needs one or more delays >= 0, got {tuple(backoff)}")
        if not max_retry_after >= 0:
            raise ValueError(f"max_retry_after: must be >= 0, got {max_retry_after}")
        self.url = url
        self._secret = secret
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = tuple(float(delay) for delay in backoff)
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._client = client
        self._now = now or (lambda: datetime.now(UTC))
        self._jitter = jitter or _equal_jitter

    def __repr__(self) -> str:  # never shows the secret
        return f"WebhookChannel({self.url!r}, max_attempts={self.max_attempts})"

    def send(self, message: OutgoingMessage) -> DeliveryResult:
        url = self.url
        if "://" in message.to:
            try:
                url = _check_url(message.to, name="to")
            except ValueError as exc:
                return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=str(exc))
        if not message.key.isascii() or any(not " " <= char <= "~" for char in message.key):
            return DeliveryResult(
                DeliveryStatus.PERMANENT_FAILURE,
                error=f"key {message.key!r} cannot be sent in the {EVENT_ID_HEADER} header",
            )
        body = encode_body(event_payload(message, self._now()))
        error = ""
        for attempt in range(1, self.max_attempts + 1):
            outcome = self._attempt(url, body, message.key)
            if outcome.final is not None:
                return outcome.final
            error = outcome.error
            if attempt == self.max_attempts:
                break
            if outcome.retry_after is not None:
                if outcome.retry_after > self.max_retry_after:
                    return DeliveryResult(
                        DeliveryStatus.TRANSIENT_FAILURE,
                        error=f"{error}; the receiver asks to retry after {outcome.retry_after:g} s",
                    )
                delay = outcome.retry_after
            else:
                delay = self._jitter(self.backoff[min(attempt, len(self.backoff)) - 1])
            self._sleep(delay)
        return DeliveryResult(
            DeliveryStatus.TRANSIENT_FAILURE, error=f"{error} (after {self.max_attempts} attempts)"
        )

    def _attempt(self, url: str, body: bytes, key: str) -> _Outcome:
        now = self._now()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body, int(now.timestamp())),
            EVENT_ID_HEADER: key,
            "User-Agent": USER_AGENT,
        }
        try:
            if self._client is not None:
                response = self._client.post(url, content=body, headers=headers, timeout=self.timeout)
            else:
                with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
                    response = client.post(url, content=body, headers=headers)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return _Outcome(DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=f"invalid URL: {exc}"))
        except httpx.LocalProtocolError as exc:  # the request itself cannot be sent as is
            return _Outcome(DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=f"invalid request: {exc}"))
        except httpx.TimeoutException as exc:
            return _Outcome(error=f"timeout ({type(exc).__name__}) after {self.timeout:g} s")
        except httpx.HTTPError as exc:
            return _Outcome(error=f"{type(exc).__name__}: {exc}")
        return self._classify(response, now)

    def _classify(self, response: httpx.Response, now: datetime) -> _Outcome:
        status = response.status_code
        if 200 <= status < 300:
            return _Outcome(
                DeliveryResult(DeliveryStatus.SENT, provider_id=response.headers.get("x-request-id"))
            )
        described = f"HTTP {status} {response.reason_phrase}".rstrip()
        detail = " ".join(response.text[:200].split())
        if detail:
            described += f": {detail}"
        if status in _RETRYABLE or status >= 500:
            return _Outcome(
                error=described, retry_after=_retry_after(response.headers.get("retry-after"), now)
            )
        if 300 <= status < 400:
            location = response.headers.get("location", "?")
            described = f"HTTP {status}: redirected to {location}; configure the final URL"
        return _Outcome(DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=described))


def _retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


# --------------------------------------------------------------------------- settings

_KEYS = ("url", "secret", "timeout", "max_attempts", "backoff", "max_retry_after")


def _float(key: str, raw: str, *, positive: bool) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key}: not a number: {raw!r}") from None
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        raise ValueError(f"{key}: must be {'>' if positive else '>='} 0, got {raw!r}")
    return value


def from_settings(settings: Mapping[str, str]) -> WebhookChannel:
    """Build the channel from string settings (the ``recobra.channels`` entry point ``webhook``).

    Keys: ``url`` and ``secret`` (required; keep the secret in the environment),
    ``timeout`` (seconds), ``max_attempts`` (>= 1), ``backoff`` (comma-separated seconds,
    e.g. ``"0.5,2,8"``) and ``max_retry_after`` (seconds). Unknown keys and bad values
    raise ``ValueError`` naming the key (never showing the secret).
    """
    unknown = sorted(set(settings) - set(_KEYS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown setting (known: {', '.join(_KEYS)})")
    values = {key: str(value).strip() for key, value in settings.items()}
    for key in ("url", "secret"):
        if not values.get(key):
            raise ValueError(f"{key}: required")
    url = _check_url(values["url"], name="url")
    options: dict[str, float] = {}
    for key in ("timeout", "max_retry_after"):
        if values.get(key):
            options[key] = _float(key, values[key], positive=key == "timeout")
    max_attempts = 4
    if values.get("max_attempts"):
        try:
            max_attempts = int(values["max_attempts"])
        except ValueError:
            raise ValueError(f"max_attempts: not an integer: {values['max_attempts']!r}") from None
        if max_attempts < 1:
            raise ValueError(f"max_attempts: must be >= 1, got {values['max_attempts']!r}")
    backoff: tuple[float, ...] = (0.5, 2.0, 8.0)
    if values.get("backoff"):
        backoff = tuple(
            _float("backoff", part.strip(), positive=False) for part in values["backoff"].split(",")
        )
    return WebhookChannel(
        url,
        str(settings["secret"]),
        timeout=options.get("timeout", 5.0),
        max_attempts=max_attempts,
        backoff=backoff,
        max_retry_after=options.get("max_retry_after", 60.0),
    )
