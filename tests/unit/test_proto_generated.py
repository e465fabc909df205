"""The committed generated code in cluster/pb/ matches what scripts/gen_protos.py produces now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _gen_protos():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    written = _gen_protos().generate(tmp_path)
    committed = ROOT / "cluster" / "pb"
    names = sorted(path.name for path in written)
    assert names == sorted(
        path.name
        for path in committed.iterdir()
        if path.is_file() and not path.name.endswith(".pyc")
    ), "cluster/pb/ has different files: run scripts/gen_protos.py and commit"
    stale = [
        name for name in names if (tmp_path / name).read_text() != (committed / name).read_text()
    ]
    assert not stale, f"stale generated code {stale}: run scripts/gen_protos.py and commit"


def test_generated_code_imports_relatively_and_names_the_contract() -> None:
    from cluster.pb import billing_pb2, billing_pb2_grpc

    assert billing_pb2.DESCRIPTOR.package == "billing.v1"
    services = set(billing_pb2.DESCRIPTOR.services_by_name)
    assert services == {"Charging", "Accounts", "Tariffs"}
    charging = billing_pb2.DESCRIPTOR.services_by_name["Charging"]
    stream = charging.methods_by_name["CreditControlStream"]
    assert stream.client_streaming and stream.server_streaming
    assert hasattr(billing_pb2_grpc, "add_ChargingServicer_to_server")
    text = (ROOT / "cluster" / "pb" / "billing_pb2_grpc.py").read_text()
    assert "from billing.v1" not in text


def test_enums_have_a_zero_unspecified_value_and_prefixed_names() -> None:
    from cluster.pb import billing_pb2

    for enum in billing_pb2.DESCRIPTOR.enum_types_by_name.values():
        prefix = "".join(
            f"_{char}" if char.isupper() and index else char.upper()
            for index, char in enumerate(enum.name)
        )
        assert enum.values[0].number == 0
        assert enum.values[0].name == f"{prefix}_UNSPECIFIED"
        assert all(value.name.startswith(f"{prefix}_") for value in enum.values)
