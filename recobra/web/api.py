"""The operator's REST API, ``/api/v1``: events in, cases and customers out.

Every route needs an API key (``Authorization: Bearer rk_live_...``). Errors are
``application/problem+json``, each naming the field and the reason. Amounts are
always an integer ``amount_minor`` with its ``currency``. Lists are paginated with
an opaque cursor. See docs/api.md.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from recobra.domain.case import CaseStatus, EventKind, FinalAction, NextAction
from recobra.domain.errors import IllegalTransition
from recobra.domain.model import AttemptStatus, AttemptTrigger, Funding, Interval, SubscriptionStatus
from recobra.engine.commands import Command, PaymentMethodUpdated
from recobra.engine.service import HandleResult
from recobra.ports import ConcurrentUpdate
from recobra.schemas import EventError, event_json_schema, parse_events_text
from recobra.store.keys import get_key
from recobra.store.tables import (
    AttemptRow,
    CaseEventRow,
    CaseRow,
    ContactPreferenceRow,
    CustomerRow,
    PaymentMethodRow,
    PlanRow,
    SubscriptionRow,
)
from recobra.web import auth
from recobra.web.auth import UNAUTHORIZED_RESPONSE, require_api_key
from recobra.web.health import metrics_of, problem_doc
from recobra.web.problems import Problem
from recobra.web.services import Services, get_services, services_now

PREFIX = "/api/v1"
MAX_BODY_BYTES = 10 * 1024 * 1024
"""Largest events body accepted (413 beyond)."""
MAX_EVENTS = 1000
"""Most events in one request."""
MAX_LIMIT = 200
DEFAULT_LIMIT = 50
CUSTOMER_CASES = 100
"""Cases shown with a customer (newest first); ``GET /cases?customer_id=`` lists all."""
COMPONENTS = "#/components/schemas/"

# --------------------------------------------------------------------------- response models


class Model(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DeclineOut(Model):
    """A decline as the gateway gave it, with Recobra's classification."""

    category: str = Field(
        description="Recobra's category (docs/declines.md)", examples=["insufficient_funds"]
    )
    code: str | None = Field(description="the gateway's decline code", examples=["insufficient_funds"])
    network_code: str | None = Field(description="the card network's response code", examples=["51"])
    advice_code: str | None = Field(description="the network's merchant advice code", examples=["01"])


class CaseSummary(Model):
    """A dunning case: one failed invoice and what Recobra does about it."""

    id: str = Field(examples=["case_in_1042"])
    status: CaseStatus
    invoice_id: str
    customer_id: str
    subscription_id: str | None
    amount_minor: int = Field(description="the invoice's amount in minor units (cents)", examples=[4900])
    currency: str = Field(description="ISO 4217", examples=["USD"])
    opened_at: datetime
    closed_at: datetime | None
    policy: str = Field(description="the retry policy in force for this case")
    policy_version: int
    segment: str
    retries: int = Field(description="charge attempts Recobra has made (not counting the billing system's)")
    last_attempt_at: datetime
    last_decline: DeclineOut
    next_action: NextAction | None = Field(description="what happens next (null once closed)")
    next_action_at: datetime | None
    next_action_reason: str = Field(description="why, in words")
    final_action: FinalAction | None = Field(description="the final action taken, once done")


class TimelineEvent(Model):
    """One line of a case's timeline: what happened, when, and why."""

    at: datetime
    kind: EventKind
    reason: str
    from_status: CaseStatus | None
    to_status: CaseStatus | None
    data: dict[str, Any] = Field(description="details: decline codes, retry times, references")


class AttemptOut(Model):
    """One charge of the invoice."""

    number: int = Field(
        description="1, 2, ...: Recobra's attempts; 0: the billing system's failed charge that opened "
        "the case; -1: a later failed charge outside Recobra"
    )
    at: datetime
    status: AttemptStatus
    trigger: AttemptTrigger
    payment_method_id: str
    decline: DeclineOut | None = Field(description="why it was declined (failed attempts)")
    gateway_reference: str | None
    idempotency_key: str = Field(description="the key the gateway saw for this charge")


class CaseDetail(CaseSummary):
    """A case with its timeline and its attempts, oldest first."""

    timeline: list[TimelineEvent]
    attempts: list[AttemptOut]


