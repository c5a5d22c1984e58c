"""The simulated gateway: determinism, idempotency, the decline model, test tokens, the ledger."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recobra.domain.declines import DeclineCategory, classify
from recobra.domain.model import Funding
from recobra.domain.money import Money
from recobra.gateways.simulated import (
    DEFAULT_MIX,
    ActionKind,
    DeclineMix,
    SimulatedGateway,
    days_since_payday,
    from_settings,
)
from recobra.ports import CardRef, ChargeRequest, ChargeResult, ChargeStatus, GatewayError, PaymentGateway

T0 = datetime(2024, 3, 5, 12, tzinfo=UTC)  # a Tuesday, mid-cycle
EUR = Money(1999, "EUR")
HARD_CODES = {"expired_card", "lost_card", "stolen_card", "incorrect_number", "fraudulent"}
NETWORK_CODES = {
    "insufficient_funds": {"51"},
    "do_not_honor": {"05"},
    "generic_decline": {"05"},
    "try_again_later": {"19"},
    "processing_error": {"91", "96"},
    "authentication_required": {"1A"},
    "expired_card": {"54"},
    "lost_card": {"41"},
    "stolen_card": {"43"},
    "incorrect_number": {"14"},
    "fraudulent": {"59", "63"},
}


def card(
    token: str = "tok_1", funding: Funding = Funding.CREDIT, brand: str = "visa", pm_id: str = "pm_1"
) -> CardRef:
    return CardRef(pm_id, token, brand, "4242", 12, 2030, funding)


def request(
    invoice: str = "inv_1",
    *,
    attempt: int = 0,
    at: datetime = T0,
    token: str = "tok_1",
    funding: Funding = Funding.CREDIT,
    brand: str = "visa",
    timezone: str = "UTC",
    key: str | None = None,
    amount: Money = EUR,
) -> ChargeRequest:
    return ChargeRequest(
        idempotency_key=f"recobra:{invoice}:{attempt}" if key is None else key,
        invoice_id=invoice,
        customer_id=f"cus_{invoice}",
        subscription_id=f"sub_{invoice}",
        amount=amount,
        payment_method=card(token, funding, brand),
        attempt_number=attempt,
        attempted_at=at,
        customer_country="ES",
        customer_timezone=timezone,
    )


def only(reasons: Mapping[str, float], *, rate: float = 1.0, **changes: object) -> DeclineMix:
    """A mix where every first attempt fails (by default) for these reasons only."""
    return dataclasses.replace(
        DEFAULT_MIX,
        failure_rate=dict.fromkeys(Funding, rate),
        reasons=dict.fromkeys(Funding, reasons),
        **changes,  # type: ignore[arg-type]
    )


def statuses(results: Iterable[ChargeResult]) -> Counter[ChargeStatus]:
    return Counter(r.status for r in results)


def first_attempts(gateway: SimulatedGateway, n: int, **kwargs: object) -> list[ChargeResult]:
    return [gateway.charge(request(f"inv_{i}", token=f"tok_{i}", **kwargs)) for i in range(n)]  # type: ignore[arg-type]


def local(year: int, month: int, day: int, hour: int, zone: str) -> datetime:
    return datetime(year, month, day, hour, tzinfo=ZoneInfo(zone)).astimezone(UTC)


# -- protocol -----------------------------------------------------------------------


def test_is_a_payment_gateway_named_simulated() -> None:
    gateway = SimulatedGateway()
    assert isinstance(gateway, PaymentGateway)
    assert gateway.name == "simulated"


# -- determinism --------------------------------------------------------------------


def test_same_seed_and_requests_give_the_same_results() -> None:
    requests = [request(f"inv_{i}", token=f"tok_{i % 50}", funding=Funding.DEBIT) for i in range(2000)]
    retries = [
        dataclasses.replace(r, attempt_number=1, idempotency_key=r.idempotency_key + "r") for r in requests
    ]
    a, b = SimulatedGateway(seed=42), SimulatedGateway(seed=42)
    first = [a.charge(r) for r in requests + retries]
    assert first == [b.charge(r) for r in requests + retries]
    assert statuses(first)[ChargeStatus.DECLINED] > 0


def test_different_seeds_give_different_results() -> None:
    requests = [request(f"inv_{i}", token=f"tok_{i}") for i in range(2000)]
    a, b = SimulatedGateway(seed=1), SimulatedGateway(seed=2)
    declined_a = {r.idempotency_key for r in map(a.charge, requests) if r.status is ChargeStatus.DECLINED}
    declined_b = {r.idempotency_key for r in map(b.charge, requests) if r.status is ChargeStatus.DECLINED}
    assert declined_a != declined_b


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(min_value=-(2**70), max_value=2**70),
    invoice=st.text(min_size=1, max_size=30),
    token=st.text(min_size=1, max_size=30).filter(lambda t: not t.startswith("tok_sim_")),
    funding=st.sampled_from(list(Funding)),
    attempt=st.integers(min_value=0, max_value=8),
    brand=st.sampled_from(["visa", "mastercard", "amex"]),
)
def test_any_request_gets_a_reproducible_well_formed_answer(
    *, seed: int, invoice: str, token: str, funding: Funding, attempt: int, brand: str
) -> None:
    req = request(invoice, token=token, funding=funding, attempt=attempt, brand=brand, key=f"k{invoice}")
    result = SimulatedGateway(seed=seed).charge(req)
    assert result == SimulatedGateway(seed=seed).charge(req)
    assert result.idempotency_key == req.idempotency_key
    assert result.gateway_reference is not None
    assert result.gateway_reference.startswith("simch_")
    if result.status is ChargeStatus.DECLINED:
        assert result.decline_code in NETWORK_CODES
        assert result.network_code in NETWORK_CODES[result.decline_code]
        if brand != "mastercard":
            assert result.advice_code is None
    else:
        assert result.status is ChargeStatus.SUCCEEDED
        assert (result.decline_code, result.network_code, result.advice_code) == (None, None, None)


# -- idempotency ------------------------------------------------------------------------


def test_same_key_twice_charges_once_and_returns_the_first_result() -> None:
    gateway = SimulatedGateway(seed=3)
    req = request()
    assert gateway.attempt_status(req.idempotency_key).status is ChargeStatus.NOT_FOUND
    first = gateway.charge(req)
    # A rerun after a crash repeats the key later, possibly with another card.
    again = gateway.charge(dataclasses.replace(req, attempted_at=T0 + timedelta(hours=5)))
    assert again == first
    assert gateway.charge_count == 1
    assert len(gateway.charges()) == 1
    assert gateway.attempt_status(req.idempotency_key) == first


def test_key_reused_for_another_invoice_is_refused() -> None:
    gateway = SimulatedGateway()
    gateway.charge(request("inv_1", key="k"))
    with pytest.raises(GatewayError, match="already used for invoice 'inv_1'") as caught:
        gateway.charge(request("inv_2", key="k"))
    assert caught.value.transient is False
    assert caught.value.code == "idempotency_key_reused"


def test_ledger_entries_record_time_amount_status_and_codes() -> None:
    gateway = SimulatedGateway(mix=only({"insufficient_funds": 1.0}))
    gateway.charge(request("inv_1", brand="mastercard", funding=Funding.DEBIT))
    gateway.charge(request("inv_2", token="tok_sim_ok"))
    entries = gateway.charges()
    assert [e.invoice_id for e in entries] == ["inv_1", "inv_2"]
    entry = entries[0]
    assert (entry.at, entry.amount, entry.status) == (T0, EUR, ChargeStatus.DECLINED)
    assert (entry.decline_code, entry.network_code) == ("insufficient_funds", "51")
    assert (entry.funding, entry.token, entry.customer_id) == (Funding.DEBIT, "tok_1", "cus_inv_1")
    assert entry.gateway_reference == entry.result.gateway_reference
    assert [e.invoice_id for e in gateway.charges("inv_2")] == ["inv_2"]
    assert gateway.charges("inv_3") == []


def test_invalid_requests_raise_permanent_gateway_errors() -> None:
    gateway = SimulatedGateway()
    for bad in (
        request(key=""),
        request(""),
        request(token=""),
        request(at=datetime(2024, 3, 5, 12)),  # noqa: DTZ001 - the naive time under test
    ):
        with pytest.raises(GatewayError) as caught:
            gateway.charge(bad)
        assert caught.value.transient is False
    assert gateway.charge_count == 0


# -- first attempts -------------------------------------------------------------------


@pytest.mark.parametrize("funding", [Funding.CREDIT, Funding.DEBIT, Funding.PREPAID, Funding.UNKNOWN])
def test_first_attempt_failure_rate_matches_the_mix(funding: Funding) -> None:
    n = 20_000
    results = first_attempts(SimulatedGateway(seed=11), n, funding=funding)
    observed = statuses(results)[ChargeStatus.DECLINED] / n
    # 20k draws: one standard deviation is about 0.25 points; 1 point is four of them.
    assert observed == pytest.approx(DEFAULT_MIX.failure_rate[funding], abs=0.01)


def test_debit_and_credit_fail_for_different_reasons() -> None:
    shares = {}
    for funding in (Funding.CREDIT, Funding.DEBIT):
        declines = [
            r
            for r in first_attempts(SimulatedGateway(seed=5), 20_000, funding=funding, brand=funding.value)
            if r.status is ChargeStatus.DECLINED
        ]
        shares[funding] = Counter(r.decline_code for r in declines)["insufficient_funds"] / len(declines)
    total_credit = sum(DEFAULT_MIX.reasons[Funding.CREDIT].values())
    total_debit = sum(DEFAULT_MIX.reasons[Funding.DEBIT].values())
    assert shares[Funding.CREDIT] == pytest.approx(6.94 / total_credit, abs=0.025)
    assert shares[Funding.DEBIT] == pytest.approx(28.99 / total_debit, abs=0.04)


def test_the_reason_belongs_to_the_invoice_and_card() -> None:
    gateway = SimulatedGateway(seed=8, mix=only(DEFAULT_MIX.reasons[Funding.CREDIT]))
    first = gateway.charge(request("inv_1"))
    later = [gateway.charge(request("inv_1", attempt=n, at=T0 + timedelta(days=n))) for n in range(1, 6)]
    codes = {
        (r.decline_code, r.network_code, r.advice_code) for r in [first, *later] if r.status == "declined"
    }
    assert len(codes) == 1


def test_codes_are_realistic_and_advice_only_for_some_mastercard_declines() -> None:
    gateway = SimulatedGateway(seed=21, mix=only(DEFAULT_MIX.reasons[Funding.DEBIT]))
    mastercard = first_attempts(gateway, 3000, brand="Mastercard", funding=Funding.DEBIT)
    visa = [gateway.charge(request(f"v_{i}", token=f"tv_{i}")) for i in range(1000)]
    for result in mastercard + visa:
        assert result.decline_code is not None
        assert result.network_code in NETWORK_CODES[result.decline_code]
    assert all(r.advice_code is None for r in visa)
    with_advice = [r for r in mastercard if r.advice_code is not None]
    assert 0.2 * len(mastercard) < len(with_advice) < 0.8 * len(mastercard)
    for result in with_advice:
        code = result.decline_code
        if code == "expired_card":
            assert result.advice_code == "01"
        elif code in HARD_CODES:
            assert result.advice_code == "03"
        else:
            assert result.advice_code in {"02", "24", "25", "26", "27", "28", "29", "30"}


def test_every_simulated_decline_classifies_as_its_model_says() -> None:
    """Cross-check with the engine's taxonomy: nothing the simulator says is unknown to it."""
    gateway = SimulatedGateway(seed=4, mix=only(DEFAULT_MIX.reasons[Funding.CREDIT]))
    for result in first_attempts(gateway, 3000, brand="mastercard"):
        assert result.decline_code is not None
        decline = classify(
            result.decline_code, network_code=result.network_code, advice_code=result.advice_code
        )
        assert decline.category is not DeclineCategory.UNKNOWN
        assert decline.retryable is (result.decline_code not in HARD_CODES | {"authentication_required"})


