"""A synthetic subscription business run through the real engine and store.

The simulator plays the *billing system* and the *customers*: it renews
subscriptions, sends every renewal's first charge through the configured
gateway (so the gateway decides which renewals fail), reports failures to the
engine as ``PaymentFailed`` events, and has some customers give a new card,
cancel, or pay another way while their case is open. Everything else is the
production engine and store, driven by a clock that jumps from due time to due
time (never early; at most ``resolution`` late, like a worker polling).
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import phonenumbers

from recobra.domain.declines import DeclineCategory, classify
from recobra.domain.model import (
    Customer,
    Funding,
    Interval,
    Invoice,
    InvoiceStatus,
    PaymentMethod,
    Plan,
    Subscription,
    SubscriptionStatus,
)
from recobra.domain.money import Money
from recobra.engine.commands import (
    Command,
    ContactPreferencesChanged,
    InvoicePaidOutOfBand,
    PaymentFailed,
    PaymentMethodUpdated,
    PushSubscribed,
    SubscriptionCanceled,
    SubscriptionUpdated,
)
from recobra.engine.messenger import DispatchReport, Messenger
from recobra.engine.service import Engine, TickReport
from recobra.ports import (
    CardRef,
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    PaymentGateway,
)

# country, time zone, currency, locale, share, monthly basic, monthly pro, annual pro
MARKETS: tuple[tuple[str, str, str, str, float, int, int, int], ...] = (
    ("MX", "America/Mexico_City", "MXN", "es", 0.22, 14900, 29900, 299000),
    ("CO", "America/Bogota", "COP", "es", 0.12, 2990000, 5990000, 59900000),
    ("ES", "Europe/Madrid", "EUR", "es", 0.14, 900, 1900, 19000),
    ("CL", "America/Santiago", "CLP", "es", 0.06, 7990, 15990, 159900),
    ("AR", "America/Argentina/Buenos_Aires", "USD", "es", 0.05, 700, 1500, 15000),
    ("PE", "America/Lima", "PEN", "es", 0.05, 2900, 5900, 59000),
    ("US", "America/New_York", "USD", "en", 0.26, 900, 1900, 19000),
    ("GB", "Europe/London", "GBP", "en", 0.10, 700, 1500, 15000),
)
BRANDS = (("visa", 0.55), ("mastercard", 0.35), ("amex", 0.10))
FUNDING = ((Funding.CREDIT, 0.55), (Funding.DEBIT, 0.40), (Funding.PREPAID, 0.05))
DEAD_CARD = {DeclineCategory.HARD, DeclineCategory.FRAUD_SUSPECT, DeclineCategory.AUTHENTICATION_REQUIRED}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How simulated customers act while their payment is failing (assumptions)."""

    update_card_dead: float = 0.35
    """Share who give a new card when theirs cannot be charged (hard, fraud, authentication)."""
    update_card_soft: float = 0.10
    """Share who give a new card after a soft decline."""
    cancel: float = 0.03
    """Share who cancel while in dunning."""
    pay_out_of_band: float = 0.01
    """Share who pay another way (bank transfer)."""
    annual_share: float = 0.2
    """Share of subscriptions billed yearly."""


@dataclass(slots=True)
class _Sub:
    index: int
    customer: Customer
    plan: Plan
    subscription: Subscription
    method: PaymentMethod
    card: CardRef
    anchor: datetime
    period: int = 0
    cards: int = 1
    state: str = "active"  # active | dunning | churned
    invoice: str = ""


@dataclass(slots=True)
class SimStats:
    """What the simulated billing system saw (the engine's side is read from the store)."""

    invoices: int = 0
    failed_invoices: int = 0
    billed_amounts: dict[str, int] = field(default_factory=dict)
    card_updates: int = 0
    cancellations: int = 0
    paid_out_of_band: int = 0
    churned: int = 0
    ticks: int = 0
    engine: TickReport = field(default_factory=TickReport)
    messages: DispatchReport = field(default_factory=DispatchReport)
    start: datetime | None = None
    end: datetime | None = None


