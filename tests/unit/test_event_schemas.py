"""Incoming JSON events -> engine commands, and every way an event can be wrong."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recobra.domain.model import Funding, Interval, InvoiceStatus, SubscriptionStatus
from recobra.domain.money import Money
from recobra.engine.commands import (
    ContactPreferencesChanged,
    InvoicePaidOutOfBand,
    PaymentFailed,
    PaymentMethodUpdated,
    PaymentSucceeded,
    PushSubscribed,
    SmsReceived,
    SubscriptionCanceled,
    SubscriptionUpdated,
)
from recobra.schemas import (
    EVENT_TYPES,
    EventError,
    event_json_schema,
    parse_event,
    parse_events,
    parse_events_text,
)

FAILED: dict[str, Any] = {
    "id": "evt_123",
    "type": "payment_failed",
    "occurred_at": "2026-11-01T10:00:00Z",
    "customer": {
        "id": "cus_1", "email": "ana@example.com", "name": "Ana", "phone": "+573001234567",
        "locale": "es", "timezone": "America/Bogota", "country": "CO",
        "created_at": "2025-01-01T00:00:00Z",
    },
    "subscription": {
        "id": "sub_1", "status": "active", "started_at": "2025-01-01T00:00:00Z",
        "plan": {"id": "pro", "name": "Pro", "interval": "month", "amount_minor": 4900,
                 "currency": "USD"},
    },
    "invoice": {"id": "in_1", "amount_minor": 4900, "currency": "USD",
                "created_at": "2026-11-01T10:00:00Z"},
    "payment_method": {
        "id": "pm_1", "gateway_token": "tok_abc", "brand": "visa", "last4": "4242",
        "exp_month": 12, "exp_year": 2027, "funding": "credit",
    },
    "decline": {"code": "insufficient_funds", "network_code": "51", "advice_code": None},
    "gateway_reference": "ch_1",
}  # fmt: skip
SUCCEEDED: dict[str, Any] = {
    "id": "evt_124",
    "type": "payment_succeeded",
    "occurred_at": "2026-11-04T15:30:00-05:00",
    "invoice_id": "in_1",
    "gateway_reference": "ch_2",
}
METHOD_UPDATED: dict[str, Any] = {
    "id": "evt_125",
    "type": "payment_method_updated",
    "occurred_at": "2026-11-02T08:00:00Z",
    "payment_method": {
        "id": "pm_2",
        "customer_id": "cus_1",
        "gateway_token": "tok_new",
        "brand": "mastercard",
        "last4": "4444",
        "exp_month": 3,
        "exp_year": 2030,
        "funding": "debit",
    },
}
CANCELED: dict[str, Any] = {
    "id": "evt_126",
    "type": "subscription_canceled",
    "occurred_at": "2026-11-05T00:00:00Z",
    "subscription_id": "sub_1",
    "reason": "too expensive",
}
PAID_OUT_OF_BAND: dict[str, Any] = {
    "id": "evt_127",
    "type": "invoice_paid_out_of_band",
    "occurred_at": "2026-11-06T12:00:00+01:00",
    "invoice_id": "in_1",
    "note": "bank transfer",
}
SUB_UPDATED: dict[str, Any] = {
    "id": "evt_128",
    "type": "subscription_updated",
    "occurred_at": "2026-10-01T00:00:00Z",
    "customer": {"id": "cus_1", "email": "ana@example.com", "locale": "es",
                 "timezone": "America/Bogota", "country": "CO"},
    "subscription": {
        "id": "sub_2", "status": "active", "started_at": "2025-11-01T00:00:00Z",
        "renews_at": "2026-11-01T00:00:00-05:00",
        "plan": {"id": "pro_year", "name": "Pro (annual)", "interval": "year",
                 "amount_minor": 49000, "currency": "USD"},
    },
    "payment_method": {
        "id": "pm_1", "gateway_token": "tok_abc", "brand": "visa", "last4": "4242",
        "exp_month": 10, "exp_year": 2026, "funding": "credit",
    },
}  # fmt: skip
PREFERENCES: dict[str, Any] = {
    "id": "evt_129",
    "type": "contact_preferences_changed",
    "occurred_at": "2026-11-03T09:00:00Z",
    "customer_id": "cus_1",
    "sms_consent": True,
    "voice_consent": False,
    "unsubscribed": False,
    "win_back_opt_in": True,
}
SMS: dict[str, Any] = {
    "id": "evt_130",
    "type": "sms_received",
    "occurred_at": "2026-11-03T09:05:00Z",
    "phone": "+57 300 123 4567",
    "body": "STOP",
}
P256DH = "BPtQOI8pSY0Kk60l7Ew0A3udPMPMpHh-tv7aviswA-rIn3dlyp1iiOb_c09c0I86WSHPVLIbs5i1CsDSV3-gdHI"
AUTH = "ZGVmZ2hpamtsbW5vcHFycw"
ENDPOINT = "https://push.example.net/send/abc123"
PUSH: dict[str, Any] = {
    "id": "evt_131",
    "type": "push_subscribed",
    "occurred_at": "2026-11-03T09:10:00Z",
    "customer_id": "cus_1",
    "subscription": {"endpoint": ENDPOINT, "expirationTime": None, "keys": {"p256dh": P256DH, "auth": AUTH}},
}
EXAMPLES = [
    FAILED,
    SUCCEEDED,
    METHOD_UPDATED,
    CANCELED,
    PAID_OUT_OF_BAND,
    SUB_UPDATED,
    PREFERENCES,
    SMS,
    PUSH,
]


def ev(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``base``; keys like ``invoice__amount_minor`` set nested values.

    The value ``DELETE`` removes the key.
    """
    out = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = out
        for key in parents:
            target = target[key]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return out


DELETE = object()
_R = TypeVar("_R")


