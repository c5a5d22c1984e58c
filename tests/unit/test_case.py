"""The dunning case state machine: legal moves, illegal moves, events, terminal states."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from recobra.domain.case import (
    ACTIVE_STATUSES,
    TRANSITIONS,
    CaseEvent,
    CaseStatus,
    DunningCase,
    EventKind,
    NextAction,
)
from recobra.domain.declines import DeclineCategory, classify
from recobra.domain.errors import DomainError, IllegalTransition
from recobra.domain.money import Money

T0 = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
# Closed statuses; final_action_done alone may be reopened (the customer comes back).
TERMINAL = frozenset(CaseStatus) - ACTIVE_STATUSES

LEGAL = sorted((a, b) for a, targets in TRANSITIONS.items() for b in targets)
ILLEGAL = sorted((a, b) for a in CaseStatus for b in CaseStatus if b not in TRANSITIONS[a])


def make_case(status: CaseStatus = CaseStatus.OPEN, **overrides: object) -> DunningCase:
    fields: dict[str, object] = {
        "id": "case_in_1",
        "invoice_id": "in_1",
        "customer_id": "cus_1",
        "subscription_id": "sub_1",
        "amount": Money(1999, "MXN"),
        "opened_at": T0,
        "policy_name": "standard",
        "policy_version": 1,
        "segment": "default",
        "payment_method_id": "pm_1",
        "last_decline": classify("insufficient_funds"),
        "last_attempt_at": T0,
        "status": status,
    }
    fields.update(overrides)
    return DunningCase(**fields)  # type: ignore[arg-type]


def snapshot(case: DunningCase) -> dict[str, object]:
    return {f.name: copy.copy(getattr(case, f.name)) for f in dataclasses.fields(case)}


# -- the table ----------------------------------------------------------------------


def test_every_status_has_a_row() -> None:
    assert set(TRANSITIONS) == set(CaseStatus)
    for targets in TRANSITIONS.values():
        assert targets <= set(CaseStatus)


def test_terminal_and_active_statuses() -> None:
    assert {CaseStatus.OPEN, CaseStatus.EXHAUSTED} == set(ACTIVE_STATUSES)
    assert set(TERMINAL) == set(CaseStatus) - ACTIVE_STATUSES
    for status in CaseStatus:
        assert status not in TRANSITIONS[status], f"{status} must not move to itself"


def test_every_state_is_reachable_from_open() -> None:
    seen, frontier = {CaseStatus.OPEN}, [CaseStatus.OPEN]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(CaseStatus)


# -- legal moves --------------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_legal_transition_records_a_status_changed_event(source: CaseStatus, target: CaseStatus) -> None:
    case = make_case(source)
    at = T0 + timedelta(days=2)
    case.transition_to(target, at=at, reason="because the test says so")
    assert case.status is target
    assert case.events == [
        CaseEvent(
            case_id="case_in_1",
            at=at,
            kind=EventKind.STATUS_CHANGED,
            reason="because the test says so",
            from_status=source,
            to_status=target,
        )
    ]
    assert case.is_active is (target in ACTIVE_STATUSES)


CLOSING = [(a, b) for a, b in LEGAL if b in TERMINAL]


def test_every_terminal_state_can_be_reached_from_exhausted() -> None:
    assert {b for a, b in CLOSING if a is CaseStatus.EXHAUSTED} == TERMINAL
    assert {b for a, b in CLOSING if a is CaseStatus.OPEN} == TERMINAL - {CaseStatus.FINAL_ACTION_DONE}


@pytest.mark.parametrize(("source", "target"), CLOSING, ids=[f"{a}->{b}" for a, b in CLOSING])
def test_terminal_states_clear_next_action_and_set_closed_at(source: CaseStatus, target: CaseStatus) -> None:
    case = make_case(source)
    case.schedule(NextAction.RETRY, T0 + timedelta(days=1), "step 1")
    at = T0 + timedelta(days=3)
    case.transition_to(target, at=at, reason="closing")
    assert case.closed_at == at
    assert case.next_action is None
    assert case.next_action_at is None
    assert case.next_action_reason == ""
    assert not case.is_active


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (CaseStatus.OPEN, CaseStatus.EXHAUSTED),
        (CaseStatus.EXHAUSTED, CaseStatus.OPEN),
    ],
)
def test_moves_between_active_states_keep_the_case_open(source: CaseStatus, target: CaseStatus) -> None:
    case = make_case(source)
    case.schedule(NextAction.FINAL_ACTION, T0 + timedelta(days=28), "grace period over")
    case.transition_to(target, at=T0 + timedelta(days=1), reason="moving")
    assert case.closed_at is None
    assert case.next_action is NextAction.FINAL_ACTION
    assert case.next_action_at == T0 + timedelta(days=28)
    assert case.is_active


def test_exhausted_then_reopened_then_recovered_keeps_a_full_timeline() -> None:
    case = make_case()
    case.transition_to(CaseStatus.EXHAUSTED, at=T0 + timedelta(days=1), reason="no retry left")
    case.transition_to(CaseStatus.OPEN, at=T0 + timedelta(days=2), reason="new card declined softly")
    case.transition_to(CaseStatus.RECOVERED, at=T0 + timedelta(days=3), reason="retry succeeded")
    assert [(e.from_status, e.to_status) for e in case.events] == [
        (CaseStatus.OPEN, CaseStatus.EXHAUSTED),
        (CaseStatus.EXHAUSTED, CaseStatus.OPEN),
        (CaseStatus.OPEN, CaseStatus.RECOVERED),
    ]
    assert [e.reason for e in case.events] == ["no retry left", "new card declined softly", "retry succeeded"]
    assert case.closed_at == T0 + timedelta(days=3)


# -- illegal moves ------------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_illegal_transition_raises_and_changes_nothing(source: CaseStatus, target: CaseStatus) -> None:
    case = make_case(source)
    case.schedule(NextAction.RETRY, T0 + timedelta(days=1), "step 1")
    case.record(T0, EventKind.OPENED, "payment failed")
    before = snapshot(case)
    with pytest.raises(IllegalTransition) as info:
        case.transition_to(target, at=T0 + timedelta(days=1), reason="not allowed")
    assert isinstance(info.value, DomainError)
    assert info.value.field == "case.status"
    assert str(source) in info.value.reason
    assert str(target) in info.value.reason
    assert snapshot(case) == before


def test_terminal_cases_cannot_move_at_all() -> None:
    for status in TERMINAL - {CaseStatus.FINAL_ACTION_DONE}:
        for target in CaseStatus:
            case = make_case(status)
            with pytest.raises(IllegalTransition):
                case.transition_to(target, at=T0, reason="x")
            assert case.status is status
            assert case.events == []


# -- events and scheduling ----------------------------------------------------------


def test_collect_events_hands_over_and_empties_the_list() -> None:
    case = make_case()
    case.record(T0, EventKind.OPENED, "payment failed", code="insufficient_funds")
    case.record(T0, EventKind.RETRY_SCHEDULED, "retry on payday", retry_at="2026-03-13T16:00:00+00:00")
    case.transition_to(CaseStatus.EXHAUSTED, at=T0 + timedelta(days=1), reason="no retry left")
    events = case.collect_events()
    assert [e.kind for e in events] == [EventKind.OPENED, EventKind.RETRY_SCHEDULED, EventKind.STATUS_CHANGED]
    assert events[0].data == {"code": "insufficient_funds"}
    assert all(e.case_id == case.id for e in events)
    assert case.events == []
    assert case.collect_events() == []
    case.record(T0, EventKind.RETRY_SKIPPED, "hard decline")
    assert [e.kind for e in case.collect_events()] == [EventKind.RETRY_SKIPPED]
    # the list handed over is not the case's own
    assert [e.kind for e in events] == [EventKind.OPENED, EventKind.RETRY_SCHEDULED, EventKind.STATUS_CHANGED]


def test_record_returns_the_event() -> None:
    case = make_case()
    event = case.record(T0, EventKind.ATTEMPT_FAILED, "declined", attempt=1)
    assert case.events == [event]
    assert event.from_status is None
    assert event.to_status is None
    assert event.data == {"attempt": 1}


def test_schedule_and_clear() -> None:
    case = make_case()
    case.schedule(NextAction.RETRY_NOW, T0, "new card")
    assert (case.next_action, case.next_action_at, case.next_action_reason) == (
        NextAction.RETRY_NOW,
        T0,
        "new card",
    )
    case.clear_next_action()
    assert (case.next_action, case.next_action_at, case.next_action_reason) == (None, None, "")


def test_schedule_rejects_naive_times() -> None:
    case = make_case()
    with pytest.raises(DomainError) as info:
        case.schedule(NextAction.RETRY, datetime(2026, 3, 11, 9, 0), "naive")  # noqa: DTZ001
    assert info.value.field == "case.next_action_at"
    assert case.next_action is None


def test_case_rejects_naive_opened_at() -> None:
    with pytest.raises(DomainError) as info:
        make_case(opened_at=datetime(2026, 3, 10, 15, 0))  # noqa: DTZ001
    assert info.value.field == "case.opened_at"


def test_category_comes_from_the_last_decline() -> None:
    assert make_case().category is DeclineCategory.INSUFFICIENT_FUNDS
    assert make_case(last_decline=classify("lost_card")).category is DeclineCategory.HARD


def test_a_final_action_done_case_reopens_only_as_exhausted_when_the_customer_comes_back() -> None:
    for target in CaseStatus:
        if target is CaseStatus.EXHAUSTED:
            continue
        with pytest.raises(IllegalTransition):
            make_case(CaseStatus.FINAL_ACTION_DONE).transition_to(target, at=T0, reason="x")
    case = make_case(CaseStatus.EXHAUSTED)
    case.transition_to(CaseStatus.FINAL_ACTION_DONE, at=T0, reason="cancel went through")
    assert case.closed_at == T0
    case.transition_to(CaseStatus.EXHAUSTED, at=T0 + timedelta(days=5), reason="the customer came back")
    assert case.is_active
    assert case.closed_at is None
