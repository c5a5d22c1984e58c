"""Configuration: environment variables (``RECOBRA_*``) and an optional TOML file.

Secrets (database passwords, gateway keys) belong in the environment; the file
may name them but should not contain them.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_DATABASE_URL = "sqlite:///recobra.db"


class SettingsError(ValueError):
    """Configuration is invalid; the message names the setting."""


class Settings(BaseModel):
    """Everything the worker, the CLI and the simulator are configured with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    database_url: str = DEFAULT_DATABASE_URL
    gateway: str = "simulated"
    gateway_settings: dict[str, str] = Field(default_factory=dict)
    policy_file: str | None = None
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    batch_size: int = Field(default=500, ge=1, le=10_000)
    poll_interval_s: float = Field(default=5.0, gt=0, le=3600)
    lease_s: int = Field(default=300, ge=10)

    # Customer messages
    messages: bool = True
    company_name: str = "Recobra"
    support_email: str = "support@example.com"
    public_url: str = "http://127.0.0.1:8000"
    """Where the hosted pages are served: signed links point there."""
    link_secret: str | None = None
    """At least 32 characters; from the environment (RECOBRA_LINK_SECRET)."""
    templates_dir: str | None = None
    """A folder of templates that override the shipped ones (same layout)."""
    data_retention_days: int = Field(default=60, ge=0)
    channels: dict[str, str] = Field(default_factory=lambda: {"in_app": "in_app"})
    """Channel kind -> adapter (entry-point name or package.module:factory)."""
    channel_settings: dict[str, dict[str, str]] = Field(default_factory=dict)
    """Channel kind -> settings; a value "env:NAME" is read from the environment."""
    webhook_url: str | None = None
    """The operator's endpoint that receives every case event (CRM, support tool)."""
    webhook_secret: str | None = None
    """Signs those webhooks (HMAC-SHA256); "env:NAME" reads it from the environment."""
    webhook_events: list[str] = Field(default_factory=list)
    """Case event kinds to send; empty: all of them."""
    in_app_origins: list[str] = Field(default_factory=list)
    """Origins of the operator's app allowed to read in-app notices from the browser."""
    quiet_start: int = Field(default=21, ge=0, le=23)
    quiet_end: int = Field(default=8, ge=0, le=23)
    max_messages_per_day: int = Field(default=2, ge=1)
    max_messages_per_week: int = Field(default=5, ge=1)

    # The dashboard and abuse limits (docs/dashboard.md)
    session_secret: str | None = Field(default=None, min_length=32)
    """Signs dashboard sessions (32+ characters; RECOBRA_SESSION_SECRET). When unset, a
    key derived from ``link_secret`` is used (one secret less to manage); set it to be
    able to rotate the link secret without signing everybody out."""
    session_max_age_s: int = Field(default=8 * 3600, ge=60, le=30 * 24 * 3600)
    """How long a dashboard session lasts after signing in."""
    rate_limit_hosted: str | None = "60/minute"
    """Requests per client address to customers' pages (every path under /p/)."""
    rate_limit_login_ip: str | None = "20/minute"
    """Sign-in attempts per client address."""
    rate_limit_login_email: str | None = "10/15minutes"
    """Sign-in attempts per email address, from anywhere."""
    rate_limit_api: str | None = None
    """Requests per client address to /api/ (off unless set, e.g. "1200/minute")."""

    @field_validator("rate_limit_hosted", "rate_limit_login_ip", "rate_limit_login_email", "rate_limit_api")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "off", "none"):
            return None
        from limits import parse_many  # noqa: PLC0415 - only when configured

        try:
            parse_many(value)
        except ValueError:
            example = "e.g. '60/minute' or '10 per 15 minutes'"
            raise ValueError(f"not a rate limit: {value!r} ({example})") from None
        return value


ENV_PREFIX = "RECOBRA_"
GATEWAY_PREFIX = "RECOBRA_GATEWAY_SETTING_"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """File values, then environment variables, then explicit overrides (CLI options)."""
    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            data.update(tomllib.loads(path.read_text(encoding="utf-8")).get("recobra", {}))
        except OSError as exc:
            raise SettingsError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    lists = {"webhook_events", "in_app_origins"}
    fields = set(Settings.model_fields) - {"gateway_settings", "channels", "channel_settings"} - lists
    for name in fields:
        value = os.environ.get(ENV_PREFIX + name.upper())
        if value is not None:
            data[name] = value
    for name in lists:
        value = os.environ.get(ENV_PREFIX + name.upper())
        if value is not None:  # comma-separated
            data[name] = [item.strip() for item in value.split(",") if item.strip()]
    gateway_settings = dict(data.get("gateway_settings", {}))
    for key, value in os.environ.items():
        if key.startswith(GATEWAY_PREFIX):
            gateway_settings[key.removeprefix(GATEWAY_PREFIX).lower()] = value
    data["gateway_settings"] = gateway_settings
    for name in ("channels", "channel_settings"):
        raw = os.environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            try:
                data[name] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()}: not valid JSON: {exc}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid configuration: {problems}") from None


def resolve_secrets(values: dict[str, str]) -> dict[str, str]:
    """Settings values written "env:NAME" are read from the environment (secrets stay
    out of configuration files); a missing variable is an error naming it."""
    out = {}
    for key, value in values.items():
        if value.startswith("env:"):
            name = value.removeprefix("env:")
            if name not in os.environ:
                raise SettingsError(f"{key}: environment variable {name} is not set")
            out[key] = os.environ[name]
        else:
            out[key] = value
    return out