def problems_of(data: object, **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(EventError) as info:
        parse_event(data, **kwargs)
    assert info.value.problems, "an EventError always names at least one problem"
    return info.value.problems


def fields(problems: list[tuple[str, str]]) -> list[str]:
    return [field for field, _ in problems]


def reason_for(problems: list[tuple[str, str]], field: str) -> str:
    matches = [reason for f, reason in problems if f == field]
    assert matches, f"no problem on {field!r} in {problems!r}"
    return matches[0]


# --- valid events -----------------------------------------------------------------------


def test_payment_failed_maps_every_field() -> None:
    command = parse_event(FAILED)

    assert isinstance(command, PaymentFailed)
    assert command.event_id == "evt_123"
    assert command.occurred_at == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert command.occurred_at.utcoffset() == timedelta(0)
    c = command.customer
    assert (c.id, c.email, c.name, c.phone) == ("cus_1", "ana@example.com", "Ana", "+573001234567")
    assert (c.locale, c.timezone, c.country) == ("es", "America/Bogota", "CO")
    assert c.created_at == datetime(2025, 1, 1, tzinfo=UTC)
    sub = command.subscription
    assert sub is not None
    assert (sub.id, sub.customer_id, sub.status) == ("sub_1", "cus_1", SubscriptionStatus.ACTIVE)
    assert sub.started_at == datetime(2025, 1, 1, tzinfo=UTC)
    assert (sub.plan.id, sub.plan.name, sub.plan.interval) == ("pro", "Pro", Interval.MONTH)
    assert sub.plan.price == Money(4900, "USD")
    inv = command.invoice
    assert (inv.id, inv.customer_id, inv.subscription_id) == ("in_1", "cus_1", "sub_1")
    assert inv.amount == Money(4900, "USD")
    assert inv.status is InvoiceStatus.OPEN
    assert inv.created_at == datetime(2026, 11, 1, 10, tzinfo=UTC)
    pm = command.payment_method
    assert (pm.id, pm.customer_id, pm.gateway_token, pm.brand) == ("pm_1", "cus_1", "tok_abc", "visa")
    assert (pm.last4, pm.exp_month, pm.exp_year) == ("4242", 12, 2027)
    assert pm.funding is Funding.CREDIT
    assert pm.is_default is True
    assert (command.decline_code, command.network_code, command.advice_code) == (
        "insufficient_funds",
        "51",
        None,
    )
    assert command.gateway_reference == "ch_1"


def test_payment_failed_minimal_uses_defaults() -> None:
    data = ev(
        FAILED,
        subscription=DELETE,
        decline=DELETE,
        gateway_reference=DELETE,
        customer={"id": "cus_9", "email": "bo@example.com"},
        payment_method__funding=DELETE,
    )

    command = parse_event(data)

    assert isinstance(command, PaymentFailed)
    c = command.customer
    assert (c.locale, c.timezone, c.country, c.name, c.phone, c.created_at) == (
        "en",
        "UTC",
        "US",
        "",
        None,
        None,
    )
    assert command.subscription is None
    assert command.invoice.customer_id == "cus_9"
    assert command.invoice.subscription_id is None
    assert command.payment_method.customer_id == "cus_9"
    assert command.payment_method.funding is Funding.UNKNOWN
    assert (command.decline_code, command.network_code, command.advice_code) == (None, None, None)
    assert command.gateway_reference is None


def test_payment_failed_accepts_matching_explicit_ids_and_open_status() -> None:
    data = ev(
        FAILED,
        invoice__customer_id="cus_1",
        invoice__subscription_id="sub_1",
        invoice__status="open",
        payment_method__customer_id="cus_1",
        subscription__customer_id="cus_1",
    )

    command = parse_event(data)

    assert isinstance(command, PaymentFailed)
    assert command.invoice.subscription_id == "sub_1"


def test_invoice_without_subscription_keeps_its_own_subscription_id() -> None:
    command = parse_event(ev(FAILED, subscription=DELETE, invoice__subscription_id="sub_7"))

    assert isinstance(command, PaymentFailed)
    assert command.invoice.subscription_id == "sub_7"


def test_currency_is_normalised_and_zero_decimal_currencies_work() -> None:
    data = ev(
        FAILED, invoice__currency="jpy", invoice__amount_minor=1250, subscription__plan__currency=" jpy "
    )

    command = parse_event(data)

    assert isinstance(command, PaymentFailed)
    assert command.invoice.amount == Money(1250, "JPY")
    assert str(command.invoice.amount) == "1250 JPY"
    assert command.subscription is not None
    assert command.subscription.plan.price.currency == "JPY"


def test_free_plan_is_accepted() -> None:
    command = parse_event(ev(FAILED, subscription__plan__amount_minor=0))

    assert isinstance(command, PaymentFailed)
    assert command.subscription is not None
    assert command.subscription.plan.price == Money(0, "USD")


def test_payment_succeeded() -> None:
    command = parse_event(SUCCEEDED)

    assert command == PaymentSucceeded(
        event_id="evt_124",
        occurred_at=datetime(2026, 11, 4, 15, 30, tzinfo=timezone(timedelta(hours=-5))),
        invoice_id="in_1",
        gateway_reference="ch_2",
    )
    assert parse_event(ev(SUCCEEDED, gateway_reference=DELETE)) == PaymentSucceeded(
        "evt_124", command.occurred_at, "in_1", None
    )


def test_payment_method_updated() -> None:
    command = parse_event(METHOD_UPDATED)

    assert isinstance(command, PaymentMethodUpdated)
    assert command.event_id == "evt_125"
    assert command.occurred_at == datetime(2026, 11, 2, 8, tzinfo=UTC)
    pm = command.payment_method
    assert (pm.id, pm.customer_id, pm.gateway_token, pm.brand, pm.last4) == (
        "pm_2",
        "cus_1",
        "tok_new",
        "mastercard",
        "4444",
    )
    assert (pm.exp_month, pm.exp_year, pm.funding, pm.is_default) == (3, 2030, Funding.DEBIT, True)

    not_default = parse_event(ev(METHOD_UPDATED, payment_method__is_default=False))
    assert isinstance(not_default, PaymentMethodUpdated)
    assert not_default.payment_method.is_default is False


def test_subscription_canceled() -> None:
    assert parse_event(CANCELED) == SubscriptionCanceled(
        "evt_126", datetime(2026, 11, 5, tzinfo=UTC), "sub_1", "too expensive"
    )
    assert parse_event(ev(CANCELED, reason=DELETE)) == SubscriptionCanceled(
        "evt_126", datetime(2026, 11, 5, tzinfo=UTC), "sub_1", ""
    )
    assert parse_event(ev(CANCELED, reason=None)) == SubscriptionCanceled(
        "evt_126", datetime(2026, 11, 5, tzinfo=UTC), "sub_1", ""
    )


def test_invoice_paid_out_of_band() -> None:
    at = datetime(2026, 11, 6, 12, tzinfo=timezone(timedelta(hours=1)))
    assert parse_event(PAID_OUT_OF_BAND) == InvoicePaidOutOfBand("evt_127", at, "in_1", "bank transfer")
    assert parse_event(ev(PAID_OUT_OF_BAND, note=DELETE)) == InvoicePaidOutOfBand("evt_127", at, "in_1", "")


def test_payment_failed_takes_an_optional_renews_at() -> None:
    command = parse_event(ev(FAILED, subscription__renews_at="2026-12-01T00:00:00+01:00"))
    assert isinstance(command, PaymentFailed)
    assert command.subscription is not None
    assert command.subscription.renews_at == datetime(2026, 11, 30, 23, tzinfo=UTC)

    without = parse_event(FAILED)
    assert isinstance(without, PaymentFailed)
    assert without.subscription is not None
    assert without.subscription.renews_at is None


def test_subscription_updated_maps_every_field() -> None:
    command = parse_event(SUB_UPDATED)

    assert isinstance(command, SubscriptionUpdated)
    assert command.event_id == "evt_128"
    assert command.occurred_at == datetime(2026, 10, 1, tzinfo=UTC)
    c = command.customer
    assert (c.id, c.email, c.locale, c.timezone, c.country) == (
        "cus_1",
        "ana@example.com",
        "es",
        "America/Bogota",
        "CO",
    )
    sub = command.subscription
    assert (sub.id, sub.customer_id, sub.status) == ("sub_2", "cus_1", SubscriptionStatus.ACTIVE)
    assert sub.started_at == datetime(2025, 11, 1, tzinfo=UTC)
    assert sub.renews_at == datetime(2026, 11, 1, 5, tzinfo=UTC)
    assert (sub.plan.id, sub.plan.interval, sub.plan.price) == (
        "pro_year",
        Interval.YEAR,
        Money(49000, "USD"),
    )
    pm = command.payment_method
    assert pm is not None
    assert (pm.id, pm.customer_id, pm.gateway_token, pm.brand, pm.last4) == (
        "pm_1",
        "cus_1",
        "tok_abc",
        "visa",
        "4242",
    )
    assert (pm.exp_month, pm.exp_year, pm.funding, pm.is_default) == (10, 2026, Funding.CREDIT, True)


def test_subscription_updated_minimal_uses_defaults() -> None:
    data = ev(
        SUB_UPDATED,
        customer={"id": "cus_9", "email": "bo@example.com"},
        subscription__renews_at=DELETE,
        payment_method=DELETE,
    )

    command = parse_event(data)

    assert isinstance(command, SubscriptionUpdated)
    assert (command.customer.locale, command.customer.timezone, command.customer.country) == (
        "en",
        "UTC",
        "US",
    )
    assert command.subscription.customer_id == "cus_9"
    assert command.subscription.renews_at is None
    assert command.payment_method is None
    assert parse_event(ev(data, payment_method=None)) == command


def test_subscription_updated_payment_method_options() -> None:
    command = parse_event(
        ev(
            SUB_UPDATED,
            subscription__customer_id="cus_1",
            payment_method__customer_id="cus_1",
            payment_method__is_default=False,
            payment_method__funding=DELETE,
        )
    )

    assert isinstance(command, SubscriptionUpdated)
    assert command.payment_method is not None
    assert command.payment_method.customer_id == "cus_1"
    assert command.payment_method.is_default is False
    assert command.payment_method.funding is Funding.UNKNOWN


def test_contact_preferences_changed() -> None:
    command = parse_event(PREFERENCES)

    assert command == ContactPreferencesChanged(
        event_id="evt_129",
        occurred_at=datetime(2026, 11, 3, 9, tzinfo=UTC),
        customer_id="cus_1",
        sms_consent=True,
        voice_consent=False,
        unsubscribed=False,
        win_back_opt_in=True,
    )


@pytest.mark.parametrize("given", ["sms_consent", "voice_consent", "unsubscribed", "win_back_opt_in"])
def test_contact_preferences_absent_or_null_mean_unchanged(given: str) -> None:
    others = dict.fromkeys(("sms_consent", "voice_consent", "unsubscribed", "win_back_opt_in"), DELETE)
    others[given] = False
    data = ev(PREFERENCES, **others)
    expected = ContactPreferencesChanged(
        "evt_129", datetime(2026, 11, 3, 9, tzinfo=UTC), "cus_1", **{given: False}
    )

    assert parse_event(data) == expected
    nulls = {key: None for key in others if key != given}
    assert parse_event(ev(data, **nulls)) == expected


def test_sms_received_normalises_the_phone_to_e164() -> None:
    command = parse_event(SMS)

    assert command == SmsReceived("evt_130", datetime(2026, 11, 3, 9, 5, tzinfo=UTC), "+573001234567", "STOP")


@pytest.mark.parametrize("body", ["", " stop please\n", "ñ" * 1600, "Sí 👍"])
def test_sms_body_is_kept_as_sent(body: str) -> None:
    command = parse_event(ev(SMS, body=body))

    assert isinstance(command, SmsReceived)
    assert command.body == body


def test_push_subscribed_keeps_canonical_json() -> None:
    command = parse_event(PUSH)

    assert isinstance(command, PushSubscribed)
    assert (command.event_id, command.customer_id, command.endpoint) == ("evt_131", "cus_1", ENDPOINT)
    assert command.occurred_at == datetime(2026, 11, 3, 9, 10, tzinfo=UTC)
    assert command.subscription == (
        f'{{"endpoint":"{ENDPOINT}","keys":{{"auth":"{AUTH}","p256dh":"{P256DH}"}}}}'
    )
    assert json.loads(command.subscription) == {
        "endpoint": ENDPOINT,
        "keys": {"p256dh": P256DH, "auth": AUTH},
    }


def test_push_subscription_is_canonical_whatever_the_key_order_and_padding() -> None:
    reordered = ev(
        PUSH, subscription={"keys": {"auth": AUTH + "==", "p256dh": P256DH + "="}, "endpoint": ENDPOINT}
    )
    assert parse_event(reordered) == parse_event(PUSH)


def test_push_subscription_keeps_a_given_expiration_time() -> None:
    command = parse_event(ev(PUSH, subscription__expirationTime=1798761600000))

    assert isinstance(command, PushSubscribed)
    assert json.loads(command.subscription)["expirationTime"] == 1798761600000
    assert command.subscription.index('"expirationTime"') < command.subscription.index('"keys"')


def test_every_event_type_has_an_example() -> None:
    assert sorted(e["type"] for e in EXAMPLES) == sorted(EVENT_TYPES)


def test_input_is_not_mutated() -> None:
    data = copy.deepcopy(FAILED)
    parse_event(data)
    assert data == FAILED


# --- the three text forms ---------------------------------------------------------------


def expected_commands() -> list[object]:
    return [parse_event(e) for e in EXAMPLES]


def test_text_json_array() -> None:
    text = json.dumps(EXAMPLES, indent=2)
    assert parse_events_text(text) == expected_commands()


def test_text_single_object() -> None:
    assert parse_events_text(json.dumps(SUCCEEDED, indent=2)) == [parse_event(SUCCEEDED)]


def test_text_json_lines_with_blank_lines() -> None:
    text = "\n" + "\n\n".join(json.dumps(e) for e in EXAMPLES) + "\n  \n"
    assert parse_events_text(text) == expected_commands()


def test_text_json_lines_with_crlf_and_bom() -> None:
    text = "\ufeff" + "\r\n".join(json.dumps(e) for e in EXAMPLES) + "\r\n"
    assert parse_events_text(text) == expected_commands()


def test_text_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in EXAMPLES), encoding="utf-8")
    assert parse_events_text(path.read_text(encoding="utf-8"), source=str(path)) == (expected_commands())


