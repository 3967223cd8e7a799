"""Occlusion sensitivity through the real server: every map against an independent reference that
occludes and runs bare onnxruntime one position at a time; progress; errors."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from perturb_testing import CIFAR10, TIMEOUT, Bare, Conn, encoded, expect_stream_error, nchw, softmax, still_serves, stream

from zfnet.server import admission, occlusion, perturbation
from zfnet.server.models import load
from zfnet.tensors import from_proto
from zfnet.v1 import zfnet_pb2 as pb

Code = grpc.StatusCode


def reference_maps(bare: Bare, image: np.ndarray, layer: str, size: int, stride: int, fill: np.ndarray, true_class: int | None):
    """Maps (b), (d), (e) by occluding one position at a time: (tops, lefts, b, d, e, channel, true class)."""
    base_layer, base_out = bare.run([layer, bare.output], image[None])
    strength = base_layer[0].reshape(base_layer.shape[1], -1).max(axis=1)
    channel = int(np.argmax(strength))
    truth = int(np.argmax(base_out[0])) if true_class is None else true_class
    height, width = image.shape[1:]
    tops, lefts = list(range(0, height - size + 1, stride)), list(range(0, width - size + 1, stride))
    total = np.zeros((len(tops), len(lefts)))
    prob = np.zeros((len(tops), len(lefts)))
    top1 = np.zeros((len(tops), len(lefts)), np.int64)
    for r, top in enumerate(tops):
        for c, left in enumerate(lefts):
            copy = image.copy()
            for k in range(copy.shape[0]):
                copy[k, top : top + size, left : left + size] = fill[k]
            act, out = bare.run([layer, bare.output], copy[None])
            total[r, c] = act[0, channel].astype(np.float64).sum()
            p = softmax(out[0])
            prob[r, c], top1[r, c] = p[truth], int(np.argmax(p))
    return tops, lefts, total, prob, top1, channel, truth


@pytest.mark.parametrize(
    ("layer", "size", "stride", "fill", "labels", "max_batch"),
    [
        (None, 8, 4, pb.FILL_MEAN, [], 7),  # defaults: layer 5 (pool5), top-1 class; batches of 7 leave a remainder
        (pb.LayerRef(number=3), 5, 3, pb.FILL_GREY, ["cat", "3"], 0),  # 3 does not divide 32 - 5; class by name and index
        (pb.LayerRef(name="relu7"), 12, 5, pb.FILL_ZERO, ["dog"], 16),  # a fully connected layer; one label for all images
    ],
)
def test_maps_equal_one_position_at_a_time(conn: Conn, sample_images, layer, size, stride, fill, labels, max_batch) -> None:
    paths = sample_images[3:5]
    request = pb.OcclusionRequest(model=conn.ref, images=encoded(paths), size=size, stride=stride, fill=fill, true_classes=labels, max_batch=max_batch)
    if layer is not None:
        request.layer.CopyFrom(layer)
    progress, result = stream(conn.stub.Occlusion, request)
    bare = Bare(conn.path)
    fill_rgb = {pb.FILL_MEAN: bare.mean, pb.FILL_GREY: np.full(3, 127.5), pb.FILL_ZERO: np.zeros(3)}[fill]
    np.testing.assert_allclose(result.fill.values, fill_rgb, rtol=1e-6)
    assert result.layer == ("pool5" if layer is None else layer.name or "relu3")
    given = labels * 2 if len(labels) == 1 else labels
    for i, (image, maps) in enumerate(zip(nchw(paths), result.images)):
        truth = None if not given else (CIFAR10.index(given[i]) if given[i] in CIFAR10 else int(given[i]))
        tops, lefts, total, prob, top1, channel, truth = reference_maps(bare, image, result.layer, size, stride, fill_rgb, truth)
        assert list(result.tops) == tops and list(result.lefts) == lefts
        assert maps.channel == channel and maps.true_class.index == truth
        assert maps.true_class.from_top1 == (not given)
        np.testing.assert_allclose(from_proto(maps.layer_total), total, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(from_proto(maps.true_class_map), prob, atol=1e-5)
        np.testing.assert_array_equal(from_proto(maps.top_class_map), top1)
    # progress: one message per batch, counting every copy of the request
    count = len(result.tops) * len(result.lefts)
    assert len(progress) == 2 * -(-count // (max_batch or result.batch))
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert progress[-1].done == progress[-1].total == 2 * count


def test_projection_map_equals_deconv(conn: Conn, sample_images) -> None:
    """Map (c) is the deconvnet projection of the chosen map's strongest activation: what Deconv gives for that channel."""
    paths = sample_images[:2]
    _, result = stream(conn.stub.Occlusion, pb.OcclusionRequest(model=conn.ref, images=encoded(paths), size=16, stride=16))
    channels = [m.channel for m in result.images]
    for path, maps, channel in zip(paths, result.images, channels):
        deconv = conn.client.deconv(conn.path, [path], "pool5", [channel], mode="max", method="deconvnet").reconstructions[0]
        assert maps.projection.channel == channel
        assert tuple(maps.projection.location) == deconv.location
        np.testing.assert_array_equal(from_proto(maps.projection.pixels), deconv.pixels)


