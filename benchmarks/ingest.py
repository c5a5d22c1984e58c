"""Benchmark: event ingestion through the running HTTP service.

    python benchmarks/ingest.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/recobra_bench
    python benchmarks/ingest.py                       # a temporary SQLite file
    python benchmarks/ingest.py --batch 10            # ten events per request

Starts ``recobra serve`` on loopback against a fresh schema (the database's Recobra
tables are dropped first: give it one of its own), creates an API key, then sends
``--events`` failed-payment events (each opens a case and queues its messages) from
``--concurrency`` concurrent clients, and prints events per second and request
latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
from benchdb import fresh_database

from recobra.store.keys import create_key
from recobra.store.sql import make_engine

MARKETS = [
    ("MX", "America/Mexico_City", "MXN", "es", 29900),
    ("US", "America/New_York", "USD", "en", 1900),
    ("ES", "Europe/Madrid", "EUR", "es", 1900),
    ("CO", "America/Bogota", "COP", "es", 5990000),
]


def event(i: int, at: str) -> dict[str, object]:
    country, tz, currency, locale, price = MARKETS[i % len(MARKETS)]
    return {
        "id": f"evt_bench_{i}",
        "type": "payment_failed",
        "occurred_at": at,
        "customer": {
            "id": f"cus_{i}",
            "email": f"c{i}@example.com",
            "locale": locale,
            "timezone": tz,
            "country": country,
        },
        "subscription": {
            "id": f"sub_{i}",
            "status": "active",
            "started_at": "2025-01-01T00:00:00Z",
            "plan": {
                "id": f"pro-{currency.lower()}",
                "name": "Pro",
                "interval": "month",
                "amount_minor": price,
                "currency": currency,
            },
        },
        "invoice": {"id": f"in_{i}", "amount_minor": price, "currency": currency, "created_at": at},
        "payment_method": {
            "id": f"pm_{i}",
            "gateway_token": f"tok_{i}",
            "brand": "visa",
            "last4": "4242",
            "exp_month": 12,
            "exp_year": 2030,
            "funding": "debit",
        },
        "decline": {"code": "insufficient_funds", "network_code": "51"},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def load(base: str, key: str, bodies: list[list[dict[str, object]]], concurrency: int) -> list[float]:
    latencies: list[float] = []
    queue: asyncio.Queue[list[dict[str, object]]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Authorization": f"Bearer {key}"}

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            while not queue.empty():
                body = queue.get_nowait()
                started = time.perf_counter()
                answer = await http.post("/api/v1/events", json=body if len(body) > 1 else body[0])
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:300]}")

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def api_key(url: str) -> str:
    """An API key for the load."""
    db = make_engine(url)
    _, key = create_key(db, "benchmark", datetime.now(UTC))
    db.dispose()
    return key


def start_server(url: str, port: int) -> subprocess.Popen[str]:
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "RECOBRA_DATABASE_URL": url,
        "RECOBRA_LINK_SECRET": "b" * 40,
        "RECOBRA_PUBLIC_URL": base,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "recobra.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not start")


def stop_server(server: subprocess.Popen[str]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def figures(args: argparse.Namespace, url: str, wall: float, latencies: list[float]) -> dict[str, object]:
    ms = sorted(x * 1000 for x in latencies)

    def pct(q: float) -> float:
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 1)

    return {
        "database": url.split(":", 1)[0],
        "events": args.events,
        "events_per_request": args.batch,
        "concurrency": args.concurrency,
        "wall_seconds": round(wall, 2),
        "events_per_second": round(args.events / wall, 1),
        "latency_ms": {
            "p50": pct(0.5),
            "p95": pct(0.95),
            "p99": pct(0.99),
            "max": round(ms[-1], 1),
            "mean": round(statistics.mean(ms), 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=1, help="events per request")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with fresh_database(args.database_url) as url:
        key = api_key(url)
        port = free_port()
        server = start_server(url, port)
        try:
            at = datetime.now(UTC).isoformat()
            events = [event(i, at) for i in range(args.events)]
            bodies = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]
            started = time.perf_counter()
            latencies = asyncio.run(load(f"http://127.0.0.1:{port}", key, bodies, args.concurrency))
            wall = time.perf_counter() - started
        except RuntimeError:
            server.send_signal(signal.SIGTERM)
            _, errors = server.communicate(timeout=30)
            print(errors[-3000:], file=sys.stderr)
            raise
        finally:
            stop_server(server)
    print(json.dumps(figures(args, url, wall, latencies), indent=2))


if __name__ == "__main__":
    main()
