"""Decline classification: Stripe codes, ISO 8583 codes, network and advice codes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recobra.domain.declines import (
    ADVICE_CODES,
    ISO8583_RESPONSE_CODES,
    NEVER_RETRY_ADVICE_CODES,
    STRIPE_DECLINE_CODES,
    Decline,
    DeclineCategory,
    classify,
    normalize_advice_code,
    normalize_network_code,
)

H = DeclineCategory.HARD
IF = DeclineCategory.INSUFFICIENT_FUNDS
T = DeclineCategory.TEMPORARY
PE = DeclineCategory.PROCESSING_ERROR
F = DeclineCategory.FRAUD_SUSPECT
A = DeclineCategory.AUTHENTICATION_REQUIRED
U = DeclineCategory.UNKNOWN

DOCS = Path(__file__).resolve().parents[2] / "docs" / "declines.md"


# -- categories ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "retryable"),
    [(H, False), (F, False), (A, False), (IF, True), (T, True), (PE, True), (U, True)],
)
def test_retryable_per_category(category: DeclineCategory, retryable: bool) -> None:
    assert category.retryable is retryable


def test_category_values_are_stable_strings() -> None:
    assert [c.value for c in DeclineCategory] == [
        "hard",
        "insufficient_funds",
        "temporary",
        "processing_error",
        "fraud_suspect",
        "authentication_required",
        "unknown",
    ]


def test_decline_is_frozen_and_has_retryable_shortcut() -> None:
    decline = classify("insufficient_funds")
    assert decline.retryable is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        decline.code = "other"  # type: ignore[misc]


# -- Stripe codes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "category"),
    [
        # hard: the card is dead or its details are wrong
        ("lost_card", H),
        ("stolen_card", H),
        ("pickup_card", H),
        ("restricted_card", H),
        ("expired_card", H),
        ("incorrect_number", H),
        ("invalid_number", H),
        ("incorrect_cvc", H),
        ("invalid_cvc", H),
        ("incorrect_zip", H),
        ("invalid_expiry_month", H),
        ("invalid_expiry_year", H),
        ("invalid_account", H),
        ("new_account_information_available", H),
        ("card_not_supported", H),
        ("currency_not_supported", H),
        ("do_not_try_again", H),
        ("stop_payment_order", H),
        ("revocation_of_authorization", H),
        ("revocation_of_all_authorizations", H),
        ("transaction_not_allowed", H),
        ("not_permitted", H),
        ("service_not_allowed", H),
        ("pin_try_exceeded", H),
        ("testmode_decline", H),
        ("invalid_amount", H),
        # money
        ("insufficient_funds", IF),
        ("withdrawal_count_limit_exceeded", IF),
        ("card_velocity_exceeded", IF),
        # temporary
        ("approve_with_id", T),
        ("try_again_later", T),
        ("issuer_not_available", T),
        ("generic_decline", T),
        ("do_not_honor", T),
        ("call_issuer", T),
        ("no_action_taken", T),
        ("card_declined", T),
        ("card_decline_rate_limit_exceeded", T),
        # processing
        ("processing_error", PE),
        ("reenter_transaction", PE),
        # fraud
        ("fraudulent", F),
        ("merchant_blacklist", F),
        ("security_violation", F),
        # authentication
        ("authentication_required", A),
        ("offline_pin_required", A),
        ("online_or_offline_pin_required", A),
        ("incorrect_pin", A),
        ("invalid_pin", A),
        ("payment_intent_authentication_failure", A),
        # unknown outcome
        ("duplicate_transaction", U),
    ],
)
def test_stripe_codes(code: str, category: DeclineCategory) -> None:
    decline = classify(code)
    assert decline.category is category
    assert decline.code == code
    assert decline.network_code is None
    assert decline.advice_code is None
    assert decline.description == STRIPE_DECLINE_CODES[code][1]


def test_every_category_is_reachable_from_a_stripe_code() -> None:
    assert {category for category, _ in STRIPE_DECLINE_CODES.values()} == set(DeclineCategory)


def test_lookup_is_case_insensitive_and_stripped_but_raw_code_is_kept() -> None:
    decline = classify("  Insufficient_FUNDS \n")
    assert decline.category is IF
    assert decline.code == "  Insufficient_FUNDS \n"


def test_tables_are_normalised_and_described() -> None:
    for code, (category, description) in STRIPE_DECLINE_CODES.items():
        assert code == code.strip().lower()
        assert isinstance(category, DeclineCategory)
        assert description.strip()
    for code, (category, description) in ISO8583_RESPONSE_CODES.items():
        assert code == normalize_network_code(code)
        assert len(code) == 2
        assert isinstance(category, DeclineCategory)
        assert description.strip()


# -- ISO 8583 codes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("05", T),
        ("01", T),
        ("14", H),
        ("04", H),
        ("41", H),
        ("43", H),
        ("46", H),
        ("54", H),
        ("57", H),
        ("N7", H),
        ("R0", H),
        ("R1", H),
        ("R3", H),
        ("51", IF),
        ("61", IF),
        ("65", IF),
        ("59", F),
        ("63", F),
        ("1A", A),
        ("55", A),
        ("91", T),
        ("19", PE),
        ("96", PE),
    ],
)
def test_iso_codes_as_gateway_code(code: str, category: DeclineCategory) -> None:
    decline = classify(code)
    assert decline.category is category
    assert decline.code == code


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [("n7", "N7"), (" 51 ", "51"), ("5", "05"), ("r0", "R0"), ("", None), ("  ", None), (None, None)],
)
def test_normalize_network_code(raw: str | None, normalised: str | None) -> None:
    assert normalize_network_code(raw) == normalised


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [("3", "03"), (" 25", "25"), ("Do_Not_Try_Again", "do_not_try_again"), ("", None), (None, None)],
)
def test_normalize_advice_code(raw: str | None, normalised: str | None) -> None:
    assert normalize_advice_code(raw) == normalised


def test_iso_lookup_of_gateway_code_is_normalised() -> None:
    assert classify("n7").category is H
    assert classify("5").category is T
    assert classify("r1").category is H


def test_network_code_alone_classifies() -> None:
    decline = classify(None, network_code="51")
    assert decline.category is IF
    assert decline.code == ""
    assert decline.network_code == "51"
    assert "51" in decline.description


# -- network code: stricter wins when the gateway code is vague ---------------------


@pytest.mark.parametrize(
    ("code", "network_code", "category"),
    [
        ("generic_decline", "14", H),
        ("do_not_honor", "14", H),
        ("do_not_honor", "51", IF),
        ("generic_decline", "59", F),
        ("call_issuer", "1A", A),
        ("card_declined", "43", H),
        ("05", "51", IF),
        ("", "51", IF),
        ("something_new", "54", H),
        # the network code is not stricter: the vague code's category stays
        ("generic_decline", "96", T),
        ("generic_decline", "05", T),
        # an unknown network code changes nothing
        ("generic_decline", "ZZ", T),
        ("", "ZZ", U),
    ],
)
def test_network_code_refines_vague_codes(code: str, network_code: str, category: DeclineCategory) -> None:
    decline = classify(code, network_code=network_code)
    assert decline.category is category
    assert decline.code == code
    assert decline.network_code == network_code


@pytest.mark.parametrize(
    ("code", "network_code", "category"),
    [
        # a specific code is not softened or second-guessed by a retryable network code
        ("insufficient_funds", "05", IF),
        ("insufficient_funds", "59", IF),
        ("processing_error", "51", PE),
        ("authentication_required", "65", A),
        # but a hard network code (Visa category 1) always wins
        ("insufficient_funds", "14", H),
        ("try_again_later", "43", H),
        ("fraudulent", "R1", H),
        ("processing_error", "46", H),
    ],
)
def test_specific_codes_only_yield_to_hard_network_codes(
    code: str, network_code: str, category: DeclineCategory
) -> None:
    assert classify(code, network_code=network_code).category is category


# -- advice codes -------------------------------------------------------------------


@pytest.mark.parametrize("advice", ["do_not_try_again", "03", "21", " 3", "DO_NOT_TRY_AGAIN"])
@pytest.mark.parametrize("code", ["insufficient_funds", "generic_decline", "", "try_again_later"])
def test_never_advice_makes_it_hard(advice: str, code: str) -> None:
    decline = classify(code, advice_code=advice)
    assert decline.category is H
    assert decline.advice_code == advice
    assert "must not be retried" in decline.description


@pytest.mark.parametrize("advice", ["confirm_card_data", "01"])
def test_update_card_advice_makes_it_hard(advice: str) -> None:
    assert classify("generic_decline", advice_code=advice).category is H


@pytest.mark.parametrize("advice", ["try_again_later", "02", "24", "25", "30", "04", "xyz", ""])
def test_other_advice_keeps_the_category(advice: str) -> None:
    assert classify("insufficient_funds", advice_code=advice).category is IF
    assert classify("processing_error", advice_code=advice).category is PE


def test_never_advice_codes_are_described() -> None:
    assert set(NEVER_RETRY_ADVICE_CODES) == {"do_not_try_again", "03", "21"}
    assert set(ADVICE_CODES).issuperset(NEVER_RETRY_ADVICE_CODES)


# -- bad and unknown input ----------------------------------------------------------


@pytest.mark.parametrize("code", ["", "   ", "weird_new_code", "99", "00", "\x00", "é"])
def test_unknown_or_empty_codes_are_unknown(code: str) -> None:
    decline = classify(code)
    assert decline.category is U
    assert decline.code == code
    assert decline.description


def test_none_code_is_unknown_with_empty_raw_code() -> None:
    decline = classify(None)
    assert decline == Decline(
        category=U,
        code="",
        network_code=None,
        advice_code=None,
        description=decline.description,
    )


@pytest.mark.parametrize("bad", [51, 5.0, b"insufficient_funds", ["x"], object()])
def test_non_string_codes_raise_type_error(bad: object) -> None:
    with pytest.raises(TypeError):
        classify(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        classify("generic_decline", network_code=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        classify("generic_decline", advice_code=bad)  # type: ignore[arg-type]


# -- docs stay in step with the tables ----------------------------------------------


def _docs_rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for match in re.finditer(r"^\| `([^`]+)` \| `([a-z_]+)` \|", DOCS.read_text("utf-8"), re.M):
        rows[match.group(1)] = match.group(2)
    return rows


def test_docs_tables_match_the_code() -> None:
    rows = _docs_rows()
    expected = {code: category.value for code, (category, _) in STRIPE_DECLINE_CODES.items()}
    expected |= {code: category.value for code, (category, _) in ISO8583_RESPONSE_CODES.items()}
    assert rows == expected


# -- properties ---------------------------------------------------------------------

NON_RETRYABLE = {H, F, A}


@given(st.sampled_from(DeclineCategory))
def test_property_non_retryable_categories(category: DeclineCategory) -> None:
    assert category.retryable is (category not in NON_RETRYABLE)


def _case_variants(code: str) -> st.SearchStrategy[str]:
    return st.tuples(
        st.text(" \t\n", max_size=2),
        st.lists(st.booleans(), min_size=len(code), max_size=len(code)),
        st.text(" \t\n", max_size=2),
    ).map(
        lambda parts: (
            parts[0]
            + "".join(ch.upper() if up else ch for ch, up in zip(code, parts[1], strict=True))
            + parts[2]
        )
    )


@given(
    st.sampled_from(sorted(STRIPE_DECLINE_CODES)).flatmap(lambda c: st.tuples(st.just(c), _case_variants(c)))
)
def test_property_every_stripe_code_classifies_and_keeps_raw(pair: tuple[str, str]) -> None:
    canonical, raw = pair
    decline = classify(raw)
    assert decline.category is STRIPE_DECLINE_CODES[canonical][0]
    assert decline.code == raw
    assert decline.retryable is (decline.category not in NON_RETRYABLE)


_ANY_CODE = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(sorted(STRIPE_DECLINE_CODES)),
    st.sampled_from(sorted(ISO8583_RESPONSE_CODES)),
)
_ANY_ADVICE = st.one_of(st.none(), st.text(max_size=6), st.sampled_from(sorted(ADVICE_CODES)))


@given(_ANY_CODE, _ANY_CODE, _ANY_ADVICE)
def test_property_classify_never_raises_on_strings_and_keeps_raw_codes(
    code: str | None, network_code: str | None, advice_code: str | None
) -> None:
    decline = classify(code, network_code=network_code, advice_code=advice_code)
    assert isinstance(decline.category, DeclineCategory)
    assert decline.code == ("" if code is None else code)
    assert decline.network_code == network_code
    assert decline.advice_code == advice_code
    assert decline.description
    if normalize_advice_code(advice_code) in NEVER_RETRY_ADVICE_CODES:
        assert decline.category is H
    network = ISO8583_RESPONSE_CODES.get(normalize_network_code(network_code) or "")
    if network is not None and network[0] is H:
        assert decline.category is H
