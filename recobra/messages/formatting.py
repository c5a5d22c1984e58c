"""Locale-aware text for customer messages: amounts, dates, declines, SMS length.

Babel (CLDR data) does the formatting. Amounts are formatted from the exact
``Decimal`` of :class:`~recobra.domain.money.Money` with exactly as many decimals
as the currency has in ISO 4217 (CLP and JPY none, EUR two, KWD three), so nothing
is ever rounded or padded differently from what is charged. Dates are shown in the
customer's time zone.

Locales are CLDR identifiers such as ``"es"``, ``"es_MX"``, ``"es-CL"`` or
``"en_US"``; the region decides details such as the currency symbol (``"$"`` for
CLP in ``es_CL``, ``"CLP"`` elsewhere) and separators.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from types import MappingProxyType
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date as _babel_date
from babel.dates import format_skeleton as _babel_skeleton
from babel.dates import format_time as _babel_time
from babel.numbers import NumberPattern, parse_pattern

from recobra.domain.declines import DeclineCategory
from recobra.domain.money import Money

__all__ = [
    "DECLINE_TEXTS",
    "SmsLength",
    "describe_decline",
    "format_amount",
    "format_date",
    "format_datetime",
    "format_month",
    "language_of",
    "parse_locale",
    "sms_length",
    "to_gsm7",
    "zone",
]


@lru_cache(maxsize=256)
def parse_locale(locale: str) -> Locale:
    """A Babel ``Locale`` from ``"es"``, ``"es_MX"`` or ``"es-MX"``; ValueError if unknown."""
    try:
        return Locale.parse(locale.strip().replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"unknown locale {locale!r}") from exc


def language_of(locale: str) -> str:
    """The language part of a locale: ``"es_MX"`` -> ``"es"``."""
    return locale.strip().replace("-", "_").split("_", 1)[0].lower()


@lru_cache(maxsize=256)
def zone(timezone: str) -> ZoneInfo:
    """An IANA time zone (``"America/Santiago"``); ValueError if unknown."""
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(f"unknown time zone {timezone!r}") from exc


# -- Amounts ------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _currency_pattern(locale: str, exponent: int) -> tuple[Locale, NumberPattern]:
    loc = parse_locale(locale)
    source = loc.currency_formats["standard"]
    pattern = parse_pattern(source.pattern if isinstance(source, NumberPattern) else source)
    # Exactly the currency's ISO 4217 decimals, whatever CLDR's own table says
    # (CLDR and ISO disagree on a few currencies, e.g. IQD).
    pattern.frac_prec = (exponent, exponent)
    return loc, pattern


@lru_cache(maxsize=4096)
def format_amount(money: Money, locale: str) -> str:
    """``Money(1250, "EUR")`` -> ``"12,50 €"`` (es) or ``"€12.50"`` (en).

    Uses the locale's CLDR currency pattern with the currency's ISO 4217 decimals:
    ``Money(12990, "CLP")`` is ``"12.990 CLP"`` in ``es`` and ``"$12.990"`` in ``es_CL``.
    The separators may be non-breaking spaces, as CLDR specifies. Results are cached
    (a few thousand amount and locale pairs).
    """
    loc, pattern = _currency_pattern(locale, money.exponent)
    value: Decimal = money.to_decimal()
    text: str = pattern.apply(value, loc, currency=money.currency, currency_digits=False)
    return text


# -- Dates --------------------------------------------------------------------------


def _local(moment: date, timezone: str) -> date:
    """The moment in the customer's zone (a datetime), or the plain date as given."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"datetime must be timezone-aware, got {moment!r}")
        return moment.astimezone(zone(timezone))
    return moment


def format_date(moment: date, locale: str, timezone: str) -> str:
    """The calendar day in the customer's zone, long form: ``"March 5, 2026"``,
    ``"5 de marzo de 2026"``. A plain ``date`` is shown as is; a naive datetime is refused."""
    local = _local(moment, timezone)
    return _long_date(local.date() if isinstance(local, datetime) else local, locale)


@lru_cache(maxsize=4096)
def _long_date(day: date, locale: str) -> str:
    # Messages name a handful of distinct days, so this cache hits almost always.
    return _babel_date(day, "long", locale=parse_locale(locale))


def format_datetime(moment: datetime, locale: str, timezone: str) -> str:
    """Day and time in the customer's zone: ``"March 5, 2026, 2:30 PM"``,
    ``"5 de marzo de 2026, 14:30"`` (the locale's own way of joining them)."""
    local = _local(moment, timezone)
    if not isinstance(local, datetime):
        raise TypeError(f"format_datetime needs a datetime, got {moment!r}")
    loc = parse_locale(locale)
    joiner = str(loc.datetime_formats.get("long", "{1} {0}")).replace("'", "")
    day = _babel_date(local.date(), "long", locale=loc)
    time = _babel_time(local.timetz(), "short", locale=loc)
    return joiner.replace("{0}", time).replace("{1}", day)


def format_month(month_year: str, locale: str) -> str:
    """A card's expiry ``"12/2026"`` (or ``"12/26"``) as ``"December 2026"`` or
    ``"diciembre de 2026"``; anything unparseable is returned unchanged."""
    month_text, _, year_text = month_year.strip().partition("/")
    if not (month_text.isdigit() and year_text.isdigit()):
        return month_year
    month, year = int(month_text), int(year_text)
    if len(year_text) == 2:
        year += 2000
    if not (1 <= month <= 12 and 1900 <= year <= 9999):
        return month_year
    return _babel_skeleton("yMMMM", date(year, month, 1), locale=parse_locale(locale))


# -- Declines -----------------------------------------------------------------------

