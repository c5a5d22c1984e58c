"""Settings of one Stripe account and the ``StripeClient`` built from them.

Nothing here is global: every gateway, webhook route and import builds its own
client from its own settings, so one process can serve several accounts and no
``stripe.api_key`` is ever set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import stripe

API_VERSION = "2026-10-28.endive"
"""The Stripe API version Recobra is written against, sent with every request.

It is the version the pinned SDK was generated for; a test fails when an SDK
upgrade changes it, so that moving to a new API version is a decision (read
Stripe's changelog, check the mapping tests) rather than an accident. The mapping
also reads the older shapes (``invoice.subscription``, ``invoice.payment_intent``)
that accounts on earlier versions send in their webhooks.
"""

DEFAULT_TOLERANCE_S = 300
"""Webhook signatures older than this many seconds are refused (Stripe's default)."""


class Mode(StrEnum):
    """Who makes the invoices."""

    BILLING = "billing"
    """Stripe Billing makes the invoices; Recobra retries them with ``invoices.pay``."""
    PAYMENT_INTENTS = "payment_intents"
    """The operator bills; Recobra charges a saved payment method off-session."""


_KNOWN = {
    "secret_key",
    "webhook_secret",
    "publishable_key",
    "mode",
    "api_base",
    "max_network_retries",
    "webhook_tolerance_s",
    "account",
}


@dataclass(frozen=True, slots=True)
class StripeSettings:
    """One Stripe account as Recobra uses it. Secrets come from the environment
    (``RECOBRA_GATEWAY_SETTING_SECRET_KEY`` ...), never from a configuration file."""

    secret_key: str
    webhook_secret: str | None = None
    publishable_key: str | None = None
    mode: Mode = Mode.BILLING
    api_base: str | None = None
    """Another address for the API (a local Stripe fake in tests); None: Stripe's own."""
    max_network_retries: int = 2
    webhook_tolerance_s: int = DEFAULT_TOLERANCE_S
    account: str | None = None
    """A connected account id (``acct_...``) to act on, when the key is a platform's."""

    @classmethod
    def from_mapping(cls, settings: Mapping[str, str]) -> StripeSettings:
        """Parse gateway settings (strings); a ``ValueError`` names the setting at fault."""
        unknown = sorted(set(settings) - _KNOWN)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown Stripe setting; known: {', '.join(sorted(_KNOWN))}")
        key = settings.get("secret_key", "").strip()
        if not key:
            raise ValueError("secret_key: required (set RECOBRA_GATEWAY_SETTING_SECRET_KEY)")
        if not key.startswith(("sk_", "rk_")):
            raise ValueError("secret_key: must be a secret (sk_...) or restricted (rk_...) key")
        try:
            mode = Mode(settings.get("mode", Mode.BILLING))
        except ValueError:
            raise ValueError(
                f"mode: must be one of {', '.join(m.value for m in Mode)}, got {settings['mode']!r}"
            ) from None
        publishable = settings.get("publishable_key") or None
        if publishable is not None and not publishable.startswith("pk_"):
            raise ValueError("publishable_key: must start with pk_")
        webhook_secret = settings.get("webhook_secret") or None
        if webhook_secret is not None and not webhook_secret.startswith("whsec_"):
            raise ValueError("webhook_secret: must start with whsec_ (the endpoint's signing secret)")
        return cls(
            secret_key=key,
            webhook_secret=webhook_secret,
            publishable_key=publishable,
            mode=mode,
            api_base=(settings.get("api_base") or None),
            max_network_retries=_int(settings, "max_network_retries", 2, 0, 10),
            webhook_tolerance_s=_int(settings, "webhook_tolerance_s", DEFAULT_TOLERANCE_S, 1, 3600),
            account=settings.get("account") or None,
        )

    def client(self) -> stripe.StripeClient:
        """A client for this account: pinned API version, the SDK's own retries with
        backoff on network errors and 409/429/5xx answers."""
        return stripe.StripeClient(
            self.secret_key,
            stripe_version=API_VERSION,
            stripe_account=self.account,
            base_addresses={"api": self.api_base} if self.api_base else {},
            max_network_retries=self.max_network_retries,
        )


def _int(settings: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = settings.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name}: must be between {low} and {high}, got {value}")
    return value