# -- retries ----------------------------------------------------------------------------


def _retry_all(
    gateway: SimulatedGateway,
    invoices: Iterable[str],
    at: datetime,
    *,
    timezone: str = "UTC",
    attempt: int = 1,
) -> list[ChargeResult]:
    return [
        gateway.charge(request(invoice, attempt=attempt, at=at, timezone=timezone, funding=Funding.DEBIT))
        for invoice in invoices
    ]


def _failed_first(gateway: SimulatedGateway, n: int, at: datetime = T0, timezone: str = "UTC") -> list[str]:
    invoices = [f"inv_{i}" for i in range(n)]
    for invoice in invoices:
        result = gateway.charge(request(invoice, at=at, timezone=timezone, funding=Funding.DEBIT))
        assert result.status is ChargeStatus.DECLINED
    return invoices


def test_hard_and_fraud_declines_never_succeed_on_retry() -> None:
    mix = only(dict.fromkeys(HARD_CODES, 1.0))
    gateway = SimulatedGateway(seed=13, mix=mix)
    invoices = _failed_first(gateway, 500)
    for attempt, days in enumerate([1, 4, 10, 26, 27], start=1):  # incl. paydays and small hours
        results = _retry_all(gateway, invoices, T0 + timedelta(days=days, hours=-9), attempt=attempt)
        assert statuses(results) == {ChargeStatus.DECLINED: 500}


