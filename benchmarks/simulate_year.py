"""Benchmark: a year of a subscription business through the real engine and store.

    python benchmarks/simulate_year.py                       # 100,000 subscribers, 365 days, SQLite
    python benchmarks/simulate_year.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    python benchmarks/simulate_year.py --customers 20000 --profile

Prints invoices billed, invoices per second and wall time (and, with --profile,
the top costs). The PostgreSQL run drops and recreates Recobra's tables first.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from datetime import UTC, datetime

from benchdb import fresh_database

from recobra.sim.runner import run_simulation


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=60, help="worker polling resolution, minutes")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--profile", action="store_true", help="print the top 25 costs")
    parser.add_argument(
        "--messages", action="store_true", help="also plan, render and dispatch customer messages"
    )
    args = parser.parse_args()

    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    with fresh_database(args.database_url) as url:
        report = run_simulation(
            customers=args.customers,
            days=args.days,
            seed=args.seed,
            policy=None,
            gateway="simulated",
            gateway_settings={},
            database_url=url,
            start=datetime(2026, 1, 1, tzinfo=UTC),
            resolution_minutes=args.resolution,
            show_progress=True,
            messages=args.messages,
        )
    if profiler:
        profiler.disable()
    total = time.perf_counter() - started
    figures = {
        "database": report["settings"]["database"],
        "customers": args.customers,
        "days": args.days,
        "invoices": report["invoices"],
        "failed_invoices": report["failed_invoices"],
        "cases_opened": report["cases_opened"],
        "attempts": report["attempts"],
        "recovery_rate": report["recovery_rate"],
        "messages_sent": sum(report["messages_sent"].values()),
        "simulation_seconds": report["wall_seconds"],
        "invoices_per_second": report["invoices_per_second"],
        "total_seconds_with_setup_and_report": round(total, 2),
    }
    print(json.dumps(figures, indent=2))
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())


if __name__ == "__main__":
    main()
