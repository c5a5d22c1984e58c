"""Run a simulation end to end: database, gateway, policy, engine, business, report.

Shared by ``recobra simulate``, ``recobra demo`` and ``benchmarks/simulate_year.py``.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select

from recobra.bootstrap import build_engine, build_messenger, load_policies, open_store
from recobra.channels.file import FileChannel
from recobra.channels.in_app import InAppChannel
from recobra.domain.errors import DomainError
from recobra.domain.messages import ChannelKind
from recobra.gateways.loader import GatewayLoadError, load_gateway
from recobra.policyfile import PolicyError
from recobra.ports import DeliveryResult, DeliveryStatus, OutgoingMessage
from recobra.settings import Settings
from recobra.sim.business import Business, ObservedGateway
from recobra.sim.report import build_report
from recobra.store.migrate import upgrade
from recobra.store.sql import make_engine
from recobra.store.tables import CaseRow


class _Discard:
    """Accepts every message and keeps nothing: for simulations that only count them
    (the outbox still records each one)."""

    kind = "discard"

    def send(self, message: OutgoingMessage) -> DeliveryResult:
        return DeliveryResult(DeliveryStatus.SENT, provider_id=message.key)


class SimulationError(ValueError):
    """The simulation cannot start: bad policy, gateway, database or parameters."""


def run_simulation(
    *,
    customers: int,
    days: int,
    seed: int,
    policy: Path | None,
    gateway: str,
    gateway_settings: dict[str, str],
    database_url: str,
    start: datetime,
    resolution_minutes: int,
    show_progress: bool,
    progress_console: Console | None = None,
    messages_dir: Path | None = None,
    messages: bool = True,
) -> dict[str, Any]:
    """Simulate into an empty database and return the report as a dict."""
    if gateway == "simulated":
        gateway_settings = {"seed": str(seed), **gateway_settings}
    settings = Settings(
        database_url=database_url,
        gateway=gateway,
        gateway_settings=gateway_settings,
        policy_file=str(policy) if policy else None,
    )
    try:
        policies = load_policies(settings)
        inner = load_gateway(settings.gateway, settings.gateway_settings)
    except (PolicyError, GatewayLoadError) as exc:
        raise SimulationError(str(exc)) from None
    db = make_engine(database_url)
    try:
        upgrade(db)
    finally:
        db.dispose()
    store = open_store(database_url)
    try:
        with store.engine.connect() as conn:
            if conn.scalar(select(func.count()).select_from(CaseRow)):
                raise SimulationError(f"{database_url} already holds cases: simulate into an empty database")
        observed = ObservedGateway(inner)
        engine = build_engine(settings, store=store, gateway=observed, policies=policies)
        messenger = None
        if messages:
            # The simulation's messages go to files (or nowhere but the outbox when no
            # folder is given); its links are signed with a key made for this run.
            sink = FileChannel(messages_dir) if messages_dir else _Discard()
            channels = {kind: sink for kind in ChannelKind if kind is not ChannelKind.IN_APP}
            channels[ChannelKind.IN_APP] = InAppChannel()
            messenger = build_messenger(
                settings, store, policies, channels=channels, link_secret=secrets.token_urlsafe(32)
            )
        started = time.perf_counter()
        try:
            business = Business(
                engine,
                observed,
                customers=customers,
                days=days,
                seed=seed,
                start=start,
                resolution=timedelta(minutes=resolution_minutes),
                messenger=messenger,
            )
        except (ValueError, DomainError) as exc:
            raise SimulationError(str(exc)) from None
        if show_progress:
            with Progress(
                TextColumn("[bold]simulating[/] {task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                console=progress_console,
                transient=True,
            ) as progress:
                task = progress.add_task(f"{customers:,} customers x {days} days", total=1.0)
                stats = business.run(lambda f: progress.update(task, completed=f))
        else:
            stats = business.run()
        wall = time.perf_counter() - started
        report = build_report(
            store.engine,
            stats,
            wall_seconds=wall,
            settings={
                "customers": customers,
                "days": days,
                "seed": seed,
                "gateway": gateway,
                "policy": str(policy) if policy else "default",
                "start": start.isoformat(),
                "resolution_minutes": resolution_minutes,
                "database": store.engine.dialect.name,
            },
        )
        return report.as_dict()
    finally:
        store.dispose()
