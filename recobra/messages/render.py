"""Render customer messages from Jinja2 templates, per kind, channel and locale.

Templates live in ``templates/{locale}/{kind}.{part}.j2`` (``locale`` is a language:
``en``, ``es``). Parts: ``subject``, ``txt`` and ``html`` (email; HTML inside the
shared ``_layout.html.j2``), ``sms``, ``voice``, ``push`` (blocks ``title`` and
``body``) and ``in_app`` (blocks ``title``, ``body`` and ``cta``). A folder with the
same layout given as ``override_dir`` wins file by file, and may add languages.

Rendering is strict: an unknown variable is an error (``StrictUndefined``), and
:meth:`Renderer.check` finds missing templates, syntax errors and unknown variables
before anything is sent. Only HTML is autoescaped; its CSS is inlined (css_inline)
because many mail clients drop ``<style>`` blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

import css_inline
import jinja2
from jinja2 import meta, nodes

from recobra.domain.case import FinalAction
from recobra.domain.declines import DeclineCategory
from recobra.domain.messages import TRANSACTIONAL, ChannelKind, MessageKind
from recobra.domain.money import Money
from recobra.messages.formatting import (
    describe_decline,
    format_amount,
    format_date,
    format_month,
    language_of,
    parse_locale,
    to_gsm7,
    zone,
)

__all__ = [
    "BLOCKS",
    "CHANNEL_PARTS",
    "HELPERS",
    "PRIMARY_LINK",
    "REQUIRED",
    "TEMPLATE_DIR",
    "VOICE_KINDS",
    "ContextProblem",
    "MessageContext",
    "Rendered",
    "Renderer",
    "TemplateProblem",
    "template_name",
]

TEMPLATE_DIR = Path(__file__).parent / "templates"
"""The shipped templates, one folder per language."""

CHANNEL_PARTS: Mapping[ChannelKind, tuple[str, ...]] = MappingProxyType(
    {
        ChannelKind.EMAIL: ("subject", "txt", "html"),
        ChannelKind.SMS: ("sms",),
        ChannelKind.VOICE: ("voice",),
        ChannelKind.PUSH: ("push",),
        ChannelKind.IN_APP: ("in_app",),
        # Webhooks and files carry the email's subject and plain text.
        ChannelKind.WEBHOOK: ("subject", "txt"),
        ChannelKind.FILE: ("subject", "txt"),
    }
)
"""The template parts each channel renders."""

BLOCKS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"push": ("title", "body"), "in_app": ("title", "body", "cta")}
)
"""Parts made of named blocks (``{% block title %}...{% endblock %}``)."""

VOICE_KINDS = frozenset(
    {
        MessageKind.PAYMENT_FAILED,
        MessageKind.PAYMENT_REMINDER,
        MessageKind.FINAL_NOTICE,
        MessageKind.CARD_EXPIRING,
    }
)
"""Kinds with a shipped voice script. Every kind ships email, sms, push and in_app."""

REQUIRED: Mapping[MessageKind, tuple[str, ...]] = MappingProxyType(
    {
        MessageKind.CARD_EXPIRING: ("fix_url",),
        MessageKind.RENEWAL_UPCOMING: ("renewal_at", "fix_url"),
        MessageKind.RENEWAL_OFFER: ("offer", "renewal_at", "fix_url"),
        MessageKind.PAYMENT_FAILED: ("fix_url",),
        MessageKind.PAYMENT_REMINDER: ("fix_url",),
        MessageKind.FINAL_NOTICE: ("fix_url", "final_action", "final_action_at"),
        MessageKind.PAYMENT_RECOVERED: (),
        MessageKind.PAYMENT_METHOD_UPDATED: (),
        MessageKind.SUBSCRIPTION_CANCELED: (),
        MessageKind.WIN_BACK: ("reactivate_url", "unsubscribe_url"),
    }
)
"""Context fields a kind cannot be sent without (every other optional field may be None)."""

PRIMARY_LINK: Mapping[MessageKind, str | None] = MappingProxyType(
    {
        MessageKind.CARD_EXPIRING: "fix_url",
        MessageKind.RENEWAL_UPCOMING: "fix_url",
        MessageKind.RENEWAL_OFFER: "fix_url",
        MessageKind.PAYMENT_FAILED: "fix_url",
        MessageKind.PAYMENT_REMINDER: "fix_url",
        MessageKind.FINAL_NOTICE: "fix_url",
        MessageKind.PAYMENT_RECOVERED: None,
        MessageKind.PAYMENT_METHOD_UPDATED: None,
        MessageKind.SUBSCRIPTION_CANCELED: "reactivate_url",
        MessageKind.WIN_BACK: "reactivate_url",
    }
)
"""The context field holding each kind's main link (``Rendered.link``: the target of a
push notification or an in-app button)."""


class TemplateProblem(ValueError):
    """A message cannot be rendered because of its template (or an unknown kind,
    channel or locale). Names all four, and the line when known."""

    def __init__(
        self,
        reason: str,
        *,
        kind: str,
        channel: str,
        locale: str,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        where = f" ({file}{f', line {line}' if line else ''})" if file else ""
        super().__init__(f"cannot render {kind} for {channel} in {locale!r}: {reason}{where}")
        self.kind = kind
        self.channel = channel
        self.locale = locale
        self.file = file
        self.line = line
        self.reason = reason


class ContextProblem(ValueError):
    """The context lacks something the message kind needs (a link, a date ...)."""


_CARD_LAST4 = re.compile(r"[0-9]{4}")


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageContext:
    """Everything a template may say about one customer and one message.

    Built by the engine from the case, customer, subscription and policy. Money
    and dates are given raw; rendering formats them in the customer's locale and
    time zone (see :data:`HELPERS`). Datetimes must be timezone-aware.
    """

    customer_name: str
    """How to greet the customer (a first name, or the full name); ``""`` greets without a name."""
    locale: str
    """The customer's CLDR locale for formatting: ``"es_MX"``, ``"es-CL"``, ``"en_US"``, ``"es"``."""
    timezone: str
    """The customer's IANA time zone (``"America/Bogota"``): dates are shown in it."""
    company_name: str
    """The business sending the message (signature, SMS prefix, voice introduction)."""
    support_email: str
    """Where the customer can write for help."""
    plan_name: str
    """The product or plan, as the customer knows it ("Pro", "Plan Familiar")."""
    amount: Money | None = None
    """The amount due (dunning), to renew (renewal kinds) or collected (recovered)."""
    card_brand: str | None = None
    """Card network of the payment method (``"visa"``, ``"mastercard"``, ``"amex"`` ...)."""
    card_last4: str | None = None
    """Last four digits of the card, never more (exactly four digits)."""
    decline_category: str | None = None
    """A :class:`DeclineCategory` value, explained in plain words; never a raw decline code."""
    failed_at: datetime | None = None
    """When the payment first failed."""
    next_retry_at: datetime | None = None
    """When the engine will retry on its own; None when it will not (the customer must act)."""
    final_action: str | None = None
    """A :class:`FinalAction` value (``cancel``, ``pause``, ``mark_unpaid``) taken if dunning fails."""
    final_action_at: datetime | None = None
    """When the final action happens."""
    renewal_at: datetime | None = None
    """When an annual subscription renews (renewal kinds)."""
    card_expires: str | None = None
    """Expiry of the card on file as ``"MM/YYYY"`` (``"12/2026"``), for card_expiring."""
    benefits: tuple[str, ...] = ()
    """What the subscription gives the customer, for renewal_upcoming and win_back: features
    and usage ("You kept 1,240 photos safe this year"). Plain text, one per item."""
    offer: str | None = None
    """The offer text of renewal_offer ("20% off your next year if you renew before May 1")."""
    data_kept_until: date | None = None
    """Until when a canceled customer's data is kept (a date or an aware datetime)."""
    fix_url: str | None = None
    """Signed link to update the payment method (purpose ``update_payment``)."""
    cancel_url: str | None = None
    """Signed link to cancel (purpose ``cancel``), offered honestly before a renewal."""
    reactivate_url: str | None = None
    """Signed link to come back (purpose ``reactivate``)."""
    unsubscribe_url: str | None = None
    """Signed link to stop non-transactional messages (purpose ``unsubscribe``)."""
    survey_url: str | None = None
    """Optional exit survey after a cancellation."""

    def __post_init__(self) -> None:
        parse_locale(self.locale)
        zone(self.timezone)
        if self.card_last4 is not None and not _CARD_LAST4.fullmatch(self.card_last4):
            raise ValueError("card_last4 must be exactly the last four digits of the card")
        if self.decline_category is not None and self.decline_category not in _CATEGORIES:
            raise ValueError(
                f"decline_category must be one of {sorted(_CATEGORIES)}, got {self.decline_category!r}"
            )
        if self.final_action is not None and self.final_action not in _FINAL_ACTIONS:
            raise ValueError(
                f"final_action must be one of {sorted(_FINAL_ACTIONS)}, got {self.final_action!r}"
            )
        if self.amount is not None and not isinstance(self.amount, Money):
            raise TypeError(f"amount must be Money, got {self.amount!r}")
        if not isinstance(self.benefits, tuple):
            object.__setattr__(self, "benefits", tuple(self.benefits))
        for name in ("failed_at", "next_retry_at", "final_action_at", "renewal_at", "data_kept_until"):
            value = getattr(self, name)
            if isinstance(value, datetime) and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware, got {value!r}")


