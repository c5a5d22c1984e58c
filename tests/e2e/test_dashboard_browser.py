"""The dashboard in a real Chromium: sign in, then every page, a filter and a case
action, with screenshots (test-artifacts/dashboard-*.png), the overview also at a
phone's size. The data is a small simulated business that ends today."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import insert, select

from recobra.sim.runner import run_simulation
from recobra.store.admins import create_admin
from recobra.store.tables import CaseRow, ExitSurveyRow
from recobra.web.services import Services

from . import browser as b

SECRET = "d" * 40
EMAIL = "ops@acme.test"
PASSWORD = "a long dashboard password"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Services]]:
    b.require_chromium()
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'r.db'}"
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    run_simulation(
        customers=250,
        days=45,
        seed=7,
        policy=None,
        gateway="simulated",
        gateway_settings={},
        database_url=url,
        start=today - timedelta(days=45),
        resolution_minutes=60,
        show_progress=False,
        messages=False,
    )
    services = b.simulated_services(url, SECRET, company_name="Acme Cloud")
    store = services.store
    create_admin(store.engine, EMAIL, PASSWORD, datetime.now(UTC))
    answers = [
        ("too_expensive", "Es demasiado caro para lo que lo uso.", "es", True),
        ("too_expensive", "", "en", False),
        ("missing_feature", "I needed an export to our accounting tool.", "en", True),
        ("switching", "Moving to a competitor that bundles invoicing.", "en", False),
        ("not_using", "Ya no lo necesito este trimestre.", "es", True),
        ("too_expensive", "Price went up twice this year.", "en", True),
    ]
    with store.engine.begin() as conn:
        for i, (reason, comment, locale, named) in enumerate(answers):
            conn.execute(
                insert(ExitSurveyRow).values(
                    customer_id=f"cus_{i:06d}" if named else None,
                    subscription_id=None,
                    plan_id="pro",
                    reason=reason,
                    comment=comment,
                    locale=locale,
                    offer="discount" if i % 2 else None,
                    outcome="saved" if i == 2 else "canceled",
                    created_at=datetime.now(UTC) - timedelta(days=i * 3),
                )
            )
    try:
        with b.serving(services) as base:
            yield base, services
    finally:
        services.close()


def shot(tab: Page, name: str) -> None:
    b.shot(tab, f"dashboard-{name}")


def sign_in(tab: Page, base: str) -> None:
    tab.goto(f"{base}/admin/cases")
    assert "/admin/login" in tab.url
    tab.get_by_label("Email").fill(EMAIL)
    tab.get_by_label("Password").fill(PASSWORD)
    tab.get_by_role("button", name="Sign in").click()
    tab.wait_for_url(f"{base}/admin/cases")


def overview(tab: Page, base: str) -> None:
    tab.goto(f"{base}/admin")
    expect(tab.locator("h1")).to_have_text("Overview")
    assert tab.locator("figure svg").count() == 2
    expect(tab.get_by_role("heading", name="Amount at risk")).to_be_visible()
    shot(tab, "overview")
    tab.get_by_role("link", name="Last 90 days").click()
    expect(tab.get_by_role("heading", name="Recovered, last 90 days")).to_be_visible()


def cases(tab: Page) -> None:
    tab.get_by_role("link", name="Cases").click()
    tab.get_by_label("Status").select_option("open")
    tab.get_by_label("Amount from").fill("5")
    tab.get_by_role("button", name="Filter").click()
    expect(tab.get_by_role("status")).to_contain_text("case")
    statuses = tab.locator("tbody .status").all_inner_texts()
    assert statuses
    assert set(statuses) == {"open"}
    shot(tab, "cases-filtered")
    tab.get_by_label("Amount from").fill("abc")
    tab.get_by_role("button", name="Filter").click()
    expect(tab.get_by_role("alert")).to_contain_text("(amount_min)")
    assert tab.get_attribute("#amount_min", "aria-invalid") == "true"
    shot(tab, "cases-invalid-filter")


def case_and_actions(tab: Page, base: str, case_id: str) -> None:
    tab.goto(f"{base}/admin/cases/{case_id}")
    expect(tab.locator("h1")).to_have_text(f"Case {case_id}")
    expect(tab.get_by_role("heading", name="Timeline")).to_be_visible()
    shot(tab, "case")
    tab.get_by_label("Why pause (optional)").fill("customer asked for a week")
    tab.get_by_role("button", name="Pause dunning").click()
    expect(tab.get_by_role("status").first).to_contain_text("Dunning paused")
    expect(tab.locator("ol.timeline li").first).to_contain_text(f"dunning paused by {EMAIL}")
    shot(tab, "case-paused")
    tab.get_by_role("button", name="Resume dunning").click()
    expect(tab.get_by_role("status").first).to_contain_text("Dunning resumed")


def customers_policies_survey(tab: Page) -> None:
    tab.get_by_role("link", name="Customers").click()
    tab.get_by_label("Email or customer id").fill("example")
    tab.get_by_role("button", name="Search").click()
    shot(tab, "customers")
    tab.locator("tbody a").first.click()
    expect(tab.get_by_role("heading", name="Payment methods")).to_be_visible()
    assert "tok_" not in tab.content()
    shot(tab, "customer")

    tab.get_by_role("link", name="Policies").click()
    expect(tab.get_by_role("status")).to_contain_text("Valid")
    shot(tab, "policies")

    tab.get_by_role("link", name="Exit survey").click()
    expect(tab.locator("figure svg")).to_have_count(2)
    expect(tab.get_by_text("anonymous").first).to_be_visible()
    shot(tab, "exit-survey")


def test_an_operator_goes_through_every_page(served: tuple[str, Services], browser: Browser) -> None:
    base, services = served
    with services.store.engine.connect() as conn:
        open_case = conn.scalar(
            select(CaseRow.id).where(CaseRow.status == "open").order_by(CaseRow.opened_at.desc()).limit(1)
        )
    assert open_case
    tab = browser.new_page(viewport=b.DESKTOP)
    console_errors: list[str] = []  # a CSP violation (an inline script, say) shows here
    tab.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    tab.goto(f"{base}/admin/login")
    shot(tab, "login")
    sign_in(tab, base)  # lands on the page first asked for
    overview(tab, base)
    cases(tab)
    case_and_actions(tab, base, open_case)
    customers_policies_survey(tab)

    tab.set_viewport_size(b.PHONE)
    tab.goto(f"{base}/admin")
    expect(tab.locator("h1")).to_have_text("Overview")
    b.fits(tab, b.PHONE["width"])
    shot(tab, "overview-phone")

    tab.get_by_role("button", name="Sign out").click()
    expect(tab.locator("h1")).to_have_text("Sign in")
    tab.goto(f"{base}/admin")
    assert "/admin/login" in tab.url
    # (the favicon's 404 and the bad filter's 422 are expected "failed to load" errors)
    assert [e for e in console_errors if not e.startswith("Failed to load resource")] == []
