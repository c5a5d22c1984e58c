"""Find and build a payment gateway from a name or a dotted path.

A *spec* is either the name of an entry point in the group ``recobra.gateways``
(``"simulated"``, or whatever name an installed plugin declares) or a dotted
path ``"package.module:factory"``. Either way the factory is called with the
settings mapping (strings) and must return an object satisfying
:class:`recobra.ports.PaymentGateway`. See docs/gateways.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points

from recobra.ports import PaymentGateway

__all__ = ["ENTRY_POINT_GROUP", "GatewayLoadError", "available_gateways", "load_gateway"]

ENTRY_POINT_GROUP = "recobra.gateways"

# The protocol's members, in declaration order, for naming what a result lacks.
_MEMBERS = ("name", "charge", "attempt_status", "cancel_subscription", "pause_subscription", "mark_unpaid")


class GatewayLoadError(ValueError):
    """A gateway spec could not be turned into a gateway. The message names the spec and why."""

    def __init__(self, spec: str, problem: str) -> None:
        super().__init__(f"gateway {spec!r}: {problem}")
        self.spec = spec
        self.problem = problem


def available_gateways() -> list[str]:
    """Names of the installed gateways (entry points in ``recobra.gateways``), sorted."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_gateway(spec: str, settings: Mapping[str, str] | None = None) -> PaymentGateway:
    """Build the gateway named by ``spec`` with ``settings``; raise GatewayLoadError otherwise."""
    spec = spec.strip()
    if not spec:
        raise GatewayLoadError(spec, "empty spec; give an installed gateway name or package.module:factory")
    factory = _dotted(spec) if ":" in spec else _entry_point(spec)
    if not callable(factory):
        raise GatewayLoadError(spec, f"the factory is not callable (it is a {type(factory).__name__})")
    try:
        gateway = factory(dict(settings or {}))
    except Exception as exc:
        # Any error from third-party code is reported with its message and kept as the cause.
        raise GatewayLoadError(spec, f"the factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(gateway, PaymentGateway) or _missing(gateway):
        missing = ", ".join(_missing(gateway)) or "?"
        raise GatewayLoadError(
            spec,
            f"the factory returned a {type(gateway).__name__}, which is not a PaymentGateway "
            f"(missing or not callable: {missing})",
        )
    return gateway


def _entry_point(spec: str) -> object:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
    if not found:
        installed = ", ".join(available_gateways()) or "none"
        raise GatewayLoadError(
            spec,
            f"no installed gateway of that name (installed: {installed}); "
            "for a gateway outside an installed plugin, give package.module:factory",
        )
    entry = found[0]
    try:
        return entry.load()
    except Exception as exc:
        raise GatewayLoadError(
            spec, f"entry point {entry.value!r} could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc


def _dotted(spec: str) -> object:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise GatewayLoadError(spec, "a dotted path must look like package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise GatewayLoadError(spec, f"module {module_name!r} not found") from exc
        # The module exists but one of its own imports is missing.
        raise GatewayLoadError(spec, f"module {module_name!r} could not be imported: {exc}") from exc
    except Exception as exc:
        raise GatewayLoadError(
            spec, f"module {module_name!r} could not be imported: {type(exc).__name__}: {exc}"
        ) from exc
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise GatewayLoadError(spec, f"module {module_name!r} has no attribute {attribute!r}") from None
    return target


def _missing(gateway: object) -> list[str]:
    missing = []
    for member in _MEMBERS:
        value = getattr(gateway, member, None)
        if member == "name":
            if not isinstance(value, str):
                missing.append("name (a str)")
        elif not callable(value):
            missing.append(member)
    return missing