@pytest.mark.parametrize("text", ["", "  \n\n", "[]"])
def test_text_without_events_is_empty(text: str) -> None:
    assert parse_events_text(text) == []


def test_text_bad_json_names_line_and_column() -> None:
    text = '[\n  {"id": "evt_1",\n   "type": }\n]'
    with pytest.raises(EventError) as info:
        parse_events_text(text, source="events.json")
    [(field, reason)] = info.value.problems
    assert field == "(json)"
    assert "line 3, column 12" in reason
    assert str(info.value).startswith("events.json: invalid events")


def test_text_json_lines_bad_line_names_its_line_and_index() -> None:
    lines = [json.dumps(SUCCEEDED), "", '{"id": "evt_2", "type"', json.dumps(CANCELED)]
    with pytest.raises(EventError) as info:
        parse_events_text("\n".join(lines))
    [(field, reason)] = info.value.problems
    assert field == "events[1]"
    assert "line 3, column 23" in reason


def test_text_json_lines_field_problem_names_index_and_line() -> None:
    lines = [json.dumps(SUCCEEDED), "", json.dumps(ev(FAILED, invoice__amount_minor=12.5))]
    with pytest.raises(EventError) as info:
        parse_events_text("\n".join(lines))
    [(field, reason)] = info.value.problems
    assert field == "events[1].invoice.amount_minor"
    assert reason.endswith("(line 3)")


