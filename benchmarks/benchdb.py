"""The benchmarks' database: the one given, reset to a fresh Recobra schema, or a
temporary SQLite file that is removed afterwards."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import make_url, text
from sqlalchemy.exc import OperationalError

from recobra.store.migrate import upgrade
from recobra.store.sql import make_engine
from recobra.store.tables import Base


@contextmanager
def fresh_database(url: str | None) -> Iterator[str]:
    """Yields a database URL with an empty, migrated schema. A given database has its
    Recobra tables dropped first: give the benchmarks one of their own."""
    with tempfile.TemporaryDirectory(prefix="recobra-bench-") as tmp:
        url = url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        _create_if_missing(url)
        engine = make_engine(url)
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        upgrade(engine)
        if engine.dialect.name == "postgresql":
            # Dropping and creating the tables leaves dead rows in PostgreSQL's own
            # catalogs, which every new connection reads; without autovacuum (as on
            # the benchmark machine) they pile up run after run (60,000 in
            # pg_attribute after a day's runs) and slow the runs that follow. Only
            # the catalogs: a VACUUM of the new, empty tables would record them as
            # empty, and the foreign-key checks' plans would then scan them for good.
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(f"VACUUM {_CATALOGS}"))
        engine.dispose()
        yield url


_CATALOGS = ", ".join(
    f"pg_catalog.{name}"
    for name in (
        *("pg_class", "pg_attribute", "pg_attrdef", "pg_type"),
        *("pg_depend", "pg_index", "pg_constraint"),
    )
)
"""The catalogs that creating and dropping tables, indexes and constraints write to."""


def _create_if_missing(url: str) -> None:
    """Create a PostgreSQL database that does not exist yet (through the server's
    ``postgres`` database), so a new machine needs no manual step."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return
    probe = make_engine(url)
    try:
        with probe.connect():
            return
    except OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    finally:
        probe.dispose()
    admin = make_engine(parsed.set(database="postgres").render_as_string(hide_password=False))
    try:
        with admin.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text(f'CREATE DATABASE "{parsed.database}"')
            )
    finally:
        admin.dispose()
