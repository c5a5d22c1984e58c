"""Group commit (recobra.web.ingest): concurrent requests' events share transactions, yet
each request stays all or nothing, is answered after its commit, and sees duplicates
as if the requests had come one after another. Both backends."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import httpx
import pytest
from conftest import T0, Commands, Db, EngineFactory
from test_api import failed, make_services

from recobra.domain.case import DunningCase
from recobra.engine.commands import Command
from recobra.engine.service import HandleResult
from recobra.ports import ConcurrentUpdate
from recobra.store.keys import create_key
from recobra.store.sql import SqlStore, SqlUnitOfWork
from recobra.web.app import create_app
from recobra.web.ingest import GroupCommit

POISON_INVOICE = "in_poison"


class DiskFullOnPoison(SqlStore):
    """The real store, except that writing the case of ``in_poison`` fails after the
    rows were sent, inside the transaction (as a full disk or a lost connection would)."""

    def unit_of_work(self) -> SqlUnitOfWork:
        uow = super().unit_of_work()
        add_cases = uow.add_cases

        def failing(cases: Sequence[DunningCase]) -> None:
            add_cases(cases)
            if any(c.invoice_id == POISON_INVOICE for c in cases):
                raise RuntimeError("could not extend the file: no space left on device")

        uow.add_cases = failing  # type: ignore[method-assign]
        return uow


async def submit_together(group: GroupCommit, requests: list[list[Command]]) -> list[Any]:
    """Submit every request at once (they queue before the writer runs)."""
    return await asyncio.gather(*(group.submit(r) for r in requests), return_exceptions=True)


def test_concurrent_requests_share_transactions_and_each_gets_its_own_results(
    engine_factory: EngineFactory, commands: Commands, db: Db
) -> None:
    engine = engine_factory()
    group = GroupCommit(engine.apply_events)
    requests = [[commands.payment_failed(f"{i}-{j}") for j in range(i % 3 + 1)] for i in range(12)]

    answers = asyncio.run(submit_together(group, requests))

    for request, answer in zip(requests, answers, strict=True):
        assert [r.event_id for r in answer] == [c.event_id for c in request]
        assert all(not r.duplicate for r in answer)
        assert [r.case_ids for r in answer] == [(f"case_{c.invoice.id}",) for c in request]  # type: ignore[attr-defined]
    assert group.stats.requests == 12
    assert group.stats.transactions == 1  # all twelve were queued before the first write
    assert group.stats.largest == 12
    assert db.count("cases") == db.count("processed_events") == sum(len(r) for r in requests)


def test_one_failing_request_fails_alone_and_the_others_land(
    store_factory: Any, engine_factory: EngineFactory, commands: Commands, db: Db
) -> None:
    store = DiskFullOnPoison(store_factory().engine)
    engine = engine_factory(store=store)
    group = GroupCommit(engine.apply_events)
    first = [commands.payment_failed("a1"), commands.payment_failed("a2")]
    poisoned = [commands.payment_failed("p1"), commands.payment_failed("poison")]
    last = [commands.payment_failed("b1")]

    answers = asyncio.run(submit_together(group, [first, poisoned, last]))

    assert [r.case_ids for r in answers[0]] == [("case_in_a1",), ("case_in_a2",)]
    assert isinstance(answers[1], RuntimeError)
    assert [r.case_ids for r in answers[2]] == [("case_in_b1",)]
    assert group.stats.fallbacks == 1
    # The failed request wrote nothing at all, not even its other event ...
    cases = {r["id"] for r in db.rows("cases")}
    assert cases == {"case_in_a1", "case_in_a2", "case_in_b1"}
    events = {r["event_id"] for r in db.rows("processed_events")}
    assert events == {c.event_id for c in first + last}
    assert not db.rows("customers", id="cus_p1")
    # ... so sending it again (once the disk has room) applies it whole.
    retried = asyncio.run(GroupCommit(engine_factory().apply_events).submit(poisoned))
    assert [r.duplicate for r in retried] == [False, False]
    assert db.count("cases") == 5


def test_a_conflict_is_answered_to_its_request_only(
    engine_factory: EngineFactory, commands: Commands, db: Db
) -> None:
    engine = engine_factory()
    unlucky = commands.payment_failed("unlucky")

    def apply(batch: Sequence[Command]) -> list[HandleResult]:
        if any(c.event_id == unlucky.event_id for c in batch):
            raise ConcurrentUpdate("a worker changed the case meanwhile")
        return engine.apply_events(batch)

    group = GroupCommit(apply)
    answers = asyncio.run(
        submit_together(group, [[commands.payment_failed("x")], [unlucky], [commands.payment_failed("y")]])
    )
    assert isinstance(answers[1], ConcurrentUpdate)
    assert not isinstance(answers[0], BaseException)
    assert not isinstance(answers[2], BaseException)
    assert {r["id"] for r in db.rows("cases")} == {"case_in_x", "case_in_y"}


def test_duplicates_across_requests_of_one_group_are_reported_as_if_in_order(
    engine_factory: EngineFactory, commands: Commands, db: Db
) -> None:
    group = GroupCommit(engine_factory().apply_events)
    one = commands.payment_failed("1", event_id="evt_same")
    two = commands.payment_failed("2")

    answers = asyncio.run(submit_together(group, [[one], [one, two], [two]]))

    assert [[r.duplicate for r in a] for a in answers] == [[False], [True, False], [True]]
    assert group.stats.transactions == 1
    assert db.count("cases") == 2


def test_each_request_is_answered_only_after_its_events_are_committed(
    engine_factory: EngineFactory, commands: Commands, db: Db
) -> None:
    engine = engine_factory()
    group = GroupCommit(engine.apply_events)

    async def send_and_look(key: str) -> int:
        await group.submit([commands.payment_failed(key)])
        # Another connection already sees the case when the answer arrives.
        return len(db.rows("cases", id=f"case_in_{key}"))

    async def main() -> list[int]:
        return await asyncio.gather(*(send_and_look(str(i)) for i in range(6)))

    assert asyncio.run(main()) == [1] * 6


def test_a_large_backlog_is_cut_into_bounded_transactions(
    engine_factory: EngineFactory, commands: Commands, db: Db
) -> None:
    group = GroupCommit(engine_factory().apply_events, max_events=5)
    requests = [[commands.payment_failed(f"{i}-{j}") for j in range(2)] for i in range(7)]
    requests.append([commands.payment_failed(f"big-{j}") for j in range(8)])  # alone: over the bound

    answers = asyncio.run(submit_together(group, requests))

    assert all(len(a) == len(r) for a, r in zip(answers, requests, strict=True))
    assert group.stats.transactions == 5  # 2+2, 2+2, 2+2, 2, then the large one alone
    assert db.count("cases") == 22


def test_concurrent_http_requests_are_grouped_and_all_answered(
    store: SqlStore, engine_factory: EngineFactory, db: Db, database_url: str
) -> None:
    services = make_services(store, engine_factory(), database_url, lambda: T0 + timedelta(hours=1))
    _, key = create_key(store.engine, "group", T0)
    app = create_app(services)

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"Authorization": f"Bearer {key}"}
            sends = [
                client.post("/api/v1/events", json=failed(f"{i:02d}"), headers=headers) for i in range(16)
            ]
            both = [failed("03"), failed("99")]  # 03 is also sent alone, concurrently
            sends.append(client.post("/api/v1/events", json=both, headers=headers))
            return await asyncio.gather(*sends)

    responses = asyncio.run(main())

    assert [r.status_code for r in responses] == [200] * 17
    alone = [r.json()["results"][0] for r in responses[:16]]
    together = responses[16].json()["results"]
    for i, result in enumerate(alone):
        assert result["id"] == f"evt_failed_{i:02d}"
        assert result["case_ids"] == ([] if result["duplicate"] else [f"case_in_{i:02d}"])
    # Whichever came first applied evt_failed_03; the other reports a duplicate.
    assert sorted([alone[3]["duplicate"], together[0]["duplicate"]]) == [False, True]
    assert together[1] == {"id": "evt_failed_99", "duplicate": False, "case_ids": ["case_in_99"], "note": ""}
    stats = services.group_commit.stats
    assert stats.requests == 17
    assert stats.transactions < 17
    assert db.count("cases") == 17


@pytest.mark.parametrize("size", [1, 3])
def test_a_lone_request_is_written_at_once(
    engine_factory: EngineFactory, commands: Commands, db: Db, size: int
) -> None:
    group = GroupCommit(engine_factory().apply_events)
    answer = asyncio.run(group.submit([commands.payment_failed(str(i)) for i in range(size)]))
    assert len(answer) == size
    assert group.stats.transactions == 1
    assert db.count("cases") == size


def test_a_second_writer_takes_new_requests_while_the_first_transaction_is_open(
    engine_factory: EngineFactory, commands: Commands, db: Db
) -> None:
    engine = engine_factory()
    second_started = threading.Event()
    calls: list[list[str]] = []

    def apply(batch: Sequence[Command]) -> list[HandleResult]:
        calls.append([c.event_id for c in batch])
        if len(calls) == 1:
            assert second_started.wait(10), "the second request waited for the first transaction"
        else:
            second_started.set()
        return engine.apply_events(batch)

    group = GroupCommit(apply, writers=2)
    first, second = commands.payment_failed("1"), commands.payment_failed("2")

    async def main() -> list[list[HandleResult]]:
        one = asyncio.ensure_future(group.submit([first]))
        await asyncio.sleep(0.05)  # the first writer is in its transaction now
        return [*await asyncio.gather(one, group.submit([second]))]

    answers = asyncio.run(main())

    assert calls == [[first.event_id], [second.event_id]]
    assert [a[0].case_ids for a in answers] == [("case_in_1",), ("case_in_2",)]
    assert db.count("cases") == 2


def test_a_service_process_writes_one_transaction_at_a_time(
    store: SqlStore, engine_factory: EngineFactory, database_url: str
) -> None:
    services = make_services(store, engine_factory(), database_url, lambda: T0)
    assert services.group_commit.writers == 1
    assert services.group_commit is services.group_commit  # one per service


def test_requests_one_after_another_are_each_written(
    engine_factory: EngineFactory, commands: Commands, db: Db
) -> None:
    group = GroupCommit(engine_factory().apply_events, writers=1)

    async def main() -> None:
        for i in range(20):  # each arrives as the previous writer has just finished
            await asyncio.wait_for(group.submit([commands.payment_failed(str(i))]), timeout=30)

    asyncio.run(main())
    assert group.stats.transactions == 20
    assert db.count("cases") == 20
