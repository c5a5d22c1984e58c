"""A minimal third-party gateway, loaded by dotted path in the loader tests.

``MemoryGateway`` is a complete (if trivial) PaymentGateway: every charge
succeeds once per idempotency key. The other names exist to exercise the
loader's error messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from recobra.ports import ChargeRequest, ChargeResult, ChargeStatus, GatewayError


class MemoryGateway:
    """Collects every charge; remembers results and final actions by idempotency key."""

    name = "memory"

    def __init__(self, currency: str) -> None:
        self.currency = currency
        self.results: dict[str, ChargeResult] = {}
        self.actions: dict[str, tuple[str, str, datetime]] = {}

    def charge(self, request: ChargeRequest) -> ChargeResult:
        if request.amount.currency != self.currency:
            return self.results.setdefault(
                request.idempotency_key,
                ChargeResult(
                    ChargeStatus.DECLINED,
                    request.idempotency_key,
                    decline_code="currency_not_supported",
                ),
            )
        return self.results.setdefault(
            request.idempotency_key,
            ChargeResult(
                ChargeStatus.SUCCEEDED,
                request.idempotency_key,
                gateway_reference=f"mem_{len(self.results) + 1}",
            ),
        )

    def attempt_status(self, idempotency_key: str) -> ChargeResult:
        found = self.results.get(idempotency_key)
        if found is None:
            return ChargeResult(ChargeStatus.NOT_FOUND, idempotency_key)
        return found

    def cancel_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        self._act("cancel", subscription_id, at, idempotency_key)

    def pause_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        self._act("pause", subscription_id, at, idempotency_key)

    def mark_unpaid(self, invoice_id: str, *, at: datetime, idempotency_key: str) -> None:
        self._act("mark_unpaid", invoice_id, at, idempotency_key)

    def _act(self, kind: str, target: str, at: datetime, key: str) -> None:
        if not target or not key:
            raise GatewayError(f"{kind}: empty id or key", transient=False)
        self.actions.setdefault(key, (kind, target, at))


def make(settings: Mapping[str, str]) -> MemoryGateway:
    """The factory: ``currency`` defaults to EUR."""
    return MemoryGateway(settings.get("currency", "EUR"))


class HalfGateway:
    """Has a name and can charge, but lacks the rest of the protocol."""

    name = "half"

    def charge(self, request: ChargeRequest) -> ChargeResult:
        return ChargeResult(ChargeStatus.ERROR, request.idempotency_key)


def make_half(settings: Mapping[str, str]) -> HalfGateway:
    return HalfGateway()


def make_failing(settings: Mapping[str, str]) -> MemoryGateway:
    raise RuntimeError("setting 'api_key' is required")


NOT_CALLABLE = 42
