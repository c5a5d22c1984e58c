"""The operator's API, health checks and metrics through the real application and store
(both backends), plus a schemathesis run over the served OpenAPI document (SQLite)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import T0, TEST_POLICY, Db, EngineFactory, migrate
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import text

from recobra.calendars import PublicHolidays
from recobra.domain.schedule import NoHolidays
from recobra.engine.service import Engine
from recobra.gateways.simulated import SimulatedGateway
from recobra.messages.links import LinkSigner
from recobra.policyfile import parse_policy
from recobra.settings import Settings
from recobra.store.keys import VERIFIED_FOR_S, create_key, revoke_key
from recobra.store.sql import SqlStore
from recobra.web import auth
from recobra.web.app import create_app
from recobra.web.services import Services

SECRET = "x" * 40
PROBLEM = "application/problem+json"


class Api:
    """A running app on the test database, with a valid API key and a settable clock."""

    def __init__(self, client: TestClient, services: Services, db: Db, key: str, key_id: str) -> None:
        self.client = client
        self.services = services
        self.db = db
        self.key = key
        self.key_id = key_id
        self.now = T0 + timedelta(hours=1)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, url: str, **params: Any) -> Any:
        return self.client.get(url, params=params, headers=self.auth)

    def post(self, url: str, body: Any = None, **kwargs: Any) -> Any:
        return self.client.post(url, json=body, headers=self.auth, **kwargs)


def make_services(store: SqlStore, engine: Engine, url: str, clock: Any) -> Services:
    return Services(
        settings=Settings(database_url=url, link_secret=SECRET),
        store=store,
        engine=engine,
        links=LinkSigner(SECRET, "https://pay.example.com"),
        clock=clock,
    )


@contextmanager
def running_api(
    store: SqlStore, engine: Engine, db: Db, database_url: str, *, library: Any = None
) -> Iterator[Api]:
    """The application on ``engine`` (and a policy ``library`` when given), with an API
    key made for the test suite."""
    holder: dict[str, Api] = {}
    services = make_services(store, engine, database_url, lambda: holder["api"].now)
    if library is not None:
        services.policy_library = library
    key_id, key = create_key(store.engine, "test-suite", T0)
    with TestClient(create_app(services)) as client:
        holder["api"] = Api(client, services, db, key, key_id)
        yield holder["api"]


@pytest.fixture
def api(store: SqlStore, engine_factory: EngineFactory, db: Db, database_url: str) -> Iterator[Api]:
    with running_api(store, engine_factory(), db, database_url) as running:
        yield running


def failed(
    key: str, *, event_id: str | None = None, at: datetime = T0, amount: Any = 4900, currency: str = "USD"
) -> dict[str, Any]:
    """A payment_failed event as an operator's system sends it (JSON)."""
    return {
        "type": "payment_failed",
        "id": event_id or f"evt_failed_{key}",
        "occurred_at": at.isoformat(),
        "customer": {
            "id": f"cus_{key}",
            "email": f"{key}@example.com",
            "name": f"Customer {key}",
            "country": "US",
            "timezone": "UTC",
        },
        "subscription": {
            "id": f"sub_{key}",
            "status": "active",
            "started_at": (at - timedelta(days=200)).isoformat(),
            "plan": {
                "id": "plan_pro",
                "name": "Pro",
                "interval": "month",
                "amount_minor": 4900,
                "currency": "USD",
            },
        },
        "invoice": {
            "id": f"in_{key}",
            "amount_minor": amount,
            "currency": currency,
            "created_at": at.isoformat(),
        },
        "payment_method": {
            "id": f"pm_{key}",
            "gateway_token": "tok_sim_decline_insufficient_funds",
            "brand": "visa",
            "last4": "4242",
            "exp_month": 12,
            "exp_year": 2030,
            "funding": "debit",
        },
        "decline": {"code": "insufficient_funds", "network_code": "51"},
    }


def succeeded(key: str, *, at: datetime) -> dict[str, Any]:
    return {
        "type": "payment_succeeded",
        "id": f"evt_paid_{key}",
        "occurred_at": at.isoformat(),
        "invoice_id": f"in_{key}",
        "gateway_reference": f"ch_{key}",
    }


