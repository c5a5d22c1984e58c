"""Find and build a payment gateway from a name or a dotted path.

A *spec* is either the name of an entry point in the group ``recobra.gateways``
(``"simulated"``, or whatever name an installed plugin declares) or a dotted
path ``"package.module:factory"``. Either way the factory is called with the
settings mapping (strings) and must return an object satisfying
:class:`recobra.ports.PaymentGateway`. See docs/gateways.md. The work is done by
:func:`recobra.plugins.load_plugin`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import cast

from recobra.plugins import PluginLoadError, available_plugins, load_plugin, missing_members
from recobra.ports import PaymentGateway

__all__ = ["ENTRY_POINT_GROUP", "GatewayLoadError", "available_gateways", "load_gateway"]

ENTRY_POINT_GROUP = "recobra.gateways"

# The protocol's members, in declaration order, for naming what a result lacks.
_MEMBERS = ("name", "charge", "attempt_status", "cancel_subscription", "pause_subscription", "mark_unpaid")


class GatewayLoadError(PluginLoadError):
    """A gateway spec could not be turned into a gateway. The message names the spec and why."""

    noun = "gateway"


def available_gateways() -> list[str]:
    """Names of the installed gateways (entry points in ``recobra.gateways``), sorted."""
    return available_plugins(ENTRY_POINT_GROUP, lookup=_installed)


def load_gateway(spec: str, settings: Mapping[str, str] | None = None) -> PaymentGateway:
    """Build the gateway named by ``spec`` with ``settings``; raise GatewayLoadError otherwise."""
    gateway = load_plugin(
        ENTRY_POINT_GROUP,
        spec,
        settings,
        _check,
        error=GatewayLoadError,
        protocol="PaymentGateway",
        lookup=_installed,
    )
    return cast(PaymentGateway, gateway)


def _installed(group: str) -> Iterable[EntryPoint]:
    # Looked up at call time, so that tests can replace this module's ``entry_points``.
    return entry_points(group=group)


def _check(gateway: object) -> list[str]:
    missing = missing_members(gateway, _MEMBERS, strings={"name"})
    if not missing and not isinstance(gateway, PaymentGateway):
        return ["?"]
    return missing
