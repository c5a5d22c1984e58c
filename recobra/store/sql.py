"""SQLAlchemy implementation of the store port, for SQLite and PostgreSQL.

Statements are SQLAlchemy Core on the mapped tables, in batches (``executemany``),
because a tick acts on hundreds of cases at once. Rows are translated to domain
objects here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    Row,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from recobra.domain.case import CaseEvent, CaseStatus, DunningCase, FinalAction, NextAction
from recobra.domain.declines import Decline, DeclineCategory, classify
from recobra.domain.leaving import ChangeKind, Standing, SubscriptionChange
from recobra.domain.messages import (
    TRANSACTIONAL,
    ChannelKind,
    MessageKind,
    MessageStatus,
    OutboxEntry,
    Reachability,
)
from recobra.domain.model import (
    Attempt,
    AttemptStatus,
    AttemptTrigger,
    Customer,
    Funding,
    Interval,
    Invoice,
    InvoiceStatus,
    PaymentMethod,
    Plan,
    Subscription,
    SubscriptionStatus,
)
from recobra.domain.money import Money
from recobra.domain.network import PriorAttempt
from recobra.ports import CaseBundle, ConcurrentUpdate, MessageBundle, MessageUpdate, RelayedEvent
from recobra.store.tables import (
    AttemptRow,
    CaseEventRow,
    CaseRow,
    ContactPreferenceRow,
    CustomerRow,
    ExitSurveyRow,
    InvoiceRow,
    MessageRow,
    PaymentMethodRow,
    PlanRow,
    ProcessedEventRow,
    PushSubscriptionRow,
    RelayCursorRow,
    SubscriptionEventRow,
    SubscriptionRow,
    UsedLinkRow,
)

CARD_HISTORY = timedelta(days=30)
ACTIVE = [CaseStatus.OPEN.value, CaseStatus.EXHAUSTED.value]

_STATEMENTS: dict[tuple[Any, ...], Any] = {}

cases_t = CaseRow.__table__
attempts_t = AttemptRow.__table__
events_t = CaseEventRow.__table__
customers_t = CustomerRow.__table__
methods_t = PaymentMethodRow.__table__

# Hot statements are built once, with expanding IN parameters, so executing them
# skips SQLAlchemy's construction and cache-key work (a tick runs each of them).
_ids = bindparam("ids", expanding=True)
_CASES_BY_ID = select(cases_t).where(cases_t.c.id.in_(_ids))
_CASES_BY_INVOICE = select(cases_t).where(cases_t.c.invoice_id.in_(_ids))
_CUSTOMERS_BY_ID = select(customers_t).where(customers_t.c.id.in_(_ids))
_METHODS_BY_ID = select(methods_t).where(methods_t.c.id.in_(_ids))
_OPEN_ATTEMPTS = select(attempts_t).where(
    attempts_t.c.case_id.in_(_ids),
    attempts_t.c.status.in_([AttemptStatus.PENDING.value, AttemptStatus.UNKNOWN.value]),
)
_CARD_HISTORY = select(
    attempts_t.c.payment_method_id,
    attempts_t.c.at,
    attempts_t.c.status,
    attempts_t.c.category,
    attempts_t.c.code,
    attempts_t.c.network_code,
    attempts_t.c.advice_code,
).where(
    attempts_t.c.payment_method_id.in_(_ids),
    attempts_t.c.at >= bindparam("since"),
    attempts_t.c.status != AttemptStatus.PENDING.value,
)
_INSERT_CASES = cases_t.insert()
_INSERT_EVENTS = events_t.insert()
_INSERT_ATTEMPTS = attempts_t.insert()
_FINISH_ATTEMPTS = (
    update(attempts_t)
    .where(attempts_t.c.idempotency_key == bindparam("k_key"))
    .values(
        status=bindparam("v_status"),
        at=bindparam("v_at"),
        category=bindparam("v_category"),
        code=bindparam("v_code"),
        network_code=bindparam("v_network_code"),
        advice_code=bindparam("v_advice_code"),
        gateway_reference=bindparam("v_gateway_reference"),
    )
)
_CASE_COLUMNS = (
    "status",
    "closed_at",
    "payment_method_id",
    "last_category",
    "last_code",
    "last_network_code",
    "last_advice_code",
    "last_attempt_at",
    "attempts",
    "budget_used",
    "errors_in_row",
    "next_action",
    "next_action_at",
    "next_action_reason",
    "final_action",
)
_SAVE_CASES = {
    release: update(cases_t)
    .where(cases_t.c.id == bindparam("k_id"), cases_t.c.version == bindparam("k_version"))
    .values(
        version=cases_t.c.version + 1,
        **{c: bindparam(f"v_{c}") for c in _CASE_COLUMNS},
        **({"claimed_by": None, "claim_expires_at": None} if release else {}),
    )
    for release in (False, True)
}
_NEXT_DUE = select(func.min(cases_t.c.next_action_at))
_LOCK_CASES = {
    pg: (
        select(cases_t.c.id, cases_t.c.version)
        .where(cases_t.c.id.in_(_ids))
        .order_by(cases_t.c.id)
        .with_for_update()
        if pg
        else select(cases_t.c.id, cases_t.c.version).where(cases_t.c.id.in_(_ids))
    )
    for pg in (False, True)
}
_ACTIVE_CASES_OF = {
    who: select(cases_t)
    .where(cases_t.c.status.in_(ACTIVE), getattr(cases_t.c, f"{who}_id") == bindparam("key"))
    .order_by(cases_t.c.opened_at)
    for who in ("customer", "subscription")
}
messages_t = MessageRow.__table__
prefs_t = ContactPreferenceRow.__table__
push_t = PushSubscriptionRow.__table__
_MESSAGES_BY_ID = select(messages_t).where(messages_t.c.id.in_(_ids))
_PREFS_BY_CUSTOMER = select(prefs_t).where(prefs_t.c.customer_id.in_(_ids))
_PUSH_BY_CUSTOMER = (
    select(push_t.c.customer_id, push_t.c.subscription)
    .where(push_t.c.customer_id.in_(_ids))
    .order_by(push_t.c.created_at)
)
_STEP_SIBLINGS = select(
    messages_t.c.case_id,
    messages_t.c.step,
    messages_t.c.channel,
    messages_t.c.status,
    messages_t.c.clicked_at,
).where(messages_t.c.case_id.in_(_ids))
_RECENT_SENDS = select(messages_t.c.customer_id, messages_t.c.sent_at).where(
    messages_t.c.customer_id.in_(_ids),
    messages_t.c.sent_at >= bindparam("since"),
    messages_t.c.kind.not_in([k.value for k in TRANSACTIONAL]),
)
_PLANS_BY_SUBSCRIPTION = (
    select(
        SubscriptionRow.__table__.c.id,
        SubscriptionRow.__table__.c.status,
        SubscriptionRow.__table__.c.renews_at,
        PlanRow.__table__.c.id.label("plan_id"),
        PlanRow.__table__.c.name,
    )
    .join(PlanRow.__table__, PlanRow.__table__.c.id == SubscriptionRow.__table__.c.plan_id)
    .where(SubscriptionRow.__table__.c.id.in_(_ids))
)
_DEFAULT_METHODS = select(methods_t).where(methods_t.c.customer_id.in_(_ids), methods_t.c.is_default)
_UPDATE_MESSAGES = {
    release: update(messages_t)
    .where(messages_t.c.id == bindparam("k_id"))
    .values(
        status=bindparam("v_status"),
        due_at=bindparam("v_due_at"),
        reason=bindparam("v_reason"),
        attempts=bindparam("v_attempts"),
        sent_at=func.coalesce(bindparam("v_sent_at"), messages_t.c.sent_at),
        provider_id=func.coalesce(bindparam("v_provider_id"), messages_t.c.provider_id),
        **({"claimed_by": None, "claim_expires_at": None} if release else {}),
    )
    for release in (False, True)
}
# Only scheduled messages have a due time, so MIN reads the first entry of its index.
_NEXT_MESSAGE_DUE = select(func.min(messages_t.c.due_at))
cursors_t = RelayCursorRow.__table__
used_t = UsedLinkRow.__table__
_EVENTS_AFTER = (
    select(
        events_t,
        cases_t.c.customer_id,
        cases_t.c.invoice_id,
        cases_t.c.amount_minor,
        cases_t.c.currency,
    )
    .join(cases_t, cases_t.c.id == events_t.c.case_id)
    .where(events_t.c.id > bindparam("after"))
    .order_by(events_t.c.id)
    .limit(bindparam("limit"))
)
_KNOWN_CUSTOMERS = select(customers_t.c.id).where(customers_t.c.id.in_(_ids))
_UNSET_OTHER_DEFAULTS = (
    update(methods_t)
    .where(
        methods_t.c.customer_id.in_(bindparam("customers", expanding=True)),
        methods_t.c.id.not_in(bindparam("ids", expanding=True)),
        methods_t.c.is_default,
    )
    .values(is_default=False)
)
# The same on PostgreSQL, one statement per new default card (sent together with the
# unit of work's other writes): an equality on the indexed customer_id is looked up
# through the index whatever the table's statistics say; with a list of customers
# (IN, = ANY) the planner scanned the whole table while its statistics lagged.
_UNSET_OTHER_DEFAULT_PG = (
    "UPDATE payment_methods SET is_default = false"
    " WHERE customer_id = %(customer_id)s AND is_default AND id <> %(id)s"
)
# A case per invoice: each invoice looked up through the index (the OFFSET 0 keeps the
# planner from turning the lookups into a join that may scan the table).
_CASES_BY_INVOICE_PG = (
    "SELECT c.* FROM unnest(%(ids)s::text[]) AS k(invoice_id),"
    " LATERAL (SELECT * FROM cases WHERE cases.invoice_id = k.invoice_id OFFSET 0) AS c"
)
_invoices_t = InvoiceRow.__table__
_SET_INVOICE_STATUS = (
    update(_invoices_t)
    .where(_invoices_t.c.id == bindparam("k_id"))
    .values(
        status=bindparam("v_status"), paid_at=func.coalesce(bindparam("v_paid_at"), _invoices_t.c.paid_at)
    )
)
_subscriptions_t = SubscriptionRow.__table__
_SET_SUBSCRIPTION_STATUS = (
    update(_subscriptions_t)
    .where(_subscriptions_t.c.id == bindparam("k_id"))
    .values(status=bindparam("v_status"))
)


def _claim_update(table: Any, dialect: str, *where: Any, order_by: Any = None) -> Any:
    """UPDATE ... RETURNING that claims up to :limit rows matching ``where`` whose claim
    is free or expired, for :worker until :expires. On PostgreSQL the rows are picked
    with FOR UPDATE SKIP LOCKED, so several workers never wait on or share a row."""
    now = bindparam("now")
    free = or_(table.c.claim_expires_at.is_(None), table.c.claim_expires_at < now)
    due = select(table.c.id).where(free, *where)
    if order_by is not None:
        due = due.order_by(order_by)
    due = due.limit(bindparam("limit"))
    if dialect == "postgresql":
        due = due.with_for_update(skip_locked=True)
    return (
        update(table)
        .where(and_(table.c.id.in_(due.scalar_subquery()), free))
        .values(claimed_by=bindparam("worker"), claim_expires_at=bindparam("expires"))
        .returning(table.c.id)
    )


def _claim_messages_statement(dialect: str) -> Any:
    key = ("claim-messages", dialect)
    if key not in _STATEMENTS:
        # due_at is set only on scheduled messages: its index finds them in order.
        due = messages_t.c.due_at
        _STATEMENTS[key] = _claim_update(messages_t, dialect, due <= bindparam("now"), order_by=due)
    return _STATEMENTS[key]


def _entry_from_row(r: Row[Any]) -> OutboxEntry:
    data = r.data or {}
    after = data.get("fallback_after_s")
    return OutboxEntry(
        key=r.key,
        customer_id=r.customer_id,
        case_id=r.case_id,
        kind=MessageKind(r.kind),
        channel=ChannelKind(r.channel),
        step=r.step,
        due_at=r.due_at or r.created_at,
        fallback=tuple(ChannelKind(c) for c in data.get("fallback", ())),
        fallback_after=timedelta(seconds=after) if after is not None else None,
        only_if_unclicked=bool(data.get("only_if_unclicked", False)),
        is_fallback=bool(data.get("is_fallback", False)),
        context={str(k): str(v) for k, v in (data.get("context") or {}).items()},
    )


def _claim_statement(dialect: str, by_id: bool) -> Any:
    key = ("claim", dialect, by_id)
    if key not in _STATEMENTS:
        if by_id:
            ids = cases_t.c.id.in_(bindparam("ids", expanding=True))
            stmt = _claim_update(cases_t, dialect, ids, cases_t.c.status.in_(ACTIVE))
        else:
            due = cases_t.c.next_action_at
            stmt = _claim_update(cases_t, dialect, due <= bindparam("now"), order_by=due)
        _STATEMENTS[key] = stmt
    return _STATEMENTS[key]


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # One writer at a time: a unit of work takes the write lock at BEGIN, not at
            # its first write, so two processes never deadlock upgrading their locks.
            # Plain reads begin a deferred transaction and never block writers (WAL).
            immediate = conn.get_execution_options().get("recobra_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own is off).
        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    engine = create_engine(url, echo=echo, pool_pre_ping=True)

    @event.listens_for(engine, "before_cursor_execute")
    def _writes_before_reads(conn: Connection, *_args: Any) -> None:
        # A statement that may read what the unit of work wrote: send its writes first.
        if conn.info.get(_PENDING):
            _flush_writes(conn)

    return engine


_PENDING = "recobra_pending_writes"
"""Key, in a PostgreSQL connection's ``info``, of a unit of work's writes not sent yet
(``_send_write``): present while a unit of work runs on the connection."""


def _send_write(conn: Connection, sql: str, params: dict[str, Any]) -> None:
    """Run a write whose result nobody reads. In a unit of work on PostgreSQL it is kept
    and sent with the others in one pipeline (``_flush_writes``) just before the next
    statement or the commit: a transaction's writes then cost one round trip, not one
    each, and skip SQLAlchemy's per-statement work (its parameters are the driver's)."""
    pending = conn.info.get(_PENDING)
    if pending is None:
        conn.exec_driver_sql(sql, params)
    else:
        pending.append((sql, params))


def _flush_writes(conn: Connection) -> None:
    """Send the unit of work's pending writes in one psycopg pipeline, in order. An error
    (a deadlock, a constraint) is raised as SQLAlchemy raises it for any statement."""
    _pipeline(conn, None, {})


def _pg_read(conn: Connection, sql: str, params: dict[str, Any]) -> list[Any]:
    """PostgreSQL, in a unit of work: the unit of work's pending writes and then the
    query ``sql``, in one pipeline (one round trip); its rows, by column name."""
    return _pipeline(conn, sql, params)


def _pipeline(conn: Connection, query: str | None, params: dict[str, Any]) -> list[Any]:
    from psycopg.rows import namedtuple_row  # noqa: PLC0415 (PostgreSQL only)

    pending: list[tuple[str, dict[str, Any]]] = conn.info[_PENDING]
    batch = pending[:]
    pending.clear()
    raw: Any = conn.connection.driver_connection
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        with raw.pipeline():
            with raw.cursor() as cursor:
                for sql, values in batch:
                    cursor.execute(sql, values)
            if query is None:
                return []
            with raw.cursor(row_factory=namedtuple_row) as cursor:
                cursor.execute(query, params)
                return list(cursor.fetchall())
    except dbapi_error as exc:
        # The database's message names the table and constraint; which of the writes
        # failed is not known until the pipeline's end, so the statement is not shown.
        what = f"one of {len(batch) + (query is not None)} statements sent together"
        raise DBAPIError.instance(what, None, exc, dbapi_error, dialect=conn.dialect) from exc


def _by_id(row: dict[str, Any]) -> Any:
    return row["k_id"]


# PostgreSQL's deadlock_detected and serialization_failure; SQLite's "database is locked".
_RETRYABLE_SQLSTATES = {"40P01", "40001"}


def _retryable(exc: DBAPIError) -> bool:
    # (The same event delivered twice at once is no collision: the events check is an
    # INSERT ... ON CONFLICT DO NOTHING, which waits for the other delivery's outcome.)
    code = getattr(exc.orig, "sqlstate", None)
    return code in _RETRYABLE_SQLSTATES or "database is locked" in str(exc.orig)


def _driver_sql(conn: Connection, stmt: Any) -> str:
    """``stmt`` compiled for ``conn``'s driver (its parameters by name), once."""
    key = ("driver-sql", conn.dialect.name, stmt)
    sql = _STATEMENTS.get(key)
    if sql is None:
        sql = _STATEMENTS[key] = str(stmt.compile(dialect=conn.dialect))
    return str(sql)


