"""Public holidays from the ``holidays`` library, behind the domain's HolidayCalendar port."""

from __future__ import annotations

import importlib
import logging
from datetime import date

import holidays

log = logging.getLogger("recobra.calendars")


class PublicHolidays:
    """Public holidays by country, cached per (country, year).

    Countries the library does not know have no holidays (weekends still count),
    and that is logged once per country.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], frozenset[date]] = {}
        self._unknown: set[str] = set()

    def load(self) -> None:
        """Load the library's country data now rather than when the first case asks: the
        library imports every country's module on first use (about 50 ms), which a
        long-lived server pays at start-up instead of in a request."""
        importlib.import_module("holidays.countries")

    def is_holiday(self, country: str, day: date) -> bool:
        key = (country, day.year)
        days = self._cache.get(key)
        if days is None:
            days = self._load(country, day.year)
            self._cache[key] = days
        return day in days

    def _load(self, country: str, year: int) -> frozenset[date]:
        try:
            return frozenset(holidays.country_holidays(country, years=year).keys())
        except NotImplementedError:
            if country not in self._unknown:
                self._unknown.add(country)
                log.warning("no public holiday data for country %s; using weekends only", country)
            return frozenset()
