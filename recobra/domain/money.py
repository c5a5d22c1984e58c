"""Money as integer minor units plus an ISO 4217 currency. Never floats.

The exponent table follows ISO 4217 (list one, as published by SIX). Zero-decimal
currencies such as JPY and CLP have exponent 0; a few (BHD, KWD, ...) have 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation

from recobra.domain.errors import DomainError

_THREE = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}
_ZERO = {
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
    "VND", "VUV", "XAF", "XOF", "XPF",
}  # fmt: skip
_TWO = {
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD",
    "BDT", "BGN", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DKK", "DOP", "DZD", "EGP",
    "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD",
    "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR",
    "KPW", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD",
    "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MYR", "MZN", "NAD", "NGN",
    "NIO", "NOK", "NPR", "NZD", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "QAR", "RON",
    "RSD", "RUB", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD",
    "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD",
    "TZS", "UAH", "USD", "UYU", "UZS", "VES", "WST", "XCD", "YER", "ZAR", "ZMW", "ZWL",
}  # fmt: skip
# UYW (Uruguay wage index unit) and CLF (Unidad de Fomento) have 4 decimals.
_FOUR = {"CLF", "UYW"}

CURRENCY_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(_TWO, 2),
    **dict.fromkeys(_ZERO, 0),
    **dict.fromkeys(_THREE, 3),
    **dict.fromkeys(_FOUR, 4),
}


def currency_exponent(code: str) -> int:
    """Digits after the decimal point for an ISO 4217 code; raises on unknown codes."""
    try:
        return CURRENCY_EXPONENTS[code]
    except KeyError:
        raise DomainError("currency", f"unknown ISO 4217 currency {code!r}") from None


def normalise_currency(code: object) -> str:
    """Upper-case, validated ISO 4217 code."""
    if not isinstance(code, str):
        raise DomainError("currency", f"must be a 3-letter ISO 4217 code, got {code!r}")
    upper = code.strip().upper()
    currency_exponent(upper)
    return upper


# Scaling by a power of ten must never round, whatever the amount's size.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in integer minor units (cents, yen ...) of one currency.

    ``Money(1250, "EUR")`` is 12.50 EUR; ``Money(1250, "JPY")`` is 1,250 JPY.
    Arithmetic only between equal currencies; there is no float anywhere.
    """

    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        # bool is an int subclass; a True amount is always a bug upstream.
        if not isinstance(self.amount_minor, int) or isinstance(self.amount_minor, bool):
            raise DomainError("amount_minor", f"must be an integer of minor units, got {self.amount_minor!r}")
        object.__setattr__(self, "currency", normalise_currency(self.currency))

    @classmethod
    def of(cls, amount_minor: int, currency: str) -> Money:
        """A non-negative amount, the only kind an invoice may carry."""
        money = cls(amount_minor, currency)
        if money.amount_minor < 0:
            raise DomainError("amount_minor", f"must not be negative, got {amount_minor}")
        return money

    @property
    def exponent(self) -> int:
        return currency_exponent(self.currency)

    def to_decimal(self) -> Decimal:
        """Major units as an exact Decimal (for display and gateway edges only)."""
        return Decimal(self.amount_minor).scaleb(-self.exponent, context=_EXACT)

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise DomainError("currency", f"cannot combine {self.currency} and {other.currency}")

    def __str__(self) -> str:
        return f"{self.to_decimal():.{self.exponent}f} {self.currency}"


def parse_major(text: str, currency: str) -> Money:
    """``"12.50"`` EUR -> ``Money(1250, "EUR")``; rejects more decimals than the currency has."""
    exponent = currency_exponent(normalise_currency(currency))
    try:
        value = Decimal(text)
    except (ArithmeticError, InvalidOperation, TypeError):
        raise DomainError("amount", f"not a number: {text!r}") from None
    if not value.is_finite():
        raise DomainError("amount", f"must be a finite number, got {text!r}")
    scaled = value.scaleb(exponent, context=_EXACT)
    if scaled != scaled.to_integral_value():
        raise DomainError("amount", f"{text} has more decimals than {currency} allows ({exponent})")
    return Money.of(int(scaled), currency)
