"""Leaving and coming back: why a customer cancels, the save offer that fits the
reason, and the rules for pausing, discounting, changing plan and reactivating.

Plain values and rules: no I/O and no clock (times are arguments). The operator
chooses the offers in the policy file (``[save_offers]``); the domain checks that
each one makes sense and decides which one a customer sees.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from recobra.domain.errors import DomainError
from recobra.domain.model import Plan, Subscription, SubscriptionStatus, require_aware

MAX_PAUSE_MONTHS = 3
MAX_DISCOUNT_CYCLES = 12
MAX_COMMENT = 2000


class ExitReason(StrEnum):
    """Why a customer leaves, as they answer the exit survey."""

    TOO_EXPENSIVE = "too_expensive"
    """The price is more than the service is worth to them now."""
    NOT_USING = "not_using"
    """They do not use it enough."""
    MISSING_FEATURE = "missing_feature"
    """It lacks something they need."""
    SWITCHING = "switching"
    """They are moving to another product."""
    TECHNICAL_PROBLEMS = "technical_problems"
    """It did not work well for them."""
    TEMPORARY = "temporary"
    """They need a break (season, travel, budget) and may come back."""
    OTHER = "other"
    """Something else: a comment is required."""


class OfferKind(StrEnum):
    """What a save offer gives. The value is what ``exit_surveys.offer`` records."""

    PAUSE = "pause"
    """Collection stops for ``months`` (1-3); the subscription resumes afterwards."""
    DISCOUNT = "discount"
    """``percent`` off the next ``cycles`` invoices."""
    DOWNGRADE = "downgrade"
    """Move to a cheaper plan (``plan_id``)."""


@dataclass(frozen=True, slots=True)
class SaveOffer:
    """One save offer, as the operator configured it."""

    kind: OfferKind
    months: int = 0
    percent: int = 0
    cycles: int = 0
    plan_id: str = ""

    def __post_init__(self) -> None:
        if self.kind is OfferKind.PAUSE:
            if not 1 <= self.months <= MAX_PAUSE_MONTHS:
                raise DomainError(
                    "months", f"a pause lasts 1 to {MAX_PAUSE_MONTHS} months, got {self.months}"
                )
            if self.percent or self.cycles or self.plan_id:
                raise DomainError("offer", "a pause takes only 'months'")
        elif self.kind is OfferKind.DISCOUNT:
            if not 1 <= self.percent <= 100:
                raise DomainError("percent", f"must be 1-100, got {self.percent}")
            if not 1 <= self.cycles <= MAX_DISCOUNT_CYCLES:
                raise DomainError("cycles", f"must be 1-{MAX_DISCOUNT_CYCLES} invoices, got {self.cycles}")
            if self.months or self.plan_id:
                raise DomainError("offer", "a discount takes only 'percent' and 'cycles'")
        else:
            if not self.plan_id.strip():
                raise DomainError("plan", "a downgrade needs the id of the cheaper plan")
            if self.months or self.percent or self.cycles:
                raise DomainError("offer", "a downgrade takes only 'plan'")

    def describe(self) -> str:
        """Plain words for operators' logs and events."""
        match self.kind:
            case OfferKind.PAUSE:
                return f"pause for {self.months} month(s)"
            case OfferKind.DISCOUNT:
                return f"{self.percent}% off the next {self.cycles} invoice(s)"
            case OfferKind.DOWNGRADE:
                return f"move to the cheaper plan {self.plan_id!r}"


def offer_for(
    reason: ExitReason,
    offers: Mapping[ExitReason, SaveOffer],
    *,
    current: Plan | None,
    plans: Mapping[str, Plan],
) -> SaveOffer | None:
    """The offer a customer leaving for ``reason`` sees, or None.

    A downgrade is shown only when the target plan is known, differs from the
    current one, is in the same currency and costs less: an offer that is not a
    saving would be a trick, not a favour."""
    offer = offers.get(reason)
    if offer is None or offer.kind is not OfferKind.DOWNGRADE:
        return offer
    target = plans.get(offer.plan_id)
    if target is None or current is None or target.id == current.id:
        return None
    if target.price.currency != current.price.currency:
        return None
    if target.price.amount_minor >= current.price.amount_minor:
        return None
    return offer


def add_months(moment: datetime, months: int) -> datetime:
    """The same day and time ``months`` later (the month's last day when it is shorter)."""
    require_aware("moment", moment)
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


CANCELABLE = frozenset(
    {
        SubscriptionStatus.ACTIVE,
        SubscriptionStatus.PAST_DUE,
        SubscriptionStatus.UNPAID,
        SubscriptionStatus.PAUSED,
    }
)
"""Statuses from which a customer may cancel (or be offered a save)."""

REACTIVATABLE = frozenset({SubscriptionStatus.CANCELED, SubscriptionStatus.PAUSED})
"""Statuses from which a customer may come back in one step."""


def check_cancelable(status: SubscriptionStatus) -> None:
    if status not in CANCELABLE:
        raise DomainError("subscription.status", f"a {status} subscription cannot be canceled")


def check_reactivatable(status: SubscriptionStatus) -> None:
    if status not in REACTIVATABLE:
        raise DomainError("subscription.status", f"a {status} subscription is not canceled or paused")


@dataclass(frozen=True, slots=True)
class ExitAnswer:
    """A customer's answer to the exit survey, checked."""

    reason: ExitReason
    comment: str = ""
    anonymous: bool = False

    def __post_init__(self) -> None:
        comment = self.comment.strip()
        object.__setattr__(self, "comment", comment)
        if self.reason is ExitReason.OTHER and not comment:
            raise DomainError("comment", "tell us the reason when you choose 'other'")
        if len(comment) > MAX_COMMENT:
            raise DomainError("comment", f"at most {MAX_COMMENT} characters")


class ChangeKind(StrEnum):
    """What happened to a subscription (the ``subscription_events`` stream)."""

    CANCELED = "canceled"
    PAUSED = "paused"
    DISCOUNTED = "discounted"
    PLAN_CHANGED = "plan_changed"
    REACTIVATED = "reactivated"


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    """One line of a subscription's own timeline, for the operator's billing and CRM."""

    subscription_id: str
    customer_id: str
    at: datetime
    kind: ChangeKind
    reason: str
    data: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Standing:
    """A subscription with what the customer's own changes added to it."""

    subscription: Subscription
    canceled_at: datetime | None = None
    paused_until: datetime | None = None
    discount_percent: int | None = None
    discount_cycles: int | None = None
