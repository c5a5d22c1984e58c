"""Health and metrics: ``/healthz`` (alive), ``/readyz`` (database answers, schema at
head) and ``/metrics`` (Prometheus text).

Metrics live in a ``CollectorRegistry`` of their own per application (never the
process-wide default registry), so two apps in one process, as in tests, never share
or collide. Case counts are computed from the database when scraped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recobra.domain.case import CaseStatus
from recobra.store.migrate import current_revision, head_revision
from recobra.store.tables import CaseRow
from recobra.web.problems import PROBLEM, Problem
from recobra.web.services import Services, get_services

UNMATCHED = "(unmatched)"
"""The route label of requests that matched no route (keeps label values bounded)."""

# --------------------------------------------------------------------------- OpenAPI pieces

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details; `errors` names each invalid field and why.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "reason"],
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
    },
}


def problem_doc(description: str, **extra: Any) -> dict[str, Any]:
    """An OpenAPI response answered with ``application/problem+json``."""
    return {"description": description, "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}}, **extra}


# --------------------------------------------------------------------------- metrics


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class _CaseCounts(Collector):
    """``recobra_cases{status=...}``: counted in the database at each scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        # Declared without touching the database (registering calls this).
        return [self._family(), self._up()]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("recobra_cases", "Dunning cases by status", labels=["status"])

    @staticmethod
    def _up() -> GaugeMetricFamily:
        return GaugeMetricFamily("recobra_database_up", "1 when the database answered this scrape")

    def collect(self) -> Iterator[Metric]:
        counts = {status.value: 0 for status in CaseStatus}
        up = self._up()
        try:
            with self.engine.connect() as conn:
                for status, n in conn.execute(select(CaseRow.status, func.count()).group_by(CaseRow.status)):
                    counts[status] = int(n)
        except SQLAlchemyError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        family = self._family()
        for status, n in sorted(counts.items()):
            family.add_metric([status], n)
        yield family


class Metrics:
    """One application's metrics and their registry."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "recobra_http_requests",
            "HTTP requests by method, route (its template) and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recobra_http_request_duration_seconds",
            "HTTP request latency by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.events = Counter(
            "recobra_events_ingested",
            "Events received through the API, by type and result (applied or duplicate)",
            ["type", "result"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "recobra_event_batches_rejected",
            "Event batches rejected as invalid (nothing written)",
            registry=self.registry,
        )
        self.registry.register(_CaseCounts(engine))

    def ingested(self, kinds: Sequence[str], duplicates: Sequence[bool]) -> None:
        """Count events by their command class name (``PaymentFailed`` -> payment_failed)."""
        for kind, duplicate in zip(kinds, duplicates, strict=True):
            self.events.labels(_snake(kind), "duplicate" if duplicate else "applied").inc()


class _MetricsMiddleware:
    """Counts and times every HTTP request by the route it matched."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _route(self, scope: Scope, original: Scope) -> str:
        """The matched route's template (FastAPI's routes leave it in the scope; plain
        Starlette routes such as /openapi.json and mounts are matched again)."""
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
        for route in self.routes:
            match, _child = route.matches(original)
            if match is Match.FULL:
                return str(getattr(route, "path", UNMATCHED)) or UNMATCHED
        return UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()
        original = dict(scope)

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            labels = (scope.get("method", ""), self._route(scope, original), str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)


def metrics_of(app: FastAPI) -> Metrics | None:
    metrics: Metrics | None = getattr(app.state, "metrics", None)
    return metrics


# --------------------------------------------------------------------------- routes


class Alive(BaseModel):
    status: str = Field(examples=["ok"])


class Ready(BaseModel):
    status: str = Field(examples=["ready"])
    schema_revision: str = Field(description="the database's Alembic revision (this version's head)")


def include(app: FastAPI) -> None:
    """Add the health routes and the metrics middleware to ``app``."""
    services: Services = app.state.services
    metrics = Metrics(services.store.engine)
    app.state.metrics = metrics
    app.add_middleware(_MetricsMiddleware, metrics=metrics, routes=app.router.routes)
    head: list[str] = []

    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="The process is alive")
    def healthz() -> Alive:
        return Alive(status="ok")

    @router.get(
        "/readyz",
        summary="Ready to serve: the database answers and its schema is this version's",
        responses={503: problem_doc("The database does not answer, or its schema is not at head.")},
    )
    def readyz(request: Request) -> Ready:
        engine = get_services(request).store.engine
        if not head:
            head.append(head_revision())
        try:
            current = current_revision(engine)
        except SQLAlchemyError as exc:
            raise Problem(503, "Not ready", f"the database does not answer ({type(exc).__name__})") from None
        if current != head[0]:
            raise Problem(
                503,
                "Not ready",
                f"the database schema is at {current or 'nothing'}; this version needs {head[0]}: "
                "run `recobra init`",
            )
        return Ready(status="ready", schema_revision=current)

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text format (OpenMetrics when asked for in Accept)",
                "content": {"text/plain": {}, "application/openmetrics-text": {}},
            }
        },
    )
    def metrics_endpoint(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(metrics.registry), media_type=content_type)

    app.include_router(router)


__all__ = ["PROBLEM_SCHEMA", "Metrics", "include", "metrics_of", "problem_doc"]
