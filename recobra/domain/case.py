"""The dunning case: one per failed invoice, an explicit state machine.

States and their legal moves are data (``TRANSITIONS``); ``transition_to`` is
the only way to change state and raises on an illegal move. Every transition is
recorded as a ``CaseEvent`` with its reason, collected on the case for the
engine to store in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from recobra.domain.declines import Decline, DeclineCategory
from recobra.domain.errors import IllegalTransition
from recobra.domain.model import require_aware
from recobra.domain.money import Money


class CaseStatus(StrEnum):
    """Where a dunning case stands."""

    OPEN = "open"
    """Retrying on the policy's timeline, or waiting for the customer to fix the payment."""
    RECOVERED = "recovered"
    """A retry collected the invoice. Terminal."""
    EXHAUSTED = "exhausted"
    """No automatic retry left; the case waits for the customer until the final action
    (at the end of the dunning window plus the grace period). A new payment method
    still triggers an immediate retry, which recovers the case or, on a retryable
    decline inside the window, reopens it."""
    FINAL_ACTION_DONE = "final_action_done"
    """The policy's final action (cancel, pause or mark unpaid) went through the gateway.
    Closed; only the customer coming back (reactivation) reopens it, as exhausted, to
    collect the invoice that is still owed."""
    CANCELED = "canceled"
    """The customer canceled the subscription; dunning stops. Terminal."""
    WRITTEN_OFF = "written_off"
    """An operator gave up on the invoice. Terminal."""
    PAID_OUT_OF_BAND = "paid_out_of_band"
    """The invoice was paid some other way (bank transfer, the billing system's own retry). Terminal."""


TRANSITIONS: dict[CaseStatus, frozenset[CaseStatus]] = {
    CaseStatus.OPEN: frozenset(
        {
            CaseStatus.RECOVERED,
            CaseStatus.EXHAUSTED,
            CaseStatus.CANCELED,
            CaseStatus.WRITTEN_OFF,
            CaseStatus.PAID_OUT_OF_BAND,
        }
    ),
    CaseStatus.EXHAUSTED: frozenset(
        {
            CaseStatus.OPEN,
            CaseStatus.RECOVERED,
            CaseStatus.FINAL_ACTION_DONE,
            CaseStatus.CANCELED,
            CaseStatus.WRITTEN_OFF,
            CaseStatus.PAID_OUT_OF_BAND,
        }
    ),
    CaseStatus.RECOVERED: frozenset(),
    CaseStatus.FINAL_ACTION_DONE: frozenset({CaseStatus.EXHAUSTED}),
    CaseStatus.CANCELED: frozenset(),
    CaseStatus.WRITTEN_OFF: frozenset(),
    CaseStatus.PAID_OUT_OF_BAND: frozenset(),
}

ACTIVE_STATUSES = frozenset({CaseStatus.OPEN, CaseStatus.EXHAUSTED})


class NextAction(StrEnum):
    """What the engine does when ``next_action_at`` comes."""

    RETRY = "retry"
    """A policy retry: charge again, spending one attempt of the budget."""
    RETRY_NOW = "retry_now"
    """An immediate retry outside the budget (new payment method, operator request)."""
    FINAL_ACTION = "final_action"
    """The grace period is over: cancel, pause or mark unpaid through the gateway."""
    OPERATOR_RETRY = "operator_retry"
    """An operator asked for a charge now: outside the budget, then the policy goes on."""
    PAUSED = "paused"
    """An operator paused dunning: no retry, dunning message or final action until it is
    resumed (the case has no timer meanwhile). A new payment method still retries at once."""


class FinalAction(StrEnum):
    """What happens to the subscription when dunning fails."""

    CANCEL = "cancel"
    PAUSE = "pause"
    MARK_UNPAID = "mark_unpaid"


