"""The operator's REST API, ``/api/v1/policies``: policy versions (history, the
active one, one version), validating a file, storing a new version, activating one.

Bodies are JSON: ``{"source": "<the TOML text>"}``. A file with problems is a
``422`` listing every problem by field, as ``recobra policy check`` does, and nothing
is stored. Storing and activating go through recobra.policyversions, as the command
line does; an activation reaches every engine within a second, without a restart.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr

from recobra.domain.case import FinalAction
from recobra.domain.policy import PolicySet, Strategy, format_duration
from recobra.policyfile import PolicyError, parse_policy
from recobra.policyversions import MAX_COMMENT, MAX_SOURCE, PolicyLibrary
from recobra.store.keys import get_key
from recobra.store.policies import PolicyVersion
from recobra.web.api import (
    DEFAULT_LIMIT,
    INVALID,
    MAX_LIMIT,
    NOT_FOUND,
    PREFIX,
    UNAUTHORIZED,
    KeyDep,
    ServicesDep,
    no_nul,
    no_nul_characters,
)
from recobra.web.api_resources import decode_cursor, encode_cursor
from recobra.web.auth import require_api_key
from recobra.web.health import problem_doc
from recobra.web.problems import Problem
from recobra.web.services import Services

# --------------------------------------------------------------------------- models


class RetryPolicyOut(BaseModel):
    """One retry policy of a file, as `recobra policy show` prints it."""

    name: str
    strategy: Strategy
    retries_after: list[str] = Field(
        description="each retry's offset from the failure", examples=[["1d", "3d"]]
    )
    max_attempts: int
    max_days: int = Field(description="the dunning window, in days from the first failure")
    grace_days: int
    final_action: FinalAction
    min_interval: str = Field(examples=["1h"])


class SegmentOut(BaseModel):
    """A segment: the conditions it matches and the policy it uses (first match wins)."""

    name: str
    policy: str
    match: dict[str, Any] = Field(description="the conditions (empty: everything)")


class PolicySummary(BaseModel):
    """What a policy file holds."""

    name: str
    file_version: int = Field(description="the `version` key of the file")
    sha256: str = Field(description="SHA-256 of the file's text")
    default_policy: str
    policies: list[RetryPolicyOut]
    segments: list[SegmentOut]


class PolicyVersionOut(BaseModel):
    """A stored policy version (without its text)."""

    version: int = Field(description="the number cases opened under this version record", examples=[2])
    name: str | None = Field(description="the file's `name` (null if this version no longer parses)")
    sha256: str
    comment: str
    created_at: datetime | None = Field(description="null: the configured file, not stored yet")
    created_by: str = Field(description="the API key or command line that stored it; `settings`")
    activated_at: datetime | None = Field(description="last activation; null: never activated")
    active: bool = Field(description="the version new cases open under")
    stored: bool = Field(description="false only for the configured file before any version is stored")


class PolicyVersionDetail(PolicyVersionOut):
    """A policy version with its whole file and what it holds."""

    source: str = Field(description="the TOML file, as given")
    summary: PolicySummary | None = Field(description="null if this version no longer parses")


class PolicyVersionPage(BaseModel):
    """One page of policy versions, newest first."""

    data: list[PolicyVersionOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: no more")


class PolicySourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Annotated[
        StrictStr,
        Field(
            min_length=1, max_length=MAX_SOURCE, description="the policy file (TOML text, docs/policies.md)"
        ),
    ]


class PolicyCreateIn(PolicySourceIn):
    comment: Annotated[
        StrictStr,
        AfterValidator(no_nul),
        Field(max_length=MAX_COMMENT, description="why this version (kept in the history)"),
    ] = ""
    activate: StrictBool = Field(default=False, description="also make it the active version")


# --------------------------------------------------------------------------- conversions


def _summary(policies: PolicySet, sha256: str) -> PolicySummary:
    return PolicySummary(
        name=policies.name,
        file_version=policies.version,
        sha256=sha256,
        default_policy=policies.default_policy,
        policies=[
            RetryPolicyOut(
                name=name,
                strategy=p.strategy,
                retries_after=[format_duration(s) for s in p.steps],
                max_attempts=p.max_attempts,
                max_days=p.max_days,
                grace_days=p.grace_days,
                final_action=p.final_action,
                min_interval=format_duration(p.min_interval),
            )
            for name, p in policies.policies.items()
        ],
        segments=[
            SegmentOut(
                name=s.name,
                policy=s.policy,
                match={
                    k: sorted(v) if isinstance(v, frozenset) else v
                    for k, v in asdict(s.rule).items()
                    if v not in (None, frozenset())
                },
            )
            for s in policies.segments
        ],
    )


@lru_cache(maxsize=256)
def _parsed_summary(sha256: str, source: str) -> PolicySummary | None:
    """A stored file's summary (files never change once stored: cached by content)."""
    try:
        policies = parse_policy(source, "stored policy").policies
    except PolicyError:
        return None
    return _summary(policies, sha256)


