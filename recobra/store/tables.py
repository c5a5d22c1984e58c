"""Database tables (SQLAlchemy 2 ``Mapped`` models). Rows stay in the store package;
repositories translate them to domain objects explicitly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone; PostgreSQL timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class CustomerRow(Base):
    __tablename__ = "customers"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200), default="")
    phone: Mapped[str | None] = mapped_column(String(32))
    locale: Mapped[str] = mapped_column(String(8))
    timezone: Mapped[str] = mapped_column(String(64))
    country: Mapped[str] = mapped_column(String(2))
    created_at: Mapped[datetime | None]


class PlanRow(Base):
    __tablename__ = "plans"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    interval: Mapped[str] = mapped_column(String(8))
    amount_minor: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))


class SubscriptionRow(Base):
    __tablename__ = "subscriptions"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    renews_at: Mapped[datetime | None]
    # Set by the customer's own changes (hosted pages) and cleared on reactivation.
    canceled_at: Mapped[datetime | None]
    paused_until: Mapped[datetime | None]
    discount_percent: Mapped[int | None]
    # Invoices the discount still applies to (the operator's billing counts them down).
    discount_cycles: Mapped[int | None]


class PaymentMethodRow(Base):
    __tablename__ = "payment_methods"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    gateway_token: Mapped[str] = mapped_column(String(200))
    brand: Mapped[str] = mapped_column(String(32))
    last4: Mapped[str] = mapped_column(String(4))
    exp_month: Mapped[int]
    exp_year: Mapped[int]
    funding: Mapped[str] = mapped_column(String(16))
    is_default: Mapped[bool]


class InvoiceRow(Base):
    __tablename__ = "invoices"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    subscription_id: Mapped[str | None] = mapped_column(String(128))
    amount_minor: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    paid_at: Mapped[datetime | None]


class CaseRow(Base):
    __tablename__ = "cases"
    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"), unique=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    subscription_id: Mapped[str | None] = mapped_column(String(128), index=True)
    amount_minor: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(24), index=True)
    opened_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    policy_name: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[int]
    segment: Mapped[str] = mapped_column(String(64))
    payment_method_id: Mapped[str] = mapped_column(String(128))
    last_category: Mapped[str] = mapped_column(String(32))
    last_code: Mapped[str] = mapped_column(String(64))
    last_network_code: Mapped[str | None] = mapped_column(String(8))
    last_advice_code: Mapped[str | None] = mapped_column(String(32))
    last_attempt_at: Mapped[datetime]
    attempts: Mapped[int]
    budget_used: Mapped[int]
    errors_in_row: Mapped[int]
    next_action: Mapped[str | None] = mapped_column(String(16))
    # Active cases always have a next action time; closed ones have NULL, so this
    # index holds exactly the durable timers.
    next_action_at: Mapped[datetime | None] = mapped_column(index=True)
    next_action_reason: Mapped[str] = mapped_column(Text, default="")
    final_action: Mapped[str | None] = mapped_column(String(16))
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claim_expires_at: Mapped[datetime | None]
    # Bumped by every save; a save names the version it loaded (optimistic locking).
    version: Mapped[int] = mapped_column(Integer, default=0)


class AttemptRow(Base):
    __tablename__ = "attempts"
    __table_args__ = (
        Index("ix_attempts_card_time", "payment_method_id", "at"),
        Index("ix_attempts_case_status", "case_id", "status"),
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"))
    number: Mapped[int]
    payment_method_id: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(16))
    category: Mapped[str | None] = mapped_column(String(32))
    code: Mapped[str | None] = mapped_column(String(64))
    network_code: Mapped[str | None] = mapped_column(String(8))
    advice_code: Mapped[str | None] = mapped_column(String(32))
    gateway_reference: Mapped[str | None] = mapped_column(String(200))


class CaseEventRow(Base):
    __tablename__ = "case_events"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    from_status: Mapped[str | None] = mapped_column(String(24))
    to_status: Mapped[str | None] = mapped_column(String(24))
    data: Mapped[dict[str, Any] | None]


class ProcessedEventRow(Base):
    __tablename__ = "processed_events"
    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(48))
    occurred_at: Mapped[datetime]


class MessageRow(Base):
    """The transactional outbox: one row per (case or campaign, step, channel)."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_customer_sent", "customer_id", "sent_at"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(240), unique=True)
    case_id: Mapped[str | None] = mapped_column(ForeignKey("cases.id"), index=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    kind: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))
    step: Mapped[str] = mapped_column(String(120))
    status: Mapped[str] = mapped_column(String(16))
    # Like cases' timers: set only while the message is scheduled (NULL once it is
    # being sent or settled), so this index holds exactly the waiting messages.
    due_at: Mapped[datetime | None] = mapped_column(index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    provider_id: Mapped[str | None] = mapped_column(String(200))
    data: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    clicked_at: Mapped[datetime | None]
    seen_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    # Indexed for the reaper, which looks for expired claims on 'sending' rows.
    claim_expires_at: Mapped[datetime | None] = mapped_column(index=True)


class ContactPreferenceRow(Base):
    """What a customer agreed to and asked for."""

    __tablename__ = "contact_preferences"
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), primary_key=True)
    sms_consent: Mapped[bool] = mapped_column(default=False)
    voice_consent: Mapped[bool] = mapped_column(default=False)
    sms_stopped: Mapped[bool] = mapped_column(default=False)
    unsubscribed: Mapped[bool] = mapped_column(default=False)
    suppressed: Mapped[bool] = mapped_column(default=False)
    win_back_opt_in: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime]