class CasePage(BaseModel):
    """One page of cases, newest first; ``next_cursor`` is null on the last page."""

    data: list[CaseSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: no more")


class PlanOut(Model):
    id: str
    name: str
    interval: Interval
    amount_minor: int
    currency: str


class SubscriptionOut(Model):
    id: str
    status: SubscriptionStatus
    plan: PlanOut
    started_at: datetime
    renews_at: datetime | None


class PaymentMethodOut(Model):
    """A payment method as it may be shown; the gateway token is never returned."""

    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    funding: Funding
    is_default: bool


class PreferencesOut(Model):
    sms_consent: bool
    voice_consent: bool
    sms_stopped: bool = Field(description="the customer replied STOP to an SMS")
    unsubscribed: bool
    suppressed: bool = Field(description="no dunning messages (e.g. after a cancellation)")
    win_back_opt_in: bool
    updated_at: datetime


class CustomerOut(Model):
    """A customer with subscriptions, payment methods and newest cases."""

    id: str
    email: str
    name: str
    phone: str | None
    locale: str
    timezone: str
    country: str
    created_at: datetime | None
    preferences: PreferencesOut | None = Field(description="null until anything was recorded")
    subscriptions: list[SubscriptionOut]
    payment_methods: list[PaymentMethodOut]
    cases: list[CaseSummary] = Field(
        description=f"newest first, at most {CUSTOMER_CASES}; list all with GET /api/v1/cases?customer_id="
    )


class EventResult(BaseModel):
    """What one event did."""

    id: str = Field(description="the event's id")
    duplicate: bool = Field(description="seen before (or earlier in this batch): ignored")
    case_ids: list[str] = Field(description="cases the event opened or acted on")
    note: str = Field(description="anything worth knowing, e.g. 'case already exists'")


class IngestResult(BaseModel):
    """The outcome of a batch, one result per event in the order sent."""

    applied: int
    duplicates: int
    results: list[EventResult]


def no_nul(value: str) -> str:
    """A text field's check: PostgreSQL cannot store NUL characters."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class WriteOffIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[
        str,
        StringConstraints(min_length=1, max_length=500, pattern=r"\S"),
        AfterValidator(no_nul),
        Field(description="why the case is written off (kept on its timeline)"),
    ]


# --------------------------------------------------------------------------- row -> model


def _none_if_empty(value: str | None) -> str | None:
    return value or None


def _case_summary(row: CaseRow) -> CaseSummary:
    return CaseSummary(
        id=row.id,
        status=CaseStatus(row.status),
        invoice_id=row.invoice_id,
        customer_id=row.customer_id,
        subscription_id=row.subscription_id,
        amount_minor=row.amount_minor,
        currency=row.currency,
        opened_at=row.opened_at,
        closed_at=row.closed_at,
        policy=row.policy_name,
        policy_version=row.policy_version,
        segment=row.segment,
        retries=row.attempts,
        last_attempt_at=row.last_attempt_at,
        last_decline=DeclineOut(
            category=row.last_category,
            code=_none_if_empty(row.last_code),
            network_code=_none_if_empty(row.last_network_code),
            advice_code=_none_if_empty(row.last_advice_code),
        ),
        next_action=NextAction(row.next_action) if row.next_action else None,
        next_action_at=row.next_action_at,
        next_action_reason=row.next_action_reason,
        final_action=FinalAction(row.final_action) if row.final_action else None,
    )


def _attempt(row: AttemptRow) -> AttemptOut:
    decline = None
    if row.category:
        decline = DeclineOut(
            category=row.category,
            code=_none_if_empty(row.code),
            network_code=_none_if_empty(row.network_code),
            advice_code=_none_if_empty(row.advice_code),
        )
    return AttemptOut(
        number=row.number,
        at=row.at,
        status=AttemptStatus(row.status),
        trigger=AttemptTrigger(row.trigger),
        payment_method_id=row.payment_method_id,
        decline=decline,
        gateway_reference=row.gateway_reference,
        idempotency_key=row.idempotency_key,
    )


def _timeline_event(row: CaseEventRow) -> TimelineEvent:
    return TimelineEvent(
        at=row.at,
        kind=EventKind(row.kind),
        reason=row.reason,
        from_status=CaseStatus(row.from_status) if row.from_status else None,
        to_status=CaseStatus(row.to_status) if row.to_status else None,
        data=row.data or {},
    )


def _case_detail(session: Session, case_id: str) -> CaseDetail | None:
    row = session.get(CaseRow, case_id)
    if row is None:
        return None
    events = session.scalars(
        select(CaseEventRow).where(CaseEventRow.case_id == case_id).order_by(CaseEventRow.id)
    )
    attempts = session.scalars(
        select(AttemptRow).where(AttemptRow.case_id == case_id).order_by(AttemptRow.at, AttemptRow.id)
    )
    summary = _case_summary(row)
    return CaseDetail(
        **summary.model_dump(),
        timeline=[_timeline_event(e) for e in events],
        attempts=[_attempt(a) for a in attempts],
    )


# --------------------------------------------------------------------------- cursors


def _encode_cursor(row: CaseRow) -> str:
    raw = json.dumps([row.opened_at.isoformat(), row.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    bad = Problem(
        422,
        "Invalid request",
        "some fields are invalid",
        errors=[{"field": "cursor", "reason": "not a cursor this API returned (pass next_cursor as is)"}],
    )
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        opened, case_id = json.loads(raw)
        at = datetime.fromisoformat(opened)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if not isinstance(case_id, str) or at.tzinfo is None:
        raise bad
    return at, case_id


# --------------------------------------------------------------------------- events


def _event_body_schema() -> dict[str, Any]:
    return {
        "oneOf": [
            {"$ref": COMPONENTS + "Event"},
            {
                "type": "array",
                "items": {"$ref": COMPONENTS + "Event"},
                "maxItems": MAX_EVENTS,
                "description": f"a batch (all or nothing), at most {MAX_EVENTS} events",
            },
        ]
    }


def _event_components() -> dict[str, Any]:
    """The event schema (recobra.schemas) as OpenAPI components: ``Event`` and its parts."""
    schema = event_json_schema()
    defs: dict[str, Any] = schema.pop("$defs")  # type: ignore[assignment]
    schema.pop("$schema", None)

    def relocate(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: relocate(v) for k, v in node.items()}
        if isinstance(node, list):
            return [relocate(v) for v in node]
        if isinstance(node, str) and node.startswith("#/$defs/"):
            return COMPONENTS + node.removeprefix("#/$defs/")
        return node

    components = {name: relocate(value) for name, value in defs.items()}
    components["Event"] = relocate(schema)
    return components


def _document_events(app: FastAPI) -> None:
    """Add the event schemas to the OpenAPI components (the events route reads its
    body itself, so that every error names its field as recobra.schemas does)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, value in _event_components().items():
            if schemas.setdefault(name, value) != value:
                raise RuntimeError(f"OpenAPI component {name!r} is defined twice, differently")
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _invalid_events(problems: list[tuple[str, str]]) -> Problem:
    return Problem(
        422,
        "Invalid events",
        "nothing was written; every problem is listed",
        errors=[{"field": f, "reason": r} for f, r in problems],
    )


def _too_large() -> Problem:
    return Problem(413, "Body too large", f"send at most {MAX_BODY_BYTES // (1024 * 1024)} MiB per request")


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Problem(
            413, "Body too large", f"send at most {MAX_BODY_BYTES // (1024 * 1024)} MiB per request"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


SMALL_BODY = 64 * 1024
"""Bodies up to this size are parsed on the event loop; larger ones in a worker thread."""


def _parse(text: str) -> list[Command]:
    if not text.strip():
        raise _invalid_events([("(json)", "empty body: send one event object or a JSON array of events")])
    try:
        commands = parse_events_text(text, source="request body")
    except EventError as exc:
        raise _invalid_events(exc.problems) from None
    if len(commands) > MAX_EVENTS:
        raise _invalid_events([("events", f"at most {MAX_EVENTS} events per request, got {len(commands)}")])
    return commands


async def _ingest(services: Services, text: str) -> tuple[list[Command], list[HandleResult]]:
    """Check every event, then apply them all (or none) in a transaction shared with
    concurrent requests (recobra.web.ingest); immediate retries run after the commit."""
    commands = _parse(text) if len(text) <= SMALL_BODY else await run_in_threadpool(_parse, text)
    if not commands:
        return commands, []
    try:
        handled = await services.group_commit.submit(commands)
    except ConcurrentUpdate:
        raise Problem(
            409, "Conflict", "cases changed while the events were applied; send them again"
        ) from None
    if any(isinstance(c, PaymentMethodUpdated) for c in commands):
        await run_in_threadpool(services.engine.run_immediate_retries, commands, handled)
    return commands, handled


def _ingest_response(handled: list[HandleResult]) -> Response:
    """``IngestResult`` as JSON, written directly: these few plain fields need no model
    validation on the busiest route (the OpenAPI document still shows the model)."""
    duplicates = sum(r.duplicate for r in handled)
    body = {
        "applied": len(handled) - duplicates,
        "duplicates": duplicates,
        "results": [
            {"id": r.event_id, "duplicate": r.duplicate, "case_ids": list(r.case_ids), "note": r.note}
            for r in handled
        ],
    }
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return Response(text, media_type="application/json")


# --------------------------------------------------------------------------- routes

Responses = dict[int | str, dict[str, Any]]
UNAUTHORIZED: Responses = {
    401: problem_doc(UNAUTHORIZED_RESPONSE["description"], headers=UNAUTHORIZED_RESPONSE["headers"])
}
INVALID: Responses = {422: problem_doc("Invalid input: `errors` names each field and the reason.")}
NOT_FOUND: Responses = {404: problem_doc("No such resource.")}


def no_nul_characters(request: Request) -> None:
    """Refuse NUL characters in path and query parameters (``422`` naming each): no id
    holds one, and PostgreSQL cannot even compare text with one."""
    params = [*request.path_params.items(), *request.query_params.multi_items()]
    bad = sorted({name for name, value in params if isinstance(value, str) and "\x00" in value})
    if bad:
        raise Problem(
            422,
            "Invalid request",
            "some fields are invalid",
            errors=[{"field": name, "reason": "must not contain NUL characters"} for name in bad],
        )


ServicesDep = Annotated[Services, Depends(get_services)]
KeyDep = Annotated[str, Depends(require_api_key)]
CaseId = Annotated[str, Path(min_length=1, max_length=160, description="e.g. case_in_1042")]


router = APIRouter(
    prefix=PREFIX,
    tags=["api"],
    dependencies=[Depends(require_api_key), Depends(no_nul_characters)],
    responses=UNAUTHORIZED,
)


@router.post(
    "/events",
    summary="Send events (one object or a batch): all or nothing",
    responses={
        **INVALID,
        409: problem_doc("A worker changed the same cases meanwhile: send the batch again."),
        413: problem_doc(f"The body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB."),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "One event, or an array of events (docs/events.md).",
            "content": {"application/json": {"schema": _event_body_schema()}},
        }
    },
    response_model=IngestResult,
)
async def post_events(request: Request, services: Annotated[Services, Depends(services_now)]) -> Response:
    body = await _read_body(request)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_events([("(json)", "the body is not UTF-8 text")]) from None
    metrics = metrics_of(request.app)
    try:
        commands, handled = await _ingest(services, text)
    except Problem as problem:
        if problem.status == 422 and metrics is not None:
            metrics.rejected.inc()
        raise
    if metrics is not None:
        metrics.ingested([type(c).__name__ for c in commands], [r.duplicate for r in handled])
    return _ingest_response(handled)


@router.get("/cases", summary="List cases, newest first", responses=INVALID)
def list_cases(
    services: ServicesDep,
    status: Annotated[CaseStatus | None, Query(description="only cases in this status")] = None,
    customer_id: Annotated[
        str | None, Query(min_length=1, max_length=128, description="only this customer's cases")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="cases per page")] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Query(max_length=1000, description="`next_cursor` of the previous page")
    ] = None,
) -> CasePage:
    stmt = select(CaseRow)
    if status is not None:
        stmt = stmt.where(CaseRow.status == status.value)
    if customer_id is not None:
        stmt = stmt.where(CaseRow.customer_id == customer_id)
    if cursor:
        opened, last_id = _decode_cursor(cursor)
        stmt = stmt.where(
            or_(CaseRow.opened_at < opened, and_(CaseRow.opened_at == opened, CaseRow.id < last_id))
        )
    stmt = stmt.order_by(CaseRow.opened_at.desc(), CaseRow.id.desc()).limit(limit + 1)
    with Session(services.store.engine) as session:
        rows = list(session.scalars(stmt))
    more = len(rows) > limit
    rows = rows[:limit]
    return CasePage(
        data=[_case_summary(r) for r in rows],
        next_cursor=_encode_cursor(rows[-1]) if more and rows else None,
    )


