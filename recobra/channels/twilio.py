"""SMS and voice calls through Twilio's official Python SDK.

Each channel builds its own ``twilio.rest.Client`` (no module-level state) with
an HTTP client from this module: the SDK's ``TwilioHttpClient`` with a request
timeout and, when ``base_url`` is set, every request to the REST API host
(``https://api.twilio.com``, or the ``api.<edge>.<region>.twilio.com`` host the
SDK derives from ``TWILIO_EDGE``/``TWILIO_REGION``) sent to ``base_url`` instead,
path and query unchanged. Custom HTTP clients are the SDK's documented extension
point; tests use it to reach a local fake of the REST API, production can use it
to pin a regional edge (``https://api.dublin.ie1.twilio.com``) or an egress proxy.

Failures never raise: they come back as ``DeliveryResult``. Twilio REST errors
keep their code in the error text, always as ``"twilio <code>: <message>"``
(``"twilio 21610: ..."`` means the recipient replied STOP).

Inbound messages (STOP/START) and the voice menu's answer arrive on HTTP routes
owned by the web layer; this module provides the parsing and the signature check
they need (``parse_inbound_sms``, ``validate_twilio_signature``, ``handle_gather``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from twilio.base.exceptions import (  # type: ignore[import-untyped]  # the SDK ships no type information
    TwilioException,
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped]
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]
from twilio.twiml.voice_response import VoiceResponse  # type: ignore[import-untyped]

from recobra.channels.phone import InvalidPhone, normalise_phone, phone_region
from recobra.domain.messages import ChannelKind
from recobra.ports import DeliveryResult, DeliveryStatus, OutgoingMessage

__all__ = [
    "OPT_IN_KEYWORDS",
    "OPT_OUT_KEYWORDS",
    "PERMANENT_ERROR_CODES",
    "InboundSms",
    "TwilioSmsChannel",
    "TwilioVoiceChannel",
    "handle_gather",
    "parse_inbound_sms",
    "sms_from_settings",
    "validate_twilio_signature",
    "voice_from_settings",
    "voice_language",
]

DEFAULT_TIMEOUT = 10.0
"""Seconds for each request to Twilio (connect and read)."""

PERMANENT_ERROR_CODES: Mapping[int, str] = {
    21211: "invalid 'To' number",
    21408: "permission to send to this region is not enabled",
    21610: "recipient unsubscribed (replied STOP)",
    21612: "the 'To' number cannot be reached from the 'From' number",
    21614: "'To' number is not a mobile number",
    21215: "calls to this region are not enabled (geo permissions)",
    21216: "calls to this number are blocked",
    21217: "phone number does not appear to be valid",
    13224: "invalid phone number for a call",
}
"""Twilio error codes that will never succeed for this recipient as configured.
Any other 4xx (but 429) is permanent too; these are listed for the error text and
because their meaning holds whatever the HTTP status."""

TRANSIENT_ERROR_CODES = frozenset({20429, 20500, 20503})
"""Too many requests, internal error, service unavailable: try again later."""

OPT_OUT_KEYWORDS = frozenset(
    {
        # Twilio's standard opt-out keywords (Twilio itself blocks further messages).
        "STOP",
        "STOPALL",
        "UNSUBSCRIBE",
        "CANCEL",
        "END",
        "QUIT",
        "OPTOUT",
        "REVOKE",
        # Spanish: not handled by Twilio, the engine records them.
        "PARAR",
        "BAJA",
        "CANCELAR",
        "ALTO",
    }
)
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP", "ALTA", "SI"})
"""Twilio's opt-in keywords and Spanish ones (``SÍ`` is accepted as ``SI``)."""

_SPANISH_AMERICAS = frozenset(
    {
        "AR", "BO", "CL", "CO", "CR", "CU", "DO", "EC", "GT", "HN", "MX", "NI",
        "PA", "PE", "PR", "PY", "SV", "US", "UY", "VE", "419",
    }
)  # fmt: skip
"""Where Latin American Spanish (es-MX) is the better voice; ``419`` is Latin
America in locale tags (``es-419``); Spanish speakers in the US get es-MX too."""