class EventKind(StrEnum):
    """Kinds of case events (the case's timeline)."""

    OPENED = "opened"
    RETRY_SCHEDULED = "retry_scheduled"
    ATTEMPT_STARTED = "attempt_started"
    ATTEMPT_FAILED = "attempt_failed"
    ATTEMPT_SUCCEEDED = "attempt_succeeded"
    ATTEMPT_UNKNOWN = "attempt_unknown"
    ATTEMPT_RECONCILED = "attempt_reconciled"
    NETWORK_RULE_ADJUSTED = "network_rule_adjusted"
    RETRY_SKIPPED = "retry_skipped"
    PAYMENT_METHOD_UPDATED = "payment_method_updated"
    STATUS_CHANGED = "status_changed"
    FINAL_ACTION_SCHEDULED = "final_action_scheduled"
    FINAL_ACTION_FAILED = "final_action_failed"
    RETRY_REQUESTED = "retry_requested"
    """An operator asked for a retry now."""
    DUNNING_PAUSED = "dunning_paused"
    DUNNING_RESUMED = "dunning_resumed"
    LINK_RESENT = "link_resent"
    """An operator sent the update-payment link again (a reminder through the outbox)."""


@dataclass(frozen=True, slots=True)
class CaseEvent:
    """One line of a case's timeline: what happened, when, and why."""

    case_id: str
    at: datetime
    kind: EventKind
    reason: str
    from_status: CaseStatus | None = None
    to_status: CaseStatus | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class DunningCase:
    """A failed invoice being recovered.

    ``attempts`` is the explicit count of retries made (all triggers);
    ``budget_used`` counts those that spend the policy's attempt budget;
    ``errors_in_row`` counts consecutive processing errors (for fast backoff);
    ``version`` is the stored row's version, for optimistic concurrency: a save of
    a case that someone else changed since it was loaded is refused.
    """

    id: str
    invoice_id: str
    customer_id: str
    subscription_id: str | None
    amount: Money
    opened_at: datetime
    policy_name: str
    policy_version: int
    segment: str
    payment_method_id: str
    last_decline: Decline
    last_attempt_at: datetime
    status: CaseStatus = CaseStatus.OPEN
    attempts: int = 0
    budget_used: int = 0
    errors_in_row: int = 0
    next_action: NextAction | None = None
    next_action_at: datetime | None = None
    next_action_reason: str = ""
    closed_at: datetime | None = None
    final_action: FinalAction | None = None
    version: int = 0
    events: list[CaseEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Kept in UTC so that day arithmetic (windows, grace) is on instants.
        self.opened_at = require_aware("case.opened_at", self.opened_at).astimezone(UTC)
        self.last_attempt_at = require_aware("case.last_attempt_at", self.last_attempt_at).astimezone(UTC)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def category(self) -> DeclineCategory:
        return self.last_decline.category

    def record(self, at: datetime, kind: EventKind, reason: str, **data: Any) -> CaseEvent:
        event = CaseEvent(self.id, at, kind, reason, data=data)
        self.events.append(event)
        return event

    def transition_to(self, status: CaseStatus, *, at: datetime, reason: str) -> None:
        """Move to ``status`` or raise ``IllegalTransition``; records the event."""
        if status not in TRANSITIONS[self.status]:
            raise IllegalTransition(
                "case.status", f"{self.id}: cannot go from {self.status} to {status} ({reason})"
            )
        previous = self.status
        self.status = status
        self.events.append(CaseEvent(self.id, at, EventKind.STATUS_CHANGED, reason, previous, status))
        if status not in ACTIVE_STATUSES:
            self.closed_at = at
            self.clear_next_action()
        else:
            self.closed_at = None  # reopened

    def schedule(self, action: NextAction, at: datetime, reason: str) -> None:
        require_aware("case.next_action_at", at)
        self.next_action = action
        self.next_action_at = at
        self.next_action_reason = reason

    def pause(self, reason: str) -> None:
        """No timer until resumed: the engine neither charges nor acts on the case."""
        self.next_action = NextAction.PAUSED
        self.next_action_at = None
        self.next_action_reason = reason

    @property
    def paused(self) -> bool:
        return self.next_action is NextAction.PAUSED

    def clear_next_action(self) -> None:
        self.next_action = None
        self.next_action_at = None
        self.next_action_reason = ""

    def collect_events(self) -> list[CaseEvent]:
        """Hand the recorded events to the engine (which stores them) and forget them."""
        events, self.events = self.events, []
        return events
