"""Turns a due outbox message into something a channel can send: the facts of the
case and customer, the templates in their language, signed links, the address."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from babel import Locale, UnknownLocaleError

from recobra.domain.case import CaseStatus, NextAction
from recobra.domain.messages import ChannelKind, MessageKind
from recobra.domain.policy import PolicySet
from recobra.engine.campaigns import card_expiry_end
from recobra.messages.links import LinkSigner
from recobra.messages.render import MessageContext, Rendered, Renderer
from recobra.ports import MessageBundle, OutgoingMessage, PolicySource

LINK_TTL = timedelta(days=21)
"""The shortest life of a customer's link."""
LINK_GRACE = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Sender:
    """Who the messages are from, and for how long a canceled customer's data is kept."""

    company_name: str
    support_email: str
    data_retention_days: int = 60


def cldr_locale(language: str, country: str) -> str:
    """``es`` + ``MX`` -> ``es_MX`` when CLDR knows it (amounts and dates as locals write
    them), else the bare language."""
    try:
        Locale.parse(f"{language}_{country}")
    except (UnknownLocaleError, ValueError):
        return language
    return f"{language}_{country}"


class TemplateComposer:
    """The ``MessageComposer`` port on Jinja2 templates and signed links."""

    def __init__(
        self,
        renderer: Renderer,
        links: LinkSigner,
        policies: PolicySet,
        sender: Sender,
        *,
        source: PolicySource | None = None,
    ) -> None:
        self.renderer = renderer
        self.links = links
        self.policies = policies
        self.sender = sender
        # When given, the active stored version replaces ``policies`` (see the engine).
        self.source = source

    def context(self, bundle: MessageBundle, now: datetime) -> MessageContext:
        entry, case, customer = bundle.entry, bundle.case, bundle.customer
        note = entry.context
        policies = self.source.active() if self.source else self.policies
        if case and self.source and case.policy_version != policies.version:
            policies_of_case = self.source.version(case.policy_version) or policies
        else:
            policies_of_case = policies
        policy = policies_of_case.policies.get(case.policy_name) if case else None
        subject = case.id if case else customer.id
        method = bundle.payment_method

        final_at = case.opened_at + policy.final_offset if case and policy else None
        # A link lives at least until what the message is about (the final action, the
        # renewal, the card's expiry), and a week more.
        horizon = final_at or bundle.renews_at
        if entry.kind is MessageKind.CARD_EXPIRING and method is not None:
            horizon = card_expiry_end(method, customer.timezone)
        ttl = max(LINK_TTL, horizon - now + LINK_GRACE) if horizon else LINK_TTL
        if entry.kind in (MessageKind.SUBSCRIPTION_CANCELED, MessageKind.WIN_BACK):
            # The way back stays open as long as the customer's data is kept.
            ttl = max(ttl, timedelta(days=self.sender.data_retention_days))

        def link(purpose: str, who: str = subject) -> str:
            return self.links.make(purpose, who, now=now, ttl=ttl, extra={"message": entry.key})

        benefits_by_plan = policies.benefits
        per_locale = benefits_by_plan.get(bundle.plan_id or "") or benefits_by_plan.get("*") or {}
        canceled = entry.kind in (MessageKind.SUBSCRIPTION_CANCELED, MessageKind.WIN_BACK)
        # Leaving and coming back act on a subscription: their links name it (the
        # hosted pages also accept a case or customer id, as older links carried).
        subscription = (
            (case.subscription_id if case else None)
            or note.get("for_subscription")
            or note.get("subscription")
            or subject
        )
        closed_at = case.closed_at if case and case.status is CaseStatus.CANCELED else None
        return MessageContext(
            customer_name=customer.name,
            locale=cldr_locale(customer.locale, customer.country),
            timezone=customer.timezone,
            company_name=self.sender.company_name,
            support_email=self.sender.support_email,
            plan_name=bundle.plan_name or self.sender.company_name,
            amount=case.amount if case else None,
            card_brand=method.brand if method else None,
            card_last4=method.last4 if method else None,
            decline_category=str(case.last_decline.category) if case else None,
            failed_at=case.opened_at if case else None,
            next_retry_at=(case.next_action_at if case and case.next_action is NextAction.RETRY else None),
            final_action=str(policy.final_action) if policy else None,
            final_action_at=final_at,
            renewal_at=bundle.renews_at,
            card_expires=f"{method.exp_month:02d}/{method.exp_year}" if method else None,
            benefits=tuple(per_locale.get(customer.locale, ())),
            offer=note.get("offer"),
            data_kept_until=(
                (closed_at or now) + timedelta(days=self.sender.data_retention_days) if canceled else None
            ),
            fix_url=None if canceled else link("update_payment"),
            cancel_url=(link("cancel", subscription) if entry.kind is MessageKind.RENEWAL_UPCOMING else None),
            reactivate_url=link("reactivate", subscription) if canceled else None,
            unsubscribe_url=link("unsubscribe", customer.id),
            # The exit survey, unless the customer answered it on the way out.
            survey_url=link("cancel", subscription)
            if entry.kind is MessageKind.SUBSCRIPTION_CANCELED and not note.get("surveyed")
            else None,
        )

    def compose(self, bundle: MessageBundle, now: datetime) -> OutgoingMessage:
        entry, customer = bundle.entry, bundle.customer
        channel = ChannelKind(entry.channel)
        ctx = self.context(bundle, now)
        # Webhook and file channels carry the email rendering.
        template_channel = (
            ChannelKind.EMAIL if channel in (ChannelKind.WEBHOOK, ChannelKind.FILE) else channel
        )
        rendered = self.renderer.render(str(entry.kind), str(template_channel), customer.locale, ctx)
        subject, text, html = _parts(rendered, channel)
        data: dict[str, object] = {
            "kind": str(entry.kind),
            "case_id": entry.case_id,
            "customer_id": customer.id,
            "link": rendered.link,
        }
        if channel is ChannelKind.IN_APP:
            data["cta"] = rendered.in_app_cta
        if channel is ChannelKind.VOICE:
            data["offer_sms_link"] = rendered.link is not None
        to = {
            ChannelKind.EMAIL: customer.email,
            ChannelKind.SMS: customer.phone or "",
            ChannelKind.VOICE: customer.phone or "",
            ChannelKind.PUSH: bundle.push_subscription or "",
        }.get(channel, customer.id)
        return OutgoingMessage(
            key=entry.key,
            customer_id=customer.id,
            kind=str(entry.kind),
            channel=str(channel),
            locale=customer.locale,
            to=to,
            subject=subject,
            text=text,
            html=html,
            data=data,
            headers={"List-Unsubscribe-URL": ctx.unsubscribe_url or ""},
        )


def _parts(rendered: Rendered, channel: ChannelKind) -> tuple[str, str, str]:
    """(subject, text, html) for a channel from its rendering."""
    match channel:
        case ChannelKind.SMS:
            return "", rendered.sms or "", ""
        case ChannelKind.VOICE:
            return "", rendered.voice or "", ""
        case ChannelKind.PUSH:
            return rendered.push_title or "", rendered.push_body or "", ""
        case ChannelKind.IN_APP:
            return rendered.in_app_title or "", rendered.in_app_body or "", ""
        case _:
            return rendered.subject or "", rendered.text or "", rendered.html or ""