def _add_months(anchor: datetime, months: int) -> datetime:
    year, month = divmod(anchor.month - 1 + months, 12)
    return anchor.replace(year=anchor.year + year, month=month + 1)


def _pick(rng: random.Random, table: tuple[tuple[object, float], ...]) -> object:
    return rng.choices([t[0] for t in table], weights=[t[1] for t in table])[0]


class ObservedGateway:
    """The billing system's view of its processor: passes every call through and
    notes which invoices got paid and which subscriptions were ended."""

    def __init__(self, inner: PaymentGateway) -> None:
        self.inner = inner
        self.name = inner.name
        self.paid: set[str] = set()
        self.ended: set[str] = set()

    def charge(self, request: ChargeRequest) -> ChargeResult:
        result = self.inner.charge(request)
        if result.status is ChargeStatus.SUCCEEDED:
            self.paid.add(request.invoice_id)
        return result

    def attempt_status(self, idempotency_key: str) -> ChargeResult:
        return self.inner.attempt_status(idempotency_key)

    def cancel_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        self.inner.cancel_subscription(subscription_id, at=at, idempotency_key=idempotency_key)
        self.ended.add(subscription_id)

    def pause_subscription(self, subscription_id: str, *, at: datetime, idempotency_key: str) -> None:
        self.inner.pause_subscription(subscription_id, at=at, idempotency_key=idempotency_key)
        self.ended.add(subscription_id)

    def mark_unpaid(self, invoice_id: str, *, at: datetime, idempotency_key: str) -> None:
        self.inner.mark_unpaid(invoice_id, at=at, idempotency_key=idempotency_key)
        self.ended.add(invoice_id)