def _upsert(
    conn: Connection,
    table: Any,
    rows: list[dict[str, Any]],
    keys: Sequence[str],
    keep: Sequence[str] = (),
    *,
    shared: bool = False,
) -> None:
    """Insert or update ``rows`` by ``keys``; columns in ``keep`` are written on insert
    only. SQLite: INSERT ... ON CONFLICT DO UPDATE, one executemany. PostgreSQL: one
    statement (``_pg_insert``) that rewrites only the
    rows whose values differ and inserts the new ones: ``INSERT ... ON CONFLICT DO
    UPDATE ... WHERE`` the row differs, which finds existing rows through the key's
    unique index whatever the planner thinks of the table. That statement still locks
    the existing rows it leaves alone, until commit; rows ``shared`` by many events'
    transactions (plans) are written instead by an UPDATE of the rows that differ
    followed by an INSERT of the new ones, which leaves unchanged rows unlocked: many
    events carry the same plan, and locking its row made every transaction wait for
    the previous one's commit. Statements are built once per (dialect, table,
    columns): building them costs more than running them."""
    if not rows:
        return
    dialect = conn.dialect.name
    cols = tuple(rows[0])
    # One row per key, as if the rows had been written one after another (the first
    # one's ``keep`` columns, the last one's others): one multi-row upsert may not touch
    # a row twice. In key order, so that concurrent writers lock rows in the same order.
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        k = tuple(row[c] for c in keys)
        first = merged.get(k)
        merged[k] = row if first is None else {**row, **{c: first[c] for c in keep}}
    rows = [merged[k] for k in sorted(merged)]
    if dialect == "postgresql":
        key = ("pg-upsert", table.name, cols, tuple(keys), tuple(keep), shared)
        clauses = _STATEMENTS.get(key)
        if clauses is None:
            clauses = _STATEMENTS[key] = (
                _pg_upsert_prefix(table, cols, keys, keep) if shared else "",
                _pg_upsert_conflict(table, cols, keys, keep, shared),
            )
        _pg_insert(conn, table, rows, clauses[1], clauses[0])
        return
    cache_key = ("upsert", dialect, table.name, cols, tuple(keys), tuple(keep))
    stmt = _STATEMENTS.get(cache_key)
    if stmt is None:
        ins: Any = sqlite.insert(table)
        updates = {c: getattr(ins.excluded, c) for c in cols if c not in keys and c not in keep}
        stmt = (
            ins.on_conflict_do_update(index_elements=list(keys), set_=updates)
            if updates
            else ins.on_conflict_do_nothing(index_elements=list(keys))
        )
        _STATEMENTS[cache_key] = stmt
    conn.execute(stmt, rows)


