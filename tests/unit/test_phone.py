"""Phone numbers are normalised to E.164 or rejected with a reason."""

from __future__ import annotations

import pytest

from recobra.channels.phone import InvalidPhone, normalise_phone, phone_region


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+34600123456", None, "+34600123456"),
        ("+34 600 12 34 56", None, "+34600123456"),
        (" +34-600-123-456 ", None, "+34600123456"),
        ("600 123 456", "ES", "+34600123456"),
        ("600123456", "es", "+34600123456"),
        ("+34 600 123 456", "MX", "+34600123456"),  # an explicit country code wins
        ("55 1234 5678", "MX", "+525512345678"),
        ("+52 1 55 1234 5678", None, "+525512345678"),  # obsolete Mexican mobile "1"
        ("+54 9 11 2345-6789", None, "+5491123456789"),
        ("(212) 555-0123", "US", "+12125550123"),
        ("+1 212.555.0123", None, "+12125550123"),
        ("+57 301 234 5678", None, "+573012345678"),
    ],
)
def test_valid_numbers_become_e164(raw: str, region: str | None, expected: str) -> None:
    assert normalise_phone(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", None, "empty"),
        ("   ", "ES", "empty"),
        ("call me", None, "not a phone number"),
        ("600123456", None, "no country code (expected E.164, e.g. +34600123456)"),
        ("600123456", "XX", "unknown default region 'XX'"),
        ("+999 1234567", None, "unknown country code"),
        ("+34 600", None, "too short"),
        ("+34 6001234567890123", None, "too long"),
        ("+34 500 123 456", None, "not a valid number for country code +34 (ES)"),
        ("+44 7700 900123", None, "not a valid number for country code +44 (GB)"),
    ],
)
def test_invalid_numbers_say_why(raw: str, region: str | None, reason: str) -> None:
    with pytest.raises(InvalidPhone) as excinfo:
        normalise_phone(raw, region)

    assert excinfo.value.reason == reason
    assert excinfo.value.raw == (raw.strip() or raw)
    assert str(excinfo.value) == f"invalid phone number {excinfo.value.raw!r}: {reason}"


def test_invalid_phone_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid phone number"):
        normalise_phone("12", None)


@pytest.mark.parametrize(
    ("e164", "region"),
    [
        ("+34600123456", "ES"),
        ("+525512345678", "MX"),
        ("+12125550123", "US"),
        ("garbage", None),
        ("+999", None),
    ],
)
def test_phone_region(e164: str, region: str | None) -> None:
    assert phone_region(e164) == region
