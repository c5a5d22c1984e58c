"""The operators' dashboard under ``/admin`` (docs/dashboard.md): server-rendered pages
behind a sign-in, CSRF on every form, charts as inline SVG, no JavaScript."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from recobra.web.admin.pages import page, router
from recobra.web.admin.session import CsrfFailed, LoginRequired, Sessions


def include(app: FastAPI) -> None:
    services = app.state.services
    app.state.admin_sessions = Sessions(services.settings)

    async def _login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        target = request.url.path if request.method == "GET" else "/admin"
        if request.url.query and request.method == "GET":
            target += "?" + request.url.query
        why = f"&why={exc.reason}" if exc.reason else ""
        return RedirectResponse(f"/admin/login?next={quote(target, safe='')}{why}", status_code=303)

    async def _csrf_failed(request: Request, _exc: Exception) -> HTMLResponse:
        return page(
            request,
            "admin/problem.html.j2",
            status=403,
            title="Form refused",
            heading="This form was refused",
            body="It did not carry this session's security token (it may be old, or it came from "
            "another site). Nothing was changed. Go back, reload the page and try again.",
            session=None,
        )

    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(CsrfFailed, _csrf_failed)
    app.include_router(router)


__all__ = ["include"]
