"""Every domain event, to the operator's systems (a CRM, a support tool) by webhook.

The case timeline (``case_events``) is the stream. A durable cursor records the last
event delivered; one worker at a time holds the stream (an expiring claim). Delivery
is at least once, in order: each event carries a stable id (``evt_<n>``) that the
receiver uses to drop repeats. A transient failure stops the batch, to be resumed
from the same event later; an event the receiver refuses for good is logged and
passed over so that one bad event cannot block the stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from recobra.domain.model import require_aware
from recobra.ports import Channel, DeliveryStatus, OutgoingMessage, RelayedEvent, Store

log = logging.getLogger("recobra.relay")


@dataclass(slots=True)
class RelayReport:
    delivered: int = 0
    refused: int = 0
    filtered: int = 0
    held: bool = False
    """True when a transient failure stopped the batch (it resumes on the next run)."""


def event_message(event: RelayedEvent) -> OutgoingMessage:
    return OutgoingMessage(
        key=f"evt_{event.id}",
        customer_id=event.customer_id,
        kind=f"case.{event.kind}",
        channel="webhook",
        locale="",
        to="",
        data={
            "case_id": event.case_id,
            "invoice_id": event.invoice_id,
            "amount_minor": event.amount_minor,
            "currency": event.currency,
            "at": event.at.isoformat(),
            "reason": event.reason,
            "from_status": event.from_status,
            "to_status": event.to_status,
            "details": dict(event.data or {}),
        },
    )


class EventRelay:
    """Publishes case events through a webhook channel."""

    def __init__(
        self,
        store: Store,
        channel: Channel,
        *,
        name: str = "webhook",
        kinds: frozenset[str] | None = None,
        batch_size: int = 200,
        lease: timedelta = timedelta(minutes=5),
        worker_id: str = "worker",
    ) -> None:
        self.store = store
        self.channel = channel
        self.name = name
        self.kinds = kinds
        self.batch_size = batch_size
        self.lease = lease
        self.worker_id = worker_id

    def relay(self, now: datetime) -> RelayReport:
        """Deliver the next batch of events; returns at once if another worker holds the stream."""
        now = require_aware("now", now).astimezone(UTC)
        report = RelayReport()
        with self.store.unit_of_work() as uow:
            cursor = uow.claim_relay(self.name, now, worker_id=self.worker_id, lease=self.lease)
            events = uow.case_events_after(cursor, limit=self.batch_size) if cursor is not None else []
            uow.commit()
        if cursor is None:
            return report
        last = cursor
        try:
            for event in events:
                if self.kinds is not None and event.kind not in self.kinds:
                    report.filtered += 1
                    last = event.id
                    continue
                result = self.channel.send(event_message(event))
                if result.status is DeliveryStatus.SENT:
                    report.delivered += 1
                elif result.status is DeliveryStatus.PERMANENT_FAILURE:
                    report.refused += 1
                    log.warning("webhook refused event", extra={"event_id": event.id, "error": result.error})
                else:
                    report.held = True
                    break
                last = event.id
        finally:
            with self.store.unit_of_work() as uow:
                uow.release_relay(self.name, last, now)
                uow.commit()
        return report