def test_hard_declines_in_the_default_mix_never_recover() -> None:
    gateway = SimulatedGateway(seed=17)
    hard = [
        r.idempotency_key.split(":")[1]
        for r in first_attempts(gateway, 20_000, funding=Funding.DEBIT)
        if r.decline_code in HARD_CODES
    ]
    assert len(hard) > 100
    for attempt in (1, 2, 3):
        for invoice in hard:
            i = invoice.removeprefix("inv_")
            req = request(
                invoice, token=f"tok_{i}", funding=Funding.DEBIT, attempt=attempt, at=T0 + timedelta(days=27)
            )
            assert gateway.charge(req).status is ChargeStatus.DECLINED


def test_processing_errors_usually_succeed_on_retry() -> None:
    gateway = SimulatedGateway(seed=19, mix=only({"processing_error": 1.0}))
    invoices = _failed_first(gateway, 2000)
    rate = statuses(_retry_all(gateway, invoices, T0 + timedelta(hours=2)))[ChargeStatus.SUCCEEDED] / 2000
    assert rate == pytest.approx(0.80, abs=0.04)


def test_insufficient_funds_recover_more_right_after_payday() -> None:
    n = 4000
    mix = only({"insufficient_funds": 1.0})
    after_payday = SimulatedGateway(seed=23, mix=mix)
    mid_cycle = SimulatedGateway(seed=23, mix=mix)
    start = local(2024, 2, 26, 12, "America/New_York")
    for gateway, retry_at in (
        (after_payday, local(2024, 3, 2, 12, "America/New_York")),  # a day after the 1st
        (mid_cycle, local(2024, 3, 9, 12, "America/New_York")),
    ):
        invoices = _failed_first(gateway, n, at=start, timezone="America/New_York")
        _retry_all(gateway, invoices, retry_at, timezone="America/New_York")
    payday_rate = sum(e.status == "succeeded" for e in after_payday.charges()) / n
    mid_rate = sum(e.status == "succeeded" for e in mid_cycle.charges()) / n
    # Model: 0.14 x 2.4 = 0.336 vs 0.14; with 4000 retries each, one s.d. is under 0.008.
    assert payday_rate == pytest.approx(0.336, abs=0.03)
    assert mid_rate == pytest.approx(0.14, abs=0.03)
    assert payday_rate - mid_rate > 0.12


