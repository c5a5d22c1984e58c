"""Phone numbers: validation and normalisation to E.164 with ``phonenumbers``.

SMS and voice channels only ever hand E.164 numbers (``+34600123456``) to the
provider; anything else is rejected here, before a request is made, with a
reason an operator can act on.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

__all__ = ["InvalidPhone", "normalise_phone", "phone_region"]

_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    NumberParseException.NOT_A_NUMBER: "not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}

_POSSIBLE_REASONS = {
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.INVALID_LENGTH: "invalid length for its country",
    ValidationResult.TOO_LONG: "too long",
}


class InvalidPhone(ValueError):
    """A phone number that cannot be normalised to a valid E.164 number."""

    def __init__(self, raw: str, reason: str) -> None:
        super().__init__(f"invalid phone number {raw!r}: {reason}")
        self.raw = raw
        self.reason = reason


def normalise_phone(raw: str, default_region: str | None = None) -> str:
    """Return ``raw`` as an E.164 string (``+525512345678``) or raise ``InvalidPhone``.

    ``default_region`` (ISO 3166 alpha-2, e.g. ``"ES"``, ``"MX"``) is used for
    numbers written without ``+<country code>``; with ``None`` such numbers are
    rejected. The obsolete Mexican mobile prefix (``+52 1 ...``) is dropped.
    Separators (spaces, dots, dashes, parentheses) are accepted; the number must
    be valid (not merely possible) for its country.
    """
    text = raw.strip() if isinstance(raw, str) else ""
    if not text:
        raise InvalidPhone(str(raw), "empty")
    region = default_region.strip().upper() if default_region else None
    if region is not None and region not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidPhone(text, f"unknown default region {default_region!r}")
    if not any(ch.isdigit() for ch in text):
        raise InvalidPhone(text, "not a phone number")
    if region is None and not text.startswith("+"):
        raise InvalidPhone(text, "no country code (expected E.164, e.g. +34600123456)")
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        raise InvalidPhone(text, _PARSE_REASONS.get(exc.error_type, "unparseable")) from None
    national = str(number.national_number)
    if number.country_code == 52 and len(national) == 11 and national.startswith("1"):
        # Mexico dropped the mobile "1" after +52 in 2019; old records still carry it.
        number = phonenumbers.parse(f"+52{national[1:]}", None)
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible not in (ValidationResult.IS_POSSIBLE, ValidationResult.IS_POSSIBLE_LOCAL_ONLY):
        raise InvalidPhone(text, _POSSIBLE_REASONS.get(possible, "not a possible number"))
    if not phonenumbers.is_valid_number(number):
        code = number.country_code or 0
        where = phonenumbers.region_code_for_country_code(code)
        raise InvalidPhone(text, f"not a valid number for country code +{code} ({where})")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def phone_region(e164: str) -> str | None:
    """The ISO 3166 region of a valid E.164 number (``"MX"``), or ``None``."""
    try:
        number = phonenumbers.parse(e164, None)
    except NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(number)
    return region if region and region != "ZZ" else None
