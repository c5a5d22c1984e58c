"""The demo's channel: messages written to files, or summarised on the console.

With a directory, each message becomes one file named after its key (so a resend
overwrites it): ``.eml`` for email and for the file channel's own messages (which
carry the email rendering; the same RFC 5322 message the SMTP channel sends, to
open in any mail client), ``.json`` for webhooks (the same body the webhook
channel POSTs), ``.txt`` for everything else (SMS, voice, push, in-app).
Without a directory, each message is one line on standard error.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.headerregistry import Address
from pathlib import Path
from typing import TextIO

from recobra.channels.email import (
    POLICY,
    InvalidMessage,
    build_email_message,
    check_header_value,
    parse_address,
    parse_mailbox,
)
from recobra.channels.webhook import encode_body, event_payload
from recobra.ports import DeliveryResult, DeliveryStatus, OutgoingMessage

__all__ = ["DEFAULT_SENDER", "FileChannel", "file_name", "from_settings"]

DEFAULT_SENDER = "Recobra <recobra@localhost>"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_STEM = 120


def file_name(key: str, extension: str) -> str:
    """``<key>.<extension>`` with the key made safe for any file system: characters other
    than letters, digits, ``.``, ``_`` and ``-`` become ``_``, and when anything changed a
    short hash of the original key is appended, so different keys never share a file."""
    stem = _UNSAFE.sub("_", key).strip("._")[:_MAX_STEM] or "message"
    if stem != key:
        stem += "-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
    return f"{stem}.{extension}"


def _extension(channel: str) -> str:
    # Messages for the file channel itself carry the email rendering: they become .eml.
    return {"email": "eml", "file": "eml", "webhook": "json"}.get(channel, "txt")


def _one_line(text: str, limit: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


class FileChannel:
    """Writes messages of any channel to ``directory`` (created when missing), or prints a
    summary line to ``stream`` (standard error by default) when ``directory`` is None.

    ``sender`` is the ``From`` of ``.eml`` files; ``now`` dates them (wall clock)."""

    kind = "file"

    def __init__(
        self,
        directory: Path | None,
        *,
        sender: str = DEFAULT_SENDER,
        stream: TextIO | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        try:
            parse_mailbox(sender, name="sender")
        except InvalidMessage as exc:
            raise ValueError(str(exc)) from None
        self.directory = directory
        self.sender = sender
        self._stream = stream
        self._now = now or (lambda: datetime.now(UTC))

    def __repr__(self) -> str:
        return f"FileChannel({str(self.directory) if self.directory else 'stderr'!r})"

    def send(self, message: OutgoingMessage) -> DeliveryResult:
        if self.directory is None:
            return self._print(message)
        try:
            content = self.render(message)
        except InvalidMessage as exc:
            return DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=str(exc))
        path = self.directory / file_name(message.key, _extension(message.channel))
        try:
            _write_atomically(path, content)
        except OSError as exc:
            return DeliveryResult(
                DeliveryStatus.TRANSIENT_FAILURE, error=f"cannot write {path}: {exc.strerror or exc}"
            )
        return DeliveryResult(DeliveryStatus.SENT, provider_id=str(path))

    def render(self, message: OutgoingMessage) -> bytes:
        """The file's content for ``message``; InvalidMessage if it cannot be sent as is."""
        if _extension(message.channel) == "eml":
            return self._email(message)
        if message.channel == "webhook":
            return encode_body(event_payload(message, self._now()), indent=2) + b"\n"
        return self._text(message)

    def _email(self, message: OutgoingMessage) -> bytes:
        check_header_value("to", message.to)
        try:
            to = parse_address(message.to, name="to")
        except InvalidMessage:
            # ``to`` holds a customer id here, not an address: a reserved domain says so.
            local = re.sub(r"[^A-Za-z0-9._-]+", "_", message.to or message.customer_id).strip("._")
            to = Address(username=local or "customer", domain="customers.invalid")
        email = build_email_message(message, sender=self.sender, date=self._now(), to=to)
        return email.as_bytes(policy=POLICY)

    def _text(self, message: OutgoingMessage) -> bytes:
        lines = [
            f"To: {message.to}",
            f"Channel: {message.channel}",
            f"Kind: {message.kind}",
            f"Locale: {message.locale}",
            f"Key: {message.key}",
            f"Customer: {message.customer_id}",
        ]
        if message.subject:
            lines.append(f"Subject: {message.subject}")
        lines += ["", message.text or message.html]
        if message.data:
            lines += ["", "Data: " + encode_body(message.data, indent=2).decode("utf-8")]
        return ("\n".join(lines).rstrip("\n") + "\n").encode("utf-8")

    def _print(self, message: OutgoingMessage) -> DeliveryResult:
        about = _one_line(message.subject or message.text or message.html)
        line = (
            f"[recobra] {message.channel} {message.kind} to {_one_line(message.to, 60)} "
            f"({message.locale}) key={_one_line(message.key, 80)}: {about}"
        )
        print(line, file=self._stream or sys.stderr, flush=True)
        return DeliveryResult(DeliveryStatus.SENT)


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def from_settings(settings: Mapping[str, str]) -> FileChannel:
    """Build the channel from string settings (the ``recobra.channels`` entry point ``file``).

    Keys: ``directory`` (empty or absent: one line per message on standard error) and
    ``sender`` (the ``From`` of ``.eml`` files). Unknown keys and bad values raise
    ``ValueError`` naming the key.
    """
    known = ("directory", "sender")
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown setting (known: {', '.join(known)})")
    directory = str(settings.get("directory", "")).strip()
    path = Path(directory).expanduser() if directory else None
    if path is not None and path.exists() and not path.is_dir():
        raise ValueError(f"directory: {directory!r} exists and is not a directory")
    sender = str(settings.get("sender", "")).strip() or DEFAULT_SENDER
    try:
        parse_mailbox(sender, name="sender")
    except InvalidMessage as exc:
        raise ValueError(str(exc)) from None
    return FileChannel(path, sender=sender)
