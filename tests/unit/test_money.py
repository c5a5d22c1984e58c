"""Money: integer minor units of one ISO 4217 currency, exact decimals, never floats."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from recobra.domain.errors import DomainError
from recobra.domain.money import CURRENCY_EXPONENTS, Money, currency_exponent, normalise_currency, parse_major

CURRENCIES = sorted(CURRENCY_EXPONENTS)

# -- exponents ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [
        ("JPY", 0),
        ("CLP", 0),
        ("KRW", 0),
        ("KWD", 3),
        ("BHD", 3),
        ("EUR", 2),
        ("USD", 2),
        ("MXN", 2),
        ("COP", 2),
        ("CLF", 4),
    ],
)
def test_currency_exponents(currency: str, exponent: int) -> None:
    assert currency_exponent(currency) == exponent
    assert Money(1, currency).exponent == exponent


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (Money(1250, "EUR"), "12.50 EUR"),
        (Money(5, "EUR"), "0.05 EUR"),
        (Money(1250, "JPY"), "1250 JPY"),
        (Money(990, "CLP"), "990 CLP"),
        (Money(1250, "KWD"), "1.250 KWD"),
        (Money(1, "KWD"), "0.001 KWD"),
        (Money(0, "USD"), "0.00 USD"),
    ],
)
def test_str_shows_the_currency_decimals(money: Money, text: str) -> None:
    assert str(money) == text


@pytest.mark.parametrize(
    ("money", "value"),
    [
        (Money(1250, "EUR"), Decimal("12.50")),
        (Money(1250, "JPY"), Decimal("1250")),
        (Money(1250, "CLP"), Decimal("1250")),
        (Money(1250, "KWD"), Decimal("1.250")),
        (Money(-7, "KWD"), Decimal("-0.007")),
    ],
)
def test_to_decimal_is_exact(money: Money, value: Decimal) -> None:
    assert money.to_decimal() == value
    assert isinstance(money.to_decimal(), Decimal)


# -- parse_major --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.50", "EUR", 1250),
        ("12.5", "EUR", 1250),
        ("12", "EUR", 1200),
        ("0.01", "USD", 1),
        ("0", "USD", 0),
        ("1250", "JPY", 1250),
        ("1250", "CLP", 1250),
        ("1.250", "KWD", 1250),
        ("0.001", "KWD", 1),
        ("19.99", "mxn", 1999),
        ("1E+2", "EUR", 10000),
        (" 7.10 ", "EUR", 710),
    ],
)
def test_parse_major_is_exact(text: str, currency: str, minor: int) -> None:
    money = parse_major(text, currency)
    assert money == Money(minor, currency.upper())
    assert type(money.amount_minor) is int


def test_parse_major_does_not_go_through_binary_floats() -> None:
    # 0.1 + 0.2 != 0.3 in binary floating point; in Money it is exact.
    total = parse_major("0.10", "EUR") + parse_major("0.20", "EUR")
    assert total == parse_major("0.30", "EUR")
    assert total.amount_minor == 30


@pytest.mark.parametrize(
    ("text", "currency"),
    [
        ("12.501", "EUR"),
        ("0.001", "USD"),
        ("12.5", "JPY"),
        ("1.5", "CLP"),
        ("0.1", "CLP"),
        ("1.2345", "KWD"),
        ("0.0001", "BHD"),
    ],
)
def test_parse_major_rejects_more_decimals_than_the_currency_has(text: str, currency: str) -> None:
    with pytest.raises(DomainError) as info:
        parse_major(text, currency)
    assert info.value.field == "amount"
    assert "decimals" in info.value.reason


@pytest.mark.parametrize("text", ["", "abc", "12,50", "1.2.3", "twelve", "€12"])
def test_parse_major_rejects_non_numbers(text: str) -> None:
    with pytest.raises(DomainError) as info:
        parse_major(text, "EUR")
    assert info.value.field == "amount"


@pytest.mark.parametrize("text", ["Infinity", "-Infinity", "inf", "NaN", "sNaN"])
def test_parse_major_rejects_non_finite_values_with_a_domain_error(text: str) -> None:
    # Bug: "Infinity" raises OverflowError (int(Decimal('Infinity'))) and "sNaN" raises
    # decimal.InvalidOperation (scaleb outside the try); neither is a DomainError.
    with pytest.raises(DomainError) as info:
        parse_major(text, "EUR")
    assert info.value.field == "amount"


def test_parse_major_rejects_negative_amounts() -> None:
    with pytest.raises(DomainError) as info:
        parse_major("-1.00", "EUR")
    assert info.value.field == "amount_minor"


def test_parse_major_rejects_unknown_currency() -> None:
    with pytest.raises(DomainError) as info:
        parse_major("1.00", "ZZZ")
    assert info.value.field == "currency"


# -- validation ---------------------------------------------------------------------


@pytest.mark.parametrize("currency", ["ZZZ", "EURO", "", "US", "XXX"])
def test_unknown_currency_is_rejected(currency: str) -> None:
    with pytest.raises(DomainError) as info:
        Money(100, currency)
    assert info.value.field == "currency"
    with pytest.raises(DomainError):
        currency_exponent(currency)


@pytest.mark.parametrize("currency", [None, 978, b"EUR", ["EUR"]])
def test_non_string_currency_is_rejected(currency: object) -> None:
    with pytest.raises(DomainError) as info:
        Money(100, currency)  # type: ignore[arg-type]
    assert info.value.field == "currency"


def test_currency_is_normalised() -> None:
    assert Money(1, " eur ").currency == "EUR"
    assert normalise_currency("jpy") == "JPY"
    assert Money(1, "eur") == Money(1, "EUR")


@pytest.mark.parametrize("amount", [12.5, 12.0, 0.0, float("nan"), Decimal("12"), "12", None, True, False])
def test_non_integer_amounts_are_rejected(amount: object) -> None:
    with pytest.raises(DomainError) as info:
        Money(amount, "EUR")  # type: ignore[arg-type]
    assert info.value.field == "amount_minor"
    with pytest.raises(DomainError):
        Money.of(amount, "EUR")  # type: ignore[arg-type]


def test_of_rejects_negative_amounts() -> None:
    with pytest.raises(DomainError) as info:
        Money.of(-1, "EUR")
    assert info.value.field == "amount_minor"
    assert Money.of(0, "EUR") == Money(0, "EUR")


def test_money_is_immutable() -> None:
    money = Money(100, "EUR")
    with pytest.raises(AttributeError):
        money.amount_minor = 200  # type: ignore[misc]


# -- arithmetic ---------------------------------------------------------------------


def test_arithmetic_within_a_currency() -> None:
    assert Money(1250, "EUR") + Money(50, "EUR") == Money(1300, "EUR")
    assert Money(1250, "EUR") - Money(1300, "EUR") == Money(-50, "EUR")
    assert Money(100, "JPY") + Money(1, "JPY") == Money(101, "JPY")


@pytest.mark.parametrize(("a", "b"), [("EUR", "USD"), ("JPY", "CLP"), ("KWD", "BHD"), ("MXN", "COP")])
def test_arithmetic_across_currencies_is_rejected(a: str, b: str) -> None:
    with pytest.raises(DomainError) as info:
        Money(100, a) + Money(100, b)
    assert info.value.field == "currency"
    with pytest.raises(DomainError) as info:
        Money(100, a) - Money(100, b)
    assert info.value.field == "currency"


# -- properties ---------------------------------------------------------------------

amounts = st.integers()
currencies = st.sampled_from(CURRENCIES)


@given(amount=amounts, currency=currencies)
@example(amount=10**30 + 1, currency="EUR")
def test_to_decimal_is_exact_for_any_amount(amount: int, currency: str) -> None:
    # Bug: Decimal.scaleb rounds to the context precision (28 digits), so larger
    # amounts are silently rounded (10**30 + 1 cents -> 1.000...E+28).
    money = Money(amount, currency)
    assert Fraction(money.to_decimal()) == Fraction(amount, 10**money.exponent)


@given(amount=st.integers(min_value=0), currency=currencies)
@example(amount=10**30 + 1, currency="EUR")
def test_parse_major_round_trips_to_decimal(amount: int, currency: str) -> None:
    money = Money(amount, currency)
    again = parse_major(str(money.to_decimal()), currency)
    assert again == money
    assert type(again.amount_minor) is int
    # and the displayed form parses back too
    text, code = str(money).split(" ")
    assert parse_major(text, code) == money


@given(a=amounts, b=amounts, currency=currencies)
def test_arithmetic_stays_integer(a: int, b: int, currency: str) -> None:
    x, y = Money(a, currency), Money(b, currency)
    for result in (x + y, x - y, y - x, (x + y) - y):
        assert type(result.amount_minor) is int
        assert result.currency == currency
    assert (x + y).amount_minor == a + b
    assert (x - y).amount_minor == a - b
    assert (x + y) - y == x


@given(value=st.floats(allow_nan=True, allow_infinity=True), currency=currencies)
def test_constructing_with_a_float_always_raises(value: float, currency: str) -> None:
    with pytest.raises(DomainError) as info:
        Money(value, currency)  # type: ignore[arg-type]
    assert info.value.field == "amount_minor"


@given(
    amount=st.integers(min_value=0, max_value=10**15), currency=currencies, other=st.sampled_from(CURRENCIES)
)
def test_mixing_currencies_always_raises(amount: int, currency: str, other: str) -> None:
    if other == currency:
        assert Money(amount, currency) + Money(amount, other) == Money(2 * amount, currency)
    else:
        with pytest.raises(DomainError):
            Money(amount, currency) + Money(amount, other)
