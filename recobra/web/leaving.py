"""The customer's way out and back: hosted pages with no login, the signed link being
the credential (see ``recobra.web.hosted``).

``/p/cancel/{token}``: the reason (exit survey: a reason, an optional comment, which
"other" requires, and the choice to answer anonymously), then the save offer the
operator configured for that reason (``[save_offers]`` in the policy file) or a last
confirmation, then a Basecamp-style page: canceled, no further charges or emails,
what happens to the data and until when, how to come back, thanks. Declining cancels
through the gateway and the engine (every open case stops, nothing more is sent but
the confirmation email); accepting pauses, discounts or moves to the cheaper plan.
Either way one ``exit_surveys`` row is written and the link is spent. For a
subscription that is already canceled (the link in the confirmation email of a
cancellation made elsewhere) the page asks only the survey.

``/p/reactivate/{token}``: a canceled or paused subscription comes back in one step;
an invoice still owed is retried at once, and a decline leads to the update-payment page.

Forms are POSTed, validated here (422 with the message next to the field) and safe
to submit twice: each change is an engine event whose id comes from the link, so a
repeat is a duplicate, and the link is spent in the same transaction as the survey.
Links name a subscription; a case or customer id (older links) resolves to its
subscription.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse

from recobra.domain.errors import DomainError
from recobra.domain.leaving import (
    CANCELABLE,
    REACTIVATABLE,
    ExitAnswer,
    ExitReason,
    OfferKind,
    SaveOffer,
    Standing,
    add_months,
    offer_for,
)
from recobra.domain.model import Customer, Plan, SubscriptionStatus
from recobra.domain.money import Money
from recobra.engine.commands import (
    DiscountGranted,
    PlanChanged,
    SubscriptionCanceled,
    SubscriptionPaused,
    SubscriptionReactivated,
)
from recobra.engine.service import ReactivationOutcome
from recobra.messages.composer import cldr_locale
from recobra.messages.formatting import format_date
from recobra.messages.links import SignedLink
from recobra.ports import GatewayError
from recobra.store.sql import SqlUnitOfWork
from recobra.web.leaving_text import TEXT
from recobra.web.pages import amount, common, language, link_problem, notice, page, verify
from recobra.web.services import Services, ServicesDep

REACTIVATE_TTL = timedelta(days=90)
"""The least life of the reactivate link on the confirmation page (the data retention
period when longer)."""
UPDATE_PAYMENT_TTL = timedelta(days=14)
REASONS = tuple(r.value for r in ExitReason)

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True, slots=True)
class _Journey:
    """What a leaving page knows once its link is verified."""

    link: SignedLink
    standing: Standing
    customer: Customer
    used: bool
    lang: str
    t: dict[str, str]
    locale: str
    """CLDR locale for amounts and dates (``es_MX``)."""

    @property
    def subscription_id(self) -> str:
        return self.standing.subscription.id

    @property
    def status(self) -> SubscriptionStatus:
        return self.standing.subscription.status


def _subscription_of(uow: SqlUnitOfWork, subject: str) -> str | None:
    """Links name a subscription; older ones a case or a customer."""
    if uow.standing(subject) is not None:
        return subject
    return uow.case_subscription(subject) or uow.latest_subscription(subject)


def _open(request: Request, svc: Services, token: str, purpose: str) -> _Journey | HTMLResponse:
    """The journey of a good link not yet spent, or the page that says why not (a
    spent link changes nothing, and the page says where the subscription stands)."""
    link = verify(request, svc, token, purpose)
    if isinstance(link, HTMLResponse):
        return link
    now = svc.now()
    with svc.store.unit_of_work() as uow:
        subscription_id = _subscription_of(uow, link.subject)
        standing = uow.standing(subscription_id) if subscription_id else None
        customer = uow.customer(standing.subscription.customer_id) if standing else None
        if link.extra.get("message"):
            uow.record_click(link.extra["message"], now)
            uow.commit()
        used = uow.link_used(link.nonce)
    if standing is None or customer is None:
        return link_problem(request, svc, language(request, None), "invalid", 404)
    lang = language(request, customer.locale)
    j = _Journey(link, standing, customer, used, lang, TEXT[lang], cldr_locale(lang, customer.country))
    return _used(request, svc, j) if used else j


def _context(request: Request, svc: Services, j: _Journey, **extra: Any) -> dict[str, Any]:
    return {**common(request, svc, j.lang), "t": j.t, **extra}


def _final(request: Request, svc: Services, j: _Journey, **extra: Any) -> dict[str, Any]:
    """A page that ends a journey: its link is spent, so no language switch (it would
    open the spent link)."""
    return {**_context(request, svc, j, **extra), "switch_url": None}


def _notice(
    request: Request,
    svc: Services,
    j: _Journey,
    title: str,
    body: str,
    status: int = 200,
    *,
    final: bool = False,
) -> HTMLResponse:
    extra = {"t": j.t, **({"switch_url": None} if final else {})}
    return notice(request, svc, j.lang, title, body, status, **extra)


def _used(request: Request, svc: Services, j: _Journey) -> HTMLResponse:
    """A spent link: changes nothing, and says where the subscription stands."""
    state = {
        SubscriptionStatus.CANCELED: "used_status_canceled",
        SubscriptionStatus.PAUSED: "used_status_paused",
    }.get(j.status, "used_status_active")
    body = f"{j.t['used'].format(support=svc.settings.support_email)} {j.t[state]}"
    return _notice(request, svc, j, j.t["used_title"], body, 410)


def _price(j: _Journey, standing: Standing | None = None) -> str:
    plan = (standing or j.standing).subscription.plan
    return _money(plan.price, j)


def _money(money: Money, j: _Journey) -> str:
    return amount(money, j.locale, j.lang)


def _date(moment: datetime, j: _Journey) -> str:
    return format_date(moment, j.locale, j.customer.timezone)


def _count(j: _Journey, n: int, unit: str) -> str:
    return j.t[f"{unit}_1"] if n == 1 else j.t[f"{unit}_n"].format(n=n)


# ---------------------------------------------------------------- cancel


def _action(j: _Journey, token: str, purpose: str = "cancel") -> str:
    return f"/p/{purpose}/{token}?lang={j.lang}"


def _render_reason(
    request: Request,
    svc: Services,
    j: _Journey,
    token: str,
    *,
    form: dict[str, Any],
    errors: dict[str, str],
    status: int = 200,
) -> HTMLResponse:
    plan = j.standing.subscription.plan.name
    survey_only = j.status not in CANCELABLE
    title = j.t["survey_title"] if survey_only else j.t["cancel_title"]
    intro = (
        j.t["survey_intro"].format(plan=plan)
        if survey_only
        else j.t["cancel_intro"].format(plan=plan, price=_price(j))
    )
    return page(
        "cancel_reason.html.j2",
        status,
        **_context(
            request,
            svc,
            j,
            title=title,
            intro=intro,
            action=_action(j, token),
            reasons=REASONS,
            submit=j.t["send_survey"] if survey_only else j.t["continue"],
            form={"reason": "", "comment": "", "anonymous": False, **form},
            errors=errors,
        ),
    )


def _answer(form: dict[str, Any], t: dict[str, str]) -> ExitAnswer | dict[str, str]:
    """The checked survey answer, or the errors by field."""
    try:
        reason = ExitReason(form["reason"])
    except ValueError:
        return {"reason": t["err_reason"]}
    try:
        return ExitAnswer(reason, form["comment"], anonymous=form["anonymous"])
    except DomainError as exc:
        long = len(form["comment"].strip()) > 2000
        return {exc.field: t["err_comment_long"] if long else t["err_comment_other"]}


def _offer(svc: Services, j: _Journey, reason: ExitReason) -> SaveOffer | None:
    offers = svc.engine.policies.save_offers
    wanted = offers.get(reason)
    with svc.store.unit_of_work() as uow:
        plans = uow.plans([wanted.plan_id]) if wanted and wanted.plan_id else {}
    offer = offer_for(reason, offers, current=j.standing.subscription.plan, plans=plans)
    if offer is not None and offer.kind is OfferKind.PAUSE and j.status is SubscriptionStatus.PAUSED:
        return None  # already taking a break
    return offer


def _plan(svc: Services, plan_id: str | None) -> Plan:
    """The plan a downgrade offer moves to (checked when the policy was loaded)."""
    assert plan_id is not None
    with svc.store.unit_of_work() as uow:
        return uow.plans([plan_id])[plan_id]


def _offer_words(svc: Services, j: _Journey, offer: SaveOffer, now: datetime) -> tuple[str, str]:
    """(what the offer gives, its button's label) in the customer's language."""
    t = j.t
    match offer.kind:
        case OfferKind.PAUSE:
            until = add_months(now, offer.months)
            text = t["offer_pause"].format(months=_count(j, offer.months, "months"), date=_date(until, j))
            return text, t["accept_pause"]
        case OfferKind.DISCOUNT:
            text = t["offer_discount"].format(
                percent=offer.percent, cycles=_count(j, offer.cycles, "invoices")
            )
            return text, t["accept_discount"]
        case OfferKind.DOWNGRADE:
            plan = _plan(svc, offer.plan_id)
            text = t["offer_downgrade"].format(plan=plan.name, price=_money(plan.price, j), current=_price(j))
            return text, t["accept_downgrade"].format(plan=plan.name)


@router.get("/p/cancel/{token}")
def cancel_page(token: str, request: Request, svc: ServicesDep) -> HTMLResponse:
    j = _open(request, svc, token, "cancel")
    if isinstance(j, HTMLResponse):
        return j
    return _render_reason(request, svc, j, token, form={}, errors={})


@router.post("/p/cancel/{token}")
def cancel_step(
    token: str,
    request: Request,
    svc: ServicesDep,
    # No length limits here: a long value gets the page's own message next to its
    # field (the comment is capped by the domain), not a bare validation error.
    step: Annotated[str, Form()] = "reason",
    reason: Annotated[str, Form()] = "",
    comment: Annotated[str, Form()] = "",
    anonymous: Annotated[str, Form()] = "",
    decision: Annotated[str, Form()] = "",
) -> HTMLResponse:
    j = _open(request, svc, token, "cancel")
    if isinstance(j, HTMLResponse):
        return j
    t = j.t
    form: dict[str, Any] = {"reason": reason, "comment": comment, "anonymous": bool(anonymous)}
    answer = _answer(form, t)
    if not isinstance(answer, ExitAnswer):
        return _render_reason(request, svc, j, token, form=form, errors=answer, status=422)
    now = svc.now()
    form["comment"] = answer.comment

    if j.status not in CANCELABLE:
        # Already canceled (elsewhere): only the survey.
        _finish(svc, j, answer, offer=None, outcome="canceled", now=now)
        return _notice(request, svc, j, t["surveyed_title"], t["surveyed"], final=True)

    offer = _offer(svc, j, answer.reason)
    shown = _context(request, svc, j, action=_action(j, token), form=form, errors={})
    if step == "reason":
        return _decision_page(svc, j, shown, offer, now)
    if decision == "accept" and step == "offer" and offer is not None:
        return _accept(request, svc, j, answer, offer, now)
    if decision == "decline" and step in ("offer", "confirm"):
        return _cancel(request, svc, j, answer, offer, now)
    return _decision_page(
        svc, j, {**shown, "errors": {"decision": t["err_decision"]}}, offer, now, status=422
    )


def _decision_page(
    svc: Services,
    j: _Journey,
    context: dict[str, Any],
    offer: SaveOffer | None,
    now: datetime,
    status: int = 200,
) -> HTMLResponse:
    """The second step: the save offer for the reason given, or a last confirmation."""
    t = j.t
    if offer is None:
        intro = t["confirm_intro"].format(plan=j.standing.subscription.plan.name)
        return page("cancel_confirm.html.j2", status, **context, title=t["confirm_title"], intro=intro)
    text, label = _offer_words(svc, j, offer, now)
    return page(
        "cancel_offer.html.j2",
        status,
        **context,
        title=t["offer_title"],
        offer_text=text,
        accept_label=label,
    )


def _event_id(j: _Journey) -> str:
    """One id per link: a second submission is a duplicate the engine ignores."""
    return f"hosted:{j.link.purpose}:{j.link.nonce}"


def _finish(
    svc: Services, j: _Journey, answer: ExitAnswer, *, offer: SaveOffer | None, outcome: str, now: datetime
) -> None:
    """Spend the link and write the survey row, once (a double submit writes nothing more)."""
    with svc.store.unit_of_work() as uow:
        if not uow.use_link(j.link.nonce, j.link.purpose, j.link.subject, now):
            return
        sub = j.standing.subscription
        uow.add_exit_survey(
            customer_id=None if answer.anonymous else sub.customer_id,
            subscription_id=None if answer.anonymous else sub.id,
            plan_id=sub.plan.id,
            reason=answer.reason.value,
            comment=answer.comment,
            locale=j.lang,
            offer=offer.kind.value if offer else None,
            outcome=outcome,
            at=now,
        )
        uow.commit()


def _gateway_problem(request: Request, svc: Services, j: _Journey) -> HTMLResponse:
    body = j.t["gateway"].format(support=svc.settings.support_email)
    return _notice(request, svc, j, j.t["gateway_title"], body, 503)


def _cancel(
    request: Request,
    svc: Services,
    j: _Journey,
    answer: ExitAnswer,
    offer: SaveOffer | None,
    now: datetime,
) -> HTMLResponse:
    # The survey answer stays out of the engine's records: an anonymous answer must
    # not be linkable to the customer through the cancellation's reason.
    command = SubscriptionCanceled(
        _event_id(j), now, j.subscription_id, reason="on the hosted cancel page", surveyed=True
    )
    try:
        svc.engine.customer_change(command)
    except GatewayError:
        return _gateway_problem(request, svc, j)
    _finish(svc, j, answer, offer=offer, outcome="canceled", now=now)
    retention = timedelta(days=svc.settings.data_retention_days)
    back = svc.links.token("reactivate", j.subscription_id, now=now, ttl=max(REACTIVATE_TTL, retention))
    return page(
        "cancel_done.html.j2",
        **_final(
            request,
            svc,
            j,
            title=j.t["canceled_title"],
            kept_until=_date(now + retention, j),
            support=svc.settings.support_email,
            reactivate_url=f"/p/reactivate/{back}?lang={j.lang}",
        ),
    )


def _accept(
    request: Request, svc: Services, j: _Journey, answer: ExitAnswer, offer: SaveOffer, now: datetime
) -> HTMLResponse:
    t, sub_id, why = j.t, j.subscription_id, "save offer accepted on the hosted cancel page"
    command: SubscriptionPaused | DiscountGranted | PlanChanged
    match offer.kind:
        case OfferKind.PAUSE:
            until = add_months(now, offer.months)
            command = SubscriptionPaused(_event_id(j), now, sub_id, until, reason=why)
            done = t["saved_pause"].format(date=_date(until, j))
        case OfferKind.DISCOUNT:
            command = DiscountGranted(_event_id(j), now, sub_id, offer.percent, offer.cycles, reason=why)
            done = t["saved_discount"].format(
                percent=offer.percent, cycles=_count(j, offer.cycles, "invoices")
            )
        case OfferKind.DOWNGRADE:
            plan = _plan(svc, offer.plan_id)
            command = PlanChanged(_event_id(j), now, sub_id, plan.id, reason=why)
            done = t["saved_downgrade"].format(plan=plan.name, price=_money(plan.price, j))
    try:
        svc.engine.customer_change(command)
    except GatewayError:
        return _gateway_problem(request, svc, j)
    _finish(svc, j, answer, offer=offer, outcome="saved", now=now)
    return _notice(request, svc, j, t["saved_title"], f"{done} {t['saved_email']}", final=True)


# ---------------------------------------------------------------- reactivate


@router.get("/p/reactivate/{token}")
def reactivate_page(token: str, request: Request, svc: ServicesDep) -> HTMLResponse:
    j = _open(request, svc, token, "reactivate")
    if isinstance(j, HTMLResponse):
        return j
    t = j.t
    if j.status not in REACTIVATABLE:
        return _notice(request, svc, j, t["already_active_title"], t["already_active"])
    sub = j.standing.subscription
    lines = [t["reactivate_intro"].format(plan=sub.plan.name, price=_price(j))]
    if j.status is SubscriptionStatus.PAUSED and j.standing.paused_until:
        lines.append(t["reactivate_paused"].format(date=_date(j.standing.paused_until, j)))
    with svc.store.unit_of_work() as uow:
        owed = uow.unpaid_case(sub.id)
        method = uow.default_payment_method(sub.customer_id) if owed else None
    if owed is not None:
        brand, last4 = (method.brand.title(), method.last4) if method else ("", "")
        lines.append(t["reactivate_owed"].format(amount=_money(owed.amount, j), brand=brand, last4=last4))
    return page(
        "reactivate.html.j2",
        **_context(
            request,
            svc,
            j,
            title=t["reactivate_title"],
            heading=t["reactivate_title"],
            lines=lines,
            action=_action(j, token, "reactivate"),
            update_url=None,
        ),
    )


@router.post("/p/reactivate/{token}")
def reactivate(token: str, request: Request, svc: ServicesDep) -> HTMLResponse:
    j = _open(request, svc, token, "reactivate")
    if isinstance(j, HTMLResponse):
        return j
    t, now = j.t, svc.now()
    sub = j.standing.subscription
    if j.status not in REACTIVATABLE:
        return _notice(request, svc, j, t["already_active_title"], t["already_active"])
    result = svc.engine.reactivate(
        SubscriptionReactivated(_event_id(j), now, sub.id, reason="on the hosted reactivate page")
    )
    if result.outcome is ReactivationOutcome.ACTIVE:
        with svc.store.unit_of_work() as uow:
            uow.use_link(j.link.nonce, j.link.purpose, j.link.subject, now)
            uow.commit()
        body = (
            t["reactivated_paid"].format(amount=_money(result.paid, j), plan=sub.plan.name)
            if result.paid
            else t["reactivated"].format(plan=sub.plan.name)
        )
        return _reactivate_result(request, svc, j, t["reactivated_title"], [body], None, final=True)
    # Declined now, or a repeated submission of an attempt that was declined: the
    # invoice's case waits for a new payment method.
    with svc.store.unit_of_work() as uow:
        case = uow.active_cases(subscription_id=sub.id)
    if case:
        fix = svc.links.token("update_payment", case[0].id, now=now, ttl=UPDATE_PAYMENT_TTL)
        return _reactivate_result(
            request,
            svc,
            j,
            t["reactivate_declined_title"],
            [t["reactivate_declined"]],
            f"/p/update_payment/{fix}?lang={j.lang}",
            status=402,
        )
    return _notice(request, svc, j, t["already_active_title"], t["already_active"])


def _reactivate_result(
    request: Request,
    svc: Services,
    j: _Journey,
    heading: str,
    lines: list[str],
    update_url: str | None,
    status: int = 200,
    *,
    final: bool = False,
) -> HTMLResponse:
    context = _final if final else _context
    return page(
        "reactivate.html.j2",
        status,
        **context(
            request, svc, j, title=heading, heading=heading, lines=lines, action=None, update_url=update_url
        ),
    )


def include(app: FastAPI) -> None:
    app.include_router(router)