def test_text_single_object_problem_has_no_index() -> None:
    with pytest.raises(EventError) as info:
        parse_events_text(json.dumps(ev(SUCCEEDED, invoice_id="")), source="one.json")
    assert fields(info.value.problems) == ["invoice_id"]
    assert info.value.source == "one.json"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"id": "evt_1", "id": "evt_2"}', "duplicate key 'id'"),
        ('[{"amount": NaN}]', "NaN is not valid JSON"),
        ('{"a": Infinity}', "Infinity is not valid JSON"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_text_unacceptable_json(text: str, needle: str) -> None:
    with pytest.raises(EventError) as info:
        parse_events_text(text)
    [(field, reason)] = info.value.problems
    assert field == "(json)"
    assert needle in reason


@pytest.mark.parametrize(
    "text",
    [
        '{"id": "evt_\\ud800", "type": "payment_succeeded", "invoice_id": "in_1"}',
        '{"\\udfff": 1, "type": "payment_succeeded"}',
        '{"id": "evt_1", "type": "payment_succeeded", "occurred_at": "\\ud800"}',
    ],
)
def test_lone_surrogates_are_event_errors(text: str) -> None:
    with pytest.raises(EventError):
        parse_events_text(text)


@pytest.mark.parametrize("text", ["42", '"payment_failed"', "null", "true"])
def test_text_that_is_not_events(text: str) -> None:
    with pytest.raises(EventError) as info:
        parse_events_text(text)
    assert fields(info.value.problems) == ["(json)"]
    assert "expected a JSON array" in info.value.problems[0][1]


# --- batches ----------------------------------------------------------------------------


def test_batch_returns_all_commands_in_order() -> None:
    assert parse_events(EXAMPLES) == expected_commands()


def test_batch_with_one_bad_event_raises_and_names_its_index() -> None:
    batch = [*EXAMPLES[:3], ev(FAILED, invoice__amount_minor="4900"), *EXAMPLES[3:]]
    with pytest.raises(EventError) as info:
        parse_events(batch)
    assert fields(info.value.problems) == ["events[3].invoice.amount_minor"]


def test_batch_lists_every_problem_of_every_event() -> None:
    batch = [
        ev(FAILED, customer__email="nope"),
        SUCCEEDED,
        ev(CANCELED, subscription_id=DELETE, occurred_at="2026-11-05T00:00:00"),
        {"type": "refund_issued"},
        "evt_1",
    ]
    with pytest.raises(EventError) as info:
        parse_events(batch)
    assert fields(info.value.problems) == [
        "events[0].customer.email",
        "events[2].occurred_at",
        "events[2].subscription_id",
        "events[3].type",
        "events[4]",
    ]
    message = str(info.value)
    assert "events[2].subscription_id: required" in message


def test_batch_must_be_a_list() -> None:
    with pytest.raises(EventError) as info:
        parse_events(FAILED)
    assert info.value.problems == [("events", "must be a JSON array of events, not an object")]


def test_where_prefixes_paths() -> None:
    problems = problems_of(ev(FAILED, invoice__amount_minor=-1), where="events[7]")
    assert fields(problems) == ["events[7].invoice.amount_minor"]
    assert problems_of([], where="events[7]") == [("events[7]", "must be a JSON object, not an array")]


# --- bad input, class by class ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (12.5, "must be an integer number of minor units (cents), not 12.5"),
        (4900.0, "must be an integer number of minor units (cents), not 4900.0"),
        ("4900", "must be an integer number of minor units (cents), not the string '4900'"),
        (True, "must be an integer number of minor units (cents), not a boolean (true)"),
        (-1, "must not be negative, got -1"),
        (None, "must be an integer number of minor units (cents), not null"),
        ([1], "must be an integer number of minor units (cents), not an array"),
    ],
)
def test_amount_must_be_a_non_negative_integer(value: object, reason: str) -> None:
    problems = problems_of(ev(FAILED, invoice__amount_minor=value))
    assert problems == [("invoice.amount_minor", reason)]
    problems = problems_of(ev(FAILED, subscription__plan__amount_minor=value))
    assert problems == [("subscription.plan.amount_minor", reason)]