def _pg_upsert_conflict(
    table: Any, cols: Sequence[str], keys: Sequence[str], keep: Sequence[str], shared: bool
) -> str:
    """The ON CONFLICT clause of ``_upsert`` on PostgreSQL: DO NOTHING when the rows
    were updated beforehand (``shared``) or have nothing to update; otherwise DO UPDATE
    of the rows whose values differ."""
    target = ", ".join(f'"{k}"' for k in keys)
    updates = [c for c in cols if c not in keys and c not in keep]
    if shared or not updates:
        return f"ON CONFLICT ({target}) DO NOTHING"
    json_cols = {c.name for c in table.columns if isinstance(c.type, JSON)}

    def compared(c: str, side: str) -> str:  # json has no equality: compare its text
        return f'{side}."{c}"::text' if c in json_cols else f'{side}."{c}"'

    sets = ", ".join(f'"{c}" = excluded."{c}"' for c in updates)
    old = ", ".join(compared(c, f'"{table.name}"') for c in updates)
    new = ", ".join(compared(c, "excluded") for c in updates)
    return f"ON CONFLICT ({target}) DO UPDATE SET {sets} WHERE ROW({old}) IS DISTINCT FROM ROW({new})"


def _pg_upsert_prefix(table: Any, cols: Sequence[str], keys: Sequence[str], keep: Sequence[str]) -> str:
    """The WITH clause of a ``shared`` ``_upsert`` on PostgreSQL: an UPDATE of the
    existing rows whose values differ from the given ones (rows left alone are not
    locked; the INSERT that follows skips every existing row)."""
    updates = [c for c in cols if c not in keys and c not in keep]
    queries: list[str] = []
    if updates:
        json_cols = {c.name for c in table.columns if isinstance(c.type, JSON)}

        def given(c: str) -> str:
            return f"coalesce(u.\"{c}\", 'null'::json)" if c in json_cols else f'u."{c}"'

        def compared(c: str, side: str) -> str:  # json has no equality: compare its text
            return f"{side}::text" if c in json_cols else side

        sets = ", ".join(f'"{c}" = {given(c)}' for c in updates)
        match = " AND ".join(f't."{k}" = u."{k}"' for k in keys)
        old = ", ".join(compared(c, f't."{c}"') for c in updates)
        new = ", ".join(compared(c, given(c)) for c in updates)
        queries.append(
            f'changed AS (UPDATE "{table.name}" AS t SET {sets} '
            f'FROM json_populate_recordset(NULL::"{table.name}", %(rows)s::json) AS u '
            f"WHERE {match} AND ROW({old}) IS DISTINCT FROM ROW({new}))"
        )
    return "WITH " + ", ".join(queries) if queries else ""


def _pg_insert(
    conn: Connection, table: Any, rows: list[dict[str, Any]], conflict: str = "", before: str = ""
) -> None:
    """PostgreSQL: insert ``rows`` (dicts with the same keys) in ONE statement whose
    text never changes, the rows travelling as one JSON document:
    ``INSERT ... SELECT ... FROM json_populate_recordset(NULL::table, $1)``. The server
    prepares it once and casts each field to its column's type; the client encodes
    the batch with one call to the C JSON encoder. That replaces a statement per row
    (with its parameters converted one by one), which was most of the cost of writing
    a case: about twenty rows (the case, its timeline, its attempt, its messages ...).
    ``conflict`` is the ON CONFLICT clause, if any; ``before``, a WITH clause that may
    read the same rows (``%(rows)s``)."""
    sql, document = _pg_insert_document(table, rows, conflict, before)
    _send_write(conn, sql, {"rows": document})