def test_all_classes_and_unoccluded_values(conn: Conn, sample_images) -> None:
    paths = sample_images[:1]
    _, result = stream(conn.stub.Occlusion, pb.OcclusionRequest(model=conn.ref, images=encoded(paths), size=16, stride=8, all_classes=True))
    maps = result.images[0]
    probs = from_proto(maps.probabilities)
    assert probs.shape == (3, 3, 10)
    np.testing.assert_allclose(probs.sum(axis=2), 1.0, atol=1e-5)
    np.testing.assert_array_equal(from_proto(maps.top_class_map), probs.argmax(axis=2))
    np.testing.assert_array_equal(from_proto(maps.true_class_map), probs[..., maps.true_class.index])
    base = softmax(Bare(conn.path).run([Bare(conn.path).output], nchw(paths))[0])[0]
    assert maps.top_class == int(np.argmax(base))
    assert maps.true_class_probability == pytest.approx(base[maps.true_class.index], abs=1e-6)
    assert list(result.classes) == CIFAR10


def test_progress_reaches_the_python_client(conn: Conn, sample_images) -> None:
    seen = []
    result = conn.client.occlusion(conn.path, sample_images[:3], size=8, stride=8, max_batch=5, progress=lambda *step: seen.append(step))
    assert len(result.images) == 3 and result.batch == 5
    assert [s[1] for s in seen] == [5, 10, 15, 16, 21, 26, 31, 32, 37, 42, 47, 48]
    assert {s[2] for s in seen} == {48}
    assert seen[0][0] == "occlusion: image 1 of 3"


def test_batch_size_follows_the_memory_estimate(reference_onnx: Path, sample_images) -> None:
    model = load(reference_onnx.read_bytes(), "m")
    floats = 3 * 32 * 32 + sum(int(np.prod([int(d) for d in row.shape[1:]])) for row in model.layers)
    assert perturbation.bytes_per_copy(model) == 4 * floats
    per_copy = sum(perturbation.batch_cost(model, []).per_item.values())
    assert per_copy == 2 * 4 * floats + 2 * 4 * 3 * 32 * 32, "the forward pass at twice its activations, the copy and its source"
    assert perturbation.copies_per_batch(model, budget=10 * per_copy + 1) == 10
    assert perturbation.copies_per_batch(model, max_batch=3, budget=10 * per_copy) == 3
    assert perturbation.copies_per_batch(model, budget=1) == 1
    result = perturbation.complete(occlusion.run(model, nchw(sample_images[:1]), size=8, stride=2))
    assert result.batch == perturbation.copies_per_batch(model)


def test_results_do_not_depend_on_the_batch_size(reference_onnx: Path, sample_images) -> None:
    model = load(reference_onnx.read_bytes(), "m")
    batch = nchw(sample_images[5:6])
    one = perturbation.complete(occlusion.run(model, batch, size=6, stride=5, max_batch=1)).images[0]
    many = perturbation.complete(occlusion.run(model, batch, size=6, stride=5)).images[0]
    np.testing.assert_allclose(one.layer_total, many.layer_total, rtol=1e-5)
    np.testing.assert_allclose(one.true_class_map, many.true_class_map, atol=1e-6)


