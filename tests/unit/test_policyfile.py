"""Policy files: the shipped default parses; every bad file names the field at fault."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from recobra.domain.case import FinalAction
from recobra.domain.declines import classify
from recobra.domain.messages import ChannelKind, MessageKind
from recobra.domain.model import Funding, Interval
from recobra.domain.policy import PaydayRule, SegmentContext, Strategy, Timing
from recobra.domain.schedule import NoHolidays, RetryContext, plan_retry
from recobra.policyfile import (
    LoadedPolicy,
    PolicyError,
    default_policy_text,
    load_default_policy,
    load_policy_file,
    parse_policy,
)

D = timedelta(days=1)

# A small, valid file; each bad-file test changes one thing in it.
GOOD = """
name = "test"
version = 2
default_policy = "standard"

[[segments]]
name = "annual"
policy = "annual"
match = { intervals = ["year"] }

[[segments]]
name = "latam_debit"
policy = "standard"
match = { countries = ["MX", "CO"], funding = ["debit"], currencies = ["mxn", "COP"], amount_min = 100 }

[policies.standard]
strategy = "timing_aware"
max_attempts = 4
max_days = 21
final_action = "cancel"
steps = [
    { after = "1d" },
    { after = "3d" },
    { after = "5d12h" },
    { after = "12d" },
]

[policies.standard.timing]
start_hour = 8
end_hour = 21
paydays = [1, 15, "last_business_day"]
payday_hour = 10
payday_flex = "4d"