def _version_out(row: PolicyVersion) -> PolicyVersionOut:
    summary = _parsed_summary(row.sha256, row.source)
    return PolicyVersionOut(
        version=row.version,
        name=summary.name if summary else None,
        sha256=row.sha256,
        comment=row.comment,
        created_at=row.created_at,
        created_by=row.created_by,
        activated_at=row.activated_at,
        active=row.active,
        stored=True,
    )


def _version_detail(row: PolicyVersion) -> PolicyVersionDetail:
    return PolicyVersionDetail(
        **_version_out(row).model_dump(),
        source=row.source,
        summary=_parsed_summary(row.sha256, row.source),
    )


def _invalid_policy(exc: PolicyError, detail: str) -> Problem:
    return Problem(422, "Invalid policy", detail, errors=[{"field": f, "reason": r} for f, r in exc.problems])


def _library(services: Services) -> PolicyLibrary:
    return services.policies()


# --------------------------------------------------------------------------- routes

router = APIRouter(
    prefix=PREFIX,
    tags=["policies"],
    dependencies=[Depends(require_api_key), Depends(no_nul_characters)],
    responses=UNAUTHORIZED,
)
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1, description="a stored version's number")]


@router.get("/policies", summary="Policy versions, newest first", responses=INVALID)
def list_policies(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="versions per page")] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Query(max_length=1000, description="`next_cursor` of the previous page")
    ] = None,
) -> PolicyVersionPage:
    before = decode_cursor("policies", cursor, [int])[0] if cursor else None
    rows = _library(services).history(limit=limit + 1, before=before)
    more = len(rows) > limit
    rows = rows[:limit]
    return PolicyVersionPage(
        data=[_version_out(r) for r in rows],
        next_cursor=encode_cursor("policies", rows[-1].version) if more else None,
    )


@router.get(
    "/policies/active",
    summary="The policy version new cases open under (the configured file until one is stored)",
)
def get_active_policy(services: ServicesDep) -> PolicyVersionDetail:
    library = _library(services)
    row = library.current()
    if row is not None:
        return _version_detail(row)
    loaded = library.fallback
    summary = _summary(loaded.policies, loaded.checksum)
    return PolicyVersionDetail(
        version=loaded.policies.version,
        name=loaded.policies.name,
        sha256=loaded.checksum,
        comment=f"not stored yet: {library.fallback_name}",
        created_at=None,
        created_by="settings",
        activated_at=None,
        active=True,
        stored=False,
        source=loaded.source,
        summary=summary,
    )


@router.get(
    "/policies/{version}",
    summary="A stored policy version with its file",
    responses={**NOT_FOUND, **INVALID},
)
def get_policy(version: VersionNumber, services: ServicesDep) -> PolicyVersionDetail:
    row = _library(services).get(version)
    if row is None:
        raise Problem(404, "Not found", f"no policy version {version}")
    return _version_detail(row)


@router.post(
    "/policies/validate",
    summary="Check a policy file: what it holds, or every problem by field (nothing is stored)",
    responses={422: problem_doc("Invalid file or body: `errors` names each field and the reason.")},
)
def validate_policy(body: PolicySourceIn, services: ServicesDep) -> PolicySummary:
    try:
        loaded = _library(services).check(body.source, "request body")
    except PolicyError as exc:
        raise _invalid_policy(exc, "every problem is listed") from None
    return _summary(loaded.policies, loaded.checksum)


@router.post(
    "/policies",
    summary="Store a new policy version (optionally activating it); nothing is stored if invalid",
    status_code=201,
    responses={
        200: {
            "model": PolicyVersionDetail,
            "description": "The same file is stored already: that version (activated if asked).",
        },
        201: {"description": "Stored as a new version."},
        422: problem_doc("Invalid file or body: `errors` names each field; nothing was stored."),
    },
)
def create_policy(
    body: PolicyCreateIn, services: ServicesDep, key_id: KeyDep, response: Response
) -> PolicyVersionDetail:
    key = get_key(services.store.engine, key_id)
    by = f"API key {key.name!r} ({key_id})" if key else f"API key {key_id}"
    try:
        checked, created = _library(services).store(
            body.source,
            services.now(),
            created_by=by,
            comment=body.comment,
            activate=body.activate,
            source="request body",
        )
    except PolicyError as exc:
        raise _invalid_policy(exc, "nothing was stored; every problem is listed") from None
    if not created:
        response.status_code = 200
    return _version_detail(checked.version)


@router.post(
    "/policies/{version}/activate",
    summary="Make a stored version the one new cases open under",
    responses={
        **NOT_FOUND,
        422: problem_doc("Invalid input, or a stored file this version of Recobra no longer accepts."),
    },
)
def activate_policy(version: VersionNumber, services: ServicesDep) -> PolicyVersionDetail:
    try:
        checked = _library(services).activate(version, services.now())
    except PolicyError as exc:
        raise _invalid_policy(exc, "the stored file is not valid any more: nothing was activated") from None
    if checked is None:
        raise Problem(404, "Not found", f"no policy version {version}")
    return _version_detail(checked.version)


__all__ = ["router"]
