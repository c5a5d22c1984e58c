"""Customers, subscriptions, invoices, payment methods and attempts through the API, on
the real application and store (both backends): lists with filters and cursors,
lookups, 404s and bad input naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from conftest import T0, Db, EngineFactory
from test_api import Api, assert_problem, failed, running_api, succeeded

from recobra.store.keys import revoke_key
from recobra.store.sql import SqlStore


@pytest.fixture
def api(store: SqlStore, engine_factory: EngineFactory, db: Db, database_url: str) -> Iterator[Api]:
    with running_api(store, engine_factory(), db, database_url) as running:
        yield running


def business(api: Api, count: int = 5) -> None:
    """``count`` failed renewals a minute apart (keys 00, 01, ...); 01 paid later."""
    events = [failed(f"{i:02d}", at=T0 + timedelta(minutes=i)) for i in range(count)]
    events.append(succeeded("01", at=T0 + timedelta(hours=1)))
    response = api.post("/api/v1/events", events)
    assert response.status_code == 200, response.text


def every_page(api: Api, url: str, limit: int, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every item of a list, following cursors; and the number of pages."""
    items: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        response = api.get(url, **query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= limit
        items.extend(page["data"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return items, pages
        assert pages < 50


# --------------------------------------------------------------------------- customers


def test_customers_are_listed_by_id_across_pages(api: Api) -> None:
    business(api, 5)
    customers, pages = every_page(api, "/api/v1/customers", 2)
    assert pages == 3
    assert [c["id"] for c in customers] == [f"cus_{i:02d}" for i in range(5)]
    first = customers[0]
    assert first["email"] == "00@example.com"
    assert first["country"] == "US"
    assert "subscriptions" not in first


def test_customers_are_found_by_email_whatever_its_case(api: Api) -> None:
    business(api, 3)
    found = api.get("/api/v1/customers", email="02@EXAMPLE.com").json()
    assert [c["id"] for c in found["data"]] == ["cus_02"]
    assert found["next_cursor"] is None
    assert api.get("/api/v1/customers", email="nobody@example.com").json()["data"] == []
    # LIKE wildcards are plain characters here.
    assert api.get("/api/v1/customers", email="%").json()["data"] == []


# --------------------------------------------------------------------------- subscriptions


def test_subscriptions_are_listed_filtered_and_found(api: Api) -> None:
    business(api, 4)
    subscriptions, pages = every_page(api, "/api/v1/subscriptions", 3)
    assert pages == 2
    assert sorted(s["id"] for s in subscriptions) == [f"sub_{i:02d}" for i in range(4)]
    started = [(s["started_at"], s["id"]) for s in subscriptions]
    assert started == sorted(started, reverse=True)

    mine = api.get("/api/v1/subscriptions", customer_id="cus_02").json()["data"]
    assert [s["id"] for s in mine] == ["sub_02"]
    past_due = api.get("/api/v1/subscriptions", status="past_due").json()["data"]
    assert sorted(s["id"] for s in past_due) == ["sub_00", "sub_02", "sub_03"]
    assert api.get("/api/v1/subscriptions", status="canceled").json()["data"] == []

    response = api.get("/api/v1/subscriptions/sub_02")
    assert response.status_code == 200, response.text
    sub = response.json()
    assert sub["customer_id"] == "cus_02"
    assert sub["status"] == "past_due"
    assert sub["plan"] == {
        "id": "plan_pro",
        "name": "Pro",
        "interval": "month",
        "amount_minor": 4900,
        "currency": "USD",
    }
    assert_problem(api.get("/api/v1/subscriptions/sub_nope"), 404)


# --------------------------------------------------------------------------- invoices


def test_invoices_are_listed_filtered_and_found(api: Api) -> None:
    business(api, 5)
    invoices, pages = every_page(api, "/api/v1/invoices", 2)
    assert pages == 3
    assert [i["id"] for i in invoices] == [f"in_{i:02d}" for i in reversed(range(5))]

    paid = api.get("/api/v1/invoices", status="paid").json()["data"]
    assert [i["id"] for i in paid] == ["in_01"]
    assert paid[0]["paid_at"] is not None
    assert [i["id"] for i in api.get("/api/v1/invoices", customer_id="cus_03").json()["data"]] == ["in_03"]
    by_sub = api.get("/api/v1/invoices", subscription_id="sub_04", status="open").json()["data"]
    assert [i["id"] for i in by_sub] == ["in_04"]
    assert api.get("/api/v1/invoices", subscription_id="sub_04", status="void").json()["data"] == []

    invoice = api.get("/api/v1/invoices/in_02").json()
    assert invoice["amount_minor"] == 4900
    assert invoice["currency"] == "USD"
    assert invoice["status"] == "open"
    assert invoice["case_id"] == "case_in_02"
    assert invoice["subscription_id"] == "sub_02"
    assert_problem(api.get("/api/v1/invoices/in_nope"), 404)


# --------------------------------------------------------------------------- payment methods


def test_payment_methods_show_no_card_number_or_token(api: Api) -> None:
    business(api, 3)
    methods, pages = every_page(api, "/api/v1/payment-methods", 2)
    assert pages == 2
    assert [m["id"] for m in methods] == ["pm_00", "pm_01", "pm_02"]
    mine = api.get("/api/v1/payment-methods", customer_id="cus_01")
    assert [m["id"] for m in mine.json()["data"]] == ["pm_01"]

    response = api.get("/api/v1/payment-methods/pm_01")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": "pm_01",
        "customer_id": "cus_01",
        "brand": "visa",
        "last4": "4242",
        "exp_month": 12,
        "exp_year": 2030,
        "funding": "debit",
        "is_default": True,
    }
    for text in (response.text, mine.text):
        assert "tok_" not in text
        assert "gateway_token" not in text
    assert_problem(api.get("/api/v1/payment-methods/pm_nope"), 404)


# --------------------------------------------------------------------------- attempts


def test_attempts_are_listed_filtered_and_found(api: Api) -> None:
    business(api, 3)
    api.services.engine.tick(T0 + timedelta(days=2))  # one retry for each open case

    attempts, pages = every_page(api, "/api/v1/attempts", 2)
    # Billing's failed charge of each invoice, and a retry of each case still open.
    assert len(attempts) == 5
    assert pages == 3
    order = [(a["at"], a["id"]) for a in attempts]
    assert order == sorted(order, reverse=True)
    assert len({a["id"] for a in attempts}) == 5

    mine = api.get("/api/v1/attempts", case_id="case_in_02").json()["data"]
    assert [a["number"] for a in mine] == [1, 0]
    retry = mine[0]
    assert retry["trigger"] == "policy"
    assert retry["case_id"] == "case_in_02"
    assert retry["invoice_id"] == "in_02"
    assert retry["customer_id"] == "cus_02"
    assert retry["amount_minor"] == 4900
    assert retry["currency"] == "USD"
    assert retry["idempotency_key"] == "recobra:case_in_02:1"

    since = (T0 + timedelta(days=1)).isoformat()
    recent = api.get("/api/v1/attempts", since=since).json()["data"]
    assert sorted(a["case_id"] for a in recent) == ["case_in_00", "case_in_02"]
    failed_ = api.get("/api/v1/attempts", status="failed", case_id="case_in_00").json()["data"]
    assert all(a["status"] == "failed" for a in failed_)
    assert 0 in [a["number"] for a in failed_]

    one = api.get(f"/api/v1/attempts/{retry['id']}")
    assert one.status_code == 200, one.text
    assert one.json() == retry
    assert_problem(api.get("/api/v1/attempts/999999"), 404)


# --------------------------------------------------------------------------- bad input

LISTS = [
    "/api/v1/customers",
    "/api/v1/subscriptions",
    "/api/v1/invoices",
    "/api/v1/payment-methods",
    "/api/v1/attempts",
]


@pytest.mark.parametrize("url", LISTS)
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WyJ4IiwxXQ"}, "cursor"),  # base64 of ["x",1]
    ],
)
def test_bad_list_parameters_name_the_field(api: Api, url: str, params: dict[str, Any], field: str) -> None:
    body = assert_problem(api.get(url, **params), 422)
    assert field in {e["field"] for e in body["errors"]}, body


