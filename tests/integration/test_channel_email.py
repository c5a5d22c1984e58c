"""The SMTP email channel against a real SMTP server (aiosmtpd on 127.0.0.1)."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from recobra.channels.email import SmtpEmailChannel, from_settings, message_id
from recobra.ports import DeliveryStatus, OutgoingMessage

SENDER = "Facturación Acme <billing@acme.test>"
USER, PASSWORD = "billing", "correct horse battery staple"
FIXED_NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


@dataclass
class Recorder:
    """An aiosmtpd handler that keeps what it receives and refuses on demand."""

    received: list[Envelope] = field(default_factory=list)
    refuse_rcpt: dict[str, str] = field(default_factory=dict)
    """Recipient -> SMTP reply given to its RCPT TO."""
    data_reply: str | None = None
    """When set, the reply to every DATA (instead of accepting it)."""
    sessions: list[dict[str, Any]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.data_reply is not None:
            return self.data_reply
        self.received.append(envelope)
        self.sessions.append({"tls": session.ssl is not None, "authenticated": session.authenticated})
        return "250 2.0.0 Message accepted"

    def messages(self) -> list[EmailMessage]:
        """What was received, parsed as a mail client would."""
        parsed = []
        for envelope in self.received:
            content = envelope.original_content
            assert isinstance(content, bytes)
            message = BytesParser(policy=policy.default).parsebytes(content)
            assert isinstance(message, EmailMessage)
            parsed.append(message)
        return parsed

    def only_message(self) -> EmailMessage:
        messages = self.messages()
        assert len(messages) == 1
        return messages[0]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@contextmanager
def serving(handler: Recorder, **kwargs: Any) -> Iterator[int]:
    """An aiosmtpd server on 127.0.0.1 and a free port, stopped on leaving."""
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@pytest.fixture
def smtp_port(recorder: Recorder) -> Iterator[int]:
    """A plain SMTP server (no TLS, no AUTH) feeding ``recorder``."""
    with serving(recorder) as port:
        yield port


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for localhost and 127.0.0.1, made for these tests."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Certificate(cert_path, key_path)


def _authenticator(
    server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: object
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USER.encode()
        and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


def _message(**changes: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "key": "recobra:case_42:1:email",
        "customer_id": "cus_42",
        "kind": "payment_failed",
        "channel": "email",
        "locale": "es_ES",
        "to": "cliente@example.test",
        "subject": "¿Actualizamos tu tarjeta? El pago de mañana falló",
        "text": "Hola Begoña:\n\nNo pudimos cobrar tu suscripción. ¿Nos ayudas? Está todo aquí.\n",
        "html": "<p>Hola Begoña:</p><p>No pudimos cobrar tu suscripción. ¿Nos ayudas?</p>",
        "headers": {"List-Unsubscribe-URL": "https://acme.test/unsubscribe?t=abc123"},
    }
    fields.update(changes)
    return OutgoingMessage(**fields)


def _channel(port: int, **kwargs: Any) -> SmtpEmailChannel:
    kwargs.setdefault("sender", SENDER)
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("now", lambda: FIXED_NOW)
    return SmtpEmailChannel("127.0.0.1", port, **kwargs)


# --------------------------------------------------------------------------- delivery


def test_sends_a_multipart_message_with_the_headers(recorder: Recorder, smtp_port: int) -> None:
    channel = _channel(smtp_port, reply_to="ayuda@acme.test", list_unsubscribe_mailto="unsubscribe@acme.test")
    result = channel.send(_message())

    assert result.status is DeliveryStatus.SENT, result.error
    envelope = recorder.received[0]
    assert envelope.mail_from == "billing@acme.test"
    assert envelope.rcpt_tos == ["cliente@example.test"]
    received = recorder.only_message()
    assert received["From"] == SENDER
    assert received["To"] == "cliente@example.test"
    assert received["Reply-To"] == "ayuda@acme.test"
    assert received["Subject"] == "¿Actualizamos tu tarjeta? El pago de mañana falló"
    assert received["Date"].datetime == FIXED_NOW
    assert received["Message-ID"] == result.provider_id == message_id("recobra:case_42:1:email", "acme.test")
    assert received["List-Unsubscribe"] == (
        "<https://acme.test/unsubscribe?t=abc123>, <mailto:unsubscribe@acme.test>"
    )
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received["Auto-Submitted"] == "auto-generated"
    assert received["Content-Language"] == "es-ES"
    assert received["X-Recobra-Key"] == "recobra:case_42:1:email"
    assert "List-Unsubscribe-URL" not in received

    assert received.get_content_type() == "multipart/alternative"
    parts = list(received.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    text, html = (part.get_content() for part in parts)
    assert "Hola Begoña" in text
    assert "¿Nos ayudas? Está todo aquí." in text
    assert "<p>Hola Begoña:</p>" in html
    assert all(part.get_content_charset() == "utf-8" for part in parts)
    # 7-bit on the wire: nothing relies on the server's 8BITMIME.
    content = recorder.received[0].original_content
    assert isinstance(content, bytes)
    assert content.isascii()


def test_message_id_is_derived_from_the_key(recorder: Recorder, smtp_port: int) -> None:
    channel = _channel(smtp_port)
    first = channel.send(_message())
    again = channel.send(_message())
    other = channel.send(_message(key="recobra:case_42:2:email"))
    assert first.status is again.status is other.status is DeliveryStatus.SENT
    assert first.provider_id == again.provider_id != other.provider_id
    ids = [received["Message-ID"] for received in recorder.messages()]
    assert ids == [first.provider_id, first.provider_id, other.provider_id]


def test_text_only_without_unsubscribe_headers(recorder: Recorder, smtp_port: int) -> None:
    result = _channel(smtp_port).send(_message(html="", headers=None, locale="es"))
    assert result.status is DeliveryStatus.SENT, result.error
    received = recorder.only_message()
    assert received.get_content_type() == "text/plain"
    assert "Begoña" in received.get_content()
    assert "List-Unsubscribe" not in received
    assert "List-Unsubscribe-Post" not in received
    assert received["Content-Language"] == "es"


def test_one_click_needs_an_https_url(recorder: Recorder, smtp_port: int) -> None:
    channel = _channel(smtp_port, list_unsubscribe_mailto="mailto:unsubscribe@acme.test?subject=baja")
    result = channel.send(_message(headers=None))
    assert result.status is DeliveryStatus.SENT, result.error
    received = recorder.only_message()
    assert received["List-Unsubscribe"] == "<mailto:unsubscribe@acme.test?subject=baja>"
    assert "List-Unsubscribe-Post" not in received  # RFC 8058: only with an HTTPS URI


def test_extra_headers_are_passed_on(recorder: Recorder, smtp_port: int) -> None:
    headers = {"List-Unsubscribe-URL": "https://acme.test/u", "X-Campaign": "dunning-2025"}
    result = _channel(smtp_port).send(_message(headers=headers))
    assert result.status is DeliveryStatus.SENT, result.error
    assert recorder.only_message()["X-Campaign"] == "dunning-2025"


# --------------------------------------------------------------------------- failures


def test_recipient_refused_with_550_is_permanent(recorder: Recorder, smtp_port: int) -> None:
    recorder.refuse_rcpt["nadie@example.test"] = "550 5.1.1 No such user"
    channel = _channel(smtp_port)
    result = channel.send(_message(to="nadie@example.test"))
    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert "550" in result.error
    assert "No such user" in result.error
    assert recorder.received == []
    # The same server still takes mail for others.
    assert channel.send(_message()).status is DeliveryStatus.SENT


def test_recipient_greylisted_with_451_is_transient(recorder: Recorder, smtp_port: int) -> None:
    recorder.refuse_rcpt["cliente@example.test"] = "451 4.7.1 Greylisted, try again later"
    result = _channel(smtp_port).send(_message())
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert "451" in result.error


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ("451 4.3.0 Temporary local problem", DeliveryStatus.TRANSIENT_FAILURE),
        ("554 5.7.1 Message rejected as spam", DeliveryStatus.PERMANENT_FAILURE),
    ],
)
def test_content_refused_after_data(
    recorder: Recorder, smtp_port: int, reply: str, status: DeliveryStatus
) -> None:
    recorder.data_reply = reply
    result = _channel(smtp_port).send(_message())
    assert result.status is status
    assert reply.split(maxsplit=1)[0] in result.error


def test_server_down_is_transient() -> None:
    result = _channel(_free_port()).send(_message())
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert "cannot reach the SMTP server" in result.error
    assert "ConnectionRefusedError" in result.error


def test_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        result = _channel(silent.getsockname()[1], timeout=0.2).send(_message())
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert "timeout" in result.error.lower() or "timed out" in result.error.lower()


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"to": "cliente.example.test"}, "not an email address"),
        ({"to": "a@b@example.test"}, "not an email address"),
        ({"to": "cliente@example.test\r\nBcc: everyone@example.test"}, "control character"),
        ({"to": "cliente@example.test, otro@example.test"}, "not an email address"),
        ({"subject": "Hola\r\nBcc: everyone@example.test"}, "control character"),
        ({"subject": "Hola\nX-Evil: 1"}, "control character"),
        ({"key": "k\rX-Evil: 1"}, "control character"),
        ({"headers": {"X-Campaign": "a\nBcc: everyone@example.test"}}, "control character"),
        ({"headers": {"List-Unsubscribe-URL": "https://acme.test/u\r\nBcc: x@example.test"}}, "control"),
        ({"headers": {"List-Unsubscribe-URL": "javascript:alert(1)"}}, "not an http(s) URL"),
        ({"headers": {"Bcc": "everyone@example.test"}}, "set by the email channel"),
        ({"headers": {"Bad Name": "x"}}, "header name"),
        ({"text": "", "html": ""}, "neither text nor HTML"),
    ],
)
def test_invalid_messages_fail_permanently_without_connecting(
    changes: dict[str, Any], complaint: str
) -> None:
    # Nothing listens on this port: any attempt to connect would be a transient failure.
    result = _channel(_free_port()).send(_message(**changes))
    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert complaint in result.error


def test_header_injection_never_reaches_the_server(recorder: Recorder, smtp_port: int) -> None:
    result = _channel(smtp_port).send(_message(subject="Hola\r\nBcc: everyone@example.test"))
    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert recorder.received == []


# --------------------------------------------------------------------------- TLS and AUTH


@pytest.fixture
def tls_port(recorder: Recorder, certificate: Certificate, request: pytest.FixtureRequest) -> Iterator[int]:
    """STARTTLS required, AUTH only after TLS; ``request.param`` names a mechanism to exclude."""
    excluded = [request.param] if getattr(request, "param", None) else []
    with serving(
        recorder,
        tls_context=certificate.server_context(),
        require_starttls=True,
        authenticator=_authenticator,
        auth_require_tls=True,
        auth_exclude_mechanism=excluded,
    ) as port:
        yield port


@pytest.mark.parametrize("tls_port", ["PLAIN", "LOGIN"], indirect=True, ids=["login", "plain"])
def test_starttls_and_auth(recorder: Recorder, tls_port: int, certificate: Certificate) -> None:
    channel = _channel(
        tls_port,
        starttls=True,
        username=USER,
        password=PASSWORD,
        ssl_context=certificate.client_context(),
    )
    result = channel.send(_message())
    assert result.status is DeliveryStatus.SENT, result.error
    assert recorder.sessions == [{"tls": True, "authenticated": True}]
    assert "Begoña" in recorder.only_message().get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_wrong_password_is_a_transient_failure_with_a_clear_error(
    recorder: Recorder, tls_port: int, certificate: Certificate
) -> None:
    channel = _channel(
        tls_port,
        starttls=True,
        username=USER,
        password="wrong-password",
        ssl_context=certificate.client_context(),
    )
    result = channel.send(_message())
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert "authentication failed" in result.error
    assert "535" in result.error
    assert "wrong-password" not in result.error
    assert "wrong-password" not in repr(channel)
    assert recorder.received == []


def test_untrusted_certificate_is_a_transient_failure(recorder: Recorder, tls_port: int) -> None:
    # The default context does not trust the test's self-signed certificate.
    channel = _channel(tls_port, starttls=True, username=USER, password=PASSWORD)
    result = channel.send(_message())
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert "TLS failed" in result.error
    assert recorder.received == []


def test_server_requiring_starttls_refuses_plain_mail(recorder: Recorder, tls_port: int) -> None:
    result = _channel(tls_port).send(_message())
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert "530" in result.error
    assert recorder.received == []


def test_implicit_tls(recorder: Recorder, certificate: Certificate) -> None:
    with serving(recorder, ssl_context=certificate.server_context()) as port:
        channel = _channel(port, ssl=True, ssl_context=certificate.client_context())
        result = channel.send(_message())
    assert result.status is DeliveryStatus.SENT, result.error
    assert "Begoña" in recorder.only_message().get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_implicit_tls_against_a_plain_server_is_transient(
    recorder: Recorder, smtp_port: int, certificate: Certificate
) -> None:
    channel = _channel(smtp_port, ssl=True, ssl_context=certificate.client_context(), timeout=2.0)
    result = channel.send(_message())
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert recorder.received == []


# --------------------------------------------------------------------------- settings


def test_from_settings_builds_a_working_channel(recorder: Recorder, smtp_port: int) -> None:
    channel = from_settings(
        {
            "host": "127.0.0.1",
            "port": str(smtp_port),
            "sender": SENDER,
            "reply_to": "ayuda@acme.test",
            "timeout": "3",
            "starttls": "false",
            "unsubscribe_mailto": "unsubscribe@acme.test",
        }
    )
    assert channel.kind == "email"
    assert channel.timeout == 3.0
    assert channel.send(_message()).status is DeliveryStatus.SENT
    assert "mailto:unsubscribe@acme.test" in recorder.only_message()["List-Unsubscribe"]


def test_from_settings_defaults() -> None:
    assert from_settings({"host": "mail.acme.test", "sender": SENDER}).port == 25
    assert from_settings({"host": "mail.acme.test", "sender": SENDER, "starttls": "yes"}).port == 587
    channel = from_settings({"host": "mail.acme.test", "sender": SENDER, "ssl": "TRUE"})
    assert (channel.port, channel.ssl, channel.starttls) == (465, True, False)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"sender": SENDER}, "host"),
        ({"host": "mail.acme.test"}, "sender"),
        ({"host": "mail.acme.test", "sender": "not an address"}, "sender"),
        ({"host": "mail.acme.test", "sender": SENDER, "port": "smtp"}, "port"),
        ({"host": "mail.acme.test", "sender": SENDER, "port": "70000"}, "port"),
        ({"host": "mail.acme.test", "sender": SENDER, "timeout": "0"}, "timeout"),
        ({"host": "mail.acme.test", "sender": SENDER, "timeout": "soon"}, "timeout"),
        ({"host": "mail.acme.test", "sender": SENDER, "starttls": "maybe"}, "starttls"),
        ({"host": "mail.acme.test", "sender": SENDER, "starttls": "1", "ssl": "1"}, "starttls, ssl"),
        ({"host": "mail.acme.test", "sender": SENDER, "username": "billing"}, "username, password"),
        ({"host": "mail.acme.test", "sender": SENDER, "reply_to": "x\ny@acme.test"}, "reply_to"),
        ({"host": "mail.acme.test", "sender": SENDER, "unsubscribe_mailto": "nope"}, "unsubscribe_mailto"),
        ({"host": "mail.acme.test", "sender": SENDER, "tls": "1"}, "tls"),
    ],
)
def test_from_settings_rejects_bad_values_naming_the_key(settings: dict[str, str], key: str) -> None:
    with pytest.raises(ValueError, match=r"^" + key.replace(",", r",") + ":"):
        from_settings(settings)


def test_secrets_never_appear_in_errors_or_repr() -> None:
    secret = "s3cret-ñ-password"
    with pytest.raises(ValueError, match="password") as caught:
        from_settings({"host": "mail.acme.test", "sender": SENDER, "username": "b", "password": secret})
    assert secret not in str(caught.value)
    channel = from_settings(
        {"host": "mail.acme.test", "sender": SENDER, "username": "b", "password": "ascii-secret"}
    )
    assert "ascii-secret" not in repr(channel)
