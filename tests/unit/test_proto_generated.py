"""The committed generated code in cluster/pb/ matches proto/billing/v1/billing.proto.

Two checks: the contract itself (the descriptor compiled from the .proto now equals the one
embedded in the committed billing_pb2.py: catches a .proto edited without regenerating, whatever
the tool versions), and the exact text of every generated file when the installed code generators
are the versions that produced the committed files (other versions format differently).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "cluster" / "pb"


def _gen_protos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clear_json_names(messages: Any) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _clear_json_names(message.nested_type)


def test_committed_descriptor_is_the_proto_file_compiled_now(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    from google.protobuf import descriptor_pb2

    from cluster.pb import billing_pb2

    include = Path(protoc.__file__).parent / "_proto"
    out = tmp_path / "billing.desc"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{include}",
            f"--descriptor_set_out={out}",
            str(ROOT / "proto" / "billing" / "v1" / "billing.proto"),
        ]
    )
    assert code == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    _clear_json_names(fresh.message_type)  # the Python generator embeds them stripped
    committed = descriptor_pb2.FileDescriptorProto.FromString(billing_pb2.DESCRIPTOR.serialized_pb)
    assert fresh == committed, (
        "proto/billing/v1/billing.proto changed: run scripts/gen_protos.py and commit cluster/pb/"
    )


def test_generated_files_are_exactly_what_the_generator_writes(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    text = (COMMITTED / "billing_pb2_grpc.py").read_text()
    match = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text)
    assert match is not None
    installed = importlib.metadata.version("grpcio-tools")
    if installed != match.group(1):
        pytest.skip(f"committed code is from grpcio-tools {match.group(1)}, installed {installed}")
    written = _gen_protos().generate(tmp_path)
    names = sorted(path.name for path in written)
    committed = sorted(
        path.name
        for path in COMMITTED.iterdir()
        if path.is_file() and path.suffix in (".py", ".pyi")
    )
    assert names == committed, "cluster/pb/ has different files: run scripts/gen_protos.py"
    stale = [
        name for name in names if (tmp_path / name).read_text() != (COMMITTED / name).read_text()
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
    text = (COMMITTED / "billing_pb2_grpc.py").read_text()
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


def test_the_public_names_of_the_issue_are_present() -> None:
    from cluster.pb import billing_pb2

    methods = {
        service.name: set(service.methods_by_name)
        for service in billing_pb2.DESCRIPTOR.services_by_name.values()
    }
    assert {"CreditControl", "CreditControlStream"} <= methods["Charging"]
    assert methods["Accounts"] >= {
        "CreateSubscriber",
        "GetSubscriber",
        "GetBalance",
        "TopUp",
        "Adjust",
    }
    assert methods["Tariffs"] >= {"ListPlans", "GetPlan", "LoadPlan"}
    request = billing_pb2.CreditControlRequest.DESCRIPTOR.fields_by_name
    assert set(request) >= {
        "session_id",
        "request_type",
        "request_number",
        "subscriber_id",
        "event_time",
        "services",
        "requested_action",
        "destination",
        "visited_plmn",
        "retransmission",
    }
    assert request["event_time"].message_type.full_name == "google.protobuf.Timestamp"
    units = billing_pb2.Units.DESCRIPTOR.fields_by_name
    assert all(
        units[name].type == units[name].TYPE_INT64
        for name in (
            "time_s",
            "total_octets",
            "input_octets",
            "output_octets",
            "service_units",
            "money_micros",
        )
    )
