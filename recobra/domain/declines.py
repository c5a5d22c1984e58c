"""Decline classification: from a gateway's raw codes to what the engine should do.

A decline reaches Recobra as up to three raw strings:

* ``code``: the gateway's decline code. For Stripe, the ``decline_code`` of a card
  error, or the error ``code`` itself when there is no decline code (``card_declined``,
  ``expired_card``, ``processing_error`` ...). Other gateways often hand over the
  ISO 8583 response code here (``"51"``).
* ``network_code``: the card network's ISO 8583 response code (Stripe's
  ``network_decline_code``), e.g. ``"51"``, ``"05"``, ``"N7"``.
* ``advice_code``: Stripe's ``advice_code`` (``do_not_try_again``, ``try_again_later``,
  ``confirm_card_data``) or a Mastercard Merchant Advice Code (Stripe's
  ``network_advice_code``), e.g. ``"03"``, ``"24"``.

:func:`classify` turns them into a :class:`Decline` whose :class:`DeclineCategory`
drives retry scheduling. Raw codes are always kept exactly as given so that nothing
is lost for reporting or later reclassification.

Sources (see docs/declines.md):

* Stripe decline codes: https://docs.stripe.com/declines/codes and error codes
  https://docs.stripe.com/error-codes; advice codes:
  https://docs.stripe.com/declines/card#retrying-issuer-declines
* Visa decline categories 1-4 (Visa Core Rules, "Excessive Reattempts", effective
  April 2021) as published by acquirers and gateways.
* Mastercard Merchant Advice Codes (MAC) as published by acquirers and gateways.

Pure standard library, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class DeclineCategory(StrEnum):
    """What kind of failure a decline is, and so what the engine does next."""

    HARD = "hard"
    """Never retry this card: the customer must give a new (or corrected) payment method."""
    INSUFFICIENT_FUNDS = "insufficient_funds"
    """Not enough money or credit right now: retry when money is likely to arrive (payday)."""
    TEMPORARY = "temporary"
    """The issuer cannot approve right now, or gave no reason: retry soon, then back off."""
    PROCESSING_ERROR = "processing_error"
    """A processing or transport error, not a judgement on the card: fast backoff."""
    FRAUD_SUSPECT = "fraud_suspect"
    """The issuer or the gateway suspects fraud: stop retrying and contact the customer."""
    AUTHENTICATION_REQUIRED = "authentication_required"
    """SCA / 3-D Secure or a PIN is needed: the customer must authenticate; no blind retry."""
    UNKNOWN = "unknown"
    """Unrecognised or missing code: check the attempt's status with the gateway first."""

    @property
    def retryable(self) -> bool:
        """Whether the engine may retry on its own (without the customer acting first)."""
        return self not in _NOT_RETRYABLE


_NOT_RETRYABLE = frozenset(
    {
        DeclineCategory.HARD,
        DeclineCategory.FRAUD_SUSPECT,
        DeclineCategory.AUTHENTICATION_REQUIRED,
    }
)

# How strict each category is, for "the stricter of two signals wins". Non-retryable
# categories rank above retryable ones; among retryable ones, insufficient funds waits
# longest (until payday), then temporary, then processing errors (fast backoff).
# UNKNOWN ranks lowest so that any definite signal replaces it.
_STRICTNESS: Mapping[DeclineCategory, int] = MappingProxyType(
    {
        DeclineCategory.HARD: 6,
        DeclineCategory.FRAUD_SUSPECT: 5,
        DeclineCategory.AUTHENTICATION_REQUIRED: 4,
        DeclineCategory.INSUFFICIENT_FUNDS: 3,
        DeclineCategory.TEMPORARY: 2,
        DeclineCategory.PROCESSING_ERROR: 1,
        DeclineCategory.UNKNOWN: 0,
    }
)


@dataclass(frozen=True, slots=True)
class Decline:
    """A classified decline. The raw codes are kept exactly as the gateway gave them."""

    category: DeclineCategory
    code: str
    """Raw decline code as given (``""`` when the gateway gave none)."""
    network_code: str | None
    """Raw ISO 8583 response code from the card network, e.g. ``"51"``, ``"05"``, ``"N7"``."""
    advice_code: str | None
    """Raw Mastercard Merchant Advice Code (``"03"``, ``"24"``) or Stripe advice code
    (``"do_not_try_again"``, ``"try_again_later"``, ``"confirm_card_data"``)."""
    description: str
    """Plain English explanation for operators."""

    @property
    def retryable(self) -> bool:
        """Shortcut for ``self.category.retryable``."""
        return self.category.retryable


