"""The dashboard through the real application, engine and store: sign-in, sessions,
CSRF, every page, every case action, filters and rate limits."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import T0, Commands, Db, EngineFactory, web_services
from fastapi.testclient import TestClient

from recobra.messages.links import LinkSigner
from recobra.settings import Settings, SettingsError, load_settings
from recobra.store.admins import create_admin, disable_admin
from recobra.store.sql import SqlStore
from recobra.store.tables import ExitSurveyRow, PolicyVersionRow
from recobra.web.app import create_app
from recobra.web.services import Services

SECRET = "a" * 40
PUBLIC = "https://ops.example.com"
EMAIL = "ana@acme.test"
PASSWORD = "correct horse battery staple"
CASE = Commands.case_id("1")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Dash:
    """A browser-like client on the dashboard with a controllable clock."""

    def __init__(self, make: Callable[..., TestClient], services: Services, db: Db) -> None:
        self.make = make
        self.services = services
        self.db = db
        self.now = T0 + timedelta(hours=2)
        self.client = make()

    def login(
        self, email: str = EMAIL, password: str = PASSWORD, client: TestClient | None = None
    ) -> httpx.Response:
        c = client or self.client
        form = c.get("/admin/login")
        assert form.status_code == 200
        token = CSRF.search(form.text)
        assert token
        return c.post(
            "/admin/login",
            data={"email": email, "password": password, "csrf_token": token.group(1), "next": "/admin"},
            follow_redirects=False,
        )

    def csrf(self, path: str = "/admin") -> str:
        page = self.client.get(path)
        assert page.status_code == 200, page.text
        match = CSRF.search(page.text)
        assert match
        return match.group(1)

    def act(self, action: str, case_id: str = CASE, **form: str) -> httpx.Response:
        token = self.csrf(f"/admin/cases/{case_id}")
        return self.client.post(
            f"/admin/cases/{case_id}/{action}", data={"csrf_token": token, **form}, follow_redirects=False
        )


@pytest.fixture
def dash(
    store: SqlStore, engine_factory: EngineFactory, db: Db, database_url: str, commands: Commands
) -> Iterator[Dash]:
    engine = engine_factory()
    holder: dict[str, Dash] = {}
    services = web_services(
        store,
        engine,
        database_url,
        secret=SECRET,
        public_url=PUBLIC,
        clock=lambda: holder["d"].now,
        company_name="Acme",
    )
    engine.handle(commands.payment_failed("1", decline_code="insufficient_funds", network_code="51"))
    engine.handle(commands.payment_failed("2", amount=9900, currency="EUR"))
    engine.handle(commands.payment_failed("3", amount=150000, currency="CLP", token="tok_sim_ok"))
    create_admin(store.engine, EMAIL, PASSWORD, T0)
    app = create_app(services)
    clients: list[TestClient] = []

    def make(**kwargs: Any) -> TestClient:
        client = TestClient(app, base_url=PUBLIC, **kwargs)
        client.__enter__()
        clients.append(client)
        return client

    holder["d"] = Dash(make, services, db)
    try:
        yield holder["d"]
    finally:
        for c in clients:
            c.__exit__(None, None, None)


@pytest.fixture
def signed_in(dash: Dash) -> Dash:
    answer = dash.login()
    assert answer.status_code == 303, answer.text
    return dash


# ---------------------------------------------------------------- signing in and sessions


def test_pages_need_a_session(dash: Dash) -> None:
    answer = dash.client.get("/admin/cases?status=open", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/admin/login?next=%2Fadmin%2Fcases%3Fstatus%3Dopen"


def test_login_starts_a_safe_session(dash: Dash) -> None:
    answer = dash.login()
    assert answer.status_code == 303
    assert answer.headers["location"] == "/admin"
    cookie = next(v for v in answer.headers.get_list("set-cookie") if v.startswith("recobra_admin="))
    lowered = cookie.lower()
    assert "httponly" in lowered
    assert "samesite=lax" in lowered
    assert "secure" in lowered  # the public URL is https
    assert "path=/admin" in lowered
    page = dash.client.get("/admin")
    assert page.status_code == 200
    assert "Open cases" in page.text
    assert EMAIL in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert dash.db.rows("admin_users")[0]["last_login_at"] == dash.now


@pytest.mark.parametrize(("email", "password"), [(EMAIL, "wrong password!!"), ("nobody@acme.test", PASSWORD)])
def test_a_bad_login_is_refused_the_same_way(dash: Dash, email: str, password: str) -> None:
    answer = dash.login(email, password)
    assert answer.status_code == 401
    assert "do not match an active user" in answer.text
    assert not any(v.startswith("recobra_admin=") for v in answer.headers.get_list("set-cookie"))
    assert dash.client.get("/admin", follow_redirects=False).status_code == 303


def test_login_without_its_form_token_is_refused(dash: Dash) -> None:
    answer = dash.client.post(
        "/admin/login",
        data={"email": EMAIL, "password": PASSWORD, "csrf_token": "forged"},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert dash.db.rows("admin_users")[0]["last_login_at"] is None


def test_a_disabled_user_cannot_sign_in_and_loses_open_sessions(signed_in: Dash) -> None:
    assert signed_in.client.get("/admin").status_code == 200
    disable_admin(signed_in.services.store.engine, EMAIL, signed_in.now)
    answer = signed_in.client.get("/admin", follow_redirects=False)
    assert answer.status_code == 303
    assert "why=disabled" in answer.headers["location"]
    fresh = signed_in.make()
    assert signed_in.login(client=fresh).status_code == 401


def test_sessions_expire(signed_in: Dash) -> None:
    signed_in.now += timedelta(hours=7, minutes=59)
    assert signed_in.client.get("/admin").status_code == 200
    signed_in.now += timedelta(minutes=2)
    answer = signed_in.client.get("/admin/cases", follow_redirects=False)
    assert answer.status_code == 303
    assert "why=expired" in answer.headers["location"]
    assert "expired" in signed_in.client.get(answer.headers["location"]).text


def test_a_tampered_session_cookie_is_no_session(signed_in: Dash) -> None:
    value = signed_in.client.cookies.get("recobra_admin")
    assert value
    signed_in.client.cookies.set("recobra_admin", value[:-2] + "xx", domain="ops.example.com", path="/admin")
    assert signed_in.client.get("/admin", follow_redirects=False).status_code == 303


def test_logout_needs_the_token_and_ends_the_session(signed_in: Dash) -> None:
    refused = signed_in.client.post("/admin/logout", data={}, follow_redirects=False)
    assert refused.status_code == 403
    assert signed_in.client.get("/admin").status_code == 200
    token = signed_in.csrf()
    out = signed_in.client.post("/admin/logout", data={"csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303
    assert signed_in.client.get("/admin", follow_redirects=False).status_code == 303


def test_the_sign_in_page_sends_a_signed_in_user_on(signed_in: Dash) -> None:
    answer = signed_in.client.get("/admin/login?next=/admin/cases", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/admin/cases"


def test_next_never_leaves_the_dashboard(dash: Dash) -> None:
    form = dash.client.get("/admin/login?next=//evil.example/x")
    assert 'name="next" value="/admin"' in form.text


# ---------------------------------------------------------------- CSRF on actions


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_an_action_without_the_right_token_is_refused_and_changes_nothing(
    signed_in: Dash, token: str | None
) -> None:
    before = signed_in.db.counts()
    case_before = signed_in.db.case(CASE)
    data = {"reason": "insolvent"} | ({"csrf_token": token} if token else {})
    answer = signed_in.client.post(f"/admin/cases/{CASE}/write-off", data=data, follow_redirects=False)
    assert answer.status_code == 403
    assert "Nothing was changed" in answer.text
    assert signed_in.db.counts() == before
    assert signed_in.db.case(CASE) == case_before


def test_another_sessions_token_is_not_accepted(signed_in: Dash) -> None:
    other = signed_in.make()
    signed_in.login(client=other)
    theirs = CSRF.search(other.get("/admin").text)
    assert theirs
    answer = signed_in.client.post(
        f"/admin/cases/{CASE}/pause", data={"csrf_token": theirs.group(1)}, follow_redirects=False
    )
    assert answer.status_code == 403
    assert signed_in.db.case(CASE)["next_action"] == "retry"


# ---------------------------------------------------------------- case actions


def test_retry_now(signed_in: Dash) -> None:
    case = Commands.case_id("3")  # its card now works
    answer = signed_in.act("retry", case)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/admin/cases/{case}?done=retry"
    assert signed_in.db.case(case)["status"] == "recovered"
    retry = next(a for a in signed_in.db.attempts(case) if a["number"] == 1)
    assert retry["trigger"] == "operator"
    page = signed_in.client.get(answer.headers["location"])
    assert "Retry done" in page.text
    assert f"retry now requested by {EMAIL}" in page.text


def test_pause_and_resume(signed_in: Dash) -> None:
    answer = signed_in.act("pause", reason="customer promised to pay on Friday")
    assert answer.status_code == 303
    row = signed_in.db.case(CASE)
    assert row["next_action"] == "paused"
    assert row["next_action_at"] is None
    page = signed_in.client.get(f"/admin/cases/{CASE}")
    assert "dunning paused" in page.text
    assert "Resume dunning" in page.text
    assert signed_in.act("resume").status_code == 303
    assert signed_in.db.case(CASE)["next_action"] == "retry"
    events = [e["reason"] for e in signed_in.db.events(CASE)]
    assert f"dunning resumed by {EMAIL}" in events


def test_resend_link(signed_in: Dash) -> None:
    before = signed_in.db.count("messages")
    assert signed_in.act("resend-link").status_code == 303
    assert signed_in.db.count("messages") == before + 1
    (row,) = [m for m in signed_in.db.rows("messages") if m["step"].startswith("resend@")]
    assert row["kind"] == "payment_reminder"
    assert row["data"]["context"] == {"requested_by": EMAIL}


def test_write_off(signed_in: Dash) -> None:
    answer = signed_in.act("write-off", reason="customer is insolvent")
    assert answer.status_code == 303
    row = signed_in.db.case(CASE)
    assert row["status"] == "written_off"
    assert signed_in.db.events(CASE)[-1]["reason"] == f"written off by {EMAIL}: customer is insolvent"
    page = signed_in.client.get(f"/admin/cases/{CASE}")
    assert "Write off</button>" not in page.text  # no actions on a closed case


def test_write_off_needs_a_reason_and_changes_nothing_without_one(signed_in: Dash) -> None:
    before = signed_in.db.counts()
    answer = signed_in.act("write-off", reason="  ")
    assert answer.status_code == 422
    assert "Reason (reason)" in answer.text
    assert signed_in.db.counts() == before
    assert signed_in.db.case(CASE)["status"] == "open"


def test_a_too_long_pause_reason_is_named_on_the_pause_field(signed_in: Dash) -> None:
    before = signed_in.db.counts()
    long = "x" * 501
    answer = signed_in.act("pause", reason=long)
    assert answer.status_code == 422
    assert "at most 500 characters" in answer.text
    pause = re.search(r'<input id="pause-reason"[^>]*>', answer.text)
    write_off = re.search(r'<input id="reason"[^>]*>', answer.text)
    assert pause
    assert write_off
    assert 'aria-invalid="true"' in pause.group(0)
    assert long in pause.group(0)  # what was typed, back in its own field
    assert "aria-invalid" not in write_off.group(0)
    assert long not in write_off.group(0)
    assert signed_in.db.counts() == before


def test_an_action_on_a_closed_case_is_a_conflict(signed_in: Dash) -> None:
    signed_in.act("write-off", reason="insolvent")
    before = signed_in.db.counts()
    answer = signed_in.act("pause")
    assert answer.status_code == 409
    assert "written_off" in answer.text
    assert signed_in.db.counts() == before


def test_unknown_case_and_action(signed_in: Dash) -> None:
    assert signed_in.client.get("/admin/cases/case_nope").status_code == 404
    token = signed_in.csrf()
    answer = signed_in.client.post(f"/admin/cases/{CASE}/explode", data={"csrf_token": token})
    assert answer.status_code == 404


# ---------------------------------------------------------------- pages and filters


def test_overview_figures_and_charts(signed_in: Dash) -> None:
    signed_in.act("retry", Commands.case_id("3"))
    page = signed_in.client.get("/admin?days=7")
    assert page.status_code == 200
    text = page.text
    assert "$19.00" in text  # USD at risk
    assert "€99.00" in text
    assert "<svg" in text
    assert "<script" not in text
    assert "Recovered, last 7 days" in text
    assert "100.0%" in text  # one case closed in the period, and it was recovered
    bad = signed_in.client.get("/admin?days=12")
    assert bad.status_code == 422
    assert "Period (days)" in bad.text


def test_case_filters(signed_in: Dash) -> None:
    def ids(query: str) -> list[str]:
        page = signed_in.client.get("/admin/cases" + query)
        assert page.status_code == 200, page.text
        return re.findall(r'href="/admin/cases/(case_[^"]+)"', page.text)

    assert sorted(ids("")) == ["case_in_1", "case_in_2", "case_in_3"]
    assert ids("?category=insufficient_funds") == ["case_in_1"]
    assert ids("?amount_min=50&amount_max=100") == ["case_in_2"]  # EUR 99.00
    assert ids("?amount_min=1000") == ["case_in_3"]  # CLP 150000 (no decimals)
    assert ids("?status=recovered") == []
    assert ids("?customer=cus_2") == ["case_in_2"]
    assert sorted(ids("?status=open&segment=default")) == ["case_in_1", "case_in_2", "case_in_3"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?amount_min=abc", "amount_min"),
        ("?amount_min=-5", "amount_min"),
        ("?amount_max=1.23456", "amount_max"),
        ("?amount_min=10&amount_max=5", "amount_max"),
        ("?status=lost", "status"),
        ("?category=stolen", "category"),
        ("?page=0", "page"),
    ],
)
def test_bad_filters_are_named(signed_in: Dash, query: str, field: str) -> None:
    page = signed_in.client.get("/admin/cases" + query)
    assert page.status_code == 422
    assert f"({field})" in page.text
    assert 'role="alert"' in page.text
    assert f'aria-invalid="true" aria-describedby="err-{field}"' in page.text or field == "page"


def test_case_page_timeline(signed_in: Dash) -> None:
    page = signed_in.client.get(f"/admin/cases/{CASE}")
    assert page.status_code == 200
    text = page.text
    assert "payment failed: insufficient_funds" in text  # the opening decision with its reason
    assert "billing system&#39;s charge" in text or "billing system's charge" in text
    assert "Retry on" in text
    for label in ("Retry now", "Pause dunning", "Send the update link again", "Write off"):
        assert label in text


def test_customers_and_a_customer(signed_in: Dash) -> None:
    page = signed_in.client.get("/admin/customers?q=2@example")
    assert page.status_code == 200
    assert re.findall(r'href="/admin/customers/(cus_[^"]+)"', page.text) == ["cus_2"]
    assert signed_in.client.get("/admin/customers?q=" + "x" * 201).status_code == 422
    one = signed_in.client.get("/admin/customers/cus_1")
    assert one.status_code == 200
    assert "Amex ending 4242" in one.text
    assert "tok_sim" not in one.text  # never the gateway token
    assert "case_in_1" in one.text
    assert signed_in.client.get("/admin/customers/cus_nope").status_code == 404


def test_policies_page(signed_in: Dash) -> None:
    page = signed_in.client.get("/admin/policies")
    assert page.status_code == 200
    assert "Valid" in page.text
    assert "the file above is the only version" in page.text
    with signed_in.services.store.engine.begin() as conn:
        conn.execute(
            PolicyVersionRow.__table__.insert().values(
                version=1,
                source="name = 'x'",
                sha256="0" * 64,
                comment="first try",
                created_at=T0,
                created_by="ops",
                activated_at=T0,
            )
        )
    again = signed_in.client.get("/admin/policies")
    assert "first try" in again.text


def test_exit_survey_page(signed_in: Dash) -> None:
    rows = [
        ("cus_1", "too_expensive", "Es muy caro para mí", "es", T0),
        (None, "too_expensive", "", "en", T0 - timedelta(days=1)),
        (None, "missing_feature", "No export to CSV", "en", T0 - timedelta(days=2)),
        ("cus_2", "other", "old answer", "en", T0 - timedelta(days=60)),
    ]
    with signed_in.services.store.engine.begin() as conn:
        for customer, reason, comment, locale, at in rows:
            conn.execute(
                ExitSurveyRow.__table__.insert().values(
                    customer_id=customer,
                    subscription_id=None,
                    plan_id="pro",
                    reason=reason,
                    comment=comment,
                    locale=locale,
                    offer=None,
                    outcome="canceled",
                    created_at=at,
                )
            )
    page = signed_in.client.get("/admin/surveys?days=30")
    assert page.status_code == 200
    text = page.text
    assert "3 answers in the last 30 days" in text
    assert text.index("Es muy caro") < text.index("No export to CSV")  # newest first
    assert "<em>anonymous</em>" in text
    assert "old answer" not in text
    assert "<svg" in text
    assert "old answer" in signed_in.client.get("/admin/surveys?days=90").text
    assert signed_in.client.get("/admin/surveys?days=abc").status_code == 422


# ---------------------------------------------------------------- rate limits


@pytest.fixture
def limited(
    store: SqlStore, engine_factory: EngineFactory, db: Db, database_url: str
) -> Callable[..., TestClient]:
    def make(**limits: str) -> TestClient:
        settings = Settings(database_url=database_url, link_secret=SECRET, public_url=PUBLIC, **limits)
        services = Services(
            settings=settings, store=store, engine=engine_factory(), links=LinkSigner(SECRET, PUBLIC)
        )
        return TestClient(create_app(services), base_url=PUBLIC)

    return make


def test_hosted_pages_are_limited_per_address(limited: Callable[..., TestClient]) -> None:
    with limited(rate_limit_hosted="3/minute") as client:
        for path in ("/p/update_payment/x.y", "/p/cancel/x.y", "/p/anything-new/z"):
            assert client.get(path).status_code != 429
        answer = client.get("/p/reactivate/x.y")
        assert answer.status_code == 429
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.headers["content-type"].startswith("text/html")
        assert "Too many requests" in answer.text
        assert "Demasiadas solicitudes" in answer.text
        assert client.get("/healthz").status_code == 200  # other paths are not counted


def test_login_is_limited_per_address(limited: Callable[..., TestClient]) -> None:
    with limited(rate_limit_login_ip="2/minute") as client:
        for _ in range(2):
            assert client.post("/admin/login", data={"email": "x@y.zz", "password": "p"}).status_code == 403
        answer = client.post("/admin/login", data={"email": "x@y.zz", "password": "p"})
        assert answer.status_code == 429
        assert "retry-after" in answer.headers
        assert client.get("/admin/login").status_code == 200  # the form itself is not limited


def test_login_is_limited_per_email(limited: Callable[..., TestClient], store: SqlStore, db: Db) -> None:
    create_admin(store.engine, EMAIL, PASSWORD, T0)
    with limited(rate_limit_login_email="2/minute", rate_limit_login_ip="100/minute") as client:
        token = CSRF.search(client.get("/admin/login").text)
        assert token
        data = {"email": EMAIL.upper(), "password": "not the password", "csrf_token": token.group(1)}
        for _ in range(2):
            assert client.post("/admin/login", data=data).status_code == 401
        blocked = client.post("/admin/login", data={**data, "password": PASSWORD}, follow_redirects=False)
        assert blocked.status_code == 429
        assert "retry-after" in blocked.headers
        assert db.rows("admin_users")[0]["last_login_at"] is None  # not even the right password got in


def test_the_api_limit_answers_problem_json(limited: Callable[..., TestClient]) -> None:
    with limited(rate_limit_api="1/minute") as client:
        assert client.get("/api/v1/cases").status_code == 401
        answer = client.get("/api/v1/cases")
        assert answer.status_code == 429
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["status"] == 429
        assert "retry-after" in answer.headers


def test_rate_limits_are_validated_in_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOBRA_RATE_LIMIT_HOSTED", "lots")
    with pytest.raises(SettingsError, match="rate_limit_hosted"):
        load_settings()
    monkeypatch.setenv("RECOBRA_RATE_LIMIT_HOSTED", "off")
    assert load_settings().rate_limit_hosted is None


def test_policies_page_names_the_problems_of_an_invalid_file(dash: Dash, tmp_path: Path) -> None:
    bad = tmp_path / "policy.toml"
    bad.write_text('name = "broken"\nversion = 1\ndefault_policy = "nope"\n', encoding="utf-8")
    dash.services.settings = dash.services.settings.model_copy(update={"policy_file": str(bad)})
    dash.login()
    page = dash.client.get("/admin/policies")
    assert page.status_code == 200
    assert "Not valid" in page.text
    assert "default_policy" in page.text
    assert str(bad) in page.text
