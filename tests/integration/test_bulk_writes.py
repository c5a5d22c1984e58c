"""Writing many rows at once (on PostgreSQL, one multi-row statement per table) gives
exactly the rows that writing them one by one gives. Both backends."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from conftest import T0, TEST_POLICY, Commands, Db, EngineFactory
from sqlalchemy.exc import IntegrityError

from recobra.domain.messages import ChannelKind, MessageKind, OutboxEntry
from recobra.domain.model import SubscriptionStatus
from recobra.store.sql import SqlStore

# The test policy (retries at fixed times) with two message steps.
WITH_MESSAGES = TEST_POLICY.replace(
    'steps = [{ after = "1d" }',
    'steps = [{ action = "message", after = "0m", kind = "payment_failed", channels = ["email", "in_app"],'
    ' fallback = ["sms"], fallback_after = "1d" }, { after = "1d" },'
    ' { action = "message", after = "2d", kind = "payment_reminder", channels = ["email"] }',
)


def test_reference_rows_written_twice_in_one_batch_end_as_if_written_in_order(
    store: SqlStore, commands: Commands, db: Db
) -> None:
    first = commands.customer("1")
    second = replace(first, email="new@example.com", name="Renamed")
    sub = commands.subscription("1")
    later = replace(sub, status=SubscriptionStatus.PAST_DUE)
    with store.unit_of_work() as uow:
        uow.upsert_customers([first, commands.customer("2"), second])
        uow.upsert_subscriptions([sub, later, commands.subscription("2")])
        uow.commit()

    (customer,) = db.rows("customers", id="cus_1")
    assert (customer["email"], customer["name"]) == ("new@example.com", "Renamed")  # the last one
    # A new subscription's status is written on insert only: the first one's stays.
    assert db.subscription("sub_1")["status"] == "active"
    assert db.count("customers") == 2
    assert db.count("plans") == 1

    with store.unit_of_work() as uow:
        uow.upsert_subscriptions([later, later], update_status=True)
        uow.upsert_customers([replace(first, phone="+573001234567"), commands.customer("3")])
        uow.commit()
    assert db.subscription("sub_1")["status"] == "past_due"
    (customer,) = db.rows("customers", id="cus_1")
    assert customer["phone"] == "+573001234567"
    assert customer["email"] == first.email


def test_messages_written_together_keep_their_details_defaults_and_first_copy(
    store: SqlStore, db: Db, engine_factory: EngineFactory, commands: Commands
) -> None:
    engine = engine_factory()
    engine.handle(commands.payment_failed("1"))
    base = OutboxEntry(
        key="m:1:email",
        customer_id="cus_1",
        case_id="case_in_1",
        kind=MessageKind.PAYMENT_REMINDER,
        channel=ChannelKind.EMAIL,
        step="s1",
        due_at=T0 + timedelta(days=1),
        fallback=(ChannelKind.SMS,),
        fallback_after=timedelta(hours=6),
        context={"note": "ñandú €"},
    )
    entries = [
        base,
        replace(base, key="m:1:sms", channel=ChannelKind.SMS, fallback=(), fallback_after=None, context={}),
        replace(base, step="other"),  # the same key again: the first one is kept
    ]
    before = db.count("messages")
    with store.unit_of_work() as uow:
        uow.add_messages(entries)
        uow.commit()

    assert db.count("messages") == before + 2
    (email,) = db.rows("messages", key="m:1:email")
    assert email["step"] == "s1"
    assert email["status"] == "scheduled"
    assert (email["attempts"], email["reason"]) == (0, "")
    assert email["due_at"] == T0 + timedelta(days=1)
    assert email["data"] == {
        "fallback": ["sms"],
        "fallback_after_s": 21600.0,
        "only_if_unclicked": False,
        "is_fallback": False,
        "context": {"note": "ñandú €"},
    }
    (sms,) = db.rows("messages", key="m:1:sms")
    assert sms["data"]["fallback_after_s"] is None


def test_a_batch_of_cases_writes_the_same_rows_as_one_case_at_a_time(
    engine_factory: EngineFactory, commands: Commands, db: Db
) -> None:
    engine = engine_factory(WITH_MESSAGES)
    engine.handle_many([commands.payment_failed(str(i), event_id=f"evt_{i}") for i in range(5)])
    engine.handle(commands.payment_failed("single", event_id="evt_single"))

    def shape(key: str) -> str:
        """Everything written for the case, its own ids left out."""
        case_id = f"case_in_{key}"
        rows = {
            "case": db.case(case_id),
            "events": [{**e, "id": 0} for e in db.events(case_id)],
            "attempts": [{**a, "id": 0} for a in db.attempts(case_id)],
            "messages": sorted(
                (str({**m, "id": 0}) for m in db.rows("messages", case_id=case_id)),
            ),
        }
        return repr(rows).replace(f"_{key}", "_KEY")

    single = shape("single")
    assert "'messages': []" not in single
    for i in range(5):
        assert shape(str(i)) == single
        db.check_case(f"case_in_{i}")


def test_a_naive_time_never_reaches_the_database(store: SqlStore) -> None:
    entry = OutboxEntry(
        key="m:naive",
        customer_id="cus_1",
        case_id=None,
        kind=MessageKind.PAYMENT_REMINDER,
        channel=ChannelKind.EMAIL,
        step="s",
        due_at=T0,
    )
    naive = replace(entry, key="m:naive2")
    object.__setattr__(naive, "due_at", T0.replace(tzinfo=None))  # past the domain's own check
    with pytest.raises(Exception, match="naive datetime"), store.unit_of_work() as uow:
        uow.add_messages([entry, naive])


def test_a_new_default_card_leaves_each_customer_one_default(
    store: SqlStore, commands: Commands, db: Db
) -> None:
    with store.unit_of_work() as uow:
        uow.upsert_customers([commands.customer("1"), commands.customer("2")])
        uow.upsert_payment_methods([commands.card(k, pm_id=f"pm_{k}_old") for k in ("1", "2")])
        uow.commit()
    with store.unit_of_work() as uow:
        uow.upsert_payment_methods(
            [
                commands.card("1", pm_id="pm_1_new"),
                commands.card("2", pm_id="pm_2_spare", is_default=False),
                commands.card("2", pm_id="pm_2_old"),  # already the default: stays so
            ]
        )
        uow.commit()
    defaults = {r["id"]: r["is_default"] for r in db.rows("payment_methods")}
    assert defaults == {"pm_1_old": False, "pm_1_new": True, "pm_2_old": True, "pm_2_spare": False}


def test_a_reference_row_given_again_unchanged_is_left_alone(
    store: SqlStore, commands: Commands, db: Db, backend: str
) -> None:
    """Many events carry the same plan: rewriting (and so locking) its row for each one
    made concurrent transactions wait on each other. Unchanged rows are not written."""
    sub = commands.subscription("1")
    other = commands.subscription("2")

    def plan_version() -> object:
        # PostgreSQL's xmin changes whenever the row is written; SQLite has no such thing.
        if backend != "postgresql":
            return None
        return db.scalar("SELECT xmin::text FROM plans WHERE id = :id", id=sub.plan.id)

    with store.unit_of_work() as uow:
        uow.upsert_customers([commands.customer("1"), commands.customer("2")])
        uow.upsert_subscriptions([sub])
        uow.commit()
    written = plan_version()
    with store.unit_of_work() as uow:
        uow.upsert_subscriptions([sub, other])  # the same plan, as it is
        uow.commit()
    assert plan_version() == written
    renamed = replace(sub.plan, name="Pro (2026)")
    with store.unit_of_work() as uow:
        uow.upsert_subscriptions([replace(other, plan=renamed)])
        uow.commit()
    (plan,) = db.rows("plans", id=sub.plan.id)
    assert plan["name"] == "Pro (2026)"
    if backend == "postgresql":
        assert plan_version() != written


def test_a_unit_of_work_reads_what_it_wrote_before_committing(store: SqlStore, commands: Commands) -> None:
    """On PostgreSQL writes wait to be sent together: any statement sends them first."""
    with store.unit_of_work() as uow:
        uow.upsert_customers([commands.customer("1")])
        uow.upsert_payment_methods([commands.card("1")])
        assert uow.known_customers(["cus_1", "cus_2"]) == {"cus_1"}
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.known_customers(["cus_1"]) == {"cus_1"}


def write_a_card_the_database_refuses(store: SqlStore, commands: Commands, *, rehearse: bool) -> None:
    """A customer, then a card of an unknown customer (refused by the foreign key), in
    one unit of work ended by ``commit`` or ``rehearse_commit``."""
    with store.unit_of_work() as uow:
        uow.upsert_customers([commands.customer("1")])
        uow.upsert_payment_methods([replace(commands.card("1"), customer_id="cus_nobody")])
        if rehearse:
            uow.rehearse_commit()
        else:
            uow.commit()


def test_a_write_that_fails_fails_the_unit_of_work_and_leaves_nothing(
    store: SqlStore, commands: Commands, db: Db
) -> None:
    """A write refused by the database (here a card of an unknown customer) raises the
    database's error, as SQLAlchemy names it, whenever it is sent; nothing is kept."""

    with pytest.raises(IntegrityError, match="payment_methods"):
        write_a_card_the_database_refuses(store, commands, rehearse=False)
    assert db.count("customers") == 0
    assert db.count("payment_methods") == 0
    # The connection goes back to the pool clean: the next unit of work writes normally.
    with store.unit_of_work() as uow:
        uow.upsert_customers([commands.customer("2")])
        uow.commit()
    assert [c["id"] for c in db.rows("customers")] == ["cus_2"]


def test_a_rehearsed_commit_sends_every_write_then_keeps_nothing(
    store: SqlStore, commands: Commands, db: Db, engine_factory: EngineFactory
) -> None:
    """``rehearse_commit`` is ``commit`` ending in a rollback: every write reaches the
    database (which checks it: a refused one raises as at a real commit), none is kept."""
    with pytest.raises(IntegrityError, match="payment_methods"):
        write_a_card_the_database_refuses(store, commands, rehearse=True)
    assert not any(db.counts().values())

    engine = engine_factory()
    failed = commands.payment_failed("1")
    (rehearsed,) = engine.rehearse([failed])
    assert rehearsed.case_ids == (Commands.case_id("1"),)
    assert not rehearsed.duplicate
    assert not any(db.counts().values())
    # The rehearsed event was not remembered: the real one opens its case.
    (applied,) = engine.apply_events([failed])
    assert applied == rehearsed
    assert db.count("cases") == 1
