"""Find and build a plugin (a gateway, a channel ...) from a name or a dotted path.

A *spec* is either the name of an entry point in a group (``recobra.gateways``,
``recobra.channels`` ...) or a dotted path ``"package.module:factory"``. Either
way the factory is called with the settings mapping (strings) and its result is
handed to ``check``, which names the members it lacks. Every failure raises a
:class:`PluginLoadError` (a ``ValueError``) whose message names the spec and the
problem. ``recobra.gateways.loader`` and ``recobra.channels.loader`` are thin
layers over :func:`load_plugin`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import ClassVar

__all__ = [
    "EntryPointLookup",
    "PluginLoadError",
    "available_plugins",
    "installed_entry_points",
    "load_plugin",
    "missing_members",
]

EntryPointLookup = Callable[[str], Iterable[EntryPoint]]
"""Given a group name, the entry points installed in it (``importlib.metadata`` by default)."""


class PluginLoadError(ValueError):
    """A spec could not be turned into a plugin. The message names the spec and why.

    Subclasses set ``noun`` (``"gateway"``, ``"channel"``) for their messages."""

    noun: ClassVar[str] = "plugin"

    def __init__(self, spec: str, problem: str) -> None:
        super().__init__(f"{self.noun} {spec!r}: {problem}")
        self.spec = spec
        self.problem = problem


def installed_entry_points(group: str) -> Iterable[EntryPoint]:
    """The entry points installed in ``group`` (the default lookup)."""
    return entry_points(group=group)


def available_plugins(group: str, *, lookup: EntryPointLookup | None = None) -> list[str]:
    """Names of the installed plugins of ``group``, sorted and without duplicates."""
    return sorted({ep.name for ep in (lookup or installed_entry_points)(group)})


def load_plugin(
    group: str,
    spec: str,
    settings: Mapping[str, str] | None,
    check: Callable[[object], list[str]],
    *,
    error: type[PluginLoadError] = PluginLoadError,
    protocol: str | None = None,
    lookup: EntryPointLookup | None = None,
) -> object:
    """Build the plugin named by ``spec`` with ``settings``; raise ``error`` otherwise.

    ``check`` gets the factory's result and returns the names of the members it lacks
    (empty when it is acceptable). ``protocol`` names what the result should be in the
    error message (``"PaymentGateway"``); ``lookup`` replaces the installed entry points
    (tests, applications embedding Recobra).
    """
    found = lookup or installed_entry_points
    noun = error.noun
    spec = spec.strip()
    if not spec:
        raise error(spec, f"empty spec; give an installed {noun} name or package.module:factory")
    factory = _dotted(spec, error) if ":" in spec else _entry_point(group, spec, error, found)
    if not callable(factory):
        raise error(spec, f"the factory is not callable (it is a {type(factory).__name__})")
    try:
        plugin: object = factory(dict(settings or {}))
    except Exception as exc:
        # Any error from third-party code is reported with its message and kept as the cause.
        raise error(spec, f"the factory raised {type(exc).__name__}: {exc}") from exc
    missing = check(plugin)
    if missing:
        raise error(
            spec,
            f"the factory returned a {type(plugin).__name__}, which is not a {protocol or noun} "
            f"(missing or not callable: {', '.join(missing)})",
        )
    return plugin


def missing_members(plugin: object, members: Sequence[str], *, strings: Collection[str] = ()) -> list[str]:
    """The ``members`` that ``plugin`` lacks, in order: those in ``strings`` must be ``str``
    attributes (reported as ``"name (a str)"``), the others callables."""
    missing = []
    for member in members:
        value = getattr(plugin, member, None)
        if member in strings:
            if not isinstance(value, str):
                missing.append(f"{member} (a str)")
        elif not callable(value):
            missing.append(member)
    return missing


def _entry_point(group: str, spec: str, error: type[PluginLoadError], lookup: EntryPointLookup) -> object:
    found = [ep for ep in lookup(group) if ep.name == spec]
    if not found:
        installed = ", ".join(available_plugins(group, lookup=lookup)) or "none"
        raise error(
            spec,
            f"no installed {error.noun} of that name (installed: {installed}); "
            f"for a {error.noun} outside an installed plugin, give package.module:factory",
        )
    entry = found[0]
    try:
        return entry.load()
    except Exception as exc:
        raise error(
            spec, f"entry point {entry.value!r} could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc


def _dotted(spec: str, error: type[PluginLoadError]) -> object:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise error(spec, "a dotted path must look like package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise error(spec, f"module {module_name!r} not found") from exc
        # The module exists but one of its own imports is missing.
        raise error(spec, f"module {module_name!r} could not be imported: {exc}") from exc
    except Exception as exc:
        raise error(
            spec, f"module {module_name!r} could not be imported: {type(exc).__name__}: {exc}"
        ) from exc
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise error(spec, f"module {module_name!r} has no attribute {attribute!r}") from None
    return target
