"""Policy versions in the database: validate, store, activate, and the engine's
``PolicySource`` on them. The API (``/api/v1/policies``) and the command line
(``recobra policy history|activate``) both go through ``PolicyLibrary``.

Which policy is in force: the active stored version when there is one, else the
configured file (``policy_file``, or the shipped default). The first time anything
is stored, that configured policy is recorded first, under the version its file
declares (``version = 1`` in the shipped default), as the active version: the
history then starts with what ran, and the cases opened before keep pointing at it.
Later versions are numbered one more than the highest, and that number (not the
file's ``version`` key) is what cases opened under them record.

Engines ask ``active()`` at each batch and tick; the answer is cached and checked
against the database at most every ``max_age`` seconds (one indexed read), so an
activation reaches every worker within that time, without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine as SqlEngine

from recobra.domain.policy import PolicySet
from recobra.policyfile import LoadedPolicy, PolicyError, parse_policy
from recobra.store import policies as versions
from recobra.store.policies import NewVersion, PolicyVersion

MAX_COMMENT = 2000
MAX_SOURCE = 256 * 1024
"""Largest policy file accepted (bytes of UTF-8): real ones are a few kilobytes."""


class TemplateProblems(PolicyError):
    """A valid policy whose messages do not all render with the configured templates."""


def check_policy(text: str, source: str, templates_dir: str | Path | None = None) -> LoadedPolicy:
    """Everything ``recobra policy check`` checks: the file (every problem by field),
    then the templates of every message it sends. Raises ``PolicyError`` (or its
    ``TemplateProblems``) listing every problem."""
    from recobra.messages.checks import template_problems  # noqa: PLC0415 - templates load on demand
    from recobra.messages.render import Renderer  # noqa: PLC0415

    if len(text.encode("utf-8")) > MAX_SOURCE:
        raise PolicyError(source, [("(file)", f"larger than {MAX_SOURCE // 1024} KiB")])
    loaded = parse_policy(text, source)
    problems = template_problems(loaded.policies, Renderer(Path(templates_dir) if templates_dir else None))
    if problems:
        raise TemplateProblems(source, problems)
    return loaded


@dataclass(frozen=True, slots=True)
class Checked:
    """A stored version and the policy set it holds (numbered as stored)."""

    version: PolicyVersion
    policies: PolicySet


class PolicyLibrary:
    """The policy versions of one database and the fallback configured policy."""

    def __init__(
        self,
        engine: SqlEngine,
        fallback: LoadedPolicy,
        *,
        fallback_name: str = "the configured policy file",
        templates_dir: str | None = None,
        max_age: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.fallback = fallback
        self.fallback_name = fallback_name
        self.templates_dir = templates_dir
        self.max_age = max_age
        self._monotonic = monotonic
        self._sets: dict[int, PolicySet] = {}
        self._missing: set[int] = set()
        self._marker: tuple[int, datetime] | None = None
        self._active = fallback.policies
        self._checked_at: float | None = None

    # ------------------------------------------------------------------ PolicySource

    def active(self) -> PolicySet:
        """The policy set in force (cached for ``max_age`` seconds)."""
        now = self._monotonic()
        if self._checked_at is not None and now - self._checked_at < self.max_age:
            return self._active
        marker = versions.active_marker(self.engine)
        if marker != self._marker:
            self._missing.clear()
            self._active = (self.version(marker[0]) if marker else None) or self.fallback.policies
            self._marker = marker
        self._checked_at = now
        return self._active

    def version(self, number: int) -> PolicySet | None:
        """The set stored as version ``number``, numbered so; None if there is none."""
        cached = self._sets.get(number)
        if cached is not None or number in self._missing:
            return cached
        row = versions.get_version(self.engine, number)
        if row is None:
            self._missing.add(number)
            return None
        try:
            policies = parse_policy(row.source, f"policy version {number}").policies
        except PolicyError:
            # Stored files were valid when stored; one a later Recobra rejects is not
            # used (cases under it follow the active version) rather than stopping work.
            self._missing.add(number)
            return None
        numbered = replace(policies, version=number)
        self._sets[number] = numbered
        return numbered

    def invalidate(self) -> None:
        """Check the database at the next ``active()`` (after a change made here)."""
        self._checked_at = None

    # ------------------------------------------------------------------ operations

    def check(self, text: str, source: str = "<policy>") -> LoadedPolicy:
        return check_policy(text, source, self.templates_dir)

    def store(
        self,
        text: str,
        now: datetime,
        *,
        created_by: str,
        comment: str = "",
        activate: bool = False,
        source: str = "<policy>",
    ) -> tuple[Checked, bool]:
        """Validate ``text`` and store it as the next version (an identical stored file
        is found instead), activating it when asked. Raises ``PolicyError`` listing
        every problem, and then nothing is stored. Returns the version and whether it
        was stored now."""
        comment = comment.strip()
        if "\x00" in comment:
            raise ValueError("comment: must not contain NUL characters")
        if len(comment) > MAX_COMMENT:
            raise ValueError(f"comment: at most {MAX_COMMENT} characters, got {len(comment)}")
        loaded = self.check(text, source)
        first = NewVersion(
            source=self.fallback.source,
            sha256=self.fallback.checksum,
            comment=f"in force before versions were stored ({self.fallback_name})",
            created_by="settings",
        )
        stored, created = versions.store_version(
            self.engine,
            NewVersion(source=text, sha256=loaded.checksum, comment=comment, created_by=created_by),
            now,
            activate=activate,
            first=(self.fallback.policies.version, first),
        )
        self.invalidate()
        return Checked(stored, replace(loaded.policies, version=stored.version)), created

    def activate(self, number: int, now: datetime) -> Checked | None:
        """Make stored version ``number`` the active one; None if there is no such
        version. Its file is checked again first (``PolicyError`` if this Recobra
        rejects it), so a version that cannot run is never activated."""
        row = versions.get_version(self.engine, number)
        if row is None:
            return None
        loaded = self.check(row.source, f"policy version {number}")
        activated = versions.activate_version(self.engine, number, now)
        if activated is None:  # pragma: no cover - versions are never deleted
            return None
        self.invalidate()
        return Checked(activated, replace(loaded.policies, version=number))

    def get(self, number: int) -> PolicyVersion | None:
        return versions.get_version(self.engine, number)

    def history(self, *, limit: int, before: int | None = None) -> list[PolicyVersion]:
        return versions.list_versions(self.engine, limit=limit, before=before)

    def current(self) -> PolicyVersion | None:
        """The active stored version; None when nothing is stored (``fallback`` is in force)."""
        return versions.active_version(self.engine)