@router.get(
    "/cases/{case_id}",
    summary="A case with its timeline and attempts",
    responses={**NOT_FOUND, **INVALID},
)
def get_case(case_id: CaseId, services: ServicesDep) -> CaseDetail:
    with Session(services.store.engine) as session:
        detail = _case_detail(session, case_id)
    if detail is None:
        raise Problem(404, "Not found", f"no case {case_id!r}")
    return detail


@router.post(
    "/cases/{case_id}/write-off",
    summary="Write a case off: no more retries or final action; the invoice is uncollectible",
    responses={
        **NOT_FOUND,
        **INVALID,
        409: problem_doc("The case is already closed."),
    },
)
def write_off(case_id: CaseId, body: WriteOffIn, services: ServicesDep, key_id: KeyDep) -> CaseDetail:
    key = get_key(services.store.engine, key_id)
    operator = f"API key {key.name!r} ({key_id})" if key else f"API key {key_id}"
    try:
        services.engine.write_off(case_id, services.now(), reason=body.reason.strip(), operator=operator)
    except LookupError:
        raise Problem(404, "Not found", f"no case {case_id!r}") from None
    except IllegalTransition:
        with Session(services.store.engine) as session:
            row = session.get(CaseRow, case_id)
        status = row.status if row else "closed"
        raise Problem(
            409, "Case closed", f"the case is {status}: only open or exhausted cases can be written off"
        ) from None
    except ConcurrentUpdate:
        raise Problem(409, "Conflict", "the case changed meanwhile: try again") from None
    except ValueError as exc:
        raise Problem(
            422,
            "Invalid request",
            "some fields are invalid",
            errors=[{"field": "reason", "reason": str(exc).removeprefix("reason: ")}],
        ) from None
    with Session(services.store.engine) as session:
        detail = _case_detail(session, case_id)
    assert detail is not None
    return detail


