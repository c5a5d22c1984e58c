"""Email over SMTP (the standard library's ``smtplib``), and the message builder
the file channel shares.

Every message is ``multipart/alternative`` (text, then HTML when there is some),
quoted-printable UTF-8, with headers that let receivers deduplicate and
unsubscribe: a ``Message-ID`` derived from the message key, ``List-Unsubscribe``
and ``List-Unsubscribe-Post`` (RFC 2369, RFC 8058), ``Auto-Submitted``
(RFC 3834), ``Content-Language`` and ``X-Recobra-Key``.

Delivery failures come back as a :class:`~recobra.ports.DeliveryResult`, never
as exceptions: see :func:`classify_smtp_error` for the mapping. Invalid
addresses and header injection attempts fail permanently without connecting.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import smtplib
import ssl as _ssl
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email import policy as _policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses
from urllib.parse import urlsplit

from recobra.ports import DeliveryResult, DeliveryStatus, OutgoingMessage

__all__ = [
    "POLICY",
    "UNSUBSCRIBE_URL_HEADER",
    "InvalidMessage",
    "SmtpEmailChannel",
    "build_email_message",
    "check_header_value",
    "classify_smtp_error",
    "content_language",
    "from_settings",
    "mailto_uri",
    "message_id",
    "parse_address",
    "parse_bool",
    "parse_mailbox",
]

UNSUBSCRIBE_URL_HEADER = "List-Unsubscribe-URL"
"""The entry of ``OutgoingMessage.headers`` holding the customer's one-click unsubscribe URL."""

POLICY = _policy.SMTP.clone(max_line_length=998)
"""CRLF line ends; long header lines (unsubscribe URLs, keys) are kept whole rather than
turned into encoded words, which would break them (RFC 5322 allows 998 characters)."""

# Headers the builder sets or that describe the MIME structure: OutgoingMessage.headers
# may not set them.
_MANAGED = frozenset(
    name.lower()
    for name in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Reply-To",
        "Sender",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Language",
        "Auto-Submitted",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "X-Recobra-Key",
        "Return-Path",
        "Received",
    )
)
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # printable ASCII but the colon (RFC 5322 ftext)
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_DOMAIN_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*$")
_URL_FORBIDDEN = re.compile(r"[\s<>\"]")


class InvalidMessage(ValueError):
    """The message can never be sent as it is (bad address, header injection ...)."""


# --------------------------------------------------------------------------- building


def check_header_value(name: str, value: str) -> str:
    """``value`` if it is safe in a header; InvalidMessage if it holds line breaks or
    other control characters (a header injection attempt, or a template bug)."""
    for char in value:
        if char != "\t" and unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            raise InvalidMessage(
                f"{name}: control character {char!r} in a header value (header injection?); not sent"
            )
    return value


def parse_address(value: str, *, name: str = "address") -> Address:
    """A plain ``local@domain`` address (no display name) as an :class:`Address`, the
    domain converted to ASCII (IDNA); InvalidMessage when it is not one."""
    check_header_value(name, value)
    text = value.strip()
    if text.count("@") != 1:
        raise InvalidMessage(f"{name}: {value!r} is not an email address (needs one @)")
    local, domain = text.split("@")
    if not local or len(local) > 64 or not _LOCAL_PART.match(local):
        raise InvalidMessage(f"{name}: {value!r} is not an email address (invalid local part)")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidMessage(f"{name}: {value!r} is not an email address (invalid domain)") from None
    labels = ascii_domain.split(".")
    if len(ascii_domain) > 253 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        raise InvalidMessage(f"{name}: {value!r} is not an email address (invalid domain)")
    return Address(username=local, domain=ascii_domain)


def parse_mailbox(value: str, *, name: str) -> Address:
    """``"Display Name <local@domain>"`` or a plain address, as an :class:`Address`."""
    check_header_value(name, value)
    found = getaddresses([value])
    if len(found) != 1 or not found[0][1]:
        raise InvalidMessage(f"{name}: {value!r} is not one email address")
    display, addr = found[0]
    plain = parse_address(addr, name=name)
    return Address(display_name=display, username=plain.username, domain=plain.domain)


