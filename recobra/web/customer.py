"""Customer-facing endpoints that need no login: in-app notices and their banner script.

The operator's backend mints a short-lived token for its logged-in customer
(``POST /api/v1/customers/{id}/notices-token`` with an API key); the page embeds

    <script src="https://billing.example.com/static/recobra-banner.js"
            data-token="..." defer></script>

and the script shows the customer's newest unseen notice as a banner, marking it seen
when it is shown. The token is signed, single-purpose (``notices``) and expires; it
gives access to that customer's notices and nothing else.
"""

from __future__ import annotations

from datetime import timedelta
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel

from recobra.messages.links import LinkError
from recobra.web.auth import require_api_key
from recobra.web.problems import Problem
from recobra.web.services import Services, get_services

NOTICE_TOKEN_TTL = timedelta(hours=12)


class Notice(BaseModel):
    key: str
    kind: str
    title: str
    body: str
    cta: str | None = None
    link: str | None = None


class Notices(BaseModel):
    notices: list[Notice]


class NoticeToken(BaseModel):
    token: str
    expires_in: int


def _customer(svc: Services, token: str) -> str:
    try:
        link = svc.links.verify("notices", token, now=svc.now())
    except LinkError as exc:
        raise Problem(401, "Invalid notices token", str(exc)) from None
    return link.subject


def _allow_origin(request: Request, response: Response, svc: Services) -> None:
    """The banner runs on the operator's own site: answer its origin if configured."""
    origin = request.headers.get("origin")
    if origin and origin in svc.settings.in_app_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"


router = APIRouter()


@router.post("/api/v1/customers/{customer_id}/notices-token", tags=["in-app"])
def notices_token(
    customer_id: str,
    svc: Annotated[Services, Depends(get_services)],
    _key: Annotated[str, Depends(require_api_key)],
) -> NoticeToken:
    """A token for this customer's in-app notices, for the operator's page to embed."""
    with svc.store.unit_of_work() as uow:
        if not uow.known_customers([customer_id]):
            raise Problem(404, "Unknown customer", f"no customer {customer_id!r}")
    token = svc.links.token("notices", customer_id, now=svc.now(), ttl=NOTICE_TOKEN_TTL)
    return NoticeToken(token=token, expires_in=int(NOTICE_TOKEN_TTL.total_seconds()))


@router.get("/notices", tags=["in-app"])
def pending_notices(
    request: Request,
    response: Response,
    svc: Annotated[Services, Depends(get_services)],
    token: Annotated[str, Query(min_length=10, max_length=1000)],
) -> Notices:
    """The customer's unseen in-app notices, newest first."""
    customer_id = _customer(svc, token)
    _allow_origin(request, response, svc)
    with svc.store.unit_of_work() as uow:
        rows = uow.pending_notices(customer_id)
    return Notices(
        notices=[
            Notice(
                key=r["key"],
                kind=r["kind"],
                title=str(r.get("subject") or ""),
                body=str(r.get("text") or ""),
                cta=r.get("cta"),
                link=r.get("link"),
            )
            for r in rows
        ]
    )


@router.post("/notices/{key}/seen", status_code=204, tags=["in-app"])
def notice_seen(
    key: str,
    request: Request,
    svc: Annotated[Services, Depends(get_services)],
    token: Annotated[str, Query(min_length=10, max_length=1000)],
) -> Response:
    """Mark a notice seen (it is then no longer shown)."""
    customer_id = _customer(svc, token)
    with svc.store.unit_of_work() as uow:
        found = uow.mark_notice_seen(customer_id, key, svc.now())
        uow.commit()
    if not found:
        raise Problem(404, "Unknown notice", "no unseen notice with that key for this customer")
    response = Response(status_code=204)
    _allow_origin(request, response, svc)
    return response


@router.get("/static/recobra-banner.js", include_in_schema=False)
def banner_script() -> Response:
    script = resources.files("recobra.web").joinpath("static/recobra-banner.js").read_text("utf-8")
    return Response(
        script,
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=3600"},
    )


def include(app: FastAPI) -> None:
    app.include_router(router)
