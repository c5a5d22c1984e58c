"""The benchmarks' database: the one given, reset to a fresh Recobra schema, or a
temporary SQLite file that is removed afterwards."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from recobra.store.migrate import upgrade
from recobra.store.sql import make_engine
from recobra.store.tables import Base


@contextmanager
def fresh_database(url: str | None) -> Iterator[str]:
    """Yields a database URL with an empty, migrated schema. A given database has its
    Recobra tables dropped first: give the benchmarks one of their own."""
    with tempfile.TemporaryDirectory(prefix="recobra-bench-") as tmp:
        url = url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = make_engine(url)
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        upgrade(engine)
        engine.dispose()
        yield url