def message_id(key: str, domain: str) -> str:
    """The ``Message-ID`` of the message with this key: the same key always gives the same
    id, so a receiver (or a mail store) can tell a resend from a new message."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
    return f"<recobra.{digest}@{domain}>"


def content_language(locale: str) -> str | None:
    """The BCP 47 tag of a locale (``es_ES`` -> ``es-ES``), or None when it has none."""
    tag = locale.split(".", 1)[0].split("@", 1)[0].replace("_", "-")
    return tag if _LANGUAGE_TAG.match(tag) else None


def mailto_uri(value: str) -> str:
    """``mailto:`` URI for List-Unsubscribe from an address or a ``mailto:`` URI."""
    check_header_value("unsubscribe_mailto", value)
    uri = value.strip()
    if not uri.lower().startswith("mailto:"):
        uri = "mailto:" + uri
    address = uri[len("mailto:") :].split("?", 1)[0]
    parse_address(address, name="unsubscribe_mailto")
    if _URL_FORBIDDEN.search(uri) or not uri.isascii():
        raise InvalidMessage(f"unsubscribe_mailto: {value!r} is not a valid mailto URI")
    return uri


def _unsubscribe_url(value: str) -> str:
    check_header_value(UNSUBSCRIBE_URL_HEADER, value)
    url = value.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidMessage(f"{UNSUBSCRIBE_URL_HEADER}: {value!r} is not an http(s) URL")
    if _URL_FORBIDDEN.search(url) or not url.isascii():
        raise InvalidMessage(f"{UNSUBSCRIBE_URL_HEADER}: {value!r} has characters a URL may not have")
    return url


def build_email_message(
    message: OutgoingMessage,
    *,
    sender: str,
    reply_to: str | None = None,
    unsubscribe_mailto: str | None = None,
    date: datetime | None = None,
    to: Address | None = None,
) -> EmailMessage:
    """The full RFC 5322 message for ``message``; InvalidMessage if it cannot be sent as is.

    ``to`` replaces the recipient parsed from ``message.to`` (the file channel uses it
    when ``to`` holds a customer id)."""
    from_ = parse_mailbox(sender, name="sender")
    recipient = to if to is not None else parse_address(message.to, name="to")
    check_header_value("subject", message.subject)
    check_header_value("key", message.key)
    check_header_value("locale", message.locale)
    if not message.text and not message.html:
        raise InvalidMessage("the message has neither text nor HTML")
    extra = dict(message.headers or {})
    url = extra.pop(UNSUBSCRIBE_URL_HEADER, "")
    links: list[str] = []
    if url:
        links.append(_unsubscribe_url(url))
    if unsubscribe_mailto:
        links.append(mailto_uri(unsubscribe_mailto))
    for name, value in extra.items():
        if not _HEADER_NAME.match(name):
            raise InvalidMessage(f"header name {name!r} is not valid")
        if name.lower() in _MANAGED:
            raise InvalidMessage(f"header {name!r} is set by the email channel and cannot be replaced")
        check_header_value(name, value)

    email = EmailMessage(policy=POLICY)
    email["From"] = from_
    email["To"] = recipient
    if reply_to:
        email["Reply-To"] = parse_mailbox(reply_to, name="reply_to")
    email["Subject"] = message.subject
    email["Date"] = format_datetime(date or datetime.now(UTC))
    email["Message-ID"] = message_id(message.key, from_.domain)
    email["Auto-Submitted"] = "auto-generated"
    if links:
        email["List-Unsubscribe"] = ", ".join(f"<{link}>" for link in links)
        if any(urlsplit(link).scheme == "https" for link in links):
            # RFC 8058: one-click needs an HTTPS URI; receivers POST "List-Unsubscribe=One-Click".
            email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    email["X-Recobra-Key"] = message.key
    try:
        for name, value in extra.items():
            email[name] = value
        email.set_content(message.text, subtype="plain", charset="utf-8", cte="quoted-printable")
        if message.html:
            email.add_alternative(message.html, subtype="html", charset="utf-8", cte="quoted-printable")
    except (ValueError, IndexError) as exc:  # a structured extra header's value, unencodable text
        raise InvalidMessage(f"cannot build the message: {type(exc).__name__}: {exc}") from exc
    # After the body: making the message multipart moves Content-* headers into the first part.
    language = content_language(message.locale)
    if language is not None:
        email["Content-Language"] = language
    return email


# --------------------------------------------------------------------------- sending


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(text.split())}"


def classify_smtp_error(exc: BaseException) -> DeliveryResult:
    """Translate an error from ``smtplib`` (or the socket under it) into a result.

    * a recipient refused with 5xx -> PERMANENT (fall back to another channel); 4xx ->
      TRANSIENT (greylisting, mailbox busy);
    * the content refused after DATA with 5xx -> PERMANENT; 4xx -> TRANSIENT;
    * authentication failures, the sender refused, a missing STARTTLS or AUTH extension ->
      TRANSIENT: the operator must fix the configuration, then the messages go out;
    * connection refused, timeouts, TLS errors, disconnections -> TRANSIENT.
    """
    transient, permanent = DeliveryStatus.TRANSIENT_FAILURE, DeliveryStatus.PERMANENT_FAILURE
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        replies = "; ".join(f"{rcpt}: {_reply(code, text)}" for rcpt, (code, text) in exc.recipients.items())
        status = permanent if codes and all(500 <= code < 600 for code in codes) else transient
        return DeliveryResult(status, error=f"recipient refused: {replies}")
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return DeliveryResult(
            transient,
            error="SMTP authentication failed (check the username and password settings): "
            + _reply(exc.smtp_code, exc.smtp_error),
        )
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return DeliveryResult(
            transient,
            error=f"sender {exc.sender} refused (check the sender setting): "
            + _reply(exc.smtp_code, exc.smtp_error),
        )
    if isinstance(exc, smtplib.SMTPDataError):
        status = permanent if 500 <= exc.smtp_code < 600 else transient
        return DeliveryResult(status, error="message refused: " + _reply(exc.smtp_code, exc.smtp_error))
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return DeliveryResult(
            transient, error=f"SMTP server lacks a needed extension (check the settings): {exc}"
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        return DeliveryResult(transient, error="SMTP error: " + _reply(exc.smtp_code, exc.smtp_error))
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return DeliveryResult(transient, error=f"SMTP server disconnected: {exc}")
    if isinstance(exc, _ssl.SSLError):
        return DeliveryResult(transient, error=f"TLS failed: {exc}")
    if isinstance(exc, TimeoutError):
        return DeliveryResult(transient, error=f"SMTP timeout: {exc or 'timed out'}")
    if isinstance(exc, OSError):
        return DeliveryResult(transient, error=f"cannot reach the SMTP server: {type(exc).__name__}: {exc}")
    if isinstance(exc, smtplib.SMTPException):
        return DeliveryResult(transient, error=f"SMTP error: {type(exc).__name__}: {exc}")
    raise TypeError(f"not an SMTP or socket error: {exc!r}")


class SmtpEmailChannel:
    """Sends each message in its own SMTP session (plain, STARTTLS or implicit TLS).

    ``ssl_context`` verifies the server's certificate (default: the system's trust store,
    which honours ``SSL_CERT_FILE``); ``now`` gives the ``Date`` header (wall clock)."""

    kind = "email"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        ssl: bool = False,
        sender: str,
        reply_to: str | None = None,
        timeout: float = 10.0,
        list_unsubscribe_mailto: str | None = None,
        ssl_context: _ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        if not host or not host.strip():
            raise ValueError("host: required")
        if not 0 < port < 65536:
            raise ValueError(f"port: must be in 1..65535, got {port}")
        if starttls and ssl:
            raise ValueError("starttls, ssl: choose one (ssl is TLS from the start, usually port 465)")
        if (username is None) != (password is None):
            raise ValueError("username, password: give both or neither")
        for key, value in (("username", username), ("password", password)):
            if value is not None and not (value.isascii() and value.isprintable()):
                # smtplib's AUTH encodes ASCII only; the value itself is never shown.
                raise ValueError(f"{key}: only printable ASCII characters can be sent by SMTP AUTH")
        if not timeout > 0:
            raise ValueError(f"timeout: must be > 0, got {timeout}")
        try:
            self._from = parse_mailbox(sender, name="sender")
            if reply_to:
                parse_mailbox(reply_to, name="reply_to")
            mailto = mailto_uri(list_unsubscribe_mailto) if list_unsubscribe_mailto else None
        except InvalidMessage as exc:
            raise ValueError(str(exc)) from None
        self.host = host.strip()
        self.port = port
        self.username = username
        self._password = password
        self.starttls = starttls
        self.ssl = ssl
        self.sender = sender
        self.reply_to = reply_to
        self.timeout = timeout
        self.list_unsubscribe_mailto = mailto
        self._context = ssl_context
        self._local_hostname = local_hostname
        self._now = now or (lambda: datetime.now(UTC))

    def __repr__(self) -> str:  # never shows the password
        security = "ssl" if self.ssl else "starttls" if self.starttls else "plain"
        return f"SmtpEmailChannel({self.host}:{self.port}, {security}, sender={self.sender!r})"

    def build(self, message: OutgoingMessage) -> EmailMessage:
        """The message as it would be sent; InvalidMessage if it cannot be."""
        return build_email_message(
            message,
            sender=self.sender,
            reply_to=self.reply_to,
            unsubscribe_mailto=self.list_unsubscribe_mailto,
            date=self._now(),
        )

    def send(self, message: OutgoingMessage) -> DeliveryResult:
        try:
            email = self.build(message)
        except InvalidMessage as exc:
            return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=str(exc))
        recipient = parse_address(message.to).addr_spec
        try:
            self._deliver(email, recipient)
        except (smtplib.SMTPException, OSError) as exc:
            return classify_smtp_error(exc)
        return DeliveryResult(DeliveryStatus.SENT, provider_id=str(email["Message-ID"]))

    def _context_for_tls(self) -> _ssl.SSLContext:
        if self._context is None:
            self._context = _ssl.create_default_context()
        return self._context

    def _deliver(self, email: EmailMessage, recipient: str) -> None:
        # Connecting in the constructor records the host name that TLS verifies the
        # certificate against; a constructor that fails has closed its socket.
        smtp: smtplib.SMTP
        if self.ssl:
            smtp = smtplib.SMTP_SSL(
                self.host,
                self.port,
                local_hostname=self._local_hostname,
                timeout=self.timeout,
                context=self._context_for_tls(),
            )
        else:
            smtp = smtplib.SMTP(
                self.host, self.port, local_hostname=self._local_hostname, timeout=self.timeout
            )
        try:
            if self.starttls:
                smtp.starttls(context=self._context_for_tls())
            if self.username is not None and self._password is not None:
                smtp.login(self.username, self._password)
            smtp.send_message(email, from_addr=self._from.addr_spec, to_addrs=[recipient])
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.quit()
        finally:
            smtp.close()


# --------------------------------------------------------------------------- settings

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_KEYS = (
    "host",
    "port",
    "username",
    "password",
    "starttls",
    "ssl",
    "sender",
    "reply_to",
    "timeout",
    "unsubscribe_mailto",
)


def parse_bool(key: str, raw: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case); ValueError naming ``key``."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{key}: not a boolean: {raw!r} (use true or false)")


def from_settings(settings: Mapping[str, str]) -> SmtpEmailChannel:
    """Build the channel from string settings (the ``recobra.channels`` entry point ``email``).

    Keys: ``host`` and ``sender`` (required), ``port`` (default 465 with ``ssl``, 587 with
    ``starttls``, else 25), ``username`` and ``password`` (both or neither; keep the
    password in the environment), ``starttls``, ``ssl`` (booleans), ``reply_to``,
    ``timeout`` (seconds, > 0) and ``unsubscribe_mailto``. Unknown keys and bad values
    raise ``ValueError`` naming the key (never showing the password).
    """
    unknown = sorted(set(settings) - set(_KEYS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown setting (known: {', '.join(_KEYS)})")
    values = {key: str(value).strip() for key, value in settings.items()}
    for key in ("host", "sender"):
        if not values.get(key):
            raise ValueError(f"{key}: required")
    starttls = parse_bool("starttls", values.get("starttls", ""))
    use_ssl = parse_bool("ssl", values.get("ssl", ""))
    port = 465 if use_ssl else 587 if starttls else 25
    if values.get("port"):
        try:
            port = int(values["port"])
        except ValueError:
            raise ValueError(f"port: not an integer: {values['port']!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"port: must be in 1..65535, got {values['port']!r}")
    timeout = 10.0
    if values.get("timeout"):
        try:
            timeout = float(values["timeout"])
        except ValueError:
            raise ValueError(f"timeout: not a number: {values['timeout']!r}") from None
        if not 0 < timeout < float("inf"):
            raise ValueError(f"timeout: must be > 0 seconds, got {values['timeout']!r}")
    username = values.get("username") or None
    password = str(settings["password"]) if settings.get("password") else None
    if (username is None) != (password is None):
        raise ValueError("username, password: give both or neither")
    for key in ("sender", "reply_to", "unsubscribe_mailto"):
        if values.get(key):
            try:
                if key == "unsubscribe_mailto":
                    mailto_uri(values[key])
                else:
                    parse_mailbox(values[key], name=key)
            except InvalidMessage as exc:
                raise ValueError(str(exc)) from None
    return SmtpEmailChannel(
        values["host"],
        port,
        username=username,
        password=password,
        starttls=starttls,
        ssl=use_ssl,
        sender=values["sender"],
        reply_to=values.get("reply_to") or None,
        timeout=timeout,
        list_unsubscribe_mailto=values.get("unsubscribe_mailto") or None,
    )
