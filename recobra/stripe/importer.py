"""``recobra stripe import``: backfill an existing Stripe account.

Two passes, each paged with the SDK's pagination (``starting_after``) and resumable:
after every page the last id is saved in ``stripe_import_cursors``, so a rerun
after an interruption starts where it stopped; a finished pass is skipped unless
``restart`` is asked for.

1. **customers** and their card payment methods (stored as they are);
2. **subscriptions** (every status but canceled): each goes to the engine as a
   ``subscription_updated`` (so card-expiry and renewal reminders are planned), and
   one in arrears (``past_due``, ``unpaid``, ``incomplete``) whose latest invoice is
   open opens a dunning case, as its ``invoice.payment_failed`` would have.

Everything is idempotent: rows are upserted and engine events carry ids derived
from Stripe's (``stripe-import:<id>``), which the engine applies once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import stripe
from sqlalchemy import Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from recobra.engine.service import Engine
from recobra.store.tables import StripeImportCursorRow
from recobra.stripe import mapping
from recobra.stripe.config import StripeSettings
from recobra.stripe.inbox import EventProcessor, Skip, as_dict

PAGE = 100
RESOURCES = ("customers", "subscriptions")
ARREARS = ("past_due", "unpaid", "incomplete")


@dataclass(slots=True)
class ImportReport:
    customers: int = 0
    payment_methods: int = 0
    subscriptions: int = 0
    cases_opened: int = 0
    skipped: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)


class Cursors:
    """``stripe_import_cursors``: where each pass got to."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def get(self, resource: str) -> StripeImportCursorRow | None:
        with self.db.connect() as conn:
            return conn.execute(  # type: ignore[no-any-return]
                select(StripeImportCursorRow.__table__).where(StripeImportCursorRow.resource == resource)
            ).first()

    def save(
        self,
        resource: str,
        starting_after: str | None,
        imported: int,
        now: datetime,
        *,
        finished: bool = False,
    ) -> None:
        values = {
            "resource": resource,
            "starting_after": starting_after,
            "imported": imported,
            "finished_at": now if finished else None,
            "updated_at": now,
        }
        table = StripeImportCursorRow.__table__
        assert isinstance(table, Table)
        dialect = self.db.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert(table).values(values)
        stmt = stmt.on_conflict_do_update(index_elements=["resource"], set_=values)
        with self.db.begin() as conn:
            conn.execute(stmt)

    def reset(self) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(StripeImportCursorRow))


class StripeImport:
    """One import run on an account, through the engine and store it is given."""

    def __init__(
        self,
        engine: Engine,
        settings: StripeSettings,
        client: stripe.StripeClient,
        *,
        now: Callable[[], datetime],
        progress: Callable[[str, int], None] = lambda _resource, _count: None,
        page_size: int = PAGE,
    ) -> None:
        self.engine = engine
        self.page_size = page_size
        self.client = client
        self.now = now
        self.progress = progress
        self.processor = EventProcessor(engine, settings, client)
        self.cursors = Cursors(engine.store.engine)  # type: ignore[attr-defined]

    def run(self, *, restart: bool = False) -> ImportReport:
        if restart:
            self.cursors.reset()
        report = ImportReport()
        for resource in RESOURCES:
            cursor = self.cursors.get(resource)
            if cursor is not None and cursor.finished_at is not None:
                report.already_done.append(resource)
                continue
            start = cursor.starting_after if cursor is not None else None
            imported = cursor.imported if cursor is not None else 0
            if start:
                report.resumed.append(resource)
            for page, last_id in self._pages(resource, start):
                imported += self._import_page(resource, page, report)
                self.cursors.save(resource, last_id, imported, self.now())
                self.progress(resource, imported)
            self.cursors.save(resource, None, imported, self.now(), finished=True)
        return report

    def _pages(self, resource: str, starting_after: str | None) -> Iterator[tuple[list[dict[str, Any]], str]]:
        params: dict[str, Any] = {"limit": self.page_size}
        if starting_after:
            params["starting_after"] = starting_after
        service = self.client.v1.customers if resource == "customers" else self.client.v1.subscriptions
        page = service.list(params)  # type: ignore[arg-type]
        while True:
            data = [as_dict(item) for item in page.data]
            if data:
                yield data, str(data[-1]["id"])
            if not page.has_more or not data:
                return
            page = page.next_page()

    def _import_page(self, resource: str, page: list[dict[str, Any]], report: ImportReport) -> int:
        if resource == "customers":
            return self._customers(page, report)
        return self._subscriptions(page, report)

    def _customers(self, page: list[dict[str, Any]], report: ImportReport) -> int:
        customers, methods = [], []
        for cus in page:
            if cus.get("deleted"):
                continue
            try:
                customers.append(mapping.customer(cus))
            except (mapping.MappingError, ValueError) as exc:
                report.skipped.append(f"customer {cus.get('id')}: {exc}")
                continue
            default = mapping.ref((cus.get("invoice_settings") or {}).get("default_payment_method"))
            listed = self.client.v1.payment_methods.list({"customer": str(cus["id"]), "type": "card"})
            for pm in listed.auto_paging_iter():
                data = as_dict(pm)
                try:
                    method = mapping.payment_method(
                        data, customer_id=str(cus["id"]), is_default=data["id"] == default
                    )
                except (mapping.MappingError, ValueError) as exc:
                    report.skipped.append(f"payment method {data.get('id')}: {exc}")
                    continue
                if method is not None:
                    methods.append(method)
        with self.engine.store.unit_of_work() as uow:
            uow.upsert_customers(customers)
            # Defaults last: a default method makes the customer's others non-default.
            uow.upsert_payment_methods(sorted(methods, key=lambda m: m.is_default))
            uow.commit()
        report.customers += len(customers)
        report.payment_methods += len(methods)
        return len(page)

    def _subscriptions(self, page: list[dict[str, Any]], report: ImportReport) -> int:
        now = self.now()
        for sub in page:
            sub_id = str(sub["id"])
            try:
                self.engine.handle(self.processor.subscription_updated(f"stripe-import:{sub_id}", now, sub))
                report.subscriptions += 1
            except (Skip, mapping.MappingError, ValueError) as exc:
                report.skipped.append(f"subscription {sub_id}: {exc}")
                continue
            invoice_id = mapping.ref(sub.get("latest_invoice"))
            if sub.get("status") not in ARREARS or not invoice_id:
                continue
            try:
                failed = self.processor.payment_failed(f"stripe-import:{invoice_id}", now, {"id": invoice_id})
            except (Skip, mapping.MappingError, ValueError) as exc:
                report.skipped.append(f"invoice {invoice_id}: {exc}")
                continue
            result = self.engine.handle(failed)
            if not result.duplicate and result.note != "case already exists":
                report.cases_opened += 1
        return len(page)
