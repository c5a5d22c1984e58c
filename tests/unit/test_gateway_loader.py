"""Loading gateways by entry-point name or dotted path, and the errors when that fails."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import EntryPoint, EntryPoints
from importlib.metadata import entry_points as installed_entry_points
from pathlib import Path

import pytest

from recobra.domain.model import Funding
from recobra.domain.money import Money
from recobra.gateways import loader
from recobra.gateways.loader import (
    ENTRY_POINT_GROUP,
    GatewayLoadError,
    available_gateways,
    load_gateway,
)
from recobra.gateways.simulated import SimulatedGateway
from recobra.ports import CardRef, ChargeRequest, ChargeStatus, PaymentGateway

FAKE = "fake_gateway_module"


@pytest.fixture
def fake_module_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make tests/unit importable by module name, whatever pytest's import mode."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    yield
    sys.modules.pop(FAKE, None)


def _request(key: str = "recobra:case_1:0", currency: str = "EUR") -> ChargeRequest:
    return ChargeRequest(
        idempotency_key=key,
        invoice_id="inv_1",
        customer_id="cus_1",
        subscription_id="sub_1",
        amount=Money(1999, currency),
        payment_method=CardRef("pm_1", "tok_1", "visa", "4242", 12, 2030, Funding.CREDIT),
        attempt_number=0,
        attempted_at=datetime(2024, 3, 5, 12, tzinfo=UTC),
        customer_country="ES",
        customer_timezone="Europe/Madrid",
    )


# -- entry points -------------------------------------------------------------------


def test_simulated_is_an_installed_gateway() -> None:
    assert "simulated" in available_gateways()


def test_loads_the_simulated_gateway_by_entry_point_name_with_settings() -> None:
    gateway = load_gateway("simulated", {"seed": "7", "failure_rate_credit": "0"})
    assert isinstance(gateway, SimulatedGateway)
    assert isinstance(gateway, PaymentGateway)
    assert gateway.seed == 7
    assert gateway.charge(_request()).status is ChargeStatus.SUCCEEDED


def test_spec_is_stripped_and_settings_are_optional() -> None:
    assert isinstance(load_gateway("  simulated "), SimulatedGateway)


def test_unknown_name_lists_the_installed_gateways() -> None:
    with pytest.raises(GatewayLoadError, match="no installed gateway") as caught:
        load_gateway("stripe-ish")
    message = str(caught.value)
    assert "'stripe-ish'" in message
    assert "installed: " in message
    assert "simulated" in message
    assert "package.module:factory" in message
    assert caught.value.spec == "stripe-ish"


def test_empty_spec_is_rejected() -> None:
    with pytest.raises(GatewayLoadError, match="empty spec"):
        load_gateway("   ")


def _with_entry_points(monkeypatch: pytest.MonkeyPatch, *points: EntryPoint) -> None:
    """Installed entry points plus these, as a plugin's pyproject would declare them."""

    def entry_points(*, group: str) -> EntryPoints:
        return EntryPoints([*installed_entry_points(group=group), *(p for p in points if p.group == group)])

    monkeypatch.setattr(loader, "entry_points", entry_points)


@pytest.mark.usefixtures("fake_module_path")
def test_a_plugin_entry_point_loads_like_the_builtin_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_entry_points(monkeypatch, EntryPoint("memory", f"{FAKE}:make", ENTRY_POINT_GROUP))
    assert available_gateways() == ["memory", "simulated", "stripe"]
    gateway = load_gateway("memory", {"currency": "USD"})
    assert gateway.name == "memory"
    assert gateway.charge(_request(currency="USD")).status is ChargeStatus.SUCCEEDED


def test_an_entry_point_that_cannot_be_imported_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    point = EntryPoint("broken", "recobra_no_such_plugin:factory", ENTRY_POINT_GROUP)
    _with_entry_points(monkeypatch, point)
    with pytest.raises(GatewayLoadError, match="could not be loaded") as caught:
        load_gateway("broken")
    assert "recobra_no_such_plugin:factory" in str(caught.value)
    assert "ModuleNotFoundError" in str(caught.value)


