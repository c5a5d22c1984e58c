"""The dashboard's pages. Reads are plain queries (``queries``); every change goes
through the engine or the store and is attributed to the signed-in operator.

Input is validated here, on the server: a bad filter answers 422 with the page and
an error naming the field; nothing is ever half done.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from recobra.domain.case import CaseStatus
from recobra.domain.declines import DeclineCategory
from recobra.domain.errors import IllegalTransition
from recobra.domain.money import Money
from recobra.messages.formatting import format_amount
from recobra.store.admins import MAX_PASSWORD, authenticate
from recobra.web.admin import charts, queries
from recobra.web.admin.session import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    AdminSession,
    CheckedAdmin,
    CurrentAdmin,
    LoginRequired,
    same_token,
    sessions_of,
)
from recobra.web.ratelimit import limits_of, too_many_requests
from recobra.web.services import Services, ServicesDep

PERIODS = (7, 30, 90)
SURVEY_PERIODS = (7, 30, 90, 365)
PER_PAGE = 50
MAX_PAGE = 100_000
MAX_AMOUNT = Decimal(10) ** 12

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

Svc = ServicesDep


def _money(minor: int, currency: str) -> str:
    return format_amount(Money(minor, currency), "en")


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else "—"


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("recobra.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["money"] = _money
_env.filters["when"] = _when
_env.filters["words"] = lambda value: str(value or "").replace("_", " ")


def page(
    request: Request,
    template: str,
    *,
    session: AdminSession | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """Render a dashboard page with the security headers every page carries."""
    services: Services = request.app.state.services
    html = _env.get_template(template).render(
        company=services.settings.company_name,
        session=session,
        csrf_field=CSRF_FIELD,
        path=request.url.path,
        **context,
    )
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": CSP,
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


def _problem(
    request: Request, session: AdminSession | None, status: int, heading: str, body: str
) -> HTMLResponse:
    return page(
        request,
        "admin/problem.html.j2",
        session=session,
        status=status,
        title=heading,
        heading=heading,
        body=body,
    )


router = APIRouter(prefix="/admin", include_in_schema=False)


# ---------------------------------------------------------------- signing in

WHY = {
    "expired": "Your session expired: please sign in again.",
    "disabled": "Your account is disabled: ask another operator.",
    "invalid": "Please sign in.",
}


def _safe_next(value: str | None) -> str:
    """Only a path inside the dashboard (no open redirect to another site)."""
    if value and (value == "/admin" or value.startswith(("/admin/", "/admin?"))) and "\\" not in value:
        return value
    return "/admin"


def _login_page(
    request: Request, *, status: int = 200, error: str = "", email: str = "", next_url: str = "/admin"
) -> HTMLResponse:
    sessions = sessions_of(request)
    token, fresh = sessions.login_token(request)
    response = page(
        request,
        "admin/login.html.j2",
        session=None,
        status=status,
        title="Sign in",
        error=error,
        notice=WHY.get(request.query_params.get("why", ""), ""),
        email=email,
        next_url=next_url,
        login_csrf=token,
    )
    if fresh:
        sessions.set_login_cookie(response, token)
    return response


@router.get("/login", response_model=None)
def login_form(request: Request, svc: Svc) -> Response:
    target = _safe_next(request.query_params.get("next"))
    try:
        sessions_of(request).read(request, svc)
    except LoginRequired:
        return _login_page(request, next_url=target)
    return RedirectResponse(target, status_code=303)  # already signed in


@router.post("/login", response_model=None)
def login(
    request: Request,
    svc: Svc,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=MAX_PASSWORD)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next_url: Annotated[str, Form(alias="next", max_length=2000)] = "/admin",
) -> Response:
    sessions = sessions_of(request)
    target = _safe_next(next_url)
    if not same_token(sessions.login_cookie_token(request), csrf_token):
        return _problem(
            request,
            None,
            403,
            "This form was refused",
            "The sign-in form had expired or came from another site. Nothing was done: "
            "open the sign-in page again.",
        )
    if not email.strip() or not password:
        return _login_page(
            request, status=422, error="Enter your email and password.", email=email, next_url=target
        )
    wait = limits_of(request).hit_login_email(email)
    if wait is not None:
        return too_many_requests(wait)
    user = authenticate(svc.store.engine, email, password, svc.now())
    if user is None:
        return _login_page(
            request,
            status=401,
            error="That email and password do not match an active user.",
            email=email,
            next_url=target,
        )
    response = RedirectResponse(target, status_code=303)
    sessions.start(response, user, svc.now())
    response.delete_cookie(LOGIN_COOKIE, path="/admin")
    return response


@router.post("/logout")
def logout(request: Request, _session: CheckedAdmin) -> RedirectResponse:
    response = RedirectResponse("/admin/login", status_code=303)
    sessions_of(request).end(response)
    return response


# ---------------------------------------------------------------- overview


def _period(request: Request, allowed: tuple[int, ...], default: int) -> tuple[int, str | None]:
    raw = request.query_params.get("days", str(default))
    if raw.isdigit() and int(raw) in allowed:
        return int(raw), None
    return default, f"Period (days): choose one of {', '.join(map(str, allowed))}."


@router.get("")
@router.get("/")
def overview(request: Request, svc: Svc, session: CurrentAdmin) -> HTMLResponse:
    days, error = _period(request, PERIODS, 30)
    now = svc.now()
    start = now - timedelta(days=days)
    bucket = timedelta(days=7 if days > 30 else 1)
    with Session(svc.store.engine) as db:
        figures = queries.overview(db, start)
        starts, recovered, lost = queries.closed_by_bucket(db, start, now, bucket)
        by_category = queries.outcomes_by_category(db, start)
    labels = [f"{s:%b %d}" for s in starts]
    return page(
        request,
        "admin/overview.html.j2",
        session=session,
        status=422 if error else 200,
        title="Overview",
        error=error,
        days=days,
        periods=PERIODS,
        figures=figures,
        bucket_days=bucket.days,
        series=list(zip(labels, recovered, lost, strict=True)),
        by_category=by_category,
        outcomes=charts.OUTCOMES,
        recovery_chart=charts.recovery_over_time(labels, recovered, lost),
        category_chart=charts.outcomes_by_category(by_category),
    )


# ---------------------------------------------------------------- cases


@dataclass(slots=True)
class _Parsed:
    filters: queries.CaseFilters
    page: int
    errors: dict[str, str]
    form: dict[str, str]


def _page_number(raw: str, errors: dict[str, str]) -> int:
    if not raw:
        return 1
    if raw.isdigit() and 1 <= int(raw) <= MAX_PAGE:
        return int(raw)
    errors["page"] = f"Page (page): a whole number from 1 to {MAX_PAGE}."
    return 1


def _pagination(path: str, query: dict[str, str], number: int, total: int) -> dict[str, Any]:
    """Page ``number`` of ``total`` rows: how many pages, and the links either side."""
    pages = max(1, -(-total // PER_PAGE))

    def link(n: int) -> str:
        return f"{path}?" + urlencode({**query, "page": n})

    return {
        "page_number": number,
        "pages": pages,
        "prev_url": link(number - 1) if number > 1 else None,
        "next_url": link(number + 1) if number < pages else None,
    }


def _amount(raw: str, name: str, label: str, errors: dict[str, str]) -> Decimal | None:
    if not raw:
        return None
    try:
        value = Decimal(raw.replace(",", ""))
    except InvalidOperation:
        value = Decimal(-1)
    exponent = value.as_tuple().exponent
    if (
        not value.is_finite()
        or value < 0
        or value > MAX_AMOUNT
        or not isinstance(exponent, int)
        or exponent < -3
    ):
        errors[name] = f"{label} ({name}): enter an amount such as 49.90 (0 or more, at most 3 decimals)."
        return None
    return value


def _parse_case_filters(request: Request) -> _Parsed:
    q = request.query_params
    names = ("status", "segment", "category", "amount_min", "amount_max", "customer", "page")
    form = {k: q.get(k, "").strip() for k in names}
    errors: dict[str, str] = {}
    statuses = [s.value for s in CaseStatus]
    if form["status"] and form["status"] not in statuses:
        errors["status"] = f"Status (status): choose one of {', '.join(statuses)}."
    categories = [c.value for c in DeclineCategory]
    if form["category"] and form["category"] not in categories:
        errors["category"] = f"Decline category (category): choose one of {', '.join(categories)}."
    if len(form["segment"]) > 64:
        errors["segment"] = "Segment (segment): at most 64 characters."
    if len(form["customer"]) > 128:
        errors["customer"] = "Customer (customer): at most 128 characters."
    low = _amount(form["amount_min"], "amount_min", "Amount from", errors)
    high = _amount(form["amount_max"], "amount_max", "Amount up to", errors)
    if low is not None and high is not None and high < low:
        errors["amount_max"] = "Amount up to (amount_max): must not be less than the amount from."
    number = _page_number(form["page"], errors)
    filters = queries.CaseFilters(
        status=form["status"] or None,
        segment=form["segment"] or None,
        category=form["category"] or None,
        amount_min=low,
        amount_max=high,
        customer_id=form["customer"] or None,
    )
    return _Parsed(filters, number, errors, form)


@router.get("/cases")
def cases_list(request: Request, svc: Svc, session: CurrentAdmin) -> HTMLResponse:
    parsed = _parse_case_filters(request)
    rows: list[Any] = []
    total = 0
    with Session(svc.store.engine) as db:
        if not parsed.errors:
            rows, total = queries.cases(db, parsed.filters, page=parsed.page, per_page=PER_PAGE)
        segments = queries.segments(db)
    query = {k: v for k, v in parsed.form.items() if v and k != "page"}
    return page(
        request,
        "admin/cases.html.j2",
        session=session,
        status=422 if parsed.errors else 200,
        title="Cases",
        rows=rows,
        total=total,
        form=parsed.form,
        errors=parsed.errors,
        statuses=[s.value for s in CaseStatus],
        categories=[c.value for c in DeclineCategory],
        segments=segments,
        **_pagination("/admin/cases", query, parsed.page, total),
    )


DONE = {
    "retry": "Retry done: see its outcome at the top of the timeline.",
    "pause": "Dunning paused: no retries, messages or final action until you resume it.",
    "resume": "Dunning resumed: the case is back on its policy's timeline.",
    "write-off": "Case written off.",
    "resend-link": (
        "A payment reminder with a fresh update-payment link is queued: it goes out as soon as "
        "the customer's quiet hours and daily cap allow (the timeline says when)."
    ),
}


def _case_page(
    request: Request,
    svc: Services,
    session: AdminSession,
    case_id: str,
    *,
    status: int = 200,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
) -> HTMLResponse:
    """The case's page; ``errors`` and ``values`` by the id of the form field (the pause
    and the write-off forms each have their own reason field)."""
    with Session(svc.store.engine) as db:
        row = db.get(queries.CaseRow, case_id)
        if row is None:
            return _problem(request, session, 404, "No such case", f"There is no case {case_id!r}.")
        items = queries.timeline(db, case_id)
        customer = db.get(queries.CustomerRow, row.customer_id)
    done = DONE.get(request.query_params.get("done", ""))
    return page(
        request,
        "admin/case.html.j2",
        session=session,
        status=status,
        title=f"Case {case_id}",
        case=row,
        customer=customer,
        items=[i for i in reversed(items) if not (i.what == "message" and i.status == "scheduled")],
        upcoming=[i for i in items if i.what == "message" and i.status == "scheduled"],
        active=row.status in queries.ACTIVE,
        paused=row.next_action == "paused",
        done=done,
        errors=errors or {},
        values=values or {},
    )


@router.get("/cases/{case_id}")
def case_page(case_id: str, request: Request, svc: Svc, session: CurrentAdmin) -> HTMLResponse:
    return _case_page(request, svc, session, case_id)


@router.post("/cases/{case_id}/{action}", response_model=None)
def case_action(
    case_id: str,
    action: str,
    request: Request,
    svc: Svc,
    session: CheckedAdmin,
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    engine, now, who = svc.engine, svc.now(), session.operator
    if action not in DONE:
        return _problem(request, session, 404, "No such action", f"There is no action {action!r}.")
    reason = reason.strip()
    if action == "write-off" and not reason:
        errors = {"reason": "Reason (reason): say why the case is written off; it goes on its timeline."}
        return _case_page(request, svc, session, case_id, status=422, errors=errors)
    if len(reason) > 500:
        field = "pause-reason" if action == "pause" else "reason"
        errors = {field: "Reason (reason): at most 500 characters."}
        return _case_page(request, svc, session, case_id, status=422, errors=errors, values={field: reason})
    try:
        if action == "retry":
            engine.retry_now(case_id, now, operator=who)
        elif action == "pause":
            engine.pause_dunning(case_id, now, operator=who, reason=reason)
        elif action == "resume":
            engine.resume_dunning(case_id, now, operator=who)
        elif action == "write-off":
            engine.write_off(case_id, now, reason=reason, operator=who)
        else:
            engine.resend_link(case_id, now, operator=who)
    except LookupError:
        return _problem(request, session, 404, "No such case", f"There is no case {case_id!r}.")
    except IllegalTransition as exc:
        return _problem(request, session, 409, "Nothing was done", exc.reason)
    return RedirectResponse(f"/admin/cases/{case_id}?done={action}", status_code=303)


# ---------------------------------------------------------------- customers


@router.get("/customers")
def customers_list(request: Request, svc: Svc, session: CurrentAdmin) -> HTMLResponse:
    q = request.query_params.get("q", "").strip()
    errors: dict[str, str] = {}
    if len(q) > 200:
        errors["q"] = "Search (q): at most 200 characters."
    number = _page_number(request.query_params.get("page", "").strip(), errors)
    rows: list[Any] = []
    total = 0
    if not errors:
        with Session(svc.store.engine) as db:
            rows, total = queries.customers(db, q, page=number, per_page=PER_PAGE)
    return page(
        request,
        "admin/customers.html.j2",
        session=session,
        status=422 if errors else 200,
        title="Customers",
        q=q,
        rows=rows,
        total=total,
        errors=errors,
        **_pagination("/admin/customers", {"q": q} if q else {}, number, total),
    )


@router.get("/customers/{customer_id}")
def customer_page(customer_id: str, request: Request, svc: Svc, session: CurrentAdmin) -> HTMLResponse:
    with Session(svc.store.engine) as db:
        view = queries.customer(db, customer_id)
        if view is None:
            return _problem(
                request, session, 404, "No such customer", f"There is no customer {customer_id!r}."
            )
        return page(
            request, "admin/customer.html.j2", session=session, title=f"Customer {customer_id}", v=view
        )


# ---------------------------------------------------------------- policies


@dataclass(frozen=True, slots=True)
class _PolicyCheck:
    source: str
    text: str
    sha256: str
    problems: list[tuple[str, str]]
    summary: list[dict[str, str]]


def _check_policy(svc: Services) -> _PolicyCheck:
    """What ``recobra policy check`` says of the policy file the service runs."""
    import hashlib  # noqa: PLC0415

    from recobra.domain.policy import format_duration  # noqa: PLC0415
    from recobra.messages.checks import template_problems  # noqa: PLC0415
    from recobra.messages.render import Renderer  # noqa: PLC0415
    from recobra.policyfile import PolicyError, default_policy_text, parse_policy  # noqa: PLC0415

    settings = svc.settings
    if settings.policy_file:
        source = settings.policy_file
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return _PolicyCheck(source, "", "", [("(file)", f"cannot read: {exc}")], [])
    else:
        source, text = "the shipped default policy (no policy_file is set)", default_policy_text()
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    try:
        loaded = parse_policy(text, source)
    except PolicyError as exc:
        return _PolicyCheck(source, text, sha, exc.problems, [])
    templates = Path(settings.templates_dir) if settings.templates_dir else None
    problems = [(where, reason) for where, reason in template_problems(loaded.policies, Renderer(templates))]
    summary = [
        {
            "name": name,
            "strategy": p.strategy.value,
            "steps": ", ".join(format_duration(s) for s in p.steps),
            "max_attempts": str(p.max_attempts),
            "window": f"{p.max_days}d",
            "grace": f"{p.grace_days}d",
            "final_action": p.final_action.value,
        }
        for name, p in loaded.policies.policies.items()
    ]
    return _PolicyCheck(source, text, sha, problems, summary)


@router.get("/policies")
def policies(request: Request, svc: Svc, session: CurrentAdmin) -> HTMLResponse:
    check = _check_policy(svc)
    with Session(svc.store.engine) as db:
        versions = queries.policy_versions(db)
    return page(
        request, "admin/policies.html.j2", session=session, title="Policies", check=check, versions=versions
    )


# ---------------------------------------------------------------- exit surveys


@router.get("/surveys")
def surveys(request: Request, svc: Svc, session: CurrentAdmin) -> HTMLResponse:
    days, error = _period(request, SURVEY_PERIODS, 30)
    now = svc.now()
    start = now - timedelta(days=days)
    bucket = timedelta(days=1 if days <= 7 else 7 if days <= 90 else 30)
    with Session(svc.store.engine) as db:
        starts, by_reason = queries.survey_reasons_over_time(db, start, now, bucket)
        reasons = queries.survey_reasons(db, start)
        outcomes = queries.survey_outcomes(db, start)
        comments = queries.survey_comments(db, start)
    return page(
        request,
        "admin/surveys.html.j2",
        session=session,
        status=422 if error else 200,
        title="Exit survey",
        error=error,
        days=days,
        periods=SURVEY_PERIODS,
        reasons=reasons,
        outcomes=outcomes,
        total=sum(reasons.values()),
        comments=comments,
        chart=charts.reasons(reasons),
        over_time=charts.reasons_over_time([f"{b:%b %d}" for b in starts], by_reason),
        bucket_name="day" if bucket.days == 1 else "week" if bucket.days == 7 else "30 days",
        bucket_labels=[f"{b:%b %d}" for b in starts],
        by_reason=by_reason,
    )
