"""In-app notices: the outbox row itself is the notice (its rendered title, body and
link are stored with it); the operator's app fetches a customer's pending notices
from the API and marks them seen. Delivering is therefore only accepting it."""

from __future__ import annotations

from collections.abc import Mapping

from recobra.ports import DeliveryResult, DeliveryStatus, OutgoingMessage


class InAppChannel:
    """Accepts in-app notices; see the module docstring."""

    kind = "in_app"

    def send(self, message: OutgoingMessage) -> DeliveryResult:
        return DeliveryResult(DeliveryStatus.SENT, provider_id=message.key)


def from_settings(settings: Mapping[str, str]) -> InAppChannel:
    if settings:
        raise ValueError(f"in_app: takes no settings, got {sorted(settings)}")
    return InAppChannel()