_VOICE_TEXTS: Mapping[str, Mapping[str, str]] = {
    "es": {
        "press": "Pulse 1 para recibir el enlace por SMS.",
        "goodbye": "Gracias por su atención. Hasta luego.",
    },
    "en": {
        "press": "Press 1 to receive the link by SMS.",
        "goodbye": "Thank you for your time. Goodbye.",
    },
}

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_MESSAGING_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
_ALPHANUMERIC_SENDER = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_SHORT_CODE = re.compile(r"[0-9]{3,8}")
_API_HOST = re.compile(r"api(\.[a-z0-9-]+)*\.twilio\.com", re.IGNORECASE)
_CREATE_PREFIX = "Unable to create record: "


# ---------------------------------------------------------------- the SDK's HTTP client


class _HttpClient(TwilioHttpClient):  # type: ignore[misc]  # subclassing the untyped SDK class
    """``TwilioHttpClient`` with a timeout that optionally sends the REST API's
    requests to ``base_url`` (scheme, host, port and an optional path prefix)."""

    def __init__(self, base_url: str | None, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._base = urlsplit(base_url) if base_url else None

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Any:
        if self._base is not None:
            parts = urlsplit(url)
            if _API_HOST.fullmatch(parts.hostname or ""):
                url = urlunsplit(
                    (
                        self._base.scheme,
                        self._base.netloc,
                        self._base.path.rstrip("/") + parts.path,
                        parts.query,
                        "",
                    )
                )
        return super().request(
            method,
            url,
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )


def _build_client(
    account_sid: str, auth_token: str, client: Any | None, base_url: str | None, timeout: float
) -> Any:
    if client is not None:
        if base_url is not None:
            raise ValueError("base_url: give either a ready client or a base_url, not both")
        return client
    return Client(account_sid, auth_token, http_client=_HttpClient(base_url, timeout))


# ---------------------------------------------------------------- validation helpers


def _check_url(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name}: not an http(s) URL: {value!r}")
    return value


def _check_credentials(account_sid: str, auth_token: str) -> None:
    if not isinstance(account_sid, str) or not _ACCOUNT_SID.fullmatch(account_sid):
        raise ValueError(f"account_sid: expected 'AC' and 32 hexadecimal digits, got {account_sid!r}")
    if not isinstance(auth_token, str) or not auth_token.strip():
        raise ValueError("auth_token: missing")  # never echo the value


def _check_e164(name: str, value: str) -> str:
    try:
        return normalise_phone(value, None)
    except InvalidPhone as exc:
        raise ValueError(f"{name}: {exc.reason}: {value!r}") from None


def _check_timeout(value: float) -> float:
    if not value > 0:
        raise ValueError(f"timeout: must be > 0, got {value!r}")
    return float(value)


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


# ---------------------------------------------------------------- error mapping


def _failure(exc: Exception) -> DeliveryResult:
    """Translate what the SDK raised into a failed ``DeliveryResult``."""
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status = int(exc.status or 0)
        code = int(exc.code) if exc.code is not None else status
        if isinstance(exc, TwilioServiceException):
            text = exc.title + (f" - {exc.detail}" if exc.detail else "")
        else:
            text = str(exc.msg).removeprefix(_CREATE_PREFIX)
        error = f"twilio {code}: {text or PERMANENT_ERROR_CODES.get(code, f'HTTP {status}')}"
        if code in PERMANENT_ERROR_CODES:
            return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=error)
        if code in TRANSIENT_ERROR_CODES or status == 429 or status >= 500 or status < 400:
            return DeliveryResult(DeliveryStatus.TRANSIENT_FAILURE, error=error)
        return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=error)
    if isinstance(exc, requests.RequestException):
        return DeliveryResult(
            DeliveryStatus.TRANSIENT_FAILURE, error=f"twilio network error: {type(exc).__name__}: {exc}"
        )
    # A 2xx whose body is not the expected JSON, or another SDK error: whether the
    # message went out is unknown, so let the engine retry rather than fall back.
    return DeliveryResult(
        DeliveryStatus.TRANSIENT_FAILURE, error=f"twilio unexpected error: {type(exc).__name__}: {exc}"
    )


_CALL_ERRORS = (TwilioException, requests.RequestException, ValueError, KeyError)


