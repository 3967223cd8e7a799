"""The device path of ``runtime.run`` (IO binding, forward tensors handed to the projection session
as OrtValues), forced onto the CPU here: the same reconstructions and top-k results as plain runs.
On a GPU machine the same code runs with device "cuda" (tests/server/test_gpu.py)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from zfnet.server import runtime
from zfnet.server.datasets import DatasetStore
from zfnet.server.engine import Engine
from zfnet.server.images import ImageInput
from zfnet.server.models import ModelStore


@pytest.fixture()
def bound_runs(monkeypatch) -> list[int]:
    """Force the IO-binding path (device "cpu"); counts its runs."""
    runs = []
    original = ort.InferenceSession.run_with_iobinding

    def counted(self, binding, *args):
        runs.append(1)
        return original(self, binding, *args)

    monkeypatch.setattr(ort.InferenceSession, "run_with_iobinding", counted)
    monkeypatch.setattr(runtime, "device", lambda: "cpu")
    return runs


def test_forward_tensors_stay_bound_between_the_two_sessions(reference_onnx, sample_images, monkeypatch) -> None:
    engine = Engine(ModelStore())
    model = engine.store.add(reference_onnx.read_bytes(), "m")
    images = [ImageInput(encoded=p.read_bytes()) for p in sample_images[:8]]
    _, plain = engine.deconv(model, images, 4, None, 9, "max", "deconvnet")
    seen: list[type] = []
    run = runtime.run
    monkeypatch.setattr(runtime, "run", lambda session, names, feeds, host=None: (seen.extend(type(v) for v in feeds.values()), run(session, names, feeds, host))[1])
    monkeypatch.setattr(runtime, "device", lambda: "cpu")
    _, bound = engine.deconv(model, images, 4, None, 9, "max", "deconvnet")
    assert ort.OrtValue in seen, "the projection session was fed host arrays only"
    assert len(plain) == len(bound) == 72
    for a, b in zip(plain, bound):
        assert (a.image, a.channel, a.location) == (b.image, b.channel, b.location)
        np.testing.assert_array_equal(a.pixels, b.pixels)


def test_top_job_on_the_device_path_equals_plain_runs(reference_onnx, bound_runs, monkeypatch, sample_images) -> None:
    root = sample_images[0].parents[2]  # samples/, holding the data set cifar10
    def job():
        engine = Engine(ModelStore(), DatasetStore(root))
        model = engine.store.add(reference_onnx.read_bytes(), "m")
        source = engine.datasets.source("cifar10", 0, 64, 32)
        parts = list(engine.top(model, source, data="dataset:x", layers=[2], channels=[0, 5, 9], k=4, by="max", method="deconvnet", stage="all", state=None))
        return [p for p in parts if type(p).__name__ == "Entry"]

    bound = job()
    assert bound_runs, "the IO-binding path did not run"
    monkeypatch.setattr(runtime, "device", lambda: None)
    plain = job()
    assert len(plain) == len(bound) == 12
    for a, b in zip(plain, bound):
        assert (a.layer, a.channel, a.rank, a.index, a.location) == (b.layer, b.channel, b.rank, b.index, b.location)
        np.testing.assert_array_equal(a.reconstruction, b.reconstruction)


def test_cuda_options_do_not_stall_and_follow_the_budget() -> None:
    runtime.limit_gpu_memory(3 << 30)
    try:
        options = runtime.cuda_options()
        assert options["cudnn_conv_algo_search"] == "HEURISTIC"
        assert options["arena_extend_strategy"] == "kSameAsRequested"
        assert options["use_tf32"] == "0"
        assert options["gpu_mem_limit"] == str(3 << 30)
    finally:
        runtime.limit_gpu_memory(0)
    assert "gpu_mem_limit" not in runtime.cuda_options()


def test_features_on_the_device_path_pool_on_the_device_and_equal_plain_runs(reference_onnx, sample_images, monkeypatch) -> None:
    """The forward values stay on the device and the feature head pools them there: only rows come back."""
    from zfnet.wire.features import Pooling

    root = sample_images[0].parents[2]
    engine = Engine(ModelStore(), DatasetStore(root))
    model = engine.store.add(reference_onnx.read_bytes(), "m")
    layers = engine.feature_layers(model, [(1, Pooling.parse("grid:3")), (5, None), ("relu7", None), ("pixels", None)], Pooling.parse("max"))

    def job() -> list[np.ndarray]:
        parts = list(engine.features(model, layers, engine.datasets.source("cifar10", 0, 40, 16), "float16")[1])
        return [np.concatenate([rows[k] for _, rows in parts]) for k in range(len(layers))]

    plain = job()
    fed: list[type] = []
    run = runtime.run
    monkeypatch.setattr(runtime, "run", lambda session, names, feeds, host=None: (fed.extend(type(v) for v in feeds.values()), run(session, names, feeds, host))[1])
    monkeypatch.setattr(runtime, "device", lambda: "cpu")
    bound = job()
    assert fed.count(ort.OrtValue) == 3 * 3, "the head was not fed the forward pass's device tensors"  # 3 batches x 3 network layers
    for a, b in zip(plain, bound):
        assert a.dtype == b.dtype == np.float16 and a.shape == b.shape and a.shape[0] == 40
        np.testing.assert_array_equal(a, b)
