"""Retry policies, timing rules, segments and policy sets: invariants name their field."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from recobra.domain.case import FinalAction
from recobra.domain.errors import DomainError
from recobra.domain.model import Funding, Interval
from recobra.domain.policy import (
    PaydayRule,
    PolicySet,
    RetryPolicy,
    Segment,
    SegmentContext,
    SegmentRule,
    Strategy,
    Timing,
    format_duration,
    parse_duration,
)

D = timedelta(days=1)


def policy(name: str = "standard", **overrides: Any) -> RetryPolicy:
    fields: dict[str, Any] = {
        "name": name,
        "strategy": Strategy.TIMING_AWARE,
        "steps": (1 * D, 3 * D, 5 * D, 8 * D, 12 * D, 18 * D),
        "max_attempts": 6,
        "max_days": 21,
        "grace_days": 7,
        "final_action": FinalAction.CANCEL,
    }
    fields.update(overrides)
    return RetryPolicy(**fields)


def ctx(**overrides: Any) -> SegmentContext:
    fields: dict[str, Any] = {
        "plan_id": "pro_monthly",
        "interval": Interval.MONTH,
        "amount_minor": 19900,
        "currency": "MXN",
        "country": "MX",
        "tenure_days": 120,
        "funding": Funding.DEBIT,
    }
    fields.update(overrides)
    return SegmentContext(**fields)


def raises_on(field: str, fn: Any, *args: Any, **kwargs: Any) -> DomainError:
    with pytest.raises(DomainError) as info:
        fn(*args, **kwargs)
    assert info.value.field == field, info.value
    assert info.value.reason
    return info.value


# -- durations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("3d", 3 * D),
        ("12h", timedelta(hours=12)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1d6h30m", timedelta(days=1, hours=6, minutes=30)),
        ("30m", timedelta(minutes=30)),
        ("0d", timedelta(0)),
        (" 2d ", 2 * D),
    ],
)
def test_parse_duration(text: str, delta: timedelta) -> None:
    assert parse_duration("x", text) == delta


@pytest.mark.parametrize("text", ["", " ", "3", "d", "3 d", "1.5d", "-1d", "3w", "12h1d", "3D", "1h1h"])
def test_parse_duration_rejects_nonsense_naming_the_field(text: str) -> None:
    raises_on("policies.p.steps[0].after", parse_duration, "policies.p.steps[0].after", text)


@pytest.mark.parametrize("value", [3, None, 1.5])
def test_parse_duration_rejects_non_strings(value: object) -> None:
    raises_on("f", parse_duration, "f", value)


@pytest.mark.parametrize("text", ["3d", "12h", "1d12h", "30m", "1d6h30m", "2h15m"])
def test_format_duration_round_trips(text: str) -> None:
    assert format_duration(parse_duration("x", text)) == text


# -- retry policy invariants --------------------------------------------------------


def test_a_sensible_policy_is_accepted() -> None:
    p = policy()
    assert p.window == 21 * D
    assert p.timing == Timing()
    assert p.min_interval == timedelta(hours=1)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"steps": ()}, "policies.standard.steps"),
        ({"steps": (3 * D, 1 * D)}, "policies.standard.steps"),
        ({"steps": (1 * D, 5 * D, 3 * D)}, "policies.standard.steps"),
        ({"steps": (1 * D, 22 * D), "max_days": 21}, "policies.standard.steps"),
        ({"steps": (1 * D, 21 * D + timedelta(minutes=1)), "max_days": 21}, "policies.standard.steps"),
        ({"max_attempts": 0}, "policies.standard.max_attempts"),
        ({"max_attempts": 31}, "policies.standard.max_attempts"),
        ({"max_days": 0, "steps": (timedelta(0),)}, "policies.standard.max_days"),
        ({"max_days": 121}, "policies.standard.max_days"),
        ({"grace_days": -1}, "policies.standard.grace_days"),
        ({"grace_days": 91}, "policies.standard.grace_days"),
        ({"min_interval": timedelta(seconds=59)}, "policies.standard.min_interval"),
        ({"processing_backoff": ()}, "policies.standard.processing_backoff"),
    ],
)
def test_policy_invariants_name_the_field(overrides: dict[str, Any], field: str) -> None:
    raises_on(field, policy, **overrides)


def test_last_step_after_max_days_says_so() -> None:
    error = raises_on("policies.annual.steps", policy, "annual", steps=(1 * D, 31 * D), max_days=30)
    assert "31d" in error.reason
    assert "max_days" in error.reason


def test_boundaries_are_accepted() -> None:
    policy(steps=(timedelta(0),), max_days=1, max_attempts=1, grace_days=0)
    policy(steps=(21 * D,), max_days=21)
    policy(steps=(1 * D, 1 * D), max_attempts=30, max_days=120, grace_days=90)
    policy(min_interval=timedelta(minutes=1))


def test_policy_is_immutable() -> None:
    p = policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_attempts = 3  # type: ignore[misc]


# -- timing invariants --------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"start_hour": 20, "end_hour": 9}, "timing.hours"),
        ({"start_hour": 9, "end_hour": 9}, "timing.hours"),
        ({"start_hour": -1}, "timing.hours"),
        ({"end_hour": 25}, "timing.hours"),
        ({"start_hour": 10, "payday_hour": 9}, "timing.payday_hour"),
        ({"end_hour": 20, "payday_hour": 20}, "timing.payday_hour"),
        ({"end_hour": 12, "payday_hour": 13}, "timing.payday_hour"),
        ({"paydays": (0,)}, "timing.paydays"),
        ({"paydays": (1, 32)}, "timing.paydays"),
        ({"jitter_minutes": -1}, "timing.jitter_minutes"),
        ({"jitter_minutes": 181}, "timing.jitter_minutes"),
    ],
)
def test_timing_invariants_name_the_field(overrides: dict[str, Any], field: str) -> None:
    raises_on(field, Timing, **overrides)


def test_timing_boundaries_are_accepted() -> None:
    Timing(start_hour=0, end_hour=24, payday_hour=0)
    Timing(start_hour=23, end_hour=24, payday_hour=23)
    Timing(paydays=(1, 31, PaydayRule.LAST_BUSINESS_DAY), jitter_minutes=180)
    Timing(jitter_minutes=0)


def test_bad_timing_fails_when_building_a_policy() -> None:
    raises_on("timing.payday_hour", lambda: policy(timing=Timing(start_hour=9, end_hour=17, payday_hour=18)))


# -- segment rules ------------------------------------------------------------------


def test_empty_rule_matches_everything() -> None:
    rule = SegmentRule()
    assert rule.matches(ctx())
    assert rule.matches(
        ctx(
            interval=None,
            plan_id="",
            amount_minor=0,
            tenure_days=0,
            funding=Funding.UNKNOWN,
            country="JP",
            currency="JPY",
        )
    )


@pytest.mark.parametrize(
    ("rule", "hit", "miss"),
    [
        (SegmentRule(plans=frozenset({"pro_monthly", "pro_annual"})), {}, {"plan_id": "basic"}),
        (SegmentRule(intervals=frozenset({Interval.YEAR})), {"interval": Interval.YEAR}, {}),
        (SegmentRule(intervals=frozenset({Interval.MONTH})), {}, {"interval": None}),
        (SegmentRule(currencies=frozenset({"MXN", "COP"})), {"currency": "COP"}, {"currency": "EUR"}),
        (SegmentRule(countries=frozenset({"MX"})), {}, {"country": "CO"}),
        (
            SegmentRule(funding=frozenset({Funding.DEBIT, Funding.PREPAID})),
            {"funding": Funding.PREPAID},
            {"funding": Funding.CREDIT},
        ),
        (SegmentRule(amount_min=19900), {"amount_minor": 19900}, {"amount_minor": 19899}),
        (SegmentRule(amount_max=19900), {"amount_minor": 19900}, {"amount_minor": 19901}),
        (SegmentRule(tenure_days_min=30), {"tenure_days": 30}, {"tenure_days": 29}),
        (SegmentRule(tenure_days_max=30), {"tenure_days": 30}, {"tenure_days": 31}),
    ],
)
def test_each_condition(rule: SegmentRule, hit: dict[str, Any], miss: dict[str, Any]) -> None:
    assert rule.matches(ctx(**hit))
    assert not rule.matches(ctx(**miss))


def test_all_conditions_must_hold() -> None:
    rule = SegmentRule(countries=frozenset({"MX"}), amount_min=10000, funding=frozenset({Funding.DEBIT}))
    assert rule.matches(ctx())
    assert not rule.matches(ctx(country="ES"))
    assert not rule.matches(ctx(amount_minor=9999))
    assert not rule.matches(ctx(funding=Funding.CREDIT))


def test_amount_range() -> None:
    rule = SegmentRule(amount_min=1000, amount_max=5000)
    assert [rule.matches(ctx(amount_minor=a)) for a in (999, 1000, 3000, 5000, 5001)] == [
        False,
        True,
        True,
        True,
        False,
    ]


# -- policy sets --------------------------------------------------------------------


def policy_set(segments: tuple[Segment, ...] = (), default: str = "standard") -> PolicySet:
    policies = {
        "standard": policy("standard"),
        "annual": policy("annual", max_days=30, steps=(1 * D, 27 * D), final_action=FinalAction.PAUSE),
        "gentle": policy("gentle", strategy=Strategy.FIXED, steps=(2 * D,), max_attempts=1),
    }
    return PolicySet("test", 3, segments, policies, default)


def test_first_matching_segment_wins() -> None:
    ps = policy_set(
        (
            Segment("annual", SegmentRule(intervals=frozenset({Interval.YEAR})), "annual"),
            Segment("mexico", SegmentRule(countries=frozenset({"MX"})), "gentle"),
            Segment("everyone", SegmentRule(), "standard"),
        )
    )
    assert ps.choose(ctx(interval=Interval.YEAR, country="MX")) == ("annual", ps.policies["annual"])
    assert ps.choose(ctx(country="MX")) == ("mexico", ps.policies["gentle"])
    assert ps.choose(ctx(country="ES")) == ("everyone", ps.policies["standard"])


def test_no_match_falls_back_to_the_default_policy() -> None:
    ps = policy_set(
        (Segment("annual", SegmentRule(intervals=frozenset({Interval.YEAR})), "annual"),), default="gentle"
    )
    name, chosen = ps.choose(ctx())
    assert name == "default"
    assert chosen is ps.policies["gentle"]


def test_no_segments_at_all_uses_the_default() -> None:
    ps = policy_set()
    assert ps.choose(ctx()) == ("default", ps.policies["standard"])


def test_unknown_default_policy_is_rejected() -> None:
    error = raises_on("default_policy", policy_set, default="missing")
    assert "missing" in error.reason


def test_segment_referring_to_an_unknown_policy_is_rejected() -> None:
    segments = (
        Segment("annual", SegmentRule(), "annual"),
        Segment("typo", SegmentRule(), "standrad"),
    )
    error = raises_on("segments[1].policy", policy_set, segments)
    assert "standrad" in error.reason


def test_segment_names_must_be_unique() -> None:
    segments = (Segment("a", SegmentRule(), "annual"), Segment("a", SegmentRule(), "standard"))
    raises_on("segments", policy_set, segments)