_CATEGORIES = frozenset(c.value for c in DeclineCategory)
_FINAL_ACTIONS = frozenset(a.value for a in FinalAction)

FIELDS: frozenset[str] = frozenset(f.name for f in fields(MessageContext))
"""The context's fields, all visible to templates under their own names."""

HELPERS: Mapping[str, str] = MappingProxyType(
    {
        "kind": "The message kind (``payment_failed`` ...).",
        "channel": "The channel being rendered (``email``, ``sms`` ...).",
        "lang": "BCP 47 language tag for ``<html lang>``: ``es-MX``, ``en``.",
        "amount_text": "``amount`` formatted for the locale (``12,50 €``, ``$12.990``), or None.",
        "failed_on": "``failed_at`` as a long date in the customer's zone, or None.",
        "next_retry_on": "``next_retry_at`` as a long date, or None.",
        "final_action_on": "``final_action_at`` as a long date, or None.",
        "renewal_on": "``renewal_at`` as a long date, or None.",
        "data_kept_until_on": "``data_kept_until`` as a long date, or None.",
        "card_expires_text": "``card_expires`` as month and year (``December 2026``), or None.",
        "decline_text": "What happened to the payment in plain words (from the category), or None.",
        "final_action_text": "What the final action does, as a clause (``your Pro subscription "
        "will be canceled``), or None.",
        "card_text": "The card as the customer knows it (``Visa ending in 4242``), or None.",
        "will_retry": "True when ``next_retry_at`` is set: the engine retries on its own.",
        "transactional": "True for kinds that reach even unsubscribed customers.",
        "show_unsubscribe": "True when an unsubscribe link should be shown (not transactional).",
        "link": "The kind's main link (see ``PRIMARY_LINK``), or None.",
        "subject": "The rendered subject line (email ``txt`` and ``html`` parts only).",
    }
)
"""Pre-formatted values exposed to templates besides the context's fields."""

