"""Stripe's webhook inbox: verified events are stored, answered, then processed here.

An event's ``status``: ``pending``, ``processing`` (claimed), ``done``, ``ignored`` (not
Recobra's concern, or nothing to do), ``stale`` (older than what is known), ``failed``
(Stripe unreachable: retried) or ``invalid`` (Stripe's objects lack what Recobra needs,
such as a customer's email: not retried; the note says what).

Order and repetition (Stripe delivers at least once and in no particular order,
https://docs.stripe.com/webhooks#event-ordering):

* an event id is stored once; a redelivery is answered 200 and dropped;
* pending events are processed oldest first (by Stripe's ``created``), by the
  webhook right after its answer and by the worker loop (``process_pending``);
  a claim (``processing``) keeps two processes off the same event;
* an event older than one already applied to the same object is marked ``stale``
  and not applied (an old ``invoice.payment_failed`` after ``invoice.paid`` never
  reopens a case); an invoice failure is also checked against the invoice's live
  status at Stripe, which is the source of truth;
* an event whose processing fails (Stripe unreachable) is retried by the worker
  up to ``MAX_TRIES`` times, then left ``failed`` for an operator.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import stripe
from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from recobra.domain.model import PaymentMethod
from recobra.engine.commands import (
    Command,
    PaymentFailed,
    PaymentMethodUpdated,
    PaymentSucceeded,
    SubscriptionCanceled,
    SubscriptionUpdated,
)
from recobra.engine.service import Engine
from recobra.store.tables import StripeEventRow
from recobra.stripe import mapping
from recobra.stripe.config import Mode, StripeSettings

log = logging.getLogger(__name__)

MAX_TRIES = 10
CLAIM_TIMEOUT = timedelta(minutes=5)

HANDLED = frozenset(
    {
        "invoice.payment_failed",
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.upcoming",
        "invoice.marked_uncollectible",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "payment_method.attached",
        "payment_method.updated",
        "payment_method.automatically_updated",
        "customer.source.expiring",
        "setup_intent.succeeded",
    }
)
"""The event types to enable on the webhook endpoint; others are answered and ignored."""

SETUP_METADATA = "recobra_case"
"""Metadata a hosted-page SetupIntent carries: the case it was made for."""
SETUP_CUSTOMER_METADATA = "recobra_customer"
"""Metadata a card-only hosted page's SetupIntent carries instead: the customer."""


def setup_event_id(setup_intent_id: str) -> str:
    """One id for a new card from a SetupIntent, whether the hosted page or the
    webhook reports it first: the engine applies it once."""
    return f"stripe:setup_intent:{setup_intent_id}"


def as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict()
    return dict(obj or {})


@dataclass(frozen=True, slots=True)
class Stored:
    """An inbox row."""

    id: str
    type: str
    object_id: str | None
    created: datetime
    payload: str
    status: str
    tries: int
    note: str


class Inbox:
    """The ``stripe_events`` table."""

    def __init__(self, db: Any) -> None:
        self.db = db  # a SQLAlchemy Engine

    def add(self, event: Mapping[str, Any], payload: str, now: datetime) -> bool:
        """Store a verified event; False when its id was stored before."""
        kind = str(event.get("type") or "")
        row = {
            "id": str(event["id"]),
            "type": kind,
            "object_id": mapping.event_object_id(event),
            "created": mapping.timestamp(event.get("created"), "event.created"),
            "received_at": now,
            "payload": payload,
            "status": "pending" if kind in HANDLED else "ignored",
            "tries": 0,
            "note": "" if kind in HANDLED else "not an event Recobra acts on",
            "processed_at": None if kind in HANDLED else now,
        }
        try:
            with self.db.begin() as conn:
                conn.execute(insert(StripeEventRow), [row])
        except IntegrityError:
            return False
        return True

    def get(self, event_id: str) -> Stored | None:
        with self.db.connect() as conn:
            row = conn.execute(select(StripeEventRow.__table__).where(StripeEventRow.id == event_id)).first()
        return _stored(row) if row else None

    def claimable(self, now: datetime, limit: int) -> list[Stored]:
        t = StripeEventRow
        query = (
            select(t.__table__)
            .where(
                or_(
                    t.status == "pending",
                    and_(t.status == "failed", t.tries < MAX_TRIES),
                    and_(t.status == "processing", t.processed_at < now - CLAIM_TIMEOUT),
                )
            )
            .order_by(t.created, t.id)
            .limit(limit)
        )
        with self.db.connect() as conn:
            return [_stored(r) for r in conn.execute(query)]

    def claim(self, event: Stored, now: datetime) -> bool:
        t = StripeEventRow
        with self.db.begin() as conn:
            done = conn.execute(
                update(t)
                .where(t.id == event.id, t.status == event.status, t.tries == event.tries)
                .values(status="processing", processed_at=now, tries=t.tries + 1)
            )
            return bool(done.rowcount == 1)

    def finish(self, event_id: str, status: str, note: str, now: datetime) -> None:
        t = StripeEventRow
        with self.db.begin() as conn:
            conn.execute(
                update(t).where(t.id == event_id).values(status=status, note=note[:2000], processed_at=now)
            )

    def newer_applied(self, event: Stored) -> bool:
        """Whether an event created after this one was already applied to its object."""
        if not event.object_id:
            return False
        t = StripeEventRow
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.id)
                .where(t.object_id == event.object_id, t.status == "done", t.created > event.created)
                .limit(1)
            ).first()
        return found is not None


