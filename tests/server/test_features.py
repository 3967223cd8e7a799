"""Features over data sets: pooling against torch, rows against bare onnxruntime, the gRPC job."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import cast

import numpy as np
import onnxruntime as ort
import pytest
import torch

from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.errors import InvalidArgument, NotFound, ResourceExhausted
from zfnet.server import features
from zfnet.server.app import create_server
from zfnet.server.models import load
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire import features as wire_features
from zfnet.wire.features import FeatureSpec, Pooling


@pytest.fixture(scope="module")
def model(reference_onnx: Path):
    return load(reference_onnx.read_bytes(), reference_onnx.stem)


def torch_pool(x: np.ndarray, spec: str) -> np.ndarray:
    """The reference: torch's adaptive pooling, flattened per image."""
    t = torch.from_numpy(x)
    pooling = Pooling.parse(spec)
    if pooling.kind == "grid":
        t = torch.nn.functional.adaptive_avg_pool2d(t, pooling.grid)
    elif pooling.kind == "avg":
        t = torch.nn.functional.adaptive_avg_pool2d(t, 1)
    elif pooling.kind == "max":
        t = torch.nn.functional.adaptive_max_pool2d(t, 1)
    return t.reshape(len(x), -1).numpy()


def pooled(x: np.ndarray, spec: str, dtype: str = "float32") -> np.ndarray:
    """``x`` through a feature head of one layer pooled by ``spec``."""
    pooling = Pooling.parse(spec)
    layer = FeatureSpec("x", None, str(pooling), x.shape[1:], pooling.shape("x", x.shape[1:]), x.dtype.name)
    return features.Head([layer], dtype)({"x": x})[0]


@pytest.mark.parametrize("size", [(8, 8), (7, 5), (16, 16), (3, 11)])
@pytest.mark.parametrize("spec", ["none", "avg", "max", "grid:1", "grid:2", "grid:3"])
def test_pooling_equals_torch_adaptive_pooling(size: tuple[int, int], spec: str) -> None:
    x = np.random.default_rng(sum(size)).normal(size=(4, 5, *size)).astype(np.float32)
    got = pooled(x, spec)
    np.testing.assert_allclose(got, torch_pool(x, spec), rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32 and got.shape[1] == np.prod(Pooling.parse(spec).shape("x", x.shape[1:]))


@pytest.mark.parametrize("spec", ["avg", "max", "grid:2", "grid:3"])
def test_pooling_of_one_and_three_spatial_axes_equals_torch(spec: str) -> None:
    """The grid rule reduces one axis at a time: 1-D and 3-D maps, against torch's adaptive pooling."""
    rng = np.random.default_rng(3)
    for x, adaptive in ((rng.normal(size=(3, 4, 7)), "1d"), (rng.normal(size=(2, 3, 5, 6, 4)), "3d")):
        x = x.astype(np.float32)
        pooling = Pooling.parse(spec)
        kind = "max" if pooling.kind == "max" else "avg"
        want = getattr(torch.nn.functional, f"adaptive_{kind}_pool{adaptive}")(torch.from_numpy(x), pooling.grid or 1)
        np.testing.assert_allclose(pooled(x, spec), want.reshape(len(x), -1).numpy(), rtol=1e-5, atol=1e-6)


def test_head_casts_other_tensor_types_to_float32_and_stores_float16() -> None:
    x = np.random.default_rng(4).integers(0, 1000, size=(3, 2, 6, 6)).astype(np.int64)
    got = pooled(x, "grid:2", "float16")
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), torch_pool(x.astype(np.float32), "grid:2"), rtol=1e-3)


def test_pooling_is_refused_where_it_has_no_meaning() -> None:
    for bad in ("mean", "grid", "grid:0", "grid:x", "avg:2", ""):
        with pytest.raises(InvalidArgument, match="pooling"):
            Pooling.parse(bad)
    with pytest.raises(InvalidArgument, match="layer fc7 has no spatial axes .* use none"):
        Pooling.parse("avg").shape("fc7", (256,))
    with pytest.raises(InvalidArgument, match="grid is finer than its 4x4 map"):
        Pooling.parse("grid:5").shape("pool5", (64, 4, 4))
    assert Pooling.parse("none").shape("fc7", (256,)) == (256,)
    assert str(Pooling.parse(" GRID:3 ")) == "grid:3"


