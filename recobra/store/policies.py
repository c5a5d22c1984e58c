"""Policy versions: every policy file the service has been given, kept whole.

A version is a number (1, 2, 3, ...), the TOML source, its SHA-256, a comment, who
stored it and when, and when it was last activated. The active version is the one
with the latest ``activated_at`` (ties, which activation itself never creates, go to
the higher version). Activating stamps a time strictly after every other
activation, so a server whose clock lags behind another's still takes effect.

Nothing here parses policies: recobra.policyversions validates before storing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Row, Table, func, insert, select, text, update

from recobra.store.tables import PolicyVersionRow

MAX_CREATED_BY = 128
ACTIVATION_STEP = timedelta(microseconds=1)

_t = cast(Table, PolicyVersionRow.__table__)


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """One stored policy version."""

    version: int
    source: str
    sha256: str
    comment: str
    created_at: datetime
    created_by: str
    activated_at: datetime | None
    active: bool


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A validated policy file to store."""

    source: str
    sha256: str
    comment: str
    created_by: str


_ACTIVE = (
    select(_t.c.version, _t.c.activated_at)
    .where(_t.c.activated_at.is_not(None))
    .order_by(_t.c.activated_at.desc(), _t.c.version.desc())
    .limit(1)
)


def _active_version(conn: Connection) -> int | None:
    row = conn.execute(_ACTIVE).first()
    return None if row is None else int(row.version)


def active_marker(engine: Engine) -> tuple[int, datetime] | None:
    """(version, activated_at) of the active version, or None: one indexed read,
    cheap enough for every batch of work."""
    with engine.connect() as conn:
        row = conn.execute(_ACTIVE).first()
    return None if row is None else (int(row.version), row.activated_at)


def _from_row(row: Row[Any], active: int | None) -> PolicyVersion:
    return PolicyVersion(
        version=row.version,
        source=row.source,
        sha256=row.sha256,
        comment=row.comment,
        created_at=row.created_at,
        created_by=row.created_by,
        activated_at=row.activated_at,
        active=row.version == active,
    )


def get_version(engine: Engine, version: int) -> PolicyVersion | None:
    with engine.connect() as conn:
        row = conn.execute(select(_t).where(_t.c.version == version)).first()
        return None if row is None else _from_row(row, _active_version(conn))


def active_version(engine: Engine) -> PolicyVersion | None:
    with engine.connect() as conn:
        active = _active_version(conn)
        if active is None:
            return None
        row = conn.execute(select(_t).where(_t.c.version == active)).one()
        return _from_row(row, active)


def list_versions(engine: Engine, *, limit: int, before: int | None = None) -> list[PolicyVersion]:
    """Up to ``limit`` versions, newest first, below ``before`` when given."""
    stmt = select(_t)
    if before is not None:
        stmt = stmt.where(_t.c.version < before)
    stmt = stmt.order_by(_t.c.version.desc()).limit(limit)
    with engine.connect() as conn:
        active = _active_version(conn)
        return [_from_row(r, active) for r in conn.execute(stmt)]


@contextmanager
def _writing(engine: Engine) -> Iterator[Connection]:
    """One transaction that alone writes policy versions until it ends (SQLite takes
    the write lock at BEGIN; PostgreSQL locks the table against other writers, not
    readers), so two stores at once never pick the same number."""
    with engine.connect().execution_options(recobra_write=True) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("LOCK TABLE policy_versions IN SHARE ROW EXCLUSIVE MODE"))
        yield conn


def _activate(conn: Connection, version: int, now: datetime) -> None:
    latest = conn.scalar(select(func.max(_t.c.activated_at)))
    at = now if latest is None or now > latest else latest + ACTIVATION_STEP
    conn.execute(update(_t).where(_t.c.version == version).values(activated_at=at))


def store_version(
    engine: Engine,
    new: NewVersion,
    now: datetime,
    *,
    activate: bool,
    first: tuple[int, NewVersion] | None = None,
) -> tuple[PolicyVersion, bool]:
    """Store ``new`` as the next version (or find the stored version with the same
    source), activating it when asked; returns it and whether it was stored now.

    When nothing has been stored yet, ``first`` (number, file) is recorded first as
    the active version: the policy that was in force until then, so the history
    starts with what ran. All in one transaction.
    """
    with _writing(engine) as conn:
        if first is not None and conn.scalar(select(func.count()).select_from(_t)) == 0:
            number, file = first
            conn.execute(insert(_t).values(**_values(file), version=number, created_at=now, activated_at=now))
        existing = conn.scalar(
            select(_t.c.version).where(_t.c.sha256 == new.sha256).order_by(_t.c.version.desc()).limit(1)
        )
        created = existing is None
        if existing is None:
            version = int(conn.scalar(select(func.coalesce(func.max(_t.c.version), 0))) or 0) + 1
            conn.execute(insert(_t).values(**_values(new), version=version, created_at=now))
        else:
            version = int(existing)
        if activate and _active_version(conn) != version:
            _activate(conn, version, now)
        active = _active_version(conn)
        row = conn.execute(select(_t).where(_t.c.version == version)).one()
        return _from_row(row, active), created


def activate_version(engine: Engine, version: int, now: datetime) -> PolicyVersion | None:
    """Make ``version`` the active one (no change when it already is); None if unknown."""
    with _writing(engine) as conn:
        if conn.scalar(select(_t.c.version).where(_t.c.version == version)) is None:
            return None
        if _active_version(conn) != version:
            _activate(conn, version, now)
        row = conn.execute(select(_t).where(_t.c.version == version)).one()
        return _from_row(row, version)


def _values(new: NewVersion) -> dict[str, str]:
    return {
        "source": new.source,
        "sha256": new.sha256,
        "comment": new.comment,
        "created_by": new.created_by[:MAX_CREATED_BY],
    }
