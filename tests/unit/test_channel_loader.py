"""Loading channels by entry-point name or dotted path, and the generic plugin loader."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from importlib.metadata import EntryPoint, EntryPoints
from importlib.metadata import entry_points as installed_entry_points
from pathlib import Path

import pytest

from recobra.channels import loader
from recobra.channels.email import SmtpEmailChannel
from recobra.channels.file import FileChannel
from recobra.channels.loader import ENTRY_POINT_GROUP, ChannelLoadError, available_channels, load_channel
from recobra.channels.webhook import WebhookChannel
from recobra.gateways.loader import GatewayLoadError
from recobra.plugins import PluginLoadError, available_plugins, load_plugin, missing_members
from recobra.ports import Channel, DeliveryStatus, OutgoingMessage

PLUGIN = "recobra_test_channel_plugin"
PLUGIN_SOURCE = """
from recobra.ports import DeliveryResult, DeliveryStatus


class MemoryChannel:
    kind = "memory"

    def __init__(self, prefix):
        self.prefix = prefix
        self.sent = []

    def send(self, message):
        self.sent.append(message)
        return DeliveryResult(DeliveryStatus.SENT, provider_id=self.prefix + message.key)


class Mute:
    kind = "mute"


def make(settings):
    return MemoryChannel(settings.get("prefix", "mem_"))


def make_mute(settings):
    return Mute()


def make_failing(settings):
    raise RuntimeError("setting 'token' is required")
"""


@pytest.fixture
def plugin_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A third-party channel module, importable by name for the duration of a test."""
    (tmp_path / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, PLUGIN, raising=False)
    yield PLUGIN
    sys.modules.pop(PLUGIN, None)


def _message() -> OutgoingMessage:
    return OutgoingMessage(
        key="recobra:case_1:0:sms",
        customer_id="cus_1",
        kind="payment_failed",
        channel="sms",
        locale="es",
        to="+34600123456",
        text="Hola",
    )


# -- entry points -------------------------------------------------------------------


def test_the_builtin_channels_are_installed() -> None:
    names = available_channels()
    assert {"email", "file", "webhook", "sms", "voice", "push"} <= set(names)
    assert names == sorted(names)


def test_loads_the_file_channel_by_name(tmp_path: Path) -> None:
    channel = load_channel("file", {"directory": str(tmp_path)})
    assert isinstance(channel, FileChannel)
    assert isinstance(channel, Channel)
    result = channel.send(_message())
    assert result.status is DeliveryStatus.SENT
    assert Path(str(result.provider_id)).parent == tmp_path


def test_loads_email_and_webhook_by_name_without_connecting() -> None:
    email = load_channel(" email ", {"host": "mail.acme.test", "sender": "billing@acme.test"})
    assert isinstance(email, SmtpEmailChannel)
    webhook = load_channel("webhook", {"url": "https://crm.acme.test/hook", "secret": "whsec_x"})
    assert isinstance(webhook, WebhookChannel)


def test_a_factory_rejecting_its_settings_names_the_key() -> None:
    with pytest.raises(ChannelLoadError, match="the factory raised ValueError: host: required") as caught:
        load_channel("email", {"sender": "billing@acme.test"})
    assert caught.value.spec == "email"
    assert isinstance(caught.value.__cause__, ValueError)
    assert str(caught.value).startswith("channel 'email': ")


def test_unknown_name_lists_the_installed_channels() -> None:
    with pytest.raises(ChannelLoadError, match="no installed channel of that name") as caught:
        load_channel("pigeon")
    message = str(caught.value)
    assert "'pigeon'" in message
    assert "email" in message
    assert "webhook" in message
    assert "for a channel outside an installed plugin, give package.module:factory" in message


def test_empty_spec_is_rejected() -> None:
    with pytest.raises(ChannelLoadError, match="empty spec; give an installed channel name"):
        load_channel("  ")


def _with_entry_points(monkeypatch: pytest.MonkeyPatch, *points: EntryPoint) -> None:
    def entry_points(*, group: str) -> EntryPoints:
        return EntryPoints([*installed_entry_points(group=group), *(p for p in points if p.group == group)])

    monkeypatch.setattr(loader, "entry_points", entry_points)


def test_a_plugin_entry_point_loads_like_the_builtin_ones(
    monkeypatch: pytest.MonkeyPatch, plugin_module: str
) -> None:
    _with_entry_points(monkeypatch, EntryPoint("memory", f"{plugin_module}:make", ENTRY_POINT_GROUP))
    assert "memory" in available_channels()
    channel = load_channel("memory", {"prefix": "m-"})
    assert channel.kind == "memory"
    assert channel.send(_message()).provider_id == "m-recobra:case_1:0:sms"


