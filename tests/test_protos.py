"""The .proto files shipped under proto/ for other languages: each is what the server runs, and
the error reasons are the same in the contract, the code and the guide."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from zfnet.errors import REASONS
from zfnet.server import reflection
from zfnet.v1 import zfnet_pb2

ROOT = Path(__file__).resolve().parents[1]


def file_proto(descriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)
    return proto


def _clear_json_names(messages) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _clear_json_names(message.nested_type)


def compiled(protos, name: str) -> descriptor_pb2.FileDescriptorProto:
    """The file as protoc compiles it, less the JSON names protoc adds (runtime descriptors omit them)."""
    proto = next(f for f in protos(name).file if f.name == name)
    _clear_json_names(proto.message_type)
    return proto


@pytest.mark.parametrize(
    "name, runtime",
    [
        ("grpc/health/v1/health.proto", health_pb2.DESCRIPTOR),
        ("google/rpc/status.proto", status_pb2.DESCRIPTOR),
        ("google/rpc/error_details.proto", error_details_pb2.DESCRIPTOR),
        ("zfnet/v1/zfnet.proto", zfnet_pb2.DESCRIPTOR),
    ],
)
def test_shipped_proto_is_what_the_server_runs(protos, name: str, runtime) -> None:
    shipped, running = compiled(protos, name), file_proto(runtime)
    running.name = name  # grpcio-health-checking registers its copy as grpc_health/v1/health.proto
    assert shipped == running


def test_shipped_reflection_v1_is_what_the_server_serves(protos) -> None:
    assert compiled(protos, "grpc/reflection/v1/reflection.proto") == reflection.v1_file()


def test_error_reasons_agree_in_code_contract_and_guide() -> None:
    in_proto = [n for n in zfnet_pb2.ErrorReason.keys() if n != "ERROR_REASON_UNSPECIFIED"]
    assert sorted(in_proto) == sorted(REASONS)
    guide = (ROOT / "docs" / "clients.md").read_text()
    table = set(re.findall(r"^\| `([A-Z_]+)` \|", guide, flags=re.M))
    assert table == set(REASONS), f"docs/clients.md reason table: missing {set(REASONS) - table}, extra {table - set(REASONS)}"


def test_every_reason_raised_is_documented() -> None:
    """Reasons are plain strings at the raise sites: each one used must be in the catalogue."""
    used = set()
    for path in [*ROOT.glob("server/**/*.py"), *ROOT.glob("core/**/*.py"), *ROOT.glob("client/**/*.py")]:
        used |= set(re.findall(r"""reason=["']([A-Z_]+)["']""", path.read_text()))
    assert used, "no reasons found: the pattern is stale"
    assert used <= set(REASONS), used - set(REASONS)