_H = DeclineCategory.HARD
_IF = DeclineCategory.INSUFFICIENT_FUNDS
_T = DeclineCategory.TEMPORARY
_PE = DeclineCategory.PROCESSING_ERROR
_F = DeclineCategory.FRAUD_SUSPECT
_A = DeclineCategory.AUTHENTICATION_REQUIRED
_U = DeclineCategory.UNKNOWN

# Stripe decline codes (https://docs.stripe.com/declines/codes) plus the card error
# codes that Stripe returns *instead of* a decline code (https://docs.stripe.com/error-codes).
# Categories are Recobra's reading of Stripe's "next steps" column for an off-session
# (subscription) charge, where the customer is not present to fix anything.
STRIPE_DECLINE_CODES: Mapping[str, tuple[DeclineCategory, str]] = MappingProxyType(
    {
        # -- Authentication (SCA / 3-D Secure / PIN): the customer has to act.
        "authentication_required": (
            _A,
            "The issuer requires authentication (3-D Secure / SCA); the customer must "
            "authenticate the payment on session.",
        ),
        "payment_intent_authentication_failure": (
            _A,
            "Authentication (3-D Secure) of the payment failed or was abandoned; the customer "
            "must authenticate again.",
        ),
        "setup_intent_authentication_failure": (
            _A,
            "Authentication failed while saving the card; the customer must authenticate again.",
        ),
        "offline_pin_required": (
            _A,
            "The card requires its PIN (card-present payments); the customer must pay in person "
            "or with another method.",
        ),
        "online_or_offline_pin_required": (
            _A,
            "The card requires its PIN (card-present payments); the customer must pay in person "
            "or with another method.",
        ),
        "incorrect_pin": (_A, "The PIN entered was wrong (card-present payments)."),
        "invalid_pin": (_A, "The PIN entered was invalid (card-present payments)."),
        # -- Money: retry when funds or limits are likely to be back.
        "insufficient_funds": (
            _IF,
            "Not enough funds or credit on the card; retry when money is likely to arrive.",
        ),
        "withdrawal_count_limit_exceeded": (
            _IF,
            "The cardholder exceeded the card's balance or usage limit for the period; retry "
            "after the limit resets.",
        ),
        # card_velocity_exceeded: Stripe describes it as the customer exceeding the balance,
        # credit limit or transaction amount limit on the card. That is a spending limit that
        # resets (new statement period, payment received), so it waits like insufficient
        # funds rather than retrying soon and burning attempts.
        "card_velocity_exceeded": (
            _IF,
            "The cardholder exceeded the balance, credit limit or amount limit on the card; "
            "retry after the limit resets.",
        ),
        # -- Temporary or unexplained issuer declines: retry soon, back off.
        "approve_with_id": (
            _T,
            "The issuer could not authorise the payment this time; retrying usually works.",
        ),
        "try_again_later": (_T, "The issuer asked to try again later."),
        # issuer_not_available: the issuer could not be reached. This is an outage on the
        # issuer side, not our transport failing: the charge definitely did not go through,
        # and hammering an unavailable issuer with fast retries does not help, so it backs
        # off like a temporary decline (same as ISO 91).
        "issuer_not_available": (
            _T,
            "The card issuer could not be reached; retry later.",
        ),
        "generic_decline": (_T, "The issuer declined without giving a reason."),
        "do_not_honor": (_T, "The issuer declined without giving a reason (do not honor)."),
        "call_issuer": (
            _T,
            "The issuer declined without a reason; the customer may need to call their bank.",
        ),
        "no_action_taken": (_T, "The issuer declined without giving a reason (no action taken)."),
        "card_declined": (
            _T,
            "The card was declined and the gateway gave no more specific decline code.",
        ),
        "card_decline_rate_limit_exceeded": (
            _T,
            "Stripe blocked the charge because this card was declined too many times recently; "
            "Stripe allows a new attempt after 24 hours.",
        ),
        # -- Processing errors: fast backoff.
        "processing_error": (
            _PE,
            "An error occurred while processing the card; the payment can be attempted again.",
        ),
        "reenter_transaction": (
            _PE,
            "The issuer could not process the payment for an unknown reason; attempt it again.",
        ),
        # -- Fraud suspicion: stop and talk to the customer.
        "fraudulent": (
            _F,
            "The payment was declined as suspected fraud (issuer or gateway risk check). Do not "
            "tell the customer it looked fraudulent; treat it as a generic decline.",
        ),
        "merchant_blacklist": (
            _F,
            "The card or customer is on this merchant's block list. Do not disclose the reason "
            "to the customer.",
        ),
        "security_violation": (_F, "The issuer declined the payment for a security violation."),
        # -- Hard declines: the card, as it stands, will not be approved.
        # Lost/stolen/pickup are HARD rather than FRAUD_SUSPECT: the card is dead (Visa
        # category 1, codes 04/07/41/43) and the only useful action is a new card. Stripe
        # advises not to tell the customer the card was reported lost or stolen.
        "lost_card": (
            _H,
            "The card was reported lost; it will never be approved again. Ask for a new payment "
            "method without mentioning why.",
        ),
        "stolen_card": (
            _H,
            "The card was reported stolen; it will never be approved again. Ask for a new payment "
            "method without mentioning why.",
        ),
        "pickup_card": (
            _H,
            "The issuer asked for the card to be retained (possibly lost or stolen); it will not "
            "be approved again.",
        ),
        "restricted_card": (
            _H,
            "The card cannot be used for this payment (restricted, possibly lost or stolen).",
        ),
        "do_not_try_again": (
            _H,
            "The issuer says not to try this card again; ask for another payment method.",
        ),
        "expired_card": (
            _H,
            "The card has expired; the customer must update it or use another card.",
        ),
        "incorrect_number": (_H, "The card number is incorrect; the customer must correct it."),
        "invalid_number": (_H, "The card number is not a valid card number."),
        "incorrect_cvc": (
            _H,
            "The security code (CVC) is incorrect; the customer must re-enter it.",
        ),
        "invalid_cvc": (_H, "The security code (CVC) is invalid; the customer must re-enter it."),
        "incorrect_zip": (
            _H,
            "The postal code does not match the billing address; the customer must correct it.",
        ),
        "invalid_expiry_month": (_H, "The card's expiry month is invalid."),
        "invalid_expiry_year": (_H, "The card's expiry year is invalid."),
        "invalid_account": (_H, "The card, or the account behind it, is invalid or closed."),
        "new_account_information_available": (
            _H,
            "The card or its account changed (for example reissued); new card details are needed.",
        ),
        "invalid_amount": (
            _H,
            "The issuer rejected the amount as invalid or above what the card allows; retrying "
            "the same amount will not help.",
        ),
        "card_not_supported": (_H, "The card does not support this kind of purchase."),
        "currency_not_supported": (_H, "The card does not support the charge currency."),
        "not_permitted": (_H, "The payment is not permitted on this card."),
        "service_not_allowed": (_H, "The card does not allow this kind of service or purchase."),
        "transaction_not_allowed": (_H, "The issuer does not allow this transaction on the card."),
        "pin_try_exceeded": (
            _H,
            "The PIN was entered wrongly too many times; the card is blocked for this use.",
        ),
        "stop_payment_order": (
            _H,
            "The cardholder asked the issuer to stop payments to this merchant (Visa R0).",
        ),
        "revocation_of_authorization": (
            _H,
            "The cardholder revoked this recurring payment authorisation (Visa R1).",
        ),
        "revocation_of_all_authorizations": (
            _H,
            "The cardholder revoked all recurring authorisations for this merchant (Visa R3).",
        ),
        "testmode_decline": (
            _H,
            "A Stripe test card was used for a live charge; it can never succeed.",
        ),
        # -- Unknown outcome: find out before charging again.
        "duplicate_transaction": (
            _U,
            "An identical charge was submitted very recently; check whether it succeeded before "
            "charging again.",
        ),
    }
)