def test_an_entry_point_that_cannot_be_imported_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_entry_points(monkeypatch, EntryPoint("broken", "recobra_no_such_plugin:make", ENTRY_POINT_GROUP))
    with pytest.raises(ChannelLoadError, match="could not be loaded") as caught:
        load_channel("broken")
    assert "ModuleNotFoundError" in str(caught.value)


# -- dotted paths -------------------------------------------------------------------


def test_loads_a_channel_by_dotted_path(plugin_module: str) -> None:
    channel = load_channel(f"{plugin_module}:make")
    assert channel.send(_message()).provider_id == "mem_recobra:case_1:0:sms"
    assert isinstance(load_channel("recobra.channels.file:from_settings"), FileChannel)


def test_a_result_without_send_is_not_a_channel(plugin_module: str) -> None:
    with pytest.raises(ChannelLoadError, match=r"returned a Mute, which is not a Channel") as caught:
        load_channel(f"{plugin_module}:make_mute")
    assert "(missing or not callable: send)" in str(caught.value)


def test_a_plain_value_is_not_a_channel() -> None:
    with pytest.raises(ChannelLoadError, match=r"returned a str.*kind \(a str\), send"):
        load_channel("json:dumps")


def test_a_failing_factory_gives_its_message(plugin_module: str) -> None:
    with pytest.raises(ChannelLoadError, match="RuntimeError: setting 'token' is required"):
        load_channel(f"{plugin_module}:make_failing")


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("recobra_no_such_module:make", "module 'recobra_no_such_module' not found"),
        ("recobra.channels.file:nothing", "module 'recobra.channels.file' has no attribute 'nothing'"),
        ("recobra.channels.file:DEFAULT_SENDER", r"not callable \(it is a str\)"),
        ("a:b:c", r"package\.module:factory"),
    ],
)
def test_dotted_path_errors(spec: str, complaint: str) -> None:
    with pytest.raises(ChannelLoadError, match=complaint):
        load_channel(spec)


# -- the generic loader -------------------------------------------------------------


def test_error_classes() -> None:
    assert issubclass(ChannelLoadError, PluginLoadError)
    assert issubclass(GatewayLoadError, PluginLoadError)
    assert issubclass(PluginLoadError, ValueError)
    assert not issubclass(ChannelLoadError, GatewayLoadError)
    error = PluginLoadError("x", "broken")
    assert str(error) == "plugin 'x': broken"
    assert (error.spec, error.problem) == ("x", "broken")


def test_load_plugin_on_another_group(plugin_module: str) -> None:
    def lookup(group: str) -> Iterable[EntryPoint]:
        return [EntryPoint("mem", f"{plugin_module}:make", "acme.things")] if group == "acme.things" else []

    assert available_plugins("acme.things", lookup=lookup) == ["mem"]
    thing = load_plugin("acme.things", "mem", {"prefix": "p"}, lambda _: [], lookup=lookup)
    assert type(thing).__name__ == "MemoryChannel"

    with pytest.raises(PluginLoadError, match=r"^plugin 'nope': no installed plugin .*installed: mem"):
        load_plugin("acme.things", "nope", None, lambda _: [], lookup=lookup)
    with pytest.raises(PluginLoadError, match=r"which is not a Thing \(missing or not callable: frob\)"):
        load_plugin("acme.things", "mem", None, lambda _: ["frob"], protocol="Thing", lookup=lookup)
    with pytest.raises(PluginLoadError, match=r"which is not a plugin \(missing"):
        load_plugin("acme.things", "mem", None, lambda _: ["frob"], lookup=lookup)


def test_the_check_gets_the_factory_result(plugin_module: str) -> None:
    seen: list[object] = []

    def check(plugin: object) -> list[str]:
        seen.append(plugin)
        return []

    plugin = load_plugin(ENTRY_POINT_GROUP, f"{plugin_module}:make", {}, check)
    assert seen == [plugin]


def test_missing_members() -> None:
    class Half:
        kind = 3
        send = "not callable"

        def close(self) -> None: ...

    assert missing_members(Half(), ("kind", "send", "close", "open"), strings={"kind"}) == [
        "kind (a str)",
        "send",
        "open",
    ]
    assert missing_members(FileChannel(None), ("kind", "send"), strings={"kind"}) == []