def test_payday_is_taken_in_the_customers_time_zone() -> None:
    n = 3000
    mix = only({"insufficient_funds": 1.0}, small_hours_factor=1.0)
    # 23:30 UTC on the 14th: already the 15th (a payday) in Tokyo, still the 14th in Los Angeles.
    retry_at = datetime(2024, 3, 14, 23, 30, tzinfo=UTC)
    rates = {}
    for zone in ("Asia/Tokyo", "America/Los_Angeles"):
        gateway = SimulatedGateway(seed=29, mix=mix)
        invoices = _failed_first(gateway, n, timezone=zone)
        results = _retry_all(gateway, invoices, retry_at, timezone=zone)
        rates[zone] = statuses(results)[ChargeStatus.SUCCEEDED] / n
    assert rates["Asia/Tokyo"] - rates["America/Los_Angeles"] > 0.12


def test_issuer_temporary_declines_recover_better_after_a_day() -> None:
    n = 6000
    mix = only({"do_not_honor": 1.0})
    soon, later = SimulatedGateway(seed=31, mix=mix), SimulatedGateway(seed=31, mix=mix)
    rates = []
    for gateway, delay in ((soon, timedelta(hours=2)), (later, timedelta(days=2))):
        invoices = _failed_first(gateway, n)
        rates.append(statuses(_retry_all(gateway, invoices, T0 + delay))[ChargeStatus.SUCCEEDED] / n)
    assert rates[0] == pytest.approx(0.10, abs=0.02)
    assert rates[1] == pytest.approx(0.15, abs=0.02)


