"""What every hosted page for customers shares (``hosted``: update payment and
unsubscribe; ``leaving``: cancel and reactivate): the security headers, the page's
language, the signed link's check and the pages that say something went wrong."""

from __future__ import annotations

import logging
import re
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from recobra.domain.money import Money
from recobra.messages.formatting import format_amount
from recobra.messages.links import LinkError, LinkExpired, SignedLink
from recobra.web.hosted_text import TEXT
from recobra.web.services import Services

CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("recobra.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def page(name: str, status: int = 200, *, csp: str = CSP, **context: Any) -> HTMLResponse:
    html = _env.get_template(name).render(**context)
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",  # the URL is a credential
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": csp,
        },
    )


def language(request: Request, customer_locale: str | None) -> str:
    """``?lang=`` when it is one of ours, else the customer's, else English."""
    asked = request.query_params.get("lang")
    if asked in TEXT:
        return asked
    return customer_locale if customer_locale in TEXT else "en"


def common(request: Request, svc: Services, lang: str) -> dict[str, Any]:
    other = "es" if lang == "en" else "en"
    return {
        "lang": lang,
        "t": TEXT[lang],
        "company": svc.settings.company_name,
        "switch_url": f"{request.url.path}?lang={other}",
    }


def notice(
    request: Request,
    svc: Services,
    lang: str,
    title: str,
    body: str,
    status: int = 200,
    *,
    again_url: str | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page that only says something (``context`` overrides the common values)."""
    return page(
        "notice.html.j2",
        status,
        **{**common(request, svc, lang), **context},
        title=title,
        heading=title,
        body=body,
        again_url=again_url,
    )


def link_problem(request: Request, svc: Services, lang: str, kind: str, status: int) -> HTMLResponse:
    """``invalid`` (404), ``expired`` (410) or ``used`` (410)."""
    t = TEXT[lang]
    body = t[kind].format(support=svc.settings.support_email)
    return notice(request, svc, lang, t[f"{kind}_title"], body, status)


def verify(request: Request, svc: Services, token: str, purpose: str) -> SignedLink | HTMLResponse:
    """The link, or the page saying why it cannot be used."""
    lang = language(request, None)
    try:
        return svc.links.verify(purpose, token, now=svc.now())
    except LinkExpired:
        return link_problem(request, svc, lang, "expired", 410)
    except LinkError:
        return link_problem(request, svc, lang, "invalid", 404)


def amount(money: Money, locale: str, lang: str) -> str:
    """``money`` in the customer's CLDR locale (``es_MX``), or the language's when
    Babel does not know that locale."""
    try:
        return format_amount(money, locale)
    except ValueError:
        return format_amount(money, lang)


_LINK_IN_PATH = re.compile(r"(/p/[a-z_]+/)[^/?#\s\"]+")


class LinkTokens(logging.Filter):
    """Hides the token of a hosted page's address in a log line (``/p/cancel/[link]``):
    the token is the customer's credential, and access logs are read by many."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _LINK_IN_PATH.sub(r"\1[link]", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = _LINK_IN_PATH.sub(r"\1[link]", record.msg)
        return True


def hide_link_tokens(logger_name: str = "uvicorn.access") -> None:
    """Put ``LinkTokens`` on the server's access log (once, however many applications)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, LinkTokens) for f in logger.filters):
        logger.addFilter(LinkTokens())