def test_amount_must_fit_in_64_bits() -> None:
    problems = problems_of(ev(FAILED, invoice__amount_minor=2**63))
    assert fields(problems) == ["invoice.amount_minor"]


def test_invoice_amount_must_be_positive() -> None:
    problems = problems_of(ev(FAILED, invoice__amount_minor=0))
    assert problems == [("invoice.amount_minor", "must be a positive amount of minor units")]


@pytest.mark.parametrize("currency", ["XYZ", "US", "", 840, None, "dollars"])
def test_currency_must_be_iso_4217(currency: object) -> None:
    problems = problems_of(ev(FAILED, invoice__currency=currency))
    assert fields(problems) == ["invoice.currency"]
    assert "ISO 4217" in problems[0][1]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("occurred_at", "2026-11-01T10:00:00"),
        ("occurred_at", "2026-11-01"),
        ("customer__created_at", "2025-01-01T00:00:00"),
        ("subscription__started_at", "2025-01-01 00:00:00"),
        ("invoice__created_at", "2026-11-01T10:00:00.123"),
        ("subscription__renews_at", "2026-12-01T00:00:00"),
    ],
)
def test_datetimes_must_carry_a_time_zone(path: str, value: str) -> None:
    problems = problems_of(ev(FAILED, **{path: value}))
    assert problems == [(path.replace("__", "."), "must include a time zone, e.g. 2026-11-01T10:00:00Z")]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e["type"])
def test_naive_occurred_at_is_rejected_for_every_type(event: dict[str, Any]) -> None:
    problems = problems_of(ev(event, occurred_at="2026-11-01T10:00:00"))
    assert fields(problems) == ["occurred_at"]


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00Z", 1700000000, None, ""])
def test_datetimes_must_be_iso_8601_strings(value: object) -> None:
    problems = problems_of(ev(SUCCEEDED, occurred_at=value))
    assert fields(problems) == ["occurred_at"]
    assert "ISO 8601" in problems[0][1]


def test_datetime_offsets_give_the_same_instant_in_utc() -> None:
    # Commands keep event times in UTC: the engine adds days and hours to them.
    command = parse_event(ev(SUCCEEDED, occurred_at="2026-11-01T05:00:00-05:00"))
    assert command.occurred_at == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert command.occurred_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("id", ""),
        ("id", "e" * 201),
        ("id", " evt_1"),
        ("id", "evt\n1"),
        ("id", 123),
        ("invoice__id", "i" * 129),
        ("customer__id", ""),
        ("payment_method__id", None),
        ("gateway_reference", "g" * 129),
    ],
)
def test_ids_are_bounded_non_empty_strings(path: str, value: object) -> None:
    assert fields(problems_of(ev(FAILED, **{path: value}))) == [path.replace("__", ".")]


def test_id_lengths_at_the_limit_are_accepted() -> None:
    command = parse_event(ev(FAILED, id="e" * 200, invoice__id="i" * 128))
    assert isinstance(command, PaymentFailed)
    assert len(command.event_id) == 200


@pytest.mark.parametrize(
    ("event", "path"),
    [
        (SUCCEEDED, "invoice_id"),
        (CANCELED, "subscription_id"),
        (PAID_OUT_OF_BAND, "invoice_id"),
        (METHOD_UPDATED, "payment_method__customer_id"),
    ],
)
def test_other_ids_are_limited_to_128(event: dict[str, Any], path: str) -> None:
    assert fields(problems_of(ev(event, **{path: "x" * 129}))) == [path.replace("__", ".")]
    assert parse_event(ev(event, **{path: "x" * 128}))


@pytest.mark.parametrize(
    ("event", "key"),
    [
        (FAILED, "id"), (FAILED, "type"), (FAILED, "occurred_at"), (FAILED, "customer"),
        (FAILED, "invoice"), (FAILED, "payment_method"), (FAILED, "customer__email"),
        (FAILED, "invoice__created_at"), (FAILED, "payment_method__gateway_token"),
        (FAILED, "payment_method__last4"), (FAILED, "subscription__plan__interval"),
        (SUCCEEDED, "invoice_id"), (METHOD_UPDATED, "payment_method__customer_id"),
        (CANCELED, "subscription_id"), (PAID_OUT_OF_BAND, "invoice_id"),
        (SUB_UPDATED, "customer"), (SUB_UPDATED, "subscription"), (SUB_UPDATED, "customer__email"),
        (SUB_UPDATED, "subscription__plan"), (SUB_UPDATED, "payment_method__gateway_token"),
        (PREFERENCES, "customer_id"), (SMS, "phone"), (SMS, "body"), (PUSH, "customer_id"),
        (PUSH, "subscription"), (PUSH, "subscription__endpoint"), (PUSH, "subscription__keys"),
        (PUSH, "subscription__keys__p256dh"), (PUSH, "subscription__keys__auth"),
    ],
)  # fmt: skip
def test_required_keys(event: dict[str, Any], key: str) -> None:
    problems = problems_of(ev(event, **{key: DELETE}))
    assert fields(problems) == [key.replace("__", ".")]
    assert problems[0][1].startswith("required")


