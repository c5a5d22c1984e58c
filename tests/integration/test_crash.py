"""A real worker process killed (SIGKILL) after the gateway charged and before the
engine recorded the answer: the next worker reconciles from the gateway's ledger and
never charges the same attempt twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import T0, TEST_POLICY, Commands, Db

from recobra.gateways.simulated import SimulatedGateway
from recobra.ports import ChargeStatus

pytestmark = pytest.mark.slow

WORKER_SCRIPT = Path(__file__).with_name("crash_worker.py")
CASE = Commands.case_id("1")
KEY = f"recobra:{CASE}:1"
DUE = T0 + timedelta(days=1)
LEASE = timedelta(minutes=5)  # the engine's default, used by the worker process
WAIT_S = 60.0  # bound on waiting for the worker to reach the gateway


def _output(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-4000:] if path.exists() else ""


def run_worker_until_charged(database_url: str, ledger: Path, tmp_path: Path) -> int:
    """Start a worker ticking at ``DUE``; SIGKILL it once the ledger holds the charge of
    ``KEY`` (the worker is then sleeping in the gateway's latency). Returns its exit code."""
    policy = tmp_path / "policy.toml"
    policy.write_text(TEST_POLICY, encoding="utf-8")
    out, err = tmp_path / "worker.out", tmp_path / "worker.err"
    args = [
        sys.executable,
        str(WORKER_SCRIPT),
        database_url,
        str(ledger),
        str(policy),
        DUE.isoformat(),
        "worker-doomed",
        "5",
    ]
    with (
        SimulatedGateway(seed=1, ledger_path=str(ledger)) as watcher,
        out.open("wb") as stdout,
        err.open("wb") as stderr,
    ):
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + WAIT_S
            while watcher.attempt_status(KEY).status is ChargeStatus.NOT_FOUND:
                if proc.poll() is not None:
                    pytest.fail(
                        f"the worker exited ({proc.returncode}) before charging:\n"
                        f"{_output(out)}\n{_output(err)}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"no charge in the ledger after {WAIT_S:.0f}s:\n{_output(out)}\n{_output(err)}"
                    )
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert "done" not in _output(out), "the worker finished before it was killed"
    return proc.returncode


@pytest.mark.parametrize(
    ("token", "status"), [("tok_sim_ok", "succeeded"), ("tok_sim_decline_do_not_honor", "failed")]
)
def test_worker_killed_after_the_gateway_charged_is_reconciled_without_a_second_charge(
    database_url: str,
    engine_factory,
    commands: Commands,
    db: Db,
    tmp_path: Path,
    token: str,
    status: str,
):
    engine_factory().handle(commands.payment_failed("1", token=token))
    ledger = tmp_path / "ledger.sqlite"

    returncode = run_worker_until_charged(database_url, ledger, tmp_path)

    assert returncode == -signal.SIGKILL
    # The killed worker's leftovers: its claim and a pending attempt.
    case = db.case(CASE)
    assert (case["claimed_by"], case["claim_expires_at"]) == ("worker-doomed", DUE + LEASE)
    (pending,) = [a for a in db.attempts(CASE) if a["number"] >= 1]
    assert (pending["idempotency_key"], pending["status"]) == (KEY, "pending")

    with SimulatedGateway(seed=1, ledger_path=str(ledger), latency_s=0) as gateway:
        (charged,) = gateway.charges()
        fresh = engine_factory(gateway=gateway, worker_id="worker-fresh")
        assert fresh.tick(DUE + LEASE - timedelta(seconds=1)).claimed == 0  # lease still running
        report = fresh.tick(DUE + LEASE + timedelta(minutes=1))
        ledger_after = gateway.charges()

    assert (report.claimed, report.reconciled, report.attempts) == (1, 1, 0)
    assert ledger_after == [charged]
    assert charged.idempotency_key == KEY
    (attempt,) = [a for a in db.attempts(CASE) if a["number"] >= 1]
    assert attempt["status"] == status
    assert attempt["gateway_reference"] == charged.result.gateway_reference
    assert attempt["code"] == charged.result.decline_code
    case = db.check_case(CASE)
    assert case["claimed_by"] is None
    assert (case["attempts"], case["budget_used"]) == (1, 1)
    if status == "succeeded":
        assert case["status"] == "recovered"
        assert db.invoice("in_1")["status"] == "paid"
    else:
        assert (case["status"], case["next_action"]) == ("open", "retry")
        assert case["next_action_at"] == T0 + timedelta(days=3)
        assert case["last_code"] == "do_not_honor"
