"""Card-network retry rules: when a retry on a card is forbidden, or must wait.

Visa and Mastercard charge merchants for "excessive" retries of declined cards. This
module answers one question for the engine: given every earlier attempt on a card,
may we retry at the proposed time, and if not then, when at the earliest?

Rules enforced (sources in docs/declines.md):

* Never retry after a "never" signal, on any network: Stripe advice
  ``do_not_try_again``; Mastercard Merchant Advice Code 03 (do not try again) or 21
  (payment cancellation); a Visa category 1 response code ("issuer will never
  approve": 04, 07, 12, 14, 15, 41, 43, 46, 57, R0, R1, R3), or a Stripe code that
  stands for one of them (``lost_card``, ``stolen_card`` ...). Visa charges a fee on
  every reattempt after a category 1 decline; Mastercard on every retry after MAC 03
  or 21. The codes mean the same on other networks, so they are enforced there too.
* Mastercard MAC 24-30 ("retry after 1 hour" ... "retry after 10 days"): the retry
  waits that long after the decline. Honoured whatever the network, as it is the
  issuer's own instruction.
* Visa: at most 15 reattempts of a declined card in 30 days (categories 2-4).
* Mastercard (Transaction Processing Excellence): at most 10 attempts on a card in
  24 hours and 35 in 30 days.

This module enforces *network* rules only. Whether the engine should retry at all
(e.g. an expired card is HARD for the engine, but Visa category 3 for the network) is
decided by :class:`~recobra.domain.declines.DeclineCategory`.

Pure standard library, no clock: all times are aware datetimes passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from types import MappingProxyType

from recobra.domain.declines import (
    ADVICE_CODES,
    NEVER_RETRY_ADVICE_CODES,
    Decline,
    normalize_advice_code,
    normalize_network_code,
)
from recobra.domain.errors import DomainError


class CardNetwork(StrEnum):
    """The card scheme whose retry rules apply to a card."""

    VISA = "visa"
    MASTERCARD = "mastercard"
    AMEX = "amex"
    DISCOVER = "discover"
    OTHER = "other"
    """Diners, JCB, UnionPay, Cartes Bancaires, unknown ...: only the universal rules apply."""

    @classmethod
    def from_brand(cls, brand: str) -> CardNetwork:
        """Network of a brand string as gateways report it (Stripe ``card.brand``/``network``
        or display brand): ``"visa"``, ``"MasterCard"``, ``"American Express"``, ``"amex"``,
        ``"discover"``; anything else (``"diners"``, ``"jcb"``, ``"unknown"`` ...) is OTHER.
        """
        if not isinstance(brand, str):
            raise TypeError(f"brand must be a str, not {type(brand).__name__}")
        key = "".join(ch for ch in brand.lower() if ch.isalnum())
        return _BRANDS.get(key, cls.OTHER)


_BRANDS: Mapping[str, CardNetwork] = MappingProxyType(
    {
        "visa": CardNetwork.VISA,
        "mastercard": CardNetwork.MASTERCARD,
        "amex": CardNetwork.AMEX,
        "americanexpress": CardNetwork.AMEX,
        "discover": CardNetwork.DISCOVER,
    }
)


# Visa decline categories (Visa Core Rules, excessive reattempts, as revised in 2021;
# the 2020 edition placed 03, 62, 78 and 93 in category 1 and 14 in category 3).
# Category 4 ("generic") is every other decline response code.
VISA_CATEGORY_CODES: Mapping[int, frozenset[str]] = MappingProxyType(
    {
        # 1: issuer will never approve (card blocked, closed, never existed, revoked).
        1: frozenset({"04", "07", "12", "14", "15", "41", "43", "46", "57", "R0", "R1", "R3"}),
        # 2: issuer cannot approve at this time.
        2: frozenset(
            {
                "03", "19", "51", "59", "61", "62", "65", "75", "78",
                "86", "91", "93", "96", "N3", "N4",
            }
        ),
        # 3: issuer cannot approve with these details (data quality).
        3: frozenset({"54", "55", "82", "N7", "1A", "6P"}),
    }
)  # fmt: skip

# Approval and "no reason to decline" codes are not declines, so they have no category.
_NOT_DECLINES = frozenset({"00", "08", "10", "11", "85"})

# Stripe decline codes that stand for a Visa category 1 response code, used when the
# gateway gave no network code. (Stripe maps the network codes to these.)
_STRIPE_NEVER_CODES: Mapping[str, str] = MappingProxyType(
    {
        "pickup_card": "04",
        "lost_card": "41",
        "stolen_card": "43",
        "invalid_account": "46",
        "incorrect_number": "14",
        "invalid_number": "14",
        "stop_payment_order": "R0",
        "revocation_of_authorization": "R1",
        "revocation_of_all_authorizations": "R3",
    }
)

# Mastercard Merchant Advice Codes 24-30: "retry after ..." (Mastercard MAC list as
# published by acquirers and gateways, e.g. Braintree).
MASTERCARD_RETRY_DELAYS: Mapping[str, timedelta] = MappingProxyType(
    {
        "24": timedelta(hours=1),
        "25": timedelta(hours=24),
        "26": timedelta(days=2),
        "27": timedelta(days=4),
        "28": timedelta(days=6),
        "29": timedelta(days=8),
        "30": timedelta(days=10),
    }
)

VISA_REATTEMPT_WINDOW = timedelta(days=30)
MASTERCARD_SHORT_WINDOW = timedelta(hours=24)
MASTERCARD_LONG_WINDOW = timedelta(days=30)


def visa_category(network_code: str | None) -> int | None:
    """Visa decline category (1-4) of an ISO 8583 response code.

    1: the issuer will never approve (never reattempt); 2: cannot approve now;
    3: cannot approve with these details; 4: any other decline code. None for no
    code, an approval code, or something that is not a two-character response code.
    """
    key = normalize_network_code(network_code)
    if key is None or len(key) != 2 or not key.isalnum() or key in _NOT_DECLINES:
        return None
    for category, codes in VISA_CATEGORY_CODES.items():
        if key in codes:
            return category
    return 4


def mastercard_retry_delay(advice_code: str | None) -> timedelta | None:
    """Wait required by a Mastercard Merchant Advice Code 24-30, else None.

    24: 1 hour, 25: 24 hours, 26: 2 days, 27: 4 days, 28: 6 days, 29: 8 days, 30: 10 days.
    """
    key = normalize_advice_code(advice_code)
    return MASTERCARD_RETRY_DELAYS.get(key) if key is not None else None


@dataclass(frozen=True, slots=True)
class PriorAttempt:
    """An earlier charge attempt on the same card (any case, any invoice)."""

    at: datetime
    """When it was made; timezone-aware."""
    decline: Decline | None
    """None when it succeeded. An attempt with no answer should be passed as a decline
    (it counts against the caps either way)."""


@dataclass(frozen=True, slots=True)
class NetworkRules:
    """Attempt caps per card. Defaults are the networks' documented figures.

    * ``visa_max_reattempts_30d``: Visa excessive reattempts rule, at most 15
      reattempts of a declined card in 30 days (Visa Core Rules, 2021 onwards). A later
      edition may allow more; 15 stays the safe default.
    * ``mastercard_max_attempts_24h`` / ``mastercard_max_attempts_30d``: Mastercard
      Transaction Processing Excellence, excessive attempts: 10 on the same card in a
      rolling 24 hours, 35 in 30 days.
    """

    visa_max_reattempts_30d: int = 15
    mastercard_max_attempts_24h: int = 10
    mastercard_max_attempts_30d: int = 35

    def __post_init__(self) -> None:
        for name in (
            "visa_max_reattempts_30d",
            "mastercard_max_attempts_24h",
            "mastercard_max_attempts_30d",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DomainError(f"network_rules.{name}", "must be an integer of at least 1")


DEFAULT_NETWORK_RULES = NetworkRules()


@dataclass(frozen=True, slots=True)
class NetworkVerdict:
    """The networks' answer to "may we retry this card at the proposed time?"."""

    allowed: bool
    """False: the network forbids any further retry on this card."""
    earliest: datetime | None
    """When allowed, the earliest permitted time (never before the proposed time);
    None when not allowed."""
    rule: str | None
    """Machine name of the rule that forbade or moved the retry (``visa_category_1``,
    ``mastercard_mac_25``, ``mastercard_24h_cap`` ...); None when unchanged."""
    reason: str
    """A sentence for the operator."""

    @property
    def adjusted(self) -> bool:
        """True when the retry is forbidden, or allowed but moved later."""
        return not self.allowed or self.rule is not None