# -- dotted paths -------------------------------------------------------------------


@pytest.mark.usefixtures("fake_module_path")
def test_loads_a_gateway_by_dotted_path() -> None:
    gateway = load_gateway(f"{FAKE}:make", {"currency": "EUR"})
    assert isinstance(gateway, PaymentGateway)
    assert gateway.name == "memory"
    first = gateway.charge(_request())
    assert first.status is ChargeStatus.SUCCEEDED
    assert gateway.charge(_request()) == first
    assert gateway.attempt_status("recobra:case_1:0") == first
    assert gateway.attempt_status("other").status is ChargeStatus.NOT_FOUND


def test_dotted_path_to_the_simulated_factory() -> None:
    gateway = load_gateway("recobra.gateways.simulated:from_settings", {"seed": "3"})
    assert isinstance(gateway, SimulatedGateway)
    assert gateway.seed == 3


@pytest.mark.usefixtures("fake_module_path")
def test_dotted_path_may_name_a_nested_attribute() -> None:
    with pytest.raises(GatewayLoadError, match=r"not callable \(it is a str\)"):
        load_gateway(f"{FAKE}:MemoryGateway.name")


def test_missing_module() -> None:
    with pytest.raises(GatewayLoadError, match="module 'recobra_no_such_module' not found"):
        load_gateway("recobra_no_such_module:make")


def test_module_that_fails_to_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "recobra_test_broken_plugin.py").write_text(
        "import recobra_test_missing_dependency\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "recobra_test_broken_plugin", raising=False)
    with pytest.raises(GatewayLoadError, match="could not be imported") as caught:
        load_gateway("recobra_test_broken_plugin:make")
    assert "recobra_test_missing_dependency" in str(caught.value)


def test_module_that_raises_on_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "recobra_test_raising_plugin.py").write_text(
        "raise RuntimeError('plugin misconfigured')\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "recobra_test_raising_plugin", raising=False)
    with pytest.raises(GatewayLoadError, match="RuntimeError: plugin misconfigured"):
        load_gateway("recobra_test_raising_plugin:make")


@pytest.mark.usefixtures("fake_module_path")
def test_missing_attribute() -> None:
    with pytest.raises(GatewayLoadError, match=f"module '{FAKE}' has no attribute 'nothing_here'"):
        load_gateway(f"{FAKE}:nothing_here")


@pytest.mark.usefixtures("fake_module_path")
def test_not_callable() -> None:
    with pytest.raises(GatewayLoadError, match=r"not callable \(it is a int\)") as caught:
        load_gateway(f"{FAKE}:NOT_CALLABLE")
    assert f"'{FAKE}:NOT_CALLABLE'" in str(caught.value)


@pytest.mark.usefixtures("fake_module_path")
def test_factory_that_raises_gives_its_message() -> None:
    with pytest.raises(GatewayLoadError, match="RuntimeError: setting 'api_key' is required") as caught:
        load_gateway(f"{FAKE}:make_failing")
    assert isinstance(caught.value.__cause__, RuntimeError)


@pytest.mark.usefixtures("fake_module_path")
def test_result_that_is_not_a_gateway_names_the_missing_methods() -> None:
    with pytest.raises(GatewayLoadError, match="not a PaymentGateway") as caught:
        load_gateway(f"{FAKE}:make_half")
    message = str(caught.value)
    assert "HalfGateway" in message
    for member in ("attempt_status", "cancel_subscription", "pause_subscription", "mark_unpaid"):
        assert member in message
    assert "charge," not in message


def test_factory_returning_a_plain_value() -> None:
    with pytest.raises(GatewayLoadError, match=r"returned a str.*name \(a str\), charge"):
        load_gateway("json:dumps")


@pytest.mark.parametrize("spec", [":make", "module:", "a:b:c"])
def test_malformed_dotted_path(spec: str) -> None:
    with pytest.raises(GatewayLoadError, match=r"package\.module:factory"):
        load_gateway(spec)


def test_load_error_is_a_value_error() -> None:
    assert issubclass(GatewayLoadError, ValueError)