DECLINE_TEXTS: MappingProxyType[str, MappingProxyType[DeclineCategory, str]] = MappingProxyType(
    {
        "en": MappingProxyType(
            {
                DeclineCategory.HARD: (
                    "Your bank declined the charge, and this card can't be charged again as it is. "
                    "It may have been replaced or closed, or its details may have changed."
                ),
                DeclineCategory.INSUFFICIENT_FUNDS: (
                    "Your bank declined the charge because the card didn't have enough funds or "
                    "available credit at that moment."
                ),
                DeclineCategory.TEMPORARY: (
                    "Your bank declined the charge without giving a specific reason. This is often temporary."
                ),
                DeclineCategory.PROCESSING_ERROR: (
                    "A technical problem stopped the charge from going through. "
                    "It wasn't a problem with your card."
                ),
                DeclineCategory.FRAUD_SUSPECT: (
                    "Your bank blocked the charge as a precaution. A quick call to your bank, "
                    "or using a different card, usually sorts it out."
                ),
                DeclineCategory.AUTHENTICATION_REQUIRED: (
                    "Your bank needs you to confirm the payment yourself, for example with a code "
                    "sent to your phone or in your banking app."
                ),
                DeclineCategory.UNKNOWN: "The charge didn't go through, and your bank didn't tell us why.",
            }
        ),
        "es": MappingProxyType(
            {
                DeclineCategory.HARD: (
                    "Tu banco rechazó el cobro y esta tarjeta ya no se puede volver a cobrar tal como "
                    "está: puede que la hayan reemplazado o cancelado, o que sus datos hayan cambiado."
                ),
                DeclineCategory.INSUFFICIENT_FUNDS: (
                    "Tu banco rechazó el cobro porque la tarjeta no tenía saldo o crédito disponible "
                    "suficiente en ese momento."
                ),
                DeclineCategory.TEMPORARY: (
                    "Tu banco rechazó el cobro sin indicar un motivo concreto. Suele ser algo temporal."
                ),
                DeclineCategory.PROCESSING_ERROR: (
                    "Un problema técnico impidió completar el cobro. No se debe a tu tarjeta."
                ),
                DeclineCategory.FRAUD_SUSPECT: (
                    "Tu banco bloqueó el cobro por precaución. Suele resolverse con una llamada a tu "
                    "banco o usando otra tarjeta."
                ),
                DeclineCategory.AUTHENTICATION_REQUIRED: (
                    "Tu banco necesita que confirmes el pago, por ejemplo con un código que te llega "
                    "al teléfono o desde la app de tu banco."
                ),
                DeclineCategory.UNKNOWN: "El cobro no se completó y tu banco no nos indicó el motivo.",
            }
        ),
    }
)
"""Plain-words explanations of each decline category, per language. Never a raw code;
and never the word "fraud": a customer is told their bank was being careful."""


def describe_decline(category: DeclineCategory | str, locale: str) -> str:
    """Why a payment failed, in plain words for the customer, in their language.

    Unknown categories read as ``unknown``; languages without texts get English.
    """
    try:
        key = DeclineCategory(category)
    except ValueError:
        key = DeclineCategory.UNKNOWN
    texts = DECLINE_TEXTS.get(language_of(locale), DECLINE_TEXTS["en"])
    return texts[key]


# -- SMS ----------------------------------------------------------------------------

# GSM 03.38 default alphabet and its extension table (extension characters take
# two septets: an escape and the character).
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")

_GSM7_REPLACEMENTS = MappingProxyType(
    {
        "\u00a0": " ",  # no-break space (Babel's currency separator)
        "\u202f": " ",  # narrow no-break space
        "\u2009": " ",  # thin space
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2026": "...",
        "\u00b7": ".",
    }
)


def to_gsm7(text: str) -> str:
    """Replace characters outside the GSM-7 alphabet by their nearest GSM-7 spelling
    where one exists (``á`` -> ``a``, ``"`` for curly quotes, a plain space for
    no-break spaces), so that an SMS is sent in GSM-7 (160 characters a segment)
    instead of UCS-2 (70). GSM-7 already has ``é ñ ü ¿ ¡``; other characters
    without an equivalent (say, a name in another script) are kept.
    """
    if all(char in _GSM7_BASIC or char in _GSM7_EXTENDED for char in text):
        return text
    out: list[str] = []
    for char in text:
        if char in _GSM7_BASIC or char in _GSM7_EXTENDED:
            out.append(char)
            continue
        replacement = _GSM7_REPLACEMENTS.get(char)
        if replacement is None:
            stripped = "".join(c for c in unicodedata.normalize("NFD", char) if not unicodedata.combining(c))
            replacement = stripped if stripped and all(c in _GSM7_BASIC for c in stripped) else char
        out.append(replacement)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class SmsLength:
    """How an SMS would be sent: its encoding, its length in that encoding's units
    (septets for GSM-7, UTF-16 code units for UCS-2) and its number of segments."""

    encoding: Literal["GSM-7", "UCS-2"]
    units: int
    segments: int


def sms_length(text: str) -> SmsLength:
    """Encoding and segment count of an SMS.

    GSM-7: 160 septets in one segment, 153 per segment when concatenated; extension
    characters (``€ [ ] { } ^ ~ | \\``) count two. UCS-2: 70 code units in one
    segment, 67 per segment when concatenated; characters outside the BMP count two.
    """
    if all(char in _GSM7_BASIC or char in _GSM7_EXTENDED for char in text):
        units = sum(2 if char in _GSM7_EXTENDED else 1 for char in text)
        single, multi = 160, 153
        encoding: Literal["GSM-7", "UCS-2"] = "GSM-7"
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, multi = 70, 67
        encoding = "UCS-2"
    segments = 1 if units <= single else -(-units // multi)
    return SmsLength(encoding, units, segments)
