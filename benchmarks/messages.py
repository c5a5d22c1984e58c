"""Benchmark: customer messages queued, rendered and handed to the outbox per second.

    python benchmarks/messages.py                     # 10,000 messages on SQLite
    python benchmarks/messages.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/recobra_bench

10,000 failed payments (customers in es and en, seven currencies) open cases
whose policy queues a first notice by email; then one dispatch renders each
message from its templates (HTML with inlined CSS, text, signed links), runs the
delivery rules and records it in the outbox. The channel at the end accepts the
message without sending it anywhere, so the figure is Recobra's own cost.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from datetime import UTC, datetime, timedelta

from benchdb import fresh_database

from recobra.bootstrap import build_engine, build_messenger, open_store
from recobra.domain.messages import ChannelKind
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
from recobra.engine.commands import PaymentFailed
from recobra.policyfile import parse_policy
from recobra.ports import DeliveryResult, DeliveryStatus, OutgoingMessage
from recobra.settings import Settings

POLICY = """
name = "bench"
version = 1
default_policy = "p"
[policies.p]
strategy = "fixed"
max_attempts = 3
max_days = 10
final_action = "cancel"
steps = [
  { action = "message", after = "0m", kind = "payment_failed", channels = ["email"] },
  { after = "1d" }, { after = "3d" }, { after = "6d" },
]
"""
MARKETS = [
    ("MX", "America/Mexico_City", "MXN", "es", 29900),
    ("CO", "America/Bogota", "COP", "es", 5990000),
    ("ES", "Europe/Madrid", "EUR", "es", 1900),
    ("CL", "America/Santiago", "CLP", "es", 15990),
    ("PE", "America/Lima", "PEN", "es", 5900),
    ("US", "America/New_York", "USD", "en", 1900),
    ("GB", "Europe/London", "GBP", "en", 1500),
]
NOW = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


class Accept:
    """The end of the line: accepts each message (the outbox still records it)."""

    kind = "accept"

    def send(self, message: OutgoingMessage) -> DeliveryResult:
        return DeliveryResult(DeliveryStatus.SENT, provider_id=message.key)


def failures(n: int) -> list[PaymentFailed]:
    out = []
    for i in range(n):
        country, tz, currency, locale, price = MARKETS[i % len(MARKETS)]
        customer = Customer(f"cus_{i}", f"c{i}@example.com", locale, tz, country, f"Cliente {i}")
        plan = Plan(f"pro-{currency.lower()}", "Pro", Interval.MONTH, Money(price, currency))
        sub = Subscription(f"sub_{i}", customer.id, plan, SubscriptionStatus.ACTIVE, NOW - timedelta(days=90))
        method = PaymentMethod(f"pm_{i}", customer.id, f"tok_{i}", "visa", "4242", 12, 2030, Funding.DEBIT)
        invoice = Invoice(f"in_{i}", customer.id, sub.id, Money(price, currency), InvoiceStatus.OPEN, NOW)
        out.append(PaymentFailed(f"evt_{i}", NOW, customer, invoice, method, sub, "insufficient_funds", "51"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()
    with fresh_database(args.database_url) as url:
        store = open_store(url)
        policies = parse_policy(POLICY)
        settings = Settings(database_url=url, policy_file=None, quiet_start=0, quiet_end=0)
        engine = build_engine(settings, store=store, policies=policies)
        channels = {ChannelKind.EMAIL: Accept()}
        messenger = build_messenger(
            settings, store, policies, channels=channels, link_secret=secrets.token_urlsafe(32)
        )
        events = failures(args.messages)

        started = time.perf_counter()
        for i in range(0, len(events), 1000):
            engine.handle_many(events[i : i + 1000])
        queued = time.perf_counter() - started

        started = time.perf_counter()
        report = messenger.dispatch(NOW + timedelta(minutes=1))
        dispatched = time.perf_counter() - started
        store.dispose()
    print(
        json.dumps(
            {
                "database": url.split(":", 1)[0],
                "messages": args.messages,
                "sent": report.sent,
                "cases_opened_and_messages_queued_seconds": round(queued, 2),
                "rendered_and_handed_to_outbox_seconds": round(dispatched, 2),
                "messages_per_second": round(report.sent / dispatched, 1) if dispatched else None,
                "total_seconds": round(queued + dispatched, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