# ---- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"size": 33}, Code.INVALID_ARGUMENT, ["size 33", "larger", "32x32"]),
        ({"size": 0}, Code.INVALID_ARGUMENT, ["size", "at least 1"]),
        ({"stride": 0}, Code.INVALID_ARGUMENT, ["stride", "at least 1"]),
        ({"true_classes": ["kat"]}, Code.INVALID_ARGUMENT, ["'kat'", "unknown", "airplane"]),
        ({"true_classes": ["10"]}, Code.INVALID_ARGUMENT, ["'10'", "unknown"]),
        ({"true_classes": ["cat", "dog", "ship"]}, Code.INVALID_ARGUMENT, ["3 true classes", "2 images"]),
        ({"fill": 9}, Code.INVALID_ARGUMENT, ["fill 9"]),
        ({"max_batch": -1}, Code.INVALID_ARGUMENT, ["max_batch"]),
        ({"layer": pb.LayerRef(number=12)}, Code.NOT_FOUND, ["layer 12"]),
        ({"layer": pb.LayerRef(name="conv9")}, Code.NOT_FOUND, ["conv9"]),
        ({"images": []}, Code.INVALID_ARGUMENT, ["no images"]),
    ],
)
def test_bad_requests_name_the_problem(conn: Conn, sample_images, fields: dict, code, words: list[str]) -> None:
    request = pb.OcclusionRequest(**{"model": conn.ref, "images": encoded(sample_images[:2]), **fields})
    expect_stream_error(conn.stub.Occlusion, request, code, *words)
    still_serves(conn, sample_images[0])


def test_too_many_copies_are_refused(conn: Conn, sample_images, monkeypatch) -> None:
    monkeypatch.setattr(perturbation, "MAX_COPIES_PER_REQUEST", 100)
    request = pb.OcclusionRequest(model=conn.ref, images=encoded(sample_images[:1]), size=1, stride=1)
    expect_stream_error(conn.stub.Occlusion, request, Code.RESOURCE_EXHAUSTED, "1024 perturbed copies", "at most 100")


def test_cancelling_mid_stream_stops_the_work_and_the_server_keeps_serving(conn: Conn, sample_images, monkeypatch) -> None:
    """Counted, not timed: the second batch's progress is held until gRPC has ended the cancelled
    call on the server; no batch runs after it, and the analysis ends."""
    batches: list[int] = []
    calls: list[threading.Event] = []  # one per call the server enters from here on: the Occlusion first
    ended = threading.Event()
    scope, advance, run = admission.rpc_scope, perturbation.Tracker.advance, occlusion.run

    def watched_scope(budget, remaining_s, on_end, active=None):
        calls.append(threading.Event())
        on_end(calls[-1].set)  # gRPC runs a call's callbacks once the call is over: here, cancelled
        return scope(budget, remaining_s, on_end, active)

    def held_advance(self, n, stage):
        batches.append(n)
        if len(batches) == 2:
            calls[0].wait(TIMEOUT)
        return advance(self, n, stage)

    def watched_run(*args, **kwargs):
        try:
            return (yield from run(*args, **kwargs))
        finally:
            ended.set()

    monkeypatch.setattr(admission, "rpc_scope", watched_scope)
    monkeypatch.setattr(perturbation.Tracker, "advance", held_advance)
    monkeypatch.setattr(occlusion, "run", watched_run)
    call = conn.stub.Occlusion(pb.OcclusionRequest(model=conn.ref, images=encoded(sample_images[:4]), size=4, stride=1, max_batch=8), timeout=TIMEOUT)
    first = next(call)
    assert first.WhichOneof("reply") == "progress" and first.progress.done == 8 and first.progress.total == 4 * 29 * 29
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == Code.CANCELLED
    assert ended.wait(TIMEOUT), "the analysis went on after the client cancelled"
    assert calls[0].is_set(), "the server never saw the call end"
    assert len(batches) <= 2, f"{len(batches)} of {4 * 29 * 29 // 8 + 1} batches ran: the work went on after the server saw the cancel"
    still_serves(conn, sample_images[0])
