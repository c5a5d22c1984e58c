"""Hosted pages customers reach from their messages, with no login: the signed,
expiring link is the credential, and it is good for one purpose and one subject.

``/p/update_payment/{token}``: what is owed and why, in plain words; a new card; the
payment is retried at once and the page says how it went. The link is spent when
the payment is recovered (a reused link then gets a clear page and changes nothing);
after a decline the customer can try another card with the same link.

Messages sent before anything failed (an expiring card, an annual renewal) carry a
link whose subject is the customer rather than a case. It opens the same page in
card-only mode: the card on file and when it expires, nothing owed, the same form.
The new card becomes the default (and any open case of the customer is retried at
once with it, as above); the link is spent once the card is saved and nothing is
left owed.

With the simulated gateway the form stands in for a real card widget: it asks only
for what may be kept (network, last four digits, expiry) and lets the demo choose
the bank's answer. With the Stripe gateway, Stripe's Payment Element replaces the
form (``recobra.stripe.hosted``): the card goes from the browser to Stripe, Stripe
sends the customer back to ``/p/update_payment/{token}/stripe``, and the new card is
retried at once. No card number ever reaches this server.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse

from recobra.domain.case import CaseStatus, DunningCase
from recobra.domain.model import Customer, Funding, PaymentMethod
from recobra.engine.campaigns import card_expiry_end
from recobra.engine.commands import PaymentMethodUpdated
from recobra.messages.formatting import describe_decline, format_month
from recobra.messages.links import SignedLink
from recobra.web.hosted_text import TEXT
from recobra.web.pages import CSP, amount, common, language, link_problem, notice, page, verify
from recobra.web.services import Services, ServicesDep

if TYPE_CHECKING:
    from recobra.stripe.hosted import CardOnly

BRANDS = (
    ("visa", "Visa"),
    ("mastercard", "Mastercard"),
    ("amex", "American Express"),
    ("other", "Other / Otra"),
)

# A card counts as expiring soon within this long of the end of its expiry month
# (reminders go out 30 and 7 days before it, by default).
EXPIRES_SOON = timedelta(days=45)


def _view(svc: Services, link: SignedLink) -> dict[str, Any] | None:
    """What the link is about: a case (``card_only`` False: what is owed), or a
    known customer (``card_only`` True: a reminder with no case, only the card to
    keep up to date); None when it is neither."""
    now = svc.now()
    with svc.store.unit_of_work() as uow:
        bundles = uow.load_bundles([link.subject], now)
        if link.extra.get("message"):
            uow.record_click(link.extra["message"], now)
            uow.commit()
        used = uow.link_used(link.nonce)
        if bundles:
            bundle = bundles[0]
            plan = svc.settings.company_name
            if bundle.case.subscription_id:
                plan = uow.plan_name(bundle.case.subscription_id) or plan
            return {
                "card_only": False,
                "bundle": bundle,
                "customer": bundle.customer,
                "plan": plan,
                "used": used,
            }
        customer = uow.customer(link.subject)
        if customer is None:
            return None
        return {
            "card_only": True,
            "customer": customer,
            "method": uow.default_payment_method(customer.id),
            # Open (and exhausted) cases the new card will be retried on at once.
            "open_cases": tuple(c.id for c in uow.active_cases(customer_id=customer.id)),
            "used": used,
        }


def _is_open(view: dict[str, Any]) -> bool:
    """Whether the page still has something to do: a case still owed, or a card to update."""
    return bool(view["card_only"] or view["bundle"].case.is_active)


router = APIRouter(include_in_schema=False)


@router.get("/p/update_payment/{token}")
def update_payment_page(token: str, request: Request, svc: ServicesDep) -> HTMLResponse:
    link = verify(request, svc, token, "update_payment")
    if isinstance(link, HTMLResponse):
        return link
    view = _view(svc, link)
    return _render_update(request, svc, token, view, form={}, errors={}, link=link)


def _stripe_element(
    request: Request, svc: Services, token: str, lang: str, link: SignedLink, page_for: DunningCase | CardOnly
) -> dict[str, Any] | HTMLResponse:
    """The template values for Stripe's element (and the page's CSP), or the page
    saying Stripe cannot be reached."""
    from recobra.stripe import hosted as stripe_hosted  # noqa: PLC0415 - the SDK loads only for Stripe

    nonce = secrets.token_urlsafe(16)
    try:
        element = stripe_hosted.element(
            svc.engine.gateway,  # type: ignore[arg-type]
            page_for,
            nonce=link.nonce,
            return_url=f"{svc.settings.public_url.rstrip('/')}/p/update_payment/{token}/stripe?lang={lang}",
        )
    except stripe_hosted.ElementUnavailable:
        return _stripe_unavailable(request, svc, lang, f"/p/update_payment/{token}?lang={lang}")
    return {
        "stripe": element,
        "nonce": nonce,
        "stripe_locale": lang,
        "csp": stripe_hosted.content_security_policy(nonce),
    }


def _card_only(view: dict[str, Any]) -> CardOnly:
    """The Stripe element's subject for a card-only page."""
    from recobra.stripe.hosted import CardOnly  # noqa: PLC0415 - the SDK loads only for Stripe

    method = view["method"]
    return CardOnly(view["customer"].id, method.id if method else None)