def _pg_insert_document(
    table: Any, rows: list[dict[str, Any]], conflict: str = "", before: str = ""
) -> tuple[str, str]:
    """``_pg_insert``'s statement (built once) and its rows as one JSON document."""
    given = tuple(rows[0])
    key = ("pg-insert", table.name, given, conflict, before)
    entry = _STATEMENTS.get(key)
    if entry is None:
        # Columns left out get their scalar default, as SQLAlchemy's INSERT gives them.
        defaults = {
            c.name: c.default.arg
            for c in table.columns
            if c.name not in given and c.default is not None and c.default.is_scalar
        }
        cols = (*given, *defaults)
        json_cols = {c.name for c in table.columns if isinstance(c.type, JSON)}
        # SQLAlchemy's JSON type writes None as JSON null, not SQL NULL: so does this.
        fields = ", ".join(
            f"coalesce(r.\"{c}\", 'null'::json)" if c in json_cols else f'r."{c}"' for c in cols
        )
        names = ", ".join(f'"{c}"' for c in cols)
        sql = (
            f'{before} INSERT INTO "{table.name}" ({names}) SELECT {fields} '
            f'FROM json_populate_recordset(NULL::"{table.name}", %(rows)s::json) AS r {conflict}'
        ).strip()
        times = tuple(
            c.name
            for c in table.columns
            if c.name in given and isinstance(getattr(c.type, "impl", c.type), DateTime)  # UTCDateTime too
        )
        entry = _STATEMENTS[key] = (sql, defaults, times)
    sql, defaults, times = entry
    for row in rows:
        for name in times:
            value = row[name]
            if value is not None and value.tzinfo is None:
                raise ValueError(f"naive datetime reached the database ({table.name}.{name})")
    if defaults:
        rows = [{**r, **defaults} for r in rows]
    # orjson writes times as ISO 8601 with their offset (and refuses a type it does
    # not know with a TypeError), several times faster than json did (a fifth of the
    # service's time per event).
    return sql, orjson.dumps(rows).decode()


def _insert(conn: Connection, stmt: Any, table: Any, rows: list[dict[str, Any]], conflict: str = "") -> None:
    """``stmt`` for every row (SQLite: the driver's executemany); on PostgreSQL, one
    ``_pg_insert`` with ``conflict``, the same clause as ``stmt``'s."""
    if conn.dialect.name == "postgresql":
        _pg_insert(conn, table, rows, conflict)
    else:
        conn.execute(stmt, rows)


def _remember_statement(dialect: str) -> Any:
    key = ("remember-events", dialect)
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        table = ProcessedEventRow.__table__
        ins: Any = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
        stmt = _STATEMENTS[key] = ins.on_conflict_do_nothing(index_elements=["event_id"]).returning(
            table.c.event_id
        )
    return stmt


@lru_cache(maxsize=4096)
def _decline(category: str | None, code: str | None, network: str | None, advice: str | None) -> Decline:
    """Rebuild a stored decline (cached: the same few codes come back on every row)."""
    decline = classify(code or None, network_code=network, advice_code=advice)
    if category and decline.category.value != category:
        decline = replace(decline, category=DeclineCategory(category))
    return decline


def _case_from_row(r: Row[Any]) -> DunningCase:
    return DunningCase(
        id=r.id,
        invoice_id=r.invoice_id,
        customer_id=r.customer_id,
        subscription_id=r.subscription_id,
        amount=Money(r.amount_minor, r.currency),
        opened_at=r.opened_at,
        policy_name=r.policy_name,
        policy_version=r.policy_version,
        segment=r.segment,
        payment_method_id=r.payment_method_id,
        last_decline=_decline(r.last_category, r.last_code, r.last_network_code, r.last_advice_code),
        last_attempt_at=r.last_attempt_at,
        status=CaseStatus(r.status),
        attempts=r.attempts,
        budget_used=r.budget_used,
        errors_in_row=r.errors_in_row,
        next_action=NextAction(r.next_action) if r.next_action else None,
        next_action_at=r.next_action_at,
        next_action_reason=r.next_action_reason,
        closed_at=r.closed_at,
        final_action=FinalAction(r.final_action) if r.final_action else None,
        version=r.version,
    )


def _customer_from_row(r: Row[Any]) -> Customer:
    return Customer(
        id=r.id,
        email=r.email,
        locale=r.locale,
        timezone=r.timezone,
        country=r.country,
        name=r.name,
        phone=r.phone,
        created_at=r.created_at,
    )


def _method_from_row(r: Row[Any]) -> PaymentMethod:
    return PaymentMethod(
        id=r.id,
        customer_id=r.customer_id,
        gateway_token=r.gateway_token,
        brand=r.brand,
        last4=r.last4,
        exp_month=r.exp_month,
        exp_year=r.exp_year,
        funding=Funding(r.funding),
        is_default=r.is_default,
    )


def _case_values(case: DunningCase) -> dict[str, Any]:
    d = case.last_decline
    return {
        "status": case.status.value,
        "closed_at": case.closed_at,
        "payment_method_id": case.payment_method_id,
        "last_category": d.category.value,
        "last_code": d.code,
        "last_network_code": d.network_code,
        "last_advice_code": d.advice_code,
        "last_attempt_at": case.last_attempt_at,
        "attempts": case.attempts,
        "budget_used": case.budget_used,
        "errors_in_row": case.errors_in_row,
        "next_action": case.next_action.value if case.next_action else None,
        "next_action_at": case.next_action_at,
        "next_action_reason": case.next_action_reason,
        "final_action": case.final_action.value if case.final_action else None,
    }


def _event_values(events: Iterable[CaseEvent]) -> list[dict[str, Any]]:
    return [
        {
            "case_id": e.case_id,
            "at": e.at,
            "kind": e.kind.value,
            "reason": e.reason,
            "from_status": e.from_status.value if e.from_status else None,
            "to_status": e.to_status.value if e.to_status else None,
            "data": e.data or None,
        }
        for e in events
    ]


def _attempt_from_row(r: Row[Any]) -> Attempt:
    decline = _decline(r.category, r.code, r.network_code, r.advice_code) if r.category else None
    return Attempt(
        r.case_id,
        r.number,
        r.payment_method_id,
        r.idempotency_key,
        r.at,
        AttemptStatus(r.status),
        AttemptTrigger(r.trigger),
        decline,
        r.gateway_reference,
    )