class Business:
    """N subscribers over D days, seeded."""

    def __init__(
        self,
        engine: Engine,
        gateway: ObservedGateway,
        *,
        customers: int,
        days: int,
        seed: int,
        start: datetime,
        resolution: timedelta = timedelta(hours=1),
        behaviour: Behaviour | None = None,
        messenger: Messenger | None = None,
    ) -> None:
        if customers < 1:
            raise ValueError("customers: must be at least 1")
        if days < 1:
            raise ValueError("days: must be at least 1")
        if start.tzinfo is None:
            raise ValueError("start: must be timezone-aware")
        self.engine = engine
        self.gateway = gateway
        self.messenger = messenger
        self.pending: list[Command] = []
        self.days = days
        self.start = start
        self.end = start + timedelta(days=days)
        self.resolution = resolution
        self.behaviour = behaviour or Behaviour()
        self.rng = random.Random(seed)
        self.stats = SimStats(start=start, end=self.end)
        self.subs: list[_Sub] = []
        self.renewals: list[tuple[datetime, int]] = []
        self.actions: list[tuple[datetime, int, str, int]] = []
        self.dunning: dict[str, int] = {}
        self._seq = 0
        self._populate(customers)
        if messenger is not None:
            self._introduce()

    # ------------------------------------------------------------ population
    def _populate(self, n: int) -> None:
        rng, start = self.rng, self.start
        weights = [m[4] for m in MARKETS]
        for i in range(n):
            country, tz, currency, locale, _, basic, pro, annual = rng.choices(MARKETS, weights)[0]
            since = start - timedelta(days=rng.randint(1, 3 * 365), minutes=rng.randint(0, 1439))
            customer = Customer(
                id=f"cus_{i:06d}",
                email=f"customer{i}@example.com",
                locale=locale,
                timezone=tz,
                country=country,
                name=f"Customer {i}",
                phone=_phone(country, rng) if rng.random() < 0.6 else None,
                created_at=since,
            )
            yearly = rng.random() < self.behaviour.annual_share
            if yearly:
                plan = Plan(
                    f"pro-annual-{currency.lower()}", "Pro (annual)", Interval.YEAR, Money(annual, currency)
                )
            elif rng.random() < 0.6:
                plan = Plan(f"basic-{currency.lower()}", "Basic", Interval.MONTH, Money(basic, currency))
            else:
                plan = Plan(f"pro-{currency.lower()}", "Pro", Interval.MONTH, Money(pro, currency))
            # Day of month kept <= 28 so every month has the anniversary.
            anchor = since.replace(day=min(since.day, 28))
            sub = Subscription(f"sub_{i:06d}", customer.id, plan, SubscriptionStatus.ACTIVE, since)
            method = self._new_method(i, customer.id, 1)
            record = _Sub(i, customer, plan, sub, method, _card(method), anchor)
            record.period = self._first_period(record)
            self.subs.append(record)
            heapq.heappush(self.renewals, (self._due(record), i))

    def _subscription_updated(self, sub: _Sub, renews_at: datetime, at: datetime) -> SubscriptionUpdated:
        self._seq += 1
        subscription = replace(sub.subscription, renews_at=renews_at)
        return SubscriptionUpdated(
            f"evt_sub_{sub.index:06d}_{self._seq}", at, sub.customer, subscription, sub.method
        )

    def _introduce(self) -> None:
        """Tell Recobra about every subscription, card and consent before anything fails,
        as a billing system's webhooks would: pre-dunning reminders are planned from it."""
        rng = self.rng
        batch: list[Command] = []
        for sub in self.subs:
            at = self.start
            batch.append(self._subscription_updated(sub, self._due(sub), at))
            sms, voice = rng.random() < 0.4, rng.random() < 0.1
            opt_in = rng.random() < 0.2
            if (sub.customer.phone and (sms or voice)) or opt_in:
                batch.append(
                    ContactPreferencesChanged(
                        f"evt_prefs_{sub.index:06d}",
                        at,
                        sub.customer.id,
                        sms_consent=sms,
                        voice_consent=voice,
                        win_back_opt_in=opt_in,
                    )
                )
            if rng.random() < 0.3:
                endpoint = f"https://push.example.com/send/{sub.index:06d}"
                subscription = json.dumps({"endpoint": endpoint, "keys": {"p256dh": "sim", "auth": "sim"}})
                batch.append(
                    PushSubscribed(f"evt_push_{sub.index:06d}", at, sub.customer.id, endpoint, subscription)
                )
            if len(batch) >= 2000:
                self.engine.handle_many(batch)
                batch = []
        if batch:
            self.engine.handle_many(batch)

    def _new_method(self, i: int, customer_id: str, n: int) -> PaymentMethod:
        rng = self.rng
        brand = str(_pick(rng, BRANDS))
        funding = _pick(rng, FUNDING)
        assert isinstance(funding, Funding)
        exp = _add_months(self.start, rng.randint(1, 48))
        return PaymentMethod(
            id=f"pm_{i:06d}_{n}",
            customer_id=customer_id,
            gateway_token=f"tok_sim_{i:06d}_{n}",
            brand=brand,
            last4=f"{rng.randint(0, 9999):04d}",
            exp_month=exp.month,
            exp_year=exp.year,
            funding=funding,
        )

    def _due(self, sub: _Sub) -> datetime:
        months = sub.period * (12 if sub.plan.interval is Interval.YEAR else 1)
        return _add_months(sub.anchor, months)

    def _first_period(self, sub: _Sub) -> int:
        """The first renewal period due at or after the simulation's start."""
        step = 12 if sub.plan.interval is Interval.YEAR else 1
        months = (self.start.year - sub.anchor.year) * 12 + self.start.month - sub.anchor.month
        period = max(1, months // step)
        while period > 1 and self._due_for(sub, period - 1) >= self.start:
            period -= 1
        while self._due_for(sub, period) < self.start:
            period += 1
        return period

    def _due_for(self, sub: _Sub, period: int) -> datetime:
        months = period * (12 if sub.plan.interval is Interval.YEAR else 1)
        return _add_months(sub.anchor, months)

    # ------------------------------------------------------------ running
    def run(self, progress: Callable[[float], None] | None = None) -> SimStats:
        """Run to the end; ``progress`` gets the fraction of simulated time elapsed."""
        now = self.start
        total = (self.end - self.start).total_seconds()
        while now < self.end:
            candidates = [self.end]
            if self.renewals:
                candidates.append(self.renewals[0][0])
            if self.actions:
                candidates.append(self.actions[0][0])
            due = self.engine.store.next_due_at()
            if due is not None:
                candidates.append(due)
            message_due = None
            if self.messenger is not None:
                message_due = self.engine.store.next_message_due_at()
                if message_due is not None:
                    candidates.append(message_due)
            now = min(max(min(candidates), now + self.resolution), self.end)
            self.step(now, engine_due=due, message_due=message_due)
            if progress:
                progress((now - self.start).total_seconds() / total)
        return self.stats

    def step(
        self, now: datetime, engine_due: datetime | None = None, message_due: datetime | None = None
    ) -> None:
        """Everything due at ``now``: renewals, customers' actions, the engine's tick.

        ``engine_due`` is the store's earliest due time if the caller just read it.
        """
        self._sync()
        commands: list[Command] = self.pending
        self.pending = []
        while self.renewals and self.renewals[0][0] <= now:
            due, i = heapq.heappop(self.renewals)
            failed = self._bill(self.subs[i], due)
            if failed is not None:
                commands.append(failed)
        while self.actions and self.actions[0][0] <= now:
            at, _, kind, i = heapq.heappop(self.actions)
            command = self._act(self.subs[i], kind, at)
            if command is not None:
                commands.append(command)
        if commands:
            self.engine.handle_many(commands)
            engine_due = self.engine.store.next_due_at()
        elif engine_due is None:
            engine_due = self.engine.store.next_due_at()
        if engine_due is not None and engine_due <= now:
            self.stats.engine.add(self.engine.tick(now))
            self.stats.ticks += 1
        if self.messenger is not None:
            # Events and ticks queue messages of their own (first notices, thanks ...).
            if commands or (engine_due is not None and engine_due <= now) or message_due is None:
                message_due = self.engine.store.next_message_due_at()
            if message_due is not None and message_due <= now:
                self.stats.messages.add(self.messenger.dispatch(now))

    def _sync(self) -> None:
        """Learn from the processor which dunning subscriptions paid or were ended."""
        paid, ended = self.gateway.paid, self.gateway.ended
        for invoice_id in paid:
            i = self.dunning.get(invoice_id)
            if i is not None:
                self._resume(self.subs[i])
        for ref in ended:  # a subscription id (cancel, pause) or an invoice id (mark unpaid)
            sub = self._by_ref(ref)
            if sub is not None and sub.state == "dunning":
                del self.dunning[sub.invoice]
                sub.state = "churned"
                self.stats.churned += 1
        paid.clear()
        ended.clear()

    def _by_ref(self, ref: str) -> _Sub | None:
        if ref in self.dunning:
            return self.subs[self.dunning[ref]]
        if ref.startswith("sub_"):
            return self.subs[int(ref.removeprefix("sub_"))]
        return None

    def _resume(self, sub: _Sub) -> None:
        self.dunning.pop(sub.invoice, None)
        sub.state = "active"
        sub.period += 1
        due = self._due(sub)
        heapq.heappush(self.renewals, (due, sub.index))
        self._renewed(sub, due)

    def _renewed(self, sub: _Sub, next_due: datetime) -> None:
        """Annual plans tell Recobra their next renewal date (for renewal reminders)."""
        if self.messenger is not None and sub.plan.interval is Interval.YEAR:
            self._seq += 1
            self.pending.append(self._subscription_updated(sub, next_due, next_due - timedelta(days=365)))

    def _bill(self, sub: _Sub, due: datetime) -> PaymentFailed | None:
        if sub.state != "active":
            return None
        invoice_id = f"in_{sub.index:06d}_{sub.period}"
        amount = sub.plan.price
        stats = self.stats
        stats.invoices += 1
        stats.billed_amounts[amount.currency] = (
            stats.billed_amounts.get(amount.currency, 0) + amount.amount_minor
        )
        result = self.gateway.inner.charge(
            ChargeRequest(
                idempotency_key=f"billing:{invoice_id}",
                invoice_id=invoice_id,
                customer_id=sub.customer.id,
                subscription_id=sub.subscription.id,
                amount=amount,
                payment_method=sub.card,
                attempt_number=0,
                attempted_at=due,
                customer_country=sub.customer.country,
                customer_timezone=sub.customer.timezone,
            )
        )
        if result.status is ChargeStatus.SUCCEEDED:
            sub.period += 1
            next_due = self._due(sub)
            heapq.heappush(self.renewals, (next_due, sub.index))
            self._renewed(sub, next_due)
            return None
        stats.failed_invoices += 1
        sub.state, sub.invoice = "dunning", invoice_id
        self.dunning[invoice_id] = sub.index
        self._plan_customer(sub, due, result)
        return PaymentFailed(
            event_id=f"evt_failed_{invoice_id}",
            occurred_at=due,
            customer=sub.customer,
            invoice=Invoice(
                invoice_id, sub.customer.id, sub.subscription.id, amount, InvoiceStatus.OPEN, due
            ),
            payment_method=sub.method,
            subscription=sub.subscription,
            decline_code=result.decline_code,
            network_code=result.network_code,
            advice_code=result.advice_code,
            gateway_reference=result.gateway_reference,
        )

    def _plan_customer(self, sub: _Sub, at: datetime, result: ChargeResult) -> None:
        """Draw what this customer will do while the case is open."""
        rng, b = self.rng, self.behaviour
        category = classify(
            result.decline_code, network_code=result.network_code, advice_code=result.advice_code
        ).category
        roll = rng.random()
        p_update = b.update_card_dead if category in DEAD_CARD else b.update_card_soft
        if roll < p_update:
            self._schedule(at + timedelta(hours=rng.uniform(6, 14 * 24)), "update_card", sub.index)
        elif roll < p_update + b.cancel:
            self._schedule(at + timedelta(hours=rng.uniform(12, 20 * 24)), "cancel", sub.index)
        elif roll < p_update + b.cancel + b.pay_out_of_band:
            self._schedule(at + timedelta(hours=rng.uniform(24, 10 * 24)), "pay_oob", sub.index)

    def _schedule(self, at: datetime, kind: str, i: int) -> None:
        self._seq += 1
        heapq.heappush(self.actions, (at, self._seq, kind, i))

    def _act(self, sub: _Sub, kind: str, at: datetime) -> Command | None:
        if sub.state != "dunning":
            return None
        if kind == "update_card":
            sub.cards += 1
            sub.method = self._new_method(sub.index, sub.customer.id, sub.cards)
            sub.card = _card(sub.method)
            self.stats.card_updates += 1
            return PaymentMethodUpdated(f"evt_pm_{sub.method.id}", at, sub.method)
        if kind == "cancel":
            self.dunning.pop(sub.invoice, None)
            sub.state = "churned"
            self.stats.cancellations += 1
            return SubscriptionCanceled(
                f"evt_cancel_{sub.invoice}",
                at,
                sub.subscription.id,
                "customer canceled while the payment was failing",
            )
        self.stats.paid_out_of_band += 1
        self._resume(sub)
        return InvoicePaidOutOfBand(f"evt_oob_{sub.invoice}", at, sub.invoice, "bank transfer")


@lru_cache(maxsize=32)
def _example_mobile(country: str) -> str:
    number = phonenumbers.example_number_for_type(country, phonenumbers.PhoneNumberType.MOBILE)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) if number else ""


def _phone(country: str, rng: random.Random) -> str | None:
    """A plausible mobile number of the country (its example number, last digits varied)."""
    example = _example_mobile(country)
    return example[:-4] + f"{rng.randint(0, 9999):04d}" if example else None


def _card(method: PaymentMethod) -> CardRef:
    return CardRef(
        method.id,
        method.gateway_token,
        method.brand,
        method.last4,
        method.exp_month,
        method.exp_year,
        method.funding,
    )


DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
