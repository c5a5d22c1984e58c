"""Benchmark: event ingestion through the running HTTP service.

    python benchmarks/ingest.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/recobra_bench
    python benchmarks/ingest.py                       # a temporary SQLite file
    python benchmarks/ingest.py --batch 10            # ten events per request
    python benchmarks/ingest.py --workers 1 --concurrency 32
    python benchmarks/ingest.py --rate 1000 --events 20000   # 1,000 events/s offered

Starts ``recobra serve`` on loopback against a fresh schema (the database's Recobra
tables are dropped first: give it one of its own), creates an API key, then sends
``--events`` failed-payment events (each opens a case and queues its messages) over
``--concurrency`` keep-alive connections, checks that every event opened its case, and
prints events per second, request latency percentiles, and the share of the machine's
CPU taken by the client, the server's processes, PostgreSQL and everything else.

Without ``--rate`` each connection sends its next request as soon as the last one is
answered: the server's most, with latency measured at saturation. With ``--rate``
requests are sent on a fixed schedule whatever the server does, as independent
clients would, and each one's latency counts from when it was due: latency at a
given load, backlog included.
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
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from benchdb import fresh_database
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

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


def request_bytes(port: int, key: str, body: list[dict[str, object]]) -> bytes:
    """One complete HTTP/1.1 request (keep-alive), built before the clock starts."""
    payload = json.dumps(body if len(body) > 1 else body[0], separators=(",", ":")).encode()
    head = (
        f"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode("ascii") + payload


async def load(port: int, requests: list[bytes], concurrency: int, interval: float | None) -> list[float]:
    """``concurrency`` keep-alive connections send the requests; returns every request's
    latency in seconds.

    Without ``interval`` (a closed loop), each connection sends its next request as
    soon as the previous one is answered: the server runs flat out, and latency is
    measured at saturation. With ``interval`` (an open loop, as clients in the wild
    behave), request ``i`` is due at ``i * interval`` seconds after the start whatever
    the server does, and its latency runs from that moment, not from when a connection
    was free to send it: a server that falls behind sees its backlog counted against
    it (no "coordinated omission").

    A minimal HTTP/1.1 client on asyncio streams, so that the load takes little of the
    machine's CPU time from the server (it is measured and printed)."""
    latencies: list[float] = []
    next_index = 0
    connections = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency))
    )
    start = time.perf_counter()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal next_index
        try:
            while next_index < len(requests):
                i = next_index
                next_index += 1
                if interval is None:
                    started = time.perf_counter()
                else:
                    started = start + i * interval
                    if (wait := started - time.perf_counter()) > 0:
                        await asyncio.sleep(wait)
                writer.write(requests[i])
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                status = head[9:12]
                if status != b"200":
                    raise RuntimeError(f"HTTP {status.decode()}: {body[:300]!r}")
        finally:
            writer.close()

    await asyncio.gather(*(client(r, w) for r, w in connections))
    return latencies


