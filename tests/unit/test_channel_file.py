"""The file channel: one file per message, or a line on standard error."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from recobra.channels.email import message_id
from recobra.channels.file import FileChannel, file_name, from_settings
from recobra.ports import Channel, DeliveryStatus, OutgoingMessage

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


def _message(channel: str = "email", **changes: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "key": f"recobra:case_42:1:{channel}",
        "customer_id": "cus_42",
        "kind": "payment_failed",
        "channel": channel,
        "locale": "es_ES",
        "to": "cliente@example.test",
        "subject": "¿Actualizamos tu tarjeta?",
        "text": "Hola Begoña: el cobro de mañana falló.",
        "html": "<p>Hola Begoña: el cobro de mañana falló.</p>",
        "headers": {"List-Unsubscribe-URL": "https://acme.test/unsubscribe?t=abc"},
    }
    fields.update(changes)
    return OutgoingMessage(**fields)


def _parse(path: Path) -> EmailMessage:
    parsed = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_is_a_channel(tmp_path: Path) -> None:
    channel = FileChannel(tmp_path)
    assert isinstance(channel, Channel)
    assert channel.kind == "file"


def test_email_becomes_a_full_eml_file(tmp_path: Path) -> None:
    channel = FileChannel(tmp_path, sender="Acme <billing@acme.test>", now=lambda: T0)
    result = channel.send(_message())

    assert result.status is DeliveryStatus.SENT, result.error
    assert result.provider_id is not None
    path = Path(result.provider_id)
    assert path.parent == tmp_path
    assert path.suffix == ".eml"
    email = _parse(path)
    assert email["From"] == "Acme <billing@acme.test>"
    assert email["To"] == "cliente@example.test"
    assert email["Subject"] == "¿Actualizamos tu tarjeta?"
    assert email["Date"].datetime == T0
    assert email["Message-ID"] == message_id("recobra:case_42:1:email", "acme.test")
    assert email["List-Unsubscribe"] == "<https://acme.test/unsubscribe?t=abc>"
    assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert email["Auto-Submitted"] == "auto-generated"
    assert email["Content-Language"] == "es-ES"
    assert email["X-Recobra-Key"] == "recobra:case_42:1:email"
    assert [part.get_content_type() for part in email.iter_parts()] == ["text/plain", "text/html"]
    text = email.get_body(("plain",))
    assert text is not None
    assert "Hola Begoña" in text.get_content()


def test_email_to_a_customer_id_gets_a_reserved_address(tmp_path: Path) -> None:
    result = FileChannel(tmp_path).send(_message(to="cus_42"))
    assert result.status is DeliveryStatus.SENT, result.error
    assert result.provider_id is not None
    assert _parse(Path(result.provider_id))["To"] == "cus_42@customers.invalid"


def test_the_file_channels_own_messages_are_emails(tmp_path: Path) -> None:
    # The composer gives the file channel the email rendering and the customer id as ``to``.
    result = FileChannel(tmp_path).send(_message("file", to="cus_42"))
    assert result.status is DeliveryStatus.SENT, result.error
    path = Path(str(result.provider_id))
    assert path.suffix == ".eml"
    email = _parse(path)
    assert email["To"] == "cus_42@customers.invalid"
    assert email["Subject"] == "¿Actualizamos tu tarjeta?"
    assert email.get_content_type() == "multipart/alternative"


def test_header_injection_is_refused(tmp_path: Path) -> None:
    channel = FileChannel(tmp_path)
    for message in (
        _message(subject="Hola\r\nBcc: everyone@example.test"),
        _message(to="cliente@example.test\nBcc: everyone@example.test"),
    ):
        result = channel.send(message)
        assert result.status is DeliveryStatus.PERMANENT_FAILURE
        assert "control character" in result.error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("channel", ["sms", "voice", "push", "in_app"])
def test_other_channels_become_text_files(tmp_path: Path, channel: str) -> None:
    message = _message(channel, to="+34600123456", subject="", html="", data={"url": "https://acme.test/pay"})
    result = FileChannel(tmp_path).send(message)
    assert result.status is DeliveryStatus.SENT, result.error
    assert result.provider_id is not None
    path = Path(result.provider_id)
    assert path.suffix == ".txt"
    content = path.read_text(encoding="utf-8")
    assert "To: +34600123456" in content
    assert f"Channel: {channel}" in content
    assert "Kind: payment_failed" in content
    assert f"Key: recobra:case_42:1:{channel}" in content
    assert "Hola Begoña: el cobro de mañana falló." in content
    assert '"url": "https://acme.test/pay"' in content
    assert "Subject:" not in content


def test_webhook_becomes_a_json_file(tmp_path: Path) -> None:
    message = _message("webhook", to="cus_42", data={"invoice_id": "in_7", "nota": "¿mañana?"})
    result = FileChannel(tmp_path, now=lambda: T0).send(message)
    assert result.status is DeliveryStatus.SENT, result.error
    assert result.provider_id is not None
    path = Path(result.provider_id)
    assert path.suffix == ".json"
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "id": "recobra:case_42:1:webhook",
        "type": "payment_failed",
        "created": int(T0.timestamp()),
        "data": {
            "invoice_id": "in_7",
            "nota": "¿mañana?",
            "customer_id": "cus_42",
            "kind": "payment_failed",
            "channel": "webhook",
            "locale": "es_ES",
        },
    }


def test_the_same_key_overwrites_its_file(tmp_path: Path) -> None:
    channel = FileChannel(tmp_path)
    first = channel.send(_message("sms", text="first"))
    second = channel.send(_message("sms", text="second"))
    assert first.provider_id == second.provider_id
    assert [p.name for p in tmp_path.iterdir()] == [Path(str(first.provider_id)).name]  # no temporary left
    assert "second" in Path(str(second.provider_id)).read_text(encoding="utf-8")


def test_the_directory_is_created(tmp_path: Path) -> None:
    directory = tmp_path / "outbox" / "demo"
    result = FileChannel(directory).send(_message("sms"))
    assert result.status is DeliveryStatus.SENT
    assert Path(str(result.provider_id)).parent == directory


def test_a_directory_that_cannot_be_written_is_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("", encoding="utf-8")
    result = FileChannel(blocker).send(_message("sms"))
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert "cannot write" in result.error


def test_file_names_are_safe_and_distinct() -> None:
    assert file_name("plain-key_1.v2", "txt") == "plain-key_1.v2.txt"
    colon = file_name("recobra:case_1:0:email", "eml")
    assert colon.startswith("recobra_case_1_0_email-")
    assert colon.endswith(".eml")
    assert file_name("a:b", "txt") != file_name("a_b", "txt") != file_name("a/b", "txt")
    assert "/" not in file_name("../../etc/passwd", "txt")
    assert not file_name("../../etc/passwd", "txt").startswith(".")
    assert file_name("", "txt").startswith("message")
    assert len(file_name("k" * 500, "txt")) < 140


def test_without_a_directory_prints_one_line() -> None:
    stream = io.StringIO()
    result = FileChannel(None, stream=stream).send(_message(subject="Hola\nadiós"))
    assert result.status is DeliveryStatus.SENT
    output = stream.getvalue()
    assert output.count("\n") == 1
    assert "email payment_failed to cliente@example.test (es_ES)" in output
    assert "Hola adiós" in output


def test_without_a_directory_prints_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert FileChannel(None).send(_message("sms", subject="")).status is DeliveryStatus.SENT
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "sms payment_failed" in captured.err
    assert "Hola Begoña" in captured.err


def test_from_settings(tmp_path: Path) -> None:
    channel = from_settings({"directory": str(tmp_path), "sender": "Acme <billing@acme.test>"})
    assert channel.directory == tmp_path
    assert channel.sender == "Acme <billing@acme.test>"
    assert from_settings({}).directory is None
    assert from_settings({"directory": "  "}).directory is None


@pytest.mark.parametrize(
    ("settings", "key"),
    [({"dir": "x"}, "dir"), ({"sender": "nobody"}, "sender"), ({"directory": "FILE"}, "directory")],
)
def test_from_settings_rejects_bad_values_naming_the_key(
    tmp_path: Path, settings: dict[str, str], key: str
) -> None:
    existing_file = tmp_path / "file.txt"
    existing_file.write_text("", encoding="utf-8")
    settings = {k: str(existing_file) if v == "FILE" else v for k, v in settings.items()}
    with pytest.raises(ValueError, match=f"^{key}:"):
        from_settings(settings)
