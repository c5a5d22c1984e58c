"""Leaving and coming back: save offers in policy files, and the domain's rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from recobra.domain.errors import DomainError
from recobra.domain.leaving import (
    CANCELABLE,
    REACTIVATABLE,
    ExitAnswer,
    ExitReason,
    OfferKind,
    SaveOffer,
    add_months,
    offer_for,
)
from recobra.domain.model import Interval, Plan, SubscriptionStatus
from recobra.domain.money import Money
from recobra.policyfile import PolicyError, load_default_policy, parse_policy

BASE = """
name = "t"
version = 1
default_policy = "p"

[policies.p]
strategy = "fixed"
max_attempts = 1
max_days = 5
final_action = "cancel"
steps = [{ after = "1d" }]
"""


def offers(body: str) -> dict[ExitReason, SaveOffer]:
    return dict(parse_policy(BASE + "\n[save_offers]\n" + body).policies.save_offers)


def problems(body: str) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as info:
        parse_policy(BASE + "\n[save_offers]\n" + body, "mine.toml")
    return info.value.problems


def test_each_kind_of_offer_parses() -> None:
    parsed = offers(
        'too_expensive = { offer = "discount", percent = 30, cycles = 2 }\n'
        'temporary = { offer = "pause", months = 3 }\n'
        'missing_feature = { offer = "downgrade", plan = "basic" }\n'
        'switching = { offer = "none" }\n'
    )
    assert parsed == {
        ExitReason.TOO_EXPENSIVE: SaveOffer(OfferKind.DISCOUNT, percent=30, cycles=2),
        ExitReason.TEMPORARY: SaveOffer(OfferKind.PAUSE, months=3),
        ExitReason.MISSING_FEATURE: SaveOffer(OfferKind.DOWNGRADE, plan_id="basic"),
    }


def test_a_file_without_offers_has_none() -> None:
    assert parse_policy(BASE).policies.save_offers == {}


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ('temporary = { offer = "pause", months = 4 }', "save_offers.temporary.months", "1 to 3 months"),
        ('temporary = { offer = "pause", months = 0 }', "save_offers.temporary.months", "1 to 3 months"),
        ('temporary = { offer = "pause" }', "save_offers.temporary", "needs 'months'"),
        ('temporary = { offer = "pause", months = "2" }', "save_offers.temporary.months", "integer"),
        (
            'too_expensive = { offer = "discount", percent = 0, cycles = 2 }',
            "save_offers.too_expensive.percent",
            "1-100",
        ),
        (
            'too_expensive = { offer = "discount", percent = 101, cycles = 2 }',
            "save_offers.too_expensive.percent",
            "1-100",
        ),
        (
            'too_expensive = { offer = "discount", percent = 20, cycles = 13 }',
            "save_offers.too_expensive.cycles",
            "1-12",
        ),
        (
            'too_expensive = { offer = "discount", percent = 20 }',
            "save_offers.too_expensive",
            "needs 'cycles'",
        ),
        (
            'too_expensive = { offer = "discount", percent = 20, cycles = 1, months = 2 }',
            "save_offers.too_expensive",
            "does not take 'months'",
        ),
        (
            'missing_feature = { offer = "downgrade", plan = " " }',
            "save_offers.missing_feature.plan",
            "cheaper plan",
        ),
        ('missing_feature = { offer = "downgrade" }', "save_offers.missing_feature", "needs 'plan'"),
        ('switching = { offer = "coupon" }', "save_offers.switching.offer", "'pause'"),
        ('bored = { offer = "none" }', "save_offers.bored", "Extra inputs are not permitted"),
    ],
)
def test_bad_offers_name_the_field(body: str, field: str, words: str) -> None:
    found = problems(body)
    assert any(f == field and words in reason for f, reason in found), found


def test_the_default_policy_ships_offers_for_price_and_for_a_break() -> None:
    shipped = load_default_policy().policies.save_offers
    assert shipped[ExitReason.TOO_EXPENSIVE].kind is OfferKind.DISCOUNT
    assert shipped[ExitReason.NOT_USING].kind is OfferKind.PAUSE
    assert shipped[ExitReason.TEMPORARY].kind is OfferKind.PAUSE
    for reason in (
        ExitReason.SWITCHING,
        ExitReason.TECHNICAL_PROBLEMS,
        ExitReason.MISSING_FEATURE,
        ExitReason.OTHER,
    ):
        assert reason not in shipped


PRO = Plan("pro", "Pro", Interval.MONTH, Money(1900, "USD"))
BASIC = Plan("basic", "Basic", Interval.MONTH, Money(900, "USD"))
DEAR = Plan("dear", "Dear", Interval.MONTH, Money(2900, "USD"))
EURO = Plan("euro", "Euro", Interval.MONTH, Money(500, "EUR"))
PLANS = {p.id: p for p in (PRO, BASIC, DEAR, EURO)}


def test_the_offer_fits_the_reason() -> None:
    table = {ExitReason.TEMPORARY: SaveOffer(OfferKind.PAUSE, months=1)}
    assert offer_for(ExitReason.TEMPORARY, table, current=PRO, plans=PLANS) == table[ExitReason.TEMPORARY]
    assert offer_for(ExitReason.SWITCHING, table, current=PRO, plans=PLANS) is None


@pytest.mark.parametrize(
    ("target", "shown"),
    [("basic", True), ("dear", False), ("euro", False), ("pro", False), ("unknown", False)],
)
def test_a_downgrade_is_shown_only_when_it_is_a_saving(target: str, shown: bool) -> None:
    table = {ExitReason.TOO_EXPENSIVE: SaveOffer(OfferKind.DOWNGRADE, plan_id=target)}
    offer = offer_for(ExitReason.TOO_EXPENSIVE, table, current=PRO, plans=PLANS)
    assert (offer is not None) is shown


def test_offers_check_their_own_shape() -> None:
    with pytest.raises(DomainError, match="months"):
        SaveOffer(OfferKind.PAUSE, months=2, percent=10)
    with pytest.raises(DomainError, match="plan"):
        SaveOffer(OfferKind.DOWNGRADE, plan_id="basic", cycles=1)
    assert SaveOffer(OfferKind.DISCOUNT, percent=25, cycles=3).describe() == "25% off the next 3 invoice(s)"


def test_months_are_added_on_the_calendar() -> None:
    assert add_months(datetime(2026, 1, 31, 9, tzinfo=UTC), 1) == datetime(2026, 2, 28, 9, tzinfo=UTC)
    assert add_months(datetime(2026, 11, 15, tzinfo=UTC), 3) == datetime(2027, 2, 15, tzinfo=UTC)
    with pytest.raises(DomainError):
        add_months(datetime(2026, 1, 1), 1)  # noqa: DTZ001 - a naive time is refused


def test_an_exit_answer_needs_a_comment_only_for_other() -> None:
    assert ExitAnswer(ExitReason.OTHER, "  moving  ").comment == "moving"
    assert ExitAnswer(ExitReason.SWITCHING).comment == ""
    with pytest.raises(DomainError) as info:
        ExitAnswer(ExitReason.OTHER, "   ")
    assert info.value.field == "comment"
    with pytest.raises(DomainError):
        ExitAnswer(ExitReason.SWITCHING, "x" * 2001)


def test_who_may_leave_and_who_may_come_back() -> None:
    assert SubscriptionStatus.CANCELED not in CANCELABLE
    assert {SubscriptionStatus.CANCELED, SubscriptionStatus.PAUSED} == REACTIVATABLE
    assert SubscriptionStatus.ACTIVE not in REACTIVATABLE