# Common ISO 8583 response codes (field 39) as the networks return them; Visa's
# category for each is in recobra.domain.network.visa_category.
ISO8583_RESPONSE_CODES: Mapping[str, tuple[DeclineCategory, str]] = MappingProxyType(
    {
        "01": (_T, "Refer to card issuer: the issuer declined without a reason."),
        "02": (_T, "Refer to card issuer, special condition: declined without a reason."),
        "03": (
            _T,
            "Invalid merchant: the issuer or acquirer rejected the merchant set-up.",
        ),
        "04": (_H, "Pick up card: the card must not be used again (Visa category 1)."),
        "05": (_T, "Do not honor: the issuer declined without a reason."),
        "06": (_PE, "Error: the issuer could not process the request."),
        "07": (
            _H,
            "Pick up card, special condition (suspected fraud): the card must not be used again.",
        ),
        "12": (_H, "Invalid transaction: the issuer will not accept this kind of transaction."),
        "13": (_H, "Invalid amount."),
        "14": (_H, "Invalid card number: no such account (Visa category 1)."),
        "15": (_H, "No such issuer (Visa category 1)."),
        "19": (_PE, "Re-enter transaction: a processing problem; attempt again."),
        "1A": (
            _A,
            "Additional customer authentication required (SCA soft decline, Visa).",
        ),
        "41": (_H, "Lost card, pick up (Visa category 1)."),
        "43": (_H, "Stolen card, pick up (Visa category 1)."),
        "46": (_H, "Closed account (Visa category 1)."),
        "51": (_IF, "Insufficient funds or credit."),
        "54": (_H, "Expired card: the customer must update the card."),
        "55": (_A, "Incorrect PIN."),
        "57": (_H, "Transaction not permitted to cardholder (Visa category 1)."),
        "59": (_F, "Suspected fraud."),
        "61": (_IF, "Exceeds the card's amount limit; retry after the limit resets."),
        "62": (_H, "Restricted card."),
        "63": (_F, "Security violation."),
        # 65 is "exceeds withdrawal count limit" in ISO 8583. Some European issuers use it
        # for an SCA soft decline instead; Stripe reports those as authentication_required,
        # and a specific Stripe code always wins over the network code.
        "65": (_IF, "Exceeds the card's usage count limit; retry after the limit resets."),
        "75": (_H, "Allowable number of PIN tries exceeded."),
        "78": (
            _T,
            "Card blocked until first use or activation by the cardholder; may succeed later.",
        ),
        # 91 (issuer or switch inoperative) is treated like Stripe's issuer_not_available:
        # an outage on the issuer's side, retried with a temporary back-off.
        "91": (_T, "Issuer or switch inoperative: the issuer could not be reached."),
        "92": (_PE, "Unable to route the transaction to the issuer."),
        "93": (_H, "Transaction cannot be completed: violation of law."),
        # 96 is a system malfunction somewhere in the processing chain: fast backoff.
        "96": (_PE, "System malfunction while processing the transaction."),
        "N7": (
            _H,
            "Card security code (CVV2) mismatch: the customer must correct the card details.",
        ),
        "R0": (_H, "Stop payment order: the cardholder stopped this recurring payment (Visa)."),
        "R1": (_H, "Revocation of authorisation: the cardholder revoked this recurring payment."),
        "R3": (
            _H,
            "Revocation of all authorisations: the cardholder revoked all recurring payments.",
        ),
    }
)

