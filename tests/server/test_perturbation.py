"""The perturbation runner and what the analyses share: batches, reuse of the unperturbed forward,
fill values from the model's preprocessing, default layers, true classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from perturb_testing import nchw

from zfnet.converters.graph import IR_VERSION, Preprocessing, prepend_preprocessing
from zfnet.errors import InvalidArgument, ResourceExhausted
from zfnet.server import perturbation, runtime
from zfnet.server.models import LoadedModel, load


@pytest.fixture(scope="module")
def bundled(reference_onnx: Path) -> LoadedModel:
    return load(reference_onnx.read_bytes(), "bundled")


def small_model(preprocessing: Preprocessing | None = None, mean_array: np.ndarray | None = None) -> LoadedModel:
    """image (N,3,8,8) -> Conv -> Relu -> Flatten -> Gemm (4 classes), optionally with preprocessing nodes."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32) * 0.05, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((2 * 8 * 8, 4)).astype(np.float32) * 0.05, "w2")
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Flatten", ["r1"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    if preprocessing is not None:
        prepend_preprocessing(model, preprocessing, mean_array)
    onnx.checker.check_model(model)
    return load(model.SerializeToString(), "small")


# ---- the runner -------------------------------------------------------------------------------


def test_runner_batches_reduces_and_reports_progress(bundled: LoadedModel, sample_images) -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 255, (3, 32, 32)).astype(np.float32)
    copies = rng.uniform(0, 255, (11, 3, 32, 32)).astype(np.float32)
    names = ["relu7", "fc8"]
    base_out = perturbation.forward(bundled, base[None], names, exact=False)
    made = []

    def make(start: int, stop: int) -> np.ndarray:
        made.append((start, stop))
        return copies[start:stop]

    tracker = perturbation.Tracker(11 + 5)
    tracker.advance(5, "earlier work")
    steps = perturbation.run(bundled, base, base_out, 11, make, lambda out: {"sum": out["relu7"].sum(axis=1), "fc8": out["fc8"]}, tracker, "stage", 4, exact=False)
    progress = []
    kept = perturbation.complete(steps, progress.append)
    assert made == [(0, 4), (4, 8), (8, 11)]
    assert [(p.stage, p.done, p.total) for p in progress] == [("stage", 9, 16), ("stage", 13, 16), ("stage", 16, 16)]
    expected = runtime.tensors(bundled.session, names, {bundled.input_name: copies})
    np.testing.assert_allclose(kept["sum"], expected[0].sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(kept["fc8"], expected[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("exact", "rtol"), [(True, 0), (False, 1e-5)])  # fused: MatMul+Add folded into Gemm rounds otherwise (5e-6 measured)
def test_copies_equal_to_the_unperturbed_image_take_its_outputs(bundled: LoadedModel, exact: bool, rtol: float) -> None:
    """They are not forwarded: the outputs handed in for the unperturbed image come back exactly; the
    others come from the session of the kind asked for, the exact one bit for bit the exposed session's."""
    base = np.full((3, 32, 32), 100.0, np.float32)
    changed = base.copy()
    changed[:, :4, :4] = 0
    marker = {"fc8": np.arange(10, dtype=np.float32)[None] * 1000}  # not what the model computes
    copies = np.stack([base, changed, base])
    kept = perturbation.complete(perturbation.run(bundled, base, marker, 3, lambda a, b: copies[a:b], lambda out: out, perturbation.Tracker(3), "s", 8, exact=exact))
    np.testing.assert_array_equal(kept["fc8"][[0, 2]], marker["fc8"][[0, 0]])
    np.testing.assert_allclose(kept["fc8"][1], runtime.tensors(bundled.session, ["fc8"], {bundled.input_name: changed[None]})[0][0], rtol=rtol)


def test_requests_over_the_copy_limit_are_refused(monkeypatch) -> None:
    monkeypatch.setattr(perturbation, "MAX_COPIES_PER_REQUEST", 10)
    with pytest.raises(ResourceExhausted, match="11 perturbed copies"):
        perturbation.Tracker(11)


def test_forward_in_chunks_equals_one_pass(bundled: LoadedModel, sample_images) -> None:
    batch = nchw(sample_images[:7])
    whole = perturbation.forward(bundled, batch, ["pool5", "fc8"], exact=False)
    chunked = perturbation.forward(bundled, batch, ["pool5", "fc8"], chunk=3, exact=False)
    for name in whole:
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-6, atol=1e-6)


# ---- fill values -------------------------------------------------------------------------------


def test_mean_fill_of_the_bundled_model_is_its_recorded_mean(bundled: LoadedModel) -> None:
    fill = perturbation.fill_value(bundled, "mean")
    np.testing.assert_allclose(fill.values, [125.3, 123.0, 113.9], rtol=1e-6)
    assert "mean" in fill.note
    np.testing.assert_array_equal(perturbation.fill_value(bundled, "grey").values, [127.5] * 3)
    np.testing.assert_array_equal(perturbation.fill_value(bundled, "zero").values, [0, 0, 0])


def test_per_pixel_bgr_mean_becomes_its_per_channel_average_in_rgb() -> None:
    rng = np.random.default_rng(2)
    mean = rng.uniform(50, 200, (3, 8, 8)).astype(np.float32)  # Caffe: in the network's (BGR) order
    model = small_model(Preprocessing(channel_order="bgr", mean_source="mean.binaryproto (per pixel, 3x8x8)"), mean)
    fill = perturbation.fill_value(model, "mean")
    np.testing.assert_allclose(fill.values, mean.mean(axis=(1, 2))[::-1], rtol=1e-5)
    assert "per-channel average" in fill.note and "mean.binaryproto" in fill.note


def test_bgr_channel_mean_is_reordered_to_rgb() -> None:
    model = small_model(Preprocessing(channel_order="bgr", mean=[104.0, 117.0, 123.0]))
    np.testing.assert_allclose(perturbation.fill_value(model, "mean").values, [123.0, 117.0, 104.0])


def test_model_without_a_mean_falls_back_to_grey_and_says_so() -> None:
    fill = perturbation.fill_value(small_model(), "mean")
    np.testing.assert_array_equal(fill.values, [127.5] * 3)
    assert "records no preprocessing mean" in fill.note


def test_unknown_fill_is_refused(bundled: LoadedModel) -> None:
    with pytest.raises(InvalidArgument, match="unknown fill 'pink'"):
        perturbation.fill_value(bundled, "pink")


# ---- layers and classes -------------------------------------------------------------------------


def test_default_layers_are_the_papers(bundled: LoadedModel) -> None:
    assert perturbation.first_conv(bundled).name == "pool1"  # layer 1
    assert perturbation.last_conv(bundled).name == "pool5"  # layer 5
    assert perturbation.last_hidden(bundled).name == "relu7"  # layer 7
    assert [r.name for r in perturbation.layers_or(bundled, [7, "relu7", 1], [])] == ["relu7", "pool1"]


def test_true_classes_by_name_index_or_top1(bundled: LoadedModel) -> None:
    base = np.eye(10)[[3, 8]] * 0.9 + 0.01
    got = perturbation.true_classes(bundled, ["", "ship"], base)
    assert [(t.index, t.label, t.from_top1) for t in got] == [(3, "cat", True), (8, "ship", False)]
    assert [t.index for t in perturbation.true_classes(bundled, ["2"], base)] == [2, 2]
    assert [t.from_top1 for t in perturbation.true_classes(bundled, [], base)] == [True, True]
    with pytest.raises(InvalidArgument, match="'kat' of image 1 is unknown; this model's classes are airplane"):
        perturbation.true_classes(bundled, ["cat", "kat"], base)
    with pytest.raises(InvalidArgument, match="3 true classes for 2 images"):
        perturbation.true_classes(bundled, ["cat"] * 3, base)


def test_model_without_class_names_takes_indices() -> None:
    model = small_model()
    base = np.full((1, 4), 0.25)
    assert perturbation.true_classes(model, ["3"], base)[0].index == 3
    with pytest.raises(InvalidArgument, match="records no class names; give an index 0..3"):
        perturbation.true_classes(model, ["4"], base)
