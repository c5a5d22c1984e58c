"""Customer messages as data: kinds, channels, and the rules for when and how to send.

No I/O here: rendering (Jinja2, Babel) and sending (SMTP, Twilio, web push ...)
are adapters. The engine decides *that* a message is due; the delivery rules in
this module decide *whether*, *when* and *on which channel* it may go.
"""

from __future__ import annotations

from enum import StrEnum


class MessageKind(StrEnum):
    """What a message is about. Each kind has templates per channel and locale."""

    CARD_EXPIRING = "card_expiring"
    """Pre-dunning: the card on file expires soon (30 and 7 days before the month ends)."""
    RENEWAL_UPCOMING = "renewal_upcoming"
    """Pre-dunning: an annual renewal is coming; the value of the service first."""
    RENEWAL_OFFER = "renewal_offer"
    """Pre-dunning: an optional offer before an annual renewal."""
    PAYMENT_FAILED = "payment_failed"
    """Dunning: first notice, sent with the first failure."""
    PAYMENT_REMINDER = "payment_reminder"
    """Dunning: each later reminder."""
    FINAL_NOTICE = "final_notice"
    """Dunning: before the final action, with its date."""
    PAYMENT_RECOVERED = "payment_recovered"
    """The payment went through: thanks."""
    PAYMENT_METHOD_UPDATED = "payment_method_updated"
    """Confirmation that a new payment method was saved."""
    SUBSCRIPTION_CANCELED = "subscription_canceled"
    """Basecamp-style confirmation: no further charges or emails, data, how to come back."""
    WIN_BACK = "win_back"
    """Opt-in, some weeks after a cancellation."""


TRANSACTIONAL = frozenset(
    {MessageKind.PAYMENT_RECOVERED, MessageKind.PAYMENT_METHOD_UPDATED, MessageKind.SUBSCRIPTION_CANCELED}
)
"""Kinds that confirm something the customer did or that happened to their money;
the cancellation confirmation reaches even suppressed customers."""


class ChannelKind(StrEnum):
    """Where a message goes."""

    EMAIL = "email"
    SMS = "sms"
    VOICE = "voice"
    PUSH = "push"
    IN_APP = "in_app"
    WEBHOOK = "webhook"
    FILE = "file"
    """Writes messages to files or the console: the demo's channel."""


CONSENT_REQUIRED = frozenset({ChannelKind.SMS, ChannelKind.VOICE})
"""Channels that need the customer's explicit consent (and honour STOP)."""