@pytest.mark.parametrize(
    ("path", "owner_keys"),
    [
        ("amount", ["id", "type", "occurred_at", "customer"]),
        ("invoice__amount", ["amount_minor", "currency"]),
        ("customer__emial", ["email", "locale"]),
        ("subscription__plan__price", ["amount_minor", "interval"]),
        ("decline__reason", ["code", "network_code", "advice_code"]),
        ("invoice__status_code", ["status"]),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(path: str, owner_keys: list[str]) -> None:
    problems = problems_of(ev(FAILED, **{path: 1}))
    field = path.replace("__", ".")
    assert fields(problems) == [field]
    reason = reason_for(problems, field)
    assert reason.startswith("unknown key; expected one of: ")
    for key in owner_keys:
        assert key in reason


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e["type"])
def test_unknown_keys_are_errors_for_every_type(event: dict[str, Any]) -> None:
    assert fields(problems_of(ev(event, surprise=True))) == ["surprise"]


@pytest.mark.parametrize(
    "key",
    [
        "number",
        "card_number",
        "cardNumber",
        "pan",
        "cvc",
        "cvv",
        "CVV2",
        "security_code",
        "credit_card_number",
    ],
)
@pytest.mark.parametrize("event", [FAILED, METHOD_UPDATED], ids=lambda e: e["type"])
def test_card_data_is_never_accepted(event: dict[str, Any], key: str) -> None:
    secret = "4242424242424242" if "cv" not in key.lower() else "123"
    problems = problems_of(ev(event, **{f"payment_method__{key}": secret}))
    assert fields(problems) == [f"payment_method.{key}"]
    reason = problems[0][1]
    assert reason.startswith("card data is never accepted")
    with pytest.raises(EventError) as info:
        parse_event(ev(event, **{f"payment_method__{key}": secret}))
    assert secret not in str(info.value)


def test_card_data_is_rejected_anywhere_with_the_explicit_reason() -> None:
    problems = problems_of(ev(FAILED, card_number="4242424242424242"))
    assert fields(problems) == ["card_number"]
    assert problems[0][1].startswith("card data is never accepted")


@pytest.mark.parametrize("number", ["4242424242424242", "4242 4242 4242 4242", "5555555555554444"])
def test_a_card_number_in_place_of_last4_or_token_is_rejected_without_echo(number: str) -> None:
    for path in ("payment_method__last4", "payment_method__gateway_token"):
        with pytest.raises(EventError) as info:
            parse_event(ev(FAILED, **{path: number}))
        [(field, reason)] = info.value.problems
        assert field == path.replace("__", ".")
        assert "card data is never accepted" in reason
        assert number not in str(info.value)


def test_a_numeric_token_that_is_not_a_card_number_is_accepted() -> None:
    command = parse_event(ev(FAILED, payment_method__gateway_token="1234567890123"))
    assert isinstance(command, PaymentFailed)


def test_unknown_type_lists_the_known_types() -> None:
    [(field, reason)] = problems_of(ev(FAILED, type="refund_issued"))
    assert field == "type"
    assert reason.startswith("unknown event type 'refund_issued'")
    for known in EVENT_TYPES:
        assert known in reason


@pytest.mark.parametrize("tag", [None, 5, ["payment_failed"], "PAYMENT_FAILED", ""])
def test_odd_types_are_unknown(tag: object) -> None:
    assert fields(problems_of(ev(SUCCEEDED, type=tag))) == ["type"]


def test_missing_type_lists_the_known_types() -> None:
    [(field, reason)] = problems_of(ev(SUCCEEDED, type=DELETE))
    assert field == "type"
    assert reason.startswith("required; one of: payment_failed")


@pytest.mark.parametrize("data", [[], "payment_failed", 3, None, True])
def test_an_event_must_be_an_object(data: object) -> None:
    assert fields(problems_of(data)) == ["(event)"]


@pytest.mark.parametrize("path", ["customer", "invoice", "payment_method", "subscription__plan", "decline"])
def test_nested_objects_must_be_objects(path: str) -> None:
    [(field, reason)] = problems_of(ev(FAILED, **{path: "x"}))
    assert field == path.replace("__", ".")
    assert reason == "must be a JSON object, not a string"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("customer__email", "ana"),
        ("customer__locale", "fr"),
        ("customer__timezone", "Mars/Olympus"),
        ("customer__country", "Colombia"),
        ("customer__country", "co"),
        ("payment_method__last4", "42"),
        ("payment_method__last4", "abcd"),
        ("payment_method__exp_month", 13),
        ("payment_method__exp_month", 0),
        ("payment_method__exp_year", 27),
    ],
)
def test_domain_rules_become_problems_on_the_right_path(path: str, value: object) -> None:
    assert fields(problems_of(ev(FAILED, **{path: value}))) == [path.replace("__", ".")]


def test_domain_rules_apply_to_payment_method_updated() -> None:
    problems = problems_of(ev(METHOD_UPDATED, payment_method__last4="12", payment_method__exp_month=14))
    assert fields(problems) == ["payment_method.last4"]


def test_several_domain_problems_are_reported_together() -> None:
    problems = problems_of(
        ev(FAILED, customer__email="x", invoice__amount_minor=0, payment_method__last4="1")
    )
    assert fields(problems) == ["customer.email", "invoice.amount_minor", "payment_method.last4"]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("payment_method__exp_month", 12.0),
        ("payment_method__exp_month", "12"),
        ("payment_method__exp_year", True),
        ("payment_method__funding", "charge"),
        ("subscription__status", "trialing"),
        ("subscription__plan__interval", "week"),
        ("invoice__status", "paid"),
        ("customer__email", 5),
        ("decline__code", 51),
    ],
)
def test_types_are_strict(path: str, value: object) -> None:
    assert fields(problems_of(ev(FAILED, **{path: value}))) == [path.replace("__", ".")]


def test_is_default_must_be_a_boolean() -> None:
    problems = problems_of(ev(METHOD_UPDATED, payment_method__is_default="yes"))
    assert fields(problems) == ["payment_method.is_default"]


@pytest.mark.parametrize(
    ("path", "value", "other"),
    [
        ("payment_method__customer_id", "cus_2", "customer.id"),
        ("invoice__customer_id", "cus_2", "customer.id"),
        ("subscription__customer_id", "cus_2", "customer.id"),
        ("invoice__subscription_id", "sub_2", "subscription.id"),
    ],
)
def test_ids_that_must_agree(path: str, value: str, other: str) -> None:
    [(field, reason)] = problems_of(ev(FAILED, **{path: value}))
    assert field == path.replace("__", ".")
    assert other in reason


def test_payment_failed_does_not_take_is_default() -> None:
    assert fields(problems_of(ev(FAILED, payment_method__is_default=True))) == ["payment_method.is_default"]


def test_empty_decline_codes_mean_unknown() -> None:
    command = parse_event(ev(FAILED, decline={"code": "", "network_code": None}))
    assert isinstance(command, PaymentFailed)
    assert (command.decline_code, command.network_code, command.advice_code) == (None, None, None)


def test_error_message_lists_each_problem() -> None:
    with pytest.raises(EventError) as info:
        parse_event(ev(FAILED, invoice__amount_minor=12.5))
    assert str(info.value) == (
        "invalid events\n  invoice.amount_minor: must be an integer number of minor units (cents), not 12.5"
    )
    assert isinstance(info.value, ValueError)


