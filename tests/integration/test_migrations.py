"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, Table, inspect, text

from recobra.store.migrate import current_revision, head_revision, upgrade
from recobra.store.sql import make_engine
from recobra.store.tables import Base


def _schema(engine: Engine) -> dict[str, Any]:
    """Tables with their columns, indexes, unique constraints and foreign keys."""
    insp = inspect(engine)
    return {
        name: {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(name)],
            "indexes": sorted((i["name"] or "", tuple(i["column_names"])) for i in insp.get_indexes(name)),
            "unique": sorted(
                (u["name"] or "", tuple(u["column_names"])) for u in insp.get_unique_constraints(name)
            ),
            "fks": sorted((f["name"] or "", f["referred_table"]) for f in insp.get_foreign_keys(name)),
        }
        for name in sorted(insp.get_table_names())
    }


def test_upgrade_on_an_empty_database_creates_every_table(empty_database_url: str):
    engine = make_engine(empty_database_url)
    try:
        assert set(inspect(engine).get_table_names()).isdisjoint(Base.metadata.tables)
        assert current_revision(engine) is None

        revision = upgrade(engine)

        assert revision == head_revision()
        assert current_revision(engine) == head_revision()
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        assert tables - set(Base.metadata.tables) == {"alembic_version"}
        insp = inspect(engine)
        for table in Base.metadata.sorted_tables:
            assert {c["name"] for c in insp.get_columns(table.name)} == set(table.columns.keys())
    finally:
        engine.dispose()


def test_upgrade_twice_is_a_no_op(empty_database_url: str):
    engine = make_engine(empty_database_url)
    try:
        first = upgrade(engine)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO processed_events (event_id, kind, occurred_at) "
                    "VALUES ('evt_keep', 'PaymentFailed', '2025-03-03 12:00:00')"
                )
            )
        before = _schema(engine)

        second = upgrade(engine)

        assert second == first == head_revision()
        assert _schema(engine) == before
        with engine.connect() as conn:
            assert conn.execute(text("SELECT event_id FROM processed_events")).scalars().all() == ["evt_keep"]
            assert conn.execute(text("SELECT COUNT(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()


def test_migrations_and_models_agree(empty_database_url: str):
    engine = make_engine(empty_database_url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True, "render_as_batch": True}
            )
            diff = compare_metadata(context, Base.metadata)
            # The comparison is not vacuous: a table the migrations lack is reported.
            extra = MetaData(naming_convention=Base.metadata.naming_convention)
            for table in Base.metadata.tables.values():
                table.to_metadata(extra)
            Table("ghost", extra, Column("id", Integer, primary_key=True))
            assert [d[0] for d in compare_metadata(context, extra)] == ["add_table"]
    finally:
        engine.dispose()

    assert diff == []
