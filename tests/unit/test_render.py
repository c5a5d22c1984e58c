"""Message formatting and rendering: every kind, channel and locale; overrides; check()."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from recobra.domain.declines import STRIPE_DECLINE_CODES, DeclineCategory
from recobra.domain.messages import TRANSACTIONAL, ChannelKind, MessageKind
from recobra.domain.money import Money
from recobra.messages.formatting import (
    describe_decline,
    format_amount,
    format_date,
    format_datetime,
    format_month,
    sms_length,
    to_gsm7,
)
from recobra.messages.links import LinkSigner
from recobra.messages.render import (
    PRIMARY_LINK,
    REQUIRED,
    VOICE_KINDS,
    ContextProblem,
    MessageContext,
    Rendered,
    Renderer,
    TemplateProblem,
)

NOW = datetime(2026, 3, 5, 2, 30, tzinfo=UTC)
SIGNER = LinkSigner("s" * 40, "https://pay.example.com")
SUBJECT = "sub_1NfQ8uLkdIwHu7ix"
LOCALES = ("en", "es")
URL = re.compile(r"https?://\S+")

LINKS = {
    "fix_url": SIGNER.make("update_payment", SUBJECT, now=NOW, ttl=timedelta(days=14)),
    "cancel_url": SIGNER.make("cancel", SUBJECT, now=NOW, ttl=timedelta(days=14)),
    "reactivate_url": SIGNER.make("reactivate", SUBJECT, now=NOW, ttl=timedelta(days=60)),
    "unsubscribe_url": SIGNER.make("unsubscribe", SUBJECT, now=NOW, ttl=timedelta(days=60)),
}
OFFERS = {"en": "20% off your next year.", "es": "20 % de descuento en tu próximo año."}
BENEFITS = {
    "en": ("Unlimited backups of all your devices", "You kept 1,240 photos safe this year"),
    "es": ("Copias de seguridad ilimitadas de todos tus dispositivos", "Este año guardaste 1.240 fotos"),
}


def full_context(language: str = "es", **changes: Any) -> MessageContext:
    values: dict[str, Any] = {
        "customer_name": "Ana",
        "locale": "es_MX" if language == "es" else "en_US",
        "timezone": "America/Mexico_City",
        "company_name": "Acme Cloud",
        "support_email": "help@acme.example",
        "plan_name": "Plan Pro",
        "amount": Money(19900, "MXN"),
        "card_brand": "visa",
        "card_last4": "4242",
        "decline_category": "insufficient_funds",
        "failed_at": NOW,
        "next_retry_at": NOW + timedelta(days=3),
        "final_action": "cancel",
        "final_action_at": NOW + timedelta(days=21),
        "renewal_at": NOW + timedelta(days=30),
        "card_expires": "04/2026",
        "benefits": BENEFITS[language],
        "offer": OFFERS[language],
        "data_kept_until": date(2026, 6, 30),
        "survey_url": "https://acme.example/survey",
        **LINKS,
    }
    values.update(changes)
    return MessageContext(**values)


REQUIRED_VALUES: dict[str, Any] = {
    "fix_url": LINKS["fix_url"],
    "reactivate_url": LINKS["reactivate_url"],
    "unsubscribe_url": LINKS["unsubscribe_url"],
    "renewal_at": NOW + timedelta(days=30),
    "final_action": "pause",
    "final_action_at": NOW + timedelta(days=21),
}


def minimal_context(kind: MessageKind, language: str) -> MessageContext:
    """Only what the kind needs; every optional field None, and no customer name."""
    values = {name: REQUIRED_VALUES.get(name) for name in REQUIRED[kind]}
    if "offer" in values:
        values["offer"] = OFFERS[language]
    return MessageContext(
        customer_name="",
        locale=language,
        timezone="Europe/Madrid",
        company_name="Acme",
        support_email="help@acme.example",
        plan_name="Pro",
        **values,
    )


def channels_of(kind: MessageKind) -> list[str]:
    shipped = ["email", "sms", "push", "in_app", "webhook", "file"]
    return [*shipped, "voice"] if kind in VOICE_KINDS else shipped


CASES = [
    (kind, channel, language) for kind in MessageKind for channel in channels_of(kind) for language in LOCALES
]


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def outputs(rendered: Rendered) -> list[str]:
    fields = (
        "subject",
        "text",
        "html",
        "sms",
        "voice",
        "push_title",
        "push_body",
        "in_app_title",
        "in_app_body",
        "in_app_cta",
    )
    return [value for name in fields if (value := getattr(rendered, name)) is not None]


def assert_channel_fields(rendered: Rendered, channel: str) -> None:
    expected = {
        "email": {"subject", "text", "html"},
        "webhook": {"subject", "text"},
        "file": {"subject", "text"},
        "sms": {"sms"},
        "voice": {"voice"},
        "push": {"push_title", "push_body"},
        "in_app": {"in_app_title", "in_app_body", "in_app_cta"},
    }[channel]
    for name in ("subject", "text", "html", "sms", "voice", "push_title", "push_body"):
        value = getattr(rendered, name)
        assert (value is not None) == (name in expected), name
        if value is not None:
            assert value.strip(), name
    for name in ("in_app_title", "in_app_body", "in_app_cta"):
        assert (getattr(rendered, name) is not None) == (name in expected), name


# -- every kind x channel x locale -------------------------------------------------------


@pytest.mark.parametrize(("kind", "channel", "language"), CASES)
def test_renders_with_full_context(
    renderer: Renderer, kind: MessageKind, channel: str, language: str
) -> None:
    ctx = full_context(language)
    rendered = renderer.render(kind, channel, language, ctx)
    assert (rendered.kind, rendered.channel, rendered.locale) == (kind.value, channel, language)
    assert_channel_fields(rendered, channel)
    for text in outputs(rendered):
        assert "None" not in text
        assert "{{" not in text
        assert "{%" not in text
    if rendered.subject is not None:
        assert "\n" not in rendered.subject
        assert len(rendered.subject) <= 80
    link_field = PRIMARY_LINK[kind]
    assert rendered.link == (None if link_field is None else getattr(ctx, link_field))
    if rendered.link is not None:
        for text in (rendered.text, rendered.html, rendered.sms):
            if text is not None:
                assert rendered.link in text


@pytest.mark.parametrize(("kind", "channel", "language"), CASES)
def test_renders_with_optional_fields_none(
    renderer: Renderer, kind: MessageKind, channel: str, language: str
) -> None:
    rendered = renderer.render(kind, channel, language, minimal_context(kind, language))
    assert_channel_fields(rendered, channel)
    for text in outputs(rendered):
        assert "None" not in text
        assert "()" not in text
    if rendered.text is not None:
        assert rendered.text.startswith("Hi," if language == "en" else "Hola:")


def test_every_shipped_template_passes_check(renderer: Renderer) -> None:
    everything = renderer.check(
        [k.value for k in MessageKind], ["email", "sms", "push", "in_app", "webhook", "file"], LOCALES
    )
    assert everything == []
    assert renderer.check([k.value for k in VOICE_KINDS], ["voice"], LOCALES) == []


# -- content rules ---------------------------------------------------------------------


def strip_urls(text: str) -> str:
    return URL.sub("<url>", text)


@pytest.mark.parametrize("category", list(DeclineCategory))
@pytest.mark.parametrize("language", LOCALES)
def test_no_raw_decline_code_or_card_number(
    renderer: Renderer, category: DeclineCategory, language: str
) -> None:
    ctx = full_context(language, decline_category=category.value)
    for kind in (MessageKind.PAYMENT_FAILED, MessageKind.PAYMENT_REMINDER, MessageKind.FINAL_NOTICE):
        for channel in ("email", "sms", "voice", "push", "in_app"):
            rendered = renderer.render(kind, channel, language, ctx)
            for text in map(strip_urls, outputs(rendered)):
                if "_" in category.value:
                    assert category.value not in text
                assert "fraud" not in text.lower()
                assert "_" not in text
                assert not any(code in text for code in STRIPE_DECLINE_CODES if "_" in code)
                assert not re.search(r"\d{12,}", text), text


def test_payment_failed_explains_in_plain_words(renderer: Renderer) -> None:
    for language in LOCALES:
        ctx = full_context(language)
        text = renderer.render("payment_failed", "email", language, ctx).text
        assert text is not None
        assert describe_decline("insufficient_funds", language) in text
        assert text.count(LINKS["fix_url"]) == 1


def test_payment_failed_says_we_retry_or_that_we_cannot(renderer: Renderer) -> None:
    retrying = renderer.render("payment_failed", "email", "en", full_context("en")).text
    assert retrying is not None
    assert "We'll try again automatically on March 7, 2026" in retrying
    hard = full_context("en", decline_category="hard", next_retry_at=None)
    text = renderer.render("payment_failed", "email", "en", hard).text
    assert text is not None
    assert "We can't try this card again on our own" in text
    es = renderer.render("payment_failed", "email", "es", full_context("es")).text
    assert es is not None
    assert "Volveremos a intentarlo automáticamente el 7 de marzo de 2026" in es


def test_final_notice_gives_action_and_date(renderer: Renderer) -> None:
    en = renderer.render("final_notice", "email", "en", full_context("en"))
    assert "On March 25, 2026, your Plan Pro subscription will be canceled." in (en.text or "")
    assert "March 25, 2026" in (en.subject or "")
    es = renderer.render("final_notice", "email", "es", full_context("es", final_action="pause"))
    assert "El 25 de marzo de 2026, tu suscripción a Plan Pro quedará en pausa." in (es.text or "")


def test_renewal_upcoming_teaches_value_before_price(renderer: Renderer) -> None:
    for language in LOCALES:
        text = renderer.render("renewal_upcoming", "email", language, full_context(language)).text or ""
        benefit = BENEFITS[language][0]
        amount = "MX$199.00" if language == "en" else "$199.00"
        assert benefit in text
        assert amount in text
        assert text.index(benefit) < text.index(amount)
        assert LINKS["cancel_url"] in text


def test_renewal_offer_carries_the_offer(renderer: Renderer) -> None:
    for language in LOCALES:
        rendered = renderer.render("renewal_offer", "email", language, full_context(language))
        assert OFFERS[language] in (rendered.text or "")
        assert OFFERS[language] in (rendered.html or "")


def test_cancellation_follows_basecamp(renderer: Renderer) -> None:
    text = renderer.render("subscription_canceled", "email", "en", full_context("en")).text or ""
    for phrase in (
        "has been canceled",
        "You won't be charged again.",
        "You won't get any more emails",
        "until June 30, 2026",
        LINKS["reactivate_url"],
        "https://acme.example/survey",
        "Thanks again",
    ):
        assert phrase in text
    assert LINKS["unsubscribe_url"] not in text  # transactional: no unsubscribe footer
    es = renderer.render("subscription_canceled", "email", "es", full_context("es")).text or ""
    for phrase in (
        "ha sido cancelada",
        "No se te cobrará nada más",
        "hasta el 30 de junio de 2026",
        "Gracias",
    ):
        assert phrase in es


def test_unsubscribe_footer_only_for_non_transactional(renderer: Renderer) -> None:
    for kind in MessageKind:
        rendered = renderer.render(kind, "email", "en", full_context("en"))
        shown = LINKS["unsubscribe_url"] in (rendered.text or "")
        assert shown == (kind not in TRANSACTIONAL), kind


def test_payment_method_updated_confirms_brand_and_last4(renderer: Renderer) -> None:
    en = renderer.render("payment_method_updated", "email", "en", full_context("en", card_brand="mastercard"))
    assert "Mastercard ending in 4242" in (en.text or "")
    es = renderer.render("payment_method_updated", "sms", "es", full_context("es", card_brand="amex"))
    assert "American Express terminada en 4242" in (es.sms or "")


def test_voice_offers_the_link_by_sms(renderer: Renderer) -> None:
    for kind in VOICE_KINDS:
        assert "press 1" in (renderer.render(kind, "voice", "en", full_context("en")).voice or "")
        assert "marca el 1" in (renderer.render(kind, "voice", "es", full_context("es")).voice or "")


def test_voice_has_no_url(renderer: Renderer) -> None:
    for kind in VOICE_KINDS:
        for language in LOCALES:
            assert "http" not in (
                renderer.render(kind, "voice", language, full_context(language)).voice or ""
            )


def test_webhook_and_file_reuse_the_email_text(renderer: Renderer) -> None:
    ctx = full_context("en")
    email = renderer.render("payment_failed", "email", "en", ctx)
    for channel in ("webhook", "file"):
        other = renderer.render("payment_failed", channel, "en", ctx)
        assert (other.subject, other.text, other.html) == (email.subject, email.text, None)


# -- formatting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("money", "locale", "expected"),
    [
        (Money(1250, "EUR"), "es", "12,50\xa0€"),
        (Money(1250, "EUR"), "es_ES", "12,50\xa0€"),
        (Money(1250, "EUR"), "en", "€12.50"),
        (Money(1250, "USD"), "en_US", "$12.50"),
        (Money(1250, "USD"), "es", "12,50\xa0US$"),
        (Money(12990, "CLP"), "es_CL", "$12.990"),
        (Money(12990, "CLP"), "es", "12.990\xa0CLP"),
        (Money(12990, "CLP"), "en", "CLP12,990"),
        (Money(4990000, "COP"), "es_CO", "$49.900,00"),
        (Money(19900, "MXN"), "es_MX", "$199.00"),
        (Money(19900, "MXN"), "en", "MX$199.00"),
        (Money(1500, "JPY"), "en", "¥1,500"),
        (Money(1234, "KWD"), "en", "KWD1.234"),
        (Money(5, "EUR"), "en", "€0.05"),
    ],
)
def test_format_amount(money: Money, locale: str, expected: str) -> None:
    assert format_amount(money, locale) == expected


@pytest.mark.parametrize(
    ("language", "locale", "money", "expected"),
    [
        ("es", "es_ES", Money(1250, "EUR"), "12,50\xa0€"),
        ("en", "en_IE", Money(1250, "EUR"), "€12.50"),
        ("en", "en_US", Money(999, "USD"), "$9.99"),
        ("es", "es_CL", Money(12990, "CLP"), "$12.990"),
        ("es", "es_CO", Money(4990000, "COP"), "$49.900,00"),
        ("es", "es_MX", Money(19900, "MXN"), "$199.00"),
    ],
)
def test_rendered_amounts_follow_the_customer_locale(
    renderer: Renderer, language: str, locale: str, money: Money, expected: str
) -> None:
    ctx = full_context(language, locale=locale, amount=money)
    rendered = renderer.render("payment_failed", "email", language, ctx)
    assert expected in (rendered.text or "")
    assert expected in unescape(rendered.html or "")
    assert to_gsm7(expected) in (renderer.render("payment_failed", "sms", language, ctx).sms or "")


def test_other_language_context_formats_in_template_language(renderer: Renderer) -> None:
    ctx = full_context("es")  # es_MX customer, English templates requested
    rendered = renderer.render("payment_failed", "email", "en", ctx)
    assert "MX$199.00" in (rendered.text or "")
    assert 'lang="en"' in (rendered.html or "")


def test_dates_are_in_the_customers_zone(renderer: Renderer) -> None:
    # 02:30 UTC on March 5 is still March 4 in Santiago, already March 5 in Madrid.
    santiago = full_context("es", timezone="America/Santiago", locale="es_CL")
    madrid = full_context("es", timezone="Europe/Madrid", locale="es_ES")
    assert "el 4 de marzo de 2026" in (renderer.render("payment_failed", "email", "es", santiago).text or "")
    assert "el 5 de marzo de 2026" in (renderer.render("payment_failed", "email", "es", madrid).text or "")
    assert format_date(NOW, "en", "America/New_York") == "March 4, 2026"
    assert format_date(date(2026, 3, 5), "en", "Asia/Tokyo") == "March 5, 2026"


def test_format_datetime() -> None:
    assert format_datetime(NOW, "en", "America/New_York") == "March 4, 2026, 9:30\u202fPM"
    assert format_datetime(NOW, "es", "Europe/Madrid") == "5 de marzo de 2026, 3:30"


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_date(datetime(2026, 3, 5), "en", "UTC")  # noqa: DTZ001
    with pytest.raises(ValueError, match="timezone-aware"):
        full_context("en", failed_at=datetime(2026, 3, 5))  # noqa: DTZ001


def test_format_month() -> None:
    assert format_month("12/2026", "en") == "December 2026"
    assert format_month("12/2026", "es") == "diciembre de 2026"
    assert format_month("1/27", "en") == "January 2027"
    assert format_month("soon", "en") == "soon"
    assert format_month("13/2026", "en") == "13/2026"


@pytest.mark.parametrize("language", LOCALES)
def test_describe_decline_covers_every_category(language: str) -> None:
    texts = [describe_decline(category, language) for category in DeclineCategory]
    assert len(set(texts)) == len(texts)
    for text in texts:
        assert text.endswith(".")
        assert "_" not in text
        assert "fraud" not in text.lower()


def test_describe_decline_fallbacks() -> None:
    assert describe_decline("not_a_category", "es_MX") == describe_decline(DeclineCategory.UNKNOWN, "es")
    assert describe_decline("hard", "pt_BR") == describe_decline("hard", "en")


# -- SMS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),
        ("ñÑüé¿¡", "GSM-7", 6, 1),
        ("á" * 70, "UCS-2", 70, 1),
        ("á" * 71, "UCS-2", 71, 2),
        ("á" * 134, "UCS-2", 134, 2),
        ("á" * 135, "UCS-2", 135, 3),
        ("😀" * 35, "UCS-2", 70, 1),
    ],
)
def test_sms_length(text: str, encoding: str, units: int, segments: int) -> None:
    length = sms_length(text)
    assert (length.encoding, length.units, length.segments) == (encoding, units, segments)


def test_to_gsm7() -> None:
    assert (
        to_gsm7("Actualízala aquí, ¿sí? Ñandú “ok” — 12,50\xa0€")
        == 'Actualizala aqui, ¿si? Ñandu "ok" - 12,50 €'
    )
    assert to_gsm7("Zoë Łukasz 李") == "Zoe Łukasz 李"  # no GSM-7 spelling: kept (UCS-2)


@pytest.mark.parametrize("kind", list(MessageKind))
@pytest.mark.parametrize(
    ("language", "locale", "money"),
    [
        ("en", "en_US", Money(2900, "USD")),
        ("en", "en_IE", Money(2900, "EUR")),
        ("es", "es_ES", Money(1250, "EUR")),
        ("es", "es_CL", Money(12990, "CLP")),
        ("es", "es_CO", Money(4990000, "COP")),
        ("es", "es_MX", Money(19900, "MXN")),
    ],
)
def test_sms_fits_two_segments(
    renderer: Renderer, kind: MessageKind, language: str, locale: str, money: Money
) -> None:
    ctx = full_context(language, locale=locale, amount=money)
    sms = renderer.render(kind, "sms", language, ctx).sms or ""
    length = sms_length(sms)
    assert length.encoding == "GSM-7", sms
    assert length.segments <= 2, (length, sms)
    link_field = PRIMARY_LINK[kind]
    if link_field is not None:
        assert getattr(ctx, link_field) in sms


def test_sms_without_gsm7_folding_keeps_accents() -> None:
    ctx = full_context("es")
    sms = Renderer(sms_gsm7=False).render("payment_failed", "sms", "es", ctx).sms or ""
    assert "método" in sms
    assert sms_length(sms).encoding == "UCS-2"


# -- HTML -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(MessageKind))
@pytest.mark.parametrize("language", LOCALES)
def test_html_is_inlined_and_accessible(renderer: Renderer, kind: MessageKind, language: str) -> None:
    html = renderer.render(kind, "email", language, full_context(language)).html or ""
    assert "<style" not in html
    assert 'style="' in html
    assert re.search(r"<html lang=\"(es-MX|en-US)\"", html)
    assert "<title>" in html
    assert "max-width: 600px" in html
    assert "<img" not in html
    assert "<h1" in html
    if PRIMARY_LINK[kind] is not None:
        assert 'class="button"' in html


def test_html_escapes_context_values(renderer: Renderer) -> None:
    ctx = full_context("en", customer_name="<b>Ana</b> & co")
    rendered = renderer.render("payment_failed", "email", "en", ctx)
    assert "&lt;b&gt;Ana&lt;/b&gt; &amp; co" in (rendered.html or "")
    assert "<b>Ana</b>" not in (rendered.html or "")
    assert "Hi <b>Ana</b> & co," in (rendered.text or "")


# -- context ----------------------------------------------------------------------------


def test_context_refuses_full_card_numbers_and_raw_codes() -> None:
    with pytest.raises(ValueError, match="last four digits"):
        full_context("en", card_last4="4242424242424242")
    with pytest.raises(ValueError, match="decline_category"):
        full_context("en", decline_category="do_not_honor")
    with pytest.raises(ValueError, match="final_action"):
        full_context("en", final_action="delete")
    with pytest.raises(ValueError, match="time zone"):
        full_context("en", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="locale"):
        full_context("en", locale="xx_YY_ZZ")


def test_context_benefits_become_a_tuple() -> None:
    assert full_context("en", benefits=["a", "b"]).benefits == ("a", "b")


def test_missing_required_context(renderer: Renderer) -> None:
    with pytest.raises(ContextProblem, match="payment_failed needs fix_url"):
        renderer.render("payment_failed", "email", "en", full_context("en", fix_url=None))
    with pytest.raises(ContextProblem, match="final_action, final_action_at"):
        renderer.render(
            "final_notice", "sms", "es", full_context("es", final_action=None, final_action_at=None)
        )


# -- errors -----------------------------------------------------------------------------


def test_unknown_kind_channel_locale(renderer: Renderer) -> None:
    ctx = full_context("en")
    with pytest.raises(TemplateProblem, match="unknown message kind") as caught:
        renderer.render("birthday", "email", "en", ctx)
    assert caught.value.kind == "birthday"
    with pytest.raises(TemplateProblem, match="unknown channel"):
        renderer.render("payment_failed", "pigeon", "en", ctx)
    with pytest.raises(TemplateProblem, match="no templates for this locale") as caught:
        renderer.render("payment_failed", "email", "fr", ctx)
    assert caught.value.locale == "fr"


def test_full_locale_selects_language_templates(renderer: Renderer) -> None:
    rendered = renderer.render("payment_failed", "sms", "es-MX", full_context("es"))
    assert rendered.locale == "es"
    assert (rendered.sms or "").startswith("Acme Cloud: no pudimos cobrar")


def test_missing_template(renderer: Renderer) -> None:
    with pytest.raises(TemplateProblem) as caught:
        renderer.render("win_back", "voice", "en", full_context("en"))
    message = str(caught.value)
    for part in ("win_back", "voice", "'en'", "en/win_back.voice.j2", "missing template"):
        assert part in message
    assert caught.value.file == "en/win_back.voice.j2"


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_override_folder_wins(tmp_path: Path) -> None:
    write(tmp_path, "en/payment_failed.sms.j2", "{{ company_name }} custom: {{ fix_url }}")
    renderer = Renderer(tmp_path)
    ctx = full_context("en")
    assert renderer.render("payment_failed", "sms", "en", ctx).sms == f"Acme Cloud custom: {LINKS['fix_url']}"
    # Everything else is still shipped.
    assert (renderer.render("payment_failed", "sms", "es", ctx).sms or "").startswith(
        "Acme Cloud: no pudimos"
    )
    assert renderer.render("payment_reminder", "email", "en", ctx).html


def test_override_layout_wins(tmp_path: Path) -> None:
    write(
        tmp_path,
        "en/_layout.html.j2",
        '<html lang="{{ lang }}"><head><style>p { color: #000000; }</style></head>'
        "<body><main>{% block content %}{% endblock %}</main><p>Brand footer</p></body></html>",
    )
    html = Renderer(tmp_path).render("payment_failed", "email", "en", full_context("en")).html or ""
    assert "Brand footer" in html
    assert '<p style="color: #000000;">Brand footer</p>' in html


def test_override_folder_may_add_a_language(tmp_path: Path) -> None:
    write(
        tmp_path,
        "pt/payment_failed.sms.j2",
        "{{ company_name }}: não conseguimos cobrar {{ amount_text }}. {{ fix_url }}",
    )
    renderer = Renderer(tmp_path)
    ctx = full_context("en", locale="pt_BR", amount=Money(4990, "BRL"))
    assert (renderer.render("payment_failed", "sms", "pt", ctx).sms or "").startswith(
        "Acme Cloud: nao conseguimos cobrar R$\xa049,90".replace("\xa0", " ")
    )
    assert renderer.check(["payment_failed"], ["sms"], ["pt"]) == []
    assert ("pt/payment_failed.email.j2", "missing template") not in renderer.check(
        ["payment_failed"], ["email"], ["pt"]
    )
    assert ("pt/payment_failed.subject.j2", "missing template") in renderer.check(
        ["payment_failed"], ["email"], ["pt"]
    )


def test_override_folder_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Renderer(tmp_path / "nope")


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "es/payment_failed.sms.j2", "Hola\n{{ company_name }}\n{% if fix_url %}\n{{ fix_url }}\n")
    with pytest.raises(TemplateProblem) as caught:
        Renderer(tmp_path).render("payment_failed", "sms", "es", full_context("es"))
    problem = caught.value
    message = str(problem)
    assert "syntax error" in message
    assert "es/payment_failed.sms.j2 in the override folder" in message
    assert (problem.kind, problem.channel, problem.locale) == ("payment_failed", "sms", "es")
    assert problem.line is not None
    assert "line" in message


def test_syntax_error_in_layout(tmp_path: Path) -> None:
    write(tmp_path, "en/_layout.html.j2", "<html>\n<body>\n{% block content %}\n</body></html>")
    with pytest.raises(TemplateProblem, match=r"syntax error.*en/_layout\.html\.j2"):
        Renderer(tmp_path).render("payment_failed", "email", "en", full_context("en"))


def test_unknown_variable_at_render_names_it(tmp_path: Path) -> None:
    write(tmp_path, "en/payment_failed.sms.j2", "Hi\n{{ customer_nmae }} {{ fix_url }}")
    with pytest.raises(TemplateProblem, match="customer_nmae") as caught:
        Renderer(tmp_path).render("payment_failed", "sms", "en", full_context("en"))
    assert caught.value.line == 2
    assert caught.value.file == "en/payment_failed.sms.j2 in the override folder"


def test_missing_block(tmp_path: Path) -> None:
    write(tmp_path, "en/payment_failed.push.j2", "{% block title %}Hi{% endblock %}")
    renderer = Renderer(tmp_path)
    with pytest.raises(TemplateProblem, match="missing block 'body'"):
        renderer.render("payment_failed", "push", "en", full_context("en"))
    assert renderer.check(["payment_failed"], ["push"], ["en"]) == [
        ("en/payment_failed.push.j2 in the override folder", "missing block 'body'")
    ]


# -- check() ------------------------------------------------------------------------------


def test_check_flags_unknown_variable_in_override(tmp_path: Path) -> None:
    write(tmp_path, "es/payment_failed.sms.j2", "{{ company_name }}: {{ monto }} {{ fix_url }}")
    write(tmp_path, "es/payment_failed.txt.j2", "{{ subject }}\n{% for b in benefits %}{{ b }}{% endfor %}")
    problems = Renderer(tmp_path).check(["payment_failed"], ["sms", "email"], ["es"])
    assert problems == [("es/payment_failed.sms.j2 in the override folder", "unknown variable 'monto'")]


def test_check_flags_subject_outside_email_bodies(tmp_path: Path) -> None:
    write(tmp_path, "en/win_back.sms.j2", "{{ subject }} {{ reactivate_url }}")
    assert Renderer(tmp_path).check(["win_back"], ["sms"], ["en"]) == [
        ("en/win_back.sms.j2 in the override folder", "unknown variable 'subject'")
    ]


def test_check_flags_syntax_errors_and_missing_templates(tmp_path: Path) -> None:
    write(tmp_path, "en/win_back.html.j2", '{% extends "en/_layout.html.j2" %}\n{% block content %}\n{{ x')
    problems = Renderer(tmp_path).check(["win_back"], ["email", "voice"], ["en"])
    assert ("en/win_back.voice.j2", "missing template") in problems
    assert any(
        file == "en/win_back.html.j2 in the override folder" and reason.startswith("syntax error on line 3")
        for file, reason in problems
    ), problems


def test_check_flags_problems_in_an_overridden_layout(tmp_path: Path) -> None:
    write(tmp_path, "es/_layout.html.j2", "<html>{{ brand_color }}{% block content %}{% endblock %}</html>")
    problems = Renderer(tmp_path).check(["payment_failed", "win_back"], ["email"], ["es"])
    assert problems == [("es/_layout.html.j2 in the override folder", "unknown variable 'brand_color'")]


def test_check_flags_unknown_names(renderer: Renderer) -> None:
    problems = renderer.check(["birthday", "payment_failed"], ["pigeon", "sms"], ["fr", "es_MX"])
    assert problems == [
        ("birthday", "unknown message kind"),
        ("pigeon", "unknown channel"),
        ("fr", "no templates for this locale"),
    ]


# -- caching ----------------------------------------------------------------------------


def test_templates_are_compiled_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renderer = Renderer()
    ctx = full_context("es")
    for channel in ChannelKind:
        if channel is not ChannelKind.VOICE:
            renderer.render("payment_failed", channel, "es", ctx)
    renderer.render("payment_failed", "voice", "es", ctx)

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("template loaded again")

    monkeypatch.setattr(renderer.env.loader, "get_source", no_loading)
    for _ in range(3):
        for channel in ChannelKind:
            rendered = renderer.render("payment_failed", channel, "es", replace(ctx, customer_name="Luis"))
            assert rendered.kind == "payment_failed"
