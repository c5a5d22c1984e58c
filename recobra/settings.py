"""Configuration: environment variables (``RECOBRA_*``) and an optional TOML file.

Secrets (database passwords, gateway keys) belong in the environment; the file
may name them but should not contain them.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    fields = set(Settings.model_fields) - {"gateway_settings"}
    for name in fields:
        value = os.environ.get(ENV_PREFIX + name.upper())
        if value is not None:
            data[name] = value
    gateway_settings = dict(data.get("gateway_settings", {}))
    for key, value in os.environ.items():
        if key.startswith(GATEWAY_PREFIX):
            gateway_settings[key.removeprefix(GATEWAY_PREFIX).lower()] = value
    data["gateway_settings"] = gateway_settings
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid configuration: {problems}") from None
