"""Server reflection under its standard name, ``grpc.reflection.v1``, beside ``v1alpha``.

grpcio-reflection serves only ``grpc.reflection.v1alpha``, so tools that ask the standard
``grpc.reflection.v1`` got UNIMPLEMENTED. The two are one protocol: the same messages, field for
field, under another package name (``proto/grpc/reflection/v1/reflection.proto``). So the v1alpha
servicer answers on both names, and the v1 file descriptor, derived from v1alpha's by renaming its
package, joins the descriptor pool so that reflection can describe itself under either name.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha

V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
SERVICE_NAMES = (SERVICE_NAME, reflection.SERVICE_NAME)  # v1, v1alpha


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's file descriptor under v1's file name, package and options."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha.DESCRIPTOR.CopyToProto(proto)
    text = text_format.MessageToString(proto).replace(f'".{proto.package}.', f'".{V1_PACKAGE}.')  # type names
    proto = text_format.Parse(text, descriptor_pb2.FileDescriptorProto())
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.ClearField("deprecated")
    return proto


def _register_v1(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.Add(v1_file())


def enable(service_names: Iterable[str], server: grpc.Server) -> None:
    """Reflection on ``server`` for ``service_names`` and itself, as ``grpc.reflection.v1`` and ``v1alpha``."""
    pool = descriptor_pool.Default()
    _register_v1(pool)
    servicer = reflection.ReflectionServicer((*service_names, *SERVICE_NAMES), pool=pool)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        # v1 and v1alpha messages are identical on the wire
        request_deserializer=v1alpha.ServerReflectionRequest.FromString,
        response_serializer=v1alpha.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}) for name in SERVICE_NAMES
    ])