def domain_counts(db: Db) -> dict[str, int]:
    return {name: n for name, n in db.counts().items() if name != "api_keys"}


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    return body


# --------------------------------------------------------------------------- authentication


def api_operations(app: FastAPI) -> list[tuple[str, str]]:
    paths = app.openapi()["paths"]
    return [(method, path) for path, item in paths.items() if path.startswith("/api/v1/") for method in item]


OWN_OPERATIONS = [
    ("post", "/api/v1/events"),
    ("get", "/api/v1/cases"),
    ("get", "/api/v1/cases/{case_id}"),
    ("post", "/api/v1/cases/{case_id}/write-off"),
    ("get", "/api/v1/customers/{customer_id}"),
    ("get", "/api/v1/customers"),
    ("get", "/api/v1/subscriptions"),
    ("get", "/api/v1/subscriptions/{subscription_id}"),
    ("get", "/api/v1/invoices"),
    ("get", "/api/v1/invoices/{invoice_id}"),
    ("get", "/api/v1/payment-methods"),
    ("get", "/api/v1/payment-methods/{payment_method_id}"),
    ("get", "/api/v1/attempts"),
    ("get", "/api/v1/attempts/{attempt_id}"),
    ("get", "/api/v1/policies"),
    ("post", "/api/v1/policies"),
    ("get", "/api/v1/policies/active"),
    ("get", "/api/v1/policies/{version}"),
    ("post", "/api/v1/policies/validate"),
    ("post", "/api/v1/policies/{version}/activate"),
]


class CountedLoads(PublicHolidays):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def load(self) -> None:
        super().load()
        self.loads += 1


def test_a_server_process_warms_up_before_it_takes_requests_and_keeps_nothing(
    store: SqlStore, engine_factory: EngineFactory, db: Db, database_url: str
) -> None:
    calendar = CountedLoads()
    services = make_services(store, engine_factory(holidays=calendar), database_url, lambda: T0)
    store.engine.dispose()  # no connection open yet
    assert store.engine.pool.checkedin() == 0  # type: ignore[attr-defined]
    before = db.counts()
    services.warm_up()
    assert calendar.loads == 1
    # The rehearsed failed payments were written in full, then rolled back.
    assert db.counts() == before
    assert not any(db.counts().values())
    # The event writers' connections (and one for the rest) are open, back in the pool.
    expected = services.group_commit.writers + 1
    assert store.engine.pool.checkedin() == expected  # type: ignore[attr-defined]
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert calendar.is_holiday("MX", date(2026, 9, 16))  # Independence Day


def test_a_rehearsal_that_fails_never_keeps_a_server_from_starting(
    store: SqlStore, engine_factory: EngineFactory, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = engine_factory()
    services = make_services(store, engine, database_url, lambda: T0)

    def refused(*_: Any) -> Any:
        raise RuntimeError("no policy for this segment")

    engine.rehearse = refused  # type: ignore[method-assign]
    services.warm_up()
    assert "warm-up: the rehearsed failed payment did not go through" in caplog.text
    assert "no policy for this segment" in caplog.text


def test_every_api_route_needs_a_valid_key(api: Api) -> None:
    app: FastAPI = api.client.app  # type: ignore[assignment]
    operations = api_operations(app)
    assert set(OWN_OPERATIONS) <= set(operations)
    other_id, other = create_key(api.services.store.engine, "revoked one", T0)
    revoke_key(api.services.store.engine, other_id, T0 + timedelta(minutes=5))
    headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer rk_live_" + "A" * 43},
        {"Authorization": f"Bearer {api.key}x"},
        {"Authorization": f"Basic {api.key}"},
        {"Authorization": api.key},
        {"Authorization": f"Bearer {other}"},
    ]
    for method, path in operations:
        url = path.replace("{case_id}", "case_in_1").replace("{customer_id}", "cus_1")
        url = re.sub(r"\{[a-z_]+\}", "1", url)
        for h in headers:
            response = api.client.request(method, url, headers=h, json=[])
            body = assert_problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer"), (method, url, h)
            assert "rk_live_" not in body.get("detail", "").replace("rk_live_...", "")
    assert domain_counts(api.db) == dict.fromkeys(domain_counts(api.db), 0)
    # The valid key still works.
    assert api.get("/api/v1/cases").status_code == 200


