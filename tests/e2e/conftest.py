"""Fixtures of the browser tests (helpers in ``browser.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from .browser import chromium, require_chromium


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, closed after the test."""
    require_chromium()
    with chromium() as launched:
        yield launched
