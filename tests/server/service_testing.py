"""What the service tests share (imported by test modules; the ``conn`` fixture is in conftest.py):
a connection to the real server, encoded images, small hand-built models and raw uploads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np
import onnx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper, numpy_helper

from zfnet.client.api import Client
from zfnet.tensors import from_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TIMEOUT = 60


@dataclass
class Conn:
    """A raw stub and a Python client on the ``server`` fixture, the bundled model uploaded."""

    target: str
    engine: object
    stub: zfnet_pb2_grpc.ZfnetStub
    channel: grpc.Channel
    client: Client
    sha: str
    path: Path

    @property
    def ref(self) -> pb.ModelRef:
        return pb.ModelRef(sha256=self.sha)


class Health(Protocol):
    """The standard health service's calls, as ``grpc_health``'s generated stub sets them."""

    Check: grpc.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
    Watch: grpc.UnaryStreamMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]


def health(channel: grpc.Channel) -> Health:
    """A health stub on ``channel``."""
    # typeshed's grpcio-health-checking stub declares HealthStub without the Check and Watch its __init__ sets
    return health_pb2_grpc.HealthStub(channel)  # pyright: ignore[reportReturnType]


def encoded(paths: list[Path]) -> list[pb.Image]:
    return [pb.Image(encoded=p.read_bytes(), label=p.name) for p in paths]


def still_serves(c: Conn, image: Path) -> None:
    """The server answers a good request after a bad one."""
    reply = c.stub.Predict(pb.PredictRequest(model=c.ref, images=encoded([image])), timeout=TIMEOUT)
    probs = from_proto(reply.probabilities)
    assert probs.shape == (1, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def erf_model(path: Path) -> Path:
    """image (N,3,8,8) -> Conv -> Relu -> Sin -> Conv -> Relu: Sin has no backward rule (Erf, which this
    model first used, has one now)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((5, 4, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Sin", ["r1"], ["e1"], name="erf1"),
        helper.make_node("Conv", ["e1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
    ]
    graph = helper.make_graph(
        nodes, "erf", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("r2", TensorProto.FLOAT, ["N", 5, 8, 8])], initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return save(model, path)


def large_model(path: Path, units: int = 400) -> Path:
    """image (N,3,32,32) -> Conv -> Relu -> Flatten -> Gemm (4096 x units floats: over 4 MiB).

    Tensors are named as legacy torch.onnx exports name them (numbers, ``/fc/Gemm``), so the
    expose pass renames them, the graph's own output included."""
    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.01, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4 * 32 * 32, units)).astype(np.float32) * 0.01, "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(units).astype(np.float32), "b2")
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["5"], name="/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["5"], ["6"], name="/relu/Relu"),
        helper.make_node("Flatten", ["6"], ["7"], name="/flatten/Flatten"),
        helper.make_node("Gemm", ["7", "w2", "b2"], ["12"], name="/fc/Gemm"),
    ]
    graph = helper.make_graph(
        nodes, "large", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("12", TensorProto.FLOAT, ["N", units])], initializer=[w1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return save(model, path)


def upload_parts(data: bytes, sha: str, name: str = "m", size: int | None = None) -> Iterator[pb.UploadModelRequest]:
    yield pb.UploadModelRequest(header=pb.UploadHeader(sha256=sha, size=len(data) if size is None else size, name=name))
    for start in range(0, len(data), 1 << 20):
        yield pb.UploadModelRequest(chunk=data[start : start + (1 << 20)])
