"""The dunning engine: turns incoming events into cases and due cases into actions.

Every effect is made safe for crashes:

* a charge attempt is written (pending, with a deterministic idempotency key) and
  committed *before* the gateway is called; its outcome is written after. A worker
  that dies in between leaves the pending row and an expiring claim; the next
  worker to claim the case asks the gateway what became of that key and records
  it, re-sending the same key only when the gateway never received it;
* final actions carry their own idempotency key, so repeating one is harmless.

The engine never reads the wall clock: ``now`` is an argument.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TypeVar
from zoneinfo import ZoneInfo

from recobra.domain.case import (
    CaseStatus,
    DunningCase,
    EventKind,
    FinalAction,
    NextAction,
)
from recobra.domain.declines import Decline, DeclineCategory, classify
from recobra.domain.errors import IllegalTransition
from recobra.domain.leaving import REACTIVATABLE, ChangeKind, SubscriptionChange
from recobra.domain.messages import ChannelKind, MessageKind, OutboxEntry, message_key
from recobra.domain.model import (
    Attempt,
    AttemptStatus,
    AttemptTrigger,
    Funding,
    InvoiceStatus,
    SubscriptionStatus,
    idempotency_key,
    require_aware,
)
from recobra.domain.money import Money
from recobra.domain.network import (
    DEFAULT_NETWORK_RULES,
    CardNetwork,
    NetworkRules,
    PriorAttempt,
    check_retry,
)
from recobra.domain.policy import PolicySet, RetryPolicy, SegmentContext, Strategy
from recobra.domain.schedule import HolidayCalendar, RetryContext, fit_local_hours, plan_retry
from recobra.engine.campaigns import campaign_messages
from recobra.engine.commands import (
    Command,
    ContactPreferencesChanged,
    DiscountGranted,
    InvoicePaidOutOfBand,
    PaymentFailed,
    PaymentMethodUpdated,
    PaymentSucceeded,
    PlanChanged,
    PushSubscribed,
    SmsReceived,
    SubscriptionCanceled,
    SubscriptionPaused,
    SubscriptionReactivated,
    SubscriptionUpdated,
)
from recobra.ports import (
    CardRef,
    CaseBundle,
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    ConcurrentUpdate,
    GatewayError,
    PaymentGateway,
    PolicySource,
    Store,
    UnitOfWork,
)

log = logging.getLogger("recobra.engine")

FINAL_ACTION_RETRY = timedelta(hours=1)
CONCURRENCY_RETRIES = 3
# Carriers' standard opt-out and opt-in keywords (Twilio's list), with Spanish ones.
SMS_STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "PARAR", "BAJA", "CANCELAR", "ALTO"}
)
SMS_START_WORDS = frozenset({"START", "YES", "UNSTOP", "ALTA", "SI", "SÍ"})


@dataclass(frozen=True, slots=True)
class HandleResult:
    """What handling one event did."""

    event_id: str
    duplicate: bool = False
    case_ids: tuple[str, ...] = ()
    note: str = ""


T = TypeVar("T")


def _redo_on_conflict(work: Callable[[], T], *, what: str = "") -> T:
    """Run ``work`` (one transaction) again on fresh state when a worker changed its
    cases meanwhile (``ConcurrentUpdate``), up to ``CONCURRENCY_RETRIES`` times."""
    for attempt in range(1, CONCURRENCY_RETRIES + 1):
        try:
            return work()
        except ConcurrentUpdate:
            if attempt == CONCURRENCY_RETRIES:
                raise
            if what:
                log.info("%s changed meanwhile; redoing it", what)
    raise AssertionError("unreachable")  # pragma: no cover


class ReactivationOutcome(StrEnum):
    """How a customer's reactivation went."""

    ACTIVE = "active"
    """The subscription is active again (any unpaid invoice was collected)."""
    PAYMENT_DECLINED = "payment_declined"
    """The unpaid invoice was declined: the subscription stays as it was and its case
    waits for a new payment method."""
    NOT_NEEDED = "not_needed"
    """The subscription is neither canceled nor paused."""
    UNKNOWN = "unknown"
    """No such subscription."""
    DUPLICATE = "duplicate"
    """This reactivation was already handled (a repeated request)."""


@dataclass(frozen=True, slots=True)
class Reactivation:
    """What ``Engine.reactivate`` did."""

    outcome: ReactivationOutcome
    case_id: str | None = None
    """The case of the unpaid invoice, when there was one."""
    paid: Money | None = None
    """What was collected to come back."""


@dataclass(slots=True)
class TickReport:
    """What one ``tick`` did (counters for logs, the simulator and benchmarks)."""

    claimed: int = 0
    attempts: int = 0
    recovered: int = 0
    declined: int = 0
    unknown: int = 0
    reconciled: int = 0
    exhausted: int = 0
    reopened: int = 0
    final_actions: int = 0
    final_action_failures: int = 0
    network_adjustments: int = 0
    recovered_amounts: dict[str, int] = field(default_factory=dict)

    def add(self, other: TickReport) -> None:
        for name in self.__slots__:
            if name == "recovered_amounts":
                for cur, amount in other.recovered_amounts.items():
                    self.recovered_amounts[cur] = self.recovered_amounts.get(cur, 0) + amount
            else:
                setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(slots=True)
class _Batch:
    claimed: int
    work: list[_Work] = field(default_factory=list)
    finals: list[CaseBundle] = field(default_factory=list)


@dataclass(slots=True)
class _Work:
    bundle: CaseBundle
    attempt: Attempt
    resend: bool = False
    result: ChargeResult | None = None


