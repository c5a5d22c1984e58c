"""Factories that assemble the engine from settings. Nothing is built at import time."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import inspect

from recobra.calendars import PublicHolidays
from recobra.engine.service import Engine
from recobra.gateways.loader import load_gateway
from recobra.policyfile import LoadedPolicy, load_default_policy, load_policy_file
from recobra.ports import PaymentGateway
from recobra.settings import Settings
from recobra.store.migrate import current_revision, head_revision
from recobra.store.sql import SqlStore


class NotInitialised(RuntimeError):
    """The database has no Recobra schema, or an older one."""


def load_policies(settings: Settings) -> LoadedPolicy:
    return load_policy_file(settings.policy_file) if settings.policy_file else load_default_policy()


def open_store(url: str, *, require_schema: bool = True) -> SqlStore:
    store = SqlStore.from_url(url)
    if require_schema:
        if not inspect(store.engine).has_table("cases"):
            store.dispose()
            raise NotInitialised("the database has no Recobra tables: run `recobra init` first")
        if current_revision(store.engine) != head_revision():
            store.dispose()
            raise NotInitialised("the database schema is out of date: run `recobra init` to upgrade")
    return store


def build_engine(
    settings: Settings,
    *,
    store: SqlStore | None = None,
    gateway: PaymentGateway | None = None,
    policies: LoadedPolicy | None = None,
) -> Engine:
    return Engine(
        store or open_store(settings.database_url),
        gateway or load_gateway(settings.gateway, settings.gateway_settings),
        (policies or load_policies(settings)).policies,
        PublicHolidays(),
        batch_size=settings.batch_size,
        lease=timedelta(seconds=settings.lease_s),
        worker_id=settings.worker_id,
    )