@pytest.mark.parametrize(
    ("url", "params", "field"),
    [
        ("/api/v1/subscriptions", {"status": "lost"}, "status"),
        ("/api/v1/invoices", {"status": "lost"}, "status"),
        ("/api/v1/attempts", {"status": "lost"}, "status"),
        ("/api/v1/attempts", {"since": "yesterday"}, "since"),
        ("/api/v1/attempts", {"since": "2025-03-03T12:00:00"}, "since"),  # no time zone
        ("/api/v1/customers", {"email": ""}, "email"),
        ("/api/v1/invoices", {"customer_id": ""}, "customer_id"),
        ("/api/v1/attempts", {"case_id": ""}, "case_id"),
    ],
)
def test_bad_filters_name_the_field(api: Api, url: str, params: dict[str, Any], field: str) -> None:
    body = assert_problem(api.get(url, **params), 422)
    assert field in {e["field"] for e in body["errors"]}, body


def test_a_cursor_of_one_list_is_refused_by_another(api: Api) -> None:
    business(api, 3)
    customers = api.get("/api/v1/customers", limit=1).json()
    invoices = api.get("/api/v1/invoices", limit=1).json()
    assert customers["next_cursor"]
    assert invoices["next_cursor"]
    body = assert_problem(api.get("/api/v1/payment-methods", cursor=customers["next_cursor"]), 422)
    assert [e["field"] for e in body["errors"]] == ["cursor"]
    assert_problem(api.get("/api/v1/subscriptions", cursor=invoices["next_cursor"]), 422)
    assert_problem(api.get("/api/v1/cases", cursor=invoices["next_cursor"]), 422)