def _stored(row: Any) -> Stored:
    return Stored(row.id, row.type, row.object_id, row.created, row.payload, row.status, row.tries, row.note)


@dataclass(slots=True)
class ProcessReport:
    done: int = 0
    stale: int = 0
    ignored: int = 0
    failed: int = 0
    invalid: int = 0


class Skip(Exception):
    """The event is about nothing Recobra acts on; the message says why."""


class EventProcessor:
    """Turns stored Stripe events into engine commands, reading Stripe's live objects
    where an event's snapshot lacks what the engine needs (customer, card, codes)."""

    def __init__(self, engine: Engine, settings: StripeSettings, client: stripe.StripeClient) -> None:
        self.engine = engine
        self.settings = settings
        self.client = client
        self.inbox = Inbox(engine.store.engine)  # type: ignore[attr-defined]

    def process_pending(self, now: datetime, *, limit: int = 200) -> ProcessReport:
        """Process claimable events, oldest first."""
        report = ProcessReport()
        for event in self.inbox.claimable(now, limit):
            if not self.inbox.claim(event, now):
                continue  # another process has it
            status = self._process(event, now)
            setattr(report, status, getattr(report, status) + 1)
        return report

    def _process(self, event: Stored, now: datetime) -> str:
        if self.inbox.newer_applied(event):
            why = "an event created later was already applied to this object"
            self.inbox.finish(event.id, "stale", why, now)
            return "stale"
        try:
            payload = json.loads(event.payload)
            commands = self.commands(payload)
            for command in commands:
                self.engine.handle(command)
        except Skip as why:
            self.inbox.finish(event.id, "ignored", str(why), now)
            return "ignored"
        except stripe.StripeError as exc:
            # Stripe unreachable or refusing for now: the worker tries again.
            log.warning("stripe event %s failed: %s", event.id, exc)
            self.inbox.finish(event.id, "failed", f"{type(exc).__name__}: {exc}", now)
            return "failed"
        except ValueError as exc:
            # Stripe's objects lack what Recobra needs (a customer without an email ...):
            # trying again cannot help; the note says what is missing.
            log.warning("stripe event %s cannot be used: %s", event.id, exc)
            self.inbox.finish(event.id, "invalid", str(exc), now)
            return "invalid"
        self.inbox.finish(event.id, "done", f"{len(commands)} command(s)", now)
        return "done"

    # ------------------------------------------------------------------ mapping

    def commands(self, event: Mapping[str, Any]) -> list[Command]:
        kind = str(event.get("type"))
        obj: dict[str, Any] = dict((event.get("data") or {}).get("object") or {})
        event_id = str(event["id"])
        at = mapping.timestamp(event.get("created"), "event.created")
        match kind:
            case "invoice.payment_failed":
                return [self.payment_failed(event_id, at, obj)]
            case "invoice.paid" | "invoice.payment_succeeded":
                pi = mapping.invoice_payment_intent_id(obj)
                return [PaymentSucceeded(event_id, at, str(obj["id"]), gateway_reference=pi)]
            case "invoice.marked_uncollectible":
                self._written_off(str(obj["id"]), at)
                return []
            case "invoice.upcoming":
                sub_id = mapping.invoice_subscription_id(obj)
                if not sub_id:
                    raise Skip("an upcoming invoice without a subscription")
                sub = as_dict(self.client.v1.subscriptions.retrieve(sub_id))
                return [self.subscription_updated(event_id, at, sub)]
            case "customer.subscription.updated":
                if obj.get("status") in ("canceled", "incomplete_expired"):
                    return [self._canceled(event_id, at, obj)]
                return [self.subscription_updated(event_id, at, obj)]
            case "customer.subscription.deleted":
                return [self._canceled(event_id, at, obj)]
            case "payment_method.attached" | "payment_method.updated":
                return [self._method_updated(event_id, at, obj, card_updater=False)]
            case "payment_method.automatically_updated":
                return [self._method_updated(event_id, at, obj, card_updater=True)]
            case "customer.source.expiring":
                return self._expiring(event_id, at, obj)
            case "setup_intent.succeeded":
                metadata = obj.get("metadata") or {}
                if not (metadata.get(SETUP_METADATA) or metadata.get(SETUP_CUSTOMER_METADATA)):
                    raise Skip("a SetupIntent not made by Recobra's hosted page")
                return [self.new_default_card(obj, at)]
            case _:
                raise Skip(f"{kind}: not an event Recobra acts on")

    def _customer(self, customer_id: str, *, invoice: Mapping[str, Any] | None = None) -> Any:
        cus = as_dict(self.client.v1.customers.retrieve(customer_id))
        if cus.get("deleted"):
            raise Skip(f"customer {customer_id} was deleted")
        fallback = invoice.get("customer_email") if invoice else None
        return mapping.customer(cus, fallback_email=fallback), cus

    def payment_failed(self, event_id: str, at: datetime, snapshot: dict[str, Any]) -> PaymentFailed:
        invoice = as_dict(self.client.v1.invoices.retrieve(str(snapshot["id"])))
        if invoice.get("status") != "open":
            raise Skip(f"the invoice is {invoice.get('status')} now: nothing to recover")
        if (invoice.get("metadata") or {}).get("recobra_attempt"):
            with self.engine.store.unit_of_work() as uow:
                if invoice["id"] in uow.cases_for_invoices([str(invoice["id"])]):
                    raise Skip("the failure of Recobra's own retry: the engine recorded it")
        customer_id = str(mapping.ref(invoice.get("customer")))
        customer, _cus = self._customer(customer_id, invoice=invoice)
        sub = None
        sub_id = mapping.invoice_subscription_id(invoice)
        if sub_id:
            sub = mapping.subscription(as_dict(self.client.v1.subscriptions.retrieve(sub_id)))
        pi_id = mapping.invoice_payment_intent_id(invoice)
        if not pi_id and "payment_intent" not in invoice:
            listed = self.client.v1.invoice_payments.list({"invoice": str(invoice["id"])})
            pi_id = mapping.invoice_payment_intent_id({"payments": as_dict(listed)})
        pi: dict[str, Any] = {}
        charge: dict[str, Any] = {}
        if pi_id:
            pi = as_dict(self.client.v1.payment_intents.retrieve(pi_id, {"expand": ["latest_charge"]}))
            latest = pi.get("latest_charge")
            charge = dict(latest) if isinstance(latest, Mapping) else {}
        codes = mapping.decline_codes(error=pi.get("last_payment_error"), charge=charge)
        if pi.get("status") == "requires_action":
            codes = mapping.DeclineCodes("authentication_required", message="the customer must authenticate")
        method = self._method_of(customer_id, pi, charge, invoice)
        if method is None:
            raise Skip("the failed payment was not made with a card")
        return PaymentFailed(
            event_id,
            at,
            customer,
            mapping.invoice(invoice),
            method,
            sub,
            decline_code=codes.code,
            network_code=codes.network_code,
            advice_code=codes.advice_code,
            gateway_reference=codes.charge_id or pi_id,
        )

    def _method_of(
        self, customer_id: str, pi: Mapping[str, Any], charge: Mapping[str, Any], invoice: Mapping[str, Any]
    ) -> PaymentMethod | None:
        token = (
            mapping.ref(charge.get("payment_method"))
            or mapping.ref(pi.get("payment_method"))
            or mapping.ref(invoice.get("default_payment_method"))
        )
        if token and token.startswith("pm_"):
            pm = as_dict(self.client.v1.payment_methods.retrieve(token))
            return mapping.payment_method(pm, customer_id=customer_id)
        if charge:
            return mapping.payment_method_from_charge(charge, customer_id)
        return None

    def _default_method(
        self, cus: Mapping[str, Any], sub: Mapping[str, Any] | None = None
    ) -> PaymentMethod | None:
        token = mapping.ref((sub or {}).get("default_payment_method")) or mapping.ref(
            (cus.get("invoice_settings") or {}).get("default_payment_method")
        )
        if not token:
            return None
        pm = as_dict(self.client.v1.payment_methods.retrieve(token))
        return mapping.payment_method(pm, customer_id=str(cus["id"]))

    def subscription_updated(
        self, event_id: str, at: datetime, sub: Mapping[str, Any]
    ) -> SubscriptionUpdated:
        customer, cus = self._customer(str(mapping.ref(sub.get("customer"))))
        return SubscriptionUpdated(
            event_id, at, customer, mapping.subscription(sub), self._default_method(cus, sub)
        )

    def _canceled(self, event_id: str, at: datetime, sub: Mapping[str, Any]) -> SubscriptionCanceled:
        details = sub.get("cancellation_details") or {}
        reason = details.get("comment") or details.get("feedback") or details.get("reason") or ""
        return SubscriptionCanceled(event_id, at, str(sub["id"]), reason=str(reason)[:2000])

    def _method_updated(
        self, event_id: str, at: datetime, pm: Mapping[str, Any], *, card_updater: bool
    ) -> PaymentMethodUpdated:
        customer_id = mapping.ref(pm.get("customer"))
        if not customer_id:
            raise Skip("a payment method attached to no customer")
        if card_updater:
            default = True  # the card updater's new details: retry at once
        else:
            cus = as_dict(self.client.v1.customers.retrieve(customer_id))
            settings = cus.get("invoice_settings") or {}
            default = mapping.ref(settings.get("default_payment_method")) == pm.get("id")
        method = mapping.payment_method(pm, customer_id=customer_id, is_default=default)
        if method is None:
            raise Skip("not a card")
        return PaymentMethodUpdated(event_id, at, method)

    def _expiring(self, event_id: str, at: datetime, card: Mapping[str, Any]) -> list[Command]:
        """A card about to expire: the subscriptions it pays are planned again, so
        that the policy's expiring-card reminders go out (pre-dunning)."""
        customer_id = mapping.ref(card.get("customer"))
        if not customer_id:
            raise Skip("an expiring card of no customer")
        customer, _cus = self._customer(customer_id)
        method = mapping.payment_method(card, customer_id=customer_id)
        if method is None:
            raise Skip("not a card")
        subs = self.client.v1.subscriptions.list({"customer": customer_id})
        commands: list[Command] = []
        for sub in subs.auto_paging_iter():
            data = as_dict(sub)
            if data.get("status") not in ("active", "trialing", "past_due"):
                continue
            commands.append(
                SubscriptionUpdated(
                    f"{event_id}:{data['id']}", at, customer, mapping.subscription(data), method
                )
            )
        if not commands:
            raise Skip("the expiring card pays no active subscription")
        return commands

    def _written_off(self, invoice_id: str, at: datetime) -> None:
        with self.engine.store.unit_of_work() as uow:
            case = uow.cases_for_invoices([invoice_id]).get(invoice_id)
        if case is None or not case.is_active:
            raise Skip("no active case for this invoice")
        self.engine.write_off(case.id, at, reason="marked uncollectible in Stripe", operator="stripe")

    def new_default_card(self, setup_intent: Mapping[str, Any], at: datetime) -> PaymentMethodUpdated:
        """A card saved through a SetupIntent becomes the customer's default at Stripe
        (and the subscription's, in billing mode); the engine then retries at once."""
        if setup_intent.get("status") != "succeeded":
            raise Skip(f"the SetupIntent is {setup_intent.get('status')}")
        customer_id = mapping.ref(setup_intent.get("customer"))
        pm_id = mapping.ref(setup_intent.get("payment_method"))
        if not customer_id or not pm_id:
            raise Skip("the SetupIntent has no customer or payment method")
        key = f"recobra:setup:{setup_intent['id']}"
        self.client.v1.customers.update(
            customer_id,
            {"invoice_settings": {"default_payment_method": pm_id}},
            {"idempotency_key": f"{key}:customer"},
        )
        metadata = setup_intent.get("metadata") or {}
        if self.settings.mode is Mode.BILLING:
            # A subscription's own default method outranks the customer's: move it too.
            # A case's page names its subscription; a card-only page names none, and the
            # new card is then the one for every subscription of the customer.
            if metadata.get("recobra_subscription"):
                subs = [as_dict(self.client.v1.subscriptions.retrieve(metadata["recobra_subscription"]))]
            elif metadata.get(SETUP_CUSTOMER_METADATA):
                listed = self.client.v1.subscriptions.list({"customer": customer_id, "limit": 100})
                subs = [as_dict(sub) for sub in listed.data]
            else:
                subs = []
            for sub in subs:
                if mapping.ref(sub.get("default_payment_method")) not in (None, pm_id):
                    self.client.v1.subscriptions.update(
                        str(sub["id"]),
                        {"default_payment_method": pm_id},
                        {"idempotency_key": f"{key}:subscription:{sub['id']}"},
                    )
        pm = as_dict(self.client.v1.payment_methods.retrieve(pm_id))
        method = mapping.payment_method(pm, customer_id=customer_id, is_default=True)
        if method is None:
            raise Skip("not a card")
        return PaymentMethodUpdated(setup_event_id(str(setup_intent["id"])), at, method)


def process_pending(engine: Engine, now: datetime) -> ProcessReport:
    """The worker loop's share: pending Stripe events, when the gateway is Stripe's."""
    from recobra.stripe.gateway import StripeGateway  # noqa: PLC0415 - the gateway imports this module's users

    gateway = engine.gateway
    if not isinstance(gateway, StripeGateway):
        return ProcessReport()
    return EventProcessor(engine, gateway.settings, gateway.client).process_pending(now)
