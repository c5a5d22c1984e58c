"""Every domain event, to the operator's systems (a CRM, a support tool) by webhook.

Two streams: the case timeline (``case_events``, kinds ``case.<kind>``, ids
``evt_<n>``) and the subscriptions' own changes made by customers on the hosted
pages (``subscription_events``, kinds ``subscription.<kind>``, ids ``sub_evt_<n>``):
a pause, a discount or a plan change is applied by the operator's billing from these.
Each stream has its own cursor. A durable cursor records the last
event delivered; one worker at a time holds the stream (an expiring claim). Delivery
is at least once, in order: each event carries a stable id (``evt_<n>``) that the
receiver uses to drop repeats. A transient failure stops the batch, to be resumed
from the same event later; an event the receiver refuses for good is logged and
passed over so that one bad event cannot block the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from recobra.domain.leaving import SubscriptionChange
from recobra.domain.model import require_aware
from recobra.ports import Channel, DeliveryStatus, OutgoingMessage, RelayedEvent, Store, UnitOfWork

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


def change_message(number: int, change: SubscriptionChange) -> OutgoingMessage:
    """A subscription change (canceled, paused, discounted, plan changed, reactivated):
    what the operator's billing must apply, with ``details`` saying how."""
    return OutgoingMessage(
        key=f"sub_evt_{number}",
        customer_id=change.customer_id,
        kind=f"subscription.{change.kind}",
        channel="webhook",
        locale="",
        to="",
        data={
            "subscription_id": change.subscription_id,
            "at": change.at.isoformat(),
            "reason": change.reason,
            "details": dict(change.data),
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
        """Deliver the next batch of case events, then of subscription changes (each
        stream has its own cursor); returns at once if another worker holds a stream."""
        now = require_aware("now", now).astimezone(UTC)
        report = RelayReport()
        self._stream(now, report, self.name, self._case_batch)
        if not report.held:
            self._stream(now, report, f"{self.name}.subscriptions", self._change_batch)
        return report

    def _case_batch(self, uow: UnitOfWork, after: int) -> list[tuple[int, str, OutgoingMessage]]:
        return [(e.id, e.kind, event_message(e)) for e in uow.case_events_after(after, limit=self.batch_size)]

    def _change_batch(self, uow: UnitOfWork, after: int) -> list[tuple[int, str, OutgoingMessage]]:
        return [
            (n, f"subscription.{c.kind}", change_message(n, c))
            for n, c in uow.subscription_changes_after(after, limit=self.batch_size)
        ]

    def _stream(
        self,
        now: datetime,
        report: RelayReport,
        name: str,
        batch: Callable[[UnitOfWork, int], list[tuple[int, str, OutgoingMessage]]],
    ) -> None:
        with self.store.unit_of_work() as uow:
            cursor = uow.claim_relay(name, now, worker_id=self.worker_id, lease=self.lease)
            events = batch(uow, cursor) if cursor is not None else []
            uow.commit()
        if cursor is None:
            return
        last = cursor
        try:
            for event_id, kind, message in events:
                if self.kinds is not None and kind not in self.kinds:
                    report.filtered += 1
                    last = event_id
                    continue
                result = self.channel.send(message)
                if result.status is DeliveryStatus.SENT:
                    report.delivered += 1
                elif result.status is DeliveryStatus.PERMANENT_FAILURE:
                    report.refused += 1
                    log.warning(
                        "webhook refused event", extra={"event_id": message.key, "error": result.error}
                    )
                else:
                    report.held = True
                    break
                last = event_id
        finally:
            with self.store.unit_of_work() as uow:
                uow.release_relay(name, last, now)
                uow.commit()
