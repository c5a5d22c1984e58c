"""End to end through the ``recobra`` command, as a user runs it (real subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

GOOD_EVENT = {
    "id": "evt_1",
    "type": "payment_failed",
    "occurred_at": "2026-03-02T15:00:00Z",
    "customer": {
        "id": "cus_1",
        "email": "ana@example.com",
        "locale": "es",
        "timezone": "America/Bogota",
        "country": "CO",
    },
    "invoice": {"id": "in_1", "amount_minor": 4900, "currency": "USD", "created_at": "2026-03-02T15:00:00Z"},
    "payment_method": {
        "id": "pm_1",
        "gateway_token": "tok_sim_decline_insufficient_funds",
        "brand": "visa",
        "last4": "4242",
        "exp_month": 12,
        "exp_year": 2030,
        "funding": "debit",
    },
    "decline": {"code": "insufficient_funds", "network_code": "51"},
}


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recobra.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
        check=False,
    )


def count(url: str, table: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(text(f"select count(*) from {table}")) or 0)
    finally:
        engine.dispose()


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'recobra.db'}"
    result = run("init", "--database-url", url)
    assert result.returncode == 0, result.stderr
    assert "schema revision" in result.stdout
    return url


def test_init_is_idempotent(db: str) -> None:
    again = run("init", "--database-url", db)
    assert again.returncode == 0, again.stderr


def test_policy_check_accepts_the_default_and_names_bad_fields(tmp_path: Path) -> None:
    default = Path(__file__).parents[2] / "recobra" / "policies" / "default.toml"
    ok = run("policy", "check", str(default))
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(
        default.read_text()
        .replace('{ after = "3d" }', '{ after = "3 days" }')
        .replace('final_action = "cancel"', 'final_action = "delete"')
    )
    result = run("policy", "check", str(bad))
    assert result.returncode == 1
    assert "policies.standard.final_action" in result.stderr
    assert "policies.standard.steps[1].after" in result.stderr or "steps" in result.stderr
    offers = tmp_path / "offers.toml"
    offers.write_text(
        default.read_text()
        .replace("months = 2 }", "months = 5 }")
        .replace("percent = 25, cycles = 3", "percent = 25")
    )
    result = run("policy", "check", str(offers))
    assert result.returncode == 1
    assert "save_offers.not_using.months: a pause lasts 1 to 3 months, got 5" in result.stderr
    assert "save_offers.too_expensive: a discount offer needs 'cycles'" in result.stderr
    missing = run("policy", "check", str(tmp_path / "nope.toml"))
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr


def test_events_ingest_applies_all_or_nothing(db: str, tmp_path: Path) -> None:
    bad_batch = [
        GOOD_EVENT,
        {
            **GOOD_EVENT,
            "id": "evt_2",
            "invoice": {
                "id": "in_2",
                "amount_minor": -5,
                "currency": "USD",
                "created_at": "2026-03-02T15:00:00Z",
            },
        },
        {
            **GOOD_EVENT,
            "id": "evt_3",
            "invoice": {
                "id": "in_3",
                "amount_minor": 100,
                "currency": "XYZ",
                "created_at": "2026-03-02T15:00:00Z",
            },
        },
    ]
    path = tmp_path / "events.json"
    path.write_text(json.dumps(bad_batch))
    result = run("events", "ingest", str(path), "--database-url", db)
    assert result.returncode == 1
    assert "events[1].invoice.amount_minor" in result.stderr
    assert "events[2].invoice.currency" in result.stderr
    assert "nothing was written" in result.stderr
    assert count(db, "cases") == 0
    assert count(db, "processed_events") == 0

    path.write_text(json.dumps([GOOD_EVENT, GOOD_EVENT]))
    result = run("events", "ingest", str(path), "--database-url", db)
    assert result.returncode == 0, result.stderr
    assert "applied 1 event(s); 1 duplicate(s) ignored" in result.stdout
    assert count(db, "cases") == 1

    shown = run("cases", "show", "case_in_1", "--database-url", db)
    assert shown.returncode == 0, shown.stderr
    assert "insufficient_funds" in shown.stdout
    assert "America/Bogota" in shown.stdout  # the retry's reason names the customer's zone


def test_malformed_json_is_rejected_with_its_position(db: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(GOOD_EVENT) + "\n{not json\n")
    result = run("events", "ingest", str(path), "--database-url", db)
    assert result.returncode == 1
    assert "line 2" in result.stderr
    assert count(db, "cases") == 0


def test_commands_refuse_an_uninitialised_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = run("tick", "--database-url", url)
    assert result.returncode == 2
    assert "recobra init" in result.stderr


def test_unknown_gateway_is_a_clear_error(db: str) -> None:
    for spec, words in (("nosuchgateway", "nosuchgateway"), ("nosuch.module:factory", "nosuch.module")):
        result = run("tick", "--database-url", db, "--gateway", spec)
        assert result.returncode == 2, result.stdout
        assert words in result.stderr


def test_tick_acts_on_due_cases_at_the_given_time(db: str, tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    path.write_text(json.dumps(GOOD_EVENT))
    assert run("events", "ingest", str(path), "--database-url", db).returncode == 0
    early = run("tick", "--database-url", db, "--now", "2026-03-02T16:00:00Z")
    assert early.returncode == 0, early.stderr
    assert json.loads(early.stdout)["attempts"] == 0
    later = run("tick", "--database-url", db, "--now", "2026-03-20T16:00:00Z")
    assert later.returncode == 0, later.stderr
    assert json.loads(later.stdout)["attempts"] == 1
    naive = run("tick", "--database-url", db, "--now", "2026-03-20T16:00:00")
    assert naive.returncode == 2
    assert "time zone" in naive.stderr


def test_simulate_json_report(tmp_path: Path) -> None:
    result = run("simulate", "--customers", "300", "--days", "45", "--seed", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in (
        "invoices",
        "failed_invoices",
        "recovered_invoices",
        "recovery_rate",
        "recovered_amount_minor",
        "attempts",
        "network_rule_adjustments",
    ):
        assert key in report
    assert report["invoices"] > 200
    assert 0 < report["failed_invoices"] < report["invoices"]
    assert report["cases_opened"] == report["failed_invoices"]
    assert 0 < report["recovery_rate"] <= 1
    assert all(isinstance(v, int) for v in report["recovered_amount_minor"].values())
    again = run("simulate", "--customers", "300", "--days", "45", "--seed", "3", "--json")
    second = json.loads(again.stdout)
    for key in ("invoices", "failed_invoices", "recovered_invoices", "attempts"):
        assert second[key] == report[key], "a seeded simulation is reproducible"


def test_simulate_rejects_bad_policy_and_parameters(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text("name = 1\n")
    result = run("simulate", "--customers", "10", "--days", "5", "--policy", str(bad))
    assert result.returncode == 2
    assert "name" in result.stderr
    zero = run("simulate", "--customers", "0")
    assert zero.returncode != 0


def test_demo_runs_and_prints_the_report(tmp_path: Path) -> None:
    result = run(
        "demo",
        "--dir",
        str(tmp_path / "demo"),
        "--customers",
        "300",
        "--days",
        "40",
        "--no-serve",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Simulation report" in result.stdout
    assert "recovery rate" in result.stdout
    assert "What to try next" in result.stdout
    assert (tmp_path / "demo" / "recobra.db").exists()


@pytest.mark.slow
def test_worker_stops_cleanly_on_sigterm(db: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "recobra.cli", "worker", "--database-url", db, "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RECOBRA_LINK_SECRET": "s" * 40},
    )
    try:
        deadline = time.monotonic() + 30
        assert proc.stderr is not None
        line = ""
        while time.monotonic() < deadline and "polling" not in line:
            line = proc.stderr.readline()
        assert "polling" in line
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    assert code == 0
    assert "SIGTERM" in rest
    assert "worker stopped" in rest


def test_an_operator_writes_off_a_case_once(db: str, tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    path.write_text(json.dumps(GOOD_EVENT))
    assert run("events", "ingest", str(path), "--database-url", db).returncode == 0
    done = run(
        "cases",
        "write-off",
        "case_in_1",
        "--reason",
        "customer in bankruptcy",
        "--operator",
        "ana",
        "--database-url",
        db,
    )
    assert done.returncode == 0, done.stderr
    shown = run("cases", "show", "case_in_1", "--database-url", db)
    assert "written_off" in shown.stdout
    assert "customer in bankruptcy" in shown.stdout
    again = run("cases", "write-off", "case_in_1", "--reason", "twice", "--database-url", db)
    assert again.returncode == 1
    assert "cannot go from written_off" in again.stderr
    unknown = run("cases", "write-off", "case_nope", "--reason", "x", "--database-url", db)
    assert unknown.returncode == 1
    assert "no case" in unknown.stderr


def test_the_worker_refuses_to_send_messages_without_a_link_secret(db: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RECOBRA_LINK_SECRET"}
    result = subprocess.run(
        [sys.executable, "-m", "recobra.cli", "worker", "--database-url", db],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "RECOBRA_LINK_SECRET" in result.stderr
    assert "--no-messages" in result.stderr


def test_messages_preview_renders_spanish_email_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "p.html"
    result = run(
        "messages", "preview", "payment_failed", "--locale", "es", "--channel", "email", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "No pudimos" in result.stdout or "pago" in result.stdout
    html = out.read_text()
    assert 'lang="es' in html
    assert "<style" not in html  # CSS is inlined
    bad = run("messages", "preview", "no_such_kind")
    assert bad.returncode == 1
    assert "unknown message kind" in bad.stderr


def test_policy_check_reports_a_template_with_an_unknown_variable(tmp_path: Path) -> None:
    default = Path(__file__).parents[2] / "recobra" / "policies" / "default.toml"
    templates = tmp_path / "templates" / "en"
    templates.mkdir(parents=True)
    (templates / "payment_failed.sms.j2").write_text("Pay now {{ no_such_variable }}")
    result = run("policy", "check", str(default), "--templates", str(tmp_path / "templates"))
    assert result.returncode == 1
    assert "no_such_variable" in result.stderr


def test_an_activated_policy_version_is_used_by_the_next_command(db: str, tmp_path: Path) -> None:
    default = Path(__file__).parents[2] / "recobra" / "policies" / "default.toml"
    fewer = default.read_text(encoding="utf-8").replace('name = "default"', 'name = "fewer"', 1)
    path = tmp_path / "fewer.toml"
    path.write_text(fewer, encoding="utf-8")
    events = tmp_path / "events.json"
    events.write_text(json.dumps(GOOD_EVENT))
    assert run("events", "ingest", str(events), "--database-url", db).returncode == 0

    activated = run("policy", "activate", str(path), "--comment", "fewer retries", "--database-url", db)

    assert activated.returncode == 0, activated.stderr
    assert "stored as version 2" in " ".join(activated.stdout.split())
    history = run("policy", "history", "--database-url", db)
    assert history.returncode == 0, history.stderr
    assert "fewer retries" in history.stdout
    second = {**GOOD_EVENT, "id": "evt_2", "invoice": {**GOOD_EVENT["invoice"], "id": "in_2"}}
    events.write_text(json.dumps(second))
    assert run("events", "ingest", str(events), "--database-url", db).returncode == 0
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            versions = dict(conn.execute(text("select id, policy_version from cases")).all())
    finally:
        engine.dispose()
    assert versions == {"case_in_1": 1, "case_in_2": 2}
