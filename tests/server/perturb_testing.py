"""What the perturbation tests share: a connection to the real server, and the independent reference
(bare onnxruntime on the bundled file, numpy, one image at a time)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from zfnet.client.api import Client
from zfnet.converters.graph import PREPROCESSING_KEY, get_metadata
from zfnet.tensors import CHANNEL_OPTIONS
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

TIMEOUT = 120
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Conn:
    """A raw stub and a Python client on the ``server`` fixture, the bundled model uploaded."""

    stub: zfnet_pb2_grpc.ZfnetStub
    client: Client
    sha: str
    path: Path

    @property
    def ref(self) -> pb.ModelRef:
        return pb.ModelRef(sha256=self.sha)


@pytest.fixture()
def conn(server, reference_onnx: Path) -> Iterator[Conn]:
    target, _ = server
    channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    client = Client(target)
    try:
        yield Conn(zfnet_pb2_grpc.ZfnetStub(channel), client, client.ensure_model(reference_onnx), reference_onnx)
    finally:
        client.close()
        channel.close()


def nchw(paths: list[Path]) -> np.ndarray:
    """Images as the model's float32 (N, 3, H, W) input in 0..255, decoded with PIL."""
    out = []
    for path in paths:
        with Image.open(path) as img:
            out.append(np.asarray(img.convert("RGB"), np.float32).transpose(2, 0, 1))
    return np.stack(out)


def encoded(paths: list[Path]) -> list[pb.Image]:
    return [pb.Image(encoded=p.read_bytes(), label=p.name) for p in paths]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Bare:
    """The bundled model on bare onnxruntime (its file exposes every layer), run as the test says."""

    def __init__(self, path: Path) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.mean = np.asarray(json.loads(get_metadata(onnx.load(path), PREPROCESSING_KEY))["mean"], np.float32)

    def run(self, names: list[str], images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(names, {self.input: images.astype(np.float32)})

    def one_at_a_time(self, names: list[str], images: list[np.ndarray]) -> list[np.ndarray]:
        """Each image through its own forward pass; the outputs stacked."""
        rows = [self.run(names, image[None]) for image in images]
        return [np.concatenate([row[k] for row in rows]) for k in range(len(names))]


def stream(call, request) -> tuple[list[pb.JobProgress], object]:
    """All progress messages of a streaming call, and its result."""
    progress, result = [], None
    for reply in call(request, timeout=TIMEOUT):
        kind = reply.WhichOneof("reply")
        assert result is None, "a message came after the result"
        if kind == "progress":
            progress.append(reply.progress)
        else:
            result = reply.result
    assert result is not None, "the stream ended without a result"
    return progress, result


def expect_stream_error(call, request, code: grpc.StatusCode, *words: str) -> str:
    """The streaming call fails with ``code`` and a message naming every one of ``words``."""
    with pytest.raises(grpc.RpcError) as info:
        list(call(request, timeout=TIMEOUT))
    details = info.value.details() or ""
    assert info.value.code() == code, f"{info.value.code()}: {details}"
    for word in words:
        assert word.lower() in details.lower(), f"{word!r} not in {details!r}"
    return details


def still_serves(c: Conn, image: Path) -> None:
    """The server answers a good request after a bad one."""
    reply = c.stub.Predict(pb.PredictRequest(model=c.ref, images=encoded([image])), timeout=TIMEOUT)
    assert len(reply.predictions) == 1
