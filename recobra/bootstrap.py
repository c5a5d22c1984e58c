"""Factories that assemble the engine from settings. Nothing is built at import time."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect

from recobra.calendars import PublicHolidays
from recobra.domain.messages import ChannelKind, DeliveryRules
from recobra.engine.messenger import Messenger
from recobra.engine.relay import EventRelay
from recobra.engine.service import Engine
from recobra.gateways.loader import load_gateway
from recobra.policyfile import LoadedPolicy, load_default_policy, load_policy_file
from recobra.ports import Channel, PaymentGateway, PolicySource
from recobra.settings import Settings, SettingsError, resolve_secrets
from recobra.store.migrate import current_revision, head_revision
from recobra.store.sql import SqlStore

if TYPE_CHECKING:
    from recobra.policyversions import PolicyLibrary


class NotInitialised(RuntimeError):
    """The database has no Recobra schema, or an older one."""


def load_policies(settings: Settings) -> LoadedPolicy:
    return load_policy_file(settings.policy_file) if settings.policy_file else load_default_policy()


def build_policy_library(settings: Settings, store: SqlStore, fallback: LoadedPolicy) -> PolicyLibrary:
    """The stored policy versions, with the configured policy as the fallback (see
    recobra.policyversions): the engine's ``policy_source`` in the service and worker."""
    from recobra.policyversions import PolicyLibrary  # noqa: PLC0415

    name = f"file {settings.policy_file}" if settings.policy_file else "the shipped default policy"
    return PolicyLibrary(store.engine, fallback, fallback_name=name, templates_dir=settings.templates_dir)


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
    policy_source: PolicySource | None = None,
) -> Engine:
    return Engine(
        store or open_store(settings.database_url),
        gateway or load_gateway(settings.gateway, settings.gateway_settings),
        (policies or load_policies(settings)).policies,
        PublicHolidays(),
        batch_size=settings.batch_size,
        lease=timedelta(seconds=settings.lease_s),
        worker_id=settings.worker_id,
        policy_source=policy_source,
    )


def build_messenger(
    settings: Settings,
    store: SqlStore,
    policies: LoadedPolicy,
    *,
    channels: Mapping[ChannelKind, Channel] | None = None,
    link_secret: str | None = None,
    policy_source: PolicySource | None = None,
) -> Messenger:
    """The dispatcher with the configured channels, templates and link signer."""
    from recobra.channels.loader import load_channel  # noqa: PLC0415 - SDKs load only when messaging
    from recobra.messages.composer import Sender, TemplateComposer  # noqa: PLC0415
    from recobra.messages.links import LinkSigner  # noqa: PLC0415
    from recobra.messages.render import Renderer  # noqa: PLC0415

    secret = link_secret or settings.link_secret
    if not secret:
        raise SettingsError("messages need RECOBRA_LINK_SECRET (32+ characters) to sign customers' links")
    if channels is None:
        loaded: dict[ChannelKind, Channel] = {}
        for kind, spec in settings.channels.items():
            try:
                channel_kind = ChannelKind(kind)
            except ValueError:
                raise SettingsError(f"channels: unknown channel kind {kind!r}") from None
            loaded[channel_kind] = load_channel(
                spec, resolve_secrets(settings.channel_settings.get(kind, {}))
            )
        channels = loaded
    composer = TemplateComposer(
        Renderer(Path(settings.templates_dir) if settings.templates_dir else None),
        LinkSigner(secret, settings.public_url),
        policies.policies,
        Sender(settings.company_name, settings.support_email, settings.data_retention_days),
        source=policy_source,
    )
    rules = DeliveryRules(
        quiet_start=settings.quiet_start,
        quiet_end=settings.quiet_end,
        max_per_day=settings.max_messages_per_day,
        max_per_week=settings.max_messages_per_week,
    )
    return Messenger(
        store,
        channels,
        composer,
        rules=rules,
        lease=timedelta(seconds=settings.lease_s),
        worker_id=settings.worker_id,
    )


def build_relay(settings: Settings, store: SqlStore) -> EventRelay | None:
    """The webhook relay of case events, when ``webhook_url`` is configured."""
    if not settings.webhook_url:
        return None
    from recobra.channels.webhook import WebhookChannel  # noqa: PLC0415

    if not settings.webhook_secret:
        raise SettingsError("webhook_url needs webhook_secret (RECOBRA_WEBHOOK_SECRET) to sign events")
    secret = resolve_secrets({"webhook_secret": settings.webhook_secret})["webhook_secret"]
    return EventRelay(
        store,
        WebhookChannel(settings.webhook_url, secret),
        kinds=frozenset(settings.webhook_events) or None,
        lease=timedelta(seconds=settings.lease_s),
        worker_id=settings.worker_id,
    )
