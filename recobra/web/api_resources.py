"""The operator's REST API, ``/api/v1``: customers, subscriptions, invoices, payment
methods and charge attempts, each a list (filters, cursor pagination) and a lookup.

The same conventions as recobra.web.api: an API key on every route, problem+json
errors naming the field, amounts as ``amount_minor`` with ``currency``. Lists are
keyset-paginated; a cursor names the list it belongs to, so a cursor of one list
passed to another is a ``422`` naming ``cursor``. Never a card number: payment
methods show brand, last four digits, expiry and funding only.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from recobra.domain.model import AttemptStatus, InvoiceStatus, SubscriptionStatus
from recobra.store.tables import (
    AttemptRow,
    CaseRow,
    CustomerRow,
    InvoiceRow,
    PaymentMethodRow,
    PlanRow,
    SubscriptionRow,
)
from recobra.web.api import (
    DEFAULT_LIMIT,
    INVALID,
    MAX_LIMIT,
    NOT_FOUND,
    PREFIX,
    UNAUTHORIZED,
    AttemptOut,
    Model,
    PaymentMethodOut,
    PlanOut,
    ServicesDep,
    SubscriptionOut,
    _attempt,
    no_nul_characters,
)
from recobra.web.auth import require_api_key
from recobra.web.problems import Problem
from recobra.web.services import Services

# --------------------------------------------------------------------------- models


class CustomerSummary(Model):
    """A customer as Recobra learnt of them from their events."""

    id: str = Field(examples=["cus_1042"])
    email: str
    name: str
    phone: str | None
    locale: str = Field(description="the customer's language (es, en)")
    timezone: str = Field(description="IANA time zone, e.g. America/Bogota")
    country: str = Field(description="ISO 3166-1 alpha-2")
    created_at: datetime | None


class CustomerPage(BaseModel):
    """One page of customers, by id; ``next_cursor`` is null on the last page."""

    data: list[CustomerSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: no more")


class SubscriptionDetail(SubscriptionOut):
    """A subscription with its plan (price in minor units) and its customer."""

    customer_id: str


class SubscriptionPage(BaseModel):
    """One page of subscriptions, newest first (by `started_at`)."""

    data: list[SubscriptionDetail]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: no more")


class InvoiceOut(Model):
    """An invoice as the billing system reported it, and its dunning case if one opened."""

    id: str = Field(examples=["in_1042"])
    customer_id: str
    subscription_id: str | None
    amount_minor: int = Field(description="the amount in minor units (cents)", examples=[4900])
    currency: str = Field(description="ISO 4217", examples=["USD"])
    status: InvoiceStatus
    created_at: datetime
    paid_at: datetime | None
    case_id: str | None = Field(description="the dunning case of this invoice (null: none opened)")


class InvoicePage(BaseModel):
    """One page of invoices, newest first (by `created_at`)."""

    data: list[InvoiceOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: no more")


class PaymentMethodDetail(PaymentMethodOut):
    """A payment method and its customer: brand, last four digits, expiry and funding;
    never a card number, and never the gateway's token."""

    customer_id: str


class PaymentMethodPage(BaseModel):
    """One page of payment methods, by id."""

    data: list[PaymentMethodDetail]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: no more")


class AttemptDetail(AttemptOut):
    """A charge attempt with its case and the amount charged."""

    id: int = Field(description="the attempt's id", examples=[5321])
    case_id: str
    invoice_id: str
    customer_id: str
    amount_minor: int = Field(description="the amount charged, in minor units", examples=[4900])
    currency: str = Field(description="ISO 4217", examples=["USD"])


class AttemptPage(BaseModel):
    """One page of attempts, newest first (by `at`)."""

    data: list[AttemptDetail]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: no more")


# --------------------------------------------------------------------------- cursors


def bad_cursor() -> Problem:
    return Problem(
        422,
        "Invalid request",
        "some fields are invalid",
        errors=[{"field": "cursor", "reason": "not a cursor this API returned (pass next_cursor as is)"}],
    )