# --------------------------------------------------------------------------- CPU accounting

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def cpu_snapshot(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server (with its worker processes), by every
    PostgreSQL process (all databases), by this client, and by the whole machine."""
    procs = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit() and (info := _proc_cpu(int(entry))) is not None:
            procs[int(entry)] = info
    server, frontier = 0.0, {server_pid}
    while frontier:
        server += sum(procs[p][1] for p in frontier if p in procs)
        frontier = {p for p, (ppid, _) in procs.items() if ppid in frontier}
    postgres = sum(cpu for p, (_, cpu) in procs.items() if _comm(p) == "postgres")
    machine = steal = 0.0
    if os.path.exists("/proc/stat"):
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        # All but idle, iowait and steal (time the hypervisor gave to other machines).
        steal = values[7] / TICKS if len(values) > 7 else 0.0
        machine = (sum(values[:7]) - values[3] - values[4]) / TICKS
    client = time.process_time()
    return {"server": server, "postgres": postgres, "client": client, "machine": machine, "steal": steal}


def checkpoint(url: str) -> None:
    """On PostgreSQL, write out what earlier work left in memory (dropping the last
    run's tables, say) before the clock starts, so that a checkpoint does not land in
    the middle of the load; skipped without the right to run CHECKPOINT."""
    if not url.startswith("postgresql"):
        return
    db = make_engine(url)
    try:
        with db.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("CHECKPOINT"))
    except DBAPIError as exc:
        print(f"no CHECKPOINT before the load: {exc.orig}", file=sys.stderr)
    finally:
        db.dispose()


def api_key(url: str) -> str:
    """An API key for the load."""
    db = make_engine(url)
    _, key = create_key(db, "benchmark", datetime.now(UTC))
    db.dispose()
    return key


class Server:
    """``recobra serve`` on loopback, in a session of its own (so that its server
    processes can be killed with it), its log kept as it comes."""

    def __init__(self, url: str, port: int, workers: int | None) -> None:
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "RECOBRA_DATABASE_URL": url,
            "RECOBRA_LINK_SECRET": "b" * 40,
            "RECOBRA_PUBLIC_URL": base,
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recobra.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *(["--workers", str(workers)] if workers else []),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.log: list[str] = []
        threading.Thread(target=self._read_log, daemon=True).start()
        # Every server process, not only the first: each listens on a socket of its own
        # once started, and connections opened before the last one listens would all go
        # to the others, for good.
        processes = workers or (1 if url.startswith("sqlite") else len(os.sched_getaffinity(0)))
        deadline = time.monotonic() + 60
        while sum("Application startup complete" in line for line in self.log) < processes:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("the server did not start:\n" + "".join(self.log[-30:]))
            time.sleep(0.1)
        if httpx.get(f"{base}/healthz", timeout=5).status_code != 200:
            self.stop()
            raise SystemExit("the server does not answer /healthz")

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def count_cases(url: str) -> int:
    db = make_engine(url)
    with db.connect() as conn:
        n = int(conn.execute(text("SELECT COUNT(*) FROM cases")).scalar_one())
    db.dispose()
    return n


def figures(
    args: argparse.Namespace, url: str, wall: float, latencies: list[float], cpu: dict[str, Any]
) -> dict[str, object]:
    ms = sorted(x * 1000 for x in latencies)

    def pct(q: float) -> float:
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 1)

    return {
        "database": url.split(":", 1)[0],
        "events": args.events,
        "events_per_request": args.batch,
        "concurrency": args.concurrency,
        "offered_events_per_second": args.rate or "as fast as answered",
        "server_processes": args.workers or "default",
        "wall_seconds": round(wall, 2),
        "events_per_second": round(args.events / wall, 1),
        "latency_ms": {
            "p50": pct(0.5),
            "p95": pct(0.95),
            "p99": pct(0.99),
            "max": round(ms[-1], 1),
            "mean": round(statistics.mean(ms), 1),
        },
        # Share of the machine's cores (100% = one core) each part kept busy during the load.
        "cpu_percent": {
            "client": round(100 * cpu["client"] / wall),
            "server": round(100 * cpu["server"] / wall),
            "postgresql_all_databases": round(100 * cpu["postgres"] / wall),
            "machine": round(100 * cpu["machine"] / wall),
            "other_processes": round(
                100 * (cpu["machine"] - cpu["client"] - cpu["server"] - cpu["postgres"]) / wall
            ),
            "cores": os.cpu_count(),
            # On a virtual machine: time its cores waited for the host (other machines').
            "stolen_by_hypervisor": round(100 * cpu["steal"] / wall),
        },
        "load_average_before_after": [round(x, 2) for x in cpu["load"]],
        "server_cpu_ms_per_event": round(1000 * cpu["server"] / args.events, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=1, help="events per request")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="connections (default: 8, or 32 with --rate)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="events per second offered, on a fixed schedule (an open loop); default: as fast "
        "as the server answers",
    )
    parser.add_argument("--workers", type=int, default=None, help="server processes (default: serve's)")
    args = parser.parse_args()
    if args.concurrency is None:
        args.concurrency = 8 if args.rate is None else 32
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    with fresh_database(args.database_url) as url:
        key = api_key(url)
        port = free_port()
        server = Server(url, port, args.workers)
        try:
            at = datetime.now(UTC).isoformat()
            events = [event(i, at) for i in range(args.events)]
            requests = [
                request_bytes(port, key, events[i : i + args.batch])
                for i in range(0, len(events), args.batch)
            ]
            checkpoint(url)
            load_before = os.getloadavg()[0]
            before = cpu_snapshot(server.pid)
            started = time.perf_counter()
            interval = None if args.rate is None else args.batch / args.rate
            latencies = asyncio.run(load(port, requests, args.concurrency, interval))
            wall = time.perf_counter() - started
            after = cpu_snapshot(server.pid)
        except RuntimeError:
            server.stop()
            print("".join(server.log)[-3000:], file=sys.stderr)
            raise
        finally:
            server.stop()
        cases = count_cases(url)
    if cases != args.events:
        raise SystemExit(f"{cases} cases for {args.events} events: something was lost")
    cpu: dict[str, Any] = {k: after[k] - before[k] for k in after}
    cpu["load"] = (load_before, os.getloadavg()[0])
    print(json.dumps(figures(args, url, wall, latencies, cpu), indent=2))


if __name__ == "__main__":
    main()
