"""``recobra demo`` as the README's first command runs it: the report, then the dashboard
served on the demo's data; a user signs in with the printed credentials."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
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
            overview = client.get("/admin?days=30")
            assert overview.status_code == 200
            assert "Open cases" in overview.text
            assert "<svg" in overview.text
            cases = client.get("/admin/cases")
            assert re.search(r'href="/admin/cases/case_', cases.text)  # the demo's own cases
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