# Codes that say "declined" without saying why. When the gateway's code is one of these,
# the network code (if any) is consulted and the stricter of the two wins.
_VAGUE_STRIPE_CODES = frozenset(
    {"generic_decline", "do_not_honor", "call_issuer", "no_action_taken", "card_declined"}
)
_VAGUE_ISO_CODES = frozenset({"01", "02", "05"})

# Advice codes. Stripe: https://docs.stripe.com/declines/card#retrying-issuer-declines;
# Mastercard Merchant Advice Codes as published by acquirers and gateways (e.g. Braintree).
ADVICE_CODES: Mapping[str, str] = MappingProxyType(
    {
        "do_not_try_again": "the issuer says do not try this card again",
        "try_again_later": "the issuer says try again later",
        "confirm_card_data": "the issuer says the card details must be updated before a retry",
        "01": "Mastercard MAC 01: new account information available; update the card details",
        "02": "Mastercard MAC 02: cannot approve at this time, try again later",
        "03": "Mastercard MAC 03: do not try again",
        "04": "Mastercard MAC 04: token requirements not fulfilled for this token type",
        "21": "Mastercard MAC 21: payment cancellation; the cardholder stopped recurring payments",
        "24": "Mastercard MAC 24: retry after 1 hour",
        "25": "Mastercard MAC 25: retry after 24 hours",
        "26": "Mastercard MAC 26: retry after 2 days",
        "27": "Mastercard MAC 27: retry after 4 days",
        "28": "Mastercard MAC 28: retry after 6 days",
        "29": "Mastercard MAC 29: retry after 8 days",
        "30": "Mastercard MAC 30: retry after 10 days",
    }
)

NEVER_RETRY_ADVICE_CODES = frozenset({"do_not_try_again", "03", "21"})
"""Advice codes meaning "never retry this card": Stripe ``do_not_try_again`` and
Mastercard MAC 03 (do not try again) and 21 (payment cancellation). Mastercard charges
for retries after MAC 03/21 regardless of any attempt count."""