class Engine:
    """Application service: ``handle`` events, ``tick`` due cases."""

    def __init__(
        self,
        store: Store,
        gateway: PaymentGateway,
        policies: PolicySet,
        holidays: HolidayCalendar,
        *,
        network_rules: NetworkRules = DEFAULT_NETWORK_RULES,
        batch_size: int = 500,
        lease: timedelta = timedelta(minutes=5),
        worker_id: str = "worker",
        policy_source: PolicySource | None = None,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.policies = policies
        # When given, the active policy set is taken from it at every batch and tick
        # (versions activated while the engine runs), and each case keeps the version
        # it opened under; without it ``policies`` is fixed.
        self.policy_source = policy_source
        self.holidays = holidays
        self.network_rules = network_rules
        self.batch_size = batch_size
        self.lease = lease
        self.worker_id = worker_id

    # ------------------------------------------------------------------ events

    def handle(self, command: Command) -> HandleResult:
        """Apply one incoming event in one transaction; immediate retries run right after."""
        return self.handle_many([command])[0]

    def handle_many(self, commands: Sequence[Command]) -> list[HandleResult]:
        """Apply events in one transaction (all or nothing), then run immediate retries.

        Consecutive ``PaymentFailed`` events are written in bulk; the others one by
        one, in order. An event id seen before (or twice in the batch) is a duplicate.
        If a worker changed one of the cases meanwhile, the whole batch is redone on
        the fresh state (a few times at most).
        """
        results = self.apply_events(commands)
        self.run_immediate_retries(commands, results)
        return results

    def apply_events(self, commands: Sequence[Command]) -> list[HandleResult]:
        """``handle_many`` without the immediate retries: the events are committed (all
        or nothing) when this returns. Callers that commit several batches together
        run ``run_immediate_retries`` for each afterwards, outside the shared transaction."""
        self._refresh_policies()
        return _redo_on_conflict(lambda: self._handle_once(commands), what="the batch's cases")

    def rehearse(self, commands: Sequence[Command]) -> list[HandleResult]:
        """Apply ``commands`` as ``apply_events`` does, then roll the transaction back:
        nothing is kept. A server process rehearses a made-up event before it takes
        requests, so that its first real ones do not pay for what is done only once:
        code run for the first time, statements compiled, the database session's caches
        filled (its first failed payment took 40 times as long as the next ones)."""
        self._refresh_policies()
        return self._handle_once(commands, commit=False)

    def run_immediate_retries(self, commands: Sequence[Command], results: Sequence[HandleResult]) -> None:
        """Run the immediate retries that applied events call for (a new default card
        retries its customer's cases at once); ``results`` are ``apply_events``'s."""
        immediate: list[str] = []
        latest: datetime | None = None
        for command, result in zip(commands, results, strict=True):
            if isinstance(command, PaymentMethodUpdated) and not result.duplicate:
                immediate.extend(result.case_ids)
                latest = max(latest or command.occurred_at, command.occurred_at)
        if immediate and latest is not None:
            self.process(immediate, latest)

    def _handle_once(self, commands: Sequence[Command], *, commit: bool = True) -> list[HandleResult]:
        results: list[HandleResult] = []
        with self.store.unit_of_work() as uow:
            fresh = uow.remember_events([(c.event_id, type(c).__name__, c.occurred_at) for c in commands])
            run: list[PaymentFailed] = []
            for command in commands:
                if command.event_id not in fresh:
                    results.extend(self._payments_failed(uow, run))
                    run = []
                    results.append(HandleResult(command.event_id, duplicate=True))
                    continue
                fresh.discard(command.event_id)
                if isinstance(command, PaymentFailed):
                    run.append(command)
                    continue
                results.extend(self._payments_failed(uow, run))
                run = []
                results.append(self._apply(uow, command))
            results.extend(self._payments_failed(uow, run))
            if commit:
                uow.commit()
            else:
                uow.rehearse_commit()
        return results

    def _apply(self, uow: UnitOfWork, command: Command) -> HandleResult:
        match command:
            case PaymentFailed():
                return self._payments_failed(uow, [command])[0]
            case PaymentSucceeded():
                return self._close_invoice(
                    uow,
                    command.event_id,
                    command.invoice_id,
                    command.occurred_at,
                    CaseStatus.RECOVERED,
                    "payment succeeded at the gateway",
                )
            case InvoicePaidOutOfBand():
                note = f": {command.note}" if command.note else ""
                return self._close_invoice(
                    uow,
                    command.event_id,
                    command.invoice_id,
                    command.occurred_at,
                    CaseStatus.PAID_OUT_OF_BAND,
                    f"invoice paid out of band{note}",
                )
            case PaymentMethodUpdated():
                return self._payment_method_updated(uow, command)
            case SubscriptionCanceled():
                return self._subscription_canceled(uow, command)
            case SubscriptionUpdated():
                return self._subscription_updated(uow, command)
            case ContactPreferencesChanged():
                return self._preferences_changed(uow, command)
            case SmsReceived():
                return self._sms_received(uow, command)
            case SubscriptionPaused():
                return self._subscription_paused(uow, command)
            case DiscountGranted():
                return self._discount_granted(uow, command)
            case PlanChanged():
                return self._plan_changed(uow, command)
            case PushSubscribed():
                if not uow.known_customers([command.customer_id]):
                    return HandleResult(command.event_id, note="unknown customer: ignored")
                uow.add_push_subscription(
                    command.customer_id, command.endpoint, command.subscription, command.occurred_at
                )
                return HandleResult(command.event_id)

    def _subscription_updated(self, uow: UnitOfWork, cmd: SubscriptionUpdated) -> HandleResult:
        uow.upsert_customers([cmd.customer])
        if cmd.payment_method is not None:
            uow.upsert_payment_methods([cmd.payment_method])
        uow.upsert_subscriptions([cmd.subscription], update_status=True)
        if cmd.subscription.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE):
            # A customer who canceled and came back hears from us again.
            uow.set_preferences(cmd.customer.id, cmd.occurred_at, suppressed=False)
        entries = campaign_messages(
            self.policies.campaigns,
            cmd.customer,
            cmd.subscription,
            cmd.payment_method,
            now=cmd.occurred_at,
        )
        uow.add_messages(entries)
        return HandleResult(cmd.event_id, note=f"{len(entries)} reminder(s) planned")

    def _preferences_changed(self, uow: UnitOfWork, cmd: ContactPreferencesChanged) -> HandleResult:
        if not uow.known_customers([cmd.customer_id]):
            return HandleResult(cmd.event_id, note="unknown customer: ignored")
        values = {
            name: value
            for name, value in (
                ("sms_consent", cmd.sms_consent),
                ("voice_consent", cmd.voice_consent),
                ("unsubscribed", cmd.unsubscribed),
                ("win_back_opt_in", cmd.win_back_opt_in),
            )
            if value is not None
        }
        uow.set_preferences(cmd.customer_id, cmd.occurred_at, **values)
        return HandleResult(cmd.event_id)

    def _sms_received(self, uow: UnitOfWork, cmd: SmsReceived) -> HandleResult:
        word = cmd.body.strip().split(maxsplit=1)[0].upper() if cmd.body.strip() else ""
        stop, start = word in SMS_STOP_WORDS, word in SMS_START_WORDS
        if not (stop or start):
            return HandleResult(cmd.event_id, note="not a STOP or START reply")
        customers = uow.customers_with_phone(cmd.phone)
        for customer_id in customers:
            uow.set_sms_stopped(customer_id, stop, cmd.occurred_at)
        return HandleResult(
            cmd.event_id, note=f"{'STOP' if stop else 'START'} for {len(customers)} customer(s)"
        )

    def _payments_failed(self, uow: UnitOfWork, cmds: Sequence[PaymentFailed]) -> list[HandleResult]:
        """Open a case per failed invoice, in bulk; a failure on an invoice that already
        has a case is kept in the card's history instead."""
        if not cmds:
            return []
        uow.upsert_customers(list({c.customer.id: c.customer for c in cmds}.values()))
        uow.upsert_payment_methods(list({c.payment_method.id: c.payment_method for c in cmds}.values()))
        uow.upsert_subscriptions(
            list({c.subscription.id: c.subscription for c in cmds if c.subscription}.values())
        )
        uow.upsert_invoices(list({c.invoice.id: c.invoice for c in cmds}.values()))
        known = uow.cases_for_invoices([c.invoice.id for c in cmds])
        results: list[HandleResult] = []
        new_cases: list[DunningCase] = []
        updated: dict[str, DunningCase] = {}
        attempts: list[Attempt] = []
        past_due: list[tuple[str, SubscriptionStatus]] = []
        for cmd in cmds:
            at = cmd.occurred_at
            decline = classify(cmd.decline_code, network_code=cmd.network_code, advice_code=cmd.advice_code)
            existing = known.get(cmd.invoice.id)
            if existing is not None:
                # A charge outside Recobra failed again (say, the billing system's own
                # retry): keep it in the card's history; never a second case.
                if existing.is_active:
                    existing.last_decline = decline
                    existing.record(
                        at,
                        EventKind.ATTEMPT_FAILED,
                        f"charge outside Recobra declined: {_words(decline)}",
                        code=decline.code,
                    )
                    if existing not in new_cases:
                        updated[existing.id] = existing
                attempts.append(self._billing_attempt(existing.id, cmd, decline, number=-1))
                results.append(
                    HandleResult(cmd.event_id, case_ids=(existing.id,), note="case already exists")
                )
                continue
            case = self._open_case(cmd, decline)
            known[cmd.invoice.id] = case
            new_cases.append(case)
            attempts.append(self._billing_attempt(case.id, cmd, decline, number=0))
            if cmd.subscription is not None:
                past_due.append((cmd.subscription.id, SubscriptionStatus.PAST_DUE))
            results.append(HandleResult(cmd.event_id, case_ids=(case.id,)))
        uow.add_cases(new_cases)
        uow.add_messages([m for case in new_cases for m in self._dunning_messages(case)])
        self._save(uow, list(updated.values()), release_claims=False)
        uow.add_attempts(attempts)
        uow.set_subscription_statuses(past_due)
        return results

    def _open_case(self, cmd: PaymentFailed, decline: Decline) -> DunningCase:
        at, sub = cmd.occurred_at, cmd.subscription
        tenure_from = sub.started_at if sub else (cmd.customer.created_at or at)
        segment, policy = self.policies.choose(
            SegmentContext(
                plan_id=sub.plan.id if sub else "",
                interval=sub.plan.interval if sub else None,
                amount_minor=cmd.invoice.amount.amount_minor,
                currency=cmd.invoice.amount.currency,
                country=cmd.customer.country,
                tenure_days=max((at - tenure_from).days, 0),
                funding=cmd.payment_method.funding,
            )
        )
        case = DunningCase(
            id=f"case_{cmd.invoice.id}",
            invoice_id=cmd.invoice.id,
            customer_id=cmd.customer.id,
            subscription_id=sub.id if sub else None,
            amount=cmd.invoice.amount,
            opened_at=at,
            policy_name=policy.name,
            policy_version=self.policies.version,
            segment=segment,
            payment_method_id=cmd.payment_method.id,
            last_decline=decline,
            last_attempt_at=at,
        )
        case.record(
            at,
            EventKind.OPENED,
            f"payment failed: {_words(decline)}; segment {segment!r} uses policy "
            f"{policy.name!r} v{self.policies.version}",
            code=decline.code,
            network_code=decline.network_code,
            advice_code=decline.advice_code,
            category=str(decline.category),
        )
        self._decide_next(
            case,
            policy,
            cmd.customer.timezone,
            cmd.customer.country,
            cmd.payment_method.brand,
            cmd.payment_method.funding,
            (PriorAttempt(at, decline),),
            at,
        )
        return case

    @staticmethod
    def _billing_attempt(case_id: str, cmd: PaymentFailed, decline: Decline, number: int) -> Attempt:
        key = cmd.gateway_reference or f"billing:{cmd.event_id}"
        return Attempt(
            case_id,
            number,
            cmd.payment_method.id,
            key,
            cmd.occurred_at,
            AttemptStatus.FAILED,
            AttemptTrigger.BILLING,
            decline,
            cmd.gateway_reference,
        )

    def _close_invoice(
        self, uow: UnitOfWork, event_id: str, invoice_id: str, at: datetime, status: CaseStatus, reason: str
    ) -> HandleResult:
        uow.set_invoice_status(invoice_id, InvoiceStatus.PAID, at)
        case = uow.cases_for_invoices([invoice_id]).get(invoice_id)
        if case is None or not case.is_active:
            return HandleResult(event_id, note="no active case for this invoice")
        case.transition_to(status, at=at, reason=reason)
        if case.subscription_id:
            uow.set_subscription_statuses([(case.subscription_id, SubscriptionStatus.ACTIVE)])
        self._save(uow, [case], release_claims=True)
        return HandleResult(event_id, case_ids=(case.id,))

    def _payment_method_updated(self, uow: UnitOfWork, cmd: PaymentMethodUpdated) -> HandleResult:
        method = cmd.payment_method
        if not uow.known_customers([method.customer_id]):
            # Recobra learns of customers when their payment first fails; a card for
            # anyone else concerns no case (and must not break the batch it came in).
            return HandleResult(cmd.event_id, note="unknown customer: no case to act on")
        uow.upsert_payment_methods([method])
        if not method.is_default:
            return HandleResult(cmd.event_id, note="not the default method: no retry")
        cases = uow.active_cases(customer_id=method.customer_id)
        for case in cases:
            case.payment_method_id = method.id
            case.record(
                cmd.occurred_at,
                EventKind.PAYMENT_METHOD_UPDATED,
                f"new payment method {method.brand} ****{method.last4}: retry now, "
                "outside the attempt budget",
                payment_method_id=method.id,
            )
            case.schedule(NextAction.RETRY_NOW, cmd.occurred_at, "new payment method: immediate retry")
        self._save(uow, cases, release_claims=False)
        return HandleResult(cmd.event_id, case_ids=tuple(c.id for c in cases))

    def _subscription_canceled(self, uow: UnitOfWork, cmd: SubscriptionCanceled) -> HandleResult:
        customer_id = uow.customer_of_subscription(cmd.subscription_id)
        if customer_id is None:
            return HandleResult(cmd.event_id, note="unknown subscription: ignored")
        uow.set_subscription_statuses([(cmd.subscription_id, SubscriptionStatus.CANCELED)])
        uow.update_subscription(cmd.subscription_id, canceled_at=cmd.occurred_at, paused_until=None)
        cases = uow.active_cases(subscription_id=cmd.subscription_id)
        why = f": {cmd.reason}" if cmd.reason else ""
        uow.set_suppressed(customer_id, cmd.occurred_at)
        # The Basecamp-style confirmation (and a later win-back, if opted in) follows
        # every cancellation, whether or not a payment was failing.
        uow.add_messages(
            self._cancellation_messages(
                customer_id, cmd.subscription_id, cases, cmd.occurred_at, surveyed=cmd.surveyed
            )
        )
        uow.add_subscription_changes(
            [
                SubscriptionChange(
                    cmd.subscription_id,
                    customer_id,
                    cmd.occurred_at,
                    ChangeKind.CANCELED,
                    f"canceled{why}",
                    {"open_cases_stopped": [c.id for c in cases]},
                )
            ]
        )
        for case in cases:
            case.transition_to(
                CaseStatus.CANCELED, at=cmd.occurred_at, reason=f"customer canceled the subscription{why}"
            )
            uow.set_invoice_status(case.invoice_id, InvoiceStatus.VOID, cmd.occurred_at)
        self._save(uow, cases, release_claims=True)
        return HandleResult(cmd.event_id, case_ids=tuple(c.id for c in cases))

    # ------------------------------------------------------------------ leaving and coming back

    def customer_change(self, command: Command) -> HandleResult:
        """A change the customer asked for on a hosted page. Cancellations and pauses go
        to the gateway first (idempotent on the event id, so a repeat is harmless); a
        ``GatewayError`` leaves everything as it was. Then the change is handled like
        any event: a repeated event id is a duplicate and changes nothing."""
        key = f"recobra:{command.event_id}"
        if isinstance(command, SubscriptionCanceled):
            self.gateway.cancel_subscription(
                command.subscription_id, at=command.occurred_at, idempotency_key=key
            )
        elif isinstance(command, SubscriptionPaused):
            self.gateway.pause_subscription(
                command.subscription_id, at=command.occurred_at, idempotency_key=key
            )
        return self.handle(command)

    def _subscription_paused(self, uow: UnitOfWork, cmd: SubscriptionPaused) -> HandleResult:
        customer_id = uow.customer_of_subscription(cmd.subscription_id)
        if customer_id is None:
            return HandleResult(cmd.event_id, note="unknown subscription: ignored")
        uow.set_subscription_statuses([(cmd.subscription_id, SubscriptionStatus.PAUSED)])
        uow.update_subscription(cmd.subscription_id, paused_until=cmd.until)
        why = f": {cmd.reason}" if cmd.reason else ""
        uow.add_subscription_changes(
            [
                SubscriptionChange(
                    cmd.subscription_id,
                    customer_id,
                    cmd.occurred_at,
                    ChangeKind.PAUSED,
                    f"paused until {cmd.until:%Y-%m-%d} UTC{why}",
                    {"resumes_at": cmd.until.isoformat()},
                )
            ]
        )
        return HandleResult(cmd.event_id)

    def _discount_granted(self, uow: UnitOfWork, cmd: DiscountGranted) -> HandleResult:
        customer_id = uow.customer_of_subscription(cmd.subscription_id)
        if customer_id is None:
            return HandleResult(cmd.event_id, note="unknown subscription: ignored")
        uow.update_subscription(cmd.subscription_id, discount_percent=cmd.percent, discount_cycles=cmd.cycles)
        why = f": {cmd.reason}" if cmd.reason else ""
        uow.add_subscription_changes(
            [
                SubscriptionChange(
                    cmd.subscription_id,
                    customer_id,
                    cmd.occurred_at,
                    ChangeKind.DISCOUNTED,
                    f"{cmd.percent}% off the next {cmd.cycles} invoice(s){why}",
                    {"percent_off": cmd.percent, "invoices": cmd.cycles},
                )
            ]
        )
        return HandleResult(cmd.event_id)

    def _plan_changed(self, uow: UnitOfWork, cmd: PlanChanged) -> HandleResult:
        standing = uow.standing(cmd.subscription_id)
        if standing is None:
            return HandleResult(cmd.event_id, note="unknown subscription: ignored")
        if cmd.plan_id not in uow.plans([cmd.plan_id]):
            return HandleResult(cmd.event_id, note=f"unknown plan {cmd.plan_id!r}: ignored")
        before = standing.subscription.plan.id
        uow.update_subscription(cmd.subscription_id, plan_id=cmd.plan_id)
        why = f": {cmd.reason}" if cmd.reason else ""
        uow.add_subscription_changes(
            [
                SubscriptionChange(
                    cmd.subscription_id,
                    standing.subscription.customer_id,
                    cmd.occurred_at,
                    ChangeKind.PLAN_CHANGED,
                    f"plan changed from {before!r} to {cmd.plan_id!r}{why}",
                    {"from_plan": before, "to_plan": cmd.plan_id},
                )
            ]
        )
        return HandleResult(cmd.event_id)

    def reactivate(self, cmd: SubscriptionReactivated) -> Reactivation:
        """A canceled or paused subscription comes back.

        Without an invoice still owed it is active again at once. When a final action
        left an invoice unpaid, its case is reopened and the invoice retried at once with
        the customer's default payment method: paid, the subscription is active again;
        declined, the case waits (exhausted) ``grace_days`` for a new payment method
        before its final action runs again, and the subscription stays as it was.
        A repeated event id changes nothing."""
        now = cmd.occurred_at

        def reopen() -> Reactivation | DunningCase:
            """Reactivated at once, or the unpaid invoice's case reopened for a retry."""
            with self.store.unit_of_work() as uow:
                if not uow.remember_events([(cmd.event_id, type(cmd).__name__, now)]):
                    return Reactivation(ReactivationOutcome.DUPLICATE)
                standing = uow.standing(cmd.subscription_id)
                if standing is None:
                    return Reactivation(ReactivationOutcome.UNKNOWN)
                if standing.subscription.status not in REACTIVATABLE:
                    return Reactivation(ReactivationOutcome.NOT_NEEDED)
                case = uow.unpaid_case(cmd.subscription_id)
                if case is None:
                    self._activate(uow, standing.subscription.customer_id, cmd, None)
                    uow.commit()
                    return Reactivation(ReactivationOutcome.ACTIVE)
                method = uow.default_payment_method(case.customer_id)
                if method is not None:
                    case.payment_method_id = method.id
                case.transition_to(
                    CaseStatus.EXHAUSTED,
                    at=now,
                    reason="the customer came back: the unpaid invoice is retried now",
                )
                case.schedule(NextAction.RETRY_NOW, now, "customer came back: immediate retry")
                uow.set_invoice_status(case.invoice_id, InvoiceStatus.OPEN, now)
                self._save(uow, [case], release_claims=True)
                uow.commit()
                return case

        reopened = _redo_on_conflict(reopen)
        if isinstance(reopened, Reactivation):
            return reopened
        case = reopened
        self.process([case.id], now)

        def settle() -> Reactivation:
            """The retry's outcome: active again, or the grace period given back."""
            with self.store.unit_of_work() as uow:
                after = uow.load_bundles([case.id], now)[0].case
                if after.status is CaseStatus.RECOVERED:
                    self._activate(uow, after.customer_id, cmd, after)
                    uow.commit()
                    return Reactivation(ReactivationOutcome.ACTIVE, case_id=case.id, paid=case.amount)
                # Declined, so the engine put the final action back at "now" (the
                # window is long over): give the customer the grace period again.
                # A retry still pending (another worker claimed it) is left alone.
                if after.is_active and after.next_action is NextAction.FINAL_ACTION:
                    policy = self._policy(after)
                    final_at = now + timedelta(days=max(policy.grace_days, 1))
                    reason = (
                        f"{policy.final_action} on {final_at:%Y-%m-%d %H:%M} UTC unless the payment "
                        "method is updated: the customer came back but the retry was declined"
                    )
                    after.schedule(NextAction.FINAL_ACTION, final_at, reason)
                    after.record(now, EventKind.FINAL_ACTION_SCHEDULED, reason, final_at=final_at.isoformat())
                    self._save(uow, [after], release_claims=True)
                    uow.commit()
                return Reactivation(ReactivationOutcome.PAYMENT_DECLINED, case_id=case.id, paid=None)

        return _redo_on_conflict(settle)

    @staticmethod
    def _activate(
        uow: UnitOfWork, customer_id: str, cmd: SubscriptionReactivated, paid: DunningCase | None
    ) -> None:
        uow.set_subscription_statuses([(cmd.subscription_id, SubscriptionStatus.ACTIVE)])
        uow.update_subscription(cmd.subscription_id, canceled_at=None, paused_until=None)
        # A customer who canceled and came back hears from us again.
        uow.set_preferences(customer_id, cmd.occurred_at, suppressed=False)
        why = f": {cmd.reason}" if cmd.reason else ""
        data: dict[str, object] = {}
        if paid is not None:
            data = {
                "paid_invoice": paid.invoice_id,
                "amount_minor": paid.amount.amount_minor,
                "currency": paid.amount.currency,
            }
        uow.add_subscription_changes(
            [
                SubscriptionChange(
                    cmd.subscription_id,
                    customer_id,
                    cmd.occurred_at,
                    ChangeKind.REACTIVATED,
                    f"the customer came back{why}",
                    data,
                )
            ]
        )

    def write_off(self, case_id: str, now: datetime, *, reason: str, operator: str = "") -> DunningCase:
        """An operator gives up on a case: no more retries or final action; the invoice
        is marked uncollectible. Raises ``LookupError`` for an unknown case and
        ``IllegalTransition`` for a closed one."""
        now = require_aware("now", now).astimezone(UTC)
        if not reason.strip():
            raise ValueError("reason: say why the case is written off")

        def write_off_once() -> DunningCase:
            with self.store.unit_of_work() as uow:
                cases = uow.load_bundles([case_id], now)
                if not cases:
                    raise LookupError(f"no case {case_id!r}")
                case = cases[0].case
                who = f" by {operator}" if operator else ""
                case.transition_to(CaseStatus.WRITTEN_OFF, at=now, reason=f"written off{who}: {reason}")
                uow.set_invoice_status(case.invoice_id, InvoiceStatus.UNCOLLECTIBLE, now)
                self._save(uow, [case], release_claims=True)
                uow.commit()
                return case

        return _redo_on_conflict(write_off_once)

    # ------------------------------------------------------------------ operators

    def retry_now(self, case_id: str, now: datetime, *, operator: str) -> DunningCase:
        """An operator asks for a charge at once, outside the attempt budget; the
        policy's timeline goes on after it (a paused case is resumed by it). Raises
        ``LookupError`` for an unknown case and ``IllegalTransition`` for a closed one."""

        def change(_uow: UnitOfWork, bundle: CaseBundle) -> None:
            case = bundle.case
            why = f"retry now requested by {operator}"
            case.record(now, EventKind.RETRY_REQUESTED, why, operator=operator)
            case.schedule(NextAction.OPERATOR_RETRY, now, f"retry requested by {operator}")

        now = require_aware("now", now).astimezone(UTC)
        self._operate(case_id, now, operator, change)
        self.process([case_id], now)
        return self._load_case(case_id, now)

    def pause_dunning(self, case_id: str, now: datetime, *, operator: str, reason: str = "") -> DunningCase:
        """Stop retries, dunning messages and the final action until ``resume_dunning``.
        ``IllegalTransition`` when the case is closed or already paused."""

        def change(_uow: UnitOfWork, bundle: CaseBundle) -> None:
            case = bundle.case
            if case.paused:
                raise IllegalTransition("case.next_action", f"{case.id}: dunning is already paused")
            why = f": {reason.strip()}" if reason.strip() else ""
            text = f"dunning paused by {operator}{why}; no retry, message or final action until resumed"
            case.record(
                now,
                EventKind.DUNNING_PAUSED,
                text,
                operator=operator,
                was=str(case.next_action) if case.next_action else None,
                was_at=case.next_action_at.isoformat() if case.next_action_at else None,
            )
            case.pause(f"paused by {operator}{why}")

        now = require_aware("now", now).astimezone(UTC)
        return self._operate(case_id, now, operator, change)

    def resume_dunning(self, case_id: str, now: datetime, *, operator: str) -> DunningCase:
        """Put a paused case back on its policy's timeline from ``now`` (an exhausted
        case back to waiting for its final action). ``IllegalTransition`` when the case
        is closed or not paused."""

        def change(_uow: UnitOfWork, bundle: CaseBundle) -> None:
            case = bundle.case
            if not case.paused:
                raise IllegalTransition("case.next_action", f"{case.id}: dunning is not paused")
            case.record(now, EventKind.DUNNING_RESUMED, f"dunning resumed by {operator}", operator=operator)
            policy = self._policy(case)
            if case.status is CaseStatus.EXHAUSTED:
                self._reschedule_final(case, policy, now)
                return
            self._decide_next(
                case,
                policy,
                bundle.customer.timezone,
                bundle.customer.country,
                bundle.payment_method.brand,
                bundle.payment_method.funding,
                bundle.card_history,
                now,
            )
            if case.next_action is NextAction.RETRY and case.next_action_at and case.next_action_at < now:
                reason = f"Retry now: its time ({case.next_action_at:%Y-%m-%d %H:%M} UTC) passed while paused"
                case.schedule(NextAction.RETRY, now, reason)
                case.record(now, EventKind.RETRY_SCHEDULED, reason, retry_at=now.isoformat())

        now = require_aware("now", now).astimezone(UTC)
        return self._operate(case_id, now, operator, change)

    def resend_link(self, case_id: str, now: datetime, *, operator: str) -> DunningCase:
        """Send the customer a payment reminder now, through the outbox, on the channels
        of the policy's first message (email when it has none); the message carries a
        fresh signed update-payment link, made when it is sent. It goes out even while
        dunning is paused (the operator asked for it); delivery rules (consent, quiet
        hours, caps) still apply."""

        def change(uow: UnitOfWork, bundle: CaseBundle) -> None:
            case = bundle.case
            policy = self._policy(case)
            channels = policy.messages[0].channels if policy.messages else (ChannelKind.EMAIL,)
            step = f"resend@{now:%Y%m%dT%H%M%S}"
            uow.add_messages(
                [
                    OutboxEntry(
                        key=message_key(case.id, step, channel),
                        customer_id=case.customer_id,
                        case_id=case.id,
                        kind=MessageKind.PAYMENT_REMINDER,
                        channel=channel,
                        step=step,
                        due_at=now,
                        context={"requested_by": operator},
                    )
                    for channel in channels
                ]
            )
            case.record(
                now,
                EventKind.LINK_RESENT,
                f"update-payment link sent again by {operator} ({', '.join(str(c) for c in channels)})",
                operator=operator,
                channels=[str(c) for c in channels],
            )

        now = require_aware("now", now).astimezone(UTC)
        return self._operate(case_id, now, operator, change)

    def _operate(
        self,
        case_id: str,
        now: datetime,
        operator: str,
        change: Callable[[UnitOfWork, CaseBundle], None],
    ) -> DunningCase:
        """Apply an operator's ``change`` to an active case in one transaction (redone
        on fresh state when a worker changed the case meanwhile)."""
        if not operator.strip():
            raise ValueError("operator: say who acts")

        def operate_once() -> DunningCase:
            with self.store.unit_of_work() as uow:
                bundles = uow.load_bundles([case_id], now)
                if not bundles:
                    raise LookupError(f"no case {case_id!r}")
                bundle = bundles[0]
                if not bundle.case.is_active:
                    raise IllegalTransition(
                        "case.status", f"{case_id}: the case is {bundle.case.status}; nothing to act on"
                    )
                change(uow, bundle)
                self._save(uow, [bundle.case], release_claims=False)
                uow.commit()
                return bundle.case

        return _redo_on_conflict(operate_once)

    def _load_case(self, case_id: str, now: datetime) -> DunningCase:
        with self.store.unit_of_work() as uow:
            bundles = uow.load_bundles([case_id], now)
        if not bundles:
            raise LookupError(f"no case {case_id!r}")
        return bundles[0].case

    # ------------------------------------------------------------------ messages

    def _save(self, uow: UnitOfWork, cases: Sequence[DunningCase], *, release_claims: bool) -> None:
        """Save cases, queueing the notifications their new events call for (same transaction)."""
        entries = [e for case in cases for e in self._notifications(case)]
        uow.save_cases(cases, release_claims=release_claims)
        uow.add_messages(entries)

    def _dunning_messages(self, case: DunningCase) -> list[OutboxEntry]:
        """The policy's message steps for a newly opened case, each on its channels."""
        policy = self._policy(case)
        entries = []
        for index, step in enumerate(policy.messages):
            due = case.opened_at + policy.message_offset(step)
            for channel in step.channels:
                entries.append(
                    OutboxEntry(
                        key=message_key(case.id, f"m{index}", channel),
                        customer_id=case.customer_id,
                        case_id=case.id,
                        kind=step.kind,
                        channel=channel,
                        step=f"m{index}",
                        due_at=due,
                        fallback=step.fallback,
                        fallback_after=step.fallback_after,
                    )
                )
        return entries

    def _cancellation_messages(
        self,
        customer_id: str,
        subscription_id: str,
        cases: Sequence[DunningCase],
        at: datetime,
        *,
        surveyed: bool = False,
    ) -> list[OutboxEntry]:
        context = {"for_subscription": subscription_id}
        if surveyed:
            context["surveyed"] = "yes"
        return [
            entry
            for kind in (MessageKind.SUBSCRIPTION_CANCELED, MessageKind.WIN_BACK)
            for entry in self._notify(
                kind,
                at,
                scope=f"sub:{subscription_id}",
                customer_id=customer_id,
                case_id=cases[0].id if cases else None,
                context=context,
            )
        ]

    def _notifications(self, case: DunningCase) -> list[OutboxEntry]:
        """Messages that this case's new (not yet saved) events trigger."""
        entries = []
        for event in case.events:
            if event.kind is EventKind.PAYMENT_METHOD_UPDATED:
                kind = MessageKind.PAYMENT_METHOD_UPDATED
            elif event.kind is EventKind.STATUS_CHANGED and event.to_status is CaseStatus.RECOVERED:
                kind = MessageKind.PAYMENT_RECOVERED
            else:
                continue
            entries.extend(
                self._notify(kind, event.at, scope=case.id, customer_id=case.customer_id, case_id=case.id)
            )
        return entries

    def _notify(
        self,
        kind: MessageKind,
        at: datetime,
        *,
        scope: str,
        customer_id: str,
        case_id: str | None,
        context: dict[str, str] | None = None,
    ) -> list[OutboxEntry]:
        """The policy's notification ``kind`` for something that happened ``at``, on each
        of its channels (none when the policy does not send that kind)."""
        rule = self.policies.notifications.get(kind)
        if rule is None:
            return []
        step = f"{kind}@{at:%Y%m%dT%H%M%S}"
        return [
            OutboxEntry(
                key=message_key(scope, step, channel),
                customer_id=customer_id,
                case_id=case_id,
                kind=kind,
                channel=channel,
                step=step,
                due_at=at + rule.delay,
                context=context or {},
            )
            for channel in rule.channels
        ]

    # ------------------------------------------------------------------ decisions

    def _refresh_policies(self) -> None:
        if self.policy_source is not None:
            self.policies = self.policy_source.active()

    def _policy(self, case: DunningCase) -> RetryPolicy:
        policies = self.policies
        if self.policy_source is not None and case.policy_version != policies.version:
            # A case follows the version it opened under, whatever was activated since.
            policies = self.policy_source.version(case.policy_version) or policies
        return policies.policies.get(case.policy_name) or policies.policies[policies.default_policy]

    def _decide_next(
        self,
        case: DunningCase,
        policy: RetryPolicy,
        timezone: str,
        country: str,
        brand: str,
        funding: Funding,
        history: Sequence[PriorAttempt],
        now: datetime,
    ) -> int:
        """Schedule the next policy retry or exhaust the case. Returns network adjustments made."""
        ctx = RetryContext(
            case_id=case.id,
            opened_at=case.opened_at,
            last_attempt_at=case.last_attempt_at,
            budget_used=case.budget_used,
            decline=case.last_decline,
            consecutive_processing_errors=case.errors_in_row,
            timezone=timezone,
            country=country,
            funding=funding,
        )
        plan = plan_retry(policy, ctx, self.holidays)
        at, reason, adjustments = plan.at, plan.reason, 0
        if at is not None:
            verdict = check_retry(CardNetwork.from_brand(brand), history, at, self.network_rules)
            if verdict.adjusted:
                adjustments = 1
                case.record(
                    now,
                    EventKind.NETWORK_RULE_ADJUSTED,
                    verdict.reason,
                    rule=verdict.rule,
                    proposed=at.isoformat(),
                    earliest=verdict.earliest.isoformat() if verdict.earliest else None,
                )
                log.info("network rule adjusted retry", extra={"case_id": case.id, "rule": verdict.rule})
            if not verdict.allowed or verdict.earliest is None:
                at, reason = None, f"card network forbids further retries: {verdict.reason}"
            elif verdict.earliest > at:
                at = verdict.earliest
                if policy.strategy is Strategy.TIMING_AWARE:
                    at = fit_local_hours(at, ZoneInfo(timezone), policy.timing, country, self.holidays)
                window_end = case.opened_at + policy.window
                if at > window_end:
                    at, reason = (
                        None,
                        (
                            f"{verdict.reason}; that is after the dunning window "
                            f"closes at day {policy.max_days}"
                        ),
                    )
                else:
                    local = at.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M")
                    reason = f"Retry on {local} {timezone}: moved by the card network rule ({verdict.reason})"
        if at is not None:
            case.schedule(NextAction.RETRY, at, reason)
            case.record(now, EventKind.RETRY_SCHEDULED, reason, retry_at=at.isoformat())
            return adjustments
        case.record(now, EventKind.RETRY_SKIPPED, reason)
        final_at = max(case.opened_at + policy.window + timedelta(days=policy.grace_days), now)
        if case.status is CaseStatus.OPEN:
            case.transition_to(CaseStatus.EXHAUSTED, at=now, reason=f"no automatic retry left: {reason}")
        final_reason = (
            f"{policy.final_action} on {final_at:%Y-%m-%d %H:%M} UTC: end of the "
            f"{policy.max_days}-day dunning window plus {policy.grace_days} days' grace"
        )
        case.schedule(NextAction.FINAL_ACTION, final_at, final_reason)
        case.record(now, EventKind.FINAL_ACTION_SCHEDULED, final_reason, final_at=final_at.isoformat())
        return adjustments

    # ------------------------------------------------------------------ ticking

    def tick(self, now: datetime) -> TickReport:
        """Claim due cases in batches and act on them until none is due at ``now``."""
        now = require_aware("now", now).astimezone(UTC)
        self._refresh_policies()
        report = TickReport()
        while True:
            with self.store.unit_of_work() as uow:
                ids = uow.claim_due(now, limit=self.batch_size, worker_id=self.worker_id, lease=self.lease)
                batch = self._prepare(uow, ids, now)
                uow.commit()
            if ids:
                report.add(self._execute(batch, now))
            if len(ids) < self.batch_size:
                # A short batch means nothing else was due when we claimed; anything
                # that became due since is picked up by the next tick.
                return report

    def process(self, case_ids: Sequence[str], now: datetime) -> TickReport:
        """Act now on the given active cases (an immediate retry), claiming them first;
        cases another worker holds are left to it."""
        now = require_aware("now", now).astimezone(UTC)
        self._refresh_policies()
        with self.store.unit_of_work() as uow:
            ids = uow.claim_due(
                now, limit=len(case_ids), worker_id=self.worker_id, lease=self.lease, case_ids=case_ids
            )
            batch = self._prepare(uow, ids, now)
            uow.commit()
        return self._execute(batch, now)

    def _prepare(self, uow: UnitOfWork, case_ids: Sequence[str], now: datetime) -> _Batch:
        """Phase A, inside the claiming transaction: write every attempt as pending before
        any charge, so a crash after this commit is reconciled rather than repeated."""
        batch = _Batch(claimed=len(case_ids))
        new_attempts: list[Attempt] = []
        for bundle in uow.load_bundles(case_ids, now):
            case = bundle.case
            if not case.is_active or case.next_action in (None, NextAction.PAUSED):
                continue
            if bundle.pending is not None:
                batch.work.append(_Work(bundle, bundle.pending, resend=True))
            elif case.next_action is NextAction.FINAL_ACTION:
                batch.finals.append(bundle)
            else:
                attempt = self._start_attempt(case, bundle, now)
                new_attempts.append(attempt)
                batch.work.append(_Work(bundle, attempt))
        uow.add_attempts(new_attempts)
        self._save(uow, [w.bundle.case for w in batch.work], release_claims=False)
        return batch

    def _execute(self, batch: _Batch, now: datetime) -> TickReport:
        """Phases B (gateway calls, no transaction open) and C (outcomes, one transaction)."""
        report = TickReport(claimed=batch.claimed)
        work, finals = batch.work, batch.finals
        # Phase B: talk to the gateway, outside any transaction.
        for item in work:
            if item.resend:
                status = self.gateway.attempt_status(item.attempt.idempotency_key)
                report.reconciled += 1
                if status.status is not ChargeStatus.NOT_FOUND:
                    item.result = status
                    continue
            elif item.bundle.last_status_unknown is not None:
                earlier = self.gateway.attempt_status(item.bundle.last_status_unknown.idempotency_key)
                if earlier.status is ChargeStatus.SUCCEEDED:
                    item.result = replace(earlier, idempotency_key=item.attempt.idempotency_key)
                    item.bundle.case.record(
                        now,
                        EventKind.ATTEMPT_RECONCILED,
                        "the earlier unanswered attempt had succeeded: no new charge",
                    )
                    continue
            item.result = self.gateway.charge(self._charge_request(item.bundle, item.attempt, now))
            report.attempts += 1

        # Final actions also go to the gateway outside any transaction (each has its
        # own idempotency key, so repeating one after a crash is harmless).
        done: list[tuple[CaseBundle, FinalAction, GatewayError | None]] = [
            (bundle, *self._call_final_action(bundle.case, now)) for bundle in finals
        ]

        # Phase C: record outcomes and decide what comes next, one transaction. Events
        # (a cancellation, a new card) may have changed a case while the gateway was
        # answering: such cases are reloaded and the outcome applied to their new state.
        with self.store.unit_of_work() as uow:
            loaded = {w.bundle.case.id: w.bundle for w in work} | {b.case.id: b for b in finals}
            versions = uow.lock_cases(list(loaded))
            changed = [cid for cid, b in loaded.items() if versions.get(cid) != b.case.version]
            for bundle in uow.load_bundles(changed, now):
                bundle.case.events.extend(loaded[bundle.case.id].case.collect_events())
                loaded[bundle.case.id] = bundle
            finished: list[Attempt] = []
            for item in work:
                assert item.result is not None, "phase B answers every attempt"
                bundle = loaded[item.bundle.case.id]
                finished.append(self._apply_result(uow, bundle, item, item.result, now, report))
            for stale, action, error in done:
                self._record_final_action(uow, loaded[stale.case.id].case, action, error, now, report)
            uow.finish_attempts(finished)
            self._save(uow, [b.case for b in loaded.values()], release_claims=True)
            uow.commit()
        return report

    def _start_attempt(self, case: DunningCase, bundle: CaseBundle, now: datetime) -> Attempt:
        counted = case.next_action is NextAction.RETRY
        trigger = (
            AttemptTrigger.POLICY
            if counted
            else AttemptTrigger.OPERATOR
            if case.next_action is NextAction.OPERATOR_RETRY
            else AttemptTrigger.PAYMENT_METHOD
        )
        case.attempts += 1
        if counted:
            case.budget_used += 1
        attempt = Attempt(
            case.id,
            case.attempts,
            bundle.payment_method.id,
            idempotency_key(case.id, case.attempts),
            now,
            AttemptStatus.PENDING,
            trigger,
        )
        case.record(
            now,
            EventKind.ATTEMPT_STARTED,
            f"attempt {case.attempts} ({trigger}): {case.next_action_reason}",
            attempt=case.attempts,
            key=attempt.idempotency_key,
        )
        return attempt

    def _charge_request(self, bundle: CaseBundle, attempt: Attempt, now: datetime) -> ChargeRequest:
        case, pm, customer = bundle.case, bundle.payment_method, bundle.customer
        return ChargeRequest(
            idempotency_key=attempt.idempotency_key,
            invoice_id=case.invoice_id,
            customer_id=case.customer_id,
            subscription_id=case.subscription_id,
            amount=case.amount,
            payment_method=CardRef(
                pm.id, pm.gateway_token, pm.brand, pm.last4, pm.exp_month, pm.exp_year, pm.funding
            ),
            attempt_number=attempt.number,
            attempted_at=now,
            customer_country=customer.country,
            customer_timezone=customer.timezone,
        )

    def _apply_result(
        self,
        uow: UnitOfWork,
        bundle: CaseBundle,
        item: _Work,
        result: ChargeResult,
        now: datetime,
        report: TickReport,
    ) -> Attempt:
        attempt = item.attempt
        case = bundle.case
        if item.resend:
            case.record(
                now,
                EventKind.ATTEMPT_RECONCILED,
                f"attempt {attempt.number} left pending by a stopped worker: gateway says {result.status}",
                key=attempt.idempotency_key,
            )
        if not case.is_active:
            return self._outcome_after_close(case, attempt, result, now)
        case.last_attempt_at = now
        if result.status is ChargeStatus.SUCCEEDED:
            case.errors_in_row = 0
            case.record(
                now,
                EventKind.ATTEMPT_SUCCEEDED,
                f"attempt {attempt.number} succeeded",
                reference=result.gateway_reference,
            )
            case.transition_to(CaseStatus.RECOVERED, at=now, reason=f"recovered by attempt {attempt.number}")
            uow.set_invoice_status(case.invoice_id, InvoiceStatus.PAID, now)
            if case.subscription_id:
                uow.set_subscription_statuses([(case.subscription_id, SubscriptionStatus.ACTIVE)])
            report.recovered += 1
            cur = case.amount.currency
            report.recovered_amounts[cur] = report.recovered_amounts.get(cur, 0) + case.amount.amount_minor
            return replace(
                attempt, status=AttemptStatus.SUCCEEDED, at=now, gateway_reference=result.gateway_reference
            )

        if result.status is ChargeStatus.DECLINED:
            decline = classify(
                result.decline_code, network_code=result.network_code, advice_code=result.advice_code
            )
            status = AttemptStatus.FAILED
            case.errors_in_row = (
                case.errors_in_row + 1 if decline.category is DeclineCategory.PROCESSING_ERROR else 0
            )
            case.record(
                now,
                EventKind.ATTEMPT_FAILED,
                f"attempt {attempt.number} declined: {_words(decline)}",
                code=decline.code,
                network_code=decline.network_code,
                advice_code=decline.advice_code,
                category=str(decline.category),
            )
            report.declined += 1
        else:
            decline = classify(None)
            status = AttemptStatus.UNKNOWN
            case.errors_in_row += 1
            case.record(
                now,
                EventKind.ATTEMPT_UNKNOWN,
                f"attempt {attempt.number}: no answer from the gateway ({result.message or result.status}); "
                "its status is checked before the next charge",
            )
            report.unknown += 1
        finished = replace(
            attempt, status=status, at=now, decline=decline, gateway_reference=result.gateway_reference
        )
        if attempt.payment_method_id != case.payment_method_id:
            # A new card arrived while this attempt was at the gateway: its immediate
            # retry is already scheduled and this decline says nothing about it.
            return finished
        case.last_decline = decline
        policy = self._policy(case)
        history = (*bundle.card_history, PriorAttempt(now, decline))
        if case.status is CaseStatus.EXHAUSTED:
            if not (decline.category.retryable and now < case.opened_at + policy.window):
                # Back to waiting for the final action that was already scheduled.
                self._reschedule_final(case, policy, now)
                return finished
            case.transition_to(
                CaseStatus.OPEN, at=now, reason="reopened: the new payment method's decline is retryable"
            )
            report.reopened += 1
        report.network_adjustments += self._decide_next(
            case,
            policy,
            bundle.customer.timezone,
            bundle.customer.country,
            bundle.payment_method.brand,
            bundle.payment_method.funding,
            history,
            now,
        )
        if case.status is CaseStatus.EXHAUSTED:
            report.exhausted += 1
        return finished

    @staticmethod
    def _reschedule_final(case: DunningCase, policy: RetryPolicy, now: datetime) -> None:
        final_at = max(case.opened_at + policy.window + timedelta(days=policy.grace_days), now)
        case.schedule(
            NextAction.FINAL_ACTION, final_at, f"{policy.final_action} at the end of the grace period"
        )

    def _call_final_action(self, case: DunningCase, now: datetime) -> tuple[FinalAction, GatewayError | None]:
        action = self._policy(case).final_action
        key = f"recobra:{case.id}:final"
        try:
            if action is FinalAction.CANCEL and case.subscription_id:
                self.gateway.cancel_subscription(case.subscription_id, at=now, idempotency_key=key)
            elif action is FinalAction.PAUSE and case.subscription_id:
                self.gateway.pause_subscription(case.subscription_id, at=now, idempotency_key=key)
            else:
                self.gateway.mark_unpaid(case.invoice_id, at=now, idempotency_key=key)
        except GatewayError as exc:
            return action, exc
        return action, None

    def _record_final_action(
        self,
        uow: UnitOfWork,
        case: DunningCase,
        action: FinalAction,
        error: GatewayError | None,
        now: datetime,
        report: TickReport,
    ) -> None:
        if error is not None:
            report.final_action_failures += 1
            if not case.is_active:
                return
            retry_at = now + FINAL_ACTION_RETRY
            case.record(
                now,
                EventKind.FINAL_ACTION_FAILED,
                f"{action} failed at the gateway ({error}); trying again at {retry_at:%Y-%m-%d %H:%M} UTC",
                code=error.code,
                transient=error.transient,
            )
            case.schedule(NextAction.FINAL_ACTION, retry_at, f"{action} (again after a gateway error)")
            return
        if not case.is_active:
            # Closed (paid, canceled ...) while the gateway was acting: keep the record.
            case.record(
                now,
                EventKind.FINAL_ACTION_FAILED,
                f"{action} went through at the gateway after the case was closed as {case.status}; "
                "check the subscription",
                action=str(action),
            )
            return
        if case.status is CaseStatus.OPEN:
            # Reopened by a new card meanwhile; the subscription has already been acted on.
            case.transition_to(CaseStatus.EXHAUSTED, at=now, reason=f"{action} went through at the gateway")
        if case.subscription_id:
            status = {
                FinalAction.CANCEL: SubscriptionStatus.CANCELED,
                FinalAction.PAUSE: SubscriptionStatus.PAUSED,
                FinalAction.MARK_UNPAID: SubscriptionStatus.UNPAID,
            }[action]
            uow.set_subscription_statuses([(case.subscription_id, status)])
        case.final_action = action
        uow.set_invoice_status(case.invoice_id, InvoiceStatus.UNCOLLECTIBLE, now)
        case.transition_to(
            CaseStatus.FINAL_ACTION_DONE,
            at=now,
            reason=f"final action {action} done through {self.gateway.name}",
        )
        report.final_actions += 1

    @staticmethod
    def _outcome_after_close(
        case: DunningCase, attempt: Attempt, result: ChargeResult, now: datetime
    ) -> Attempt:
        """The case was closed (canceled, paid another way ...) while the charge was out."""
        if result.status is ChargeStatus.SUCCEEDED:
            case.record(
                now,
                EventKind.ATTEMPT_SUCCEEDED,
                f"attempt {attempt.number} succeeded after the case was closed as {case.status}: "
                "the customer may be owed a refund",
                reference=result.gateway_reference,
                needs_review=True,
            )
            log.warning("charge succeeded on a closed case", extra={"case_id": case.id})
            return replace(
                attempt, status=AttemptStatus.SUCCEEDED, at=now, gateway_reference=result.gateway_reference
            )
        decline = (
            classify(result.decline_code, network_code=result.network_code, advice_code=result.advice_code)
            if result.status is ChargeStatus.DECLINED
            else classify(None)
        )
        case.record(
            now,
            EventKind.ATTEMPT_FAILED,
            f"attempt {attempt.number} declined after the case was closed as {case.status}: "
            f"{_words(decline)}",
            code=decline.code,
        )
        status = AttemptStatus.FAILED if result.status is ChargeStatus.DECLINED else AttemptStatus.UNKNOWN
        return replace(
            attempt, status=status, at=now, decline=decline, gateway_reference=result.gateway_reference
        )


def _words(decline: Decline) -> str:
    raw = decline.code or decline.network_code or "no code"
    return f"{decline.category} ({raw})"


__all__ = ["Engine", "HandleResult", "Reactivation", "ReactivationOutcome", "TickReport"]