[policies.annual]
strategy = "decline_aware"
max_attempts = 2
max_days = 30
grace_days = 14
final_action = "pause"
min_interval = "2h"
processing_backoff = ["30m", "2h"]
steps = [{ after = "2d" }, { after = "20d" }]
"""


def problems_of(text: str) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "test.toml")
    assert info.value.problems, "a PolicyError always lists its problems"
    assert str(info.value).startswith("test.toml: invalid policy")
    for field, reason in info.value.problems:
        assert f"{field}: {reason}" in str(info.value)
    return info.value.problems


def fields_of(text: str) -> list[str]:
    return [field for field, _ in problems_of(text)]


def changed(old: str, new: str, text: str = GOOD) -> str:
    assert text.count(old) == 1, f"{old!r} must occur exactly once"
    return text.replace(old, new)


# -- good files ---------------------------------------------------------------------


def test_a_valid_file_parses_into_the_domain() -> None:
    loaded = parse_policy(GOOD, "test.toml")
    assert isinstance(loaded, LoadedPolicy)
    ps = loaded.policies
    assert (ps.name, ps.version, ps.default_policy) == ("test", 2, "standard")
    assert [s.name for s in ps.segments] == ["annual", "latam_debit"]
    latam = ps.segments[1].rule
    assert latam.countries == frozenset({"MX", "CO"})
    assert latam.currencies == frozenset({"MXN", "COP"})
    assert latam.funding == frozenset({Funding.DEBIT})
    assert latam.amount_min == 100
    standard = ps.policies["standard"]
    assert standard.strategy is Strategy.TIMING_AWARE
    assert standard.steps == (1 * D, 3 * D, timedelta(days=5, hours=12), 12 * D)
    assert standard.grace_days == 7  # default
    assert standard.timing == Timing(start_hour=8, end_hour=21, payday_flex=4 * D)
    assert standard.timing.paydays == (1, 15, PaydayRule.LAST_BUSINESS_DAY)
    annual = ps.policies["annual"]
    assert annual.final_action is FinalAction.PAUSE
    assert annual.min_interval == timedelta(hours=2)
    assert annual.processing_backoff == (timedelta(minutes=30), timedelta(hours=2))
    assert annual.timing == Timing()  # all defaults
    assert loaded.source == GOOD
    assert loaded.checksum == hashlib.sha256(GOOD.encode()).hexdigest()


def test_the_shipped_default_policy_parses() -> None:
    loaded = load_default_policy()
    ps = loaded.policies
    assert ps.default_policy == "standard"
    assert set(ps.policies) == {"standard", "annual"}
    standard, annual = ps.policies["standard"], ps.policies["annual"]
    assert standard.strategy is Strategy.TIMING_AWARE
    assert standard.max_attempts == len(standard.steps) == 6
    assert standard.steps[-1] <= standard.window
    assert standard.final_action is FinalAction.CANCEL
    assert annual.final_action is FinalAction.PAUSE
    assert annual.max_attempts == len(annual.steps) == 7
    assert loaded.source == default_policy_text()
    monthly = SegmentContext("pro", Interval.MONTH, 19900, "MXN", "MX", 90, Funding.DEBIT)
    yearly = SegmentContext("pro", Interval.YEAR, 199000, "MXN", "MX", 90, Funding.DEBIT)
    assert ps.choose(monthly) == ("default", standard)
    assert ps.choose(yearly) == ("annual", annual)


def test_load_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(GOOD, encoding="utf-8")
    assert load_policy_file(path).policies == parse_policy(GOOD).policies


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_file(tmp_path / "nope.toml")
    assert info.value.problems[0][0] == "(file)"
    assert "cannot read" in info.value.problems[0][1]


def test_non_utf8_file_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(GOOD.replace('"test"', '"pólizas"').encode("latin-1"))
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert info.value.problems == [("(file)", "not UTF-8 text")]


# -- bad files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        # unknown keys
        ("version = 2", "version = 2\nretries = 3", "retries"),
        ("max_attempts = 4", "max_attempts = 4\nmax_atempts = 4", "policies.standard.max_atempts"),
        ('payday_flex = "4d"', 'payday_flex = "4d"\npayday = 15', "policies.standard.timing.payday"),
        ('name = "annual"\npolicy', 'name = "annual"\nplicy = "x"\npolicy', "segments[0].plicy"),
        ('match = { intervals = ["year"] }', 'match = { interval = ["year"] }', "segments[0].match.interval"),
        ('{ after = "2d" }', '{ after = "2d", action = "email" }', "policies.annual.steps[0].action"),
        # wrong types
        ("max_attempts = 4", 'max_attempts = "four"', "policies.standard.max_attempts"),
        ("max_days = 30", "max_days = [30]", "policies.annual.max_days"),
        ("version = 2", 'version = "two"', "version"),
        ("start_hour = 8", "start_hour = 8.5", "policies.standard.timing.start_hour"),
        ('{ after = "12d" }', "{ after = 12 }", "policies.standard.steps[3].after"),
        ('steps = [{ after = "2d" }, { after = "20d" }]', 'steps = "2d, 20d"', "policies.annual.steps"),
        (
            'paydays = [1, 15, "last_business_day"]',
            'paydays = [1, "payday"]',
            "policies.standard.timing.paydays[1]",
        ),
        ("amount_min = 100", "amount_min = -1", "segments[1].match.amount_min"),
        ('funding = ["debit"]', 'funding = ["cash"]', "segments[1].match.funding[0]"),
        (
            'match = { intervals = ["year"] }',
            'match = { intervals = ["week"] }',
            "segments[0].match.intervals[0]",
        ),
        # bad durations
        ('{ after = "3d" }', '{ after = "3 days" }', "policies.standard.steps[1].after"),
        ('{ after = "20d" }', '{ after = "20" }', "policies.annual.steps[1].after"),
        ('min_interval = "2h"', 'min_interval = "two hours"', "policies.annual.min_interval"),
        (
            'processing_backoff = ["30m", "2h"]',
            'processing_backoff = ["30m", "soon"]',
            "policies.annual.processing_backoff[1]",
        ),
        ('payday_flex = "4d"', 'payday_flex = "4w"', "policies.standard.timing.payday_flex"),
        # enumerations
        ('final_action = "cancel"', 'final_action = "delete"', "policies.standard.final_action"),
        ('strategy = "decline_aware"', 'strategy = "smart"', "policies.annual.strategy"),
        # references
        ('policy = "annual"', 'policy = "yearly"', "segments[0].policy"),
        ('policy = "standard"\nmatch', 'policy = "standrad"\nmatch', "segments[1].policy"),
        ('default_policy = "standard"', 'default_policy = "normal"', "default_policy"),
        ('default_policy = "standard"', "", "default_policy"),
        # domain invariants
        ("max_days = 21", "max_days = 10", "policies.standard.steps"),
        ('{ after = "20d" }', '{ after = "31d" }', "policies.annual.steps"),
        (
            '{ after = "2d" }, { after = "20d" }',
            '{ after = "20d" }, { after = "2d" }',
            "policies.annual.steps",
        ),
        ('steps = [{ after = "2d" }, { after = "20d" }]', "steps = []", "policies.annual.steps"),
        ("max_attempts = 2", "max_attempts = 0", "policies.annual.max_attempts"),
        ("grace_days = 14", "grace_days = 100", "policies.annual.grace_days"),
        ('min_interval = "2h"', 'min_interval = "0m"', "policies.annual.min_interval"),
        (
            'processing_backoff = ["30m", "2h"]',
            "processing_backoff = []",
            "policies.annual.processing_backoff",
        ),
        ("end_hour = 21", "end_hour = 7", "policies.standard.timing.hours"),
        ("payday_hour = 10", "payday_hour = 22", "policies.standard.timing.payday_hour"),
        ('paydays = [1, 15, "last_business_day"]', "paydays = [0, 15]", "policies.standard.timing.paydays"),
        # countries and currencies
        ('countries = ["MX", "CO"]', 'countries = ["mx", "CO"]', "segments[1].match.countries"),
        ('countries = ["MX", "CO"]', 'countries = ["MEX"]', "segments[1].match.countries"),
        ('countries = ["MX", "CO"]', 'countries = ["M1"]', "segments[1].match.countries"),
        ('currencies = ["mxn", "COP"]', 'currencies = ["PESO"]', "segments[1].match.currencies"),
        # the file itself
        ("version = 2", "version = 0", "version"),
        ('name = "test"', 'name = ""', "name"),
    ],
)
def test_bad_file_names_the_field(old: str, new: str, field: str) -> None:
    text = changed(old, new, GOOD)
    assert set(fields_of(text)) == {field}


def test_empty_paydays_are_rejected_or_harmless() -> None:
    # Bug: `paydays = []` is accepted (neither TimingModel nor Timing checks for it), and a
    # timing-aware policy without paydays crashes plan_retry on the first insufficient-funds
    # decline (see tests/unit/test_schedule.py::test_empty_paydays_are_rejected_or_harmless).
    text = changed('paydays = [1, 15, "last_business_day"]', "paydays = []", GOOD)
    try:
        loaded = parse_policy(text, "test.toml")
    except PolicyError as exc:
        assert {field for field, _ in exc.problems} == {"policies.standard.timing.paydays"}  # noqa: PT017
        return
    opened = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
    ctx = RetryContext(
        "case_1", opened, opened, 0, classify("insufficient_funds"), 0, "America/Mexico_City", "MX"
    )
    assert plan_retry(loaded.policies.policies["standard"], ctx, NoHolidays()).at is not None


WEEKDAYS_ONLY = "policies.standard.timing.weekdays_only"


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("max_attempts = 4", "max_attempts = true", "policies.standard.max_attempts"),
        ("max_attempts = 4", 'max_attempts = "4"', "policies.standard.max_attempts"),
        ("start_hour = 8", 'start_hour = "8"', "policies.standard.timing.start_hour"),
        ('payday_flex = "4d"', 'payday_flex = "4d"\nweekdays_only = "yes"', WEEKDAYS_ONLY),
        ('payday_flex = "4d"', 'payday_flex = "4d"\nweekdays_only = 1', WEEKDAYS_ONLY),
        ("version = 2", "version = 2.0", "version"),
    ],
    ids=["bool-as-int", "str-as-int", "str-as-hour", "str-as-bool", "int-as-bool", "float-as-int"],
)
def test_wrong_scalar_types_are_not_silently_coerced(old: str, new: str, field: str) -> None:
    # Bug: pydantic's lax mode turns `true` into 1, "4" into 4, "yes" and 1 into True and
    # 2.0 into 2, so a value of the wrong TOML type is accepted instead of reported.
    text = changed(old, new, GOOD)
    assert set(fields_of(text)) == {field}


def test_a_policy_named_like_a_type_keeps_its_name_in_the_path() -> None:
    # Bug: _path drops every location part spelt "int" or "str" (meant for pydantic's
    # union branch names), including a policy's own name.
    text = GOOD.replace('"annual"', '"int"').replace("[policies.annual]", "[policies.int]")
    assert parse_policy(text).policies.policies["int"].final_action is FinalAction.PAUSE
    text = changed("max_attempts = 2", 'max_attempts = "two"', text)
    assert fields_of(text) == ["policies.int.max_attempts"]


def test_toml_syntax_error() -> None:
    problems = problems_of(changed("version = 2", "version = ", GOOD))
    assert len(problems) == 1
    field, reason = problems[0]
    assert field == "(file)"
    assert "not valid TOML" in reason
    assert "line" in reason


@pytest.mark.parametrize("text", ["", "name = 'x'\n", "[policies]\n"])
def test_incomplete_files(text: str) -> None:
    fields = fields_of(text)
    assert "version" in fields or "policies" in fields


def test_no_policies_at_all() -> None:
    text = 'name = "x"\nversion = 1\ndefault_policy = "standard"\npolicies = {}\n'
    assert fields_of(text) == ["policies"]


def test_problems_in_several_policies_are_all_reported() -> None:
    text = changed("max_days = 21", "max_days = 10", GOOD)
    text = changed("grace_days = 14", "grace_days = 100", text)
    assert sorted(fields_of(text)) == ["policies.annual.grace_days", "policies.standard.steps"]


def test_several_bad_durations_are_all_reported() -> None:
    text = changed('{ after = "3d" }', '{ after = "3 days" }', GOOD)
    text = changed('{ after = "20d" }', '{ after = "20 days" }', text)
    text = changed('min_interval = "2h"', 'min_interval = "2 hours"', text)
    assert sorted(fields_of(text)) == [
        "policies.annual.min_interval",
        "policies.annual.steps[1].after",
        "policies.standard.steps[1].after",
    ]


def test_several_shape_errors_are_all_reported() -> None:
    text = changed('final_action = "cancel"', 'final_action = "delete"', GOOD)
    text = changed('strategy = "decline_aware"', 'strategy = "smart"', text)
    text = changed('countries = ["MX", "CO"]', 'countries = ["mx"]', text)
    assert set(fields_of(text)) == {
        "policies.standard.final_action",
        "policies.annual.strategy",
        "segments[1].match.countries",
    }


def test_reasons_are_readable() -> None:
    (problem,) = problems_of(changed("max_days = 21", "max_days = 10", GOOD))
    assert problem == ("policies.standard.steps", "last step (12d) is after max_days (10)")
    (problem,) = problems_of(changed('policy = "annual"', 'policy = "yearly"', GOOD))
    assert problem[0] == "segments[0].policy"
    assert "'yearly'" in problem[1]
    assert "annual" in problem[1]
    assert "standard" in problem[1]
    problems = problems_of(changed('final_action = "cancel"', 'final_action = "delete"', GOOD))
    assert problems[0][0] == "policies.standard.final_action"
    assert "cancel" in problems[0][1]
    assert "mark_unpaid" in problems[0][1]


def test_duplicate_segment_names() -> None:
    assert fields_of(changed('name = "latam_debit"', 'name = "annual"', GOOD)) == ["segments"]


def test_every_problem_reason_is_non_empty() -> None:
    text = changed("end_hour = 21", "end_hour = 7", GOOD)
    for field, reason in problems_of(text):
        assert field
        assert reason.strip()


def test_policy_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid policy"):
        parse_policy("this is not toml")


def test_message_steps_keep_their_fallback_channels() -> None:
    standard = load_default_policy().policies.policies["standard"]
    first, reminder = standard.messages[0], standard.messages[1]
    assert first.kind is MessageKind.PAYMENT_FAILED
    assert first.channels == (ChannelKind.EMAIL, ChannelKind.IN_APP)
    assert first.fallback == (ChannelKind.SMS,)
    assert reminder.fallback_after is not None
    assert reminder.fallback_after.days == 2