def encode_cursor(kind: str, *values: str | int | datetime) -> str:
    """An opaque position in list ``kind``: the sort key of the last item returned."""
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    raw = json.dumps([kind, *plain], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(kind: str, cursor: str, shape: Sequence[type]) -> list[Any]:
    """The sort key ``encode_cursor(kind, ...)`` wrote, typed by ``shape``; a ``422``
    naming ``cursor`` for anything else (another list's cursor included)."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise bad_cursor() from None
    if not isinstance(data, list) or len(data) != len(shape) + 1 or data[0] != kind:
        raise bad_cursor()
    values: list[Any] = []
    for value, expected in zip(data[1:], shape, strict=True):
        if expected is datetime:
            try:
                at = datetime.fromisoformat(value)
            except (TypeError, ValueError):
                raise bad_cursor() from None
            if at.tzinfo is None:
                raise bad_cursor()
            try:
                values.append(at.astimezone(UTC))
            except OverflowError:  # year 1 or 9999 with an offset
                raise bad_cursor() from None
        elif expected is int:
            if not isinstance(value, int) or isinstance(value, bool) or abs(value) >= 2**63:
                raise bad_cursor()
            values.append(value)
        else:
            if not isinstance(value, str):
                raise bad_cursor()
            values.append(value)
    return values


def after_desc(
    column: InstrumentedAttribute[Any], tie: InstrumentedAttribute[Any], values: list[Any]
) -> ColumnElement[bool]:
    """Rows after (``column``, ``tie``) in descending order of both."""
    return or_(column < values[0], and_(column == values[0], tie < values[1]))


def _keyset_page(
    services: Services,
    stmt: Any,
    kind: str,
    cursor: str | None,
    limit: int,
    order: tuple[InstrumentedAttribute[Any], ...],
    shape: Sequence[type],
) -> tuple[list[Any], str | None]:
    """One page of ``stmt``'s rows, after ``cursor``, and the cursor of the next page
    (None on the last). ``order`` is the sort key of the row's first entity: an id
    alone (ascending), or a column and an id to break ties (both descending)."""
    if len(order) == 1:
        if cursor:
            (last_id,) = decode_cursor(kind, cursor, shape)
            stmt = stmt.where(order[0] > last_id)
        stmt = stmt.order_by(order[0])
    else:
        if cursor:
            stmt = stmt.where(after_desc(order[0], order[1], decode_cursor(kind, cursor, shape)))
        stmt = stmt.order_by(order[0].desc(), order[1].desc())
    with Session(services.store.engine) as session:
        rows = list(session.execute(stmt.limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(kind, *(getattr(rows[-1][0], column.key) for column in order))


# --------------------------------------------------------------------------- row -> model


def _subscription(sub: SubscriptionRow, plan: PlanRow) -> SubscriptionDetail:
    return SubscriptionDetail(
        id=sub.id,
        customer_id=sub.customer_id,
        status=SubscriptionStatus(sub.status),
        plan=PlanOut.model_validate(plan),
        started_at=sub.started_at,
        renews_at=sub.renews_at,
    )


def _first_or_404(services: Services, stmt: Any, missing: str) -> Any:
    """The first row ``stmt`` selects, or a 404 problem whose detail is ``missing``."""
    with Session(services.store.engine) as session:
        row = session.execute(stmt).first()
    if row is None:
        raise Problem(404, "Not found", missing)
    return row


def _invoice(row: InvoiceRow, case_id: str | None) -> InvoiceOut:
    return InvoiceOut(
        id=row.id,
        customer_id=row.customer_id,
        subscription_id=row.subscription_id,
        amount_minor=row.amount_minor,
        currency=row.currency,
        status=InvoiceStatus(row.status),
        created_at=row.created_at,
        paid_at=row.paid_at,
        case_id=case_id,
    )


def _attempt_detail(row: AttemptRow, case: CaseRow) -> AttemptDetail:
    return AttemptDetail(
        **_attempt(row).model_dump(),
        id=row.id,
        case_id=row.case_id,
        invoice_id=case.invoice_id,
        customer_id=case.customer_id,
        amount_minor=case.amount_minor,
        currency=case.currency,
    )


# --------------------------------------------------------------------------- routes

router = APIRouter(
    prefix=PREFIX,
    tags=["api"],
    dependencies=[Depends(require_api_key), Depends(no_nul_characters)],
    responses=UNAUTHORIZED,
)

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")]
Cursor = Annotated[str | None, Query(max_length=1000, description="`next_cursor` of the previous page")]
CustomerFilter = Annotated[
    str | None, Query(min_length=1, max_length=128, description="only this customer's")
]
Id = Annotated[str, Path(min_length=1, max_length=128)]


@router.get("/customers", summary="List customers, by id", responses=INVALID)
def list_customers(
    services: ServicesDep,
    email: Annotated[
        str | None,
        Query(min_length=1, max_length=320, description="only customers with this email (any case)"),
    ] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> CustomerPage:
    stmt = select(CustomerRow)
    if email is not None:
        # Billing systems keep the case the customer typed; people do not remember it.
        stmt = stmt.where(func.lower(CustomerRow.email) == func.lower(email.strip()))
    rows, after = _keyset_page(services, stmt, "customers", cursor, limit, (CustomerRow.id,), [str])
    return CustomerPage(data=[CustomerSummary.model_validate(c) for (c,) in rows], next_cursor=after)


@router.get("/subscriptions", summary="List subscriptions, newest first", responses=INVALID)
def list_subscriptions(
    services: ServicesDep,
    customer_id: CustomerFilter = None,
    status: Annotated[
        SubscriptionStatus | None, Query(description="only subscriptions in this status")
    ] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> SubscriptionPage:
    stmt = select(SubscriptionRow, PlanRow).join(PlanRow, PlanRow.id == SubscriptionRow.plan_id)
    if customer_id is not None:
        stmt = stmt.where(SubscriptionRow.customer_id == customer_id)
    if status is not None:
        stmt = stmt.where(SubscriptionRow.status == status.value)
    order = (SubscriptionRow.started_at, SubscriptionRow.id)
    rows, after = _keyset_page(services, stmt, "subscriptions", cursor, limit, order, [datetime, str])
    return SubscriptionPage(data=[_subscription(sub, plan) for sub, plan in rows], next_cursor=after)


@router.get(
    "/subscriptions/{subscription_id}",
    summary="A subscription with its plan",
    responses={**NOT_FOUND, **INVALID},
)
def get_subscription(subscription_id: Id, services: ServicesDep) -> SubscriptionDetail:
    stmt = (
        select(SubscriptionRow, PlanRow)
        .join(PlanRow, PlanRow.id == SubscriptionRow.plan_id)
        .where(SubscriptionRow.id == subscription_id)
    )
    return _subscription(*_first_or_404(services, stmt, f"no subscription {subscription_id!r}"))


def _invoices() -> Any:
    return select(InvoiceRow, CaseRow.id).outerjoin(CaseRow, CaseRow.invoice_id == InvoiceRow.id)


@router.get("/invoices", summary="List invoices, newest first", responses=INVALID)
def list_invoices(
    services: ServicesDep,
    customer_id: CustomerFilter = None,
    subscription_id: Annotated[
        str | None, Query(min_length=1, max_length=128, description="only this subscription's")
    ] = None,
    status: Annotated[InvoiceStatus | None, Query(description="only invoices in this status")] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> InvoicePage:
    stmt = _invoices()
    if customer_id is not None:
        stmt = stmt.where(InvoiceRow.customer_id == customer_id)
    if subscription_id is not None:
        stmt = stmt.where(InvoiceRow.subscription_id == subscription_id)
    if status is not None:
        stmt = stmt.where(InvoiceRow.status == status.value)
    order = (InvoiceRow.created_at, InvoiceRow.id)
    rows, after = _keyset_page(services, stmt, "invoices", cursor, limit, order, [datetime, str])
    return InvoicePage(data=[_invoice(inv, case_id) for inv, case_id in rows], next_cursor=after)


@router.get(
    "/invoices/{invoice_id}",
    summary="An invoice, with its dunning case's id",
    responses={**NOT_FOUND, **INVALID},
)
def get_invoice(invoice_id: Id, services: ServicesDep) -> InvoiceOut:
    stmt = _invoices().where(InvoiceRow.id == invoice_id)
    return _invoice(*_first_or_404(services, stmt, f"no invoice {invoice_id!r}"))


@router.get("/payment-methods", summary="List payment methods, by id", responses=INVALID)
def list_payment_methods(
    services: ServicesDep,
    customer_id: CustomerFilter = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> PaymentMethodPage:
    stmt = select(PaymentMethodRow)
    if customer_id is not None:
        stmt = stmt.where(PaymentMethodRow.customer_id == customer_id)
    order = (PaymentMethodRow.id,)
    rows, after = _keyset_page(services, stmt, "payment-methods", cursor, limit, order, [str])
    return PaymentMethodPage(data=[PaymentMethodDetail.model_validate(m) for (m,) in rows], next_cursor=after)


@router.get(
    "/payment-methods/{payment_method_id}",
    summary="A payment method: brand, last four digits, expiry, funding",
    responses={**NOT_FOUND, **INVALID},
)
def get_payment_method(payment_method_id: Id, services: ServicesDep) -> PaymentMethodDetail:
    with Session(services.store.engine) as session:
        row = session.get(PaymentMethodRow, payment_method_id)
        if row is None:
            raise Problem(404, "Not found", f"no payment method {payment_method_id!r}")
        return PaymentMethodDetail.model_validate(row)


@router.get("/attempts", summary="List charge attempts, newest first", responses=INVALID)
def list_attempts(
    services: ServicesDep,
    case_id: Annotated[
        str | None, Query(min_length=1, max_length=160, description="only this case's attempts")
    ] = None,
    status: Annotated[AttemptStatus | None, Query(description="only attempts with this outcome")] = None,
    since: Annotated[
        AwareDatetime | None,
        Query(description="only attempts at or after this time (ISO 8601 with a zone)"),
    ] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> AttemptPage:
    stmt = select(AttemptRow, CaseRow).join(CaseRow, CaseRow.id == AttemptRow.case_id)
    if case_id is not None:
        stmt = stmt.where(AttemptRow.case_id == case_id)
    if status is not None:
        stmt = stmt.where(AttemptRow.status == status.value)
    if since is not None:
        try:
            since = since.astimezone(UTC)
        except OverflowError:
            raise Problem(
                422,
                "Invalid request",
                "some fields are invalid",
                errors=[{"field": "since", "reason": "out of range"}],
            ) from None
        stmt = stmt.where(AttemptRow.at >= since)
    order = (AttemptRow.at, AttemptRow.id)
    rows, after = _keyset_page(services, stmt, "attempts", cursor, limit, order, [datetime, int])
    return AttemptPage(data=[_attempt_detail(a, c) for a, c in rows], next_cursor=after)


@router.get(
    "/attempts/{attempt_id}",
    summary="A charge attempt with its outcome and codes",
    responses={**NOT_FOUND, **INVALID},
)
def get_attempt(
    attempt_id: Annotated[int, Path(ge=1, le=2**31 - 1, description="the attempt's id")],
    services: ServicesDep,
) -> AttemptDetail:
    stmt = (
        select(AttemptRow, CaseRow)
        .join(CaseRow, CaseRow.id == AttemptRow.case_id)
        .where(AttemptRow.id == attempt_id)
    )
    return _attempt_detail(*_first_or_404(services, stmt, f"no attempt {attempt_id}"))


__all__ = ["after_desc", "bad_cursor", "decode_cursor", "encode_cursor", "router"]
