"""The message dispatcher: drains the outbox at most once per (case, step, channel).

A dispatch runs in three phases, like a tick:

(A) in one transaction: reap messages a stopped worker left ``sending`` (they
    become ``unknown`` and are never resent), claim due messages, decide each one
    (still needed? suppression, consent, quiet hours, caps), mark the ones to send
    ``sending`` and commit;
(B) with no transaction open: render and send through the channels;
(C) in one transaction: record outcomes; transient failures are retried with
    backoff; permanent failures and skips bring in the step's fallback channel.

A worker killed in (B) therefore never causes a second send: at worst a message
is ``unknown`` (it may or may not have gone out), and that is shown to operators.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from recobra.domain.case import ACTIVE_STATUSES
from recobra.domain.messages import (
    TRANSACTIONAL,
    ChannelKind,
    DeliveryRules,
    MessageStatus,
    OutboxEntry,
    decide_delivery,
    message_key,
)
from recobra.domain.model import require_aware
from recobra.domain.policy import DUNNING_KINDS
from recobra.engine.campaigns import still_relevant
from recobra.ports import (
    Channel,
    DeliveryResult,
    DeliveryStatus,
    MessageBundle,
    MessageComposer,
    MessageUpdate,
    OutgoingMessage,
    Store,
)

log = logging.getLogger("recobra.messages")

RETRY_BACKOFF = (timedelta(minutes=1), timedelta(minutes=10), timedelta(hours=1), timedelta(hours=4))
"""Waits after transient failures; once they run out the message fails and its fallback is used."""
STOP_ERROR = "twilio 21610"
SEND_CHUNK = 20
"""Messages marked 'sending' together: what a stopped worker can leave 'unknown' at most."""
PAUSED_RECHECK = timedelta(hours=1)
"""How often a dunning message of a paused case is looked at again."""


@dataclass(slots=True)
class DispatchReport:
    """What one dispatch did, with counts per (kind, channel) of messages sent."""

    claimed: int = 0
    sent: int = 0
    deferred: int = 0
    skipped: int = 0
    canceled: int = 0
    failed: int = 0
    retried: int = 0
    reaped: int = 0
    fallbacks: int = 0
    by_kind_channel: dict[str, int] = field(default_factory=dict)

    def add(self, other: DispatchReport) -> None:
        for name in (
            "claimed",
            "sent",
            "deferred",
            "skipped",
            "canceled",
            "failed",
            "retried",
            "reaped",
            "fallbacks",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, count in other.by_kind_channel.items():
            self.by_kind_channel[key] = self.by_kind_channel.get(key, 0) + count


@dataclass(slots=True)
class _Send:
    bundle: MessageBundle
    message: OutgoingMessage | None = None
    result: DeliveryResult | None = None


class Messenger:
    """Sends due messages through the configured channels."""

    def __init__(
        self,
        store: Store,
        channels: Mapping[ChannelKind, Channel],
        composer: MessageComposer,
        *,
        rules: DeliveryRules | None = None,
        batch_size: int = 200,
        lease: timedelta = timedelta(minutes=5),
        worker_id: str = "worker",
    ) -> None:
        self.store = store
        self.channels = dict(channels)
        self.composer = composer
        self.rules = rules or DeliveryRules()
        self.batch_size = batch_size
        self.lease = lease
        self.worker_id = worker_id

    def dispatch(self, now: datetime) -> DispatchReport:
        """Send everything due at ``now``, in batches."""
        now = require_aware("now", now).astimezone(UTC)
        report = DispatchReport()
        with self.store.unit_of_work() as uow:
            report.reaped = uow.reap_messages(now)
            uow.commit()
        while True:
            batch = self._dispatch_batch(now)
            report.add(batch)
            if batch.claimed < self.batch_size:
                return report

    def _dispatch_batch(self, now: datetime) -> DispatchReport:
        report = DispatchReport()
        sends: list[_Send] = []
        with self.store.unit_of_work() as uow:
            ids = uow.claim_due_messages(
                now, limit=self.batch_size, worker_id=self.worker_id, lease=self.lease
            )
            report.claimed = len(ids)
            updates: list[MessageUpdate] = []
            fallbacks: list[OutboxEntry] = []
            # Messages chosen to go out in this batch count against the caps of the
            # ones decided after them.
            planned: dict[str, list[datetime]] = {}
            for bundle in uow.load_messages(ids, now):
                mine = planned.setdefault(bundle.customer.id, [])
                settled = self._decide(bundle, now, report, fallbacks, mine)
                if settled is None:
                    sends.append(_Send(bundle))
                    if bundle.entry.kind not in TRANSACTIONAL:
                        mine.append(now)
                else:
                    updates.append(settled)
            # Messages to send stay claimed (and 'scheduled') until their chunk starts:
            # a worker that stops before then leaves them to be claimed again.
            uow.update_messages(updates, release_claims=True)
            uow.add_messages(fallbacks)
            report.fallbacks += len(fallbacks)
            uow.commit()
        for start in range(0, len(sends), SEND_CHUNK):
            self._send_chunk(sends[start : start + SEND_CHUNK], now, report)
        return report

    def _send_chunk(self, chunk: list[_Send], now: datetime, report: DispatchReport) -> None:
        """Mark a few messages 'sending' (committed), send them, record the outcomes.

        A worker that stops mid-chunk leaves at most this chunk 'sending': those become
        'unknown' when their claim expires and are never sent again."""
        with self.store.unit_of_work() as uow:
            uow.update_messages(
                [
                    MessageUpdate(i.bundle.id, MessageStatus.SENDING, None, "sending", i.bundle.attempts + 1)
                    for i in chunk
                ],
                release_claims=False,
            )
            uow.commit()
        for item in chunk:
            entry = item.bundle.entry
            try:
                item.message = self.composer.compose(item.bundle, now)
            except ValueError as exc:
                item.result = DeliveryResult(DeliveryStatus.PERMANENT_FAILURE, error=f"cannot render: {exc}")
                continue
            channel = self.channels.get(entry.channel)
            if channel is None:
                item.result = DeliveryResult(
                    DeliveryStatus.PERMANENT_FAILURE, error=f"no {entry.channel} channel is configured"
                )
                continue
            item.result = channel.send(item.message)
        with self.store.unit_of_work() as uow:
            updates = []
            fallbacks: list[OutboxEntry] = []
            stopped: list[str] = []
            for item in chunk:
                assert item.result is not None
                updates.append(self._record(item, now, report, fallbacks, stopped))
            uow.update_messages(updates, release_claims=True)
            uow.add_messages(fallbacks)
            for customer_id in stopped:
                uow.set_sms_stopped(customer_id, True, now)
            report.fallbacks += len(fallbacks)
            uow.commit()

    def _decide(
        self,
        bundle: MessageBundle,
        now: datetime,
        report: DispatchReport,
        fallbacks: list[OutboxEntry],
        planned: list[datetime],
    ) -> MessageUpdate | None:
        """None to send now; otherwise the message's new state (deferred, skipped, canceled)."""
        entry, case = bundle.entry, bundle.case
        if entry.kind in DUNNING_KINDS and case is not None and case.status not in ACTIVE_STATUSES:
            report.canceled += 1
            return MessageUpdate(
                bundle.id,
                MessageStatus.CANCELED,
                None,
                f"not needed: the case is {case.status}",
                bundle.attempts,
            )
        if (
            entry.kind in DUNNING_KINDS
            and case is not None
            and case.paused
            and not entry.context.get("requested_by")
        ):
            # An operator paused dunning: the message waits (checked again later).
            report.deferred += 1
            return MessageUpdate(
                bundle.id,
                MessageStatus.SCHEDULED,
                now + PAUSED_RECHECK,
                "dunning paused by an operator: waits until it is resumed",
                bundle.attempts,
            )
        if entry.only_if_unclicked and any(clicked for _, _, clicked in bundle.siblings):
            report.canceled += 1
            return MessageUpdate(
                bundle.id, MessageStatus.CANCELED, None, "not needed: the customer clicked", bundle.attempts
            )
        if case is None and entry.context:
            relevant, why = still_relevant(
                entry.context,
                default_method_id=bundle.payment_method.id if bundle.payment_method else None,
                subscription_status=bundle.subscription_status,
                renews_at=bundle.renews_at,
            )
            if not relevant:
                report.canceled += 1
                return MessageUpdate(
                    bundle.id, MessageStatus.CANCELED, None, f"not needed: {why}", bundle.attempts
                )
        delivered = any(status == MessageStatus.SENT for _, status, _ in bundle.siblings)
        if entry.is_fallback and delivered and not entry.only_if_unclicked:
            report.canceled += 1
            return MessageUpdate(
                bundle.id,
                MessageStatus.CANCELED,
                None,
                "not needed: delivered on another channel",
                bundle.attempts,
            )
        reach = bundle.reach
        if entry.context.get("requested_by_customer") == "1":
            # The customer asked for this very message (pressed 1 on the call).
            reach = replace(reach, sms_consent=True)
        verdict = decide_delivery(
            entry.kind,
            entry.channel,
            reach,
            now=now,
            timezone=bundle.customer.timezone,
            recent=[*bundle.recent, *planned],
            rules=self.rules,
        )
        if verdict.send:
            return None
        if verdict.defer_until is not None:
            report.deferred += 1
            return MessageUpdate(
                bundle.id, MessageStatus.SCHEDULED, verdict.defer_until, verdict.reason, bundle.attempts
            )
        report.skipped += 1
        fallbacks.extend(self._fallback(bundle, now))
        return MessageUpdate(bundle.id, MessageStatus.SKIPPED, None, verdict.reason, bundle.attempts)

    def _record(
        self,
        item: _Send,
        now: datetime,
        report: DispatchReport,
        fallbacks: list[OutboxEntry],
        stopped: list[str],
    ) -> MessageUpdate:
        bundle, result = item.bundle, item.result
        assert result is not None
        entry = bundle.entry
        attempts = bundle.attempts + 1
        if result.status is DeliveryStatus.SENT:
            report.sent += 1
            key = f"{entry.kind}/{entry.channel}"
            report.by_kind_channel[key] = report.by_kind_channel.get(key, 0) + 1
            if entry.fallback and entry.fallback_after is not None:
                fallbacks.extend(self._fallback(bundle, now + entry.fallback_after, unclicked=True))
            payload = None
            if entry.channel is ChannelKind.IN_APP and item.message is not None:
                payload = {
                    "subject": item.message.subject,
                    "text": item.message.text,
                    **(item.message.data or {}),
                }
            return MessageUpdate(
                bundle.id,
                MessageStatus.SENT,
                None,
                f"sent by {entry.channel}",
                attempts,
                sent_at=now,
                provider_id=result.provider_id,
                payload=payload,
            )
        if result.error.startswith(STOP_ERROR):
            stopped.append(bundle.customer.id)
        if result.status is DeliveryStatus.TRANSIENT_FAILURE and attempts <= len(RETRY_BACKOFF):
            report.retried += 1
            wait = RETRY_BACKOFF[attempts - 1]
            return MessageUpdate(
                bundle.id,
                MessageStatus.SCHEDULED,
                now + wait,
                f"{result.error or 'temporary failure'}; trying again in {wait}",
                attempts,
            )
        report.failed += 1
        fallbacks.extend(self._fallback(bundle, now))
        log.info("message failed", extra={"key": entry.key, "error": result.error})
        return MessageUpdate(bundle.id, MessageStatus.FAILED, None, result.error or "failed", attempts)

    @staticmethod
    def _fallback(bundle: MessageBundle, due: datetime, *, unclicked: bool = False) -> list[OutboxEntry]:
        """The step's next channel, unless another channel of the step already delivered it."""
        entry = bundle.entry
        if not entry.fallback or entry.case_id is None:
            return []
        delivered = any(status == MessageStatus.SENT for _, status, _ in bundle.siblings)
        if delivered and not unclicked:
            return []
        channel, rest = entry.fallback[0], entry.fallback[1:]
        return [
            OutboxEntry(
                key=message_key(entry.case_id, entry.step, channel),
                customer_id=entry.customer_id,
                case_id=entry.case_id,
                kind=entry.kind,
                channel=channel,
                step=entry.step,
                due_at=due,
                fallback=rest,
                only_if_unclicked=unclicked,
                is_fallback=True,
                context=entry.context,
            )
        ]
