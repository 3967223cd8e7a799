"""Feature evolution over training through a real server: every column equals a top-1 job on that
snapshot alone (and a brute-force argmax over every image's activations), over a named data set
(the Evolution call) and a streamed folder alike; snapshots go in the order of the numbers in their
names; snapshots whose chosen layer differs are refused with INVALID_ARGUMENT / SNAPSHOTS_DIFFER.
The snapshots are the bundled model with seeded noise on its weights (``snapshot_testing``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from snapshot_testing import perturbed

from zfnet import evolution, imagefolder
from zfnet.client.api import Client
from zfnet.errors import InvalidArgument
from zfnet.server.app import create_server
from zfnet.v1 import zfnet_pb2 as pb

LAYERS = [1, 3, 5]
CHANNELS = [0, 3, 5, 11]
PER_CLASS = 6  # 60 images


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> list[Path]:
    """Three snapshots named by iteration, given here out of order."""
    folder = tmp_path_factory.mktemp("snaps")
    return [perturbed(folder / f"run_iter_{n}.onnx", seed) for seed, n in enumerate((10000, 500, 5000))]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, sample_images) -> Path:
    """The first PER_CLASS bundled images of each class as ``cifar/<class>/*.jpg``."""
    root = tmp_path_factory.mktemp("data")
    for path in sorted(sample_images):
        target = root / "cifar" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if len(list(target.parent.iterdir())) < PER_CLASS:
            shutil.copy(path, target)
    return root


@pytest.fixture(scope="module")
def client(data_dir) -> Iterator[Client]:
    server, port, _ = create_server("127.0.0.1:0", data_dir=data_dir)
    with Client(f"127.0.0.1:{port}") as c:
        yield c
    server.stop(grace=None)


def test_snapshots_are_ordered_by_the_number_in_their_names_not_as_strings() -> None:
    names = ["run_iter_10000.onnx", "run_iter_5000.onnx", "run_iter_500.onnx", "cifar10_quick_iter_4000.onnx"]
    assert [p.name for p in evolution.in_training_order(names)] == [
        "run_iter_500.onnx", "cifar10_quick_iter_4000.onnx", "run_iter_5000.onnx", "run_iter_10000.onnx",
    ]
    assert [evolution.label(n) for n in ("epoch_12.onnx", "net_iter_5000.caffemodel.h5", "cifar10_quick_iter_4000.onnx", "snap-7.onnx")] == [
        "epoch 12", "iter 5000", "iter 4000", "snap-7",
    ]
    assert [evolution.number(n) for n in ("epoch_9.onnx", "epoch_10.onnx", "final.onnx")] == [("epoch", 9), ("epoch", 10), None]
    with pytest.raises(InvalidArgument, match="final.onnx"):
        evolution.in_training_order(["epoch_1.onnx", "final.onnx"])


def brute_top1(client: Client, model: Path, files: list[Path], layer: str, channel: int) -> tuple[int, float]:
    """(data-set index, value) of the image whose map of ``channel`` has the largest maximum: a plain loop."""
    best = (-1, -np.inf)
    for i in range(0, len(files), 30):
        act = client.activations(model, files[i : i + 30], [layer])[layer]
        for j, m in enumerate(act[:, channel].reshape(len(act), -1).max(axis=1)):
            if m > best[1]:
                best = (i + j, float(m))
    return best


@pytest.mark.slow
@pytest.mark.parametrize("where", ["named", "streamed"])
def test_each_column_equals_a_top1_job_on_that_snapshot_alone(client, data_dir, snapshots, where) -> None:
    ordered = evolution.in_training_order(snapshots)
    dataset = client.dataset("cifar" if where == "named" else data_dir / "cifar", batch_size=25)
    seen: list[tuple[int, str, int, int]] = []
    result = client.evolution(ordered, dataset, LAYERS, CHANNELS, on_progress=lambda i, p: seen.append((i, p.stage, p.done, p.total)))
    assert [c.label for c in result.columns] == ["iter 500", "iter 5000", "iter 10000"]
    assert result.layers == ["pool1", "relu3", "pool5"] and all(result.channels[name] == CHANNELS for name in result.layers)
    assert [s for s in seen if s[1] == "snapshots"] == [(0, "snapshots", 0, 3), (1, "snapshots", 1, 3), (2, "snapshots", 2, 3), (2, "snapshots", 3, 3)]
    assert {(i, stage) for i, stage, _, _ in seen} >= {(i, stage) for i in range(3) for stage in ("scan", "reconstructions")}
    folder = imagefolder.scan(data_dir / "cifar")
    for c, (column, snapshot) in enumerate(zip(result.columns, ordered)):
        alone = client.top(snapshot, dataset, LAYERS, k=1, channels=CHANNELS)
        for layer in result.layers:
            ours, theirs = column.result.state.layers[layer], alone.state.layers[layer]
            assert ours.indices.tolist() == theirs.indices.tolist(), (c, layer)
            np.testing.assert_allclose(ours.values, theirs.values, rtol=1e-6, atol=0)
            for channel in CHANNELS:
                entry, twin = result.entry(layer, channel, c), alone.entries[layer][channel][0]
                assert (entry.index, entry.location, entry.patch) == (twin.index, twin.location, twin.patch)
                np.testing.assert_array_equal(entry.reconstruction, twin.reconstruction)
                assert column.result.images[entry.index].path == alone.images[twin.index].path
        index, value = brute_top1(client, snapshot, folder.files, "relu3", 5)
        assert result.entry("relu3", 5, c).index == index
        np.testing.assert_allclose(result.entry("relu3", 5, c).activation, value, rtol=1e-6)
    first, last = (result.entry("pool5", 0, c).reconstruction for c in (0, 2))
    assert not np.array_equal(first, last), "different snapshots must give different reconstructions"


@pytest.mark.slow
def test_snapshots_whose_layer_differs_are_refused_naming_the_difference(client, data_dir, snapshots, tmp_path) -> None:
    import torch

    from zfnet.converters.pytorch import export, zoo

    torch.manual_seed(0)
    odd = tmp_path / "epoch_9.onnx"
    onnx.save(export.export(zoo.ZFNetCifar(width=2).eval()), odd)
    ordered = [*evolution.in_training_order(snapshots), odd]
    for data in ("cifar", data_dir / "cifar"):
        with pytest.raises(InvalidArgument) as err:
            client.evolution(ordered, client.dataset(data), [1, 5], [0], labels=["a", "b", "c", "epoch 9"])
        assert err.value.reason == "SNAPSHOTS_DIFFER"
        assert "'epoch 9'" in str(err.value) and "'a'" in str(err.value) and "pool1 (64, 16, 16)" in str(err.value) and "pool1 (32, 16, 16)" in str(err.value)
    request = pb.EvolutionRequest(models=[client.model_ref(p) for p in ordered], layers=[pb.LayerRef(number=1)], data=pb.DataSource(dataset="cifar"))
    with pytest.raises(grpc.RpcError) as raw:
        list(client.stub.Evolution(request))
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "differs from" in (raw.value.details() or "")
    assert client.evolution(ordered[:2], client.dataset("cifar", 0, 10), [1], [0]).columns[1].label == "iter 5000"  # still serving


def test_bad_evolution_requests_get_the_right_status(client, snapshots) -> None:
    ref = client.model_ref(snapshots[0])
    cases = [
        (pb.EvolutionRequest(layers=[pb.LayerRef(number=1)], data=pb.DataSource(dataset="cifar")), grpc.StatusCode.INVALID_ARGUMENT, "no snapshots"),
        (pb.EvolutionRequest(models=[ref], data=pb.DataSource(dataset="cifar")), grpc.StatusCode.INVALID_ARGUMENT, "no layers"),
        (pb.EvolutionRequest(models=[ref], layers=[pb.LayerRef(number=1)], data=pb.DataSource(streamed=pb.StreamedImages(size=3))), grpc.StatusCode.INVALID_ARGUMENT, "named data set"),
        (pb.EvolutionRequest(models=[ref], layers=[pb.LayerRef(number=1)], data=pb.DataSource(dataset="nope")), grpc.StatusCode.NOT_FOUND, "no data set named 'nope'"),
        (pb.EvolutionRequest(models=[ref], layers=[pb.LayerRef(number=12)], data=pb.DataSource(dataset="cifar")), grpc.StatusCode.NOT_FOUND, "layer 12 is out of range"),
        (pb.EvolutionRequest(models=[ref, pb.ModelRef(sha256="0" * 64)], layers=[pb.LayerRef(number=1)], data=pb.DataSource(dataset="cifar")), grpc.StatusCode.NOT_FOUND, "no model with sha256"),
        (pb.EvolutionRequest(models=[ref], layers=[pb.LayerRef(number=1)], channels=[99], data=pb.DataSource(dataset="cifar")), grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    ]
    for request, code, words in cases:
        with pytest.raises(grpc.RpcError) as err:
            list(client.stub.Evolution(request))
        assert err.value.code() == code and words in (err.value.details() or ""), (err.value.code(), err.value.details())


def test_check_same_names_the_first_difference() -> None:
    first = [("pool1", (32, 16, 16)), ("pool5", (64, 4, 4))]
    evolution.check_same([("epoch 1", first), ("epoch 2", list(first))])
    with pytest.raises(InvalidArgument, match=r"'epoch 2' differs from 'epoch 1' in the name of chosen layer 2: conv5 \(64, 4, 4\) there, pool5 \(64, 4, 4\)") as err:
        evolution.check_same([("epoch 1", first), ("epoch 2", [first[0], ("conv5", (64, 4, 4))])])
    assert err.value.reason == "SNAPSHOTS_DIFFER" and err.value.metadata == {"snapshot": "epoch 2", "reference": "epoch 1"}
    with pytest.raises(InvalidArgument, match=r"'epoch 3' differs from 'epoch 1' in the shape of chosen layer 1: pool1 \(16, 16, 16\) there"):
        evolution.check_same([("epoch 1", first), ("epoch 2", first), ("epoch 3", [("pool1", (16, 16, 16)), first[1]])])
