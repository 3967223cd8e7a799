"""Receptive fields from the registry's mappings: for chains of ops with positive weights on a
positive input (no cancellation, no ReLU), the box of an activation is exactly the bounding box of
the pixels its gradient reaches; through max pooling (one pixel per window) it contains them."""

from __future__ import annotations

import numpy as np
import pytest

from rule_testing import Projector, i64, make_model, node
from zfnet.server.layers import ReceptiveFields


def positive_weights(*shape: int) -> np.ndarray:
    return np.random.default_rng(len(shape)).uniform(0.5, 1.5, shape).astype(np.float32)


CHAINS = {
    "conv-s2-avgpool": ([node("Conv", ["x", "w1"], "a", pads=[1, 1, 1, 1], strides=[2, 2]), node("AveragePool", ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                        {"w1": positive_weights(2, 2, 3, 3)}),
    "dilated-conv-pool-valid-conv": ([node("Conv", ["x", "w5"], "a", pads=[4, 4, 4, 4], dilations=[2, 2]), node("AveragePool", ["a"], "p", kernel_shape=[2, 2], strides=[2, 2]),
                                      node("Conv", ["p", "w1"])], {"w5": positive_weights(2, 2, 5, 5), "w1": positive_weights(2, 2, 3, 3)}),
    "pad-slice-resize": ([node("Pad", ["x", "pads"], "a"), node("Conv", ["a", "w1"], "b"), node("Slice", ["b", "s", "e", "ax", "st"], "c"),
                          node("Resize", ["c", "", "sc"], "d", mode="nearest"), node("Conv", ["d", "w1"])],
                         {"pads": i64([0, 0, 2, 1, 0, 0, 0, 2]), "w1": positive_weights(2, 2, 3, 3), "s": i64([1]), "e": i64([9]), "ax": i64([3]), "st": i64([2]),
                          "sc": np.array([1, 1, 1, 2], np.float32)}),
    "channels-last-linear": ([node("Transpose", ["x"], "t", perm=[0, 2, 3, 1]), node("MatMul", ["t", "lin"], "m"), node("Transpose", ["m"], "u", perm=[0, 3, 1, 2]),
                              node("Conv", ["u", "w1"], pads=[1, 1, 1, 1])], {"lin": positive_weights(2, 2), "w1": positive_weights(2, 2, 3, 3)}),
    "concat-width": ([node("Conv", ["x", "w1"], "a"), node("Conv", ["x", "w5"], "b", pads=[1, 1, 1, 1]), node("Concat", ["a", "b"], "c", axis=3),
                      node("Conv", ["c", "w1"])], {"w1": positive_weights(2, 2, 3, 3), "w5": positive_weights(2, 2, 5, 5)}),
    "transposed-conv": ([node("ConvTranspose", ["x", "w1"], "a", strides=[2, 2], pads=[1, 1, 1, 1]), node("Conv", ["a", "w1"], strides=[2, 2])],
                        {"w1": positive_weights(2, 2, 3, 3)}),
    "gather-rows": ([node("Conv", ["x", "w1"], "a", pads=[1, 1, 1, 1]), node("Gather", ["a", "rows"], axis=2)], {"w1": positive_weights(2, 2, 3, 3),
                                                                                                         "rows": i64([7, 0, 3])}),
}


def _support_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(np.abs(pixels).sum(axis=0))
    return (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)


@pytest.mark.parametrize("name", CHAINS)
def test_box_is_the_gradient_support(name):
    nodes, inits = CHAINS[name]
    projector = Projector(make_model(nodes, (2, 9, 10), inits))
    fields = ReceptiveFields(projector.exposed)
    x = np.random.default_rng(0).uniform(0.5, 1.5, (1, 2, 9, 10)).astype(np.float32)
    out = projector.forward(x)[0]
    spatial = out.shape[2:]
    for location in {(0, 0), (spatial[0] - 1, spatial[1] - 1), (spatial[0] // 2, spatial[1] // 2)}:
        g = np.zeros((1, *out.shape[1:]), np.float32)
        g[(0, 1, *location)] = 1.0
        pixels = projector.project("backprop", x, g, np.zeros(1, np.int64))[0]
        assert fields.box("y", location, 1) == _support_box(pixels), f"{name} at {location}"
    g = np.zeros((1, *out.shape[1:]), np.float32)
    g[0, 0] = 1.0  # a whole feature map
    assert fields.box("y", None, 0) == _support_box(projector.project("backprop", x, g, np.zeros(1, np.int64))[0])


def test_max_pooling_box_holds_the_switch():
    nodes = [node("Conv", ["x", "w1"], "a", pads=[1, 1, 1, 1]), node("MaxPool", ["a"], kernel_shape=[3, 3], strides=[2, 2])]
    projector = Projector(make_model(nodes, (2, 9, 10), {"w1": positive_weights(2, 2, 3, 3)}))
    fields = ReceptiveFields(projector.exposed)
    x = np.random.default_rng(1).uniform(0.5, 1.5, (1, 2, 9, 10)).astype(np.float32)
    out = projector.forward(x)[0]
    for location in np.ndindex(*out.shape[2:]):
        g = np.zeros((1, *out.shape[1:]), np.float32)
        g[(0, 0, *location)] = 1.0
        top, left, bottom, right = fields.box("y", location, 0)
        support = _support_box(projector.project("deconvnet", x, g, np.zeros(1, np.int64))[0])
        assert top <= support[0] and left <= support[1] and support[2] <= bottom and support[3] <= right


def test_fully_connected_layer_sees_the_whole_image():
    nodes = [node("Conv", ["x", "w1"], "a"), node("Flatten", ["a"], "f"), node("Gemm", ["f", "fc"], transB=1)]
    projector = Projector(make_model(nodes, (2, 9, 10), {"w1": positive_weights(2, 2, 3, 3), "fc": positive_weights(3, 2 * 7 * 8)}))
    assert ReceptiveFields(projector.exposed).box("y", (), 2) == (0, 0, 9, 10)