def _expiry(
    method: PaymentMethod | None, customer: Customer, lang: str, now: datetime
) -> tuple[str | None, str | None]:
    """The card's expiry as month and year, and ``expired``, ``soon`` or None."""
    if method is None:
        return None, None
    text = format_month(f"{method.exp_month:02d}/{method.exp_year}", lang)
    end = card_expiry_end(method, customer.timezone)
    state = "expired" if end <= now else "soon" if end - now <= EXPIRES_SOON else None
    return text, state


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
    customer_locale = view["customer"].locale if view else None
    lang = language(request, customer_locale)
    if view is None:
        return link_problem(request, svc, lang, "invalid", 404)
    if view["used"]:
        return link_problem(request, svc, lang, "used", 410)
    t = TEXT[lang]
    customer = view["customer"]
    if not _is_open(view):
        return notice(request, svc, lang, t["nothing_owed_title"], t["nothing_owed"])
    card_only = view["card_only"]
    if card_only:
        method = view["method"]
        expiry, expiry_state = _expiry(method, customer, lang, svc.now())
        owed: dict[str, Any] = {
            "title": t["title_card"],
            "amount": None,
            "plan": None,
            "reason": None,
            "pending": bool(view["open_cases"]),
        }
    else:
        case, method = view["bundle"].case, view["bundle"].payment_method
        expiry, expiry_state = None, None
        owed = {
            "title": t["title_update"],
            "amount": amount(case.amount, f"{lang}_{customer.country}", lang),
            "plan": view["plan"],
            "reason": describe_decline(case.last_decline.category, lang),
            "pending": False,
        }
    stripe_page: dict[str, Any] = {"stripe": None, "csp": CSP}
    if svc.engine.gateway.name == "stripe" and link is not None:
        found = _stripe_element(
            request, svc, token, lang, link, _card_only(view) if card_only else view["bundle"].case
        )
        if isinstance(found, HTMLResponse):
            return found
        stripe_page = found
    simulated = svc.engine.gateway.name == "simulated"
    return page(
        "update_payment.html.j2",
        status,
        **stripe_page,
        **common(request, svc, lang),
        **owed,
        card_only=card_only,
        card_brand=method.brand.title() if method else None,
        card_last4=method.last4 if method else None,
        expiry=expiry,
        expiry_state=expiry_state,
        action=f"/p/update_payment/{token}?lang={lang}",
        brands=BRANDS,
        simulated=simulated,
        # The demo's choice of the bank's answer matters only when a payment is retried.
        choose_outcome=simulated and (not card_only or owed["pending"]),
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
    view = _view(svc, link)
    form = {
        "brand": brand,
        "last4": last4.strip(),
        "exp_month": exp_month.strip(),
        "exp_year": exp_year.strip(),
        "outcome": outcome,
    }
    if view is None or view["used"] or not _is_open(view):
        return _render_update(request, svc, token, view, form=form, errors={})
    if svc.engine.gateway.name == "stripe":
        # Cards are entered in Stripe's element, never posted here.
        return _render_update(request, svc, token, view, form={}, errors={}, link=link)
    lang = language(request, view["customer"].locale)
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
    method = PaymentMethod(
        id=f"pm_hosted_{reference}",
        customer_id=view["customer"].id,
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
    if view["card_only"]:
        return _card_result(request, svc, token, link, view, lang, method)
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
    return _declined(request, svc, token, lang, after)


def _declined(request: Request, svc: Services, token: str, lang: str, case: DunningCase) -> HTMLResponse:
    t = TEXT[lang]
    return notice(
        request,
        svc,
        lang,
        t["declined_title"],
        t["declined"].format(reason=describe_decline(case.last_decline.category, lang)),
        402,
        again_url=f"/p/update_payment/{token}?lang={lang}",
    )


def _card_result(
    request: Request,
    svc: Services,
    token: str,
    link: SignedLink,
    view: dict[str, Any],
    lang: str,
    method: PaymentMethod,
) -> HTMLResponse:
    """The page after a card-only update: the card is saved and the link spent, and
    any open case it paid is named. When an open case's retry with it was declined,
    the link stays usable, as on a case's page, so another card can be tried."""
    t = TEXT[lang]
    customer = view["customer"]
    now = svc.now()
    with svc.store.unit_of_work() as uow:
        cases = [b.case for b in uow.load_bundles(list(view["open_cases"]), now)]
        still_owed = [c for c in cases if c.is_active]
        paid = [
            (c, uow.plan_name(c.subscription_id) if c.subscription_id else None)
            for c in cases
            if c.status is CaseStatus.RECOVERED
        ]
        if not still_owed:
            uow.use_link(link.nonce, link.purpose, link.subject, now)
            uow.commit()
    if still_owed:
        return _declined(request, svc, token, lang, still_owed[0])
    body = [t["card_saved"].format(brand=method.brand.title(), last4=method.last4)]
    locale = f"{lang}_{customer.country}"
    body += [
        t["card_saved_recovered"].format(
            amount=amount(c.amount, locale, lang), plan=plan or svc.settings.company_name
        )
        for c, plan in paid
    ]
    return notice(request, svc, lang, t["card_saved_title"], " ".join(body))


@router.get("/p/update_payment/{token}/stripe")
def update_payment_stripe_return(token: str, request: Request, svc: ServicesDep) -> HTMLResponse:
    """Where Stripe sends the customer back after the element confirmed (or failed)."""
    link = verify(request, svc, token, "update_payment")
    if isinstance(link, HTMLResponse):
        return link
    view = _view(svc, link)
    stripe_gateway = svc.engine.gateway.name == "stripe"
    if not stripe_gateway or view is None or view["used"] or not _is_open(view):
        return _render_update(request, svc, token, view, form={}, errors={}, link=link)
    from recobra.stripe import hosted as stripe_hosted  # noqa: PLC0415

    lang = language(request, view["customer"].locale)
    t = TEXT[lang]
    params = {k: v for k, v in request.query_params.items() if k in ("setup_intent", "payment_intent")}
    page_for: DunningCase | CardOnly = _card_only(view) if view["card_only"] else view["bundle"].case
    try:
        back = stripe_hosted.returned(
            svc.engine.gateway,
            svc.engine,
            page_for,
            params,
            svc.now(),  # type: ignore[arg-type]
        )
    except LookupError:
        return link_problem(request, svc, lang, "invalid", 404)
    except stripe_hosted.ElementUnavailable:
        return _stripe_unavailable(request, svc, lang, f"{request.url.path}?{request.url.query}")
    if back.command is not None:
        svc.engine.handle(back.command)
        if view["card_only"] and isinstance(back.command, PaymentMethodUpdated):
            return _card_result(request, svc, token, link, view, lang, back.command.payment_method)
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
def unsubscribe_page(token: str, request: Request, svc: ServicesDep) -> HTMLResponse:
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
def unsubscribe(token: str, request: Request, svc: ServicesDep) -> HTMLResponse:
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