def test_plan_applies_the_default_to_spatial_layers_only(model) -> None:
    plan = features.plan(model, [(1, None), ("relu7", None), (5, Pooling("max")), ("pixels", None)], Pooling.parse("grid:2"))
    assert [(f.name, f.number, str(f.pooling), f.shape) for f in plan] == [
        ("pool1", 1, "grid:2", (32, 2, 2)), ("relu7", 7, "none", (256,)), ("pool5", 5, "max", (64,)), ("pixels", None, "none", (3, 32, 32)),
    ]
    assert [f.layer_shape for f in plan] == [(32, 16, 16), (256,), (64, 4, 4), (3, 32, 32)]
    with pytest.raises(InvalidArgument, match="layer relu7 has no spatial axes"):
        features.plan(model, [(7, Pooling("avg"))])
    with pytest.raises(InvalidArgument, match="pool1 asked for more than once"):
        features.plan(model, [(1, None), ("pool1", None)])
    with pytest.raises(NotFound, match="layer 9 is out of range"):
        features.plan(model, [(9, None)])
    with pytest.raises(NotFound, match="no layer named 'conv9'"):
        features.plan(model, [("conv9", None)])


def bare_onnxruntime(onnx_path: Path, files: list[Path], names: list[str]) -> dict[str, np.ndarray]:
    """Activations by a plain onnxruntime session on images decoded one by one with PIL."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.stack([imagefolder.read_rgb(p, (32, 32)) for p in files]).astype(np.float32).transpose(0, 3, 1, 2)
    out = dict(zip(names, map(np.asarray, session.run([n for n in names if n != "pixels"], {session.get_inputs()[0].name: x}))))
    out["pixels"] = x
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_features_equal_bare_onnxruntime_pooled_in_numpy(server, reference_onnx: Path, sample_images: list[Path], dtype: str) -> None:
    target, _ = server
    files = sorted(sample_images)[:40]
    data = files[0].parents[1]  # samples/cifar10: the stream covers all 200, rows [0, 40) are checked
    pools = {"1": "grid:3", "relu4": "avg", "5": "max"}
    with Client(target) as client:
        stream = client.features(reference_onnx, data, ["1", "relu4", "5", "7", "pixels"], "grid:2", pools, dtype, 0, 40, 16)
        batches = list(stream)
    header = stream.header
    assert [(s.name, s.pooling, s.shape) for s in header.layers] == [
        ("pool1", "grid:3", (32, 3, 3)), ("relu4", "avg", (128,)), ("pool5", "max", (64,)), ("relu7", "none", (256,)), ("pixels", "none", (3, 32, 32)),
    ]
    assert (header.start, header.stop, header.batch_size, header.size) == (0, 40, 16, 200)
    folder = imagefolder.scan(data)
    assert [len(b.indices) for b in batches] == [16, 16, 8] and batches[-1].done == 40 == batches[-1].total
    assert np.concatenate([b.indices for b in batches]).tolist() == list(range(40))
    assert np.concatenate([b.labels for b in batches]).tolist() == folder.labels[:40].tolist()
    assert [p for b in batches for p in b.paths] == [str(p) for p in folder.files[:40]]
    reference = bare_onnxruntime(reference_onnx, folder.files[:40], [s.name for s in header.layers])
    for k, spec in enumerate(header.layers):
        got = np.concatenate([b.features[k] for b in batches])
        assert got.dtype == np.dtype(dtype) and got.shape == (40, spec.size)
        want = torch_pool(reference[spec.name], spec.pooling) if len(spec.layer_shape) == 3 else reference[spec.name]
        tolerance = 1e-5 if dtype == "float32" else 1e-3
        np.testing.assert_allclose(got.astype(np.float32), want.reshape(40, -1), rtol=tolerance, atol=tolerance * np.abs(want).max())


def test_named_and_streamed_data_sets_give_the_same_rows(tmp_path: Path, reference_onnx: Path, sample_images: list[Path]) -> None:
    root = tmp_path / "data" / "cifar"
    for path in sample_images:
        if path.parent.name in ("cat", "dog") and int(path.stem) < 5:
            (root / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / path.parent.name / path.name)
    (root / "dog" / "0002.jpg").write_bytes(b"not an image")
    server, port, _ = create_server("127.0.0.1:0", data_dir=tmp_path / "data")
    try:
        with Client(f"127.0.0.1:{port}") as client:
            named = list(client.features(reference_onnx, "cifar", [2, "pixels"], "avg", batch_size=3))
            streamed = list(client.features(reference_onnx, root, [2, "pixels"], "avg", batch_size=3))
    finally:
        server.stop(grace=None)
    for batches in (named, streamed):
        assert np.concatenate([b.indices for b in batches]).tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9]
        assert [s.index for b in batches for s in b.skipped] == [7]
        assert "cannot decode" in next(s.reason for b in batches for s in b.skipped)
    for k in range(2):
        np.testing.assert_array_equal(np.concatenate([b.features[k] for b in named]), np.concatenate([b.features[k] for b in streamed]))
    assert [p for b in named for p in b.paths][:2] == ["cat/0000.jpg", "cat/0001.jpg"]


def test_bad_jobs_get_clear_status_and_the_server_keeps_serving(server, reference_onnx: Path, sample_images: list[Path]) -> None:
    target, _ = server
    data = sample_images[0].parents[1]
    with Client(target) as client:
        with pytest.raises(NotFound, match="no layer named 'conv9'"):
            client.features(reference_onnx, data, ["conv9"])
        with pytest.raises(InvalidArgument, match="layer relu7 has no spatial axes"):
            client.features(reference_onnx, data, [7], layer_pool={"7": "avg"})
        with pytest.raises(InvalidArgument, match="unknown pooling 'mean'"):
            client.features(reference_onnx, data, [1], "mean")
        with pytest.raises(InvalidArgument, match="not among the layers"):
            client.features(reference_onnx, data, [1], layer_pool={"2": "avg"})
        with pytest.raises(InvalidArgument, match="feature dtype"):
            client.features(reference_onnx, data, [1], dtype="int8")
        assert len(list(client.features(reference_onnx, data, [8], stop=3))) == 1


def test_a_batch_over_the_reply_size_travels_in_several_replies(server, reference_onnx: Path, sample_images: list[Path], monkeypatch) -> None:
    target, _ = server
    data = sample_images[0].parents[1]
    with Client(target) as client:
        whole = list(client.features(reference_onnx, data, ["pixels"], stop=10, batch_size=10))
        monkeypatch.setattr(wire_features, "REPLY_BYTES", 3 * 3 * 32 * 32 * 4)  # three rows per reply
        parts = list(client.features(reference_onnx, data, ["pixels"], stop=10, batch_size=10))
        monkeypatch.setattr(wire_features, "MAX_MESSAGE_BYTES", 4096)
        with pytest.raises(ResourceExhausted, match="pool the large layers"):
            client.features(reference_onnx, data, ["pixels"], stop=10)
    assert [len(b.indices) for b in whole] == [10] and [len(b.indices) for b in parts] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b.features[0] for b in parts]), whole[0].features[0])


def until_idle(budget, wait_s: float = 30) -> dict[str, int]:
    """The budget's status once no call runs: a call's lease on its messages ends just after the
    client has its last reply (synchronisation, not a timing assertion)."""
    end = time.monotonic() + wait_s
    while budget.status()["running"] and time.monotonic() < end:
        time.sleep(0.01)
    return budget.status()


def test_a_features_job_runs_inside_the_memory_budget_and_names_what_is_wrong(reference_onnx: Path, sample_images: list[Path]) -> None:
    data = sample_images[0].parents[1]
    server, port, engine = create_server("127.0.0.1:0")
    try:
        with Client(f"127.0.0.1:{port}") as client:
            assert len(list(client.features(reference_onnx, data, [5], "avg", stop=8, batch_size=4))) == 2
            budget = until_idle(engine.budget)
            assert budget["running"] == 0 and budget["requests"] == 0, "each batch's reservation ends with the batch"
            sha = client.ensure_model(reference_onnx)
            whole = list(client.features(reference_onnx, data, [5], "avg", stop=8, batch_size=64))
            per_batch = 64 * engine.store.get(sha).footprint.forward
            engine.budget.limit = budget["resident"] + per_batch  # the model fits; a 64-image batch's forward pass cannot
            lowered = client.features(reference_onnx, data, [5], "avg", stop=8, batch_size=64)
            assert 0 < lowered.header.batch_size < 64, "the batch is lowered to fit, as the proto says"
            parts = list(lowered)
            assert len(parts) == -(-8 // lowered.header.batch_size)
            np.testing.assert_allclose(np.concatenate([b.features[0] for b in parts]), whole[0].features[0], rtol=1e-5, atol=1e-5)
            engine.budget.limit = budget["resident"] + engine.store.get(sha).footprint.forward  # not even one image: refused at once
            with pytest.raises(ResourceExhausted, match="Features of 1 layer") as caught:
                list(client.features(reference_onnx, data, [5], "avg", stop=8, batch_size=64))
            assert caught.value.reason == "OVER_MEMORY_BUDGET"
            engine.budget.limit = 1 << 40
            with pytest.raises(InvalidArgument) as caught:
                client.features(reference_onnx, data, [5], "grid:0")
            assert caught.value.field is None, "refused by the client before any call"
            job = pb.FeaturesJob(model=pb.ModelRef(sha256=sha), layers=[pb.FeatureLayer(layer=pb.LayerRef(number=5), pooling=pb.Pooling(kind=cast(pb.PoolKind, 9)))])
            with pytest.raises(InvalidArgument) as caught:
                list(client._stream(client.stub.Features, iter([pb.FeaturesRequest(job=job)])))
            assert (caught.value.reason, caught.value.field) == ("UNKNOWN_ENUM_VALUE", "job.layers[0].pooling.kind")
            job = pb.FeaturesJob(model=pb.ModelRef(sha256=sha), layers=[pb.FeatureLayer(layer=pb.LayerRef(number=5))], default_pooling=pb.Pooling(kind=pb.POOL_GRID))
            with pytest.raises(InvalidArgument, match="grid size S in grid:S must be a whole number >= 1") as caught:
                list(client._stream(client.stub.Features, iter([pb.FeaturesRequest(job=job)])))
            assert caught.value.field == "job.default_pooling.grid"
            with pytest.raises(InvalidArgument) as caught:
                list(client._stream(client.stub.Features, iter([pb.FeaturesRequest(batch=pb.ImageBatch())])))
            assert (caught.value.reason, caught.value.field) == ("STREAM_OUT_OF_ORDER", "job")
    finally:
        server.stop(grace=None)


def test_a_features_job_hands_memory_back_once_not_after_every_batch(reference_onnx: Path, sample_images: list[Path]) -> None:
    server, port, engine = create_server("127.0.0.1:0")
    handed_back = []
    try:
        with Client(f"127.0.0.1:{port}") as client:
            client.ensure_model(reference_onnx)
            until_idle(engine.budget)  # the upload's call has ended (and handed memory back itself)
            engine.budget._on_idle = lambda: handed_back.append(engine.budget.status()["running"])
            batches = list(client.features(reference_onnx, sample_images[0].parents[1], [1, 5], "avg", stop=192, batch_size=64))
    finally:
        server.stop(grace=None)
    assert len(batches) == 3  # each batch's reservation is over the 32 MiB that makes an idle server hand memory back at once
    assert handed_back in ([], [0]), "the budget goes idle at most once, when the job ends"