def _result(instance: Any) -> DeliveryResult:
    sid = getattr(instance, "sid", None)
    status = str(getattr(instance, "status", "") or "")
    if status in ("failed", "undelivered", "canceled"):
        code = getattr(instance, "error_code", None)
        message = getattr(instance, "error_message", None) or status
        return DeliveryResult(
            DeliveryStatus.PERMANENT_FAILURE,
            provider_id=sid,
            error=f"twilio {code}: {message}" if code else f"twilio: {message}",
        )
    return DeliveryResult(DeliveryStatus.SENT, provider_id=sid)


# ---------------------------------------------------------------- SMS


class TwilioSmsChannel:
    """Text messages through Twilio's Messages API.

    Sends ``message.text`` (the rendered SMS template) to ``message.to`` after
    checking it is a valid E.164 number (invalid numbers never reach Twilio).
    Sender: ``from_number`` (an E.164 number, alphanumeric sender id or short
    code) and/or ``messaging_service_sid`` (``MG...``, Twilio picks the sender
    from the service's pool). ``status_callback`` receives Twilio's delivery
    reports. The auth token is never logged nor shown in ``repr``.
    """

    kind: str = ChannelKind.SMS.value

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        status_callback: str | None = None,
        client: Any | None = None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        _check_credentials(account_sid, auth_token)
        if not from_number and not messaging_service_sid:
            raise ValueError("from_number: give from_number or messaging_service_sid (or both)")
        if from_number:
            if from_number.strip().startswith("+"):
                from_number = _check_e164("from_number", from_number)
            elif not (_ALPHANUMERIC_SENDER.fullmatch(from_number) or _SHORT_CODE.fullmatch(from_number)):
                raise ValueError(
                    "from_number: expected an E.164 number, a short code or an alphanumeric "
                    f"sender id (up to 11 letters, digits and spaces), got {from_number!r}"
                )
        if messaging_service_sid and not _MESSAGING_SERVICE_SID.fullmatch(messaging_service_sid):
            raise ValueError(
                "messaging_service_sid: expected 'MG' and 32 hexadecimal digits, "
                f"got {messaging_service_sid!r}"
            )
        self.account_sid = account_sid
        self.from_number = from_number or None
        self.messaging_service_sid = messaging_service_sid or None
        self.status_callback = _check_url("status_callback", status_callback)
        _check_url("base_url", base_url)
        self._client = _build_client(account_sid, auth_token, client, base_url, _check_timeout(timeout))

    def __repr__(self) -> str:
        sender = self.messaging_service_sid or self.from_number
        return f"TwilioSmsChannel(account_sid={self.account_sid!r}, sender={sender!r})"

    def send(self, message: OutgoingMessage) -> DeliveryResult:
        try:
            to = normalise_phone(message.to, None)
        except InvalidPhone as exc:
            return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=str(exc))
        body = message.text.strip()
        if not body:
            return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error="empty SMS body")
        kwargs: dict[str, str] = {"to": to, "body": body}
        if self.from_number:
            kwargs["from_"] = self.from_number
        if self.messaging_service_sid:
            kwargs["messaging_service_sid"] = self.messaging_service_sid
        if self.status_callback:
            kwargs["status_callback"] = self.status_callback
        try:
            created = self._client.api.account.messages.create(**kwargs)
        except _CALL_ERRORS as exc:
            return _failure(exc)
        return _result(created)


# ---------------------------------------------------------------- voice


def voice_language(locale: str, phone: str | None = None) -> str:
    """The ``<Say language>`` for a customer: ``es-ES``, ``es-MX`` or ``en-US``.

    Spanish locales get es-ES for Spain and es-MX for the Americas; the region
    comes from the locale (``es-AR``, ``es_419``) when it names one of those, else
    from the phone number's country, else Spain. Every other locale gets en-US.
    """
    parts = locale.replace("_", "-").split("-")
    if parts[0].lower() != "es":
        return "en-US"
    region = parts[1].upper() if len(parts) > 1 else ""
    if region != "ES" and region not in _SPANISH_AMERICAS:
        region = (phone_region(phone) if phone else None) or "ES"
    return "es-MX" if region in _SPANISH_AMERICAS else "es-ES"