_EMAIL_BODY_PARTS = frozenset({"txt", "html"})

_BRANDS = MappingProxyType(
    {
        "visa": "Visa",
        "mastercard": "Mastercard",
        "amex": "American Express",
        "american_express": "American Express",
        "discover": "Discover",
        "diners": "Diners Club",
        "diners_club": "Diners Club",
        "jcb": "JCB",
        "unionpay": "UnionPay",
        "maestro": "Maestro",
        "elo": "Elo",
        "hipercard": "Hipercard",
        "cartes_bancaires": "Cartes Bancaires",
    }
)

_PHRASES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "en": MappingProxyType(
            {
                "cancel": "your {plan} subscription will be canceled",
                "pause": "your {plan} subscription will be paused",
                "mark_unpaid": "your {plan} subscription will be suspended until the payment is made",
                "brand_last4": "{brand} ending in {last4}",
                "last4": "card ending in {last4}",
                "brand": "{brand} card",
            }
        ),
        "es": MappingProxyType(
            {
                "cancel": "tu suscripción a {plan} se cancelará",
                "pause": "tu suscripción a {plan} quedará en pausa",
                "mark_unpaid": "tu suscripción a {plan} quedará suspendida hasta que se complete el pago",
                "brand_last4": "{brand} terminada en {last4}",
                "last4": "tarjeta terminada en {last4}",
                "brand": "tarjeta {brand}",
            }
        ),
    }
)