def test_retry_probability_shape() -> None:
    mix = DEFAULT_MIX
    zone = ZoneInfo("Europe/Madrid")
    noon_mid = datetime(2024, 3, 8, 12, tzinfo=zone)
    noon_payday = datetime(2024, 3, 16, 12, tzinfo=zone)
    night_mid = datetime(2024, 3, 8, 3, tzinfo=zone)
    day = timedelta(days=1)
    nsf = mix.recovery["insufficient_funds"]
    assert mix.retry_probability("insufficient_funds", noon_mid, day) == pytest.approx(nsf)
    assert mix.retry_probability("insufficient_funds", noon_payday, day) == pytest.approx(nsf * 2.4)
    assert mix.retry_probability("insufficient_funds", night_mid, day) == pytest.approx(nsf * 0.9)
    dnh = mix.recovery["do_not_honor"]
    assert mix.retry_probability("do_not_honor", noon_mid, timedelta(hours=3)) == pytest.approx(dnh)
    assert mix.retry_probability("do_not_honor", noon_mid, day) == pytest.approx(dnh * 1.5)
    assert mix.retry_probability("do_not_honor", noon_mid, None) == pytest.approx(dnh * 1.5)
    for code in HARD_CODES:
        assert mix.retry_probability(code, noon_payday, day) == 0.0


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (datetime(2024, 3, 1, tzinfo=UTC), 0),
        (datetime(2024, 3, 3, tzinfo=UTC), 2),
        (datetime(2024, 3, 14, tzinfo=UTC), 13),
        (datetime(2024, 3, 15, tzinfo=UTC), 0),
        (datetime(2024, 3, 30, tzinfo=UTC), 15),
        (datetime(2024, 3, 31, tzinfo=UTC), 0),
        (datetime(2024, 2, 28, tzinfo=UTC), 13),
        (datetime(2024, 2, 29, tzinfo=UTC), 0),  # leap year
        (datetime(2023, 2, 28, tzinfo=UTC), 0),
        (datetime(2100, 2, 28, tzinfo=UTC), 0),  # not a leap year
    ],
)
def test_days_since_payday(day: datetime, expected: int) -> None:
    assert days_since_payday(day) == expected


def test_a_new_card_is_a_fresh_draw_with_a_low_failure_rate() -> None:
    n = 4000
    gateway = SimulatedGateway(seed=37, mix=only(DEFAULT_MIX.reasons[Funding.DEBIT]))
    invoices = _failed_first(gateway, n)
    results = [
        gateway.charge(request(invoice, attempt=1, token=f"new_{invoice}", at=T0 + timedelta(days=1)))
        for invoice in invoices
    ]
    failed = statuses(results)[ChargeStatus.DECLINED] / n
    assert failed == pytest.approx(DEFAULT_MIX.new_card_failure_rate, abs=0.015)
    # A new card that declined is now in trouble itself: its reason stays put.
    for invoice, result in zip(invoices, results, strict=True):
        if result.status is ChargeStatus.DECLINED and result.decline_code in HARD_CODES:
            again = request(invoice, attempt=2, token=f"new_{invoice}", at=T0 + timedelta(days=3))
            assert gateway.charge(again).decline_code == result.decline_code


def test_a_retry_without_history_is_a_retry_of_a_failed_billing_charge() -> None:
    gateway = SimulatedGateway(seed=41, mix=only({"stolen_card": 1.0}, rate=0.0))
    results = [gateway.charge(request(f"inv_{i}", attempt=1)) for i in range(200)]
    assert statuses(results) == {ChargeStatus.DECLINED: 200}
    assert {r.network_code for r in results} == {"43"}


# -- test tokens ------------------------------------------------------------------------


def test_tok_sim_ok_always_succeeds() -> None:
    gateway = SimulatedGateway(mix=only({"lost_card": 1.0}))
    results = [gateway.charge(request(f"inv_{i}", token="tok_sim_ok", attempt=i % 3)) for i in range(50)]
    assert statuses(results) == {ChargeStatus.SUCCEEDED: 50}


