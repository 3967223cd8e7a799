"""What the perturbation tests share: a connection to the real server, and the independent reference
(bare onnxruntime on the bundled file, numpy, one image at a time)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from zfnet.converters.graph import PREPROCESSING_KEY, get_metadata
from zfnet.server import attribution
from zfnet.v1 import zfnet_pb2 as pb

from service_testing import CIFAR10, Conn, encoded, still_serves  # noqa: F401  (shared with the service tests)

TIMEOUT = 120  # a perturbation stream runs many forward passes


def relative_l2(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / max(float(np.linalg.norm(reference)), 1e-12))


def tensor(value: object) -> torch.Tensor:
    """A Captum attribution of one input (typed as a tensor or a tuple of them): the tensor."""
    assert isinstance(value, torch.Tensor), type(value)
    return value


def same_noise(samples: int, seed: int, image: int, sigma: float, shape: tuple[int, ...]):
    """A stand-in for Captum's ``NoiseTunnel._add_noise_to_input`` that draws the server's noise for
    image ``image`` (:func:`zfnet.server.attribution.noise`), so both sides average the same copies."""
    noise = torch.from_numpy(np.stack([attribution.noise(seed, image, s, shape) * np.float32(sigma) for s in range(samples)]))

    def add(input: torch.Tensor, stdev: float, nt_samples_partition: int) -> torch.Tensor:
        assert nt_samples_partition == samples
        return input.repeat_interleave(nt_samples_partition, dim=0) + noise

    return staticmethod(add)


def nchw(paths: list[Path]) -> np.ndarray:
    """Images as the model's float32 (N, 3, H, W) input in 0..255, decoded with PIL."""
    out = []
    for path in paths:
        with Image.open(path) as img:
            out.append(np.asarray(img.convert("RGB"), np.float32).transpose(2, 0, 1))
    return np.stack(out)


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
        self.mean = np.asarray(json.loads(get_metadata(onnx.load(path), PREPROCESSING_KEY) or "{}")["mean"], np.float32)

    def run(self, names: list[str], images: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(out) for out in self.session.run(names, {self.input: images.astype(np.float32)})]

    def one_at_a_time(self, names: list[str], images: list[np.ndarray]) -> list[np.ndarray]:
        """Each image through its own forward pass; the outputs stacked."""
        rows = [self.run(names, image[None]) for image in images]
        return [np.concatenate([row[k] for row in rows]) for k in range(len(names))]


def stream(call, request) -> tuple[list[pb.JobProgress], Any]:
    """All progress messages of a streaming call, and its result (the analysis' own result message)."""
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
