"""The simulation report: what the business billed and what the engine recovered.

Engine-side figures are read back from the store, so the report shows what the
database holds, not what the simulator believes.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select

from recobra.domain.case import CaseStatus, EventKind
from recobra.domain.model import AttemptTrigger
from recobra.sim.business import SimStats
from recobra.store.tables import AttemptRow, CaseEventRow, CaseRow, MessageRow


@dataclass(frozen=True, slots=True)
class Report:
    """The figures of one simulation run (``as_dict`` is the ``--json`` output)."""

    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return self.data


def build_report(engine: Engine, stats: SimStats, *, wall_seconds: float, settings: dict[str, Any]) -> Report:
    cases = CaseRow.__table__
    attempts = AttemptRow.__table__
    events = CaseEventRow.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                cases.c.id,
                cases.c.status,
                cases.c.currency,
                cases.c.amount_minor,
                cases.c.opened_at,
                cases.c.closed_at,
                cases.c.final_action,
                cases.c.segment,
            )
        ).all()
        opening = dict(
            conn.execute(select(attempts.c.case_id, attempts.c.category).where(attempts.c.number == 0)).all()
        )
        retry_triggers = [
            AttemptTrigger.POLICY.value,
            AttemptTrigger.PAYMENT_METHOD.value,
            AttemptTrigger.OPERATOR.value,
        ]
        attempt_counts = dict(
            conn.execute(
                select(attempts.c.case_id, func.count())
                .where(attempts.c.trigger.in_(retry_triggers))
                .group_by(attempts.c.case_id)
            ).all()
        )
        total_attempts = sum(attempt_counts.values())
        messages = MessageRow.__table__
        message_rows = conn.execute(
            select(messages.c.kind, messages.c.channel, messages.c.status, func.count()).group_by(
                messages.c.kind, messages.c.channel, messages.c.status
            )
        ).all()
        adjustments = (
            conn.scalar(
                select(func.count())
                .select_from(events)
                .where(events.c.kind == EventKind.NETWORK_RULE_ADJUSTED.value)
            )
            or 0
        )

    by_status = Counter(r.status for r in rows)
    recovered = [r for r in rows if r.status == CaseStatus.RECOVERED.value]
    recovered_amount: dict[str, int] = defaultdict(int)
    at_risk: dict[str, int] = defaultdict(int)
    for r in rows:
        at_risk[r.currency] += r.amount_minor
    for r in recovered:
        recovered_amount[r.currency] += r.amount_minor
    days_to_recover = sorted((r.closed_at - r.opened_at).total_seconds() / 86400 for r in recovered)
    per_category: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        per_category[opening.get(r.id) or "unknown"][r.status] += 1
    finals = Counter(r.final_action for r in rows if r.final_action)
    segments = Counter(r.segment for r in rows)
    opened = len(rows)
    closed = opened - by_status[CaseStatus.OPEN.value] - by_status[CaseStatus.EXHAUSTED.value]
    recovered_attempts = [attempt_counts.get(r.id, 0) for r in recovered]

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        return round(values[min(len(values) - 1, int(q * len(values)))], 2)

    data: dict[str, Any] = {
        "settings": settings,
        "simulated_days": (stats.end - stats.start).days if stats.end and stats.start else None,
        "invoices": stats.invoices,
        "failed_invoices": stats.failed_invoices,
        "first_attempt_failure_rate": round(stats.failed_invoices / stats.invoices, 4)
        if stats.invoices
        else 0.0,
        "cases_opened": opened,
        "cases_closed": closed,
        "cases_by_status": dict(sorted(by_status.items())),
        "recovered_invoices": len(recovered),
        "recovery_rate": round(len(recovered) / opened, 4) if opened else 0.0,
        "recovered_amount_minor": dict(sorted(recovered_amount.items())),
        "failed_amount_minor": dict(sorted(at_risk.items())),
        "attempts": total_attempts,
        "attempts_per_recovered_invoice": round(statistics.mean(recovered_attempts), 2)
        if recovered_attempts
        else None,
        "days_to_recover": {"median": pct(days_to_recover, 0.5), "p90": pct(days_to_recover, 0.9)},
        "outcome_by_decline_category": {k: dict(sorted(v.items())) for k, v in sorted(per_category.items())},
        "final_actions": dict(sorted(finals.items())),
        "segments": dict(sorted(segments.items())),
        "network_rule_adjustments": adjustments,
        "messages_sent": {
            f"{kind}/{channel}": count
            for kind, channel, status, count in sorted(message_rows)
            if status == "sent"
        },
        "messages_by_status": dict(sorted(_status_totals(message_rows).items())),
        "customer_actions": {
            "card_updates": stats.card_updates,
            "cancellations": stats.cancellations,
            "paid_out_of_band": stats.paid_out_of_band,
        },
        "ticks": stats.ticks,
        "wall_seconds": round(wall_seconds, 2),
        "invoices_per_second": round(stats.invoices / wall_seconds, 1) if wall_seconds else None,
    }
    return Report(data)


def _status_totals(rows: list[Any]) -> Counter[str]:
    totals: Counter[str] = Counter()
    for _, _, status, count in rows:
        totals[status] += count
    return totals