@pytest.mark.parametrize(
    ("code", "network", "mastercard_advice"),
    [
        ("insufficient_funds", "51", "26"),
        ("do_not_honor", "05", "24"),
        ("expired_card", "54", "01"),
        ("lost_card", "41", "03"),
        ("stolen_card", "43", "03"),
        ("incorrect_number", "14", "03"),
        ("fraudulent", "59", "03"),
        ("processing_error", "96", None),
        ("authentication_required", "1A", None),
        ("stop_payment_order", "R0", "21"),
        ("something_new", "05", None),
    ],
)
def test_tok_sim_decline_always_declines_with_that_code(
    code: str, network: str, mastercard_advice: str | None
) -> None:
    gateway = SimulatedGateway(mix=only({"insufficient_funds": 1.0}, rate=0.0))
    token = f"tok_sim_decline_{code}"
    for attempt in range(4):
        at = T0 + timedelta(days=attempt * 7)
        visa = gateway.charge(request("inv_v", token=token, attempt=attempt, at=at))
        assert (visa.status, visa.decline_code, visa.network_code, visa.advice_code) == (
            ChargeStatus.DECLINED,
            code,
            network,
            None,
        )
        mc = gateway.charge(request("inv_m", token=token, attempt=attempt, at=at, brand="mastercard"))
        assert (mc.decline_code, mc.network_code, mc.advice_code) == (code, network, mastercard_advice)


def test_tok_sim_error_answers_nothing_and_charges_nothing() -> None:
    gateway = SimulatedGateway()
    req = request(token="tok_sim_error")
    result = gateway.charge(req)
    assert result.status is ChargeStatus.ERROR
    assert result.gateway_reference is None
    assert gateway.charge_count == 0
    assert gateway.attempt_status(req.idempotency_key).status is ChargeStatus.NOT_FOUND
    # The same key then reaches the gateway with a working card.
    ok = gateway.charge(dataclasses.replace(req, payment_method=card("tok_sim_ok")))
    assert ok.status is ChargeStatus.SUCCEEDED
    assert gateway.attempt_status(req.idempotency_key) == ok


# -- final actions ---------------------------------------------------------------------------


def test_final_actions_are_recorded_once_per_key() -> None:
    gateway = SimulatedGateway()
    gateway.cancel_subscription("sub_1", at=T0, idempotency_key="a1")
    gateway.cancel_subscription("sub_1", at=T0 + timedelta(hours=1), idempotency_key="a1")
    gateway.pause_subscription("sub_2", at=T0, idempotency_key="a2")
    gateway.mark_unpaid("inv_3", at=T0, idempotency_key="a3")
    actions = gateway.subscription_actions()
    assert [(a.kind, a.target_id, a.at) for a in actions] == [
        (ActionKind.CANCEL, "sub_1", T0),
        (ActionKind.PAUSE, "sub_2", T0),
        (ActionKind.MARK_UNPAID, "inv_3", T0),
    ]


def test_final_actions_reject_empty_ids_and_reused_keys() -> None:
    gateway = SimulatedGateway()
    with pytest.raises(GatewayError, match="id is empty") as caught:
        gateway.cancel_subscription("", at=T0, idempotency_key="k")
    assert caught.value.transient is False
    with pytest.raises(GatewayError, match="idempotency key is empty"):
        gateway.mark_unpaid("inv_1", at=T0, idempotency_key="")
    with pytest.raises(GatewayError, match="timezone-aware"):
        gateway.pause_subscription("sub_1", at=datetime(2024, 1, 1), idempotency_key="k")  # noqa: DTZ001
    gateway.pause_subscription("sub_1", at=T0, idempotency_key="k")
    with pytest.raises(GatewayError, match="already used to pause 'sub_1'") as caught:
        gateway.cancel_subscription("sub_1", at=T0, idempotency_key="k")
    assert caught.value.transient is False
    assert len(gateway.subscription_actions()) == 1


# -- ledger file -------------------------------------------------------------------------------