def _require_aware(field: str, value: datetime) -> None:
    if not isinstance(value, datetime):
        raise TypeError(f"{field} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise DomainError(field, "must be a timezone-aware datetime")


def _category_1_source(decline: Decline) -> str | None:
    """How a decline shows a Visa category 1 response code, if it does."""
    network = normalize_network_code(decline.network_code)
    if visa_category(network) == 1:
        return f"response code {network}"
    code = decline.code.strip()
    as_iso = normalize_network_code(code)
    if visa_category(as_iso) == 1:
        return f"response code {as_iso}"
    equivalent = _STRIPE_NEVER_CODES.get(code.lower())
    if equivalent is not None:
        return f"decline code {code!r} (response code {equivalent})"
    return None


def _never_rule(network: CardNetwork, decline: Decline) -> tuple[str, str] | None:
    """The never-retry rule a decline triggers, as (rule, reason), or None."""
    advice = normalize_advice_code(decline.advice_code)
    # Stripe's advice do_not_try_again; the deprecated decline code of the same name
    # carried the same instruction before advice codes existed.
    if advice == "do_not_try_again" or decline.code.strip().lower() == "do_not_try_again":
        return (
            "advice_do_not_try_again",
            "The issuer advised do_not_try_again: this card must not be retried.",
        )
    if advice is not None and advice in NEVER_RETRY_ADVICE_CODES:
        return (
            f"mastercard_mac_{advice}",
            f"{ADVICE_CODES[advice]}: this card must not be retried "
            "(Mastercard charges for every retry after it).",
        )
    source = _category_1_source(decline)
    if source is None:
        return None
    if network is CardNetwork.VISA:
        return (
            "visa_category_1",
            f"Visa category 1, {source}: the issuer will never approve this card; "
            "every reattempt is charged an excessive reattempt fee.",
        )
    return (
        "issuer_never_approves",
        f"The {source} means the issuer will never approve this card "
        "(Visa category 1 meaning); it must not be retried.",
    )


def _cap_time(times: Sequence[datetime], cap: int, window: timedelta) -> datetime | None:
    """First moment a new attempt fits under ``cap`` attempts per rolling ``window``.

    ``times`` are the earlier counted attempts, sorted, all no later than the moment
    being tested. A window (t - window, t] holding the new attempt has room when at most
    ``cap - 1`` earlier attempts fall inside it, i.e. once the ``cap``-th most recent
    earlier attempt is ``window`` old. None when the cap never binds.
    """
    if len(times) < cap:
        return None
    return times[-cap] + window


def check_retry(
    network: CardNetwork,
    history: Sequence[PriorAttempt],
    proposed_at: datetime,
    rules: NetworkRules = DEFAULT_NETWORK_RULES,
) -> NetworkVerdict:
    """May the card be retried at ``proposed_at``, and if not then, when at the earliest?

    ``history`` is every earlier attempt on this card, in any order; the most recent is
    normally the decline being reacted to. A success resets the "never" signals: only
    declines after the latest success can forbid a retry. Windows are rolling and
    half-open, (t - window, t]. Reattempts (Visa) are attempts made right after a
    declined attempt on the card, i.e. every attempt until a success; the proposed retry
    is one when the latest attempt was declined. Mastercard caps count every attempt.

    ``earliest`` is never before ``proposed_at`` nor before the latest attempt in
    ``history``. Raises ValueError (DomainError) if any datetime is naive.
    """
    _require_aware("proposed_at", proposed_at)
    for index, attempt in enumerate(history):
        _require_aware(f"history[{index}].at", attempt.at)
    # Stable sort: attempts at the same instant keep the caller's order.
    attempts = sorted(history, key=lambda attempt: attempt.at)

    open_declines: list[Decline] = []
    for attempt in attempts:
        if attempt.decline is None:
            open_declines.clear()
        else:
            open_declines.append(attempt.decline)
    for decline in reversed(open_declines):
        never = _never_rule(network, decline)
        if never is not None:
            rule, reason = never
            return NetworkVerdict(allowed=False, earliest=None, rule=rule, reason=reason)

    # Each constraint is "not before T": once satisfied at T it stays satisfied later,
    # because moving the retry later only lets earlier attempts leave the windows. So
    # the earliest permitted time is the latest of them, computed independently.
    constraints: list[tuple[datetime, str, str]] = []
    last = attempts[-1] if attempts else None
    if last is not None and last.at > proposed_at:
        constraints.append(
            (
                last.at,
                "after_latest_attempt",
                "The proposed time is before the latest recorded attempt on this card; "
                "moved to that attempt's time.",
            )
        )
    if last is not None and last.decline is not None:
        advice = normalize_advice_code(last.decline.advice_code)
        delay = mastercard_retry_delay(advice)
        if delay is not None and advice is not None:
            constraints.append(
                (
                    last.at + delay,
                    f"mastercard_mac_{advice}",
                    f"Mastercard advice {advice}: retry no sooner than {_humanize(delay)} after the decline.",
                )
            )

    if network is CardNetwork.VISA and last is not None and last.decline is not None:
        reattempts = [later.at for earlier, later in pairwise(attempts) if earlier.decline is not None]
        cap = rules.visa_max_reattempts_30d
        moved = _cap_time(reattempts, cap, VISA_REATTEMPT_WINDOW)
        if moved is not None:
            constraints.append(
                (
                    moved,
                    "visa_30_day_cap",
                    f"Visa allows at most {cap} reattempts of a declined card in 30 days; "
                    "retry once the oldest counted reattempt leaves the 30-day window.",
                )
            )

    if network is CardNetwork.MASTERCARD:
        times = [attempt.at for attempt in attempts]
        mastercard_caps = (
            (rules.mastercard_max_attempts_24h, MASTERCARD_SHORT_WINDOW, "24h", "24 hours"),
            (rules.mastercard_max_attempts_30d, MASTERCARD_LONG_WINDOW, "30_day", "30 days"),
        )
        for cap, window, suffix, span in mastercard_caps:
            moved = _cap_time(times, cap, window)
            if moved is not None:
                constraints.append(
                    (
                        moved,
                        f"mastercard_{suffix}_cap",
                        f"Mastercard allows at most {cap} attempts on a card in {span}; "
                        "retry once the oldest counted attempt leaves the rolling window.",
                    )
                )

    earliest = proposed_at
    chosen: tuple[str, str] | None = None
    for when, rule, reason in constraints:
        if when > earliest:
            earliest = when
            chosen = (rule, reason)
    if chosen is None:
        return NetworkVerdict(
            allowed=True,
            earliest=proposed_at,
            rule=None,
            reason="No network rule delays or forbids this retry.",
        )
    rule, reason = chosen
    return NetworkVerdict(allowed=True, earliest=earliest, rule=rule, reason=reason)


def _humanize(delay: timedelta) -> str:
    hours = int(delay.total_seconds()) // 3600
    if hours == 1:
        return "1 hour"
    if hours <= 24:
        return f"{hours} hours"
    return f"{hours // 24} days"
