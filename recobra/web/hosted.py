"""Hosted pages customers reach from their messages, with no login: the signed,
expiring link is the credential, and it is good for one purpose and one subject.

``/p/update_payment/{token}``: what is owed and why, in plain words; a new card; the
payment is retried at once and the page says how it went. The link is spent when
the payment is recovered (a reused link then gets a clear page and changes nothing);
after a decline the customer can try another card with the same link.

With the simulated gateway the form stands in for a real card widget: it asks only
for what may be kept (network, last four digits, expiry) and lets the demo choose
the bank's answer. With the Stripe gateway, Stripe's Payment Element replaces the
form (``recobra.stripe.hosted``): the card goes from the browser to Stripe, Stripe
sends the customer back to ``/p/update_payment/{token}/stripe``, and the new card is
retried at once. No card number ever reaches this server.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse

from recobra.domain.case import CaseStatus
from recobra.domain.model import Funding, PaymentMethod
from recobra.engine.commands import PaymentMethodUpdated
from recobra.messages.formatting import describe_decline
from recobra.messages.links import SignedLink
from recobra.web.hosted_text import TEXT
from recobra.web.pages import CSP, amount, common, language, link_problem, notice, page, verify
from recobra.web.services import Services, ServicesDep

BRANDS = (
    ("visa", "Visa"),
    ("mastercard", "Mastercard"),
    ("amex", "American Express"),
    ("other", "Other / Otra"),
)

def _case_view(svc: Services, link: SignedLink) -> dict[str, Any] | None:
    with svc.store.unit_of_work() as uow:
        bundles = uow.load_bundles([link.subject], svc.now())
        if link.extra.get("message"):
            uow.record_click(link.extra["message"], svc.now())
            uow.commit()
        if not bundles:
            return None
        bundle = bundles[0]
        plan = svc.settings.company_name
        if bundle.case.subscription_id:
            plan = uow.plan_name(bundle.case.subscription_id) or plan
        used = uow.link_used(link.nonce)
    return {"bundle": bundle, "plan": plan, "used": used}


router = APIRouter(include_in_schema=False)


@router.get("/p/update_payment/{token}")
def update_payment_page(
    token: str, request: Request, svc: ServicesDep
) -> HTMLResponse:
    link = verify(request, svc, token, "update_payment")
    if isinstance(link, HTMLResponse):
        return link
    view = _case_view(svc, link)
    return _render_update(request, svc, token, view, form={}, errors={}, link=link)


def _render_update(
    request: Request,
    svc: Services,
    token: str,
    view: dict[str, Any] | None,
    *,
    form: dict[str, str],
    errors: dict[str, str],
    status: int = 200,
    link: SignedLink | None = None,
) -> HTMLResponse:
    customer_locale = view["bundle"].customer.locale if view else None
    lang = language(request, customer_locale)
    if view is None:
        return link_problem(request, svc, lang, "invalid", 404)
    if view["used"]:
        return link_problem(request, svc, lang, "used", 410)
    bundle = view["bundle"]
    case, customer, method = bundle.case, bundle.customer, bundle.payment_method
    t = TEXT[lang]
    shared = common(request, svc, lang)
    if not case.is_active:
        return notice(request, svc, lang, t["nothing_owed_title"], t["nothing_owed"])
    locale = f"{lang}_{customer.country}"
    stripe_page: dict[str, Any] = {"stripe": None}
    csp = CSP
    if svc.engine.gateway.name == "stripe" and link is not None:
        from recobra.stripe import hosted as stripe_hosted  # noqa: PLC0415 - the SDK loads only for Stripe

        nonce = secrets.token_urlsafe(16)
        try:
            element = stripe_hosted.element(
                svc.engine.gateway,  # type: ignore[arg-type]
                case,
                nonce=link.nonce,
                return_url=f"{svc.settings.public_url.rstrip('/')}/p/update_payment/{token}/stripe?lang={lang}",
            )
        except stripe_hosted.ElementUnavailable:
            return _stripe_unavailable(request, svc, lang, f"/p/update_payment/{token}?lang={lang}")
        stripe_page = {"stripe": element, "nonce": nonce, "stripe_locale": lang}
        csp = stripe_hosted.content_security_policy(nonce)
    return page(
        "update_payment.html.j2",
        status,
        csp=csp,
        **stripe_page,
        **shared,
        title=t["title_update"],
        amount=amount(case.amount, locale, lang),
        plan=view["plan"],
        reason=describe_decline(case.last_decline.category, lang),
        card_brand=method.brand.title() if method else None,
        card_last4=method.last4 if method else None,
        action=f"/p/update_payment/{token}?lang={lang}",
        brands=BRANDS,
        simulated=svc.engine.gateway.name == "simulated",
        form={"brand": "visa", "last4": "", "exp_month": "", "exp_year": "", "outcome": "ok", **form},
        errors=errors,
    )


def _year(raw: str) -> int:
    """The expiry year as typed (``31``, ``031`` or ``2031``), 0 when it is not one.
    The check and the stored card both use this one reading."""
    year = int(raw) if raw.isdigit() else 0
    return year + 2000 if 0 < year < 100 else year


def _validate(form: dict[str, str], now: datetime, t: dict[str, str]) -> dict[str, str]:
    errors: dict[str, str] = {}
    if form["brand"] not in {b for b, _ in BRANDS}:
        errors["brand"] = t["err_brand"]
    if not (len(form["last4"]) == 4 and form["last4"].isdigit()):
        errors["last4"] = t["err_last4"]
    month = int(form["exp_month"]) if form["exp_month"].isdigit() else 0
    year = _year(form["exp_year"])
    if not 1 <= month <= 12:
        errors["exp_month"] = t["err_month"]
    if not now.year <= year <= now.year + 20:
        errors["exp_year"] = t["err_year"] if not year or year > now.year else t["err_expired"]
    elif year == now.year and 1 <= month < now.month:
        errors["exp_month"] = t["err_expired"]
    return errors


@router.post("/p/update_payment/{token}")
def update_payment_submit(
    token: str,
    request: Request,
    svc: ServicesDep,
    brand: Annotated[str, Form(max_length=20)] = "",
    last4: Annotated[str, Form(max_length=8)] = "",
    exp_month: Annotated[str, Form(max_length=4)] = "",
    exp_year: Annotated[str, Form(max_length=6)] = "",
    outcome: Annotated[str, Form(max_length=10)] = "ok",
) -> HTMLResponse:
    link = verify(request, svc, token, "update_payment")
    if isinstance(link, HTMLResponse):
        return link
    view = _case_view(svc, link)
    form = {
        "brand": brand,
        "last4": last4.strip(),
        "exp_month": exp_month.strip(),
        "exp_year": exp_year.strip(),
        "outcome": outcome,
    }
    if view is None or view["used"] or not view["bundle"].case.is_active:
        return _render_update(request, svc, token, view, form=form, errors={})
    if svc.engine.gateway.name == "stripe":
        # Cards are entered in Stripe's element, never posted here.
        return _render_update(request, svc, token, view, form={}, errors={}, link=link)
    bundle = view["bundle"]
    lang = language(request, bundle.customer.locale)
    t = TEXT[lang]
    now = svc.now()
    errors = _validate(form, now, t)
    if errors:
        return _render_update(request, svc, token, view, form=form, errors=errors, status=422)

    year = _year(form["exp_year"])
    reference = secrets.token_hex(8)
    simulated = svc.engine.gateway.name == "simulated"
    gateway_token = (
        ("tok_sim_ok" if outcome != "declined" else "tok_sim_decline_insufficient_funds")
        if simulated
        else f"tok_hosted_{reference}"
    )
    case = bundle.case
    method = PaymentMethod(
        id=f"pm_hosted_{reference}",
        customer_id=case.customer_id,
        gateway_token=gateway_token,
        brand=form["brand"],
        last4=form["last4"],
        exp_month=int(form["exp_month"]),
        exp_year=year,
        funding=Funding.UNKNOWN,
        is_default=True,
    )
    # The engine retries every open case of the customer at once with the new card.
    svc.engine.handle(PaymentMethodUpdated(f"hosted:{reference}", now, method))
    return _result(request, svc, token, link, view, lang)


def _result(
    request: Request, svc: Services, token: str, link: SignedLink, view: dict[str, Any], lang: str
) -> HTMLResponse:
    """The page after a new card was retried: paid (the link is spent) or declined."""
    bundle = view["bundle"]
    case = bundle.case
    t = TEXT[lang]
    now = svc.now()
    with svc.store.unit_of_work() as uow:
        after = uow.load_bundles([case.id], now)[0].case
        if after.status is CaseStatus.RECOVERED:
            uow.use_link(link.nonce, link.purpose, link.subject, now)
            uow.commit()
    if after.status is CaseStatus.RECOVERED:
        owed = amount(case.amount, f"{lang}_{bundle.customer.country}", lang)
        return notice(
            request, svc, lang, t["recovered_title"], t["recovered"].format(amount=owed, plan=view["plan"])
        )
    return notice(
        request,
        svc,
        lang,
        t["declined_title"],
        t["declined"].format(reason=describe_decline(after.last_decline.category, lang)),
        402,
        again_url=f"/p/update_payment/{token}?lang={lang}",
    )


@router.get("/p/update_payment/{token}/stripe")
def update_payment_stripe_return(
    token: str, request: Request, svc: ServicesDep
) -> HTMLResponse:
    """Where Stripe sends the customer back after the element confirmed (or failed)."""
    link = verify(request, svc, token, "update_payment")
    if isinstance(link, HTMLResponse):
        return link
    view = _case_view(svc, link)
    stripe_gateway = svc.engine.gateway.name == "stripe"
    if not stripe_gateway or view is None or view["used"] or not view["bundle"].case.is_active:
        return _render_update(request, svc, token, view, form={}, errors={}, link=link)
    from recobra.stripe import hosted as stripe_hosted  # noqa: PLC0415

    bundle = view["bundle"]
    lang = language(request, bundle.customer.locale)
    t = TEXT[lang]
    params = {k: v for k, v in request.query_params.items() if k in ("setup_intent", "payment_intent")}
    try:
        back = stripe_hosted.returned(
            svc.engine.gateway, svc.engine, bundle.case, params, svc.now()  # type: ignore[arg-type]
        )
    except LookupError:
        return link_problem(request, svc, lang, "invalid", 404)
    except stripe_hosted.ElementUnavailable:
        return _stripe_unavailable(request, svc, lang, f"{request.url.path}?{request.url.query}")
    if back.command is not None:
        svc.engine.handle(back.command)
        return _result(request, svc, token, link, view, lang)
    kind = "stripe_processing" if back.state == "processing" else "stripe_failed"
    return notice(
        request,
        svc,
        lang,
        t[f"{kind}_title"],
        t[kind],
        202 if back.state == "processing" else 402,
        again_url=f"/p/update_payment/{token}?lang={lang}",
    )


# ---------------------------------------------------------------- unsubscribe
# Every email carries this link in List-Unsubscribe; mail clients may POST to it
# directly ("List-Unsubscribe=One-Click", RFC 8058), which must unsubscribe at once.


def _stripe_unavailable(request: Request, svc: Services, lang: str, again_url: str) -> HTMLResponse:
    t = TEXT[lang]
    body = t["stripe_unavailable"].format(support=svc.settings.support_email)
    return notice(request, svc, lang, t["stripe_unavailable_title"], body, 503, again_url=again_url)


def _customer_language(request: Request, svc: Services, customer_id: str) -> str:
    with svc.store.unit_of_work() as uow:
        return language(request, uow.customer_locale(customer_id))


@router.get("/p/unsubscribe/{token}")
def unsubscribe_page(
    token: str, request: Request, svc: ServicesDep
) -> HTMLResponse:
    link = verify(request, svc, token, "unsubscribe")
    if isinstance(link, HTMLResponse):
        return link
    lang = _customer_language(request, svc, link.subject)
    t = TEXT[lang]
    return page(
        "unsubscribe.html.j2",
        **common(request, svc, lang),
        title=t["unsubscribe_title"],
        action=f"/p/unsubscribe/{token}?lang={lang}",
    )


@router.post("/p/unsubscribe/{token}")
def unsubscribe(
    token: str, request: Request, svc: ServicesDep
) -> HTMLResponse:
    link = verify(request, svc, token, "unsubscribe")
    if isinstance(link, HTMLResponse):
        return link
    with svc.store.unit_of_work() as uow:
        if not uow.known_customers([link.subject]):
            return link_problem(request, svc, language(request, None), "invalid", 404)
        uow.set_preferences(link.subject, svc.now(), unsubscribed=True)
        if link.extra.get("message"):
            uow.record_click(link.extra["message"], svc.now())
        uow.commit()
    lang = _customer_language(request, svc, link.subject)
    t = TEXT[lang]
    return notice(request, svc, lang, t["unsubscribed_title"], t["unsubscribed"])


def include(app: FastAPI) -> None:
    app.include_router(router)
