"""Card-network retry rules: never-retry codes, Mastercard advice delays, attempt caps."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recobra.domain.declines import (
    ISO8583_RESPONSE_CODES,
    STRIPE_DECLINE_CODES,
    Decline,
    classify,
    normalize_advice_code,
)
from recobra.domain.network import (
    DEFAULT_NETWORK_RULES,
    MASTERCARD_RETRY_DELAYS,
    VISA_CATEGORY_CODES,
    CardNetwork,
    NetworkRules,
    NetworkVerdict,
    PriorAttempt,
    check_retry,
    mastercard_retry_delay,
    visa_category,
)

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def declined(at: datetime, code: str = "generic_decline", **codes: str) -> PriorAttempt:
    return PriorAttempt(at=at, decline=classify(code, **codes))


def succeeded(at: datetime) -> PriorAttempt:
    return PriorAttempt(at=at, decline=None)


# -- brands -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("brand", "network"),
    [
        ("visa", CardNetwork.VISA),
        ("Visa", CardNetwork.VISA),
        ("mastercard", CardNetwork.MASTERCARD),
        ("MasterCard", CardNetwork.MASTERCARD),
        ("Master Card", CardNetwork.MASTERCARD),
        ("amex", CardNetwork.AMEX),
        ("American Express", CardNetwork.AMEX),
        ("american_express", CardNetwork.AMEX),
        ("discover", CardNetwork.DISCOVER),
        ("Discover", CardNetwork.DISCOVER),
        ("diners", CardNetwork.OTHER),
        ("Diners Club", CardNetwork.OTHER),
        ("jcb", CardNetwork.OTHER),
        ("unionpay", CardNetwork.OTHER),
        ("cartes_bancaires", CardNetwork.OTHER),
        ("unknown", CardNetwork.OTHER),
        ("", CardNetwork.OTHER),
    ],
)
def test_from_brand(brand: str, network: CardNetwork) -> None:
    assert CardNetwork.from_brand(brand) is network


def test_from_brand_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        CardNetwork.from_brand(None)  # type: ignore[arg-type]


# -- Visa categories and Mastercard delays ------------------------------------------


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("04", 1),
        ("07", 1),
        ("12", 1),
        ("14", 1),
        ("15", 1),
        ("41", 1),
        ("43", 1),
        ("46", 1),
        ("57", 1),
        ("R0", 1),
        ("r1", 1),
        ("R3", 1),
        ("51", 2),
        ("59", 2),
        ("61", 2),
        ("65", 2),
        ("91", 2),
        ("96", 2),
        ("03", 2),
        ("54", 3),
        ("55", 3),
        ("N7", 3),
        ("1A", 3),
        ("05", 4),
        ("01", 4),
        ("5", 4),
        ("13", 4),
        (None, None),
        ("", None),
        ("00", None),
        ("85", None),
        ("insufficient_funds", None),
        ("123", None),
    ],
)
def test_visa_category(code: str | None, category: int | None) -> None:
    assert visa_category(code) == category


def test_visa_categories_are_disjoint() -> None:
    one, two, three = (VISA_CATEGORY_CODES[n] for n in (1, 2, 3))
    assert not one & two
    assert not one & three
    assert not two & three


def test_visa_category_1_codes_classify_hard() -> None:
    for code in VISA_CATEGORY_CODES[1]:
        assert classify("generic_decline", network_code=code).category.value == "hard"


@pytest.mark.parametrize(
    ("advice", "delay"),
    [
        ("24", timedelta(hours=1)),
        ("25", timedelta(hours=24)),
        ("26", timedelta(days=2)),
        ("27", timedelta(days=4)),
        ("28", timedelta(days=6)),
        ("29", timedelta(days=8)),
        ("30", timedelta(days=10)),
        (" 30 ", timedelta(days=10)),
        ("01", None),
        ("02", None),
        ("03", None),
        ("21", None),
        ("31", None),
        ("try_again_later", None),
        (None, None),
        ("", None),
    ],
)
def test_mastercard_retry_delay(advice: str | None, delay: timedelta | None) -> None:
    assert mastercard_retry_delay(advice) == delay


# -- rules and verdicts -------------------------------------------------------------


def test_default_rules() -> None:
    expected = NetworkRules(
        visa_max_reattempts_30d=15, mastercard_max_attempts_24h=10, mastercard_max_attempts_30d=35
    )
    assert expected == DEFAULT_NETWORK_RULES


@pytest.mark.parametrize(
    "kwargs",
    [
        {"visa_max_reattempts_30d": 0},
        {"mastercard_max_attempts_24h": -1},
        {"mastercard_max_attempts_30d": True},
        {"visa_max_reattempts_30d": 1.5},
    ],
)
def test_rules_reject_nonsense_caps(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="network_rules"):
        NetworkRules(**kwargs)  # type: ignore[arg-type]


def test_verdict_adjusted() -> None:
    assert not NetworkVerdict(True, T0, None, "ok").adjusted
    assert NetworkVerdict(True, T0 + HOUR, "mastercard_mac_24", "moved").adjusted
    assert NetworkVerdict(False, None, "visa_category_1", "never").adjusted


# -- check_retry: basics ------------------------------------------------------------


@pytest.mark.parametrize("network", list(CardNetwork))
def test_no_history_is_unchanged(network: CardNetwork) -> None:
    verdict = check_retry(network, [], T0)
    assert verdict == NetworkVerdict(True, T0, None, verdict.reason)
    assert not verdict.adjusted


@pytest.mark.parametrize("network", list(CardNetwork))
def test_soft_decline_is_unchanged(network: CardNetwork) -> None:
    verdict = check_retry(network, [declined(T0, "insufficient_funds", network_code="51")], T0 + DAY)
    assert verdict.allowed
    assert verdict.earliest == T0 + DAY
    assert verdict.rule is None


def test_naive_proposed_time_raises() -> None:
    with pytest.raises(ValueError, match="proposed_at"):
        check_retry(CardNetwork.VISA, [], datetime(2025, 3, 1, 9, 0))  # noqa: DTZ001


def test_naive_history_time_raises() -> None:
    history = [declined(T0), declined(datetime(2025, 3, 2, 9, 0))]  # noqa: DTZ001
    with pytest.raises(ValueError, match=r"history\[1\]\.at"):
        check_retry(CardNetwork.VISA, history, T0 + 2 * DAY)


def test_proposed_before_latest_attempt_moves_to_it() -> None:
    verdict = check_retry(CardNetwork.AMEX, [declined(T0)], T0 - HOUR)
    assert verdict.allowed
    assert verdict.earliest == T0
    assert verdict.rule == "after_latest_attempt"


def test_mixed_time_zones_compare_as_instants() -> None:
    madrid_winter = timezone(timedelta(hours=1))
    decline_at = datetime(2025, 3, 1, 10, 0, tzinfo=madrid_winter)  # 09:00 UTC
    history = [declined(decline_at, "insufficient_funds", advice_code="24")]
    verdict = check_retry(CardNetwork.MASTERCARD, history, T0)
    assert verdict.earliest == T0 + HOUR


# -- check_retry: never-retry signals -----------------------------------------------


@pytest.mark.parametrize("network", list(CardNetwork))
@pytest.mark.parametrize(
    ("codes", "rule"),
    [
        ({"code": "insufficient_funds", "advice_code": "do_not_try_again"}, "advice_do_not_try_again"),
        ({"code": "do_not_try_again"}, "advice_do_not_try_again"),
        ({"code": "generic_decline", "advice_code": "03"}, "mastercard_mac_03"),
        ({"code": "generic_decline", "advice_code": "21"}, "mastercard_mac_21"),
        ({"code": "generic_decline", "advice_code": "3"}, "mastercard_mac_03"),
    ],
)
def test_never_advice_forbids_on_every_network(
    network: CardNetwork, codes: dict[str, str], rule: str
) -> None:
    extra = dict(codes)
    code = extra.pop("code")
    verdict = check_retry(network, [declined(T0, code, **extra)], T0 + 30 * DAY)
    assert verdict == NetworkVerdict(False, None, rule, verdict.reason)
    assert verdict.adjusted
    assert verdict.reason


@pytest.mark.parametrize("network_code", sorted(VISA_CATEGORY_CODES[1]))
def test_visa_category_1_forbids(network_code: str) -> None:
    verdict = check_retry(
        CardNetwork.VISA, [declined(T0, "do_not_honor", network_code=network_code)], T0 + DAY
    )
    assert not verdict.allowed
    assert verdict.earliest is None
    assert verdict.rule == "visa_category_1"
    assert network_code in verdict.reason


@pytest.mark.parametrize("network", [CardNetwork.MASTERCARD, CardNetwork.AMEX, CardNetwork.OTHER])
def test_category_1_codes_forbid_on_other_networks_too(network: CardNetwork) -> None:
    verdict = check_retry(network, [declined(T0, "generic_decline", network_code="43")], T0 + DAY)
    assert not verdict.allowed
    assert verdict.rule == "issuer_never_approves"


@pytest.mark.parametrize(
    "code",
    ["lost_card", "stolen_card", "pickup_card", "stop_payment_order", "revocation_of_authorization",
     "revocation_of_all_authorizations", "invalid_account", "incorrect_number", "41", "R0"],
)  # fmt: skip
def test_stripe_code_for_a_category_1_response_forbids(code: str) -> None:
    verdict = check_retry(CardNetwork.VISA, [declined(T0, code)], T0 + DAY)
    assert not verdict.allowed
    assert verdict.rule == "visa_category_1"


@pytest.mark.parametrize("code", ["expired_card", "incorrect_cvc", "fraudulent", "authentication_required"])
def test_engine_hard_stops_that_the_network_allows(code: str) -> None:
    # Visa puts 54/N7 in category 3 and 59 in category 2: the network does not forbid a
    # corrected retry. The engine's category decides whether to retry at all.
    verdict = check_retry(CardNetwork.VISA, [declined(T0, code)], T0 + DAY)
    assert verdict.allowed
    assert verdict.rule is None


def test_never_signal_earlier_in_the_sequence_still_forbids() -> None:
    history = [
        declined(T0, "generic_decline", network_code="46"),
        declined(T0 + DAY, "generic_decline", network_code="05"),
    ]
    verdict = check_retry(CardNetwork.VISA, history, T0 + 2 * DAY)
    assert not verdict.allowed
    assert verdict.rule == "visa_category_1"


def test_success_resets_never_signals() -> None:
    history = [
        declined(T0, "generic_decline", advice_code="03"),
        succeeded(T0 + DAY),
        declined(T0 + 30 * DAY, "insufficient_funds"),
    ]
    verdict = check_retry(CardNetwork.MASTERCARD, history, T0 + 31 * DAY)
    assert verdict.allowed
    assert verdict.rule is None


def test_history_order_does_not_matter() -> None:
    history = [declined(T0 + i * HOUR) for i in range(12)]
    history.append(declined(T0 + 12 * HOUR, advice_code="21"))
    shuffled = list(history)
    random.Random(7).shuffle(shuffled)
    for network in CardNetwork:
        assert check_retry(network, shuffled, T0 + DAY) == check_retry(network, history, T0 + DAY)


# -- check_retry: Mastercard advice delays ------------------------------------------


@pytest.mark.parametrize(("advice", "delay"), sorted(MASTERCARD_RETRY_DELAYS.items()))
def test_mac_delay_moves_the_retry(advice: str, delay: timedelta) -> None:
    history = [declined(T0 - DAY), declined(T0, "insufficient_funds", advice_code=advice)]
    verdict = check_retry(CardNetwork.MASTERCARD, history, T0 + timedelta(minutes=5))
    assert verdict.allowed
    assert verdict.earliest == T0 + delay
    assert verdict.rule == f"mastercard_mac_{advice}"
    assert verdict.adjusted
    assert f"Mastercard advice {advice}" in verdict.reason


def test_mac_25_reason_reads_well() -> None:
    verdict = check_retry(CardNetwork.MASTERCARD, [declined(T0, advice_code="25")], T0)
    assert verdict.reason == ("Mastercard advice 25: retry no sooner than 24 hours after the decline.")


def test_mac_delay_already_respected_is_unchanged() -> None:
    history = [declined(T0, "insufficient_funds", advice_code="26")]
    verdict = check_retry(CardNetwork.MASTERCARD, history, T0 + 3 * DAY)
    assert verdict.earliest == T0 + 3 * DAY
    assert verdict.rule is None


def test_mac_delay_exactly_met_is_unchanged() -> None:
    history = [declined(T0, "insufficient_funds", advice_code="24")]
    verdict = check_retry(CardNetwork.MASTERCARD, history, T0 + HOUR)
    assert verdict.earliest == T0 + HOUR
    assert not verdict.adjusted


def test_mac_delay_only_follows_the_latest_decline() -> None:
    history = [declined(T0, advice_code="30"), declined(T0 + DAY, advice_code="24")]
    verdict = check_retry(CardNetwork.MASTERCARD, history, T0 + DAY)
    assert verdict.earliest == T0 + DAY + HOUR


@pytest.mark.parametrize("network", [CardNetwork.VISA, CardNetwork.AMEX, CardNetwork.OTHER])
def test_mac_delay_is_honoured_on_any_network(network: CardNetwork) -> None:
    verdict = check_retry(network, [declined(T0, advice_code="27")], T0 + HOUR)
    assert verdict.earliest == T0 + 4 * DAY


# -- check_retry: Visa 15 reattempts in 30 days -------------------------------------


def _visa_sequence(reattempts: int) -> list[PriorAttempt]:
    """An initial decline at T0 then ``reattempts`` declined reattempts, one a day."""
    return [declined(T0 + i * DAY, "insufficient_funds", network_code="51") for i in range(reattempts + 1)]


def test_visa_fifteenth_reattempt_is_allowed() -> None:
    verdict = check_retry(CardNetwork.VISA, _visa_sequence(14), T0 + 15 * DAY)
    assert verdict.allowed
    assert verdict.rule is None


def test_visa_sixteenth_reattempt_waits_for_the_window() -> None:
    verdict = check_retry(CardNetwork.VISA, _visa_sequence(15), T0 + 16 * DAY)
    assert verdict.allowed
    # the first reattempt (T0 + 1 day) must leave the rolling 30-day window
    assert verdict.earliest == T0 + DAY + 30 * DAY
    assert verdict.rule == "visa_30_day_cap"
    assert "15" in verdict.reason


def test_visa_cap_counts_reattempts_not_the_initial_attempt() -> None:
    history = _visa_sequence(15)
    # the initial decline at T0 is older than 30 days at this point, the reattempts are not
    verdict = check_retry(CardNetwork.VISA, history, T0 + 30 * DAY + HOUR)
    assert verdict.earliest == T0 + 31 * DAY
    assert verdict.rule == "visa_30_day_cap"


def test_visa_cap_restarts_after_a_success() -> None:
    history = [*_visa_sequence(15), succeeded(T0 + 16 * DAY)]
    # the proposed attempt follows a success: it is a first attempt, not a reattempt
    verdict = check_retry(CardNetwork.VISA, history, T0 + 17 * DAY)
    assert verdict.rule is None
    history.append(declined(T0 + 17 * DAY))
    # The proposed attempt follows the new decline, so it is a reattempt. In the window:
    # days 1-15 and the successful attempt of day 16 (it followed a decline), 16 in all;
    # room for one more once days 1 and 2 have left the window.
    verdict = check_retry(CardNetwork.VISA, history, T0 + 18 * DAY)
    assert verdict.rule == "visa_30_day_cap"
    assert verdict.earliest == T0 + 2 * DAY + 30 * DAY


def test_visa_cap_is_configurable() -> None:
    rules = NetworkRules(visa_max_reattempts_30d=2)
    verdict = check_retry(CardNetwork.VISA, _visa_sequence(2), T0 + 3 * DAY, rules)
    assert verdict.earliest == T0 + 31 * DAY


@pytest.mark.parametrize("network", [CardNetwork.MASTERCARD, CardNetwork.AMEX, CardNetwork.DISCOVER])
def test_visa_cap_only_applies_to_visa(network: CardNetwork) -> None:
    verdict = check_retry(network, _visa_sequence(15), T0 + 16 * DAY)
    assert verdict.rule is None


# -- check_retry: Mastercard 10 in 24 hours, 35 in 30 days --------------------------


def test_mastercard_tenth_attempt_in_24h_is_allowed() -> None:
    history = [declined(T0 + i * HOUR) for i in range(9)]
    verdict = check_retry(CardNetwork.MASTERCARD, history, T0 + 9 * HOUR)
    assert verdict.rule is None


def test_mastercard_eleventh_attempt_in_24h_waits() -> None:
    history = [declined(T0 + i * HOUR) for i in range(10)]
    verdict = check_retry(CardNetwork.MASTERCARD, history, T0 + 10 * HOUR)
    assert verdict.earliest == T0 + DAY
    assert verdict.rule == "mastercard_24h_cap"


def test_mastercard_24h_cap_counts_successes_too() -> None:
    history = [declined(T0 + i * HOUR) for i in range(9)] + [succeeded(T0 + 9 * HOUR)]
    verdict = check_retry(CardNetwork.MASTERCARD, history, T0 + 10 * HOUR)
    assert verdict.rule == "mastercard_24h_cap"


def test_mastercard_30_day_cap() -> None:
    # 35 attempts, 4 a day at 6-hour spacing: never more than 4 in any 24 hours
    history = [declined(T0 + i * 6 * HOUR) for i in range(35)]
    proposed = T0 + 35 * 6 * HOUR
    verdict = check_retry(CardNetwork.MASTERCARD, history, proposed)
    assert verdict.rule == "mastercard_30_day_cap"
    assert verdict.earliest == T0 + 30 * DAY


def test_mastercard_both_caps_latest_wins() -> None:
    # 25 attempts spread over the first days, then 10 in a burst on day 20
    spread = [declined(T0 + i * 6 * HOUR) for i in range(25)]
    burst = [declined(T0 + 20 * DAY + i * HOUR) for i in range(10)]
    history = spread + burst
    verdict = check_retry(CardNetwork.MASTERCARD, history, T0 + 20 * DAY + 10 * HOUR)
    # 24h cap alone: T0 + 21 days; 30-day cap: first attempt (T0) + 30 days
    assert verdict.earliest == T0 + 30 * DAY
    assert verdict.rule == "mastercard_30_day_cap"
    # with a looser 30-day cap only the 24-hour cap binds
    looser = NetworkRules(mastercard_max_attempts_30d=100)
    verdict = check_retry(CardNetwork.MASTERCARD, history, T0 + 20 * DAY + 10 * HOUR, looser)
    assert verdict.earliest == T0 + 21 * DAY
    assert verdict.rule == "mastercard_24h_cap"


def test_mac_delay_and_cap_latest_wins() -> None:
    history = [declined(T0 + i * HOUR) for i in range(9)]
    history.append(declined(T0 + 9 * HOUR, advice_code="24"))
    verdict = check_retry(CardNetwork.MASTERCARD, history, T0 + 9 * HOUR)
    assert verdict.earliest == T0 + DAY
    assert verdict.rule == "mastercard_24h_cap"
    history[-1] = declined(T0 + 9 * HOUR, advice_code="26")
    verdict = check_retry(CardNetwork.MASTERCARD, history, T0 + 9 * HOUR)
    assert verdict.earliest == T0 + 9 * HOUR + 2 * DAY
    assert verdict.rule == "mastercard_mac_26"


@pytest.mark.parametrize(
    "network", [CardNetwork.VISA, CardNetwork.AMEX, CardNetwork.DISCOVER, CardNetwork.OTHER]
)
def test_mastercard_caps_only_apply_to_mastercard(network: CardNetwork) -> None:
    history = [succeeded(T0 + i * HOUR) for i in range(20)]
    assert check_retry(network, history, T0 + 20 * HOUR).rule is None


# -- properties ---------------------------------------------------------------------

_NEVER_STRIPE_CODES = (
    "lost_card",
    "stolen_card",
    "pickup_card",
    "stop_payment_order",
    "revocation_of_authorization",
    "revocation_of_all_authorizations",
    "invalid_account",
    "incorrect_number",
    "invalid_number",
    "do_not_try_again",
)
_NEVER_ADVICE = ("do_not_try_again", "03", "21")


def _is_never(decline: Decline) -> bool:
    """Independent restatement of the never-retry signals."""
    return (
        normalize_advice_code(decline.advice_code) in _NEVER_ADVICE
        or visa_category(decline.network_code) == 1
        or visa_category(decline.code) == 1
        or decline.code.strip().lower() in _NEVER_STRIPE_CODES
    )


_codes = st.one_of(
    st.none(),
    st.sampled_from(sorted(STRIPE_DECLINE_CODES)),
    st.sampled_from(sorted(ISO8583_RESPONSE_CODES)),
    st.text(max_size=4),
)
_network_codes = st.one_of(st.none(), st.sampled_from(sorted(ISO8583_RESPONSE_CODES)), st.just("ZZ"))
_advice = st.one_of(
    st.none(),
    st.sampled_from(["try_again_later", "confirm_card_data", "01", "02", "04", "22"]),
    st.sampled_from(sorted(MASTERCARD_RETRY_DELAYS)),
)
_soft_declines = st.builds(classify, _codes, network_code=_network_codes, advice_code=_advice).filter(
    lambda d: not _is_never(d)
)
_any_declines = st.builds(
    classify,
    _codes,
    network_code=_network_codes,
    advice_code=st.one_of(_advice, st.sampled_from(_NEVER_ADVICE)),
)
_outcomes = st.one_of(st.none(), _any_declines)
_zones = st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))])
_rules = st.one_of(
    st.just(DEFAULT_NETWORK_RULES),
    st.builds(
        NetworkRules,
        visa_max_reattempts_30d=st.integers(1, 6),
        mastercard_max_attempts_24h=st.integers(1, 5),
        mastercard_max_attempts_30d=st.integers(1, 12),
    ),
)


def _in_window(times: Sequence[datetime], end: datetime, window: timedelta) -> int:
    return sum(1 for at in times if end - window < at <= end)


def _assert_caps_hold(network: CardNetwork, attempts: Sequence[PriorAttempt], rules: NetworkRules) -> None:
    """Every rolling window (checked at each attempt, where the counts peak) is within caps."""
    times = [attempt.at for attempt in attempts]
    # Visa reattempt: an attempt made right after a declined attempt on the card.
    reattempts = [attempts[i].at for i in range(1, len(attempts)) if attempts[i - 1].decline is not None]
    for end in times:
        if network is CardNetwork.VISA:
            assert _in_window(reattempts, end, timedelta(days=30)) <= rules.visa_max_reattempts_30d
        if network is CardNetwork.MASTERCARD:
            assert _in_window(times, end, timedelta(hours=24)) <= rules.mastercard_max_attempts_24h
            assert _in_window(times, end, timedelta(days=30)) <= rules.mastercard_max_attempts_30d


@settings(max_examples=150, deadline=None)
@given(
    network=st.sampled_from(CardNetwork),
    rules=_rules,
    first=_soft_declines,
    steps=st.lists(
        st.tuples(
            # minutes after the previous attempt: often short, so that the caps bind
            st.one_of(st.integers(-120, 12 * 60), st.integers(0, 5 * 24 * 60)),
            # mostly soft outcomes, so that histories grow long before a "never" ends them
            st.one_of(st.none(), _soft_declines, _soft_declines, _soft_declines, _any_declines),
            _zones,
        ),
        min_size=1,
        max_size=70,
    ),
)
def test_property_retries_at_earliest_never_exceed_caps(
    network: CardNetwork,
    rules: NetworkRules,
    first: Decline,
    steps: list[tuple[int, Decline | None, timezone]],
) -> None:
    history = [PriorAttempt(at=T0, decline=first)]
    for minutes, outcome, zone in steps:
        last = history[-1]
        proposed = (last.at + timedelta(minutes=minutes)).astimezone(zone)
        verdict = check_retry(network, history, proposed, rules)
        if not verdict.allowed:
            assert verdict.earliest is None
            assert any(a.decline is not None and _is_never(a.decline) for a in history)
            break
        assert verdict.earliest is not None
        assert verdict.earliest >= proposed
        assert verdict.earliest >= last.at
        assert verdict.adjusted is (verdict.earliest != proposed)
        if last.decline is not None:
            delay = mastercard_retry_delay(last.decline.advice_code)
            if delay is not None:
                assert verdict.earliest >= last.at + delay
        history.append(PriorAttempt(at=verdict.earliest, decline=outcome))
    _assert_caps_hold(network, history, rules)


@given(
    network=st.sampled_from(CardNetwork),
    rules=_rules,
    history=st.lists(st.tuples(st.integers(0, 60 * 24 * 60), _outcomes, _zones), max_size=40),
    proposed_minutes=st.integers(-10 * 24 * 60, 70 * 24 * 60),
    zone=_zones,
)
def test_property_earliest_never_before_proposed(
    network: CardNetwork,
    rules: NetworkRules,
    history: list[tuple[int, Decline | None, timezone]],
    proposed_minutes: int,
    zone: timezone,
) -> None:
    attempts = [PriorAttempt((T0 + timedelta(minutes=m)).astimezone(z), d) for m, d, z in history]
    proposed = (T0 + timedelta(minutes=proposed_minutes)).astimezone(zone)
    verdict = check_retry(network, attempts, proposed, rules)
    if verdict.allowed:
        assert verdict.earliest is not None
        assert verdict.earliest >= proposed
        assert (verdict.rule is None) is (verdict.earliest == proposed)
    else:
        assert verdict.earliest is None
        assert verdict.rule is not None
    assert verdict.reason


_never_declines = st.one_of(
    st.builds(classify, _codes, network_code=_network_codes, advice_code=st.sampled_from(_NEVER_ADVICE)),
    st.builds(classify, _codes, network_code=st.sampled_from(sorted(VISA_CATEGORY_CODES[1]))),
    st.builds(classify, st.sampled_from(_NEVER_STRIPE_CODES)),
)


@given(
    network=st.sampled_from(CardNetwork),
    rules=_rules,
    earlier=st.lists(st.tuples(st.integers(0, 30 * 24 * 60), _soft_declines), max_size=20),
    never=_never_declines,
    proposed_minutes=st.integers(0, 400 * 24 * 60),
)
def test_property_never_retry_code_is_never_allowed(
    network: CardNetwork,
    rules: NetworkRules,
    earlier: list[tuple[int, Decline]],
    never: Decline,
    proposed_minutes: int,
) -> None:
    attempts = [PriorAttempt(T0 + timedelta(minutes=m), d) for m, d in earlier]
    last_at = T0 + 31 * DAY
    attempts.append(PriorAttempt(last_at, never))
    verdict = check_retry(network, attempts, last_at + timedelta(minutes=proposed_minutes), rules)
    assert not verdict.allowed
    assert verdict.earliest is None
    assert verdict.rule is not None
    assert verdict.adjusted
