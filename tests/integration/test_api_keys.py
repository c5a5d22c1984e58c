"""API keys on both backends: hashed at rest, verified in constant time, revoked at once,
``last_used_at`` kept without a write per request; and the ``recobra api-keys`` commands."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import T0, Db
from typer.testing import CliRunner

from recobra.cli import app as cli
from recobra.store import keys
from recobra.store.keys import create_key, get_key, list_keys, revoke_key, verify_key
from recobra.store.sql import SqlStore

KEY_FORMAT = re.compile(r"rk_live_[A-Za-z0-9_-]{43}")


def all_stored_text(db: Db) -> str:
    return "\n".join(str(value) for row in db.rows("api_keys") for value in row.values())


def test_a_key_is_shown_once_and_stored_only_as_its_hash(store: SqlStore, db: Db) -> None:
    key_id, plaintext = create_key(store.engine, "billing backend", T0)

    assert KEY_FORMAT.fullmatch(plaintext)
    (row,) = db.rows("api_keys")
    assert row["id"] == key_id
    assert row["name"] == "billing backend"
    assert row["key_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert row["prefix"] == plaintext[len("rk_live_") :][:8]
    assert row["created_at"] == T0
    assert row["revoked_at"] is None
    assert row["last_used_at"] is None
    stored = all_stored_text(db)
    assert plaintext not in stored
    assert plaintext.removeprefix("rk_live_") not in stored
    assert plaintext[len("rk_live_") :][8:] not in stored  # nothing beyond the display prefix


def test_keys_are_unique(store: SqlStore) -> None:
    made = [create_key(store.engine, f"k{i}", T0) for i in range(20)]
    assert len({key_id for key_id, _ in made}) == 20
    assert len({plaintext for _, plaintext in made}) == 20


def test_a_key_verifies_and_anything_else_does_not(store: SqlStore) -> None:
    key_id, plaintext = create_key(store.engine, "a", T0)
    other_id, other = create_key(store.engine, "b", T0)

    assert verify_key(store.engine, plaintext, T0) == key_id
    assert verify_key(store.engine, other, T0) == other_id
    for wrong in (
        "",
        "rk_live_",
        plaintext[:-1],
        plaintext + "x",
        plaintext.upper(),
        plaintext.replace("rk_live_", "rk_test_"),
        plaintext.removeprefix("rk_live_"),
        "rk_live_" + "A" * 43,
        plaintext + "A" * 500,
        hashlib.sha256(plaintext.encode()).hexdigest(),
    ):
        assert verify_key(store.engine, wrong, T0) is None, wrong


def test_keys_sharing_a_display_prefix_are_told_apart(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    randoms = iter(["SamePref" + "a" * 35, "SamePref" + "b" * 35])
    monkeypatch.setattr(keys.secrets, "token_urlsafe", lambda _n: next(randoms))
    first_id, first = create_key(store.engine, "first", T0)
    second_id, second = create_key(store.engine, "second", T0)

    assert first[8:16] == second[8:16] == "SamePref"
    assert verify_key(store.engine, first, T0) == first_id
    assert verify_key(store.engine, second, T0) == second_id
    assert verify_key(store.engine, "rk_live_SamePref" + "c" * 35, T0) is None


def test_a_revoked_key_no_longer_verifies(store: SqlStore) -> None:
    key_id, plaintext = create_key(store.engine, "a", T0)
    keep_id, keep = create_key(store.engine, "b", T0)

    revoked = revoke_key(store.engine, key_id, T0 + timedelta(hours=1))

    assert revoked.revoked_at == T0 + timedelta(hours=1)
    assert not revoked.active
    assert verify_key(store.engine, plaintext, T0 + timedelta(hours=2)) is None
    assert verify_key(store.engine, keep, T0 + timedelta(hours=2)) == keep_id
    # Revoking again changes nothing.
    again = revoke_key(store.engine, key_id, T0 + timedelta(hours=3))
    assert again.revoked_at == T0 + timedelta(hours=1)


def test_revoking_an_unknown_key_is_an_error(store: SqlStore) -> None:
    with pytest.raises(LookupError, match="no API key 'key_nope'"):
        revoke_key(store.engine, "key_nope", T0)
    assert get_key(store.engine, "key_nope") is None


def test_last_used_is_written_at_most_once_a_minute(store: SqlStore) -> None:
    key_id, plaintext = create_key(store.engine, "a", T0)

    def last_used() -> object:
        key = get_key(store.engine, key_id)
        assert key is not None
        return key.last_used_at

    assert last_used() is None
    verify_key(store.engine, plaintext, T0 + timedelta(seconds=10))
    assert last_used() == T0 + timedelta(seconds=10)
    verify_key(store.engine, plaintext, T0 + timedelta(seconds=40))
    assert last_used() == T0 + timedelta(seconds=10)
    verify_key(store.engine, plaintext, T0 + timedelta(seconds=70))
    assert last_used() == T0 + timedelta(seconds=70)
    # A failed verification is not a use.
    verify_key(store.engine, plaintext + "x", T0 + timedelta(hours=1))
    assert last_used() == T0 + timedelta(seconds=70)


def test_keys_are_listed_oldest_first_without_secrets(store: SqlStore) -> None:
    b_id, b = create_key(store.engine, "second", T0 + timedelta(minutes=1))
    a_id, a = create_key(store.engine, "first", T0)
    revoke_key(store.engine, b_id, T0 + timedelta(hours=1))

    listed = list_keys(store.engine)

    assert [(k.id, k.name, k.active) for k in listed] == [(a_id, "first", True), (b_id, "second", False)]
    assert listed[0].display == a[:16] + "..."
    assert all(a not in repr(k) and b not in repr(k) for k in listed)


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_a_key_needs_a_sensible_name(store: SqlStore, db: Db, name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        create_key(store.engine, name, T0)
    assert db.count("api_keys") == 0


# --------------------------------------------------------------------------- the commands


def test_the_api_keys_commands(database_url: str, store: SqlStore, db: Db) -> None:
    runner = CliRunner()
    db_opt = ["--database-url", database_url]

    created = runner.invoke(cli, ["api-keys", "create", "crm sync", *db_opt])
    assert created.exit_code == 0, created.output
    (plaintext,) = KEY_FORMAT.findall(created.stdout)
    assert "shown only this once" in created.stderr
    (row,) = db.rows("api_keys")
    assert row["key_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert verify_key(store.engine, plaintext, T0) == row["id"]

    listed = runner.invoke(cli, ["api-keys", "list", *db_opt])
    assert listed.exit_code == 0, listed.output
    assert row["id"] in listed.stdout
    assert "crm sync" in listed.stdout
    assert plaintext not in listed.stdout
    assert "active" in listed.stdout

    revoked = runner.invoke(cli, ["api-keys", "revoke", row["id"], *db_opt])
    assert revoked.exit_code == 0, revoked.output
    assert "revoked" in revoked.stdout
    assert verify_key(store.engine, plaintext, T0) is None
    again = runner.invoke(cli, ["api-keys", "revoke", row["id"], *db_opt])
    assert again.exit_code == 0
    assert "already revoked" in again.stdout

    unknown = runner.invoke(cli, ["api-keys", "revoke", "key_nope", *db_opt])
    assert unknown.exit_code == 1
    assert "no API key 'key_nope'" in unknown.stderr

    blank = runner.invoke(cli, ["api-keys", "create", "  ", *db_opt])
    assert blank.exit_code == 1
    assert "name" in blank.stderr
    assert db.count("api_keys") == 1


def test_the_api_keys_commands_need_an_initialised_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    result = CliRunner().invoke(cli, ["api-keys", "list", "--database-url", url])
    assert result.exit_code == 2
    assert "recobra init" in result.stderr


def test_verified_keys_are_remembered_briefly_by_hash_only() -> None:
    ticks = [0.0]
    memo = keys.VerifiedKeys(seconds=2.0, timer=lambda: ticks[0])
    plaintext = "rk_live_" + "k" * 43

    assert memo.get(plaintext) is None
    memo.remember(plaintext, "key_1")
    assert memo.get(plaintext) == "key_1"
    assert memo.get(plaintext + "x") is None
    assert plaintext not in repr(memo)
    ticks[0] = 1.99
    assert memo.get(plaintext) == "key_1"
    ticks[0] = 2.0
    assert memo.get(plaintext) is None  # expired: the next request asks the database
    memo.remember(plaintext, "key_1")
    memo.forget()
    assert memo.get(plaintext) is None


def test_verified_keys_can_be_turned_off() -> None:
    memo = keys.VerifiedKeys(seconds=0)
    memo.remember("rk_live_" + "k" * 43, "key_1")
    assert memo.get("rk_live_" + "k" * 43) is None