def test_an_invalid_key_gets_the_invalid_token_challenge(api: Api) -> None:
    missing = api.client.get("/api/v1/cases")
    assert missing.headers["www-authenticate"] == 'Bearer realm="recobra"'
    wrong = api.client.get("/api/v1/cases", headers={"Authorization": "Bearer rk_live_nope-nope-nope"})
    assert wrong.headers["www-authenticate"] == 'Bearer realm="recobra", error="invalid_token"'


def test_a_revoked_key_is_refused_within_the_documented_delay(api: Api) -> None:
    ticks = [1000.0]
    api.services.keys.timer = lambda: ticks[0]
    assert api.get("/api/v1/cases").status_code == 200
    revoke_key(api.services.store.engine, api.key_id, api.now)
    # A process trusts a key it verified for VERIFIED_FOR_S seconds, no longer.
    ticks[0] += VERIFIED_FOR_S - 0.01
    assert api.get("/api/v1/cases").status_code == 200
    ticks[0] += 0.01
    assert_problem(api.get("/api/v1/cases"), 401)
    ticks[0] += 3600
    assert_problem(api.post("/api/v1/events", [failed("1")]), 401)
    assert api.db.count("cases") == 0


def test_a_new_key_works_at_once_and_a_wrong_one_is_never_remembered(api: Api) -> None:
    new_id, new = create_key(api.services.store.engine, "new one", T0)
    assert api.client.get("/api/v1/cases", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    revoke_key(api.services.store.engine, new_id, api.now)
    wrong = {"Authorization": "Bearer rk_live_" + "B" * 43}
    for _ in range(3):
        assert_problem(api.client.get("/api/v1/cases", headers=wrong), 401)
    api.services.keys.forget()
    assert_problem(api.client.get("/api/v1/cases", headers={"Authorization": f"Bearer {new}"}), 401)


def test_requests_presenting_a_key_being_looked_up_share_the_lookup(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a busy key's memory runs out, the requests in flight make one database
    lookup between them, not one each."""
    lookups: list[str] = []
    real = auth.verify_key

    def slow_lookup(*args: Any) -> str | None:
        lookups.append(args[1])
        time.sleep(0.2)  # every request arrives while the lookup runs
        return real(*args)

    monkeypatch.setattr(auth, "verify_key", slow_lookup)
    wrong = "rk_live_" + "B" * 43

    async def together(key: str, n: int) -> list[int]:
        transport = httpx.ASGITransport(app=api.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            header = {"Authorization": f"Bearer {key}"}
            answers = await asyncio.gather(*(client.get("/api/v1/cases", headers=header) for _ in range(n)))
        return [a.status_code for a in answers]

    api.services.keys.forget()
    assert asyncio.run(together(api.key, 12)) == [200] * 12
    assert lookups == [api.key]
    # Remembered from that one lookup.
    assert asyncio.run(together(api.key, 3)) == [200] * 3
    assert lookups == [api.key]
    # A wrong key is shared while looked up, and never remembered.
    assert asyncio.run(together(wrong, 5)) == [401] * 5
    assert asyncio.run(together(wrong, 5)) == [401] * 5
    assert lookups == [api.key, wrong, wrong]
    assert not api.services.key_lookups


# --------------------------------------------------------------------------- events


def test_a_batch_of_events_is_applied_with_a_result_per_event(api: Api) -> None:
    batch = [
        failed("1"),
        failed("2", at=T0 + timedelta(minutes=1)),
        succeeded("1", at=T0 + timedelta(minutes=30)),
    ]

    response = api.post("/api/v1/events", batch)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["applied"] == 3
    assert body["duplicates"] == 0
    assert body["results"] == [
        {"id": "evt_failed_1", "duplicate": False, "case_ids": ["case_in_1"], "note": ""},
        {"id": "evt_failed_2", "duplicate": False, "case_ids": ["case_in_2"], "note": ""},
        {"id": "evt_paid_1", "duplicate": False, "case_ids": ["case_in_1"], "note": ""},
    ]
    assert api.db.case("case_in_1")["status"] == "recovered"
    assert api.db.case("case_in_2")["status"] == "open"
    assert api.db.count("processed_events") == 3


def test_one_event_object_is_accepted_too(api: Api) -> None:
    response = api.post("/api/v1/events", failed("solo"))
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [
        {"id": "evt_failed_solo", "duplicate": False, "case_ids": ["case_in_solo"], "note": ""}
    ]


def test_duplicate_events_are_reported_and_change_nothing(api: Api) -> None:
    first = api.post("/api/v1/events", [failed("1"), failed("2")])
    assert first.status_code == 200
    before = api.db.counts()
    case_before = api.db.case("case_in_1")

    again = api.post("/api/v1/events", [failed("1"), failed("2"), failed("3"), failed("3")])

    assert again.status_code == 200, again.text
    body = again.json()
    assert [(r["id"], r["duplicate"]) for r in body["results"]] == [
        ("evt_failed_1", True),
        ("evt_failed_2", True),
        ("evt_failed_3", False),
        ("evt_failed_3", True),
    ]
    assert body["applied"] == 1
    assert body["duplicates"] == 3
    assert api.db.case("case_in_1") == case_before
    assert api.db.count("cases") == before["cases"] + 1


def test_invalid_events_name_their_fields_and_nothing_is_written(api: Api) -> None:
    bad_amount = failed("2", amount=-5)
    no_currency = failed("3")
    del no_currency["invoice"]["currency"]
    batch = [failed("1"), bad_amount, no_currency, {"type": "payment_teleported", "id": "x"}]

    response = api.post("/api/v1/events", batch)

    body = assert_problem(response, 422)
    fields = {e["field"] for e in body["errors"]}
    assert "events[1].invoice.amount_minor" in fields
    assert "events[2].invoice.currency" in fields
    assert "events[3].type" in fields
    assert not any(f.startswith("events[0]") for f in fields)
    assert all(e["reason"] for e in body["errors"])
    assert domain_counts(api.db) == dict.fromkeys(domain_counts(api.db), 0)


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"", "(json)"),
        (b"   ", "(json)"),
        (b"[{", "(json)"),
        (b'{"a": NaN}', "(json)"),
        (b"\xff\xfe", "(json)"),
        (b'"just a string"', "(json)"),
        (b"[1]", "events[0]"),
        (b'{"type": "payment_failed"}', "id"),
    ],
)
def test_malformed_bodies_are_422_problems(api: Api, content: bytes, field: str) -> None:
    response = api.client.post(
        "/api/v1/events", content=content, headers={**api.auth, "Content-Type": "application/json"}
    )
    body = assert_problem(response, 422)
    assert field in {e["field"] for e in body["errors"]}, body
    assert domain_counts(api.db) == dict.fromkeys(domain_counts(api.db), 0)


def test_amounts_must_be_integer_minor_units(api: Api) -> None:
    for amount in (49.0, "4900", True):
        body = assert_problem(api.post("/api/v1/events", [failed("1", amount=amount)]), 422)
        assert [e["field"] for e in body["errors"]] == ["events[0].invoice.amount_minor"]


# --------------------------------------------------------------------------- cases


def open_cases(api: Api, count: int, *, same_time: int = 0) -> list[str]:
    """``count`` cases opened a minute apart, the last ``same_time`` of them at one instant."""
    events = []
    for i in range(count):
        at = T0 + timedelta(minutes=min(i, count - same_time))
        events.append(failed(f"{i:02d}", at=at))
    response = api.post("/api/v1/events", events)
    assert response.status_code == 200, response.text
    return [f"case_in_{i:02d}" for i in range(count)]


def test_cases_are_listed_newest_first_across_pages(api: Api) -> None:
    ids = open_cases(api, 8, same_time=3)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = api.get("/api/v1/cases", **params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= 3
        seen.extend(c["id"] for c in page["data"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 3
    assert sorted(seen) == sorted(ids)
    assert len(set(seen)) == len(seen)
    expected = sorted(ids, key=lambda i: (api.db.case(i)["opened_at"], i), reverse=True)
    assert seen == expected


def test_the_last_full_page_has_no_cursor(api: Api) -> None:
    open_cases(api, 4)
    page = api.get("/api/v1/cases", limit=4).json()
    assert len(page["data"]) == 4
    assert page["next_cursor"] is None
    assert api.get("/api/v1/cases").json()["next_cursor"] is None


def test_cases_are_filtered_by_status_and_customer(api: Api) -> None:
    open_cases(api, 3)
    api.post("/api/v1/events", [succeeded("01", at=T0 + timedelta(hours=1))])

    recovered = api.get("/api/v1/cases", status="recovered").json()["data"]
    assert [c["id"] for c in recovered] == ["case_in_01"]
    open_ = api.get("/api/v1/cases", status="open").json()["data"]
    assert sorted(c["id"] for c in open_) == ["case_in_00", "case_in_02"]
    mine = api.get("/api/v1/cases", customer_id="cus_02").json()["data"]
    assert [c["id"] for c in mine] == ["case_in_02"]
    assert api.get("/api/v1/cases", customer_id="cus_02", status="recovered").json()["data"] == []


def test_a_case_summary_has_amount_status_decline_and_next_action(api: Api) -> None:
    open_cases(api, 1)
    (case,) = api.get("/api/v1/cases").json()["data"]
    assert case["id"] == "case_in_00"
    assert case["amount_minor"] == 4900
    assert case["currency"] == "USD"
    assert case["status"] == "open"
    assert case["customer_id"] == "cus_00"
    assert case["last_decline"]["code"] == "insufficient_funds"
    assert case["last_decline"]["network_code"] == "51"
    assert case["next_action"] == "retry"
    assert case["next_action_reason"]
    assert case["policy"] == "standard"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"status": "lost"}, "status"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WyJ4IiwxXQ"}, "cursor"),  # base64 of ["x",1]
    ],
)
def test_bad_list_parameters_are_422_problems(api: Api, params: dict[str, Any], field: str) -> None:
    body = assert_problem(api.get("/api/v1/cases", **params), 422)
    assert field in {e["field"] for e in body["errors"]}


def test_a_case_shows_its_timeline_and_attempts(api: Api) -> None:
    open_cases(api, 1)
    api.services.engine.tick(T0 + timedelta(days=2))

    response = api.get("/api/v1/cases/case_in_00")

    assert response.status_code == 200, response.text
    case = response.json()
    assert case["id"] == "case_in_00"
    timeline = case["timeline"]
    assert timeline[0]["kind"] == "opened"
    assert all(e["reason"] and e["at"] for e in timeline)
    assert any(e["kind"] == "attempt_started" for e in timeline)
    attempts = case["attempts"]
    assert [a["number"] for a in attempts] == [0, 1]
    billing, retry = attempts
    assert billing["trigger"] == "billing"
    assert billing["decline"]["code"] == "insufficient_funds"
    assert retry["trigger"] == "policy"
    assert retry["status"] in ("failed", "succeeded", "unknown")
    assert retry["idempotency_key"]
    assert case["retries"] == 1


def test_an_unknown_case_or_customer_is_a_404_problem(api: Api) -> None:
    assert_problem(api.get("/api/v1/cases/case_nope"), 404)
    assert_problem(api.get("/api/v1/customers/cus_nope"), 404)
    assert_problem(api.post("/api/v1/cases/case_nope/write-off", {"reason": "gone"}), 404)


def test_a_case_is_written_off_once(api: Api) -> None:
    open_cases(api, 1)

    response = api.post("/api/v1/cases/case_in_00/write-off", {"reason": "customer is bankrupt"})

    assert response.status_code == 200, response.text
    case = response.json()
    assert case["status"] == "written_off"
    assert case["next_action"] is None
    last = case["timeline"][-1]
    assert last["kind"] == "status_changed"
    assert last["to_status"] == "written_off"
    assert "customer is bankrupt" in last["reason"]
    assert "test-suite" in last["reason"]
    assert api.db.invoice("in_00")["status"] == "uncollectible"

    again = api.post("/api/v1/cases/case_in_00/write-off", {"reason": "again"})
    assert_problem(again, 409)


@pytest.mark.parametrize(
    "body", [{}, {"reason": ""}, {"reason": "   "}, {"reason": 3}, {"reason": "ok", "extra": 1}, None]
)
def test_a_write_off_needs_a_reason(api: Api, body: Any) -> None:
    open_cases(api, 1)
    problem = assert_problem(api.post("/api/v1/cases/case_in_00/write-off", body), 422)
    assert problem["errors"]
    assert api.db.case("case_in_00")["status"] == "open"


def test_a_customer_has_subscriptions_payment_methods_and_cases(api: Api) -> None:
    open_cases(api, 1)

    response = api.get("/api/v1/customers/cus_00")

    assert response.status_code == 200, response.text
    customer = response.json()
    assert customer["email"] == "00@example.com"
    assert customer["subscriptions"][0]["id"] == "sub_00"
    assert customer["subscriptions"][0]["status"] == "past_due"
    assert customer["subscriptions"][0]["plan"]["amount_minor"] == 4900
    assert customer["subscriptions"][0]["plan"]["currency"] == "USD"
    (method,) = customer["payment_methods"]
    assert method["last4"] == "4242"
    assert "gateway_token" not in method
    assert "tok_sim" not in response.text
    assert [c["id"] for c in customer["cases"]] == ["case_in_00"]


# --------------------------------------------------------------------------- health and metrics


def test_health_and_readiness(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


@pytest.fixture
def sqlite_services(tmp_path: Path) -> Iterator[Services]:
    """Services on a SQLite file of their own (for tests that need no second backend)."""
    url = f"sqlite:///{tmp_path / 'own.db'}"
    migrate(url)
    store = SqlStore.from_url(url)
    with SimulatedGateway(seed=3) as gateway:
        engine = Engine(store, gateway, parse_policy(TEST_POLICY, "<test policy>").policies, NoHolidays())
        yield make_services(store, engine, url, lambda: T0 + timedelta(days=1))
    store.dispose()


def test_readiness_fails_when_the_schema_is_behind(sqlite_services: Services) -> None:
    with sqlite_services.store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    with TestClient(create_app(sqlite_services)) as client:
        body = assert_problem(client.get("/readyz"), 503)
        assert "recobra init" in body["detail"]
        assert client.get("/healthz").status_code == 200
        assert "recobra_database_up 1.0" in client.get("/metrics").text


def metric(text_: str, name: str, **labels: str) -> float:
    for line in text_.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    raise AssertionError(f"no sample {name} {labels}")


def test_metrics_count_requests_cases_and_events(api: Api) -> None:
    open_cases(api, 3)
    api.post("/api/v1/events", [failed("00"), succeeded("01", at=T0 + timedelta(hours=1))])
    api.get("/api/v1/cases")
    api.get("/api/v1/cases/case_nope")
    api.client.get("/api/v1/cases")

    response = api.client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    m = response.text
    assert metric(m, "recobra_http_requests_total", method="GET", route="/api/v1/cases", status="200") == 1
    assert metric(m, "recobra_http_requests_total", method="GET", route="/api/v1/cases", status="401") == 1
    assert (
        metric(m, "recobra_http_requests_total", method="GET", route="/api/v1/cases/{case_id}", status="404")
        == 1
    )
    assert metric(m, "recobra_http_requests_total", method="POST", route="/api/v1/events", status="200") == 2
    assert metric(m, "recobra_http_request_duration_seconds_count", route="/api/v1/events") == 2
    assert metric(m, "recobra_cases", status="open") == 2
    assert metric(m, "recobra_cases", status="recovered") == 1
    assert metric(m, "recobra_cases", status="written_off") == 0
    assert metric(m, "recobra_events_ingested_total", type="payment_failed", result="applied") == 3
    assert metric(m, "recobra_events_ingested_total", type="payment_failed", result="duplicate") == 1
    assert metric(m, "recobra_events_ingested_total", type="payment_succeeded", result="applied") == 1
    assert metric(m, "recobra_database_up") == 1


def test_each_app_has_its_own_metrics(api: Api, engine_factory: EngineFactory, database_url: str) -> None:
    api.get("/api/v1/cases")
    other = create_app(make_services(api.services.store, engine_factory(), database_url, lambda: T0))
    with TestClient(other) as client:
        fresh = client.get("/metrics").text
    assert 'route="/api/v1/cases"' not in fresh
    assert (
        metric(
            api.client.get("/metrics").text,
            "recobra_http_requests_total",
            route="/api/v1/cases",
            status="200",
        )
        == 1
    )


# --------------------------------------------------------------------------- OpenAPI


def test_the_openapi_document_describes_the_api(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    schemas = doc["components"]["schemas"]
    assert {
        "Event",
        "PaymentFailedEvent",
        "CaseSummary",
        "CaseDetail",
        "CasePage",
        "CustomerOut",
        "IngestResult",
    } <= set(schemas)
    body = doc["paths"]["/api/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/Event"} in body["oneOf"]
    text_ = api.client.get("/openapi.json").text
    assert "#/$defs/" not in text_
    for method, path in OWN_OPERATIONS:
        operation = doc["paths"][path][method]
        assert operation["security"] == [{"ApiKey": []}], path
        assert PROBLEM in operation["responses"]["401"]["content"], path
        if "422" in operation["responses"]:
            assert list(operation["responses"]["422"]["content"]) == [PROBLEM], path
    assert doc["components"]["securitySchemes"]["ApiKey"]["scheme"].lower() == "bearer"


# --------------------------------------------------------------------------- schemathesis

OWN_PATHS = (
    "^("
    + "|".join(
        re.escape(path)
        for path in (
            "/api/v1/events",
            "/api/v1/cases",
            "/api/v1/cases/{case_id}",
            "/api/v1/cases/{case_id}/write-off",
            "/api/v1/customers/{customer_id}",
            *(path for _method, path in OWN_OPERATIONS),
            "/healthz",
            "/readyz",
            "/metrics",
        )
    )
    + ")$"
)


@pytest.fixture
def fuzz_app(sqlite_services: Services) -> Iterator[tuple[FastAPI, str]]:
    _key_id, key = create_key(sqlite_services.store.engine, "schemathesis", T0)
    app = create_app(sqlite_services)
    with TestClient(app) as client:
        # Something to find: a few cases, one of them written off.
        events = [failed("1"), failed("2"), failed("3", at=T0 + timedelta(minutes=1))]
        auth = {"Authorization": f"Bearer {key}"}
        assert client.post("/api/v1/events", json=events, headers=auth).status_code == 200
        assert (
            client.post(
                "/api/v1/cases/case_in_3/write-off", json={"reason": "test"}, headers=auth
            ).status_code
            == 200
        )
        # Two policy versions (the configured file and this one), the second active.
        stored = client.post(
            "/api/v1/policies",
            json={"source": TEST_POLICY.replace("grace_days = 2", "grace_days = 3"), "activate": True},
            headers=auth,
        )
        assert stored.status_code == 201, stored.text
        sqlite_services.engine.tick(T0 + timedelta(days=2))  # some attempts to find
        yield app, key


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_schemathesis_finds_no_server_errors_or_schema_violations(fuzz_app: tuple[FastAPI, str]) -> None:
    app, key = fuzz_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex=OWN_PATHS)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(OWN_OPERATIONS) + 3, [op.label for op in operations]
    known = ["case_in_1", "case_in_2", "case_in_3", "cus_1", "cus_2", "sub_1", "in_2", "pm_3", "1", "2"]
    for operation in operations:
        strategy = operation.as_strategy()

        @settings(
            max_examples=50,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy, pick=st.sampled_from(known), use_known=st.booleans())
        def run(case: Any, pick: str, use_known: bool) -> None:
            if use_known and case.path_parameters:
                for name in case.path_parameters:
                    case.path_parameters[name] = pick
            case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

        run()