def _card_text(ctx: MessageContext, phrases: Mapping[str, str]) -> str | None:
    raw = (ctx.card_brand or "").strip()
    brand = _BRANDS.get(raw.lower().replace(" ", "_"), raw.title()) if raw else None
    if brand and ctx.card_last4:
        return phrases["brand_last4"].format(brand=brand, last4=ctx.card_last4)
    if ctx.card_last4:
        return phrases["last4"].format(last4=ctx.card_last4)
    if brand:
        return phrases["brand"].format(brand=brand)
    return None


def template_name(language: str, kind: str, part: str) -> str:
    """``("es", "payment_failed", "sms")`` -> ``"es/payment_failed.sms.j2"``."""
    return f"{language}/{kind}.{part}.j2"


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered message. Only the fields of the rendered channel are set."""

    kind: str
    channel: str
    locale: str
    """The template language used (``en``, ``es``)."""
    subject: str | None = None
    text: str | None = None
    """Plain-text email body (also the body for webhook and file channels)."""
    html: str | None = None
    """HTML email body with its CSS inlined."""
    sms: str | None = None
    voice: str | None = None
    push_title: str | None = None
    push_body: str | None = None
    in_app_title: str | None = None
    in_app_body: str | None = None
    in_app_cta: str | None = None
    link: str | None = None
    """The message's main link (push target, in-app button), when the kind has one."""


_SPACES = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n{3,}")


def _one_line(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _plain_text(text: str) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)) + "\n"


def _template_frame(tb: TracebackType | None) -> tuple[str | None, int | None]:
    """File and line of the innermost template frame of a traceback (Jinja rewrites
    tracebacks so that template frames carry the template's file and line)."""
    found: tuple[str | None, int | None] = (None, None)
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


