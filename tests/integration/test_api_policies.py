"""Policy versions through the API and the command line, on both backends: validating
a file (every problem by field, as ``recobra policy check`` reports them), storing,
the history, activating, and what the engines do with an activated version."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import T0, TEST_POLICY, Commands, Db
from sqlalchemy import text
from test_api import Api, assert_problem, failed, running_api
from typer.testing import CliRunner

from recobra import cli as cli_module
from recobra.cli import app as cli
from recobra.domain.schedule import NoHolidays
from recobra.engine.service import Engine
from recobra.gateways.simulated import SimulatedGateway
from recobra.messages.composer import Sender, TemplateComposer
from recobra.messages.links import LinkSigner
from recobra.messages.render import Renderer
from recobra.policyfile import PolicyError, parse_policy
from recobra.policyversions import PolicyLibrary
from recobra.store.sql import SqlStore

# Version 2 of the test policy: retries on days 2, 4 and 8 instead of 1, 3 and 6.
V2 = TEST_POLICY.replace(
    '{ after = "1d" }, { after = "3d" }, { after = "6d" }',
    ('{ after = "2d" }, { after = "4d" }, { after = "8d" }'),
).replace('name = "integration"', 'name = "integration-v2"')
V3 = V2.replace("grace_days = 2", "grace_days = 3")

BAD = (
    TEST_POLICY.replace('{ after = "3d" }', '{ after = "xx" }').replace(
        'default_policy = "standard"', 'default_policy = "gentle"'
    )
    + 'surprise = "yes"\n'
)


def library_on(store: SqlStore, *, max_age: float = 0.0) -> PolicyLibrary:
    return PolicyLibrary(
        store.engine, parse_policy(TEST_POLICY, "<test policy>"), fallback_name="test", max_age=max_age
    )


def engine_on(store: SqlStore, gateway: SimulatedGateway, library: PolicyLibrary, worker: str) -> Engine:
    return Engine(store, gateway, library.active(), NoHolidays(), worker_id=worker, policy_source=library)


@pytest.fixture
def api(store: SqlStore, gateway: SimulatedGateway, db: Db, database_url: str) -> Iterator[Api]:
    library = library_on(store, max_age=60.0)  # the API's own changes invalidate it
    engine = engine_on(store, gateway, library, "api")
    with running_api(store, engine, db, database_url, library=library) as running:
        yield running


def problems_of(text: str) -> list[dict[str, str]]:
    try:
        parse_policy(text, "x")
    except PolicyError as exc:
        return [{"field": f, "reason": r} for f, r in exc.problems]
    raise AssertionError("the policy is valid")


# --------------------------------------------------------------------------- validate


def test_a_valid_file_is_summarised_and_nothing_is_stored(api: Api) -> None:
    response = api.post("/api/v1/policies/validate", {"source": V2})

    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["name"] == "integration-v2"
    assert summary["file_version"] == 1
    assert summary["default_policy"] == "standard"
    (standard,) = summary["policies"]
    assert standard == {
        "name": "standard",
        "strategy": "fixed",
        "retries_after": ["2d", "4d", "8d"],
        "max_attempts": 3,
        "max_days": 10,
        "grace_days": 2,
        "final_action": "cancel",
        "min_interval": "1h",
    }
    assert len(summary["sha256"]) == 64
    assert api.db.count("policy_versions") == 0


def test_an_invalid_file_lists_every_problem_as_policy_check_does(api: Api, tmp_path: Path) -> None:
    response = api.post("/api/v1/policies/validate", {"source": BAD})

    body = assert_problem(response, 422)
    assert body["title"] == "Invalid policy"
    fields = [e["field"] for e in body["errors"]]
    assert "policies.standard.steps[1].after" in fields
    assert "policies.standard.surprise" in fields
    assert all(e["reason"] for e in body["errors"])
    assert body["errors"] == problems_of(BAD)
    # The command line reports the very same fields and reasons.
    file = tmp_path / "bad.toml"
    file.write_text(BAD, encoding="utf-8")
    result = CliRunner().invoke(cli, ["policy", "check", str(file)], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    for error in body["errors"]:
        assert f"{error['field']}: {error['reason']}" in " ".join(result.output.split())


def test_domain_problems_name_their_field_too(api: Api) -> None:
    unknown_default = TEST_POLICY.replace('default_policy = "standard"', 'default_policy = "gentle"')
    body = assert_problem(api.post("/api/v1/policies/validate", {"source": unknown_default}), 422)
    assert [e["field"] for e in body["errors"]] == ["default_policy"]
    not_toml = assert_problem(api.post("/api/v1/policies/validate", {"source": "name = "}), 422)
    assert [e["field"] for e in not_toml["errors"]] == ["(file)"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "source"),
        ({"source": ""}, "source"),
        ({"source": 3}, "source"),
        ({"source": TEST_POLICY, "extra": 1}, "extra"),
        (["not", "an", "object"], ""),
    ],
)
def test_a_bad_body_names_the_field(api: Api, body: Any, field: str) -> None:
    problem = assert_problem(api.post("/api/v1/policies/validate", body), 422)
    assert field in {e["field"] for e in problem["errors"]}, problem


def test_a_text_body_is_refused_with_a_problem(api: Api) -> None:
    response = api.client.post(
        "/api/v1/policies/validate", content=TEST_POLICY, headers={**api.auth, "Content-Type": "text/plain"}
    )
    assert_problem(response, 422)


# --------------------------------------------------------------------------- store and history


def test_before_anything_is_stored_the_configured_file_is_active(api: Api) -> None:
    active = api.get("/api/v1/policies/active").json()
    assert active["stored"] is False
    assert active["active"] is True
    assert active["version"] == 1
    assert active["name"] == "integration"
    assert active["source"] == TEST_POLICY
    assert active["created_at"] is None
    assert api.get("/api/v1/policies").json() == {"data": [], "next_cursor": None}
    assert_problem(api.get("/api/v1/policies/1"), 404)
    assert_problem(api.post("/api/v1/policies/1/activate"), 404)


def test_storing_records_the_configured_file_first_then_the_new_version(api: Api) -> None:
    response = api.post("/api/v1/policies", {"source": V2, "comment": "later retries"})

    assert response.status_code == 201, response.text
    v2 = response.json()
    assert v2["version"] == 2
    assert v2["active"] is False
    assert v2["stored"] is True
    assert v2["comment"] == "later retries"
    assert "test-suite" in v2["created_by"]
    assert v2["source"] == V2
    assert v2["summary"]["policies"][0]["retries_after"] == ["2d", "4d", "8d"]
    history = api.get("/api/v1/policies").json()["data"]
    assert [(v["version"], v["active"]) for v in history] == [(2, False), (1, True)]
    assert history[1]["created_by"] == "settings"
    assert history[1]["name"] == "integration"
    assert "source" not in history[0]
    assert api.get("/api/v1/policies/active").json()["version"] == 1
    assert api.get("/api/v1/policies/1").json()["source"] == TEST_POLICY

    # The same file again is that version, not a new one.
    again = api.post("/api/v1/policies", {"source": V2, "comment": "again"})
    assert again.status_code == 200, again.text
    assert again.json()["version"] == 2
    assert again.json()["comment"] == "later retries"
    assert api.db.count("policy_versions") == 2


def test_an_invalid_file_stores_nothing(api: Api) -> None:
    body = assert_problem(api.post("/api/v1/policies", {"source": BAD, "activate": True}), 422)
    assert body["errors"] == problems_of(BAD)
    assert "nothing was stored" in body["detail"]
    assert api.db.count("policy_versions") == 0
    assert_problem(api.post("/api/v1/policies", {"source": V2, "activate": "yes"}), 422)
    assert_problem(api.post("/api/v1/policies", {"source": V2, "comment": "x" * 2001}), 422)
    nul = assert_problem(api.post("/api/v1/policies", {"source": V2, "comment": "a\x00b"}), 422)
    assert [e["field"] for e in nul["errors"]] == ["comment"]
    in_file = assert_problem(api.post("/api/v1/policies", {"source": V2 + "# \x00\n"}), 422)
    assert [e["field"] for e in in_file["errors"]] == ["(file)"]
    assert api.db.count("policy_versions") == 0


def test_the_history_is_paginated_newest_first(api: Api) -> None:
    for days in range(3, 8):
        text = TEST_POLICY.replace("grace_days = 2", f"grace_days = {days}")
        assert api.post("/api/v1/policies", {"source": text}).status_code == 201
    seen: list[int] = []
    cursor = None
    while True:
        page = api.get("/api/v1/policies", limit=4, **({"cursor": cursor} if cursor else {})).json()
        seen.extend(v["version"] for v in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [6, 5, 4, 3, 2, 1]
    body = assert_problem(api.get("/api/v1/policies", cursor="WyJ4IiwxXQ"), 422)
    assert [e["field"] for e in body["errors"]] == ["cursor"]
    assert_problem(api.get("/api/v1/policies", limit=0), 422)
    assert_problem(api.get("/api/v1/policies/abc"), 422)
    assert_problem(api.get("/api/v1/policies/0"), 422)


# --------------------------------------------------------------------------- activation


def test_activation_changes_what_new_cases_open_under(
    api: Api, store: SqlStore, gateway: SimulatedGateway
) -> None:
    # A worker in another process: its own engine and library, never restarted.
    worker = engine_on(store, gateway, library_on(store), "worker")
    assert api.post("/api/v1/events", [failed("old")]).status_code == 200
    v2 = api.post("/api/v1/policies", {"source": V2}).json()["version"]

    response = api.post(f"/api/v1/policies/{v2}/activate")

    assert response.status_code == 200, response.text
    assert response.json()["active"] is True
    assert response.json()["activated_at"] is not None
    assert api.get("/api/v1/policies/active").json()["version"] == v2
    assert api.post("/api/v1/events", [failed("new", at=T0 + timedelta(hours=1))]).status_code == 200
    old, new = api.db.case("case_in_old"), api.db.case("case_in_new")
    assert (old["policy_version"], new["policy_version"]) == (1, v2)
    assert old["next_action_at"] == T0 + timedelta(days=1)  # v1: day 1
    assert new["next_action_at"] == T0 + timedelta(hours=1, days=2)  # v2: day 2
    opened = api.db.events("case_in_new")[0]
    assert f"v{v2}" in opened["reason"]

    # The worker retries the old case on v1's timeline: day 3 next, not v2's day 4.
    worker.tick(T0 + timedelta(days=1, minutes=1))
    assert api.db.case("case_in_old")["next_action_at"] == T0 + timedelta(days=3)
    assert api.db.case("case_in_old")["policy_version"] == 1
    # And a case the worker's engine opens now uses v2 (it checks at each batch).
    worker.handle_many([])
    assert worker.policies.version == v2


def test_cases_opened_by_the_command_line_follow_an_activation(
    api: Api, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_module.console, "width", 250)
    monkeypatch.setattr(cli_module.err, "width", 250)
    file = tmp_path / "v2.toml"
    file.write_text(V2, encoding="utf-8")
    base = tmp_path / "base.toml"
    base.write_text(TEST_POLICY, encoding="utf-8")
    runner = CliRunner()
    args = ["--database-url", database_url, "--policy", str(base)]

    result = runner.invoke(cli, ["policy", "activate", str(file), "--comment", "from the CLI", *args])

    assert result.exit_code == 0, result.output
    assert "stored as version 2" in result.output
    history = runner.invoke(cli, ["policy", "history", "--database-url", database_url])
    assert history.exit_code == 0, history.output
    assert "from the CLI" in history.output
    assert "active" in history.output
    # The API's engine (a running service) picks it up at its next batch.
    api.services.policies().invalidate()
    assert api.get("/api/v1/policies/active").json()["version"] == 2
    assert api.post("/api/v1/events", [failed("cli")]).status_code == 200
    assert api.db.case("case_in_cli")["policy_version"] == 2
    # The same file again is the same version; a bad file is refused, nothing stored.
    again = runner.invoke(cli, ["policy", "activate", str(file), *args])
    assert again.exit_code == 0, again.output
    assert "already stored as version 2" in again.output
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD, encoding="utf-8")
    refused = runner.invoke(cli, ["policy", "activate", str(bad), *args])
    assert refused.exit_code == 1
    assert "policies.standard.steps[1].after" in refused.output
    assert api.db.count("policy_versions") == 2


def test_an_older_version_can_be_activated_again(api: Api) -> None:
    api.post("/api/v1/policies", {"source": V2, "activate": True})
    api.post("/api/v1/policies", {"source": V3, "activate": True})
    assert api.get("/api/v1/policies/active").json()["version"] == 3

    back = api.post("/api/v1/policies/1/activate")

    assert back.status_code == 200, back.text
    assert api.get("/api/v1/policies/active").json()["version"] == 1
    rows = {r["version"]: r for r in api.db.rows("policy_versions")}
    assert rows[1]["activated_at"] > rows[3]["activated_at"] > rows[2]["activated_at"]
    # Activating the active version changes nothing.
    same = api.post("/api/v1/policies/1/activate").json()
    assert same["activated_at"] == back.json()["activated_at"]
    assert api.services.engine.handle_many([]) == []
    assert api.services.engine.policies.version == 1


def test_activation_time_moves_forward_even_when_a_clock_lags(api: Api) -> None:
    api.post("/api/v1/policies", {"source": V2, "activate": True})
    api.now -= timedelta(hours=2)  # this server's clock is behind the one that activated v2
    api.post("/api/v1/policies", {"source": V3})
    assert api.post("/api/v1/policies/3/activate").status_code == 200
    assert api.get("/api/v1/policies/active").json()["version"] == 3


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/api/v1/policies"),
        ("get", "/api/v1/policies/active"),
        ("get", "/api/v1/policies/1"),
        ("post", "/api/v1/policies/validate"),
        ("post", "/api/v1/policies"),
        ("post", "/api/v1/policies/1/activate"),
    ],
)
def test_policy_routes_need_a_key(api: Api, method: str, url: str) -> None:
    response = api.client.request(method, url, json={"source": V2, "activate": True})
    assert_problem(response, 401)
    assert api.db.count("policy_versions") == 0


# --------------------------------------------------------------------------- the library's cache


def test_engines_check_the_active_version_at_most_every_max_age(store: SqlStore) -> None:
    clock = [0.0]
    library = PolicyLibrary(
        store.engine, parse_policy(TEST_POLICY, "<t>"), max_age=1.0, monotonic=lambda: clock[0]
    )
    other = library_on(store)
    assert library.active().version == 1
    other.store(V2, T0, created_by="test", activate=True)
    assert library.active().version == 1  # cached
    clock[0] = 1.5
    assert library.active().version == 2
    assert library.active().name == "integration"[:0] + "integration-v2"
    assert library.version(1) is not None
    assert library.version(1).name == "integration"  # type: ignore[union-attr]
    assert library.version(99) is None


def test_versions_stored_at_once_get_distinct_numbers(store_factory: Any) -> None:
    texts = [TEST_POLICY.replace("grace_days = 2", f"grace_days = {d}") for d in range(3, 9)]
    libraries = [library_on(store_factory()) for _ in texts]
    results: list[int] = []
    errors: list[BaseException] = []

    def store_one(library: PolicyLibrary, text: str) -> None:
        try:
            checked, created = library.store(text, T0, created_by="thread", activate=True)
            assert created
            results.append(checked.version.version)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=store_one, args=pair) for pair in zip(libraries, texts, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(results) == [2, 3, 4, 5, 6, 7]
    active = libraries[0].current()
    assert active is not None
    assert active.version == max(results)  # each stored and activated under one lock
    stamps = [v.activated_at for v in libraries[0].history(limit=10)]
    assert len(set(stamps)) == len(stamps)


def test_a_stored_file_this_version_no_longer_accepts_is_shown_but_never_activated(api: Api) -> None:
    assert api.post("/api/v1/policies", {"source": V2}).status_code == 201
    with api.db.store.engine.begin() as conn:  # as if a later Recobra dropped a key it used
        conn.execute(text("UPDATE policy_versions SET source = 'name = 3' WHERE version IN (1, 2)"))

    refused = assert_problem(api.post("/api/v1/policies/2/activate"), 422)

    assert refused["errors"]
    assert "nothing was activated" in refused["detail"]
    shown = api.get("/api/v1/policies/2").json()
    assert shown["summary"] is None
    assert shown["name"] is None
    active = api.get("/api/v1/policies/active")
    assert active.status_code == 200, active.text
    assert active.json()["version"] == 1
    assert active.json()["summary"] is None
    # Engines carry on with the configured policy rather than stop.
    assert api.post("/api/v1/events", [failed("after")]).status_code == 200
    assert api.db.case("case_in_after")["policy_version"] == 1


def test_messages_of_an_open_case_follow_its_version_and_the_active_benefits(
    store: SqlStore, gateway: SimulatedGateway, db: Db
) -> None:
    step = '{ action = "message", kind = "final_notice", channels = ["email"], before_final = "1d" }'
    v1 = TEST_POLICY.replace('{ after = "6d" }]', '{ after = "6d" }, ' + step + "]")
    v2 = v1.replace("grace_days = 2", "grace_days = 5") + '\n[benefits]\n"*" = { en = ["Reports"] }\n'
    library = PolicyLibrary(store.engine, parse_policy(v1, "<v1>"), max_age=0.0)
    engine = engine_on(store, gateway, library, "engine")
    engine.handle(Commands().payment_failed("1"))
    library.store(v2, T0, created_by="test", activate=True)
    (message,) = db.rows("messages", kind="final_notice")
    composer = TemplateComposer(
        Renderer(),
        LinkSigner("x" * 40, "https://pay.example.com"),
        library.active(),
        Sender("Acme", "help@example.com"),
        source=library,
    )
    with store.unit_of_work() as uow:
        (bundle,) = uow.load_messages([message["id"]], T0)

    context = composer.context(bundle, T0)

    assert context.final_action_at == T0 + timedelta(days=10 + 2)  # v1: 10-day window, 2 days' grace
    assert context.benefits == ("Reports",)  # what the customer would lose: the active version's words
