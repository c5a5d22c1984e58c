"""``recobra serve`` as a user runs it: a real process on a loopback port, stopped by SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

SECRET = "s" * 40
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
# The served worker ticks on the wall clock: a failure from today has nothing due yet,
# so the case is still open whenever the test looks (one from months ago would be
# retried, and could be closed, between two requests).
TODAY = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
EVENT = {
    "id": "evt_serve_1",
    "type": "payment_failed",
    "occurred_at": TODAY,
    "customer": {
        "id": "cus_1",
        "email": "ana@example.com",
        "locale": "es",
        "timezone": "America/Bogota",
        "country": "CO",
    },
    "invoice": {"id": "in_1", "amount_minor": 4900, "currency": "USD", "created_at": TODAY},
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


def recobra(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recobra.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'recobra.db'}"
    result = recobra("init", "--database-url", url)
    assert result.returncode == 0, result.stderr
    return url


class Served:
    def __init__(self, process: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.process = process
        self.base = base
        self.log = log

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def serving(database: str, tmp_path: Path, *extra: str) -> Iterator[Served]:
    """``recobra serve`` on a free loopback port, answering /healthz; killed if still up."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "RECOBRA_LINK_SECRET": SECRET, "RECOBRA_POLL_INTERVAL_S": "0.5"}
    env.pop("RECOBRA_DATABASE_URL", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recobra.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database-url",
                database,
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its server processes can be killed with it
        )
    server = Served(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert process.poll() is None, f"recobra serve exited early:\n{server.output()}"
            try:
                if httpx.get(f"{server.base}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no /healthz after {STARTUP_TIMEOUT}s:\n{server.output()}"
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def served(database: str, tmp_path: Path) -> Iterator[Served]:
    with serving(database, tmp_path, "--with-worker") as server:
        yield server


def test_serve_answers_health_and_the_api_then_stops_cleanly(database: str, served: Served) -> None:
    created = recobra("api-keys", "create", "e2e", "--database-url", database)
    assert created.returncode == 0, created.stderr
    (key,) = re.findall(r"rk_live_[A-Za-z0-9_-]{43}", created.stdout)
    auth = {"Authorization": f"Bearer {key}"}

    with httpx.Client(base_url=served.base, timeout=10.0) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"

        assert client.get("/api/v1/cases").status_code == 401
        empty = client.get("/api/v1/cases", headers=auth)
        assert empty.status_code == 200, empty.text
        assert empty.json() == {"data": [], "next_cursor": None}

        sent = client.post("/api/v1/events", json=[EVENT], headers=auth)
        assert sent.status_code == 200, sent.text
        assert sent.json()["results"][0]["case_ids"] == ["case_in_1"]
        (case,) = client.get("/api/v1/cases", headers=auth).json()["data"]
        assert case["amount_minor"] == 4900
        assert case["currency"] == "USD"

        metrics = client.get("/metrics").text
        assert 'recobra_cases{status="open"} 1.0' in metrics

    served.process.send_signal(signal.SIGTERM)
    code = served.process.wait(timeout=STOP_TIMEOUT)
    output = served.output()
    assert code == 0, output
    assert "working every" in output
    assert "Application shutdown complete" in output
    assert "server stopped" in output
    assert "Traceback" not in output


def api_key(database: str) -> dict[str, str]:
    created = recobra("api-keys", "create", "e2e", "--database-url", database)
    assert created.returncode == 0, created.stderr
    (key,) = re.findall(r"rk_live_[A-Za-z0-9_-]{43}", created.stdout)
    return {"Authorization": f"Bearer {key}"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_runs_several_processes_on_one_port_and_stops_them_all(database: str, tmp_path: Path) -> None:
    auth = api_key(database)
    with serving(database, tmp_path, "--workers", "2", "--with-worker") as served:
        invoice: dict[str, object] = EVENT["invoice"]  # type: ignore[assignment]
        events = [{**EVENT, "id": f"evt_w_{i}", "invoice": {**invoice, "id": f"in_w_{i}"}} for i in range(12)]
        with httpx.Client(base_url=served.base, timeout=30.0) as client:
            for event in events:  # a new connection each: whichever process accepts it answers
                sent = httpx.post(f"{served.base}/api/v1/events", json=event, headers=auth, timeout=30.0)
                assert sent.status_code == 200, sent.text
            cases = client.get("/api/v1/cases", params={"limit": 50}, headers=auth).json()["data"]
            assert len(cases) == 12
        pids = [int(p) for p in re.findall(r"Started server process \[(\d+)\]", served.output())]
        assert len(set(pids)) == 2, served.output()
        served.process.send_signal(signal.SIGTERM)
        code = served.process.wait(timeout=STOP_TIMEOUT)
        output = served.output()
    assert code == 0, output
    assert output.count("Application shutdown complete") == 2, output
    assert "working every" in output  # one worker thread, in the parent
    assert "server stopped" in output
    assert "Traceback" not in output
    assert not [pid for pid in pids if alive(pid)]


def test_a_second_server_on_a_port_in_use_is_refused(database: str, tmp_path: Path) -> None:
    # The processes listen on sockets of their own that share the port (SO_REUSEPORT on
    # Linux): a second server started there by mistake must not quietly share it too.
    with serving(database, tmp_path, "--workers", "2") as served:
        port = served.base.rsplit(":", 1)[1]
        second = recobra(
            *("serve", "--database-url", database, "--host", "127.0.0.1", "--port", port, "--workers", "2"),
            env={"RECOBRA_LINK_SECRET": SECRET},
        )
        assert second.returncode == 1, second.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in second.stderr
        assert "in use" in second.stderr
        assert httpx.get(f"{served.base}/healthz", timeout=5).status_code == 200
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=STOP_TIMEOUT) == 0, served.output()


def test_serve_on_sqlite_runs_one_process_by_default(database: str, tmp_path: Path) -> None:
    # SQLite has one writer at a time: more processes would only queue on its lock.
    with serving(database, tmp_path) as served:
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=STOP_TIMEOUT) == 0
    output = served.output()
    assert "Started parent process" not in output
    assert output.count("Started server process") == 1
    assert "server stopped" in output


def test_serve_refuses_to_start_without_a_link_secret(database: str) -> None:
    result = recobra("serve", "--database-url", database, env={"RECOBRA_LINK_SECRET": ""})
    assert result.returncode == 2
    assert "RECOBRA_LINK_SECRET" in result.stderr


def test_serve_refuses_an_uninitialised_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = recobra("serve", "--database-url", url, env={"RECOBRA_LINK_SECRET": SECRET})
    assert result.returncode == 2
    assert "recobra init" in result.stderr