class Renderer:
    """Renders messages; compiled templates are cached for the renderer's lifetime.

    ``override_dir`` has the same layout as the shipped folder
    (``{locale}/{kind}.{part}.j2``); a file there replaces the shipped one, and a
    new language folder there adds a locale. ``sms_gsm7`` (default on) spells SMS
    text in the GSM-7 alphabet where possible (``á`` -> ``a``) so that a message
    costs 160-character segments instead of 70-character ones.
    """

    def __init__(self, override_dir: Path | None = None, *, sms_gsm7: bool = True) -> None:
        self.override_dir = Path(override_dir) if override_dir is not None else None
        if self.override_dir is not None and not self.override_dir.is_dir():
            raise ValueError(f"template override folder {self.override_dir} does not exist")
        self.sms_gsm7 = sms_gsm7
        loaders: list[jinja2.BaseLoader] = []
        if self.override_dir is not None:
            loaders.append(jinja2.FileSystemLoader(self.override_dir))
        loaders.append(jinja2.FileSystemLoader(TEMPLATE_DIR))
        loader = jinja2.ChoiceLoader(loaders)
        # Email bodies keep their line layout, so a line holding only a tag leaves no
        # trace (trim_blocks). Single-line parts (subject, sms, voice, push, in_app)
        # collapse every run of whitespace to one space instead, so a newline after a
        # tag must survive as a space between sentences.
        self.env = self._environment(loader, trim_blocks=True)
        self._line_env = self._environment(loader, trim_blocks=False)
        self._templates: dict[str, jinja2.Template] = {}
        self._inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)
        roots = [TEMPLATE_DIR] if self.override_dir is None else [TEMPLATE_DIR, self.override_dir]
        self.languages: frozenset[str] = frozenset(
            path.name
            for root in roots
            for path in root.iterdir()
            if path.is_dir() and not path.name.startswith((".", "_"))
        )
        """Languages with templates (shipped, plus those the override folder adds)."""

    @staticmethod
    def _environment(loader: jinja2.BaseLoader, *, trim_blocks: bool) -> jinja2.Environment:
        return jinja2.Environment(
            loader=loader,
            undefined=jinja2.StrictUndefined,
            autoescape=lambda name: name is not None and name.endswith(".html.j2"),
            trim_blocks=trim_blocks,
            lstrip_blocks=True,
            auto_reload=False,
            cache_size=-1,
        )

    # -- rendering --------------------------------------------------------------------

    def render(self, kind: str, channel: str, locale: str, ctx: MessageContext) -> Rendered:
        """Render ``kind`` for ``channel`` in ``locale`` (a language or a full locale:
        ``es_MX`` uses the ``es`` templates). Amounts and dates follow ``ctx.locale``
        when it is the same language, else the template language.

        Raises :class:`TemplateProblem` for an unknown kind, channel or locale, a
        missing template, a syntax error or an error while rendering, and
        :class:`ContextProblem` when the context lacks what the kind needs.
        """
        message_kind, channel_kind, language = self._resolve(kind, channel, locale)
        missing = [name for name in REQUIRED[message_kind] if getattr(ctx, name) in (None, "", ())]
        if missing:
            raise ContextProblem(f"{message_kind} needs {', '.join(missing)} in the message context")
        values = self._values(message_kind, channel_kind, language, ctx)
        out: dict[str, Any] = {
            "kind": message_kind.value,
            "channel": channel_kind.value,
            "locale": language,
            "link": values["link"],
        }
        for part in CHANNEL_PARTS[channel_kind]:
            name = template_name(language, message_kind.value, part)
            template = self._template(name, part, message_kind, channel_kind, locale)
            if part in BLOCKS:
                blocks = self._render_blocks(template, name, part, values, message_kind, channel_kind, locale)
                for block, text in blocks.items():
                    out[f"{part}_{block}"] = text
                continue
            text = self._render(template, name, values, message_kind, channel_kind, locale)
            if part == "subject":
                out["subject"] = values["subject"] = _one_line(text)
            elif part == "txt":
                out["text"] = _plain_text(text)
            elif part == "html":
                try:
                    out["html"] = self._inliner.inline(text)
                except (css_inline.InlineError, ValueError) as exc:
                    raise TemplateProblem(
                        f"cannot inline the CSS: {exc}",
                        kind=message_kind,
                        channel=channel_kind,
                        locale=locale,
                        file=self._origin(name),
                    ) from exc
            elif part == "sms":
                sms = _one_line(text)
                out["sms"] = to_gsm7(sms) if self.sms_gsm7 else sms
            else:
                out[part] = _one_line(text)
        return Rendered(**out)

    def _resolve(self, kind: str, channel: str, locale: str) -> tuple[MessageKind, ChannelKind, str]:
        language = language_of(locale) if isinstance(locale, str) else ""
        try:
            message_kind = MessageKind(kind)
        except ValueError:
            raise TemplateProblem(
                f"unknown message kind; expected one of {[k.value for k in MessageKind]}",
                kind=str(kind),
                channel=str(channel),
                locale=str(locale),
            ) from None
        try:
            channel_kind = ChannelKind(channel)
        except ValueError:
            raise TemplateProblem(
                f"unknown channel; expected one of {[c.value for c in ChannelKind]}",
                kind=str(kind),
                channel=str(channel),
                locale=str(locale),
            ) from None
        if language not in self.languages:
            raise TemplateProblem(
                f"no templates for this locale; available: {sorted(self.languages)}",
                kind=str(kind),
                channel=str(channel),
                locale=str(locale),
            )
        return message_kind, channel_kind, language

    def _values(
        self, kind: MessageKind, channel: ChannelKind, language: str, ctx: MessageContext
    ) -> dict[str, Any]:
        fmt = ctx.locale if language_of(ctx.locale) == language else language
        tz = ctx.timezone
        phrases = _PHRASES.get(language, _PHRASES["en"])

        def day(value: date | None) -> str | None:
            return None if value is None else format_date(value, fmt, tz)

        values: dict[str, Any] = {name: getattr(ctx, name) for name in FIELDS}
        link_field = PRIMARY_LINK[kind]
        values.update(
            kind=kind.value,
            channel=channel.value,
            lang=fmt.replace("_", "-") if fmt != language else language,
            amount_text=None if ctx.amount is None else format_amount(ctx.amount, fmt),
            failed_on=day(ctx.failed_at),
            next_retry_on=day(ctx.next_retry_at),
            final_action_on=day(ctx.final_action_at),
            renewal_on=day(ctx.renewal_at),
            data_kept_until_on=day(ctx.data_kept_until),
            card_expires_text=None if ctx.card_expires is None else format_month(ctx.card_expires, fmt),
            decline_text=(
                None if ctx.decline_category is None else describe_decline(ctx.decline_category, fmt)
            ),
            final_action_text=(
                None if ctx.final_action is None else phrases[ctx.final_action].format(plan=ctx.plan_name)
            ),
            card_text=_card_text(ctx, phrases),
            will_retry=ctx.next_retry_at is not None,
            transactional=kind in TRANSACTIONAL,
            show_unsubscribe=bool(ctx.unsubscribe_url) and kind not in TRANSACTIONAL,
            link=None if link_field is None else getattr(ctx, link_field),
        )
        return values

    def _template(self, name: str, part: str, kind: str, channel: str, locale: str) -> jinja2.Template:
        template = self._templates.get(name)
        if template is not None:
            return template
        env = self.env if part in _EMAIL_BODY_PARTS else self._line_env
        try:
            template = env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise self._syntax_problem(exc, kind, channel, locale) from None
        except jinja2.TemplateNotFound as exc:
            raise TemplateProblem(
                f"missing template {exc.name}", kind=kind, channel=channel, locale=locale, file=str(exc.name)
            ) from None
        self._templates[name] = template
        return template

    def _syntax_problem(
        self, exc: jinja2.TemplateSyntaxError, kind: str, channel: str, locale: str
    ) -> TemplateProblem:
        file = exc.name or exc.filename or "?"
        return TemplateProblem(
            f"syntax error: {exc.message}",
            kind=kind,
            channel=channel,
            locale=locale,
            file=self._origin(file),
            line=exc.lineno,
        )

    def _origin(self, name: str) -> str:
        if self.override_dir is not None and (self.override_dir / name).is_file():
            return f"{name} in the override folder"
        return name

    def _render(
        self,
        template: jinja2.Template,
        name: str,
        values: dict[str, Any],
        kind: str,
        channel: str,
        locale: str,
    ) -> str:
        try:
            return template.render(values)
        except jinja2.TemplateSyntaxError as exc:  # in an extended or included template
            raise self._syntax_problem(exc, kind, channel, locale) from None
        except jinja2.TemplateNotFound as exc:
            raise TemplateProblem(
                f"missing template {exc.name} (used by {name})",
                kind=kind,
                channel=channel,
                locale=locale,
                file=str(exc.name),
            ) from None
        except Exception as exc:
            raise self._runtime_problem(exc, name, kind, channel, locale) from exc

    def _render_blocks(
        self,
        template: jinja2.Template,
        name: str,
        part: str,
        values: dict[str, Any],
        kind: str,
        channel: str,
        locale: str,
    ) -> dict[str, str]:
        out: dict[str, str] = {}
        context = template.new_context(values)
        for block in BLOCKS[part]:
            render_block = template.blocks.get(block)
            if render_block is None:
                raise TemplateProblem(
                    f"missing block {block!r}", kind=kind, channel=channel, locale=locale, file=name
                )
            try:
                out[block] = _one_line("".join(render_block(context)))
            except Exception as exc:
                raise self._runtime_problem(exc, name, kind, channel, locale) from exc
        return out

    def _runtime_problem(
        self, exc: Exception, name: str, kind: str, channel: str, locale: str
    ) -> TemplateProblem:
        filename, line = _template_frame(exc.__traceback__)
        file = name
        if filename is not None:
            for root in (self.override_dir, TEMPLATE_DIR):
                if root is not None and filename.startswith(str(root)):
                    file = Path(filename).relative_to(root).as_posix()
        return TemplateProblem(
            f"{type(exc).__name__}: {exc}",
            kind=kind,
            channel=channel,
            locale=locale,
            file=self._origin(file),
            line=line,
        )

    # -- checking ---------------------------------------------------------------------

    def check(
        self, kinds: Iterable[str], channels: Iterable[str], locales: Iterable[str]
    ) -> list[tuple[str, str]]:
        """Problems with the templates for every kind x channel x locale given, as
        ``(template file, reason)``: unknown kinds, channels or locales, missing
        templates (including a missing layout), syntax errors, missing blocks and
        variables that are neither context fields nor helpers. Empty when all is well.
        """
        problems: list[tuple[str, str]] = []
        kinds_ok: list[MessageKind] = []
        for kind in kinds:
            try:
                kinds_ok.append(MessageKind(kind))
            except ValueError:
                problems.append((str(kind), "unknown message kind"))
        channels_ok: list[ChannelKind] = []
        for channel in channels:
            try:
                channels_ok.append(ChannelKind(channel))
            except ValueError:
                problems.append((str(channel), "unknown channel"))
        languages: list[str] = []
        for locale in locales:
            language = language_of(locale)
            if language in self.languages:
                languages.append(language)
            else:
                problems.append((str(locale), "no templates for this locale"))
        seen: set[str] = set()
        for language in dict.fromkeys(languages):
            for kind in kinds_ok:
                for channel in channels_ok:
                    for part in CHANNEL_PARTS[channel]:
                        self._check_file(template_name(language, kind.value, part), part, seen, problems)
        return problems

    def _check_file(self, name: str, part: str, seen: set[str], problems: list[tuple[str, str]]) -> None:
        if name in seen:
            return
        seen.add(name)
        try:
            source, _, _ = self.env.loader.get_source(self.env, name)  # type: ignore[union-attr]
        except jinja2.TemplateNotFound:
            problems.append((name, "missing template"))
            return
        shown = self._origin(name)
        try:
            ast = self.env.parse(source, name)
        except jinja2.TemplateSyntaxError as exc:
            problems.append((shown, f"syntax error on line {exc.lineno}: {exc.message}"))
            return
        allowed = FIELDS | HELPERS.keys() | self.env.globals.keys()
        if part not in _EMAIL_BODY_PARTS:
            allowed = allowed - {"subject"}
        for variable in sorted(meta.find_undeclared_variables(ast) - allowed):
            problems.append((shown, f"unknown variable {variable!r}"))
        for block in BLOCKS.get(part, ()):
            if not any(node.name == block for node in ast.find_all(nodes.Block)):
                problems.append((shown, f"missing block {block!r}"))
        for referenced in meta.find_referenced_templates(ast):
            if referenced is not None:
                self._check_file(referenced, part, seen, problems)
