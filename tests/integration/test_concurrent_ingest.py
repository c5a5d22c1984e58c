"""Concurrent event batches that touch the same rows in different orders (as API
requests do) neither deadlock into errors nor lose events."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

from conftest import T0, Commands, Db, EngineFactory

from recobra.domain.model import Interval, Plan
from recobra.domain.money import Money
from recobra.engine.commands import PaymentFailed
from recobra.store.sql import SqlStore


def test_concurrent_batches_sharing_plans_all_land(
    engine_factory: EngineFactory,
    store_factory,
    commands: Commands,
    db: Db,  # type: ignore[no-untyped-def]
) -> None:
    plans = [Plan(f"plan-{i}", f"Plan {i}", Interval.MONTH, Money(1000 + i, "USD")) for i in range(6)]
    events: list[PaymentFailed] = []
    for i in range(120):
        event = commands.payment_failed(str(i), occurred_at=T0 + timedelta(minutes=i))
        assert event.subscription is not None
        sub = event.subscription.__class__(
            event.subscription.id,
            event.subscription.customer_id,
            plans[i % len(plans)],
            event.subscription.status,
            event.subscription.started_at,
        )
        events.append(
            PaymentFailed(
                event.event_id,
                event.occurred_at,
                event.customer,
                event.invoice,
                event.payment_method,
                sub,
                event.decline_code,
            )
        )
    batches = [events[i : i + 12] for i in range(0, len(events), 12)]
    rng = random.Random(7)
    for batch in batches:
        rng.shuffle(batch)  # each batch upserts the shared plans in its own order
    errors: list[BaseException] = []
    stores: list[SqlStore] = []

    def run(my_batches: list[list[PaymentFailed]]) -> None:
        store = store_factory()
        stores.append(store)
        engine = engine_factory(store=store)
        try:
            for batch in my_batches:
                engine.handle_many(batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(batches[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert db.count("cases") == 120
    assert db.count("processed_events") == 120


def test_the_same_event_delivered_at_once_twice_is_applied_once(
    engine_factory: EngineFactory,
    store_factory,
    commands: Commands,
    db: Db,  # type: ignore[no-untyped-def]
) -> None:
    event = commands.payment_failed("1")
    results: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2, timeout=30)

    def deliver() -> None:
        engine = engine_factory(store=store_factory())
        barrier.wait()
        try:
            results.append(engine.handle(event).duplicate)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(results) == [False, True]
    assert db.count("cases") == 1