# --- bad input of the newer types ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("customer__email", "ana"),
        ("customer__timezone", "Mars/Olympus"),
        ("subscription__status", "trialing"),
        ("subscription__started_at", "2025-11-01T00:00:00"),
        ("subscription__renews_at", "2026-11-01T00:00:00"),
        ("subscription__renews_at", 1798761600),
        ("subscription__plan__amount_minor", 490.0),
        ("subscription__plan__currency", "XYZ"),
        ("payment_method__last4", "42"),
        ("payment_method__exp_month", "10"),
        ("payment_method__exp_year", 26),
        ("payment_method__is_default", "yes"),
        ("payment_method__is_default", 1),
        ("payment_method__funding", "charge"),
        ("payment_method", "pm_1"),
        ("subscription", None),
    ],
)
def test_subscription_updated_bad_values_name_their_field(path: str, value: object) -> None:
    assert fields(problems_of(ev(SUB_UPDATED, **{path: value}))) == [path.replace("__", ".")]


@pytest.mark.parametrize(
    ("path", "value"),
    [("payment_method__customer_id", "cus_2"), ("subscription__customer_id", "cus_2")],
)
def test_subscription_updated_ids_must_agree_with_the_customer(path: str, value: str) -> None:
    [(field, reason)] = problems_of(ev(SUB_UPDATED, **{path: value}))
    assert field == path.replace("__", ".")
    assert reason == "must equal customer.id ('cus_1') if given"


def test_subscription_updated_unknown_key_lists_the_payment_method_keys() -> None:
    [(field, reason)] = problems_of(ev(SUB_UPDATED, payment_method__default=True))
    assert field == "payment_method.default"
    assert reason.startswith("unknown key; expected one of: ")
    assert "is_default" in reason
    assert "customer_id" in reason


@pytest.mark.parametrize("key", ["card_number", "cvc"])
def test_subscription_updated_rejects_card_data(key: str) -> None:
    secret = "4242424242424242" if key == "card_number" else "123"
    with pytest.raises(EventError) as info:
        parse_event(ev(SUB_UPDATED, **{f"payment_method__{key}": secret}))
    [(field, reason)] = info.value.problems
    assert field == f"payment_method.{key}"
    assert reason.startswith("card data is never accepted")
    assert secret not in str(info.value)


def test_subscription_updated_card_number_as_token_is_rejected() -> None:
    [(field, reason)] = problems_of(ev(SUB_UPDATED, payment_method__gateway_token="4242424242424242"))
    assert field == "payment_method.gateway_token"
    assert "card data is never accepted" in reason


def test_subscription_updated_reports_several_problems() -> None:
    problems = problems_of(
        ev(SUB_UPDATED, customer__email="x", payment_method__last4="1", payment_method__customer_id="cus_2")
    )
    assert sorted(fields(problems)) == [
        "customer.email",
        "payment_method.customer_id",
        "payment_method.last4",
    ]


@pytest.mark.parametrize("value", ["true", 1, 0, "no", [True], {}])
@pytest.mark.parametrize("key", ["sms_consent", "voice_consent", "unsubscribed", "win_back_opt_in"])
def test_contact_preferences_are_strict_booleans(key: str, value: object) -> None:
    [(field, _)] = problems_of(ev(PREFERENCES, **{key: value}))
    assert field == key


def test_contact_preferences_must_change_something() -> None:
    nothing = ev(
        PREFERENCES, sms_consent=DELETE, voice_consent=DELETE, unsubscribed=DELETE, win_back_opt_in=DELETE
    )
    [(field, reason)] = problems_of(nothing)
    assert field == "(event)"
    assert reason.startswith("changes nothing: give at least one of sms_consent, voice_consent")
    assert fields(problems_of(ev(nothing, sms_consent=None, unsubscribed=None))) == ["(event)"]
    with pytest.raises(EventError) as info:
        parse_events([PREFERENCES, nothing])
    assert fields(info.value.problems) == ["events[1]"]


def test_contact_preferences_unknown_key_lists_the_keys() -> None:
    [(field, reason)] = problems_of(ev(PREFERENCES, email_consent=True))
    assert field == "email_consent"
    assert "win_back_opt_in" in reason


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("3001234567", "no country code"),
        ("call me", "not a phone number"),
        ("+99912", "unknown country code"),
        ("+57 300", "too short"),
        ("+1 555 000 0000", "not a valid number"),
        ("", "at least 1 character"),
        ("+" + "1" * 40, "at most 32 characters"),
    ],
)
def test_sms_phone_must_be_e164(value: str, needle: str) -> None:
    [(field, reason)] = problems_of(ev(SMS, phone=value))
    assert field == "phone"
    assert needle in reason


@pytest.mark.parametrize("value", [573001234567, None, ["+573001234567"]])
def test_sms_phone_must_be_a_string(value: object) -> None:
    assert fields(problems_of(ev(SMS, phone=value))) == ["phone"]


@pytest.mark.parametrize("value", ["x" * 1601, None, 5])
def test_sms_body_is_a_string_of_at_most_1600_characters(value: object) -> None:
    assert fields(problems_of(ev(SMS, body=value))) == ["body"]


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("http://push.example.net/send/abc123", "must be an https URL"),
        ("push.example.net/send/abc123", "must be an https URL"),
        ("https:///send/abc123", "with a host"),
        ("https://push.example.net/send/ abc", "whitespace"),
        ("https://push.example.net:99999/send", "not a valid URL"),
        ("", "at least 1 character"),
        ("https://push.example.net/" + "a" * 1000, "at most 1000 characters"),
    ],
)
def test_push_endpoint_must_be_https(value: str, needle: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(ev(PUSH, subscription__endpoint=value))
    [(field, reason)] = info.value.problems
    assert field == "subscription.endpoint"
    assert needle in reason
    if value:
        assert value not in str(info.value)  # an endpoint is a capability: never echoed


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("p256dh", P256DH.replace("-", "+"), "base64url"),
        ("p256dh", P256DH[:40] + "/" + P256DH[41:], "base64url"),
        ("p256dh", P256DH + " ", "base64url"),
        ("p256dh", P256DH[:-2], "wrong length"),
        ("p256dh", P256DH[:-4], "65 bytes"),
        ("p256dh", "A" + P256DH[1:], "65 bytes"),
        ("p256dh", "", "at least 1 character"),
        ("auth", AUTH + "AAAA", "16-byte"),
        ("auth", "a.b", "base64url"),
        ("auth", "=" * 4, "base64url"),
    ],
)
def test_push_keys_must_be_base64url_of_the_right_size(key: str, value: str, needle: str) -> None:
    [(field, reason)] = problems_of(ev(PUSH, **{f"subscription__keys__{key}": value}))
    assert field == f"subscription.keys.{key}"
    assert needle in reason


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("subscription__keys__p256dh", 5),
        ("subscription__keys__auth", None),
        ("subscription__keys", [P256DH, AUTH]),
        ("subscription__expirationTime", "soon"),
        ("subscription__expirationTime", -1),
        ("subscription__expirationTime", 1.5),
        ("subscription__keys__aes128gcm", "x"),
        ("subscription__endpoint_url", ENDPOINT),
        ("customer_id", ""),
    ],
)
def test_push_subscription_bad_values_name_their_field(path: str, value: object) -> None:
    assert fields(problems_of(ev(PUSH, **{path: value}))) == [path.replace("__", ".")]


