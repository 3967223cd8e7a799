"""Top-k per feature map over a data set, through a real server: equal to a brute-force sort of every
activation, to single-image deconv for every reconstruction; named and streamed data, shards and an
interrupted job give one pass's result; bad jobs get the right status."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.errors import InvalidArgument, NotFound
from zfnet.server.app import create_server
from zfnet.server.models import LoadedModel
from zfnet.topk import EMPTY, TopK
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.top import state_of, state_proto

MODEL = Path(__file__).resolve().parents[2] / "models" / "zfnet-cifar10.onnx"
CORRUPT = "cat/0009b.jpg"  # sorts between cat/0009.jpg and cat/0010.jpg: in the middle of the data set
LAYERS = [1, 2, 3, 4, 5, 6, 7]


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, sample_images) -> Path:
    """The 200 bundled CIFAR-10 images as ``cifar/<class>/*.jpg``, one unreadable file among them."""
    root = tmp_path_factory.mktemp("data")
    for path in sample_images:
        target = root / "cifar" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (root / "cifar" / CORRUPT).write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "empty" / "nothing").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def client(data_dir) -> Iterator[Client]:
    server, port, _ = create_server("127.0.0.1:0", data_dir=data_dir)
    with Client(f"127.0.0.1:{port}") as c:
        yield c
    server.stop(grace=None)


@pytest.fixture(scope="module")
def brute(client, data_dir) -> tuple[list[int], dict[str, np.ndarray], list[Path]]:
    """Every readable image's activations of every layer, in memory (GetActivations, batches of 50)."""
    folder = imagefolder.scan(data_dir / "cifar")
    readable = [i for i, p in enumerate(folder.files) if p.name != Path(CORRUPT).name]
    values: dict[str, list[np.ndarray]] = {}
    for b in range(0, len(readable), 50):
        for name, act in client.activations(MODEL, [folder.files[i] for i in readable[b : b + 50]], LAYERS).items():
            values.setdefault(name, []).append(act)
    return readable, {name: np.concatenate(v) for name, v in values.items()}, folder.files


def brute_top(readable: list[int], act: np.ndarray, channel: int, k: int, by: str) -> list[tuple[int, float]]:
    """(index, value) of the k strongest images, sorted by a plain Python sort."""
    fmap = act[:, channel].reshape(len(readable), -1)
    value = fmap.max(axis=1) if by == "max" else fmap.astype(np.float64).mean(axis=1).astype(np.float32)
    ranked = sorted(zip(readable, value.tolist()), key=lambda t: (-t[1], t[0]))
    return ranked[:k]


def state_lists(state: TopK) -> dict:
    return {name: (top.indices.tolist(), top.values.tolist(), top.locations.tolist(), top.activations.tolist()) for name, top in state.layers.items()}


def skips(state: TopK) -> list[tuple[int, str]]:
    return [(s.index, s.path) for s in state.skipped]


@pytest.mark.slow
@pytest.mark.parametrize("by", ["max", "mean"])
def test_scan_of_every_channel_equals_a_brute_force_sort(client, brute, by) -> None:
    readable, acts, _ = brute
    state = client.top_scan(MODEL, client.dataset("cifar", batch_size=37), LAYERS, k=9, by=by)
    assert state.covered == [(0, 201)] and state.skipped_count == 1 and state.skipped[0].path == CORRUPT
    assert "cannot decode" in state.skipped[0].reason
    assert list(state.layers) == ["pool1", "pool2", "relu3", "relu4", "pool5", "relu6", "relu7"] and sorted(acts) == sorted(state.layers)
    for name, top in state.layers.items():
        act = acts[name]
        assert len(top.channels) == act.shape[1]
        for c in range(act.shape[1]):
            expected = brute_top(readable, act, c, 9, by)
            assert top.indices[c].tolist() == [i for i, _ in expected], (name, c)
            assert top.values[c].tolist() == [v for _, v in expected], (name, c)
            rows = [readable.index(i) for i, _ in expected]
            peaks = act[rows, c].reshape(len(rows), -1)
            assert top.activations[c].tolist() == peaks.max(axis=1).tolist()
            if act.ndim == 4:
                spatial = [tuple(int(p) for p in np.unravel_index(int(np.argmax(m)), act.shape[2:])) for m in peaks]
                assert [tuple(loc) for loc in top.locations[c].tolist()] == spatial


@pytest.mark.slow
def test_named_and_streamed_data_give_the_same_reconstructions_as_single_image_deconv(client, data_dir) -> None:
    layers, channels = [1, 3, 5, 6], [0, 3, 7]
    named = client.top(MODEL, client.dataset("cifar", batch_size=64), layers, k=4, channels=channels)
    streamed = client.top(MODEL, client.dataset(data_dir / "cifar", batch_size=23), layers, k=4, channels=channels)
    assert state_lists(named.state) == state_lists(streamed.state) and streamed.state.data == "streamed"
    assert sorted(named.images) == sorted(streamed.images) == named.state.winner_indices().tolist()
    folder = imagefolder.scan(data_dir / "cifar")
    for index, image in named.images.items():
        assert image.path == folder.files[index].relative_to(folder.root).as_posix() and image.label == folder.files[index].parent.name
        assert streamed.images[index].path == str(folder.files[index])
        np.testing.assert_array_equal(image.pixels, streamed.images[index].pixels)
    checked = 0
    for layer, per_channel in named.entries.items():
        assert sorted(per_channel) == channels
        for channel, entries in per_channel.items():
            assert [e.rank for e in entries] == list(range(4))
            assert [e.index for e in entries] == named.state.layers[layer].indices[channels.index(channel)].tolist()
            for e, twin in zip(entries, streamed.entries[layer][channel]):
                np.testing.assert_array_equal(e.reconstruction, twin.reconstruction)
                top, left, bottom, right = e.patch
                assert (max(top, 0), max(left, 0), min(bottom, 32), min(right, 32)) == e.receptive_field
                single = client.deconv(MODEL, [folder.files[e.index]], layer, [channel], mode="max", method="deconvnet").reconstructions[0]
                assert single.activation == e.activation and single.location == e.location and single.receptive_field == e.receptive_field
                np.testing.assert_allclose(e.reconstruction, single.pixels, rtol=0, atol=1e-6 * float(np.abs(single.pixels).max()))
                checked += 1
    assert checked == 4 * 3 * 4


def test_value_only_passes_run_on_the_fused_session_and_reconstructions_on_the_exact_one(client, data_dir, monkeypatch) -> None:
    """The scan, features, GetActivations and occlusion's copies fetch from the fused session (values only
    ranked, reported or summarised); the forward passes whose switches and ReLU masks feed a projection
    (the reconstructions', occlusion's deconv) from the exact one."""
    fetched: list[tuple[bool, frozenset[str]]] = []
    fetching = LoadedModel.fetching

    def spy(self: LoadedModel, names, *, exact: bool):
        names = list(names)
        fetched.append((exact, frozenset(names)))
        return fetching(self, names, exact=exact)

    monkeypatch.setattr(LoadedModel, "fetching", spy)
    files = imagefolder.scan(data_dir / "cifar").files[:3]
    client.top(MODEL, client.dataset("cifar", 0, 20), ["relu4"], k=2, channels=[5])
    exact = {names for kind, names in fetched if kind}
    assert {names for kind, names in fetched if not kind} == {frozenset({"relu4"})}, "the scan's session"
    assert len(exact) == 1 and {"relu4"} < next(iter(exact)), "the reconstructions' session: the layer and the switches its projection reads"
    for run in (
        lambda: client.activations(MODEL, files, ["relu4", "fc8"]),
        lambda: list(client.features(MODEL, client.dataset("cifar", 0, 20), ["relu4", "fc8"], pool="avg")),
        lambda: client.occlusion(MODEL, files[:1], size=16, stride=16, layer="relu4"),
    ):
        fetched.clear()
        run()
        assert (False, frozenset({"relu4", "fc8"})) in fetched and all(not kind or names != frozenset({"relu4", "fc8"}) for kind, names in fetched)


@pytest.mark.parametrize("method", ["guided", "backprop"])
def test_other_methods_equal_single_image_deconv(client, data_dir, method) -> None:
    result = client.top(MODEL, client.dataset("cifar", 0, 60), ["relu4"], k=2, channels=[5, 9], method=method)
    folder = imagefolder.scan(data_dir / "cifar")
    for channel, entries in result.entries["relu4"].items():
        for e in entries:
            single = client.deconv(MODEL, [folder.files[e.index]], "relu4", [channel], method=method).reconstructions[0]
            np.testing.assert_allclose(e.reconstruction, single.pixels, rtol=0, atol=1e-6 * float(np.abs(single.pixels).max()))


def test_shards_merged_and_an_interrupted_job_resumed_equal_one_pass(client, data_dir) -> None:
    layers = [2, 5, 7]
    dataset = client.dataset(data_dir / "cifar", batch_size=16)
    whole = client.top_scan(MODEL, dataset, layers, k=5)
    shards = [client.top_scan(MODEL, dataset.part(a, b), layers, k=5) for a, b in ((0, 70), (70, 150), (150, 201))]
    merged = shards[2].merge(shards[0]).merge(shards[1])
    assert state_lists(merged) == state_lists(whole)
    assert (merged.covered, skips(merged), merged.skipped_count) == (whole.covered, skips(whole), whole.skipped_count)

    checkpoints: list[TopK] = []

    def interrupt(state: TopK) -> None:
        checkpoints.append(state)
        raise Interrupt

    with pytest.raises(Interrupt):
        client.top_scan(MODEL, dataset, layers, k=5, checkpoint_every=48, on_checkpoint=interrupt)
    assert checkpoints[0].covered == [(0, 48)]
    resumed = client.top_scan(MODEL, dataset, layers, k=5, state=checkpoints[0])
    assert state_lists(resumed) == state_lists(whole) and resumed.covered == [(0, 201)] and skips(resumed) == skips(whole)
    # a shard's state continues the same way: only the rest is read
    assert state_lists(client.top_scan(MODEL, dataset, layers, k=5, state=shards[1])) == state_lists(whole)


def test_one_call_scans_then_reconstructs_a_named_data_set(client) -> None:
    job = pb.TopJob(
        model=client.model_ref(MODEL), layers=[pb.LayerRef(number=3)], k=3, channels=[1, 2],
        data=pb.DataSource(dataset="cifar", start=20, stop=120, batch_size=20), checkpoint_every=40,
    )
    replies = list(client.stub.TopActivations(iter([pb.TopRequest(job=job)])))
    kinds = [r.WhichOneof("part") for r in replies]
    assert kinds.count("checkpoint") == 2 and kinds.count("state") == 1 and kinds.index("state") < kinds.index("image") < kinds.index("entry")
    scan_done = [r.progress for r in replies if r.WhichOneof("part") == "progress" and r.progress.stage == "scan"][-1]
    assert (scan_done.done, scan_done.total) == (100, 100)
    two_calls = client.top(MODEL, client.dataset("cifar", 20, 120), [3], k=3, channels=[1, 2])
    assert state_lists(state_of(next(r.state for r in replies if r.WhichOneof("part") == "state"))) == state_lists(two_calls.state)
    entries = {(r.entry.channel, r.entry.rank): r.entry for r in replies if r.WhichOneof("part") == "entry"}
    assert len(entries) == 6
    for channel, ranked in two_calls.entries["relu3"].items():
        for e in ranked:
            assert entries[(channel, e.rank)].index == e.index
            np.testing.assert_array_equal(np.frombuffer(entries[(channel, e.rank)].reconstruction.data, np.float32).reshape(e.reconstruction.shape), e.reconstruction)


def test_fully_connected_winners_are_whole_images(client) -> None:
    result = client.top(MODEL, client.dataset("cifar", 0, 40), [8], k=3, channels=[3])
    for e in result.entries["fc8"][3]:
        assert e.location == () and e.receptive_field == e.patch == (0, 0, 32, 32)


def test_bad_jobs_get_clear_errors_and_the_server_keeps_serving(client, data_dir, tmp_path) -> None:
    def call(**fields) -> grpc.RpcError:
        base = {"model": client.model_ref(MODEL), "layers": [pb.LayerRef(number=1)], "data": pb.DataSource(dataset="cifar", stop=10), "stage": pb.TOP_SCAN}
        job = pb.TopJob(**{**base, **fields})
        with pytest.raises(grpc.RpcError) as caught:
            list(client.stub.TopActivations(iter([pb.TopRequest(job=job)])))
        return caught.value

    cases = [
        ({"data": pb.DataSource(dataset="nope")}, grpc.StatusCode.NOT_FOUND, "no data set named 'nope'"),
        ({"data": pb.DataSource(dataset="empty")}, grpc.StatusCode.NOT_FOUND, "no data set named 'empty'"),
        ({"k": -2}, grpc.StatusCode.INVALID_ARGUMENT, "k must be positive"),
        ({"channels": [31, 32]}, grpc.StatusCode.INVALID_ARGUMENT, r"channel\(s\) \[32\] out of range"),
        ({"layers": [pb.LayerRef(number=12)]}, grpc.StatusCode.NOT_FOUND, "layer 12 is out of range"),
        ({"data": pb.DataSource(dataset="cifar", start=50, stop=20)}, grpc.StatusCode.INVALID_ARGUMENT, "outside the data set"),
        ({"stage": pb.TOP_ALL, "data": pb.DataSource(streamed=pb.StreamedImages(size=3))}, grpc.StatusCode.INVALID_ARGUMENT, "cannot re-read its winners"),
        ({"stage": pb.TOP_RECONSTRUCT}, grpc.StatusCode.INVALID_ARGUMENT, "needs the top-k state"),
    ]
    for fields, code, message in cases:
        err = call(**fields)
        assert err.code() == code and re.search(message, err.details() or ""), (fields, err.code(), err.details())

    state = client.top_scan(MODEL, client.dataset("cifar", 0, 30), [1], k=2)
    err = call(state=state_proto(state), k=2, data=pb.DataSource(dataset="cifar", start=20, stop=40))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "overlaps indices [0, 30)" in (err.details() or "")
    err = call(state=state_proto(state), k=3)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "differ in k (3 and 2)" in (err.details() or "")
    other = TopK.empty("0" * 64, state.data, state.size, 2, "max", {"pool1": (np.arange(32), 2)})
    err = call(state=state_proto(other), stage=pb.TOP_RECONSTRUCT)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "is for model 000000000000" in (err.details() or "")
    err = call(state=state_proto(state), stage=pb.TOP_RECONSTRUCT, data=pb.DataSource(streamed=pb.StreamedImages(size=201)))
    assert "is for data set 'dataset:cifar' of 201 images, not 'streamed' of 201" in (err.details() or "")
    beyond = TopK.empty(state.model, state.data, state.size, 2, "max", {"pool1": (np.asarray([40]), 2)})
    err = call(state=state_proto(beyond), stage=pb.TOP_RECONSTRUCT)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "channel(s) [40] out of range" in (err.details() or "")

    with pytest.raises(InvalidArgument, match="k must be positive"):
        client.top_scan(MODEL, client.dataset("cifar"), [1], k=0)
    (tmp_path / "none" / "a").mkdir(parents=True)
    with pytest.raises(InvalidArgument, match="holds no images"):
        client.dataset(tmp_path / "none")
    with pytest.raises(NotFound, match="neither a local image folder"):
        client.dataset("nope")
    assert "cifar" in [d.name for d in client.list_datasets()]


def test_a_streamed_reconstruction_must_get_exactly_the_winners(client, data_dir) -> None:
    dataset = client.dataset(data_dir / "cifar")
    state = client.top_scan(MODEL, dataset, [1], k=1, channels=[0])
    winner = int(state.layers["pool1"].indices[0, 0])
    job = pb.TopJob(model=client.model_ref(MODEL), data=dataset.source.to_proto(), stage=pb.TOP_RECONSTRUCT, state=state_proto(state))
    wrong = pb.ImageBatch(start=winner + 1, images=[pb.Image(encoded=dataset.folder.files[winner + 1].read_bytes())])
    with pytest.raises(grpc.RpcError) as caught:
        list(client.stub.TopActivations(iter([pb.TopRequest(job=job), pb.TopRequest(batch=wrong)])))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"the next image expected is {winner}" in (caught.value.details() or "")
    assert state.layers["pool1"].indices[0, 0] != EMPTY


def test_patches_are_whole_receptive_fields_clipped_to_the_box(reference_module, reference_onnx) -> None:
    """For every location of every spatial layer: the patch box equals the field from the PyTorch
    module's kernels, strides and paddings (top = y*jump + offset, size r), and clipped it is the box."""
    from torch import nn

    from zfnet.server.models import load

    model = load(reference_onnx.read_bytes(), "reference")
    jump, offset, size, fields = 1, 0, 1, {}
    for name, module in reference_module.named_children():
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            k, s, p = (_first(v) for v in (module.kernel_size, module.stride, module.padding))
            offset, size, jump = offset - p * jump, size + (k - 1) * jump, jump * s
        fields[name] = (jump, offset, size)
    checked = 0
    for row in model.layers:
        if row.number and len(row.shape) == 4:
            jump, offset, size = fields[row.name]
            height, width = row.shape[2:]
            assert isinstance(height, int) and isinstance(width, int), row.shape
            for y in range(height):
                for x in range(width):
                    box = model.receptive_fields.box(row.name, (y, x), clip=False)
                    assert box == (y * jump + offset, x * jump + offset, y * jump + offset + size, x * jump + offset + size), (row.name, y, x)
                    clipped = (max(box[0], 0), max(box[1], 0), min(box[2], 32), min(box[3], 32))
                    assert clipped == model.receptive_fields.box(row.name, (y, x))
                    checked += 1
    assert checked == 16 * 16 + 8 * 8 * 3 + 4 * 4


def _first(value: int | str | tuple[int, ...]) -> int:
    """A PyTorch layer's kernel size, stride or padding along its first axis (numbers in the reference)."""
    assert not isinstance(value, str), f"padding {value!r} is not a number"
    return value if isinstance(value, int) else value[0]


def test_a_layer_the_method_cannot_project_is_refused_before_the_scan(client, data_dir, tmp_path) -> None:
    """Sin has no backward rule: told the method, the scan refuses before reading an image; a bare scan runs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from zfnet.converters.graph import IR_VERSION, OPSET

    weights = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]), helper.make_node("Sin", ["conv"], ["wave"])], "sine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])], [helper.make_tensor_value_info("wave", TensorProto.FLOAT, ["N", 4, 8, 8])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    path = tmp_path / "sine.onnx"
    onnx.save(model, path)
    dataset = client.dataset(data_dir / "cifar", 0, 30)
    seen: list = []
    with pytest.raises(InvalidArgument, match="no backward rule for op 'Sin'"):
        client.top_scan(path, dataset, ["wave"], k=2, method="deconvnet", on_progress=seen.append)
    assert seen == []
    assert client.top_scan(path, dataset, ["wave"], k=2).covered == [(0, 30)]
