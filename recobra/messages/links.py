"""Signed, expiring, single-purpose links to the hosted pages.

A link looks like ``{base_url}/p/{purpose}/{token}``. The token is an itsdangerous
``URLSafeSerializer`` dump (compact JSON, zlib-compressed when shorter, base64url)
signed with HMAC-SHA256 truncated to 128 bits (22 characters: links must fit in
an SMS); the salt is per purpose, so a token made for ``cancel``
never verifies as ``update_payment``. The payload is
``[subject, issued_at, expires_at, nonce]`` plus ``extra`` when given, the times
as whole Unix seconds. Time is always an argument: nothing here reads a clock.

Every link carries a random nonce. Links may be opened more than once by mail
scanners and link previews, so single use is the caller's decision: it records
the nonces it has honoured (a later step's store) and refuses a reused one.
The payload is signed, not encrypted: put nothing secret in ``subject`` or ``extra``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from itsdangerous import BadData, URLSafeSerializer
from itsdangerous.encoding import base64_decode, base64_encode
from itsdangerous.signer import HMACAlgorithm

__all__ = [
    "MIN_SECRET_LENGTH",
    "PURPOSES",
    "LinkError",
    "LinkExpired",
    "LinkSigner",
    "LinkTampered",
    "LinkWrongPurpose",
    "SignedLink",
]

PURPOSES = frozenset({"update_payment", "cancel", "reactivate", "unsubscribe", "click", "notices"})
"""What a link may be for: update the payment method, cancel, reactivate, unsubscribe
from messages, ``click`` (a tracked redirect, the target in ``extra``), and ``notices``
(a customer's in-app notices, minted by the operator's backend for its logged-in user)."""

MIN_SECRET_LENGTH = 32

_SALT_PREFIX = "recobra.link.v1."
_NONCE_BYTES = 9  # 72 random bits, 12 characters
# Optional "." (compressed payload), base64url payload, ".", base64url signature.
_TOKEN_SHAPE = re.compile(r"\.?[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class _HmacSha256_128(HMACAlgorithm):
    """HMAC-SHA256 truncated to its first 16 bytes (RFC 2104 section 5, NIST SP 800-107:
    128 bits is ample for a MAC) to keep links short."""

    def __init__(self) -> None:
        super().__init__(hashlib.sha256)

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return super().get_signature(key, value)[:16]


class LinkError(ValueError):
    """A link that must not be honoured. Subclasses say why."""


class LinkExpired(LinkError):
    """Genuine, but past its expiry. ``link`` is the verified content, so the caller
    can offer to send a fresh link to ``link.subject``."""

    def __init__(self, message: str, link: SignedLink) -> None:
        super().__init__(message)
        self.link = link


class LinkTampered(LinkError):
    """Not a token this signer made: altered, truncated, signed with another secret,
    or not a token at all."""


class LinkWrongPurpose(LinkError):
    """Genuine, but made for another purpose (or the purpose is unknown)."""

    def __init__(self, message: str, actual: str | None = None) -> None:
        super().__init__(message)
        self.actual = actual


@dataclass(frozen=True, slots=True)
class SignedLink:
    """The verified content of a link."""

    purpose: str
    subject: str
    """Who or what the link acts on (a subscription, customer or case id)."""
    issued_at: datetime
    """When it was made (UTC, whole seconds)."""
    expires_at: datetime
    """First instant at which it is no longer valid (UTC, whole seconds)."""
    extra: Mapping[str, str]
    """Small signed values the page needs (read-only)."""
    nonce: str
    """Random per link: lets the caller detect a reused link."""


def _epoch(moment: datetime, name: str) -> int:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment!r}")
    return int(moment.timestamp())


class LinkSigner:
    """Makes and verifies links for one deployment.

    ``secret`` (at least 32 characters) signs new links; ``previous_secrets`` still
    verify, so the secret can be rotated without breaking links already sent.
    """

    def __init__(self, secret: str, base_url: str, *, previous_secrets: Iterable[str] = ()) -> None:
        old = tuple(previous_secrets)
        for key in (secret, *old):
            if not isinstance(key, str) or len(key) < MIN_SECRET_LENGTH:
                raise ValueError(f"link secret must be a string of at least {MIN_SECRET_LENGTH} characters")
        base = base_url.strip().rstrip("/")
        if not base.startswith(("https://", "http://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base
        # itsdangerous signs with the last key and verifies with any.
        keys = [*old, secret]
        self._serializers = {
            purpose: URLSafeSerializer(
                keys,
                salt=_SALT_PREFIX + purpose,
                signer_kwargs={
                    "digest_method": hashlib.sha256,
                    "key_derivation": "hmac",
                    "algorithm": _HmacSha256_128(),
                },
            )
            for purpose in PURPOSES
        }

    def __repr__(self) -> str:
        return f"LinkSigner(base_url={self.base_url!r})"

    def token(
        self,
        purpose: str,
        subject: str,
        *,
        now: datetime,
        ttl: timedelta,
        extra: Mapping[str, str] | None = None,
    ) -> str:
        """Just the token of a new link (see :meth:`make`)."""
        serializer = self._serializers.get(purpose)
        if serializer is None:
            raise ValueError(f"unknown link purpose {purpose!r}; expected one of {sorted(PURPOSES)}")
        if not isinstance(subject, str) or not subject:
            raise ValueError("link subject must be a non-empty string")
        seconds = ttl.total_seconds()
        if seconds < 1:
            raise ValueError(f"link ttl must be at least one second, got {ttl}")
        issued = _epoch(now, "now")
        payload: list[Any] = [subject, issued, issued + int(seconds), secrets.token_urlsafe(_NONCE_BYTES)]
        if extra:
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
                raise ValueError("link extra must map strings to strings")
            payload.append(dict(extra))
        return serializer.dumps(payload)

    def make(
        self,
        purpose: str,
        subject: str,
        *,
        now: datetime,
        ttl: timedelta,
        extra: Mapping[str, str] | None = None,
    ) -> str:
        """A new link ``{base_url}/p/{purpose}/{token}``, valid from ``now`` for ``ttl``.

        Raises ValueError for an unknown purpose, an empty subject, a naive ``now``,
        a ttl under one second, or non-string ``extra`` values.
        """
        return self.url(purpose, self.token(purpose, subject, now=now, ttl=ttl, extra=extra))

    def url(self, purpose: str, token: str) -> str:
        """The link for a token."""
        return f"{self.base_url}/p/{purpose}/{token}"

    def verify(self, purpose: str, token: str, *, now: datetime) -> SignedLink:
        """The link's content if ``token`` is genuine, made for ``purpose`` and not
        expired at ``now``; otherwise :class:`LinkTampered`, :class:`LinkWrongPurpose`
        or :class:`LinkExpired` (checked in that order: nothing is said about an
        unverified token)."""
        at = _epoch(now, "now")
        serializer = self._serializers.get(purpose)
        if serializer is None:
            raise LinkWrongPurpose(f"unknown link purpose {purpose!r}")
        if not isinstance(token, str) or not _TOKEN_SHAPE.fullmatch(token) or not _canonical(token):
            raise LinkTampered("the link is damaged or was not made by us")
        try:
            payload = serializer.loads(token)
        except BadData:
            actual = self._other_purpose(purpose, token)
            if actual is not None:
                raise LinkWrongPurpose(
                    f"this link is for {actual!r}, not {purpose!r}", actual=actual
                ) from None
            raise LinkTampered("the link is damaged or was not made by us") from None
        link = _parse(purpose, payload)
        if at >= _epoch(link.expires_at, "expires_at"):
            raise LinkExpired(f"the link expired at {link.expires_at.isoformat()}", link)
        return link

    def _other_purpose(self, purpose: str, token: str) -> str | None:
        for other, serializer in self._serializers.items():
            if other == purpose:
                continue
            try:
                serializer.loads(token)
            except BadData:
                continue
            return other
        return None


def _canonical(token: str) -> bool:
    """Whether the signature is spelled the one way we spell it. Base64 decoding
    ignores the unused low bits of the last character, so without this check a
    token with a different last character would still verify."""
    signature = token.rsplit(".", 1)[1]
    try:
        return base64_encode(base64_decode(signature)).decode("ascii") == signature
    except (BadData, ValueError):
        return False


def _parse(purpose: str, payload: object) -> SignedLink:
    # Only our own (signed) payloads get here; the checks guard against format changes.
    if not isinstance(payload, list) or len(payload) not in (4, 5):
        raise LinkTampered("the link's content is not understood")
    subject, issued, expires, nonce, *rest = payload
    extra: object = rest[0] if rest else {}
    if not (
        isinstance(subject, str)
        and isinstance(issued, int)
        and isinstance(expires, int)
        and isinstance(nonce, str)
        and isinstance(extra, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items())
    ):
        raise LinkTampered("the link's content is not understood")
    return SignedLink(
        purpose=purpose,
        subject=subject,
        issued_at=datetime.fromtimestamp(issued, UTC),
        expires_at=datetime.fromtimestamp(expires, UTC),
        extra=MappingProxyType(dict(extra)),
        nonce=nonce,
    )