class PushSubscriptionRow(Base):
    """A browser's web-push subscription for a customer."""

    __tablename__ = "push_subscriptions"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    endpoint: Mapped[str] = mapped_column(String(1000), unique=True)
    subscription: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class RelayCursorRow(Base):
    """How far an outgoing event stream (the operator's webhook) has been delivered."""

    __tablename__ = "relay_cursors"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claim_expires_at: Mapped[datetime | None]


class ApiKeyRow(Base):
    """An operator's API key. Only the SHA-256 hash of the key is kept; ``prefix`` (the
    first characters of its random part) finds it and shows which key is which."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class UsedLinkRow(Base):
    """Nonces of customers' links that have done their action (single use)."""

    __tablename__ = "used_links"
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(200))
    used_at: Mapped[datetime]


class ExitSurveyRow(Base):
    """One answer to the cancellation survey. ``customer_id`` and ``subscription_id``
    are NULL when the customer chose to answer anonymously; ``plan_id`` stays so the
    answers can still be read by plan. ``offer`` is the save offer shown (NULL when
    none fitted) and ``outcome`` what came of it: ``canceled`` or ``saved``."""

    __tablename__ = "exit_surveys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str | None] = mapped_column(String(128), index=True)
    subscription_id: Mapped[str | None] = mapped_column(String(128))
    plan_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(32))
    comment: Mapped[str] = mapped_column(Text, default="")
    locale: Mapped[str] = mapped_column(String(8))
    offer: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(index=True)


class SubscriptionEventRow(Base):
    """What happened to a subscription outside any dunning case (canceled, paused,
    discounted, plan changed, reactivated from the hosted pages): the operator's
    billing acts on these, so the relay streams them to its webhook like case events."""

    __tablename__ = "subscription_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subscription_id: Mapped[str] = mapped_column(String(128), index=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]


class PolicyVersionRow(Base):
    """Every policy file the service has been given, in order. The active one is the
    version with the latest ``activated_at``; files are kept whole (TOML source) so
    the history shows exactly what ran."""

    __tablename__ = "policy_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    source: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(128))
    activated_at: Mapped[datetime | None] = mapped_column(index=True)


class StripeEventRow(Base):
    """Stripe's webhook inbox: every verified event, stored before it is answered and
    processed from here (by the webhook right after the answer, and by the worker).
    ``status``: ``pending``, ``processing``, ``done``, ``ignored`` (not our concern),
    ``stale`` (older than what is already known of its object), ``failed`` (retried
    later) or ``invalid`` (unusable; not retried)."""

    __tablename__ = "stripe_events"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    object_id: Mapped[str | None] = mapped_column(String(255), index=True)
    created: Mapped[datetime]
    received_at: Mapped[datetime]
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str] = mapped_column(Text, default="")
    processed_at: Mapped[datetime | None]


class StripeImportCursorRow(Base):
    """Where ``recobra stripe import`` got to, per resource: a rerun resumes there."""

    __tablename__ = "stripe_import_cursors"
    resource: Mapped[str] = mapped_column(String(32), primary_key=True)
    starting_after: Mapped[str | None] = mapped_column(String(255))
    imported: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class AdminUserRow(Base):
    """A person who signs in to the dashboard. ``password_hash`` is an argon2id hash
    (PHC string); ``email`` is kept lower-case. A disabled user (``disabled_at``) can no
    longer sign in, and sessions already open stop working on their next request."""

    __tablename__ = "admin_users"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]
    last_login_at: Mapped[datetime | None]
