"""A seeded, deterministic payment gateway for the demo, the simulator and benchmarks.

This is a real component, not a test double: it implements
:class:`recobra.ports.PaymentGateway` with a model of how subscription charges
fail and recover, and keeps a ledger of every charge it "made".

Assumptions of the model
========================

Everything below is a modelling choice. The figures come from the public
sources named in the next section where there are any; where there are none
the figure is our assumption and is labelled as such. ``docs/gateways.md``
carries the same table.

* **First attempts.** A charge with ``attempt_number == 0`` fails with
  probability ``failure_rate[funding]``. Whether an invoice is in trouble on a
  given card is a deterministic draw from ``(seed, invoice_id, card token)``.
* **Reason.** The reason of that trouble is a second draw from the same
  ``(seed, invoice_id, token)``, weighted by the funding type's reason mix.
  Every reason returns raw codes as a real gateway would: a Stripe
  ``decline_code``, an ISO 8583 ``network_code`` and, for Mastercard cards and
  only some of the time, a Merchant Advice Code in ``advice_code``.
* **Retries** (``attempt_number >= 1``) on the same ``(invoice, token)`` keep
  the reason and succeed with probability :meth:`DeclineMix.retry_probability`:
  hard declines (expired, lost, stolen, invalid number ...) and fraud never
  succeed; processing errors usually do; issuer "temporary" declines
  (``do_not_honor``, ``generic_decline``) succeed moderately, better once a day
  has passed since the first decline; insufficient funds succeed much more
  often within ``payday_window_days`` after a payday (the 1st, the 15th and the
  last day of the month, in the customer's time zone from the request);
  attempts between 00:00 and 05:59 local time succeed slightly less. Each
  retry's draw comes from ``(seed, idempotency_key)``, so a retry is
  reproducible and two retries of the same invoice are independent.
* **New card.** A retry with a token that has not declined on the invoice
  while another token has (the customer gave a new card) is a fresh draw that
  fails with the low ``new_card_failure_rate``.
* **No history.** A retry of an invoice this gateway never saw decline is
  taken to be a retry of the billing system's failed first charge on that
  card: the pair is in trouble, with the reason drawn as above.

Test tokens (checked before the model, like Stripe's test cards):

* ``tok_sim_ok``: always succeeds.
* ``tok_sim_decline_<stripe_decline_code>``: always declines with that code and
  its network code (``"05"`` for codes this module does not know).
* ``tok_sim_error``: returns ``ChargeStatus.ERROR`` and records nothing, as if
  the request never reached the gateway (``attempt_status`` says ``NOT_FOUND``).

Default figures and sources (``DEFAULT_MIX``)
=============================================

* Reason mixes for credit and debit: Recurly Research, "How do you compare"
  (836 subscription businesses, recurring transactions only, May 2014 to May
  2016), reasons for credit vs debit card declines, all sites: generic decline
  51.74% / 37.77%, temporary hold 25.48% / 10.05%, insufficient funds 6.94% /
  28.99%, fraud / stolen card 5.15% / 6.03%, invalid card number 1.67% /
  8.32%, invalid transaction 1.51% / 1.51%, other 6.31% / 4.63%. Recurly's
  guide to decline messages calls "temporary hold" the issuer's "Do Not Honor"
  response, so it
  maps to ``do_not_honor``. How the fraud share is split between
  ``stolen_card``, ``lost_card`` and ``fraudulent``, and how "invalid
  transaction" + "other" is split between ``expired_card``,
  ``processing_error``, ``try_again_later`` and ``authentication_required``,
  is our assumption.
* Card mix (for ``Funding.UNKNOWN``, a blend): same study, 61% credit, 39%
  debit across all sites.
* First-attempt failure rates: credit 11%, debit 15%, prepaid 25%; these are
  our assumptions. Guides: Recurly reports that debit cards decline at a
  higher rate than credit cards (same study), that 5-14% (B2B) and 6-18% (B2C)
  of monthly transactions declining is normal ("Benchmarking & Minimizing
  Credit Card Transaction Decline Rates"), and an average above 12% over 2015,
  14.4% to 15.9% by quarter ("Recurly Subscription Snapshot", as reported by
  Digital Transactions and CardNotPresent.com, June 2016). The blend for
  unknown funding is 12.6%. Recurly's support article on prepaid cards says
  insufficient funds is their most common decline reason; the prepaid mix and
  rate are our assumptions.
* Retry success per attempt: our assumptions, calibrated so that about four
  retries recover roughly half of soft declines, in line with vendor-reported
  recovery rates (Stripe Smart Retries, default four retries within 21 days).
  Recurly Research ("Subscription benchmarks: top payment decline reasons",
  Q1-Q2 2018) found insufficient funds the most recoverable of the top five
  reasons, with most recoveries 2 to 12 days after the decline.
* Payday effect: Recurly's CEO advises timing retries on the 1st or 15th of
  the month, when many payroll deposits land (Digital Transactions, 2016); the
  size of the effect (x2.4) is a vendor's claim (Slicker: "up to 2.4x"), not a
  study, and is used here as an assumption.
* Small hours: an assumption. Stripe's Smart Retries documentation notes the
  opposite for debit cards in some countries (slightly more successful just
  after midnight local time), so keep ``small_hours_factor`` close to 1.
* Merchant Advice Codes: Mastercard's list as published by gateways
  (e.g. Braintree): 01 new account information, 02 try again later, 03 do not
  try again, 21 stop recurring, 24-30 retry after 1 hour ... 10 days.

Ledger
======

In memory by default. With ``ledger_path`` the ledger is a SQLite file (WAL)
that several processes may share: a charge is committed to it before
``charge`` returns, then ``latency_s`` is slept, so a worker killed during
that sleep leaves a charge the gateway made and the worker never recorded,
which is what ``attempt_status`` is for. Open one gateway per process (a
SQLite connection must not cross ``fork``).
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import struct
import threading
import time
import zlib
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from recobra.domain.model import Funding
from recobra.domain.money import Money
from recobra.ports import ChargeRequest, ChargeResult, ChargeStatus, GatewayError

__all__ = [
    "DEFAULT_MIX",
    "TEST_TOKEN_DECLINE_PREFIX",
    "TEST_TOKEN_ERROR",
    "TEST_TOKEN_OK",
    "ActionKind",
    "DeclineMix",
    "LedgerEntry",
    "SimulatedGateway",
    "SubscriptionAction",
    "days_since_payday",
    "from_settings",
]

TEST_TOKEN_OK: Final = "tok_sim_ok"
TEST_TOKEN_ERROR: Final = "tok_sim_error"
TEST_TOKEN_DECLINE_PREFIX: Final = "tok_sim_decline_"
_TEST_PREFIX: Final = "tok_sim_"


class _Kind(StrEnum):
    """How a reason behaves on retry (the simulator's own grouping)."""

    INSUFFICIENT_FUNDS = "insufficient_funds"
    ISSUER_TEMPORARY = "issuer_temporary"
    TRY_AGAIN_LATER = "try_again_later"
    PROCESSING = "processing"
    AUTHENTICATION = "authentication"
    HARD = "hard"
    FRAUD = "fraud"


@dataclass(frozen=True, slots=True)
class _Reason:
    kind: _Kind
    network_codes: tuple[str, ...]
    advice_codes: tuple[str, ...]
    message: str


_DECLINED = "Your card was declined."
_RETRY_SOON = ("24", "25", "26")
_RETRY_DAYS = ("26", "27", "28", "29", "30")

# Stripe decline_code -> behaviour and raw codes. ISO 8583 response codes:
# 51 not sufficient funds, 05 do not honor, 19 re-enter transaction, 91 issuer
# unavailable, 96 system malfunction, 1A additional authentication required
# (Visa), 54 expired card, 41 lost, 43 stolen, 14 invalid card number, 59
# suspected fraud, 63 security violation, 61/65 limits exceeded, N7 CVV2
# mismatch (Visa), 57 transaction not permitted, 04 pick up card, 62 restricted
# card, 01 refer to issuer, R0 stop payment order (Visa). Advice codes are
# Mastercard's Merchant Advice Codes; hard declines get 03 "do not try again",
# expired cards 01 "new account information available".
_REASONS: Final[Mapping[str, _Reason]] = MappingProxyType(
    {
        "insufficient_funds": _Reason(
            _Kind.INSUFFICIENT_FUNDS, ("51",), _RETRY_DAYS, "Your card has insufficient funds."
        ),
        "card_velocity_exceeded": _Reason(_Kind.INSUFFICIENT_FUNDS, ("61", "65"), _RETRY_DAYS, _DECLINED),
        "do_not_honor": _Reason(_Kind.ISSUER_TEMPORARY, ("05",), _RETRY_SOON, _DECLINED),
        "generic_decline": _Reason(_Kind.ISSUER_TEMPORARY, ("05",), ("02", *_RETRY_SOON), _DECLINED),
        "call_issuer": _Reason(_Kind.ISSUER_TEMPORARY, ("01",), ("02",), _DECLINED),
        "try_again_later": _Reason(
            _Kind.TRY_AGAIN_LATER, ("19",), ("24", "25"), "Your card was declined. Try again later."
        ),
        "processing_error": _Reason(
            _Kind.PROCESSING,
            ("96", "91"),
            (),
            "An error occurred while processing your card. Try again in a little bit.",
        ),
        "authentication_required": _Reason(
            _Kind.AUTHENTICATION,
            ("1A",),
            (),
            "Your card was declined. This transaction requires authentication.",
        ),
        "expired_card": _Reason(_Kind.HARD, ("54",), ("01",), "Your card has expired."),
        "lost_card": _Reason(_Kind.HARD, ("41",), ("03",), _DECLINED),
        "stolen_card": _Reason(_Kind.HARD, ("43",), ("03",), _DECLINED),
        "incorrect_number": _Reason(_Kind.HARD, ("14",), ("03",), "Your card number is incorrect."),
        "incorrect_cvc": _Reason(_Kind.HARD, ("N7",), ("03",), "Your card's security code is incorrect."),
        "pickup_card": _Reason(_Kind.HARD, ("04",), ("03",), _DECLINED),
        "restricted_card": _Reason(_Kind.HARD, ("62",), ("03",), _DECLINED),
        "card_not_supported": _Reason(
            _Kind.HARD, ("57",), ("03",), "Your card does not support this type of purchase."
        ),
        "transaction_not_allowed": _Reason(_Kind.HARD, ("57",), ("03",), _DECLINED),
        "stop_payment_order": _Reason(_Kind.HARD, ("R0",), ("21",), _DECLINED),
        "fraudulent": _Reason(_Kind.FRAUD, ("59", "63"), ("03",), _DECLINED),
    }
)
_UNKNOWN_REASON: Final = _Reason(_Kind.HARD, ("05",), (), _DECLINED)
_NEVER_RECOVER: Final = frozenset({_Kind.HARD, _Kind.FRAUD})


def _check_rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: must be a number between 0 and 1, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be between 0 and 1, got {value!r}")
    return float(value)


def _check_factor(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: must be a number, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    return float(value)


def _funding_key(name: str, key: object) -> Funding:
    try:
        return Funding(str(key))
    except ValueError:
        allowed = ", ".join(f.value for f in Funding)
        raise ValueError(f"{name}: unknown funding {key!r} (one of {allowed})") from None


@dataclass(frozen=True, slots=True)
class DeclineMix:
    """How often first charges fail, why, and how retries recover, per card funding type.

    ``failure_rate`` and ``reasons`` need an entry for every :class:`Funding`.
    ``reasons`` are weights (any positive numbers) keyed by Stripe decline code.
    ``recovery`` is the base chance that one retry of a soft reason succeeds;
    hard and fraud reasons never recover and may only be given as 0. The
    remaining fields shape retries in time (see :meth:`retry_probability`).
    Invalid values raise ``ValueError`` naming the field.
    """

    failure_rate: Mapping[Funding, float]
    reasons: Mapping[Funding, Mapping[str, float]]
    recovery: Mapping[str, float]
    new_card_failure_rate: float = 0.05
    payday_boost: float = 2.4
    payday_window_days: int = 3
    next_day_boost: float = 1.5
    small_hours_factor: float = 0.9
    mastercard_advice_share: float = 0.5
    _tables: Mapping[Funding, tuple[tuple[float, ...], tuple[str, ...]]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        rates: dict[Funding, float] = {}
        for key, value in self.failure_rate.items():
            funding = _funding_key("failure_rate", key)
            rates[funding] = _check_rate(f"failure_rate[{funding.value}]", value)
        reasons: dict[Funding, Mapping[str, float]] = {}
        tables: dict[Funding, tuple[tuple[float, ...], tuple[str, ...]]] = {}
        for key, weights in self.reasons.items():
            funding = _funding_key("reasons", key)
            reasons[funding], tables[funding] = self._check_weights(funding, weights)
        for funding in Funding:
            if funding not in rates:
                raise ValueError(f"failure_rate[{funding.value}]: missing")
            if funding not in reasons:
                raise ValueError(f"reasons[{funding.value}]: missing")
        recovery: dict[str, float] = {}
        for code, value in self.recovery.items():
            name = f"recovery[{code}]"
            if code not in _REASONS:
                raise ValueError(f"{name}: unknown decline code {code!r}")
            recovery[code] = _check_rate(name, value)
            if _REASONS[code].kind in _NEVER_RECOVER and recovery[code] != 0.0:
                raise ValueError(f"{name}: hard and fraud declines never recover; give 0 or omit")
        for weights in reasons.values():
            for code in weights:
                if _REASONS[code].kind not in _NEVER_RECOVER and code not in recovery:
                    raise ValueError(f"recovery[{code}]: missing for a reason in the mix")
        _check_rate("new_card_failure_rate", self.new_card_failure_rate)
        _check_factor("payday_boost", self.payday_boost)
        _check_factor("next_day_boost", self.next_day_boost)
        _check_rate("small_hours_factor", self.small_hours_factor)
        _check_rate("mastercard_advice_share", self.mastercard_advice_share)
        window = self.payday_window_days
        if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= 31:
            raise ValueError(f"payday_window_days: must be an integer from 0 to 31, got {window!r}")
        # Read-only copies: a mix is shared by every gateway built from it.
        object.__setattr__(self, "failure_rate", MappingProxyType(rates))
        object.__setattr__(self, "reasons", MappingProxyType(reasons))
        object.__setattr__(self, "recovery", MappingProxyType(recovery))
        object.__setattr__(self, "_tables", MappingProxyType(tables))

    @staticmethod
    def _check_weights(
        funding: Funding, weights: Mapping[str, float]
    ) -> tuple[Mapping[str, float], tuple[tuple[float, ...], tuple[str, ...]]]:
        if not weights:
            raise ValueError(f"reasons[{funding.value}]: must name at least one reason")
        clean: dict[str, float] = {}
        for code, weight in weights.items():
            name = f"reasons[{funding.value}][{code}]"
            if code not in _REASONS:
                known = ", ".join(sorted(_REASONS))
                raise ValueError(f"{name}: unknown decline code {code!r} (known: {known})")
            value = _check_factor(name, weight)
            if value <= 0:
                raise ValueError(f"{name}: weight must be positive, got {weight!r}")
            clean[code] = value
        total = sum(clean.values())
        cumulative: list[float] = []
        running = 0.0
        for value in clean.values():
            running += value / total
            cumulative.append(running)
        cumulative[-1] = 1.0  # float sums may stop just short of 1
        return MappingProxyType(clean), (tuple(cumulative), tuple(clean))

    def pick_reason(self, funding: Funding, u: float) -> str:
        """The reason whose weight band contains ``u`` (uniform in [0, 1))."""
        cumulative, codes = self._tables[funding]
        return codes[bisect_right(cumulative, u)]

    def retry_probability(
        self, reason: str, local_time: datetime, since_first_decline: timedelta | None
    ) -> float:
        """Chance that one retry succeeds.

        ``local_time`` is the attempt's time in the customer's time zone;
        ``since_first_decline`` is how long ago the pair first declined
        (``None``: unknown, taken as more than a day).
        """
        info = _REASONS.get(reason, _UNKNOWN_REASON)
        if info.kind in _NEVER_RECOVER:
            return 0.0
        p = self.recovery.get(reason, 0.0)
        if info.kind is _Kind.INSUFFICIENT_FUNDS:
            if days_since_payday(local_time) < self.payday_window_days:
                p *= self.payday_boost
        elif info.kind is _Kind.ISSUER_TEMPORARY and (
            since_first_decline is None or since_first_decline >= _ONE_DAY
        ):
            p *= self.next_day_boost
        if local_time.hour < 6:
            p *= self.small_hours_factor
        return min(p, 1.0)


def days_since_payday(local_time: datetime) -> int:
    """Days since the latest payday (1st, 15th, last day of the month) on or before this date."""
    day, month, year = local_time.day, local_time.month, local_time.year
    last = _MONTH_DAYS[month]
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        last = 29
    if day == last:
        return 0  # the last day of the month is itself a payday
    return day - 15 if day >= 15 else day - 1


_MONTH_DAYS: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_ONE_DAY: Final = timedelta(days=1)


def _blend(a: Mapping[str, float], b: Mapping[str, float], share_a: float) -> dict[str, float]:
    return {
        code: share_a * a.get(code, 0.0) + (1 - share_a) * b.get(code, 0.0)
        for code in dict.fromkeys([*a, *b])
    }


# Recurly "How do you compare" (2014-2016), percent of declines by reason.
# Generic decline, temporary hold (= do not honor), insufficient funds and
# invalid card number are Recurly's figures; the splits of "fraud / stolen card"
# and of "invalid transaction" + "other" are our assumptions (see module doc).
_CREDIT_REASONS: Final = {
    "generic_decline": 51.74,
    "do_not_honor": 25.48,
    "insufficient_funds": 6.94,
    "stolen_card": 2.00,
    "lost_card": 1.50,
    "fraudulent": 1.65,
    "incorrect_number": 1.67,
    "expired_card": 3.00,
    "processing_error": 2.00,
    "try_again_later": 1.52,
    "authentication_required": 1.30,
}
_DEBIT_REASONS: Final = {
    "generic_decline": 37.77,
    "do_not_honor": 10.05,
    "insufficient_funds": 28.99,
    "stolen_card": 2.30,
    "lost_card": 1.80,
    "fraudulent": 1.93,
    "incorrect_number": 8.32,
    "expired_card": 2.50,
    "processing_error": 1.60,
    "try_again_later": 1.04,
    "authentication_required": 1.00,
}
# Assumption, guided by Recurly's note that insufficient funds dominates prepaid declines.
_PREPAID_REASONS: Final = {
    "insufficient_funds": 55.0,
    "generic_decline": 20.0,
    "do_not_honor": 8.0,
    "incorrect_number": 3.0,
    "expired_card": 4.0,
    "stolen_card": 1.0,
    "lost_card": 1.0,
    "fraudulent": 2.0,
    "processing_error": 2.0,
    "try_again_later": 2.0,
    "authentication_required": 2.0,
}
_CREDIT_SHARE: Final = 0.61  # Recurly: 61% credit, 39% debit across all sites
_CREDIT_RATE: Final = 0.11
_DEBIT_RATE: Final = 0.15

DEFAULT_MIX: Final = DeclineMix(
    failure_rate={
        Funding.CREDIT: _CREDIT_RATE,
        Funding.DEBIT: _DEBIT_RATE,
        Funding.PREPAID: 0.25,
        Funding.UNKNOWN: round(_CREDIT_SHARE * _CREDIT_RATE + (1 - _CREDIT_SHARE) * _DEBIT_RATE, 4),
    },
    reasons={
        Funding.CREDIT: _CREDIT_REASONS,
        Funding.DEBIT: _DEBIT_REASONS,
        Funding.PREPAID: _PREPAID_REASONS,
        Funding.UNKNOWN: _blend(_CREDIT_REASONS, _DEBIT_REASONS, _CREDIT_SHARE),
    },
    recovery={
        "insufficient_funds": 0.14,
        "card_velocity_exceeded": 0.14,
        "do_not_honor": 0.10,
        "generic_decline": 0.10,
        "call_issuer": 0.05,
        "try_again_later": 0.45,
        "processing_error": 0.80,
        "authentication_required": 0.05,
    },
)
"""The default mix; figures and sources in the module docstring and docs/gateways.md."""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One charge the gateway made (one per idempotency key), with its answer."""

    idempotency_key: str
    invoice_id: str
    customer_id: str
    token: str
    funding: Funding
    attempt_number: int
    at: datetime
    amount: Money
    result: ChargeResult

    @property
    def status(self) -> ChargeStatus:
        return self.result.status

    @property
    def decline_code(self) -> str | None:
        return self.result.decline_code

    @property
    def network_code(self) -> str | None:
        return self.result.network_code

    @property
    def advice_code(self) -> str | None:
        return self.result.advice_code

    @property
    def gateway_reference(self) -> str | None:
        return self.result.gateway_reference


class ActionKind(StrEnum):
    """A final action the engine asked the gateway to take."""

    CANCEL = "cancel"
    PAUSE = "pause"
    MARK_UNPAID = "mark_unpaid"


@dataclass(frozen=True, slots=True)
class SubscriptionAction:
    """One recorded final action (one per idempotency key)."""

    idempotency_key: str
    kind: ActionKind
    target_id: str
    at: datetime


# A stored charge outcome: status, decline, network and advice codes, message.
_Outcome = tuple[ChargeStatus, str | None, str | None, str | None, str]
_SUCCESS: Final[_Outcome] = (ChargeStatus.SUCCEEDED, None, None, None, "")
# An in-memory ledger row: outcome, then LedgerEntry's fields from invoice_id to amount.
_Row = tuple[_Outcome, str, str, str, Funding, int, datetime, Money]
_U53: Final = 2.0**-53  # (x >> 11) * _U53 maps a 64-bit integer onto [0, 1), never 1.0
_FOUR_U64: Final = struct.Struct("<4Q")
_ONE_U64: Final = struct.Struct("<Q")
# Bound on invoices whose decline history is kept in memory; the oldest are
# forgotten first, and a forgotten invoice's retries fall back to the
# "no history" rule, which gives the same reason (it is a pure draw).
_HISTORY_CAP: Final = 500_000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS charges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    invoice_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    token TEXT NOT NULL,
    funding TEXT NOT NULL,
    attempt_number INTEGER NOT NULL,
    at TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    gateway_reference TEXT,
    decline_code TEXT,
    network_code TEXT,
    advice_code TEXT,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS charges_invoice ON charges (invoice_id, status);
CREATE TABLE IF NOT EXISTS actions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    at TEXT NOT NULL
);
"""
_CHARGE_COLUMNS: Final = (
    "idempotency_key, invoice_id, customer_id, token, funding, attempt_number, at, "
    "amount_minor, currency, status, gateway_reference, decline_code, network_code, "
    "advice_code, message"
)


def _invalid(message: str) -> GatewayError:
    return GatewayError(message, code="invalid_request", transient=False)


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise _invalid(f"{name} must be a timezone-aware datetime")


class SimulatedGateway:
    """A deterministic :class:`~recobra.ports.PaymentGateway` driven by a :class:`DeclineMix`.

    Same seed and same requests give the same answers, in one process or
    across processes sharing a ledger file. See the module docstring for the
    model and ``docs/gateways.md`` for the figures.
    """

    name = "simulated"

    def __init__(
        self,
        *,
        seed: int = 0,
        mix: DeclineMix = DEFAULT_MIX,
        ledger_path: str | None = None,
        latency_s: float = 0.0,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed: must be an integer, got {seed!r}")
        if not isinstance(mix, DeclineMix):
            raise ValueError(f"mix: must be a DeclineMix, got {type(mix).__name__}")
        self.latency_s = _check_factor("latency_s", latency_s)
        self.seed = seed
        self.mix = mix
        self.ledger_path = ledger_path
        secret = hashlib.blake2b(str(seed).encode(), digest_size=32).digest()
        # Keyed hashers copied per call: cheaper than building one each time.
        self._pair_hash = hashlib.blake2b(key=secret, digest_size=32, person=b"recobra.pair")
        self._key_hash = hashlib.blake2b(key=secret, digest_size=8, person=b"recobra.key")
        self._lock = threading.Lock()
        self._zones: dict[str, ZoneInfo] = {}
        # Compact rows (see _Row) rather than LedgerEntry objects: a year-long
        # benchmark keeps well over a million of them.
        self._entries: dict[str, _Row] = {}
        self._outcomes: dict[_Outcome, _Outcome] = {_SUCCESS: _SUCCESS}
        self._declines: dict[str, dict[str, datetime]] = {}
        self._actions: dict[str, SubscriptionAction] = {}
        self._db: sqlite3.Connection | None = None
        if ledger_path is not None:
            self._db = self._open(ledger_path)

    # -- PaymentGateway -------------------------------------------------------

    def charge(self, request: ChargeRequest) -> ChargeResult:
        """Collect once per idempotency key; later calls with the key return the first answer."""
        key = request.idempotency_key
        if not key or not request.invoice_id or not request.payment_method.gateway_token:
            raise _invalid("idempotency_key, invoice_id and payment_method.gateway_token are required")
        _require_aware("attempted_at", request.attempted_at)
        if self._db is None:
            with self._lock:
                result = self._charge_memory(request)
        else:
            with self._lock:
                result = self._charge_sqlite(self._db, request)
        if self.latency_s > 0:
            # After the ledger write on purpose: the charge exists even if the
            # caller dies before this returns.
            time.sleep(self.latency_s)
        return result

    def attempt_status(self, idempotency_key: str) -> ChargeResult:
        """The stored answer for this key, or ``NOT_FOUND`` if no charge was made with it."""
        if self._db is None:
            row = self._entries.get(idempotency_key)
            if row is not None:
                return _result(idempotency_key, row[0])
        else:
            entry = self._entry_sqlite(self._db, idempotency_key)
            if entry is not None:
                return entry.result
        return ChargeResult(status=ChargeStatus.NOT_FOUND, idempotency_key=idempotency_key)

    def cancel_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        """Record a cancellation (no-op when the key was already used for it)."""
        self._act(ActionKind.CANCEL, subscription_id, at, idempotency_key)

    def pause_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        """Record a pause (no-op when the key was already used for it)."""
        self._act(ActionKind.PAUSE, subscription_id, at, idempotency_key)

    def mark_unpaid(self, invoice_id: str, *, at: datetime, idempotency_key: str) -> None:
        """Record that the invoice was marked unpaid (no-op when the key was already used)."""
        self._act(ActionKind.MARK_UNPAID, invoice_id, at, idempotency_key)

    # -- introspection ----------------------------------------------------------

    def charges(self, invoice_id: str | None = None) -> list[LedgerEntry]:
        """Every charge made, in ledger order, optionally for one invoice."""
        if self._db is None:
            with self._lock:
                rows = list(self._entries.items())
            return [
                LedgerEntry(key, *row[1:], result=_result(key, row[0]))
                for key, row in rows
                if invoice_id is None or row[1] == invoice_id
            ]
        sql = f"SELECT {_CHARGE_COLUMNS} FROM charges"
        args: tuple[str, ...] = ()
        if invoice_id is not None:
            sql += " WHERE invoice_id = ?"
            args = (invoice_id,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq", args).fetchall()
        return [_entry_from_row(row) for row in rows]

    def subscription_actions(self) -> list[SubscriptionAction]:
        """Every final action recorded, in order."""
        if self._db is None:
            with self._lock:
                return list(self._actions.values())
        with self._lock:
            rows = self._db.execute(
                "SELECT idempotency_key, kind, target_id, at FROM actions ORDER BY seq"
            ).fetchall()
        return [
            SubscriptionAction(key, ActionKind(kind), target, datetime.fromisoformat(at))
            for key, kind, target, at in rows
        ]

    @property
    def charge_count(self) -> int:
        """How many charges were made (one per idempotency key; errors are not charges)."""
        if self._db is None:
            return len(self._entries)
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM charges").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the ledger file, if any; using the gateway afterwards then fails loudly.

        The in-memory ledger needs no closing.
        """
        with self._lock:
            if self._db is not None:
                # Keep the closed connection rather than dropping to the in-memory
                # ledger: later calls raise instead of silently forgetting charges.
                self._db.close()

    def __enter__(self) -> SimulatedGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the model ----------------------------------------------------------------

    def _decide(self, request: ChargeRequest, history: Mapping[str, datetime]) -> ChargeResult:
        """The answer to a charge not seen before, given the invoice's earlier declines."""
        key = request.idempotency_key
        method = request.payment_method
        token = method.gateway_token
        key_bytes = key.encode()
        reference = _reference(key_bytes)
        if token.startswith(_TEST_PREFIX) and (
            token in (TEST_TOKEN_OK, TEST_TOKEN_ERROR) or token.startswith(TEST_TOKEN_DECLINE_PREFIX)
        ):
            return _test_token_result(key, reference, token, method.brand)
        hasher = self._pair_hash.copy()
        hasher.update(f"{request.invoice_id}\x1f{token}".encode())
        u_trouble, u_reason, u_advice, variant = _FOUR_U64.unpack(hasher.digest())
        mix = self.mix
        if request.attempt_number <= 0 and (u_trouble >> 11) * _U53 >= mix.failure_rate[method.funding]:
            return ChargeResult(ChargeStatus.SUCCEEDED, key, reference)
        # The reason is a property of the (invoice, card) pair, the same on every attempt.
        reason = mix.pick_reason(method.funding, (u_reason >> 11) * _U53)
        if request.attempt_number > 0:
            first_decline = history.get(token)
            if first_decline is None and history:
                # A token the invoice never declined on, while another did: a new card.
                if (u_trouble >> 11) * _U53 >= mix.new_card_failure_rate:
                    return ChargeResult(ChargeStatus.SUCCEEDED, key, reference)
            else:
                local = request.attempted_at.astimezone(self._zone(request.customer_timezone))
                since = None if first_decline is None else request.attempted_at - first_decline
                chance = mix.retry_probability(reason, local, since)
                hasher = self._key_hash.copy()
                hasher.update(key_bytes)
                (u_retry,) = _ONE_U64.unpack(hasher.digest())
                if (u_retry >> 11) * _U53 < chance:
                    return ChargeResult(ChargeStatus.SUCCEEDED, key, reference)
        info = _REASONS[reason]
        network = info.network_codes[variant % len(info.network_codes)]
        advice = None
        if (
            info.advice_codes
            and (u_advice >> 11) * _U53 < mix.mastercard_advice_share
            and _is_mastercard(method.brand)
        ):
            advice = info.advice_codes[(variant >> 8) % len(info.advice_codes)]
        return ChargeResult(ChargeStatus.DECLINED, key, reference, reason, network, advice, info.message)

    def _zone(self, name: str) -> ZoneInfo:
        zone = self._zones.get(name)
        if zone is None:
            try:
                zone = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                raise _invalid(f"customer_timezone: unknown IANA time zone {name!r}") from None
            self._zones[name] = zone
        return zone

    # -- in-memory ledger ---------------------------------------------------------

    def _charge_memory(self, request: ChargeRequest) -> ChargeResult:
        key = request.idempotency_key
        row = self._entries.get(key)
        if row is not None:
            _check_same_charge(row[1], row[7], request)
            return _result(key, row[0])
        history = self._declines.get(request.invoice_id)
        result = self._decide(request, history or {})
        if result.status is ChargeStatus.ERROR:
            return result
        method = request.payment_method
        if result.status is ChargeStatus.SUCCEEDED:
            outcome = _SUCCESS
        else:
            outcome = (
                result.status,
                result.decline_code,
                result.network_code,
                result.advice_code,
                result.message,
            )
            # Few distinct outcomes exist: share one tuple per outcome.
            outcome = self._outcomes.setdefault(outcome, outcome)
        self._entries[key] = (
            outcome,
            request.invoice_id,
            request.customer_id,
            method.gateway_token,
            method.funding,
            request.attempt_number,
            request.attempted_at,
            request.amount,
        )
        if result.status is ChargeStatus.DECLINED:
            if history is None:
                if len(self._declines) >= _HISTORY_CAP:
                    del self._declines[next(iter(self._declines))]
                history = self._declines[request.invoice_id] = {}
            history.setdefault(method.gateway_token, request.attempted_at)
        return result

    # -- SQLite ledger ------------------------------------------------------------

    def _open(self, path: str) -> sqlite3.Connection:
        # Autocommit mode: transactions are opened explicitly (BEGIN IMMEDIATE)
        # so that the check for a key and the insert are one atomic step.
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchone()
            # NORMAL keeps WAL commits durable against a killed process, which
            # is the failure the simulator is for; only power loss could undo them.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('seed', ?)", (str(self.seed),))
            (stored,) = db.execute("SELECT value FROM meta WHERE key = 'seed'").fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        if stored != str(self.seed):
            db.close()
            raise ValueError(
                f"ledger: {path!r} was written with seed {stored}, not {self.seed}; "
                "use another file or the same seed"
            )
        return db

    def _charge_sqlite(self, db: sqlite3.Connection, request: ChargeRequest) -> ChargeResult:
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                f"SELECT {_CHARGE_COLUMNS} FROM charges WHERE idempotency_key = ?",
                (request.idempotency_key,),
            ).fetchone()
            if row is not None:
                db.execute("COMMIT")
                entry = _entry_from_row(row)
                _check_same_charge(entry.invoice_id, entry.amount, request)
                return entry.result
            history: dict[str, datetime] = {}
            for token, at in db.execute(
                "SELECT token, at FROM charges WHERE invoice_id = ? AND status = ? ORDER BY seq",
                (request.invoice_id, ChargeStatus.DECLINED.value),
            ):
                history.setdefault(token, datetime.fromisoformat(at))
            result = self._decide(request, history)
            if result.status is ChargeStatus.ERROR:
                db.execute("COMMIT")
                return result
            method = request.payment_method
            db.execute(
                f"INSERT INTO charges ({_CHARGE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.idempotency_key,
                    request.invoice_id,
                    request.customer_id,
                    method.gateway_token,
                    method.funding.value,
                    request.attempt_number,
                    request.attempted_at.isoformat(),
                    request.amount.amount_minor,
                    request.amount.currency,
                    result.status.value,
                    result.gateway_reference,
                    result.decline_code,
                    result.network_code,
                    result.advice_code,
                    result.message,
                ),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    # -- shared helpers -------------------------------------------------------------

    def _entry_sqlite(self, db: sqlite3.Connection, key: str) -> LedgerEntry | None:
        with self._lock:
            row = db.execute(
                f"SELECT {_CHARGE_COLUMNS} FROM charges WHERE idempotency_key = ?", (key,)
            ).fetchone()
        return None if row is None else _entry_from_row(row)

    def _act(self, kind: ActionKind, target_id: str, at: datetime, key: str) -> None:
        if not target_id:
            raise _invalid(f"{kind.value}: the subscription or invoice id is empty")
        if not key:
            raise _invalid(f"{kind.value}: the idempotency key is empty")
        _require_aware("at", at)
        action = SubscriptionAction(key, kind, target_id, at)
        with self._lock:
            if self._db is None:
                earlier = self._actions.get(key)
                if earlier is None:
                    self._actions[key] = action
                    return
            else:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute(
                        "SELECT idempotency_key, kind, target_id, at FROM actions WHERE idempotency_key = ?",
                        (key,),
                    ).fetchone()
                    if row is None:
                        self._db.execute(
                            "INSERT INTO actions (idempotency_key, kind, target_id, at) VALUES (?, ?, ?, ?)",
                            (key, kind.value, target_id, at.isoformat()),
                        )
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                if row is None:
                    return
                earlier = SubscriptionAction(
                    row[0], ActionKind(row[1]), row[2], datetime.fromisoformat(row[3])
                )
        if (earlier.kind, earlier.target_id) != (kind, target_id):
            raise GatewayError(
                f"idempotency key {key!r} was already used to {earlier.kind.value} {earlier.target_id!r}",
                code="idempotency_key_reused",
                transient=False,
            )


def _test_token_result(key: str, reference: str, token: str, brand: str) -> ChargeResult:
    if token == TEST_TOKEN_ERROR:
        # The request never reached the gateway: nothing is charged or stored.
        return ChargeResult(
            ChargeStatus.ERROR, key, message="simulated transport error: no answer from the gateway"
        )
    if token == TEST_TOKEN_OK:
        return ChargeResult(ChargeStatus.SUCCEEDED, key, reference)
    code = token.removeprefix(TEST_TOKEN_DECLINE_PREFIX) or "generic_decline"
    info = _REASONS.get(code, _UNKNOWN_REASON)
    advice = info.advice_codes[0] if info.advice_codes and _is_mastercard(brand) else None
    return ChargeResult(
        ChargeStatus.DECLINED, key, reference, code, info.network_codes[0], advice, info.message
    )


def _is_mastercard(brand: str) -> bool:
    return brand.lower().replace(" ", "") in {"mastercard", "mc"}


def _reference(key_bytes: bytes) -> str:
    # Opaque, deterministic per key and cheap (two checksums, 64 bits): a
    # cryptographic hash here would add a microsecond to every charge.
    return "simch_" + (zlib.crc32(key_bytes) << 32 | zlib.adler32(key_bytes)).to_bytes(8).hex()


def _result(key: str, outcome: _Outcome) -> ChargeResult:
    status, decline_code, network_code, advice_code, message = outcome
    return ChargeResult(
        status, key, _reference(key.encode()), decline_code, network_code, advice_code, message
    )


def _entry_from_row(row: tuple[object, ...]) -> LedgerEntry:
    (
        key,
        invoice_id,
        customer_id,
        token,
        funding,
        attempt_number,
        at,
        amount_minor,
        currency,
        status,
        reference,
        decline_code,
        network_code,
        advice_code,
        message,
    ) = row
    result = ChargeResult(
        status=ChargeStatus(str(status)),
        idempotency_key=str(key),
        gateway_reference=None if reference is None else str(reference),
        decline_code=None if decline_code is None else str(decline_code),
        network_code=None if network_code is None else str(network_code),
        advice_code=None if advice_code is None else str(advice_code),
        message=str(message),
    )
    return LedgerEntry(
        str(key),
        str(invoice_id),
        str(customer_id),
        str(token),
        Funding(str(funding)),
        int(str(attempt_number)),
        datetime.fromisoformat(str(at)),
        Money(int(str(amount_minor)), str(currency)),
        result,
    )


def _check_same_charge(invoice_id: str, amount: Money, request: ChargeRequest) -> None:
    # A rerun after a crash legitimately repeats a key (with a later time, even
    # another card); a key reused for another invoice or amount is a bug upstream.
    if invoice_id != request.invoice_id or amount != request.amount:
        raise GatewayError(
            f"idempotency key {request.idempotency_key!r} was already used for invoice "
            f"{invoice_id!r} ({amount})",
            code="idempotency_key_reused",
            transient=False,
        )


def _parse_float(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key}: not a number: {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{key}: must be finite, got {raw!r}")
    return value


def _parse_rate(key: str, raw: str) -> float:
    value = _parse_float(key, raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{key}: must be between 0 and 1, got {raw!r}")
    return value


def from_settings(settings: Mapping[str, str]) -> SimulatedGateway:
    """Build a gateway from string settings (the ``recobra.gateways`` entry point ``simulated``).

    Keys: ``seed`` (integer), ``ledger`` (SQLite file path; empty for in
    memory), ``latency_ms`` (>= 0), ``failure_rate_<funding>`` (credit, debit,
    prepaid, unknown), ``new_card_failure_rate`` and ``recovery_<decline_code>``
    (rates in [0, 1]). Unknown keys and bad values raise ``ValueError`` naming
    the key.
    """
    seed = 0
    ledger: str | None = None
    latency_s = 0.0
    rates = dict(DEFAULT_MIX.failure_rate)
    recovery = dict(DEFAULT_MIX.recovery)
    new_card = DEFAULT_MIX.new_card_failure_rate
    fundings = {f"failure_rate_{f.value}": f for f in Funding}
    for key, value in settings.items():
        raw = str(value).strip()
        if key == "seed":
            try:
                seed = int(raw)
            except ValueError:
                raise ValueError(f"seed: not an integer: {raw!r}") from None
        elif key == "ledger":
            ledger = raw or None
        elif key == "latency_ms":
            latency_ms = _parse_float(key, raw)
            if latency_ms < 0:
                raise ValueError(f"latency_ms: must be >= 0, got {raw!r}")
            latency_s = latency_ms / 1000.0
        elif key in fundings:
            rates[fundings[key]] = _parse_rate(key, raw)
        elif key == "new_card_failure_rate":
            new_card = _parse_rate(key, raw)
        elif key.startswith("recovery_") and key.removeprefix("recovery_") in _REASONS:
            code = key.removeprefix("recovery_")
            if _REASONS[code].kind in _NEVER_RECOVER:
                raise ValueError(f"{key}: hard and fraud declines never recover")
            recovery[code] = _parse_rate(key, raw)
        else:
            known = ["seed", "ledger", "latency_ms", *fundings, "new_card_failure_rate"]
            raise ValueError(
                f"{key}: unknown setting for the simulated gateway "
                f"(known: {', '.join(known)}, recovery_<decline_code>)"
            )
    mix = replace(DEFAULT_MIX, failure_rate=rates, recovery=recovery, new_card_failure_rate=new_card)
    return SimulatedGateway(seed=seed, mix=mix, ledger_path=ledger, latency_s=latency_s)
