"""Signed links: round trip, expiry, tampering, purpose, secrets."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous.encoding import base64_decode

from recobra.messages.links import (
    PURPOSES,
    LinkError,
    LinkExpired,
    LinkSigner,
    LinkTampered,
    LinkWrongPurpose,
    SignedLink,
)

SECRET = "k" * 20 + "0123456789abcdef"  # 36 characters
OTHER_SECRET = "z" * 40
BASE = "https://pay.example.com"
NOW = datetime(2026, 3, 5, 14, 30, 15, tzinfo=UTC)
TTL = timedelta(days=7)
SIGNER = LinkSigner(SECRET, BASE)
TOKEN = SIGNER.token("update_payment", "sub_123", now=NOW, ttl=TTL)
URL_ALPHABET = string.ascii_letters + string.digits + "-_."


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_round_trip() -> None:
    url = SIGNER.make("update_payment", "sub_123", now=NOW, ttl=TTL, extra={"case": "case_9"})
    assert url.startswith(f"{BASE}/p/update_payment/")
    link = SIGNER.verify("update_payment", token_of(url), now=NOW + timedelta(days=1))
    assert isinstance(link, SignedLink)
    assert link.purpose == "update_payment"
    assert link.subject == "sub_123"
    assert link.issued_at == NOW
    assert link.expires_at == NOW + TTL
    assert dict(link.extra) == {"case": "case_9"}
    assert len(link.nonce) >= 12


def test_issue_time_is_whole_seconds_in_utc() -> None:
    local = datetime(2026, 3, 5, 9, 30, 15, 999_999, tzinfo=ZoneInfo("America/Bogota"))
    link = SIGNER.verify(
        "cancel", SIGNER.token("cancel", "s", now=local, ttl=TTL), now=local + timedelta(seconds=1)
    )
    assert link.issued_at == datetime(2026, 3, 5, 14, 30, 15, tzinfo=UTC)
    assert link.issued_at.tzinfo is UTC


@pytest.mark.parametrize("purpose", sorted(PURPOSES))
def test_every_purpose_round_trips(purpose: str) -> None:
    token = SIGNER.token(purpose, "cus_1", now=NOW, ttl=TTL)
    assert SIGNER.verify(purpose, token, now=NOW).subject == "cus_1"


def test_click_link_carries_its_target() -> None:
    url = SIGNER.make("click", "msg_1", now=NOW, ttl=TTL, extra={"to": "https://acme.example/help?a=1&b=2"})
    assert SIGNER.verify("click", token_of(url), now=NOW).extra["to"] == "https://acme.example/help?a=1&b=2"


def test_each_link_has_its_own_nonce() -> None:
    a = SIGNER.verify("cancel", SIGNER.token("cancel", "s", now=NOW, ttl=TTL), now=NOW)
    b = SIGNER.verify("cancel", SIGNER.token("cancel", "s", now=NOW, ttl=TTL), now=NOW)
    assert a.nonce != b.nonce


def test_base_url_trailing_slash_is_ignored() -> None:
    signer = LinkSigner(SECRET, BASE + "/")
    assert signer.make("cancel", "s", now=NOW, ttl=TTL).startswith(f"{BASE}/p/cancel/")


def test_links_are_short_enough_for_sms() -> None:
    url = SIGNER.make("update_payment", "sub_1NfQ8uLkdIwHu7ix", now=NOW, ttl=timedelta(days=14))
    assert len(url) <= 160


def test_expired() -> None:
    assert SIGNER.verify("update_payment", TOKEN, now=NOW + TTL - timedelta(seconds=1)).subject == "sub_123"
    with pytest.raises(LinkExpired, match="expired at 2026-03-12T14:30:15") as caught:
        SIGNER.verify("update_payment", TOKEN, now=NOW + TTL)
    assert caught.value.link.subject == "sub_123"
    assert isinstance(caught.value, LinkError)


def test_tampered_payload() -> None:
    payload, signature = TOKEN.rsplit(".", 1)
    flipped = ("A" if payload[5] != "A" else "B").join([payload[:5], payload[6:]])
    with pytest.raises(LinkTampered, match="damaged or was not made by us"):
        SIGNER.verify("update_payment", f"{flipped}.{signature}", now=NOW)


@pytest.mark.parametrize("token", ["", "abc", "a.b", "....", "é.é", TOKEN + "=", " " + TOKEN])
def test_garbage_is_tampered(token: str) -> None:
    with pytest.raises(LinkTampered):
        SIGNER.verify("update_payment", token, now=NOW)


def test_other_secret_is_tampered() -> None:
    with pytest.raises(LinkTampered):
        LinkSigner(OTHER_SECRET, BASE).verify("update_payment", TOKEN, now=NOW)


def test_signature_spelled_differently_is_tampered() -> None:
    # Base64 ignores the unused low bits of the last character: find a different last
    # character that decodes to the same bytes; the token must still be refused.
    payload, signature = TOKEN.rsplit(".", 1)
    twins = [
        c
        for c in string.ascii_letters + string.digits + "-_"
        if c != signature[-1] and base64_decode(signature[:-1] + c) == base64_decode(signature)
    ]
    assert twins, "a 16-byte signature always has equivalent spellings"
    with pytest.raises(LinkTampered):
        SIGNER.verify("update_payment", f"{payload}.{signature[:-1]}{twins[0]}", now=NOW)


def test_wrong_purpose() -> None:
    cancel = SIGNER.token("cancel", "sub_123", now=NOW, ttl=TTL)
    with pytest.raises(LinkWrongPurpose, match="this link is for 'cancel', not 'update_payment'") as caught:
        SIGNER.verify("update_payment", cancel, now=NOW)
    assert caught.value.actual == "cancel"


def test_wrong_purpose_is_checked_before_expiry() -> None:
    cancel = SIGNER.token("cancel", "sub_123", now=NOW, ttl=TTL)
    with pytest.raises(LinkWrongPurpose):
        SIGNER.verify("reactivate", cancel, now=NOW + TTL * 2)


def test_unknown_purpose() -> None:
    with pytest.raises(LinkWrongPurpose, match="unknown link purpose 'delete_everything'"):
        SIGNER.verify("delete_everything", TOKEN, now=NOW)
    with pytest.raises(ValueError, match="unknown link purpose"):
        SIGNER.make("delete_everything", "s", now=NOW, ttl=TTL)


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_short_secret(secret: str) -> None:
    with pytest.raises(ValueError, match="at least 32 characters"):
        LinkSigner(secret, BASE)


def test_short_previous_secret() -> None:
    with pytest.raises(ValueError, match="at least 32 characters"):
        LinkSigner(SECRET, BASE, previous_secrets=["old"])


def test_secret_rotation() -> None:
    rotated = LinkSigner(OTHER_SECRET, BASE, previous_secrets=[SECRET])
    assert rotated.verify("update_payment", TOKEN, now=NOW).subject == "sub_123"
    new_token = rotated.token("update_payment", "sub_9", now=NOW, ttl=TTL)
    with pytest.raises(LinkTampered):
        SIGNER.verify("update_payment", new_token, now=NOW)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        SIGNER.make("cancel", "s", now=datetime(2026, 3, 5), ttl=TTL)  # noqa: DTZ001
    with pytest.raises(ValueError, match="timezone-aware"):
        SIGNER.verify("cancel", TOKEN, now=datetime(2026, 3, 5))  # noqa: DTZ001
    with pytest.raises(ValueError, match="at least one second"):
        SIGNER.make("cancel", "s", now=NOW, ttl=timedelta(0))
    with pytest.raises(ValueError, match="non-empty"):
        SIGNER.make("cancel", "", now=NOW, ttl=TTL)
    with pytest.raises(ValueError, match="strings to strings"):
        SIGNER.make("cancel", "s", now=NOW, ttl=TTL, extra={"n": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="http"):
        LinkSigner(SECRET, "pay.example.com")


def test_repr_hides_the_secret() -> None:
    assert SECRET not in repr(SIGNER)


@given(st.data())
def test_any_changed_character_is_detected(data: st.DataObject) -> None:
    position = data.draw(st.integers(min_value=0, max_value=len(TOKEN) - 1), label="position")
    replacement = data.draw(
        st.one_of(st.sampled_from(URL_ALPHABET + "=+/ %"), st.characters()).filter(
            lambda c: c != TOKEN[position]
        ),
        label="replacement",
    )
    tampered = TOKEN[:position] + replacement + TOKEN[position + 1 :]
    with pytest.raises(LinkTampered):
        SIGNER.verify("update_payment", tampered, now=NOW)


@given(st.data())
def test_any_inserted_or_removed_character_is_detected(data: st.DataObject) -> None:
    position = data.draw(st.integers(min_value=0, max_value=len(TOKEN) - 1), label="position")
    if data.draw(st.booleans(), label="insert"):
        extra = data.draw(st.sampled_from(URL_ALPHABET), label="inserted")
        tampered = TOKEN[:position] + extra + TOKEN[position:]
    else:
        tampered = TOKEN[:position] + TOKEN[position + 1 :]
    with pytest.raises(LinkTampered):
        SIGNER.verify("update_payment", tampered, now=NOW)
