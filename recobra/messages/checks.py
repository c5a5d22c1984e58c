"""Template checks for a policy: every message it can send must render, in every language.

Run by ``recobra policy check`` so that a missing template or an unknown variable is
an error before anything is sent, not at send time.
"""

from __future__ import annotations

from collections.abc import Iterable

from recobra.domain.messages import ChannelKind, MessageKind
from recobra.domain.model import LOCALES
from recobra.domain.policy import PolicySet
from recobra.messages.render import Renderer


def template_channel(channel: ChannelKind) -> ChannelKind:
    """Webhook and file channels carry the email rendering."""
    return ChannelKind.EMAIL if channel in (ChannelKind.WEBHOOK, ChannelKind.FILE) else channel


def messages_used(policies: PolicySet) -> set[tuple[MessageKind, ChannelKind]]:
    """Every (kind, channel) a policy file can send, fallbacks included."""
    used: set[tuple[MessageKind, ChannelKind]] = set()

    def add(kind: MessageKind, channels: Iterable[ChannelKind]) -> None:
        used.update((kind, template_channel(c)) for c in channels)

    for policy in policies.policies.values():
        for step in policy.messages:
            add(step.kind, (*step.channels, *step.fallback))
    for notification in policies.notifications.values():
        add(notification.kind, notification.channels)
    for campaign in policies.campaigns:
        add(campaign.kind, campaign.channels)
    return used


def template_problems(policies: PolicySet, renderer: Renderer) -> list[tuple[str, str]]:
    """(template, reason) for every message of the policy that would not render."""
    problems: list[tuple[str, str]] = []
    for kind, channel in sorted(messages_used(policies)):
        for file, reason in renderer.check([kind], [channel], LOCALES):
            problems.append((f"{kind} by {channel}: {file}", reason))
    return problems
