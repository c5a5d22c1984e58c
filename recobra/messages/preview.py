"""Render one message with sample data, for operators to look at before sending."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from recobra.domain.messages import ChannelKind, MessageKind
from recobra.domain.money import Money
from recobra.messages.links import LinkSigner
from recobra.messages.render import MessageContext, Renderer, TemplateProblem

# A fixed instant and a throwaway key: previews must look the same every time and
# their links must never be valid anywhere.
_NOW = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
_PREVIEW_SECRET = "preview-only-links-are-never-valid-anywhere"


class PreviewError(ValueError):
    """Unknown kind, channel or locale, or a template that does not render."""


@dataclass(frozen=True, slots=True)
class Preview:
    parts: list[tuple[str, str]]
    html: str | None


def sample_context(kind: MessageKind, locale: str) -> MessageContext:
    spanish = locale.startswith("es")
    links = LinkSigner(_PREVIEW_SECRET, "https://billing.example.com")

    def link(purpose: str) -> str:
        return links.make(purpose, "case_preview", now=_NOW, ttl=timedelta(days=14))

    canceled = kind in (MessageKind.SUBSCRIPTION_CANCELED, MessageKind.WIN_BACK)
    return MessageContext(
        customer_name="Ana" if spanish else "Alex",
        locale=locale if "_" in locale else ("es_MX" if spanish else "en_US"),
        timezone="America/Mexico_City" if spanish else "America/New_York",
        company_name="Acme Cloud",
        support_email="ayuda@example.com" if spanish else "help@example.com",
        plan_name="Pro",
        amount=Money(29900, "MXN") if spanish else Money(1900, "USD"),
        card_brand="visa",
        card_last4="4242",
        decline_category="insufficient_funds",
        failed_at=_NOW,
        next_retry_at=_NOW + timedelta(days=3),
        final_action="cancel",
        final_action_at=_NOW + timedelta(days=28),
        renewal_at=_NOW + timedelta(days=30),
        card_expires="12/2026",
        benefits=(
            ("Tus 1.240 fotos a salvo", "Soporte prioritario")
            if spanish
            else ("Your 1,240 photos kept safe", "Priority support")
        ),
        offer="20% de descuento en tu próximo año" if spanish else "20% off your next year",
        data_kept_until=(_NOW + timedelta(days=60)).date() if canceled else None,
        fix_url=link("update_payment"),
        cancel_url=link("cancel"),
        reactivate_url=link("reactivate"),
        unsubscribe_url=link("unsubscribe"),
        survey_url=link("cancel"),
    )


def preview(kind: str, *, locale: str, channel: str, templates: Path | None = None) -> Preview:
    try:
        message_kind = MessageKind(kind)
    except ValueError:
        raise PreviewError(f"unknown message kind {kind!r}; one of {', '.join(MessageKind)}") from None
    try:
        channel_kind = ChannelKind(channel)
    except ValueError:
        raise PreviewError(f"unknown channel {channel!r}; one of {', '.join(ChannelKind)}") from None
    if templates is not None and not templates.is_dir():
        raise PreviewError(f"--templates: {templates} is not a folder")
    try:
        ctx = sample_context(message_kind, locale)
        rendered = Renderer(templates).render(kind, channel, locale, ctx)
    except (TemplateProblem, ValueError) as exc:
        raise PreviewError(str(exc)) from None
    parts = [
        (name, value)
        for name, value in (
            ("subject", rendered.subject),
            ("text", rendered.text),
            ("sms", rendered.sms),
            ("voice", rendered.voice),
            ("push title", rendered.push_title),
            ("push body", rendered.push_body),
            ("in-app title", rendered.in_app_title),
            ("in-app body", rendered.in_app_body),
            ("in-app button", rendered.in_app_cta),
        )
        if value
    ]
    return Preview(parts, rendered.html if channel_kind is ChannelKind.EMAIL else None)
