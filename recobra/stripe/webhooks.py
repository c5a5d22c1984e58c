"""``POST /webhooks/stripe``: Stripe's events, verified, stored, answered, processed.

In this order (https://docs.stripe.com/webhooks#verify-events):

1. verify the ``Stripe-Signature`` header with the SDK (HMAC-SHA256 over the raw
   body, constant-time comparison, timestamps outside the tolerance refused):
   400 when it does not verify;
2. 400 when the body is not a Stripe event;
3. events of another connected account are answered and not stored;
4. an event id already stored is answered 200 and dropped;
5. the event is stored and answered 200 at once; it is processed from the store
   right after the answer and, should that fail, by the worker loop. Stripe never
   waits on a charge or on Stripe's own API.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import stripe
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from recobra.stripe.gateway import StripeGateway
from recobra.stripe.inbox import EventProcessor, Inbox
from recobra.web.problems import Problem
from recobra.web.services import Services, get_services

log = logging.getLogger(__name__)

MAX_BODY = 1_000_000  # Stripe's events are far smaller; anything bigger is not one

router = APIRouter(include_in_schema=False)


def stripe_gateway(svc: Services) -> StripeGateway:
    """The service's Stripe gateway; 404 when Stripe is not the configured gateway."""
    gateway = svc.engine.gateway
    if not isinstance(gateway, StripeGateway):
        raise Problem(404, "Not configured", "Stripe is not the configured gateway")
    return gateway


def _event(text: str) -> dict[str, Any]:
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Problem(400, "Bad payload", f"the body is not JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(event, dict) or event.get("object") != "event":
        raise Problem(400, "Bad payload", "the body is not a Stripe event (object: event)")
    problems = []
    if not isinstance(event.get("id"), str) or not event["id"]:
        problems.append("id: a non-empty string is required")
    if not isinstance(event.get("type"), str) or not event["type"]:
        problems.append("type: a non-empty string is required")
    if not isinstance(event.get("created"), int) or isinstance(event.get("created"), bool):
        problems.append("created: Unix seconds are required")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        problems.append("data.object: an object is required")
    if problems:
        raise Problem(400, "Bad payload", "; ".join(problems))
    return event


def process_stored(svc: Services) -> None:
    """Process pending events (runs after the answer has been sent)."""
    gateway = stripe_gateway(svc)
    try:
        EventProcessor(svc.engine, gateway.settings, gateway.client).process_pending(svc.now())
    except Exception:  # the worker loop picks the events up again
        log.exception("processing Stripe events after the answer failed")


@router.post("/webhooks/stripe")
async def stripe_webhook(
    request: Request, background: BackgroundTasks, svc: Annotated[Services, Depends(get_services)]
) -> JSONResponse:
    gateway = stripe_gateway(svc)
    secret = gateway.settings.webhook_secret
    if not secret:
        raise Problem(404, "Not configured", "the Stripe webhook secret (webhook_secret) is not configured")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise Problem(400, "Bad payload", "the body is too large for a Stripe event")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(400, "Bad payload", "the body is not UTF-8") from None
    try:
        stripe.WebhookSignature.verify_header(
            text, request.headers.get("Stripe-Signature"), secret, gateway.settings.webhook_tolerance_s
        )
    except stripe.SignatureVerificationError as exc:
        raise Problem(400, "Bad signature", str(exc.user_message or exc).split(".")[0]) from None
    event = _event(text)
    account = gateway.settings.account
    if account and event.get("account") not in (None, account):
        return JSONResponse({"received": True, "stored": False, "reason": "another account's event"})
    inbox = Inbox(svc.store.engine)
    fresh = await run_in_threadpool(inbox.add, event, text, svc.now())
    if fresh:
        background.add_task(process_stored, svc)
    return JSONResponse({"received": True, "stored": fresh, "duplicate": not fresh})


def include(app: FastAPI) -> None:
    app.include_router(router)
