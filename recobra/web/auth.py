"""API-key authentication: ``Authorization: Bearer rk_live_...`` (see recobra.store.keys).

Use ``Depends(require_api_key)`` on a route or a router: it returns the key's id, or
answers 401 (problem+json, with ``WWW-Authenticate: Bearer``) when the key is
missing, unknown or revoked. The three cases get the same answer, so a caller
learns nothing about which keys exist.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from recobra.store.keys import hash_key, verify_key
from recobra.web.problems import Problem, problem_response
from recobra.web.services import Services

REALM = "recobra"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `recobra api-keys create NAME`: `Authorization: Bearer rk_live_...`",
)


class Unauthorized(Problem):
    """A 401 problem that also carries the ``WWW-Authenticate`` challenge."""

    def __init__(self, detail: str, *, error: str | None = None) -> None:
        super().__init__(401, "Unauthorized", detail)
        challenge = f'Bearer realm="{REALM}"'
        if error:
            challenge += f', error="{error}"'
        self.challenge = challenge


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The id of the request's valid API key; 401 otherwise. A key verified in the last
    couple of seconds is taken from memory (``services.keys``); otherwise the database
    is asked, in a worker thread."""
    if credentials is None:
        raise Unauthorized("send an API key: Authorization: Bearer rk_live_...")
    services: Services = request.app.state.services
    presented = credentials.credentials
    key_id = services.keys.get(presented)
    if key_id is None:
        key_id = await _look_up(services, presented)
    if key_id is None:
        raise Unauthorized("the API key is not valid (unknown or revoked)", error="invalid_token")
    return key_id


async def _look_up(services: Services, presented: str) -> str | None:
    """The key's id from the database (in a worker thread), then remembered. Requests
    that present the same key while it is being looked up wait for that lookup rather
    than each making their own: when a busy key's memory runs out, a process's dozens of
    requests in flight would otherwise each take a database connection at once, the
    pool opening new ones, which showed as a latency spike every two seconds."""
    lookups = services.key_lookups
    digest = hash_key(presented)
    lookup = lookups.get(digest)
    if lookup is None or lookup.done() or lookup.get_loop() is not asyncio.get_running_loop():
        lookup = asyncio.ensure_future(
            run_in_threadpool(verify_key, services.store.engine, presented, services.now())
        )
        lookups[digest] = lookup
        lookup.add_done_callback(lambda done: lookups.pop(digest) if lookups.get(digest) is done else None)
    # A request that goes away does not cancel the lookup the others wait for.
    key_id = await asyncio.shield(lookup)
    if key_id is not None:
        services.keys.remember(presented, key_id)
    return key_id


UNAUTHORIZED_RESPONSE: dict[str, Any] = {
    "description": "No API key, or one that is unknown or revoked.",
    "headers": {
        "WWW-Authenticate": {
            "description": 'The challenge, e.g. `Bearer realm="recobra", error="invalid_token"`',
            "schema": {"type": "string"},
        }
    },
}
"""The 401 answer, for routes' ``responses`` (its content is added by the caller)."""


def install(app: FastAPI) -> None:
    """Answer ``Unauthorized`` with its challenge header (idempotent)."""
    if Unauthorized in app.exception_handlers:
        return

    async def _unauthorized(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Unauthorized)
        response = problem_response(exc.status, exc.title, exc.detail, exc.errors)
        response.headers["WWW-Authenticate"] = exc.challenge
        return response

    app.add_exception_handler(Unauthorized, _unauthorized)


__all__ = ["Unauthorized", "install", "require_api_key"]
