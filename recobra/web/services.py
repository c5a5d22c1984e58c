"""What request handlers work with, built once per application (never at import)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request

from recobra.bootstrap import build_engine, build_policy_library, load_policies, open_store
from recobra.calendars import PublicHolidays
from recobra.engine.service import Engine
from recobra.messages.links import LinkSigner
from recobra.policyversions import PolicyLibrary
from recobra.schemas import parse_events_text
from recobra.settings import Settings, SettingsError
from recobra.store.keys import VerifiedKeys
from recobra.store.sql import SqlStore
from recobra.web.ingest import WRITERS, GroupCommit

log = logging.getLogger("recobra.web")


def _wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Services:
    """The store, the engine and the link signer of one running service."""

    settings: Settings
    store: SqlStore
    engine: Engine
    links: LinkSigner
    clock: Callable[[], datetime] = field(default=_wall_clock)
    policy_library: PolicyLibrary | None = None
    """Stored policy versions; the engine's policy source (built from settings when absent)."""
    keys: VerifiedKeys = field(default_factory=VerifiedKeys)
    """API keys verified a moment ago (revocation is honoured within seconds)."""
    key_lookups: dict[str, asyncio.Future[str | None]] = field(default_factory=dict, repr=False)
    """API keys being looked up now, by hash (recobra.web.auth: one lookup per key at a time)."""
    _group_commit: GroupCommit | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], datetime] | None = None) -> Services:
        if not settings.link_secret:
            raise SettingsError(
                "the service needs RECOBRA_LINK_SECRET (32+ characters) to sign customers' links"
            )
        store = open_store(settings.database_url)
        policies = load_policies(settings)
        library = build_policy_library(settings, store, policies)
        engine = build_engine(settings, store=store, policies=policies, policy_source=library)
        return cls(
            settings=settings,
            store=store,
            engine=engine,
            links=LinkSigner(settings.link_secret, settings.public_url),
            clock=clock or _wall_clock,
            policy_library=library,
        )

    def now(self) -> datetime:
        return self.clock()

    def policies(self) -> PolicyLibrary:
        """The stored policy versions (built from the settings on first use when the
        services were assembled without them)."""
        if self.policy_library is None:
            self.policy_library = build_policy_library(
                self.settings, self.store, load_policies(self.settings)
            )
        return self.policy_library

    @property
    def group_commit(self) -> GroupCommit:
        """Writes concurrent requests' events in shared transactions (recobra.web.ingest)."""
        if self._group_commit is None:
            self._group_commit = GroupCommit(self.engine.apply_events, writers=WRITERS)
        return self._group_commit

    def warm_up(self) -> None:
        """Pay the one-time costs of a server process before it takes requests, so that
        its first requests are not the slow ones: the holiday calendar's data, the
        database connections its event writers use, and on each of them a rehearsal of
        a failed payment (``Engine.rehearse``: everything done, then rolled back).

        Measured at 1,000 single-event requests a second: without the rehearsal, the
        first quarter second's requests waited 85 ms (median), four times the rest."""
        if isinstance(self.engine.holidays, PublicHolidays):
            self.engine.holidays.load()
        count = self.group_commit.writers + 1
        connections = [self.store.engine.connect() for _ in range(count)]
        for connection in connections:
            connection.close()
        # The pool hands its idle connections out in turn (first in, first out), so
        # each rehearsal runs on the next connection. A warm-up never keeps a server
        # from starting: should the made-up event not suit this deployment (its
        # policies, say), the first real requests are merely slower.
        for n in range(count):
            try:
                self.engine.rehearse(parse_events_text(_rehearsal(n, self.now()), source="warm-up"))
            except Exception as exc:
                log.warning(
                    "warm-up: the rehearsed failed payment did not go through (%s: %s)",
                    type(exc).__name__,
                    exc,
                )
                break

    def close(self) -> None:
        self.store.dispose()


def _rehearsal(n: int, at: datetime) -> str:
    """A made-up failed payment (JSON, as a request carries it) for ``warm_up``."""
    when = at.isoformat()
    key = f"recobra_warm_up_{n}"
    return json.dumps(
        {
            "id": f"evt_{key}",
            "type": "payment_failed",
            "occurred_at": when,
            "customer": {
                "id": f"cus_{key}",
                "email": "warm-up@example.com",
                "locale": "es",
                "timezone": "America/Mexico_City",
                "country": "MX",
            },
            "subscription": {
                "id": f"sub_{key}",
                "status": "active",
                "started_at": when,
                "plan": {
                    "id": f"plan_{key}",
                    "name": "Warm-up",
                    "interval": "month",
                    "amount_minor": 29900,
                    "currency": "MXN",
                },
            },
            "invoice": {"id": f"in_{key}", "amount_minor": 29900, "currency": "MXN", "created_at": when},
            "payment_method": {
                "id": f"pm_{key}",
                "gateway_token": f"tok_{key}",
                "brand": "visa",
                "last4": "0000",
                "exp_month": 12,
                "exp_year": at.year + 3,
                "funding": "debit",
            },
            "decline": {"code": "insufficient_funds"},
        }
    )


def get_services(request: Request) -> Services:
    """FastAPI dependency: the application's services."""
    value: Services = request.app.state.services
    return value


async def services_now(request: Request) -> Services:
    """``get_services`` as a coroutine, for hot routes: FastAPI runs a plain function
    dependency in a worker thread, a hop that costs more than the lookup itself."""
    return get_services(request)


ServicesDep = Annotated[Services, Depends(services_now)]
"""A route's parameter for the application's services (no thread hop to find them)."""
