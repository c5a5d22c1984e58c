"""The application factory: nothing is created at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from recobra.web import problems, ratelimit
from recobra.web.pages import hide_link_tokens
from recobra.web.services import Services


def create_app(services: Services) -> FastAPI:
    """The whole service on ``services``: routers are added here, one per concern."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        services.close()

    app = FastAPI(
        title="Recobra",
        summary="Recover failed subscription payments and keep customers.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.services = services
    problems.install(app)
    ratelimit.install(app, services.settings)
    hide_link_tokens()  # hosted pages' addresses carry their credential
    for include in _routers():
        include(app)
    return app


def _routers() -> list[Callable[[FastAPI], None]]:
    """Each concern's ``include(app)``."""
    from recobra.stripe import webhooks as stripe_webhooks  # noqa: PLC0415
    from recobra.web import admin, api, customer, deliveries, health, hosted, leaving, providers  # noqa: PLC0415

    return [
        health.include,
        api.include,
        customer.include,
        deliveries.include,
        providers.include,
        hosted.include,
        leaving.include,
        stripe_webhooks.include,
        admin.include,
    ]
