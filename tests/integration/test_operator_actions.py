"""Operators' actions on a case through the engine, on a real database: retry now,
pause and resume dunning, send the update-payment link again."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from conftest import T0, Commands, Db, EngineFactory, fixed_policy

from recobra.channels.in_app import InAppChannel
from recobra.domain.case import CaseStatus, NextAction
from recobra.domain.errors import IllegalTransition
from recobra.domain.messages import ChannelKind, DeliveryRules
from recobra.engine.messenger import Messenger
from recobra.engine.service import Engine
from recobra.messages.composer import Sender, TemplateComposer
from recobra.messages.links import LinkSigner
from recobra.messages.render import Renderer
from recobra.policyfile import parse_policy
from recobra.store.sql import SqlStore

DAY, HOUR = timedelta(days=1), timedelta(hours=1)
SECRET = "operator-actions-link-secret-0123456789"
BASE = "https://pay.example.com"
OPERATOR = "ops@acme.test"
CASE = Commands.case_id("1")

POLICY = fixed_policy(
    '{ action = "message", after = "0m", kind = "payment_failed", channels = ["in_app"] }',
    '{ action = "message", after = "2d", kind = "payment_reminder", channels = ["in_app"] }',
    name="operators",
)


@pytest.fixture
def engine(engine_factory: EngineFactory) -> Engine:
    return engine_factory(POLICY)


@pytest.fixture
def messenger(store: SqlStore) -> Messenger:
    policies = parse_policy(POLICY).policies
    composer = TemplateComposer(
        Renderer(None), LinkSigner(SECRET, BASE), policies, Sender("Acme", "help@acme.test")
    )
    return Messenger(
        store,
        {ChannelKind.IN_APP: InAppChannel()},
        composer,
        rules=DeliveryRules(max_per_day=10, max_per_week=20),
    )


def kinds(db: Db) -> list[str]:
    return [e["kind"] for e in db.events(CASE)]


def test_retry_now_charges_at_once_outside_the_budget(engine: Engine, commands: Commands, db: Db) -> None:
    engine.handle(commands.payment_failed("1", token="tok_sim_ok"))

    case = engine.retry_now(CASE, T0 + HOUR, operator=OPERATOR)

    assert case.status is CaseStatus.RECOVERED
    (attempt,) = [a for a in db.attempts(CASE) if a["number"] >= 1]
    assert attempt["trigger"] == "operator"
    assert attempt["status"] == "succeeded"
    row = db.check_case(CASE)
    assert row["budget_used"] == 0
    requested = [e for e in db.events(CASE) if e["kind"] == "retry_requested"]
    assert requested[0]["reason"] == f"retry now requested by {OPERATOR}"
    assert requested[0]["data"]["operator"] == OPERATOR


def test_a_declined_operator_retry_goes_back_to_the_policy(
    engine: Engine, commands: Commands, db: Db
) -> None:
    engine.handle(commands.payment_failed("1"))
    case = engine.retry_now(CASE, T0 + HOUR, operator=OPERATOR)
    assert case.status is CaseStatus.OPEN
    assert case.next_action is NextAction.RETRY
    assert case.next_action_at == T0 + DAY  # the budget is untouched: the policy's first step
    db.check_case(CASE)


def test_pause_stops_retries_and_messages_until_resumed(
    engine: Engine, messenger: Messenger, commands: Commands, db: Db
) -> None:
    engine.handle(commands.payment_failed("1"))
    messenger.dispatch(T0)  # the first notice goes out

    case = engine.pause_dunning(CASE, T0 + HOUR, operator=OPERATOR, reason="customer called")

    assert case.next_action is NextAction.PAUSED
    row = db.case(CASE)
    assert row["next_action"] == "paused"
    assert row["next_action_at"] is None
    assert "customer called" in row["next_action_reason"]
    paused = next(e for e in db.events(CASE) if e["kind"] == "dunning_paused")
    assert paused["reason"].startswith(f"dunning paused by {OPERATOR}: customer called")
    # Nothing happens while paused: no retry on day 1 or 3, the day-2 reminder waits.
    assert engine.tick(T0 + 4 * DAY).claimed == 0
    report = messenger.dispatch(T0 + 2 * DAY + HOUR)
    assert report.sent == 0
    assert report.deferred == 1
    reminder = db.rows("messages", key=f"{CASE}:m1:in_app")[0]
    assert reminder["status"] == "scheduled"
    assert "paused" in reminder["reason"]
    assert [a["number"] for a in db.attempts(CASE)] == [0]

    with pytest.raises(IllegalTransition, match="already paused"):
        engine.pause_dunning(CASE, T0 + 2 * HOUR, operator=OPERATOR)

    resumed = engine.resume_dunning(CASE, T0 + 4 * DAY, operator=OPERATOR)

    assert resumed.next_action is NextAction.RETRY
    assert resumed.next_action_at is not None
    assert resumed.next_action_at == T0 + 4 * DAY  # day 1's retry is overdue: now
    assert kinds(db)[-3:] == ["dunning_resumed", "retry_scheduled", "retry_scheduled"]
    assert "passed while paused" in db.events(CASE)[-1]["reason"]
    assert engine.tick(resumed.next_action_at).attempts == 1
    assert messenger.dispatch(T0 + 4 * DAY + 2 * HOUR).sent == 1  # the reminder, at last
    db.check_case(CASE)
    with pytest.raises(IllegalTransition, match="not paused"):
        engine.resume_dunning(CASE, T0 + 5 * DAY, operator=OPERATOR)


def test_resend_link_queues_a_reminder_with_a_fresh_link(
    engine: Engine, messenger: Messenger, commands: Commands, db: Db
) -> None:
    engine.handle(commands.payment_failed("1"))
    engine.pause_dunning(CASE, T0 + HOUR, operator=OPERATOR)
    at = T0 + 2 * HOUR

    engine.resend_link(CASE, at, operator=OPERATOR)

    resent = [m for m in db.rows("messages") if m["step"].startswith("resend@")]
    assert len(resent) == 1
    assert resent[0]["kind"] == "payment_reminder"
    assert resent[0]["channel"] == "in_app"
    assert resent[0]["due_at"] == at
    event = next(e for e in db.events(CASE) if e["kind"] == "link_resent")
    assert event["reason"] == f"update-payment link sent again by {OPERATOR} (in_app)"
    # It goes out although dunning is paused (the operator asked for it), with a new link.
    report = messenger.dispatch(at)
    assert report.sent >= 1
    sent = db.rows("messages", key=resent[0]["key"])[0]
    assert sent["status"] == "sent"
    link = str((sent["data"] or {}).get("link") or "")
    match = re.search(r"/p/update_payment/([A-Za-z0-9_.-]+)", link)
    assert match, sent["data"]
    verified = LinkSigner(SECRET, BASE).verify("update_payment", match.group(1), now=at)
    assert verified.subject == CASE


def test_operator_actions_refuse_closed_and_unknown_cases(engine: Engine, commands: Commands, db: Db) -> None:
    engine.handle(commands.payment_failed("1"))
    engine.write_off(CASE, T0 + HOUR, reason="insolvent", operator=OPERATOR)
    before = db.counts()
    for act in (engine.retry_now, engine.pause_dunning, engine.resend_link):
        with pytest.raises(IllegalTransition, match="written_off"):
            act(CASE, T0 + 2 * HOUR, operator=OPERATOR)
        with pytest.raises(LookupError):
            act("case_nope", T0 + 2 * HOUR, operator=OPERATOR)
    with pytest.raises(ValueError, match="operator"):
        engine.pause_dunning(CASE, T0 + 2 * HOUR, operator=" ")
    assert db.counts() == before