def test_two_gateways_share_a_ledger_file(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    with SimulatedGateway(seed=5, ledger_path=path) as one, SimulatedGateway(seed=5, ledger_path=path) as two:
        req = request(funding=Funding.DEBIT)
        assert two.attempt_status(req.idempotency_key).status is ChargeStatus.NOT_FOUND
        first = one.charge(req)
        assert two.attempt_status(req.idempotency_key) == first
        assert two.charge(req) == first
        assert one.charge_count == two.charge_count == 1
        entry = two.charges()[0]
        assert (entry.at, entry.amount, entry.result) == (T0, EUR, first)
        one.cancel_subscription("sub_1", at=T0, idempotency_key="c1")
        two.cancel_subscription("sub_1", at=T0, idempotency_key="c1")
        assert [a.target_id for a in two.subscription_actions()] == ["sub_1"]


def test_ledger_file_gives_the_same_answers_as_memory(tmp_path: Path) -> None:
    requests = []
    for i in range(300):
        requests.append(request(f"inv_{i}", token=f"t{i}", funding=Funding.DEBIT))
        requests.append(
            request(f"inv_{i}", token=f"t{i}", funding=Funding.DEBIT, attempt=1, at=T0 + timedelta(days=2))
        )
        requests.append(
            request(f"inv_{i}", token=f"n{i}", funding=Funding.DEBIT, attempt=2, at=T0 + timedelta(days=5))
        )
    memory = SimulatedGateway(seed=9)
    with SimulatedGateway(seed=9, ledger_path=str(tmp_path / "l.sqlite")) as filed:
        assert [filed.charge(r) for r in requests] == [memory.charge(r) for r in requests]
        assert [e.result for e in filed.charges("inv_7")] == [e.result for e in memory.charges("inv_7")]


def test_a_closed_ledger_file_is_not_silently_replaced(tmp_path: Path) -> None:
    gateway = SimulatedGateway(ledger_path=str(tmp_path / "ledger.sqlite"))
    gateway.close()
    gateway.close()
    with pytest.raises(sqlite3.ProgrammingError):
        gateway.charge(request())


def test_a_ledger_file_keeps_its_seed(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    SimulatedGateway(seed=1, ledger_path=path).close()
    with pytest.raises(ValueError, match="seed 1, not 2"):
        SimulatedGateway(seed=2, ledger_path=path)


def test_latency_is_applied_after_the_ledger_write(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    latency = 1.0
    slow = SimulatedGateway(seed=3, ledger_path=path, latency_s=latency)
    observer = SimulatedGateway(seed=3, ledger_path=path)
    req = request()
    answers: list[ChargeResult] = []
    worker = threading.Thread(target=lambda: answers.append(slow.charge(req)))
    started = time.monotonic()
    worker.start()
    seen = observer.attempt_status(req.idempotency_key)
    while seen.status is ChargeStatus.NOT_FOUND and time.monotonic() - started < 0.8 * latency:
        time.sleep(0.005)
        seen = observer.attempt_status(req.idempotency_key)
    # The charge is in the ledger while charge() is still sleeping: a worker killed
    # now would leave it for attempt_status to find.
    assert seen.status is not ChargeStatus.NOT_FOUND
    assert worker.is_alive()
    worker.join(timeout=10)
    assert answers == [seen]
    assert time.monotonic() - started >= latency
    slow.close()
    observer.close()


_CHILD = """
import sys
from datetime import UTC, datetime
from recobra.domain.model import Funding
from recobra.domain.money import Money
from recobra.gateways.simulated import SimulatedGateway
from recobra.ports import CardRef, ChargeRequest

gateway = SimulatedGateway(seed=3, ledger_path=sys.argv[1], latency_s=60.0)
card = CardRef("pm_1", "tok_1", "visa", "4242", 12, 2030, Funding.CREDIT)
gateway.charge(ChargeRequest("recobra:crash:0", "inv_crash", "cus_1", None, Money(1999, "EUR"), card, 0,
                             datetime(2024, 3, 5, 12, tzinfo=UTC), "ES", "UTC"))
print("returned", flush=True)
"""


@pytest.mark.slow
def test_a_worker_killed_after_the_charge_leaves_it_in_the_ledger(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    with SimulatedGateway(seed=3, ledger_path=path) as observer:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, path], stdout=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            seen = observer.attempt_status("recobra:crash:0")
            while seen.status is ChargeStatus.NOT_FOUND and time.monotonic() < deadline:
                assert child.poll() is None, "the child exited before charging"
                time.sleep(0.02)
                seen = observer.attempt_status("recobra:crash:0")
            assert seen.status is not ChargeStatus.NOT_FOUND
            assert child.poll() is None  # still inside charge(), sleeping
        finally:
            child.kill()
            out, _ = child.communicate(timeout=30)
        assert b"returned" not in out
        # The rerun after the crash finds the charge instead of charging again.
        rerun = observer.charge(
            request("inv_crash", key="recobra:crash:0", token="tok_1", amount=Money(1999, "EUR"))
        )
        assert rerun == seen
        assert observer.charge_count == 1


def test_latency_in_memory() -> None:
    gateway = SimulatedGateway(latency_s=0.05)
    started = time.monotonic()
    gateway.charge(request())
    assert time.monotonic() - started >= 0.05


# -- settings and mix validation ---------------------------------------------------------------


def test_from_settings_reads_strings(tmp_path: Path) -> None:
    path = tmp_path / "sim.sqlite"
    with from_settings(
        {
            "seed": "12",
            "ledger": str(path),
            "latency_ms": "0",
            "failure_rate_credit": "0.2",
            "failure_rate_debit": "0.3",
            "new_card_failure_rate": "0.01",
            "recovery_insufficient_funds": "0.5",
        }
    ) as gateway:
        assert gateway.seed == 12
        assert gateway.ledger_path == str(path)
        assert gateway.mix.failure_rate[Funding.CREDIT] == 0.2
        assert gateway.mix.failure_rate[Funding.DEBIT] == 0.3
        assert gateway.mix.failure_rate[Funding.PREPAID] == DEFAULT_MIX.failure_rate[Funding.PREPAID]
        assert gateway.mix.new_card_failure_rate == 0.01
        assert gateway.mix.recovery["insufficient_funds"] == 0.5
        gateway.charge(request())
    assert path.exists()
    assert from_settings({"latency_ms": "250", "ledger": ""}).latency_s == 0.25


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"seed": "one"}, "seed: not an integer"),
        ({"latency_ms": "fast"}, "latency_ms: not a number"),
        ({"latency_ms": "-5"}, "latency_ms: must be >= 0"),
        ({"failure_rate_debit": "1.5"}, "failure_rate_debit: must be between 0 and 1"),
        ({"failure_rate_credit": "nan"}, "failure_rate_credit: must be finite"),
        ({"new_card_failure_rate": "x"}, "new_card_failure_rate: not a number"),
        ({"recovery_lost_card": "0.3"}, "recovery_lost_card: hard and fraud declines never recover"),
        ({"failure_rate_amex": "0.1"}, "failure_rate_amex: unknown setting"),
        ({"sed": "1"}, "sed: unknown setting"),
    ],
)
def test_from_settings_names_the_bad_key(settings_: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_settings(settings_)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"failure_rate": {**DEFAULT_MIX.failure_rate, Funding.DEBIT: 1.2}}, r"failure_rate\[debit\]"),
        ({"failure_rate": {Funding.CREDIT: 0.1}}, r"failure_rate\[debit\]: missing"),
        (
            {"failure_rate": {**{str(k): v for k, v in DEFAULT_MIX.failure_rate.items()}, "amex": 0.1}},
            "unknown funding 'amex'",
        ),
        ({"reasons": {**DEFAULT_MIX.reasons, Funding.PREPAID: {}}}, r"reasons\[prepaid\]: must name"),
        (
            {"reasons": {**DEFAULT_MIX.reasons, Funding.PREPAID: {"insufficient_funds": 0}}},
            r"reasons\[prepaid\]\[insufficient_funds\]: weight must be positive",
        ),
        (
            {"reasons": {**DEFAULT_MIX.reasons, Funding.CREDIT: {"made_up": 1.0}}},
            r"reasons\[credit\]\[made_up\]: unknown decline code",
        ),
        (
            {"recovery": {**DEFAULT_MIX.recovery, "fraudulent": 0.1}},
            r"recovery\[fraudulent\]: hard and fraud",
        ),
        ({"recovery": {"insufficient_funds": 0.1}}, r"recovery\[generic_decline\]: missing"),
        ({"new_card_failure_rate": -0.1}, "new_card_failure_rate"),
        ({"payday_window_days": 40}, "payday_window_days"),
        ({"mastercard_advice_share": 2}, "mastercard_advice_share"),
    ],
)
def test_decline_mix_validation_names_the_field(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(DEFAULT_MIX, **changes)  # type: ignore[arg-type]


@given(rate=st.floats(allow_nan=False) | st.integers())
def test_any_failure_rate_outside_0_1_is_rejected(rate: float) -> None:
    rates = {**DEFAULT_MIX.failure_rate, Funding.PREPAID: rate}
    if 0 <= rate <= 1:
        assert dataclasses.replace(DEFAULT_MIX, failure_rate=rates).failure_rate[Funding.PREPAID] == rate
    else:
        with pytest.raises(ValueError, match=r"failure_rate\[prepaid\]"):
            dataclasses.replace(DEFAULT_MIX, failure_rate=rates)


def test_default_mix_is_read_only_and_complete() -> None:
    for funding in Funding:
        assert 0 < DEFAULT_MIX.failure_rate[funding] < 1
        assert DEFAULT_MIX.reasons[funding]
    with pytest.raises(TypeError):
        DEFAULT_MIX.failure_rate[Funding.CREDIT] = 0.5  # type: ignore[index]
    assert DEFAULT_MIX.failure_rate[Funding.DEBIT] > DEFAULT_MIX.failure_rate[Funding.CREDIT]
