"""People who sign in to the dashboard: email and an argon2id password hash.

Passwords are hashed with argon2-cffi's ``PasswordHasher`` (argon2id, its default
parameters, RFC 9106's recommendation for memory-hard hashing). Unlike API keys,
passwords are chosen by people and can be guessed, so a deliberately slow hash is
the point here. A hash made with older parameters is replaced at the next sign-in.

Sign-in answers the same way for an unknown email, a wrong password and a disabled
user, and spends the same time on each (an unknown email is checked against a dummy
hash), so the form tells nobody which emails exist.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from recobra.store.tables import AdminUserRow

MIN_PASSWORD = 12
"""Characters. Length is what makes a password hard to guess (NIST SP 800-63B)."""
MAX_PASSWORD = 1024
"""Longer inputs are refused before hashing (hashing cost grows with length)."""
MAX_EMAIL = 320
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass(frozen=True, slots=True)
class AdminUser:
    """What is known of a dashboard user; never the password or its hash."""

    id: str
    email: str
    created_at: datetime
    disabled_at: datetime | None
    last_login_at: datetime | None

    @property
    def active(self) -> bool:
        return self.disabled_at is None


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@cache
def _dummy_hash() -> str:
    return _hasher().hash(secrets.token_urlsafe(16))


def normalise_email(email: str) -> str:
    """Trimmed and lower-cased; ``ValueError`` naming ``email`` when it is not one."""
    value = email.strip().lower()
    if not value or len(value) > MAX_EMAIL or not _EMAIL.fullmatch(value):
        raise ValueError("email: not an email address")
    return value


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"password: at most {MAX_PASSWORD} characters")


_COLUMNS = (
    AdminUserRow.id,
    AdminUserRow.email,
    AdminUserRow.created_at,
    AdminUserRow.disabled_at,
    AdminUserRow.last_login_at,
)


def _row(r: Any) -> AdminUser:
    return AdminUser(r.id, r.email, r.created_at, r.disabled_at, r.last_login_at)


def create_admin(engine: Engine, email: str, password: str, now: datetime) -> AdminUser:
    """A new user; ``ValueError`` naming the field for a bad email or password, or an
    email already taken."""
    address = normalise_email(email)
    check_password(password)
    user_id = "adm_" + secrets.token_hex(8)
    try:
        with engine.connect().execution_options(recobra_write=True) as conn, conn.begin():
            conn.execute(
                insert(AdminUserRow).values(
                    id=user_id,
                    email=address,
                    password_hash=_hasher().hash(password),
                    created_at=now,
                    disabled_at=None,
                    last_login_at=None,
                )
            )
    except IntegrityError:
        raise ValueError(f"email: there is already a user {address}") from None
    return AdminUser(user_id, address, now, None, None)


def get_admin(engine: Engine, user_id: str) -> AdminUser | None:
    with engine.connect() as conn:
        row = conn.execute(select(*_COLUMNS).where(AdminUserRow.id == user_id)).first()
    return None if row is None else _row(row)


def find_admin(engine: Engine, email: str) -> AdminUser | None:
    try:
        address = normalise_email(email)
    except ValueError:
        return None
    with engine.connect() as conn:
        row = conn.execute(select(*_COLUMNS).where(AdminUserRow.email == address)).first()
    return None if row is None else _row(row)


def list_admins(engine: Engine) -> list[AdminUser]:
    """Every user, oldest first (disabled ones too)."""
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(select(*_COLUMNS).order_by(AdminUserRow.created_at))]


def disable_admin(engine: Engine, email: str, now: datetime) -> AdminUser:
    """Disable a user at once (sign-in refused, open sessions end). Disabling a
    disabled user changes nothing. ``LookupError`` for an unknown email."""
    user = find_admin(engine, email)
    if user is None:
        raise LookupError(f"no user {email.strip()!r}")
    with engine.connect().execution_options(recobra_write=True) as conn, conn.begin():
        conn.execute(
            update(AdminUserRow)
            .where(AdminUserRow.id == user.id, AdminUserRow.disabled_at.is_(None))
            .values(disabled_at=now)
        )
    after = get_admin(engine, user.id)
    assert after is not None
    return after


def authenticate(engine: Engine, email: str, password: str, now: datetime) -> AdminUser | None:
    """The active user with this email and password, or None. Records the sign-in."""
    if len(password) > MAX_PASSWORD:
        return None
    try:
        address = normalise_email(email)
    except ValueError:
        address = ""
    with engine.connect() as conn:
        row = conn.execute(
            select(*_COLUMNS, AdminUserRow.password_hash).where(AdminUserRow.email == address)
        ).first()
    hasher = _hasher()
    try:
        hasher.verify(row.password_hash if row is not None else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or row.disabled_at is not None:
        return None
    values: dict[str, Any] = {"last_login_at": now}
    if hasher.check_needs_rehash(row.password_hash):
        values["password_hash"] = hasher.hash(password)
    with engine.connect().execution_options(recobra_write=True) as conn, conn.begin():
        conn.execute(update(AdminUserRow).where(AdminUserRow.id == row.id).values(**values))
    return AdminUser(row.id, row.email, row.created_at, row.disabled_at, now)


__all__ = [
    "MIN_PASSWORD",
    "AdminUser",
    "authenticate",
    "create_admin",
    "disable_admin",
    "find_admin",
    "get_admin",
    "list_admins",
    "normalise_email",
]