def test_an_attempt_id_must_be_a_number(api: Api) -> None:
    body = assert_problem(api.get("/api/v1/attempts/abc"), 422)
    assert [e["field"] for e in body["errors"]] == ["attempt_id"]


@pytest.mark.parametrize(
    "url",
    [
        *LISTS,
        "/api/v1/customers/cus_00",
        "/api/v1/subscriptions/sub_00",
        "/api/v1/invoices/in_00",
        "/api/v1/payment-methods/pm_00",
        "/api/v1/attempts/1",
    ],
)
def test_no_or_revoked_key_is_refused(api: Api, url: str) -> None:
    business(api, 1)
    assert api.get(url).status_code == 200
    assert_problem(api.client.get(url), 401)
    assert_problem(api.client.get(url, headers={"Authorization": "Bearer rk_live_nope"}), 401)
    revoke_key(api.services.store.engine, api.key_id, api.now)
    # Once the server's short memory of verified keys has passed (test_api checks
    # that delay itself), the revoked key is refused on every route.
    api.services.keys.forget()
    assert_problem(api.get(url), 401)


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/api/v1/subscriptions/sub%00x", "subscription_id"),
        ("/api/v1/invoices/in%00x", "invoice_id"),
        ("/api/v1/payment-methods/pm%00x", "payment_method_id"),
        ("/api/v1/cases/case%00x", "case_id"),
        ("/api/v1/customers?email=a%00b", "email"),
        ("/api/v1/invoices?customer_id=cus%00x", "customer_id"),
        ("/api/v1/attempts?case_id=case%00x", "case_id"),
    ],
)
def test_nul_characters_are_refused_naming_the_field(api: Api, url: str, field: str) -> None:
    body = assert_problem(api.client.get(url, headers=api.auth), 422)
    assert [e["field"] for e in body["errors"]] == [field]


def test_a_write_off_reason_with_a_nul_character_is_refused(api: Api) -> None:
    business(api, 1)
    body = assert_problem(api.post("/api/v1/cases/case_in_00/write-off", {"reason": "a\x00b"}), 422)
    assert [e["field"] for e in body["errors"]] == ["reason"]
    assert api.db.case("case_in_00")["status"] == "open"