@router.get(
    "/customers/{customer_id}",
    summary="A customer: subscriptions, payment methods, preferences and newest cases",
    responses={**NOT_FOUND, **INVALID},
)
def get_customer(
    customer_id: Annotated[str, Path(min_length=1, max_length=128)], services: ServicesDep
) -> CustomerOut:
    with Session(services.store.engine) as session:
        customer = session.get(CustomerRow, customer_id)
        if customer is None:
            raise Problem(404, "Not found", f"no customer {customer_id!r}")
        prefs = session.get(ContactPreferenceRow, customer_id)
        subscriptions = session.execute(
            select(SubscriptionRow, PlanRow)
            .join(PlanRow, PlanRow.id == SubscriptionRow.plan_id)
            .where(SubscriptionRow.customer_id == customer_id)
            .order_by(SubscriptionRow.started_at, SubscriptionRow.id)
        ).all()
        methods = session.scalars(
            select(PaymentMethodRow)
            .where(PaymentMethodRow.customer_id == customer_id)
            .order_by(PaymentMethodRow.is_default.desc(), PaymentMethodRow.id)
        ).all()
        cases = session.scalars(
            select(CaseRow)
            .where(CaseRow.customer_id == customer_id)
            .order_by(CaseRow.opened_at.desc(), CaseRow.id.desc())
            .limit(CUSTOMER_CASES)
        ).all()
        return CustomerOut(
            id=customer.id,
            email=customer.email,
            name=customer.name,
            phone=customer.phone,
            locale=customer.locale,
            timezone=customer.timezone,
            country=customer.country,
            created_at=customer.created_at,
            preferences=PreferencesOut.model_validate(prefs) if prefs else None,
            subscriptions=[
                SubscriptionOut(
                    id=sub.id,
                    status=SubscriptionStatus(sub.status),
                    plan=PlanOut.model_validate(plan),
                    started_at=sub.started_at,
                    renews_at=sub.renews_at,
                )
                for sub, plan in subscriptions
            ],
            payment_methods=[PaymentMethodOut.model_validate(m) for m in methods],
            cases=[_case_summary(c) for c in cases],
        )


def include(app: FastAPI) -> None:
    """Add the ``/api/v1`` routes to ``app``."""
    from recobra.web import api_policies, api_resources  # noqa: PLC0415 - they import this module

    auth.install(app)
    _document_events(app)
    app.include_router(router)
    app.include_router(api_resources.router)
    app.include_router(api_policies.router)


__all__ = ["PREFIX", "include"]
