"""``recobra demo`` as the README's first command runs it: the report, then the dashboard
served on the demo's data; a user signs in with the printed credentials."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _worker_decisions(database: Path, case_id: str) -> list[tuple[str, str]]:
    """The resent reminders of ``case_id`` that a worker has sent or held (with its reason)."""
    with closing(sqlite3.connect(database, timeout=10)) as db:
        rows = db.execute(
            "SELECT status, reason FROM messages WHERE case_id = ? AND key LIKE ? "
            "AND (status = 'sent' OR reason <> '')",
            (case_id, f"{case_id}:resend@%"),
        ).fetchall()
    return [(str(status), str(reason)) for status, reason in rows]


def _sign_in(client: httpx.Client, password: str, deadline: float) -> None:
    while True:  # the server may still be binding
        try:
            form = client.get("/admin/login")
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline, "the dashboard never answered"
            time.sleep(0.2)
    token = CSRF.search(form.text)
    assert token
    login = client.post(
        "/admin/login",
        data={"email": "demo@example.com", "password": password, "csrf_token": token.group(1)},
    )
    assert login.status_code == 200, login.text


def _resend_and_wait(client: httpx.Client, case_id: str, database: Path, deadline: float) -> None:
    """An operator's action reaches the worker running beside the dashboard: it sends
    the reminder, or holds it under the customer's caps and says why."""
    page = client.get(f"/admin/cases/{case_id}")
    token = CSRF.search(page.text)
    assert token
    resent = client.post(f"/admin/cases/{case_id}/resend-link", data={"csrf_token": token.group(1)})
    assert resent.status_code == 200, resent.text
    while not (decided := _worker_decisions(database, case_id)):
        assert time.monotonic() < deadline, "the worker never took up the operator's reminder"
        time.sleep(0.5)
    assert all(status == "sent" or reason for status, reason in decided), decided


def test_demo_serves_the_dashboard_on_its_data(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "demo.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recobra.cli",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--customers",
            "200",
            "--days",
            "40",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        password = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and password is None:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.match(r"Sign in as demo@example\.com with the password (\S+)", line)
            password = found.group(1) if found else None
        output = "".join(lines)
        assert password, output + (tmp_path / "demo.log").read_text()
        assert "Simulation report" in output
        assert f"Dashboard: http://127.0.0.1:{port}/admin" in output

        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30, follow_redirects=True) as client:
            _sign_in(client, password, deadline)
            overview = client.get("/admin?days=30")
            assert overview.status_code == 200
            assert "Open cases" in overview.text
            assert "<svg" in overview.text
            cases = client.get("/admin/cases?status=open")
            found = re.search(r'href="/admin/cases/(case_[^"?]+)"', cases.text)  # the demo's own cases
            assert found, cases.text
            case_id = found.group(1)
            _resend_and_wait(client, case_id, tmp_path / "demo" / "recobra.db", deadline + 60)
        with httpx.Client(base_url=base, timeout=30) as stranger:
            assert stranger.get("/admin").status_code == 303  # no session, no dashboard

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


def test_a_taken_port_is_named_before_the_simulation(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "recobra.cli",
                "demo",
                "--dir",
                str(tmp_path / "demo"),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert not (tmp_path / "demo").exists()