def _flag(value: object) -> bool:
    """``True``, or a string saying so (data that went through a form or a text file)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return value is True


def handle_gather(digits: str, key: str) -> bool:
    """Whether the answer to the voice menu asks for the link by SMS.

    Twilio posts the pressed keys as ``Digits`` to ``gather_action_url`` with the
    message's ``key`` in the query string. True when the customer pressed 1 and a
    key is present: the route should then send the SMS for that key (once: keys
    are idempotency keys) and answer with TwiML confirming it. Anything else
    (another key, nothing, a missing key) is False.
    """
    return bool(key and key.strip()) and digits.strip() == "1"


class TwilioVoiceChannel:
    """Automated calls through Twilio's Calls API, with inline TwiML.

    The call says ``message.text`` (the rendered voice script) in the customer's
    language (see ``voice_language``). When ``message.data["offer_sms_link"]`` is
    true (``True`` or ``"true"``) and ``gather_action_url`` is configured, it then offers to send the link
    by SMS: ``<Gather numDigits="1">`` posting to ``gather_action_url?key=<key>``
    (see ``handle_gather``). It ends with a short goodbye.
    """

    kind: str = ChannelKind.VOICE.value

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str,
        status_callback: str | None = None,
        gather_action_url: str | None = None,
        client: Any | None = None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        _check_credentials(account_sid, auth_token)
        if not from_number:
            raise ValueError("from_number: missing (an E.164 Twilio number or verified caller id)")
        self.account_sid = account_sid
        self.from_number = _check_e164("from_number", from_number)
        self.status_callback = _check_url("status_callback", status_callback)
        self.gather_action_url = _check_url("gather_action_url", gather_action_url)
        _check_url("base_url", base_url)
        self._client = _build_client(account_sid, auth_token, client, base_url, _check_timeout(timeout))

    def __repr__(self) -> str:
        return f"TwilioVoiceChannel(account_sid={self.account_sid!r}, from_number={self.from_number!r})"

    def twiml(self, message: OutgoingMessage, to: str) -> str:
        """The TwiML document the call runs."""
        language = voice_language(message.locale, to)
        texts = _VOICE_TEXTS[language[:2]]
        response = VoiceResponse()
        response.say(message.text.strip(), language=language)
        if _flag((message.data or {}).get("offer_sms_link")) and self.gather_action_url:
            gather = response.gather(
                num_digits=1,
                action=_with_query(self.gather_action_url, key=message.key),
                method="POST",
                timeout=6,
            )
            gather.say(texts["press"], language=language)
        response.say(texts["goodbye"], language=language)
        return str(response)

    def send(self, message: OutgoingMessage) -> DeliveryResult:
        try:
            to = normalise_phone(message.to, None)
        except InvalidPhone as exc:
            return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=str(exc))
        if not message.text.strip():
            return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error="empty voice script")
        kwargs: dict[str, str] = {"to": to, "from_": self.from_number, "twiml": self.twiml(message, to)}
        if self.status_callback:
            kwargs["status_callback"] = self.status_callback
        try:
            created = self._client.api.account.calls.create(**kwargs)
        except _CALL_ERRORS as exc:
            return _failure(exc)
        return _result(created)


# ---------------------------------------------------------------- inbound


@dataclass(frozen=True, slots=True)
class InboundSms:
    """An SMS a customer sent to one of our numbers (Twilio's inbound webhook)."""

    from_number: str
    body: str
    is_stop: bool
    """The customer opted out: record it; no SMS or calls until they opt in again."""
    is_start: bool
    """The customer opted back in."""
    to_number: str = ""
    message_sid: str = ""


def _keyword(body: str) -> str:
    """``" Sí. "`` -> ``"SI"``: trimmed, accents and surrounding punctuation removed, upper case."""
    decomposed = unicodedata.normalize("NFKD", body.strip())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return plain.strip(" \t\r\n.!¡?¿,;:\"'").upper()


def parse_inbound_sms(form: Mapping[str, str]) -> InboundSms:
    """Read Twilio's inbound-message form (``From``, ``To``, ``Body``, ``MessageSid``).

    A message is an opt-out when its whole body is one of ``OPT_OUT_KEYWORDS``
    and an opt-in when it is one of ``OPT_IN_KEYWORDS`` (any case, accents and
    surrounding punctuation ignored: ``"Baja."``, ``"sí"``). With Advanced
    Opt-Out on a messaging service Twilio also sends ``OptOutType``
    (``STOP``/``START``), which is honoured whatever the keyword.
    """
    body = form.get("Body", "") or ""
    word = _keyword(body)
    opt_out_type = (form.get("OptOutType", "") or "").strip().upper()
    is_stop = opt_out_type == "STOP" or (opt_out_type != "START" and word in OPT_OUT_KEYWORDS)
    is_start = opt_out_type == "START" or (opt_out_type != "STOP" and word in OPT_IN_KEYWORDS)
    return InboundSms(
        from_number=(form.get("From", "") or "").strip(),
        body=body,
        is_stop=is_stop,
        is_start=is_start,
        to_number=(form.get("To", "") or "").strip(),
        message_sid=(form.get("MessageSid", "") or "").strip(),
    )


def validate_twilio_signature(auth_token: str, url: str, params: Mapping[str, str], signature: str) -> bool:
    """Whether ``X-Twilio-Signature`` matches a webhook request (the SDK's ``RequestValidator``).

    ``url`` is the full URL Twilio requested (scheme, host, path and query, as
    configured in Twilio: mind proxies that terminate TLS); ``params`` the POST
    form fields. Twilio signs ``url`` followed by each parameter name and value
    sorted by name, with HMAC-SHA1 keyed by the auth token, base64-encoded.
    """
    if not auth_token or not signature:
        return False
    try:
        return bool(RequestValidator(auth_token).validate(url, dict(params), signature))
    except (ValueError, TypeError, UnicodeError):
        return False


# ---------------------------------------------------------------- settings

_SETTINGS_KEYS = frozenset(
    {
        "account_sid",
        "auth_token",
        "from_number",
        "messaging_service_sid",
        "status_callback",
        "gather_action_url",
        "base_url",
        "timeout",
    }
)


def _read_settings(settings: Mapping[str, object], required: tuple[str, ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, value in settings.items():
        if key not in _SETTINGS_KEYS:
            raise ValueError(f"{key}: unknown Twilio setting (known: {', '.join(sorted(_SETTINGS_KEYS))})")
        if value is None:
            continue
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"{key}: expected a string, got {type(value).__name__}")
        text = str(value).strip()
        if text:
            values[key] = text
    for key in required:
        if key not in values:
            raise ValueError(f"{key}: missing")
    if "timeout" in values:
        try:
            values["timeout"] = str(_check_timeout(float(values["timeout"])))
        except ValueError:
            raise ValueError(f"timeout: not a positive number: {values['timeout']!r}") from None
    return values


def sms_from_settings(settings: Mapping[str, object]) -> TwilioSmsChannel:
    """Build the SMS channel (entry point ``recobra.channels: sms``).

    Keys: ``account_sid`` and ``auth_token`` (required), ``from_number`` and/or
    ``messaging_service_sid`` (one required), ``status_callback``, ``base_url``,
    ``timeout`` (seconds). ``gather_action_url`` is accepted and ignored so SMS
    and voice can share one settings table. Bad values raise ``ValueError``
    naming the key (the token's value is never shown).
    """
    values = _read_settings(settings, ("account_sid", "auth_token"))
    return TwilioSmsChannel(
        values["account_sid"],
        values["auth_token"],
        from_number=values.get("from_number"),
        messaging_service_sid=values.get("messaging_service_sid"),
        status_callback=values.get("status_callback"),
        base_url=values.get("base_url"),
        timeout=float(values.get("timeout", DEFAULT_TIMEOUT)),
    )


def voice_from_settings(settings: Mapping[str, object]) -> TwilioVoiceChannel:
    """Build the voice channel (entry point ``recobra.channels: voice``).

    Keys: ``account_sid``, ``auth_token`` and ``from_number`` (required),
    ``status_callback``, ``gather_action_url``, ``base_url``, ``timeout``.
    ``messaging_service_sid`` is accepted and ignored (calls need a number).
    """
    values = _read_settings(settings, ("account_sid", "auth_token", "from_number"))
    return TwilioVoiceChannel(
        values["account_sid"],
        values["auth_token"],
        from_number=values["from_number"],
        status_callback=values.get("status_callback"),
        gather_action_url=values.get("gather_action_url"),
        base_url=values.get("base_url"),
        timeout=float(values.get("timeout", DEFAULT_TIMEOUT)),
    )
