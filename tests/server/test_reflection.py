"""Server reflection as other tools use it: the standard ``grpc.reflection.v1`` (and the older
v1alpha), with a client built only from the shipped proto/grpc/reflection/v1/reflection.proto,
then a zfnet call made with descriptors obtained only through reflection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from zfnet.client.api import Client
from zfnet.tensors import CHANNEL_OPTIONS
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

TIMEOUT = 60
SERVICES = {"zfnet.v1.Zfnet", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}


class ReflectionV1:
    """A grpc.reflection.v1 client whose messages come from the shipped .proto, in a private pool."""

    def __init__(self, channel: grpc.Channel, protos) -> None:
        pool = descriptor_pool.DescriptorPool()
        for f in protos("grpc/reflection/v1/reflection.proto").file:
            pool.Add(f)
        self.Request = message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest"))
        response = message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse"))
        self._call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=self.Request.SerializeToString, response_deserializer=response.FromString,
        )

    def ask(self, **request) -> Any:
        """The first reply, a message of a class built at run time from its descriptor (no static type)."""
        return next(iter(self._call(iter([self.Request(**request)]), timeout=TIMEOUT)))

    def services(self) -> set[str]:
        return {s.name for s in self.ask(list_services="").list_services_response.service}

    def files(self, symbol: str) -> list[descriptor_pb2.FileDescriptorProto]:
        reply = self.ask(file_containing_symbol=symbol)
        assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
        return [descriptor_pb2.FileDescriptorProto.FromString(b) for b in reply.file_descriptor_response.file_descriptor_proto]


def pool_of(files: list[descriptor_pb2.FileDescriptorProto]) -> descriptor_pool.DescriptorPool:
    """A fresh pool holding ``files``, each added after the files it imports."""
    pool, pending = descriptor_pool.DescriptorPool(), list(files)
    while pending:
        ready = [f for f in pending if all(_has(pool, d) for d in f.dependency)]
        assert ready, f"unresolved imports among {[f.name for f in pending]}"
        for f in ready:
            pool.Add(f)
            pending.remove(f)
    return pool


def _has(pool: descriptor_pool.DescriptorPool, name: str) -> bool:
    try:
        pool.FindFileByName(name)
    except KeyError:
        return False
    return True


@pytest.fixture()
def channel(server) -> Iterator[grpc.Channel]:
    target, _ = server
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as ch:
        yield ch


def test_v1_lists_services_and_a_call_runs_on_reflected_descriptors(server, channel, protos, reference_onnx: Path) -> None:
    target, _ = server
    with Client(target) as client:
        sha = client.ensure_model(reference_onnx)
    reflection = ReflectionV1(channel, protos)
    assert reflection.services() == SERVICES

    pool = pool_of(reflection.files("zfnet.v1.Zfnet"))
    method = pool.FindServiceByName("zfnet.v1.Zfnet").methods_by_name["GetModelInfo"]
    request_class = message_factory.GetMessageClass(method.input_type)
    reply_class = message_factory.GetMessageClass(method.output_type)
    assert request_class is not pb.ModelRef and method.input_type.file.pool is pool
    call = channel.unary_unary(f"/{method.containing_service.full_name}/{method.name}",
                               request_serializer=request_class.SerializeToString, response_deserializer=reply_class.FromString)
    reply = call(request_class(sha256=sha), timeout=TIMEOUT)
    assert reply.sha256 == sha and list(reply.input_shape) == [-1, 3, 32, 32] and len(reply.classes) == 10
    assert [layer.number for layer in reply.layers if layer.number] == list(range(1, 9))
    expected = zfnet_pb2_grpc.ZfnetStub(channel).GetModelInfo(pb.ModelRef(sha256=sha), timeout=TIMEOUT)
    assert reply.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def test_v1_describes_itself_as_the_shipped_file_and_resolves_error_details(channel, protos) -> None:
    reflection = ReflectionV1(channel, protos)
    (own,) = reflection.files("grpc.reflection.v1.ServerReflection")
    shipped = next(f for f in protos("grpc/reflection/v1/reflection.proto").file)
    assert own.name == shipped.name and own.package == shipped.package
    assert [m.name for m in own.message_type] == [m.name for m in shipped.message_type]
    assert [(f.name, f.number, f.type, f.type_name) for m in own.message_type for f in m.field] == \
           [(f.name, f.number, f.type, f.type_name) for m in shipped.message_type for f in m.field]
    # tools print error details by resolving their Any type URLs through reflection
    assert any(m.name == "ErrorInfo" for f in reflection.files("google.rpc.ErrorInfo") for m in f.message_type)
    # the health service is described too
    assert any(s.name == "Health" for f in reflection.files("grpc.health.v1.Health") for s in f.service)


def test_v1_unknown_symbol_is_not_found(channel, protos) -> None:
    reply = ReflectionV1(channel, protos).ask(file_containing_symbol="no.such.Service")
    assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_v1alpha_still_answers(channel) -> None:
    db = ProtoReflectionDescriptorDatabase(channel)
    assert set(db.get_services()) == SERVICES
    proto = db.FindFileContainingSymbol("zfnet.v1.Zfnet")
    assert "Deconv" in {m.name for s in proto.service for m in s.method}
