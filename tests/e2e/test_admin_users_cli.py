"""``recobra admin-users`` as an operator runs it (real subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

PASSWORD = "a long enough password"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recobra.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'recobra.db'}"
    assert run("init", "--database-url", url).returncode == 0
    return url


def test_create_list_disable(db: str) -> None:
    created = run(
        "admin-users",
        "create",
        "Ana@Acme.test",
        "--password-stdin",
        "--database-url",
        db,
        stdin=PASSWORD + "\n",
    )
    assert created.returncode == 0, created.stderr
    assert "ana@acme.test created" in created.stdout
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            stored = conn.scalar(text("select password_hash from admin_users"))
        assert stored.startswith("$argon2id$")
        assert PASSWORD not in stored
    finally:
        engine.dispose()
    listed = run("admin-users", "list", "--database-url", db)
    assert "ana@acme.test" in listed.stdout
    assert "active" in listed.stdout
    disabled = run("admin-users", "disable", "ana@acme.test", "--database-url", db)
    assert disabled.returncode == 0
    assert "disabled" in run("admin-users", "list", "--database-url", db).stdout
    again = run("admin-users", "disable", "ana@acme.test", "--database-url", db)
    assert "already disabled" in again.stdout


def test_the_password_is_asked_twice(db: str) -> None:
    typed = run(
        "admin-users", "create", "bo@acme.test", "--database-url", db, stdin=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert typed.returncode == 0, typed.stderr
    assert PASSWORD not in typed.stdout


@pytest.mark.parametrize(
    ("email", "password", "problem"),
    [
        ("not-an-email", PASSWORD, "email: not an email address"),
        ("cy@acme.test", "short", "password: at least 12 characters"),
    ],
)
def test_bad_input_is_named_and_creates_nothing(db: str, email: str, password: str, problem: str) -> None:
    result = run(
        "admin-users", "create", email, "--password-stdin", "--database-url", db, stdin=password + "\n"
    )
    assert result.returncode == 1
    assert problem in result.stderr
    assert "no users yet" in run("admin-users", "list", "--database-url", db).stdout


def test_an_email_is_taken_once(db: str) -> None:
    run("admin-users", "create", "di@acme.test", "--password-stdin", "--database-url", db, stdin=PASSWORD)
    twice = run(
        "admin-users", "create", "DI@acme.test", "--password-stdin", "--database-url", db, stdin=PASSWORD
    )
    assert twice.returncode == 1
    assert "already a user di@acme.test" in twice.stderr
    assert run("admin-users", "disable", "nobody@acme.test", "--database-url", db).returncode == 1
