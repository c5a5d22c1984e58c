"""A worker process for ``test_crash.py``: one ``tick`` on the test database through a
simulated gateway whose ledger is a SQLite file shared with the test, and which answers
slowly (it sleeps *after* recording the charge), so the test can kill this process
between the gateway's charge and the engine's record of it.

Usage: python crash_worker.py DATABASE_URL LEDGER_PATH POLICY_PATH NOW_ISO WORKER_ID LATENCY_S
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from recobra.domain.schedule import NoHolidays
from recobra.engine.service import Engine
from recobra.gateways.simulated import SimulatedGateway
from recobra.policyfile import parse_policy
from recobra.store.sql import SqlStore, make_engine


def main(argv: list[str]) -> int:
    url, ledger, policy_path, now_iso, worker_id, latency = argv
    now = datetime.fromisoformat(now_iso)
    policies = parse_policy(Path(policy_path).read_text(encoding="utf-8"), policy_path).policies
    store = SqlStore(make_engine(url))
    try:
        with SimulatedGateway(seed=1, ledger_path=ledger, latency_s=float(latency)) as gateway:
            engine = Engine(store, gateway, policies, NoHolidays(), worker_id=worker_id)
            print("ticking", flush=True)
            report = engine.tick(now)
            print(f"done {report}", flush=True)
    finally:
        store.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