def test_push_subscription_must_be_an_object_not_its_json_text() -> None:
    text = json.dumps(PUSH["subscription"])
    assert problems_of(ev(PUSH, subscription=text)) == [
        ("subscription", "must be a JSON object, not a string")
    ]


# --- JSON Schema --------------------------------------------------------------------------


def test_json_schema_is_a_discriminated_union_of_every_type() -> None:
    schema = event_json_schema()
    json.dumps(schema)  # serialisable
    discriminator = schema["discriminator"]
    assert isinstance(discriminator, dict)
    assert discriminator["propertyName"] == "type"
    assert sorted(discriminator["mapping"]) == sorted(EVENT_TYPES)
    defs = schema["$defs"]
    assert isinstance(defs, dict)
    for model in defs.values():
        if model.get("type") == "object":
            assert model["additionalProperties"] is False
    invoice = defs["InvoiceIn"]["properties"]
    assert invoice["amount_minor"]["type"] == "integer"
    assert invoice["amount_minor"]["minimum"] == 0
    assert invoice["created_at"]["format"] == "date-time"
    assert "renews_at" in defs["SubscriptionIn"]["properties"]
    assert sorted(defs["PushKeysIn"]["required"]) == ["auth", "p256dh"]


def test_json_schema_is_a_fresh_copy() -> None:
    schema = event_json_schema()
    schema["title"] = "changed"
    assert event_json_schema()["title"] != "changed"


# --- never another exception ------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "",
            "2026-11-01T10:00:00Z",
            "2026-11-01T10:00:00",
            "USD",
            "usd",
            "4242",
            "es",
            "UTC",
            "US",
            "month",
            "active",
            "credit",
            *EVENT_TYPES,
        ]
    )
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=15), children, max_size=5)
    ),
    max_leaves=20,
)
KEYS = sorted({
    "id", "type", "occurred_at", "customer", "subscription", "invoice", "payment_method",
    "decline", "gateway_reference", "invoice_id", "subscription_id", "reason", "note",
    "email", "locale", "timezone", "country", "created_at", "amount_minor", "currency",
    "plan", "status", "started_at", "interval", "last4", "exp_month", "exp_year",
    "gateway_token", "brand", "funding", "customer_id", "is_default", "number", "code",
    "renews_at", "sms_consent", "voice_consent", "unsubscribed", "win_back_opt_in", "phone",
    "body", "endpoint", "keys", "p256dh", "auth", "expirationTime",
})  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    return out


@st.composite
def mutated_events(draw: st.DrawFn) -> object:
    """A valid example with a few random edits: replace, delete or add a key."""
    data: Any = copy.deepcopy(draw(st.sampled_from(EXAMPLES)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)))
        if not path:
            continue
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if not isinstance(parent, dict):
            continue
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(JSON_VALUES)
        elif action == "delete":
            parent.pop(path[-1], None)
        else:
            parent[draw(st.sampled_from(KEYS) | st.text(max_size=8))] = draw(JSON_VALUES)
    return data


EVENTISH = st.fixed_dictionaries(
    {"type": st.sampled_from(EVENT_TYPES)},
    optional={key: JSON_VALUES for key in KEYS if key != "type"},
)


COMMAND_TYPES = (
    PaymentFailed,
    PaymentSucceeded,
    PaymentMethodUpdated,
    SubscriptionCanceled,
    InvoicePaidOutOfBand,
    SubscriptionUpdated,
    ContactPreferencesChanged,
    SmsReceived,
    PushSubscribed,
)


def outcome(parse: Callable[[Any], _R], data: Any) -> _R | EventError:
    """What ``parse`` returns or the ``EventError`` it raises; any other exception escapes."""
    try:
        return parse(data)
    except EventError as exc:
        return exc


def assert_well_formed(error: EventError) -> None:
    assert error.problems
    for field, reason in error.problems:
        assert isinstance(field, str)
        assert field
        assert isinstance(reason, str)
        assert reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON_VALUES | EVENTISH | mutated_events())
def test_random_json_parses_or_raises_event_error(data: object) -> None:
    result = outcome(parse_event, data)
    if isinstance(result, EventError):
        assert_well_formed(result)
    else:
        assert isinstance(result, COMMAND_TYPES)
        assert result.occurred_at.utcoffset() is not None


@settings(max_examples=100, deadline=None)
@given(st.lists(JSON_VALUES | mutated_events(), max_size=4))
def test_random_batches_parse_or_raise_event_error(data: list[object]) -> None:
    result = outcome(parse_events, data)
    if isinstance(result, EventError):
        assert_well_formed(result)
        assert all(field.startswith("events[") for field, _ in result.problems)
    else:
        assert len(result) == len(data)


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=200)
    | JSON_VALUES.map(json.dumps)
    | st.lists(mutated_events(), max_size=3).map(lambda es: "\n".join(map(json.dumps, es)))
)
def test_random_text_parses_or_raises_event_error(text: str) -> None:
    result = outcome(parse_events_text, text)
    if isinstance(result, EventError):
        assert_well_formed(result)
    else:
        assert all(isinstance(c, COMMAND_TYPES) for c in result)


# --- docs -------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def test_every_example_in_the_docs_parses() -> None:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", text, re.DOTALL)
    commands = [c for block in blocks for c in parse_events_text(block, source="docs")]
    assert {type(c).__name__ for c in commands} == {t.__name__ for t in COMMAND_TYPES}
    for example in (FAILED, SUB_UPDATED, PREFERENCES, SMS, PUSH):
        documented = [parse_events_text(b)[0] for b in blocks if f'"id": "{example["id"]}"' in b]
        assert documented == [parse_event(example)], example["type"]
