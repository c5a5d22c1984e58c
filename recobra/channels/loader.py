"""Find and build a channel from a name or a dotted path.

A *spec* is either the name of an entry point in the group ``recobra.channels``
(``"email"``, ``"webhook"``, ``"file"``, ``"sms"``, ``"voice"``, ``"push"``, or
whatever name an installed plugin declares) or a dotted path
``"package.module:factory"``. The factory is called with the settings mapping
(strings) and must return an object satisfying :class:`recobra.ports.Channel`
(a ``kind`` string and a ``send`` method). See docs/channels.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import cast

from recobra.plugins import PluginLoadError, available_plugins, load_plugin, missing_members
from recobra.ports import Channel

__all__ = ["ENTRY_POINT_GROUP", "ChannelLoadError", "available_channels", "load_channel"]

ENTRY_POINT_GROUP = "recobra.channels"

_MEMBERS = ("kind", "send")


class ChannelLoadError(PluginLoadError):
    """A channel spec could not be turned into a channel. The message names the spec and why."""

    noun = "channel"


def available_channels() -> list[str]:
    """Names of the installed channels (entry points in ``recobra.channels``), sorted."""
    return available_plugins(ENTRY_POINT_GROUP, lookup=_installed)


def load_channel(spec: str, settings: Mapping[str, str] | None = None) -> Channel:
    """Build the channel named by ``spec`` with ``settings``; raise ChannelLoadError otherwise."""
    channel = load_plugin(
        ENTRY_POINT_GROUP,
        spec,
        settings,
        _check,
        error=ChannelLoadError,
        protocol="Channel",
        lookup=_installed,
    )
    return cast(Channel, channel)


def _installed(group: str) -> Iterable[EntryPoint]:
    # Looked up at call time, so that tests can replace this module's ``entry_points``.
    return entry_points(group=group)


def _check(channel: object) -> list[str]:
    missing = missing_members(channel, _MEMBERS, strings={"kind"})
    if not missing and not isinstance(channel, Channel):
        return ["?"]
    return missing
