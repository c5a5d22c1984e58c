"""Policy files (TOML) -> validated ``PolicySet``; every error names its field.

The format is documented in docs/policies.md. Parsing is two-layered: pydantic
checks shapes and types (unknown keys are errors, so a typo never silently
falls back to a default), then the domain checks its own invariants.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from recobra.domain.case import FinalAction
from recobra.domain.errors import DomainError
from recobra.domain.leaving import (
    MAX_DISCOUNT_CYCLES,
    MAX_PAUSE_MONTHS,
    ExitReason,
    OfferKind,
    SaveOffer,
)
from recobra.domain.messages import ChannelKind, MessageKind
from recobra.domain.model import Funding, Interval
from recobra.domain.money import normalise_currency
from recobra.domain.policy import (
    Campaign,
    MessageStep,
    Notification,
    PaydayRule,
    PolicySet,
    RetryPolicy,
    Segment,
    SegmentRule,
    Strategy,
    Timing,
    parse_duration,
)

DEFAULT_POLICY_FILE = "default.toml"


class PolicyError(ValueError):
    """A policy file is invalid. ``problems`` lists (field, reason) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {field}: {reason}" for field, reason in problems)
        super().__init__(f"{source}: invalid policy\n{lines}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_duration(text: str) -> str:
    try:
        parse_duration("duration", text)
    except DomainError as exc:
        raise ValueError(exc.reason) from None
    return text


# Checked in the same pass as every other field, so a file's problems are all
# reported at once rather than one layer at a time.
Duration = Annotated[
    str,
    AfterValidator(_check_duration),
    Field(description="a duration such as '3d', '12h', '1d6h', '30m'"),
]


class StepModel(_Model):
    action: Literal["retry", "message"] = "retry"
    after: Duration | None = None
    before_final: Duration | None = None
    kind: MessageKind | None = None
    channels: list[ChannelKind] = []
    fallback: list[ChannelKind] = []
    fallback_after: Duration | None = None

    @model_validator(mode="after")
    def _shape(self) -> StepModel:
        if self.action == "retry":
            if self.after is None:
                raise ValueError("a retry step needs 'after'")
            if self.before_final or self.kind or self.channels or self.fallback or self.fallback_after:
                raise ValueError(
                    "a retry step takes only 'after' (messages are steps with action = \"message\")"
                )
        else:
            if self.kind is None or not self.channels:
                raise ValueError("a message step needs 'kind' and 'channels'")
            if (self.after is None) == (self.before_final is None):
                raise ValueError("a message step needs either 'after' or 'before_final'")
        return self


class NotificationModel(_Model):
    channels: list[ChannelKind] = Field(min_length=1)
    delay: Duration = "0m"


class NotificationsModel(_Model):
    payment_recovered: NotificationModel | None = None
    payment_method_updated: NotificationModel | None = None
    subscription_canceled: NotificationModel | None = None
    win_back: NotificationModel | None = None


class CampaignModel(_Model):
    name: str = Field(min_length=1)
    kind: MessageKind
    before: list[Duration] = Field(min_length=1)
    channels: list[ChannelKind] = Field(min_length=1)
    intervals: list[Interval] = []
    offer: str | None = None


class TimingModel(_Model):
    # Strict scalars: `true` is not 1 and "4" is not 4 in a policy file.
    start_hour: StrictInt = 9
    end_hour: StrictInt = 20
    weekdays_only: StrictBool = False
    paydays: list[StrictInt | Literal["last_business_day"]] = Field(
        default=[1, 15, "last_business_day"], min_length=1
    )
    payday_hour: StrictInt = 10
    payday_flex: Duration = "5d"
    jitter_minutes: StrictInt = 30


class PolicyModel(_Model):
    strategy: Strategy
    steps: list[StepModel]
    max_attempts: StrictInt
    max_days: StrictInt
    grace_days: StrictInt = 7
    final_action: FinalAction
    min_interval: Duration = "1h"
    processing_backoff: list[Duration] = ["15m", "1h", "4h"]
    timing: TimingModel = TimingModel()


class MatchModel(_Model):
    plans: list[str] = []
    intervals: list[Interval] = []
    currencies: list[str] = []
    countries: list[str] = []
    funding: list[Funding] = []
    amount_min: StrictInt | None = Field(default=None, ge=0)
    amount_max: StrictInt | None = Field(default=None, ge=0)
    tenure_days_min: StrictInt | None = Field(default=None, ge=0)
    tenure_days_max: StrictInt | None = Field(default=None, ge=0)

    @field_validator("currencies")
    @classmethod
    def _currencies(cls, value: list[str]) -> list[str]:
        return [normalise_currency(c) for c in value]

    @field_validator("countries")
    @classmethod
    def _countries(cls, value: list[str]) -> list[str]:
        for country in value:
            if len(country) != 2 or not country.isalpha() or not country.isupper():
                raise ValueError(f"{country!r} is not an ISO 3166-1 alpha-2 code like 'MX'")
        return value


class SegmentModel(_Model):
    name: str = Field(min_length=1)
    policy: str
    match: MatchModel = MatchModel()


class SaveOfferModel(_Model):
    """One reason's offer: ``{ offer = "pause", months = 2 }``,
    ``{ offer = "discount", percent = 25, cycles = 3 }``, ``{ offer = "downgrade", plan = "basic" }``
    or ``{ offer = "none" }``."""

    offer: Literal["pause", "discount", "downgrade", "none"]
    months: StrictInt | None = None
    percent: StrictInt | None = None
    cycles: StrictInt | None = None
    plan: str | None = None

    # Ranges checked here too, in the same pass as the shape, so every problem of a
    # file is reported at once; the domain checks them again for offers built in code.
    @field_validator("months")
    @classmethod
    def _months(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= MAX_PAUSE_MONTHS:
            raise ValueError(f"a pause lasts 1 to {MAX_PAUSE_MONTHS} months, got {value}")
        return value

    @field_validator("percent")
    @classmethod
    def _percent(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 100:
            raise ValueError(f"must be 1-100, got {value}")
        return value

    @field_validator("cycles")
    @classmethod
    def _cycles(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= MAX_DISCOUNT_CYCLES:
            raise ValueError(f"must be 1-{MAX_DISCOUNT_CYCLES} invoices, got {value}")
        return value

    @model_validator(mode="after")
    def _shape(self) -> SaveOfferModel:
        needs = {
            "pause": {"months"},
            "discount": {"percent", "cycles"},
            "downgrade": {"plan"},
            "none": set(),
        }[self.offer]
        given = {k for k in ("months", "percent", "cycles", "plan") if getattr(self, k) is not None}
        if missing := sorted(needs - given):
            raise ValueError(f"a {self.offer} offer needs {' and '.join(repr(m) for m in missing)}")
        if extra := sorted(given - needs):
            raise ValueError(f"a {self.offer} offer does not take {' or '.join(repr(e) for e in extra)}")
        return self


class SaveOffersModel(_Model):
    too_expensive: SaveOfferModel | None = None
    not_using: SaveOfferModel | None = None
    missing_feature: SaveOfferModel | None = None
    switching: SaveOfferModel | None = None
    technical_problems: SaveOfferModel | None = None
    temporary: SaveOfferModel | None = None
    other: SaveOfferModel | None = None


class FileModel(_Model):
    name: str = Field(min_length=1)
    version: StrictInt = Field(ge=1)
    default_policy: str
    segments: list[SegmentModel] = []
    policies: dict[str, PolicyModel] = Field(min_length=1)
    notifications: NotificationsModel = NotificationsModel()
    campaigns: list[CampaignModel] = []
    benefits: dict[str, dict[Literal["es", "en"], list[str]]] = {}
    save_offers: SaveOffersModel = SaveOffersModel()


_UNION_BRANCHES = {"int", "str", "literal['last_business_day']"}


def _path(loc: tuple[int | str, ...]) -> str:
    parts = list(loc)
    # pydantic names the union branch it tried after a list item ("paydays.1.int"):
    # noise for a reader. Only there: a policy may well be called "int".
    if len(parts) >= 2 and isinstance(parts[-2], int) and parts[-1] in _UNION_BRANCHES:
        parts.pop()
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(file)"


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A validated policy set with the text it came from and that text's checksum."""

    policies: PolicySet
    source: str
    checksum: str


def parse_policy(text: str, source: str = "<policy>") -> LoadedPolicy:
    """Parse and validate a policy file's text; raises ``PolicyError`` naming every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(source, [("(file)", f"not valid TOML: {exc}")]) from None
    try:
        model = FileModel.model_validate(data)
    except ValidationError as exc:
        problems = [(_path(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
        raise PolicyError(source, problems) from None
    problems: list[tuple[str, str]] = []
    policies: dict[str, RetryPolicy] = {}
    for name, pm in model.policies.items():
        where = f"policies.{name}"
        try:
            policies[name] = _policy(name, pm, where)
        except DomainError as exc:
            field = exc.field if exc.field.startswith("policies.") else f"{where}.{exc.field}"
            problems.append((field, exc.reason))
    save_offers: dict[ExitReason, SaveOffer] = {}
    for reason, om in model.save_offers:
        if om is None or om.offer == "none":
            continue
        try:
            save_offers[ExitReason(reason)] = SaveOffer(
                OfferKind(om.offer),
                months=om.months or 0,
                percent=om.percent or 0,
                cycles=om.cycles or 0,
                plan_id=om.plan or "",
            )
        except DomainError as exc:
            field = {"plan_id": "plan"}.get(exc.field, exc.field)
            problems.append((f"save_offers.{reason}.{field}", exc.reason))
    if problems:
        raise PolicyError(source, problems)
    segments = tuple(
        Segment(
            s.name,
            SegmentRule(
                plans=frozenset(s.match.plans),
                intervals=frozenset(s.match.intervals),
                currencies=frozenset(s.match.currencies),
                countries=frozenset(s.match.countries),
                funding=frozenset(s.match.funding),
                amount_min=s.match.amount_min,
                amount_max=s.match.amount_max,
                tenure_days_min=s.match.tenure_days_min,
                tenure_days_max=s.match.tenure_days_max,
            ),
            s.policy,
        )
        for s in model.segments
    )
    try:
        notifications = {
            MessageKind(kind): Notification(
                MessageKind(kind),
                tuple(n.channels),
                parse_duration(f"notifications.{kind}.delay", n.delay),
            )
            for kind, n in model.notifications
            if n is not None
        }
        campaigns = tuple(_campaign(i, c) for i, c in enumerate(model.campaigns))
        policy_set = PolicySet(
            model.name,
            model.version,
            segments,
            policies,
            model.default_policy,
            notifications=notifications,
            campaigns=campaigns,
            benefits={
                plan: {loc: tuple(items) for loc, items in per.items()}
                for plan, per in model.benefits.items()
            },
            save_offers=save_offers,
        )
    except DomainError as exc:
        raise PolicyError(source, [(exc.field, exc.reason)]) from None
    names = [c.name for c in model.campaigns]
    if len(set(names)) != len(names):
        raise PolicyError(source, [("campaigns", "campaign names must be unique (they key the reminders)")])
    checksum = hashlib.sha256(text.encode()).hexdigest()
    return LoadedPolicy(policy_set, text, checksum)


def _campaign(index: int, c: CampaignModel) -> Campaign:
    where = f"campaigns[{index}]"
    try:
        return Campaign(
            name=c.name,
            kind=c.kind,
            before=tuple(parse_duration(f"{where}.before", b) for b in c.before),
            channels=tuple(c.channels),
            intervals=frozenset(c.intervals),
            offer=c.offer,
        )
    except DomainError as exc:
        # The domain names the campaign; the file's reader needs its position.
        field = exc.field.removeprefix(c.name)
        raise DomainError(f"{where}{field}", exc.reason) from None


def _policy(name: str, pm: PolicyModel, where: str) -> RetryPolicy:
    steps = tuple(
        parse_duration(f"{where}.steps[{i}].after", s.after)
        for i, s in enumerate(pm.steps)
        if s.action == "retry" and s.after is not None
    )
    messages = tuple(
        MessageStep(
            name=f"{where}.steps[{i}]",
            kind=s.kind,
            channels=tuple(s.channels),
            after=parse_duration(f"{where}.steps[{i}].after", s.after) if s.after else None,
            before_final=(
                parse_duration(f"{where}.steps[{i}].before_final", s.before_final) if s.before_final else None
            ),
            fallback=tuple(s.fallback),
            fallback_after=(
                parse_duration(f"{where}.steps[{i}].fallback_after", s.fallback_after)
                if s.fallback_after
                else None
            ),
        )
        for i, s in enumerate(pm.steps)
        if s.action == "message" and s.kind is not None
    )
    t = pm.timing
    timing = Timing(
        start_hour=t.start_hour,
        end_hour=t.end_hour,
        weekdays_only=t.weekdays_only,
        paydays=tuple(PaydayRule(p) if isinstance(p, str) else p for p in t.paydays),
        payday_hour=t.payday_hour,
        payday_flex=parse_duration(f"{where}.timing.payday_flex", t.payday_flex),
        jitter_minutes=t.jitter_minutes,
    )
    return RetryPolicy(
        name=name,
        strategy=pm.strategy,
        steps=steps,
        max_attempts=pm.max_attempts,
        max_days=pm.max_days,
        grace_days=pm.grace_days,
        final_action=pm.final_action,
        timing=timing,
        min_interval=parse_duration(f"{where}.min_interval", pm.min_interval),
        processing_backoff=tuple(
            parse_duration(f"{where}.processing_backoff[{i}]", d) for i, d in enumerate(pm.processing_backoff)
        ),
        messages=messages,
    )


def load_policy_file(path: str | Path) -> LoadedPolicy:
    """Read and validate a policy file; a missing file is a ``PolicyError`` too."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(p), [("(file)", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise PolicyError(str(p), [("(file)", "not UTF-8 text")]) from None
    return parse_policy(text, str(p))


def default_policy_text() -> str:
    return resources.files("recobra.policies").joinpath(DEFAULT_POLICY_FILE).read_text("utf-8")


def load_default_policy() -> LoadedPolicy:
    """The policy shipped with Recobra (see docs/policies.md for its reasoning)."""
    return parse_policy(default_policy_text(), f"recobra/policies/{DEFAULT_POLICY_FILE}")