# Advice meaning "the stored card details are stale": retrying the same data cannot
# succeed, so for the engine these are hard declines (a new or updated card is needed).
_UPDATE_CARD_ADVICE_CODES = frozenset({"confirm_card_data", "01"})


def _optional_str(name: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")


def normalize_network_code(code: str | None) -> str | None:
    """Canonical form of an ISO 8583 response code for table look-ups.

    Strips blanks and upper-cases (``" n7 "`` -> ``"N7"``); a single digit is
    zero-padded (``"5"`` -> ``"05"``) since some gateways drop the leading zero.
    Returns None for None or a blank string.
    """
    text = _optional_str("network_code", code)
    if text is None:
        return None
    key = text.strip().upper()
    if not key:
        return None
    if len(key) == 1 and key.isdigit():
        key = "0" + key
    return key


def normalize_advice_code(code: str | None) -> str | None:
    """Canonical form of an advice code: lower-case words, two-digit MACs (``"3"`` -> ``"03"``)."""
    text = _optional_str("advice_code", code)
    if text is None:
        return None
    key = text.strip().lower()
    if not key:
        return None
    if len(key) == 1 and key.isdigit():
        key = "0" + key
    return key


def classify(
    code: str | None,
    *,
    network_code: str | None = None,
    advice_code: str | None = None,
) -> Decline:
    """Classify a decline from the gateway's raw codes. Never raises for unknown codes.

    Rules, in order:

    1. ``code`` is looked up in :data:`STRIPE_DECLINE_CODES` (case-insensitive,
       stripped), then in :data:`ISO8583_RESPONSE_CODES`. Unknown or empty: UNKNOWN.
    2. ``network_code`` is looked up in :data:`ISO8583_RESPONSE_CODES`. If it is a
       hard decline (e.g. a Visa category 1 code such as ``"14"`` or ``"43"``) it wins.
       If ``code`` is vague (``generic_decline``, ``do_not_honor``, ``"05"`` ...) or
       unknown, the stricter of the two categories wins.
    3. An advice code meaning "never" (:data:`NEVER_RETRY_ADVICE_CODES`) or "update the
       card details" (``confirm_card_data``, MAC 01) makes the decline HARD.

    Raises TypeError if a code is neither a str nor None.
    """
    raw = _optional_str("code", code)
    raw_code = "" if raw is None else raw
    network_raw = _optional_str("network_code", network_code)
    advice_raw = _optional_str("advice_code", advice_code)

    key = raw_code.strip().lower()
    primary: tuple[DeclineCategory, str] | None = STRIPE_DECLINE_CODES.get(key)
    vague = key in _VAGUE_STRIPE_CODES
    if primary is None:
        iso = normalize_network_code(raw_code)
        primary = ISO8583_RESPONSE_CODES.get(iso) if iso is not None else None
        vague = iso in _VAGUE_ISO_CODES
    if primary is None:
        vague = True
        if key:
            primary = (
                _U,
                f"Unrecognised decline code {raw_code.strip()!r}; check the attempt's status "
                "with the gateway before retrying.",
            )
        else:
            primary = (
                _U,
                "No decline code was given; check the attempt's status with the gateway before retrying.",
            )

    category, description = primary
    network_key = normalize_network_code(network_raw)
    network = ISO8583_RESPONSE_CODES.get(network_key) if network_key is not None else None
    if network is not None:
        network_category, network_description = network
        # A hard network code (Visa category 1: the issuer will never approve) overrides
        # even a specific gateway code; otherwise only a vague gateway code is refined.
        override = network_category is _H or vague
        if override and _STRICTNESS[network_category] > _STRICTNESS[category]:
            category = network_category
            description = f"Network code {network_key}: {network_description}"

    advice_key = normalize_advice_code(advice_raw)
    if (
        advice_key is not None
        and advice_key in NEVER_RETRY_ADVICE_CODES | _UPDATE_CARD_ADVICE_CODES
        and category is not _H
    ):
        advice_text = ADVICE_CODES[advice_key]
        category = _H
        description = (
            f"{advice_text[0].upper()}{advice_text[1:]} (advice {advice_key}), so this card "
            f"must not be retried as it is. Original decline: {description}"
        )

    return Decline(
        category=category,
        code=raw_code,
        network_code=network_raw,
        advice_code=advice_raw,
        description=description,
    )
