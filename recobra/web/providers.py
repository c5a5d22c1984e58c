"""Webhooks from messaging providers: Twilio's inbound SMS (STOP and START replies) and
the voice menu's "press 1 to receive the link by SMS".

Both check Twilio's signature (``X-Twilio-Signature``) with the SMS channel's auth
token against the public URL Twilio was given (``public_url`` + path), and answer
TwiML. They exist only when the SMS or voice channel is configured.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import VoiceResponse

from recobra.channels.twilio import handle_gather, parse_inbound_sms, validate_twilio_signature
from recobra.domain.messages import ChannelKind
from recobra.engine.commands import SmsReceived
from recobra.settings import resolve_secrets
from recobra.web.problems import Problem
from recobra.web.services import Services, get_services

TWIML = "application/xml"

router = APIRouter(prefix="/webhooks/twilio", include_in_schema=False)


async def _verified_form(request: Request, svc: Services, kind: str) -> dict[str, str]:
    settings = resolve_secrets(svc.settings.channel_settings.get(kind, {}))
    token = settings.get("auth_token")
    if not token:
        raise Problem(404, "Not configured", f"the {kind} channel is not configured")
    form = {k: str(v) for k, v in (await request.form()).items()}
    url = svc.settings.public_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    if not validate_twilio_signature(token, url, form, request.headers.get("X-Twilio-Signature", "")):
        raise Problem(403, "Bad signature", "the request is not signed by Twilio for this URL")
    return form


@router.post("/sms")
async def inbound_sms(request: Request, svc: Annotated[Services, Depends(get_services)]) -> Response:
    """A customer's SMS reply: STOP (and its Spanish forms) stops SMS, START resumes it."""
    form = await _verified_form(request, svc, "sms")
    inbound = parse_inbound_sms(form)
    if inbound.is_stop or inbound.is_start:
        svc.engine.handle(
            SmsReceived(
                event_id=f"twilio:{form.get('MessageSid') or form.get('SmsSid') or inbound.from_number}",
                occurred_at=svc.now(),
                phone=inbound.from_number,
                body="STOP" if inbound.is_stop else "START",
            )
        )
    # Twilio answers the standard keywords itself; we add nothing.
    return Response(str(MessagingResponse()), media_type=TWIML)


@router.post("/gather")
async def voice_gather(
    request: Request,
    svc: Annotated[Services, Depends(get_services)],
    key: Annotated[str, Query(min_length=1, max_length=240)],
) -> Response:
    """The customer's answer to the call's menu: 1 sends the message's link by SMS."""
    form = await _verified_form(request, svc, "voice")
    spanish = False
    reply = VoiceResponse()
    if handle_gather(form.get("Digits", ""), key):
        with svc.store.unit_of_work() as uow:
            entry = uow.message_by_key(key)
            if entry is not None:
                spanish = uow.customer_locale(entry.customer_id) == "es"
                # Asked for by the customer: this one SMS needs no standing consent.
                uow.add_messages(
                    [
                        replace(
                            entry,
                            key=f"{entry.key}:sms",
                            channel=ChannelKind.SMS,
                            due_at=svc.now(),
                            fallback=(),
                            fallback_after=None,
                            is_fallback=False,
                            context={**entry.context, "requested_by_customer": "1"},
                        )
                    ]
                )
                uow.commit()
        text = (
            "Te enviamos el enlace por SMS. Gracias."
            if spanish
            else "We are sending you the link by SMS. Thank you."
        )
    else:
        text = "Gracias. Adiós." if spanish else "Thank you. Goodbye."
    reply.say(text, language="es-MX" if spanish else "en-US")
    return Response(str(reply), media_type=TWIML)


# Twilio's final delivery states that mean the SMS or call never reached the customer.
_UNDELIVERED = {"undelivered", "failed", "busy", "no-answer", "canceled"}


@router.post("/status")
async def delivery_status(request: Request, svc: Annotated[Services, Depends(get_services)]) -> Response:
    """Twilio's status callback for SMS and calls: undelivered ones become 'bounced'."""
    form = await _verified_form(request, svc, "sms")
    sid = form.get("MessageSid") or form.get("CallSid") or ""
    status = (form.get("MessageStatus") or form.get("CallStatus") or "").lower()
    if sid and status in _UNDELIVERED:
        reason = f"twilio {status}" + (f" (error {form['ErrorCode']})" if form.get("ErrorCode") else "")
        with svc.store.unit_of_work() as uow:
            uow.record_bounce(provider_id=sid, key=None, reason=reason, at=svc.now())
            uow.commit()
    return Response(status_code=204)


def include(app: FastAPI) -> None:
    app.include_router(router)