class SqlUnitOfWork:
    """One database transaction implementing ``recobra.ports.UnitOfWork``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.conn: Connection

    def __enter__(self) -> SqlUnitOfWork:
        self.conn = self._engine.connect().execution_options(recobra_write=True)
        self._tx = self.conn.begin()
        if self.conn.dialect.name == "postgresql":
            self.conn.info[_PENDING] = []
        self._invoice_statuses: dict[str, dict[str, Any]] = {}
        self._subscription_statuses: dict[str, str] = {}
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.conn.info.pop(_PENDING, None)  # unsent writes die with the transaction
            if self._tx.is_active:
                self._tx.rollback()
        finally:
            self.conn.close()
        if isinstance(exc, DBAPIError) and _retryable(exc):
            # A deadlock or serialization failure between concurrent writers: nothing was
            # written; the caller redoes the unit of work on fresh state.
            raise ConcurrentUpdate(f"concurrent writers collided: {exc.orig}") from exc

    def commit(self) -> None:
        self._write_all(then_commit=True)
        self._tx.commit()

    def rehearse_commit(self) -> None:
        self._write_all(then_commit=False)
        self._tx.rollback()

    def _write_all(self, *, then_commit: bool) -> None:
        """Write what is still kept: the buffered status changes, and on PostgreSQL the
        writes not sent yet (with the COMMIT in the same round trip if ``then_commit``)."""
        # Status changes are buffered and written together at the end: a tick changes
        # hundreds of invoices and subscriptions, and nothing reads them back.
        # In key order, like every multi-row write: concurrent writers then take their
        # row locks in the same order and cannot deadlock.
        invoices = sorted(self._invoice_statuses.values(), key=_by_id)
        subscriptions = [{"k_id": k, "v_status": v} for k, v in sorted(self._subscription_statuses.items())]
        if _PENDING in self.conn.info:  # PostgreSQL: with the other writes, then COMMIT
            for stmt, rows in ((_SET_INVOICE_STATUS, invoices), (_SET_SUBSCRIPTION_STATUS, subscriptions)):
                sql = _driver_sql(self.conn, stmt)
                for row in rows:
                    _send_write(self.conn, sql, row)
            if self.conn.info[_PENDING]:
                if then_commit:
                    # The COMMIT goes in the same round trip; the driver's own commit
                    # that follows finds the transaction ended and sends nothing.
                    _send_write(self.conn, "COMMIT", {})
                _flush_writes(self.conn)
        else:
            if invoices:
                self.conn.execute(_SET_INVOICE_STATUS, invoices)
            if subscriptions:
                self.conn.execute(_SET_SUBSCRIPTION_STATUS, subscriptions)

    # -- events
    def remember_events(self, events: Sequence[tuple[str, str, datetime]]) -> set[str]:
        if not events:
            return set()
        rows: dict[str, dict[str, Any]] = {}
        for event_id, kind, at in events:
            if event_id not in rows:
                rows[event_id] = {"event_id": event_id, "kind": kind, "occurred_at": at}
        # One statement: the ids it inserts are the fresh ones. An id being inserted
        # by a concurrent writer makes PostgreSQL wait for that writer's outcome: once
        # it commits, the id is a duplicate here; should it roll back, it is fresh.
        # In key order, so that two such writers cannot deadlock.
        ordered = [rows[k] for k in sorted(rows)]
        if _PENDING in self.conn.info:  # PostgreSQL: one statement whose text never changes
            sql, document = _pg_insert_document(
                ProcessedEventRow.__table__, ordered, "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
            )
            return {r.event_id for r in _pg_read(self.conn, sql, {"rows": document})}
        result = self.conn.execute(_remember_statement(self.conn.dialect.name), ordered)
        return set(result.scalars())

    # -- reference data
    def upsert_customers(self, customers: Sequence[Customer]) -> None:
        _upsert(
            self.conn,
            customers_t,
            [
                {
                    "id": c.id,
                    "email": c.email,
                    "name": c.name,
                    "phone": c.phone,
                    "locale": c.locale,
                    "timezone": c.timezone,
                    "country": c.country,
                    "created_at": c.created_at,
                }
                for c in customers
            ],
            ["id"],
        )

    def upsert_payment_methods(self, methods: Sequence[PaymentMethod]) -> None:
        defaults = [m for m in methods if m.is_default]
        if defaults and self.conn.dialect.name == "postgresql":
            for m in sorted(defaults, key=lambda m: (m.customer_id, m.id)):
                _send_write(self.conn, _UNSET_OTHER_DEFAULT_PG, {"customer_id": m.customer_id, "id": m.id})
        elif defaults:
            self.conn.execute(
                _UNSET_OTHER_DEFAULTS,
                {"customers": list({m.customer_id for m in defaults}), "ids": [m.id for m in defaults]},
            )
        _upsert(
            self.conn,
            methods_t,
            [
                {
                    "id": m.id,
                    "customer_id": m.customer_id,
                    "gateway_token": m.gateway_token,
                    "brand": m.brand,
                    "last4": m.last4,
                    "exp_month": m.exp_month,
                    "exp_year": m.exp_year,
                    "funding": m.funding.value,
                    "is_default": m.is_default,
                }
                for m in methods
            ],
            ["id"],
        )

    def upsert_subscriptions(
        self, subscriptions: Sequence[Subscription], *, update_status: bool = False
    ) -> None:
        plans = {s.plan.id: s.plan for s in subscriptions}
        _upsert(
            self.conn,
            PlanRow.__table__,
            [
                {
                    "id": p.id,
                    "name": p.name,
                    "interval": p.interval.value,
                    "amount_minor": p.price.amount_minor,
                    "currency": p.price.currency,
                }
                for p in plans.values()
            ],
            ["id"],
            shared=True,
        )
        _upsert(
            self.conn,
            SubscriptionRow.__table__,
            [
                {
                    "id": s.id,
                    "customer_id": s.customer_id,
                    "plan_id": s.plan.id,
                    "status": s.status.value,
                    "started_at": s.started_at,
                    "renews_at": s.renews_at,
                }
                for s in subscriptions
            ],
            ["id"],
            # Once known, a subscription's status moves with its cases (past due,
            # canceled by the final action ...): a late failure report must not turn
            # it back. Only the billing system's own subscription updates set it.
            keep=[] if update_status else ["status"],
        )

    def upsert_invoices(self, invoices: Sequence[Invoice]) -> None:
        _upsert(
            self.conn,
            InvoiceRow.__table__,
            [
                {
                    "id": i.id,
                    "customer_id": i.customer_id,
                    "subscription_id": i.subscription_id,
                    "amount_minor": i.amount.amount_minor,
                    "currency": i.amount.currency,
                    "status": i.status.value,
                    "created_at": i.created_at,
                    "paid_at": None,
                }
                for i in invoices
            ],
            ["id"],
            # A late failure report must not reopen an invoice that was paid since.
            keep=["status", "paid_at"],
        )

    def set_invoice_status(self, invoice_id: str, status: InvoiceStatus, at: datetime) -> None:
        self._invoice_statuses[invoice_id] = {
            "k_id": invoice_id,
            "v_status": status.value,
            "v_paid_at": at if status is InvoiceStatus.PAID else None,
        }

    def set_subscription_statuses(self, statuses: Sequence[tuple[str, SubscriptionStatus]]) -> None:
        for subscription_id, status in statuses:
            self._subscription_statuses[subscription_id] = status.value

    # -- cases
    def cases_for_invoices(self, invoice_ids: Sequence[str]) -> dict[str, DunningCase]:
        if not invoice_ids:
            return {}
        ids = sorted(set(invoice_ids))
        if _PENDING in self.conn.info:  # PostgreSQL: with the writes before it
            rows: Iterable[Any] = _pg_read(self.conn, _CASES_BY_INVOICE_PG, {"ids": ids})
        else:
            rows = self.conn.execute(_CASES_BY_INVOICE, {"ids": ids})
        return {r.invoice_id: _case_from_row(r) for r in rows}

    def active_cases(
        self, *, customer_id: str | None = None, subscription_id: str | None = None
    ) -> list[DunningCase]:
        stmt = _ACTIVE_CASES_OF[("customer", "subscription")[subscription_id is not None]]
        key = subscription_id if subscription_id is not None else customer_id
        return [_case_from_row(r) for r in self.conn.execute(stmt, {"key": key})]

    def load_bundles(self, case_ids: Sequence[str], now: datetime) -> list[CaseBundle]:
        if not case_ids:
            return []
        ids = list(case_ids)
        cases = [_case_from_row(r) for r in self.conn.execute(_CASES_BY_ID, {"ids": ids})]
        customers = {
            r.id: _customer_from_row(r)
            for r in self.conn.execute(_CUSTOMERS_BY_ID, {"ids": list({c.customer_id for c in cases})})
        }
        pm_ids = list({c.payment_method_id for c in cases})
        methods = {r.id: _method_from_row(r) for r in self.conn.execute(_METHODS_BY_ID, {"ids": pm_ids})}
        open_attempts: dict[str, list[Attempt]] = {}
        for r in self.conn.execute(_OPEN_ATTEMPTS, {"ids": ids}):
            open_attempts.setdefault(r.case_id, []).append(_attempt_from_row(r))
        history: dict[str, list[PriorAttempt]] = {}
        for r in self.conn.execute(_CARD_HISTORY, {"ids": pm_ids, "since": now - CARD_HISTORY}):
            decline = (
                None
                if r.status == AttemptStatus.SUCCEEDED.value
                else _decline(r.category, r.code, r.network_code, r.advice_code)
            )
            history.setdefault(r.payment_method_id, []).append(PriorAttempt(r.at, decline))
        bundles = []
        for case in cases:
            extra = open_attempts.get(case.id, [])
            pending = next((a for a in extra if a.status is AttemptStatus.PENDING), None)
            unknown = next(
                (a for a in extra if a.status is AttemptStatus.UNKNOWN and a.number == case.attempts), None
            )
            bundles.append(
                CaseBundle(
                    case=case,
                    customer=customers[case.customer_id],
                    payment_method=methods[case.payment_method_id],
                    card_history=tuple(sorted(history.get(case.payment_method_id, ()), key=lambda p: p.at)),
                    pending=pending,
                    last_status_unknown=unknown,
                )
            )
        return bundles

    def add_cases(self, cases: Sequence[DunningCase]) -> None:
        rows, events = [], []
        for case in cases:
            values = _case_values(case)
            values.update(
                id=case.id,
                invoice_id=case.invoice_id,
                customer_id=case.customer_id,
                subscription_id=case.subscription_id,
                amount_minor=case.amount.amount_minor,
                currency=case.amount.currency,
                opened_at=case.opened_at,
                policy_name=case.policy_name,
                policy_version=case.policy_version,
                segment=case.segment,
                version=case.version,
            )
            rows.append(values)
            events.extend(_event_values(case.collect_events()))
        if rows:
            _insert(self.conn, _INSERT_CASES, cases_t, rows)
        if events:
            _insert(self.conn, _INSERT_EVENTS, events_t, events)

    def save_cases(self, cases: Sequence[DunningCase], *, release_claims: bool) -> None:
        if not cases:
            return
        rows, events = [], []
        for case in cases:
            values = {f"v_{k}": v for k, v in _case_values(case).items()}
            values["k_id"] = case.id
            values["k_version"] = case.version
            rows.append(values)
            events.extend(_event_values(case.collect_events()))
        rows.sort(key=_by_id)
        result = self.conn.execute(_SAVE_CASES[release_claims], rows)
        if result.rowcount != len(rows):
            raise ConcurrentUpdate(
                f"{len(rows) - result.rowcount} of {len(rows)} case(s) changed since they were loaded"
            )
        for case in cases:
            case.version += 1
        if events:
            _insert(self.conn, _INSERT_EVENTS, events_t, events)

    def lock_cases(self, case_ids: Sequence[str]) -> dict[str, int]:
        if not case_ids:
            return {}
        stmt = _LOCK_CASES[self.conn.dialect.name == "postgresql"]
        return {r.id: r.version for r in self.conn.execute(stmt, {"ids": list(case_ids)})}

    def plan_name(self, subscription_id: str) -> str | None:
        value: str | None = self.conn.scalar(
            select(PlanRow.__table__.c.name)
            .join(SubscriptionRow.__table__, SubscriptionRow.__table__.c.plan_id == PlanRow.__table__.c.id)
            .where(SubscriptionRow.__table__.c.id == subscription_id)
        )
        return value

    def customer_of_subscription(self, subscription_id: str) -> str | None:
        table = SubscriptionRow.__table__
        value: str | None = self.conn.scalar(select(table.c.customer_id).where(table.c.id == subscription_id))
        return value

    def customers_with_phone(self, phone: str) -> list[str]:
        return list(self.conn.scalars(select(customers_t.c.id).where(customers_t.c.phone == phone)))

    def known_customers(self, customer_ids: Sequence[str]) -> set[str]:
        if not customer_ids:
            return set()
        return set(self.conn.scalars(_KNOWN_CUSTOMERS, {"ids": list(set(customer_ids))}))

    def add_attempts(self, attempts: Sequence[Attempt]) -> None:
        billing = [_attempt_values(a) for a in attempts if a.trigger is AttemptTrigger.BILLING]
        own = [_attempt_values(a) for a in attempts if a.trigger is not AttemptTrigger.BILLING]
        if own:
            _insert(self.conn, _INSERT_ATTEMPTS, attempts_t, own)
        if billing:
            # The billing system may report the same failed charge twice (two events,
            # one charge): record it once.
            dialect = self.conn.dialect.name
            ins: Any = postgresql.insert(attempts_t) if dialect == "postgresql" else sqlite.insert(attempts_t)
            key = ("billing-attempts", dialect)
            stmt = _STATEMENTS.get(key)
            if stmt is None:
                stmt = _STATEMENTS[key] = ins.on_conflict_do_nothing(index_elements=["idempotency_key"])
            conflict = 'ON CONFLICT ("idempotency_key") DO NOTHING'
            _insert(self.conn, stmt, attempts_t, billing, conflict)

    def finish_attempts(self, attempts: Sequence[Attempt]) -> None:
        if not attempts:
            return
        rows = []
        for a in attempts:
            v = _attempt_values(a)
            rows.append(
                {
                    "k_key": v["idempotency_key"],
                    "v_status": v["status"],
                    "v_at": v["at"],
                    "v_category": v["category"],
                    "v_code": v["code"],
                    "v_network_code": v["network_code"],
                    "v_advice_code": v["advice_code"],
                    "v_gateway_reference": v["gateway_reference"],
                }
            )
        self.conn.execute(_FINISH_ATTEMPTS, rows)

    def message_by_key(self, key: str) -> OutboxEntry | None:
        row = self.conn.execute(select(messages_t).where(messages_t.c.key == key)).first()
        return _entry_from_row(row) if row else None

    def customer_locale(self, customer_id: str) -> str | None:
        value: str | None = self.conn.scalar(
            select(customers_t.c.locale).where(customers_t.c.id == customer_id)
        )
        return value

    def record_bounce(
        self, *, provider_id: str | None, key: str | None, reason: str, at: datetime
    ) -> str | None:
        """A provider reports a sent message undeliverable; returns the message's key."""
        where = messages_t.c.provider_id == provider_id if provider_id else messages_t.c.key == key
        row = self.conn.execute(select(messages_t.c.key, messages_t.c.status).where(where)).first()
        if row is None:
            return None
        if row.status == MessageStatus.SENT.value:
            self.conn.execute(
                update(messages_t)
                .where(messages_t.c.key == row.key)
                .values(status=MessageStatus.BOUNCED.value, reason=f"bounced: {reason}"[:2000])
            )
        return str(row.key)

    # -- customers' links
    def link_used(self, nonce: str) -> bool:
        return self.conn.scalar(select(used_t.c.nonce).where(used_t.c.nonce == nonce)) is not None

    def use_link(self, nonce: str, purpose: str, subject: str, at: datetime) -> bool:
        """Spend a single-use link; False if it had been spent already."""
        dialect = self.conn.dialect.name
        ins: Any = postgresql.insert(used_t) if dialect == "postgresql" else sqlite.insert(used_t)
        result = self.conn.execute(
            ins.values(nonce=nonce, purpose=purpose, subject=subject, used_at=at).on_conflict_do_nothing()
        )
        return bool(result.rowcount)

    def record_click(self, key: str, at: datetime) -> None:
        """The customer opened a message's link (first click only)."""
        self.conn.execute(
            update(messages_t)
            .where(messages_t.c.key == key, messages_t.c.clicked_at.is_(None))
            .values(clicked_at=at)
        )

    # -- in-app notices
    def pending_notices(self, customer_id: str, *, limit: int = 5) -> list[dict[str, Any]]:
        """A customer's in-app notices not yet seen, newest first."""
        rows = self.conn.execute(
            select(messages_t.c.key, messages_t.c.kind, messages_t.c.sent_at, messages_t.c.data)
            .where(
                messages_t.c.customer_id == customer_id,
                messages_t.c.channel == ChannelKind.IN_APP.value,
                messages_t.c.status == MessageStatus.SENT.value,
                messages_t.c.seen_at.is_(None),
            )
            .order_by(messages_t.c.sent_at.desc())
            .limit(limit)
        )
        return [{"key": r.key, "kind": r.kind, "sent_at": r.sent_at, **(r.data or {})} for r in rows]

    def mark_notice_seen(self, customer_id: str, key: str, at: datetime) -> bool:
        """Record that the customer saw an in-app notice; False if it is not theirs."""
        result = self.conn.execute(
            update(messages_t)
            .where(
                messages_t.c.key == key,
                messages_t.c.customer_id == customer_id,
                messages_t.c.channel == ChannelKind.IN_APP.value,
                messages_t.c.seen_at.is_(None),
            )
            .values(seen_at=at)
        )
        return bool(result.rowcount)

    # -- the event relay
    def claim_relay(self, name: str, now: datetime, *, worker_id: str, lease: timedelta) -> int | None:
        _upsert(
            self.conn,
            cursors_t,
            [{"name": name, "last_event_id": 0, "updated_at": now}],
            ["name"],
            keep=["last_event_id", "updated_at"],
        )
        free = or_(cursors_t.c.claim_expires_at.is_(None), cursors_t.c.claim_expires_at < now)
        claimed = self.conn.execute(
            update(cursors_t)
            .where(cursors_t.c.name == name, free)
            .values(claimed_by=worker_id, claim_expires_at=now + lease)
            .returning(cursors_t.c.last_event_id)
        ).scalar()
        return None if claimed is None else int(claimed)

    def release_relay(self, name: str, last_event_id: int, now: datetime) -> None:
        self.conn.execute(
            update(cursors_t)
            .where(cursors_t.c.name == name)
            .values(last_event_id=last_event_id, updated_at=now, claimed_by=None, claim_expires_at=None)
        )

    def case_events_after(self, event_id: int, *, limit: int) -> list[RelayedEvent]:
        rows = self.conn.execute(_EVENTS_AFTER, {"after": event_id, "limit": limit})
        return [
            RelayedEvent(
                id=r.id,
                case_id=r.case_id,
                customer_id=r.customer_id,
                invoice_id=r.invoice_id,
                amount_minor=r.amount_minor,
                currency=r.currency,
                at=r.at,
                kind=r.kind,
                reason=r.reason,
                from_status=r.from_status,
                to_status=r.to_status,
                data=r.data,
            )
            for r in rows
        ]

    # -- the message outbox
    def add_messages(self, entries: Sequence[OutboxEntry]) -> None:
        if not entries:
            return
        rows = [
            {
                "key": e.key,
                "case_id": e.case_id,
                "customer_id": e.customer_id,
                "kind": e.kind.value,
                "channel": e.channel.value,
                "step": e.step,
                "status": MessageStatus.SCHEDULED.value,
                "due_at": e.due_at,
                "attempts": 0,
                "reason": "",
                "data": {
                    "fallback": [c.value for c in e.fallback],
                    "fallback_after_s": e.fallback_after.total_seconds() if e.fallback_after else None,
                    "only_if_unclicked": e.only_if_unclicked,
                    "is_fallback": e.is_fallback,
                    "context": dict(e.context),
                },
                "created_at": e.due_at,
            }
            for e in entries
        ]
        dialect = self.conn.dialect.name
        key = ("add-messages", dialect)
        stmt = _STATEMENTS.get(key)
        if stmt is None:
            ins: Any = postgresql.insert(messages_t) if dialect == "postgresql" else sqlite.insert(messages_t)
            stmt = _STATEMENTS[key] = ins.on_conflict_do_nothing(index_elements=["key"])
        _insert(self.conn, stmt, messages_t, rows, 'ON CONFLICT ("key") DO NOTHING')

    def _set_preference(self, customer_id: str, at: datetime, **values: bool) -> None:
        _upsert(
            self.conn,
            prefs_t,
            [{"customer_id": customer_id, "updated_at": at, **values}],
            ["customer_id"],
        )

    def set_suppressed(self, customer_id: str, at: datetime) -> None:
        self._set_preference(customer_id, at, suppressed=True)

    def set_sms_stopped(self, customer_id: str, stopped: bool, at: datetime) -> None:
        self._set_preference(customer_id, at, sms_stopped=stopped)

    def set_preferences(self, customer_id: str, at: datetime, **values: bool) -> None:
        """Consent and opt-outs as given (absent keys unchanged)."""
        if values:
            self._set_preference(customer_id, at, **values)

    def add_push_subscription(self, customer_id: str, endpoint: str, subscription: str, at: datetime) -> None:
        _upsert(
            self.conn,
            push_t,
            [
                {
                    "customer_id": customer_id,
                    "endpoint": endpoint,
                    "subscription": subscription,
                    "created_at": at,
                }
            ],
            ["endpoint"],
        )

    def reap_messages(self, now: datetime) -> int:
        result = self.conn.execute(
            update(messages_t)
            .where(messages_t.c.status == MessageStatus.SENDING.value, messages_t.c.claim_expires_at < now)
            .values(
                status=MessageStatus.UNKNOWN.value,
                due_at=None,
                claimed_by=None,
                claim_expires_at=None,
                reason="a worker stopped while sending it: it may have gone out, so it is not sent again",
            )
        )
        return int(result.rowcount or 0)

    def claim_due_messages(self, now: datetime, *, limit: int, worker_id: str, lease: timedelta) -> list[int]:
        stmt = _claim_messages_statement(self.conn.dialect.name)
        params = {"now": now, "limit": limit, "worker": worker_id, "expires": now + lease}
        return list(self.conn.scalars(stmt, params))

    def load_messages(self, ids: Sequence[int], now: datetime) -> list[MessageBundle]:
        if not ids:
            return []
        rows = self.conn.execute(_MESSAGES_BY_ID, {"ids": list(ids)}).all()
        customer_ids = list({r.customer_id for r in rows})
        case_ids = list({r.case_id for r in rows if r.case_id})
        customers = {
            r.id: _customer_from_row(r) for r in self.conn.execute(_CUSTOMERS_BY_ID, {"ids": customer_ids})
        }
        prefs = {r.customer_id: r for r in self.conn.execute(_PREFS_BY_CUSTOMER, {"ids": customer_ids})}
        push: dict[str, list[str]] = {}
        for r in self.conn.execute(_PUSH_BY_CUSTOMER, {"ids": customer_ids}):
            push.setdefault(r.customer_id, []).append(r.subscription)
        cases = {r.id: _case_from_row(r) for r in self.conn.execute(_CASES_BY_ID, {"ids": case_ids})}
        methods = {
            r.id: _method_from_row(r)
            for r in self.conn.execute(
                _METHODS_BY_ID, {"ids": list({c.payment_method_id for c in cases.values()})}
            )
        }
        defaults = {
            r.customer_id: _method_from_row(r)
            for r in self.conn.execute(_DEFAULT_METHODS, {"ids": customer_ids})
        }
        notes = {r.id: (r.data or {}).get("context") or {} for r in rows}
        subscription_ids = {c.subscription_id for c in cases.values() if c.subscription_id} | {
            n.get("subscription") or n["for_subscription"]
            for n in notes.values()
            if "subscription" in n or "for_subscription" in n
        }
        plans = {r.id: r for r in self.conn.execute(_PLANS_BY_SUBSCRIPTION, {"ids": list(subscription_ids)})}
        siblings: dict[tuple[str, str], list[tuple[str, str, bool]]] = {}
        for r in self.conn.execute(_STEP_SIBLINGS, {"ids": case_ids}):
            siblings.setdefault((r.case_id, r.step), []).append(
                (r.channel, r.status, r.clicked_at is not None)
            )
        recent: dict[str, list[datetime]] = {}
        for r in self.conn.execute(_RECENT_SENDS, {"ids": customer_ids, "since": now - timedelta(days=7)}):
            recent.setdefault(r.customer_id, []).append(r.sent_at)
        bundles = []
        for r in rows:
            customer = customers[r.customer_id]
            pref = prefs.get(r.customer_id)
            subs = push.get(r.customer_id, [])
            case = cases.get(r.case_id) if r.case_id else None
            method = methods.get(case.payment_method_id) if case else defaults.get(r.customer_id)
            subscription_id = (
                case.subscription_id
                if case
                else notes[r.id].get("subscription") or notes[r.id].get("for_subscription")
            )
            plan = plans.get(subscription_id) if subscription_id else None
            reach = Reachability(
                email=customer.email,
                phone=customer.phone,
                push_subscriptions=len(subs),
                sms_consent=bool(pref and pref.sms_consent),
                voice_consent=bool(pref and pref.voice_consent),
                sms_stopped=bool(pref and pref.sms_stopped),
                unsubscribed=bool(pref and pref.unsubscribed),
                suppressed=bool(pref and pref.suppressed),
                win_back_opt_in=bool(pref and pref.win_back_opt_in),
            )
            entry = _entry_from_row(r)
            bundles.append(
                MessageBundle(
                    id=r.id,
                    entry=entry,
                    attempts=r.attempts,
                    customer=customer,
                    reach=reach,
                    push_subscription=subs[-1] if subs else None,
                    case=case,
                    payment_method=method,
                    plan_id=plan.plan_id if plan else None,
                    plan_name=plan.name if plan else None,
                    subscription_status=plan.status if plan else None,
                    renews_at=plan.renews_at if plan else None,
                    siblings=tuple(s for s in siblings.get((r.case_id, r.step), []) if s[0] != r.channel)
                    if r.case_id
                    else (),
                    recent=tuple(recent.get(r.customer_id, ())),
                )
            )
        return bundles

    def update_messages(self, updates: Sequence[MessageUpdate], *, release_claims: bool) -> None:
        if not updates:
            return
        self.conn.execute(
            _UPDATE_MESSAGES[release_claims],
            [
                {
                    "k_id": u.id,
                    "v_status": u.status.value,
                    "v_due_at": u.due_at,
                    "v_reason": u.reason,
                    "v_attempts": u.attempts,
                    "v_sent_at": u.sent_at,
                    "v_provider_id": u.provider_id,
                }
                for u in updates
            ],
        )
        payloads = [u for u in updates if u.payload is not None]
        for u in payloads:
            self.conn.execute(
                update(messages_t).where(messages_t.c.id == u.id).values(data=dict(u.payload or {}))
            )

    # -- leaving and coming back
    def standing(self, subscription_id: str) -> Standing | None:
        """A subscription, its plan and the customer's own changes to it."""
        subs, plans = _subscriptions_t, PlanRow.__table__
        row = self.conn.execute(
            select(
                subs,
                plans.c.name.label("plan_name"),
                plans.c.interval,
                plans.c.amount_minor,
                plans.c.currency,
            )
            .join(plans, plans.c.id == subs.c.plan_id)
            .where(subs.c.id == subscription_id)
        ).first()
        if row is None:
            return None
        plan = Plan(row.plan_id, row.plan_name, Interval(row.interval), Money(row.amount_minor, row.currency))
        return Standing(
            Subscription(
                row.id,
                row.customer_id,
                plan,
                SubscriptionStatus(row.status),
                row.started_at,
                row.renews_at,
            ),
            canceled_at=row.canceled_at,
            paused_until=row.paused_until,
            discount_percent=row.discount_percent,
            discount_cycles=row.discount_cycles,
        )

    def latest_subscription(self, customer_id: str) -> str | None:
        """The customer's most recently started subscription."""
        subs = _subscriptions_t
        value: str | None = self.conn.scalar(
            select(subs.c.id)
            .where(subs.c.customer_id == customer_id)
            .order_by(subs.c.started_at.desc(), subs.c.id.desc())
            .limit(1)
        )
        return value

    def case_subscription(self, case_id: str) -> str | None:
        value: str | None = self.conn.scalar(select(cases_t.c.subscription_id).where(cases_t.c.id == case_id))
        return value

    def plans(self, plan_ids: Sequence[str]) -> dict[str, Plan]:
        if not plan_ids:
            return {}
        plans = PlanRow.__table__
        rows = self.conn.execute(select(plans).where(plans.c.id.in_(list(set(plan_ids)))))
        return {
            r.id: Plan(r.id, r.name, Interval(r.interval), Money(r.amount_minor, r.currency)) for r in rows
        }

    def customer(self, customer_id: str) -> Customer | None:
        row = self.conn.execute(select(customers_t).where(customers_t.c.id == customer_id)).first()
        return _customer_from_row(row) if row else None

    def update_subscription(self, subscription_id: str, **values: Any) -> None:
        """Set the customer's changes (``canceled_at``, ``paused_until``, ``discount_percent``,
        ``discount_cycles``, ``plan_id``) on a subscription; status goes through
        ``set_subscription_statuses``."""
        allowed = {"canceled_at", "paused_until", "discount_percent", "discount_cycles", "plan_id"}
        if unknown := set(values) - allowed:
            raise ValueError(f"not a subscription change: {sorted(unknown)}")
        if values:
            self.conn.execute(
                update(_subscriptions_t).where(_subscriptions_t.c.id == subscription_id).values(**values)
            )

    def add_subscription_changes(self, changes: Sequence[SubscriptionChange]) -> None:
        if changes:
            self.conn.execute(
                SubscriptionEventRow.__table__.insert(),
                [
                    {
                        "subscription_id": c.subscription_id,
                        "customer_id": c.customer_id,
                        "at": c.at,
                        "kind": c.kind.value,
                        "reason": c.reason,
                        "data": dict(c.data),
                    }
                    for c in changes
                ],
            )

    def subscription_changes_after(
        self, event_id: int, *, limit: int
    ) -> list[tuple[int, SubscriptionChange]]:
        t = SubscriptionEventRow.__table__
        rows = self.conn.execute(select(t).where(t.c.id > event_id).order_by(t.c.id).limit(limit))
        return [
            (
                r.id,
                SubscriptionChange(
                    r.subscription_id, r.customer_id, r.at, ChangeKind(r.kind), r.reason, r.data or {}
                ),
            )
            for r in rows
        ]

    def unpaid_case(self, subscription_id: str) -> DunningCase | None:
        """The subscription's latest case whose final action left its invoice unpaid."""
        row = self.conn.execute(
            select(cases_t)
            .join(_invoices_t, _invoices_t.c.id == cases_t.c.invoice_id)
            .where(
                cases_t.c.subscription_id == subscription_id,
                cases_t.c.status == CaseStatus.FINAL_ACTION_DONE.value,
                _invoices_t.c.status == InvoiceStatus.UNCOLLECTIBLE.value,
            )
            .order_by(cases_t.c.opened_at.desc())
            .limit(1)
        ).first()
        return _case_from_row(row) if row else None

    def default_payment_method(self, customer_id: str) -> PaymentMethod | None:
        row = self.conn.execute(
            select(methods_t).where(methods_t.c.customer_id == customer_id, methods_t.c.is_default).limit(1)
        ).first()
        return _method_from_row(row) if row else None

    def add_exit_survey(
        self,
        *,
        customer_id: str | None,
        subscription_id: str | None,
        plan_id: str | None,
        reason: str,
        comment: str,
        locale: str,
        offer: str | None,
        outcome: str,
        at: datetime,
    ) -> None:
        self.conn.execute(
            ExitSurveyRow.__table__.insert().values(
                customer_id=customer_id,
                subscription_id=subscription_id,
                plan_id=plan_id,
                reason=reason,
                comment=comment,
                locale=locale,
                offer=offer,
                outcome=outcome,
                created_at=at,
            )
        )

    def claim_due(
        self,
        now: datetime,
        *,
        limit: int,
        worker_id: str,
        lease: timedelta,
        case_ids: Sequence[str] | None = None,
    ) -> list[str]:
        stmt = _claim_statement(self.conn.dialect.name, case_ids is not None)
        params: dict[str, Any] = {"now": now, "limit": limit, "worker": worker_id, "expires": now + lease}
        if case_ids is not None:
            params["ids"] = list(case_ids)
        return list(self.conn.scalars(stmt, params))


def _attempt_values(a: Attempt) -> dict[str, Any]:
    d = a.decline
    return {
        "case_id": a.case_id,
        "number": a.number,
        "payment_method_id": a.payment_method_id,
        "idempotency_key": a.idempotency_key,
        "at": a.at,
        "status": a.status.value,
        "trigger": a.trigger.value,
        "category": d.category.value if d else None,
        "code": d.code if d else None,
        "network_code": d.network_code if d else None,
        "advice_code": d.advice_code if d else None,
        "gateway_reference": a.gateway_reference,
    }


class SqlStore:
    """The store port on a SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> SqlStore:
        return cls(make_engine(url))

    def unit_of_work(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine)

    def next_due_at(self) -> datetime | None:
        with self.engine.connect() as conn:
            value: datetime | None = conn.scalar(_NEXT_DUE)
            return value

    def next_message_due_at(self) -> datetime | None:
        with self.engine.connect() as conn:
            value: datetime | None = conn.scalar(_NEXT_MESSAGE_DUE)
            return value

    def dispose(self) -> None:
        self.engine.dispose()
