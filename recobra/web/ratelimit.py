"""Rate limits on what anyone on the internet can reach: customers' pages, sign-in,
and (when configured) the API.

Counting is done by the ``limits`` library (moving windows) in this process's memory:
right for one process. Several processes behind a load balancer each count on their
own, so a client gets up to N times the limit; put the limit in the proxy too, or
give ``RateLimits`` a shared ``limits`` storage (Redis, Memcached) where that
matters. The limits are per client address as the server sees it: behind a proxy,
run uvicorn with ``--proxy-headers`` (and ``--forwarded-allow-ips``) so that the
address is the client's, not the proxy's.

A client over a limit gets ``429 Too Many Requests`` with ``Retry-After`` (seconds):
a short page in English and Spanish for customers' pages and the dashboard,
problem+json for the API. Nothing behind the limit runs.

Rules go by path prefix, so every page under ``/p/`` is covered, whichever module
serves it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import FastAPI
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, Storage
from limits.strategies import MovingWindowRateLimiter
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from recobra.settings import Settings
from recobra.web.problems import problem_response

HOSTED_PREFIX = "/p/"
LOGIN_PATH = "/admin/login"
API_PREFIX = "/api/"


@dataclass(frozen=True, slots=True)
class Rule:
    """A limit on requests whose path starts with ``prefix`` (and, when given, with
    one of ``methods``), counted per client address under ``name``."""

    name: str
    prefix: str
    limits: tuple[RateLimitItem, ...]
    methods: frozenset[str] = frozenset()
    problem_json: bool = False

    def applies(self, path: str, method: str) -> bool:
        return path.startswith(self.prefix) and (not self.methods or method in self.methods)


def _parse(value: str | None) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(value)) if value else ()


class RateLimits:
    """The configured limits and their counters (one per application)."""

    def __init__(self, settings: Settings, *, storage: Storage | None = None) -> None:
        self.limiter = MovingWindowRateLimiter(storage or MemoryStorage())
        rules = [
            Rule("hosted", HOSTED_PREFIX, _parse(settings.rate_limit_hosted)),
            Rule("login", LOGIN_PATH, _parse(settings.rate_limit_login_ip), frozenset({"POST"})),
            Rule("api", API_PREFIX, _parse(settings.rate_limit_api), problem_json=True),
        ]
        self.rules = tuple(r for r in rules if r.limits)
        self.login_email = _parse(settings.rate_limit_login_email)

    def hit(self, limits: Sequence[RateLimitItem], *key: str) -> int | None:
        """Count one request; None when it is allowed, else the seconds to wait."""
        for item in limits:
            if not self.limiter.hit(item, *key):
                reset = self.limiter.get_window_stats(item, *key).reset_time
                return max(1, math.ceil(reset - time.time()))
        return None

    def hit_login_email(self, email: str) -> int | None:
        """Count a sign-in attempt for ``email`` (from any address)."""
        return self.hit(self.login_email, "login-email", email.strip().lower())

    def rule_for(self, path: str, method: str) -> Rule | None:
        return next((r for r in self.rules if r.applies(path, method)), None)


TOO_MANY = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>Too many requests</title>
<style>body {{ font: 17px/1.5 system-ui, sans-serif; max-width: 34rem; margin: 2rem auto; padding: 0 1rem;
color: #111827; }}</style></head>
<body><main>
<h1>Too many requests</h1>
<p>Please wait {seconds} seconds, then try again.</p>
<p lang="es"><strong>Demasiadas solicitudes.</strong> Espera {seconds} segundos y vuelve a intentarlo.</p>
</main></body></html>
"""


def too_many_requests(retry_after: int, *, problem_json: bool = False) -> Response:
    """The 429 answer: an HTML page, or problem+json for the API."""
    headers = {"Retry-After": str(retry_after), "Cache-Control": "no-store"}
    if problem_json:
        response: Response = problem_response(
            429, "Too Many Requests", f"rate limit exceeded: retry after {retry_after} seconds"
        )
        response.headers.update(headers)
        return response
    headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return HTMLResponse(TOO_MANY.format(seconds=retry_after), status_code=429, headers=headers)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class RateLimitMiddleware:
    """ASGI middleware: answers 429 before the application when a rule's limit is hit."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            rule = self.limits.rule_for(scope["path"], scope["method"])
            if rule is not None:
                wait = self.limits.hit(rule.limits, rule.name, client_address(scope))
                if wait is not None:
                    await too_many_requests(wait, problem_json=rule.problem_json)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def limits_of(request: Request) -> RateLimits:
    """The application's limits (for checks a route makes itself, like per email)."""
    value: RateLimits = request.app.state.rate_limits
    return value


def install(app: FastAPI, settings: Settings) -> RateLimits:
    """Create the application's limits and put the middleware in front of it."""
    limits = RateLimits(settings)
    app.state.rate_limits = limits
    app.add_middleware(RateLimitMiddleware, limits=limits)
    return limits


__all__ = ["RateLimitMiddleware", "RateLimits", "install", "limits_of", "too_many_requests"]
