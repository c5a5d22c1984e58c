"""Pre-dunning: plan reminders before a card expires or an annual renewal is due."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from recobra.domain.messages import MessageKind, OutboxEntry, message_key
from recobra.domain.model import Customer, PaymentMethod, Subscription
from recobra.domain.policy import Campaign, format_duration


def card_expiry_end(method: PaymentMethod, timezone: str) -> datetime:
    """The instant a card stops working: the end of its expiry month, local time."""
    year, month = (
        (method.exp_year + 1, 1) if method.exp_month == 12 else (method.exp_year, method.exp_month + 1)
    )
    return datetime.combine(date(year, month, 1), time(0), ZoneInfo(timezone)).astimezone(UTC)


def campaign_messages(
    campaigns: Sequence[Campaign],
    customer: Customer,
    subscription: Subscription,
    method: PaymentMethod | None,
    *,
    now: datetime,
) -> list[OutboxEntry]:
    """The reminders each campaign calls for, from ``now`` on. Keys carry the card or
    the renewal date, so a repeated update plans nothing twice, and a new card or a
    new renewal date plans anew (the old reminders are dropped at send time)."""
    entries: list[OutboxEntry] = []
    for campaign in campaigns:
        if campaign.kind is MessageKind.CARD_EXPIRING:
            if method is None:
                continue
            target = card_expiry_end(method, customer.timezone)
            scope = f"card:{method.id}:{method.exp_year}-{method.exp_month:02d}"
            # Tied to the subscription too: no card reminder once it is canceled.
            note: dict[str, str] = {"payment_method": method.id, "subscription": subscription.id}
        else:
            if subscription.renews_at is None:
                continue
            if campaign.intervals and subscription.plan.interval not in campaign.intervals:
                continue
            target = subscription.renews_at.astimezone(UTC)
            scope = f"renewal:{subscription.id}:{target:%Y%m%d}"
            note = {"subscription": subscription.id, "renews_at": target.isoformat()}
            if campaign.offer:
                note["offer"] = campaign.offer
        for before in campaign.before:
            due = target - before
            if due < now:
                continue
            step = f"{campaign.name}:{format_duration(before)}"
            for channel in campaign.channels:
                entries.append(
                    OutboxEntry(
                        key=message_key(scope, step, channel),
                        customer_id=customer.id,
                        case_id=None,
                        kind=campaign.kind,
                        channel=channel,
                        step=step,
                        due_at=due,
                        context=note,
                    )
                )
    return entries


def still_relevant(
    context: Mapping[str, str],
    *,
    default_method_id: str | None,
    subscription_status: str | None,
    renews_at: datetime | None,
) -> tuple[bool, str]:
    """Whether a planned reminder still applies when it comes due."""
    data = context
    if "payment_method" in data and data["payment_method"] != default_method_id:
        return False, "the card was replaced"
    if "subscription" in data and subscription_status not in ("active", "past_due"):
        return False, f"the subscription is {subscription_status}"
    if "renews_at" in data and (
        renews_at is None or renews_at.astimezone(UTC).isoformat() != data["renews_at"]
    ):
        return False, "the renewal date changed"
    return True, ""


__all__ = ["campaign_messages", "card_expiry_end", "still_relevant"]
