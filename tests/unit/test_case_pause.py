"""A paused case has no timer; a transition to a closed state clears the pause."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_case import T0, make_case

from recobra.domain.case import CaseStatus, NextAction
from recobra.settings import Settings


def test_pause_clears_the_timer_and_keeps_the_reason() -> None:
    case = make_case()
    case.schedule(NextAction.RETRY, T0 + timedelta(days=1), "Retry on ...")
    assert not case.paused

    case.pause("paused by ops@acme.test: customer called")

    assert case.paused
    assert case.next_action is NextAction.PAUSED
    assert case.next_action_at is None
    assert case.next_action_reason == "paused by ops@acme.test: customer called"
    assert case.status is CaseStatus.OPEN  # a pause is a state of the timer, not of the case


def test_closing_a_paused_case_clears_the_pause() -> None:
    case = make_case()
    case.pause("paused")
    case.transition_to(CaseStatus.WRITTEN_OFF, at=T0, reason="written off")
    assert case.next_action is None
    assert not case.paused


def test_a_short_session_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="session_secret"):
        Settings(session_secret="short")
    assert Settings(session_secret="s" * 32).session_secret == "s" * 32
