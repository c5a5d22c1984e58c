"""API keys for operators' systems: ``Authorization: Bearer rk_live_<random>``.

A key is 32 random bytes (``secrets.token_urlsafe(32)``, 43 characters) behind the
``rk_live_`` marker. It is shown once, when created; the database keeps only its
SHA-256 hash, plus the first characters of the random part (``prefix``) so that a
key can be found without scanning and told apart in listings.

Why a plain SHA-256 and not a slow password hash (bcrypt, scrypt, argon2): a slow
hash protects *low-entropy* secrets that people choose, whose hashes could otherwise
be reversed by guessing. A 256-bit random key cannot be guessed, however fast the
hash; and every API request verifies a key, so a deliberately slow hash would only
cost CPU time on each call (and hand attackers a cheap way to load the server).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, or_, select, update

from recobra.store.tables import ApiKeyRow

KEY_MARKER = "rk_live_"
"""Every key starts with this: secret scanners and people recognise it."""
PREFIX_LENGTH = 8
"""Characters of the random part kept in clear, to find a key and to show it."""
RANDOM_BYTES = 32
MAX_NAME = 200
MAX_KEY_LENGTH = 200
"""Longer presented keys are rejected without hashing them."""
LAST_USED_EVERY = timedelta(minutes=1)
"""``last_used_at`` is written at most this often per key (not on every request)."""
VERIFIED_FOR_S = 2.0
"""How long a server process trusts a key it has verified before it looks again: a
revoked key is refused at most this many seconds after ``revoke_key``."""
MAX_REMEMBERED = 1024


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What is known of a key; never the key itself."""

    id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def display(self) -> str:
        """How the key starts, e.g. ``rk_live_AbCd1234...``."""
        return f"{KEY_MARKER}{self.prefix}..."


def hash_key(plaintext: str) -> str:
    """Hex SHA-256 of a presented key."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def _prefix(plaintext: str) -> str | None:
    """The random part's first characters, or None for anything not shaped like a key."""
    if not plaintext.startswith(KEY_MARKER) or len(plaintext) > MAX_KEY_LENGTH:
        return None
    prefix = plaintext[len(KEY_MARKER) : len(KEY_MARKER) + PREFIX_LENGTH]
    return prefix if len(prefix) == PREFIX_LENGTH else None


_COLUMNS = (
    ApiKeyRow.id,
    ApiKeyRow.name,
    ApiKeyRow.prefix,
    ApiKeyRow.created_at,
    ApiKeyRow.revoked_at,
    ApiKeyRow.last_used_at,
)


def _row(r: Any) -> ApiKey:
    return ApiKey(r.id, r.name, r.prefix, r.created_at, r.revoked_at, r.last_used_at)


def create_key(engine: Engine, name: str, now: datetime) -> tuple[str, str]:
    """A new key named ``name``: returns ``(key_id, plaintext)``. The plaintext exists
    only in the return value: show it once and forget it."""
    name = name.strip()
    if not name:
        raise ValueError("name: give the key a name (what system uses it)")
    if len(name) > MAX_NAME:
        raise ValueError(f"name: at most {MAX_NAME} characters")
    plaintext = KEY_MARKER + secrets.token_urlsafe(RANDOM_BYTES)
    key_id = "key_" + secrets.token_hex(8)
    prefix = _prefix(plaintext)
    assert prefix is not None
    with engine.connect().execution_options(recobra_write=True) as conn, conn.begin():
        conn.execute(
            insert(ApiKeyRow).values(
                id=key_id,
                name=name,
                prefix=prefix,
                key_hash=hash_key(plaintext),
                created_at=now,
                revoked_at=None,
                last_used_at=None,
            )
        )
    return key_id, plaintext


def get_key(engine: Engine, key_id: str) -> ApiKey | None:
    with engine.connect() as conn:
        row = conn.execute(select(*_COLUMNS).where(ApiKeyRow.id == key_id)).first()
    return None if row is None else _row(row)


def revoke_key(engine: Engine, key_id: str, now: datetime) -> ApiKey:
    """Revoke a key at once; revoking a revoked key changes nothing. Raises
    ``LookupError`` for an unknown id. Returns the key as it now is."""
    with engine.connect().execution_options(recobra_write=True) as conn, conn.begin():
        conn.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    key = get_key(engine, key_id)
    if key is None:
        raise LookupError(f"no API key {key_id!r}")
    return key


def list_keys(engine: Engine) -> list[ApiKey]:
    """Every key, oldest first (revoked ones too)."""
    stmt = select(*_COLUMNS).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(stmt)]


def verify_key(engine: Engine, plaintext: str, now: datetime) -> str | None:
    """The id of the active key ``plaintext`` is, or None (unknown, malformed or revoked).

    Hashes are compared in constant time. ``last_used_at`` is brought up to ``now``
    when it is older than a minute, so a busy key is not written on every request.
    """
    prefix = _prefix(plaintext)
    if prefix is None:
        return None
    presented = hash_key(plaintext)
    k = ApiKeyRow
    stmt = select(k.id, k.key_hash, k.revoked_at, k.last_used_at).where(k.prefix == prefix)
    with engine.connect() as conn:
        candidates = conn.execute(stmt).all()
    match = None
    for row in candidates:
        if hmac.compare_digest(row.key_hash.encode("ascii"), presented.encode("ascii")):
            match = row
    if match is None or match.revoked_at is not None:
        return None
    if match.last_used_at is None or now - match.last_used_at >= LAST_USED_EVERY:
        with engine.connect().execution_options(recobra_write=True) as conn, conn.begin():
            conn.execute(
                update(k)
                .where(
                    k.id == match.id,
                    or_(k.last_used_at.is_(None), k.last_used_at <= now - LAST_USED_EVERY),
                )
                .values(last_used_at=now)
            )
    key_id: str = match.id
    return key_id


@dataclass(slots=True)
class VerifiedKeys:
    """Keys a server process verified a moment ago, so that a busy client's requests
    do not each cost a database lookup. Only successes are remembered, for
    ``seconds`` (``VERIFIED_FOR_S``): a revoked key is refused within that delay, a new
    key works at once, and a wrong key is looked up every time. Entries are keyed by
    the SHA-256 of the presented key, never the key itself. Thread-safe."""

    seconds: float = VERIFIED_FOR_S
    timer: Callable[[], float] = time.monotonic
    _known: dict[str, tuple[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, plaintext: str) -> str | None:
        """The key's id if it was verified less than ``seconds`` ago, else None."""
        if self.seconds <= 0 or len(plaintext) > MAX_KEY_LENGTH:
            return None
        digest = hash_key(plaintext)
        with self._lock:
            entry = self._known.get(digest)
            if entry is None:
                return None
            if self.timer() >= entry[1]:
                del self._known[digest]
                return None
            return entry[0]

    def remember(self, plaintext: str, key_id: str) -> None:
        """``plaintext`` was just verified as the active key ``key_id``."""
        if self.seconds <= 0:
            return
        with self._lock:
            if len(self._known) >= MAX_REMEMBERED:
                self._known.clear()
            self._known[hash_key(plaintext)] = (key_id, self.timer() + self.seconds)

    def forget(self) -> None:
        with self._lock:
            self._known.clear()


__all__ = [
    "KEY_MARKER",
    "VERIFIED_FOR_S",
    "ApiKey",
    "VerifiedKeys",
    "create_key",
    "get_key",
    "hash_key",
    "list_keys",
    "revoke_key",
    "verify_key",
]
