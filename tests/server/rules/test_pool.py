"""Max, average and global pooling against autograd; switches, ties and ceil-mode sizes."""

from __future__ import annotations

import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rule_testing import Case, IMAGE_INDEX, METHODS, N_IMAGES, Projector, Reference, RELU, assert_close, check, make_model, node, same_pads, torch_pads, torch_vjp, weights
from zfnet.converters import expose


def pool_case(op: str, k=3, stride=2, pads=None, size=(8, 8), ceil_mode=0, channels=2, dilation=None, count_include_pad=None, before=None,
              auto_pad=None) -> Case:
    """MaxPool / AveragePool on ``x`` (or on Relu(x) when ``before`` == "Relu")."""
    rank = len(size)
    pads = pads if pads is not None else [0] * 2 * rank
    attrs = dict(kernel_shape=[k] * rank, strides=[stride] * rank, pads=pads, ceil_mode=ceil_mode)
    if auto_pad:
        del attrs["pads"]
        attrs["auto_pad"] = auto_pad
        pads = same_pads(size, [k] * rank, [stride] * rank, [dilation or 1] * rank, auto_pad == "SAME_UPPER")
    if dilation:
        attrs["dilations"] = [dilation] * rank
    if count_include_pad is not None:
        attrs["count_include_pad"] = count_include_pad
    nodes = [node(op, ["r" if before else "x"], **attrs)]
    if before:
        nodes.insert(0, node(before, ["x"], "r"))
    model = make_model(nodes, (channels, *size))
    symmetric = pads[:rank] == pads[rank:]
    ref: Reference | None = None
    if op == "MaxPool":
        max_pool = {1: F.max_pool1d, 2: F.max_pool2d}[rank]

        def max_pooled(x, relu):
            x = relu(x) if before else x
            if not symmetric:
                x = F.pad(x, torch_pads(pads), value=-math.inf)
            return max_pool(x, k, stride, pads[:rank] if symmetric else 0, dilation or 1, bool(ceil_mode))

        ref = max_pooled
    elif symmetric and pads[0] * 2 <= k and not auto_pad:  # torch: pad at most half the kernel
        average_pool = {1: F.avg_pool1d, 2: F.avg_pool2d}[rank]

        def average_pooled(x, relu):
            return average_pool(x, k, stride, pads[:rank], bool(ceil_mode), bool(count_include_pad))

        ref = average_pooled
    return Case(model, (channels, *size), ref, affine=op == "AveragePool")


MAX_POOL_CASES = {
    "3x3s2-p1": dict(pads=[1, 1, 1, 1]),
    "3x3s2-p1-ceil": dict(pads=[1, 1, 1, 1], ceil_mode=1),
    "3x3s2-p1-odd": dict(pads=[1, 1, 1, 1], size=(7, 9)),
    "3x3s2-p1-odd-ceil": dict(pads=[1, 1, 1, 1], size=(7, 9), ceil_mode=1),
    "3x3s2-ceil": dict(size=(8, 8), ceil_mode=1),  # (8 - 3) / 2 = 2.5: a clipped last window
    "3x3s2-odd": dict(size=(9, 7)),
    "3x3s1-p1": dict(stride=1, pads=[1, 1, 1, 1]),  # heavy overlap: a local max wins up to 9 windows
    "2x2s2": dict(k=2, stride=2),
    "2x2s2-odd": dict(k=2, stride=2, size=(7, 7)),
    "2x2s2-odd-ceil": dict(k=2, stride=2, size=(7, 7), ceil_mode=1),
    "2x2s2-p1-ceil-drops-last": dict(k=2, stride=2, pads=[1, 1, 1, 1], size=(7, 7), ceil_mode=1),  # last window would start in the padding
    "3x3s3-p1-ceil-drops-last": dict(k=3, stride=3, pads=[1, 1, 1, 1], size=(8, 8), ceil_mode=1),
    "3x3s2-asymmetric-pads": dict(pads=[0, 1, 1, 0], size=(8, 7)),
    "3x3s2-dilation2": dict(dilation=2, pads=[1, 1, 1, 1], size=(9, 10)),
    "1d-3s2-p1": dict(pads=[1, 1], size=(9,)),
    "same-upper": dict(k=3, stride=2, size=(8, 7), auto_pad="SAME_UPPER"),
    "same-lower-k2": dict(k=2, stride=2, size=(7, 7), auto_pad="SAME_LOWER"),
    "after-relu": dict(pads=[1, 1, 1, 1], before="Relu"),  # ties among the zeros
}


@pytest.mark.parametrize("name", MAX_POOL_CASES)
def test_max_pool(name):
    check(pool_case("MaxPool", **MAX_POOL_CASES[name]), f"maxpool-{name}")


def _switches_and_signal(model, x, layer="y"):
    projector = Projector(model, layer)
    y, switches = projector.forward(x, [layer, layer + ".switches"])
    return projector, y, switches


@pytest.mark.parametrize("k, stride, pads", [(2, 2, [0, 0, 0, 0]), (3, 2, [1, 1, 1, 1]), (3, 1, [1, 1, 1, 1])])
def test_max_pool_ties_pick_the_first_max_like_torch(k, stride, pads):
    """An input of equal values: onnxruntime's switches are torch's indices (the first max in the window,
    in row-major order, padding never chosen), and every method puts each window's signal there, summed."""
    model = make_model([node("MaxPool", ["x"], kernel_shape=[k, k], strides=[stride, stride], pads=pads)], (1, 6, 6))
    x = np.full((N_IMAGES, 1, 6, 6), 0.5, np.float32)
    projector, y, switches = _switches_and_signal(model, x)
    _, indices = F.max_pool2d(torch.tensor(x), k, stride, pads[0], return_indices=True)
    plane = 36
    np.testing.assert_array_equal(switches % plane, indices.numpy())
    np.testing.assert_array_equal(switches // plane, np.broadcast_to(np.arange(N_IMAGES).reshape(-1, 1, 1, 1), switches.shape))  # flat over N*C*H*W
    g = np.random.default_rng(1).standard_normal((len(IMAGE_INDEX), *y.shape[1:])).astype(np.float32)
    for method in METHODS:
        rec = projector.project(method, x, g, IMAGE_INDEX)
        expected = torch_vjp(lambda t, relu: F.max_pool2d(t, k, stride, pads[0]), x[IMAGE_INDEX], g, RELU[method])[1]
        assert_close(rec, expected, method)


def test_max_pool_ties_after_relu_all_methods():
    """Relu then MaxPool on a mostly negative input: windows of zeros tie; the switch is the first zero.
    Deconvnet's signal goes there whatever the ReLU did (it is rectified, not masked)."""
    model = make_model([node("Relu", ["x"], "r"), node("MaxPool", ["r"], kernel_shape=[2, 2], strides=[2, 2])], (2, 6, 6))
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((N_IMAGES, 2, 6, 6)) - 1.5).astype(np.float32)
    x[0, 0] = -1.0  # a whole channel of ties
    projector = Projector(model)
    g = rng.standard_normal((len(IMAGE_INDEX), 2, 3, 3)).astype(np.float32)
    for method in METHODS:
        rec = projector.project(method, x, g, IMAGE_INDEX)
        expected = torch_vjp(lambda t, relu: F.max_pool2d(relu(t), 2, 2), x[IMAGE_INDEX], g, RELU[method])[1]
        assert_close(rec, expected, method)
    rec = projector.project("deconvnet", x, g, np.zeros(3, np.int64))  # every row from image 0
    corners = rec[:, 0, ::2, ::2]  # the first element of each 2x2 window
    assert_close(corners, np.maximum(g[:, 0], 0).astype(np.float64), "deconvnet on the tied channel")


def test_global_max_pool_ties_pick_the_first_like_torch():
    """A channel of zeros after a ReLU: every method sends the signal to its first position (deconvnet
    rectified, the others masked to zero by the ReLU)."""
    model = make_model([node("Relu", ["x"], "r"), node("GlobalMaxPool", ["r"])], (2, 3, 4))
    rng = np.random.default_rng(8)
    x = rng.standard_normal((N_IMAGES, 2, 3, 4)).astype(np.float32)
    x[:, 1] = -1.0
    projector = Projector(model)
    g = rng.standard_normal((len(IMAGE_INDEX), 2, 1, 1)).astype(np.float32)
    for method in METHODS:
        rec = projector.project(method, x, g, IMAGE_INDEX)
        expected = torch_vjp(lambda t, relu: F.adaptive_max_pool2d(relu(t), 1), x[IMAGE_INDEX], g, RELU[method])[1]
        assert_close(rec, expected, method)
        if method == "deconvnet":
            assert_close(rec[:, 1, 0, 0], np.maximum(g[:, 1, 0, 0], 0).astype(np.float64), "first position")


def test_max_pool_overlapping_windows_add():
    """One dominant pixel chosen by all nine 3x3/1 windows around it receives the sum of their signals."""
    model = make_model([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])], (1, 5, 5))
    x = np.random.default_rng(3).uniform(-1, 0, (N_IMAGES, 1, 5, 5)).astype(np.float32)
    x[:, 0, 2, 2] = 10.0
    projector = Projector(model)
    g = np.random.default_rng(4).standard_normal((len(IMAGE_INDEX), 1, 5, 5)).astype(np.float32)
    for method in METHODS:
        rec = projector.project(method, x, g, IMAGE_INDEX)
        np.testing.assert_allclose(rec[:, 0, 2, 2], g[:, 0, 1:4, 1:4].sum(axis=(1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_ceil_mode_shapes_are_onnxruntime_s(op):
    """ONNX's opset-18 shape inference keeps a ceil-mode window that starts in the end padding; onnxruntime
    drops it (2x2/2, pad 1, on 7: 4 not 5). The exposed model declares onnxruntime's sizes, downstream too."""
    w = weights(1, 2, 2, 3, 3)
    attrs = dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
    nodes = [node(op, ["x"], "p1", **attrs), node(op, ["p1"], "p2", **attrs), node("Conv", ["p2", "w"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, (2, 13, 7), {"w": w})
    projector = Projector(model)
    names = [o.name for o in projector.exposed.graph.output]
    values = projector.forward(np.zeros((1, 2, 13, 7), np.float32), names)
    declared = {o.name: expose.tensor_shape(o)[1:] for o in projector.exposed.graph.output}
    assert {n: list(v.shape[1:]) for n, v in zip(names, values)} == declared
    assert declared["y"] == [2, 4, 3]  # 13 -> 7 -> 4, 7 -> 4 -> 3 (ONNX's inference: 13 -> 8 -> 5, 7 -> 5 -> 4)


AVERAGE_POOL_CASES = {
    f"{geometry}-cip{cip}-ceil{ceil}": dict(**kw, count_include_pad=cip, ceil_mode=ceil)
    for geometry, kw in {
        "3x3s2-p1": dict(pads=[1, 1, 1, 1]),
        "3x3s2-p1-odd": dict(pads=[1, 1, 1, 1], size=(7, 9)),
        "3x3s2-even-nopad": dict(size=(8, 8)),
        "2x2s2-p1-odd": dict(k=2, stride=2, pads=[1, 1, 1, 1], size=(7, 7)),  # ceil: the last window would start in the padding
        "3x3s3-p1": dict(k=3, stride=3, pads=[1, 1, 1, 1], size=(8, 8)),  # ceil: likewise
        "asymmetric-pads": dict(pads=[0, 1, 2, 0], size=(7, 8)),  # no torch equivalent: onnxruntime's Jacobian
        "1d-3s2-p1": dict(pads=[1, 1], size=(8,)),
        "same-upper": dict(k=3, stride=2, size=(8, 7), auto_pad="SAME_UPPER"),  # onnxruntime's Jacobian only
        "same-lower": dict(k=2, stride=2, size=(7, 7), auto_pad="SAME_LOWER"),
    }.items()
    for cip in (0, 1)
    for ceil in (0, 1)
}


@pytest.mark.parametrize("name", AVERAGE_POOL_CASES)
def test_average_pool(name):
    check(pool_case("AveragePool", **AVERAGE_POOL_CASES[name]), f"avgpool-{name}")


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("size", [(5, 6), (7,)])
def test_global_pool(op, size):
    model = make_model([node(op, ["x"])], (3, *size))
    axes = tuple(range(2, 2 + len(size)))

    def average(x, relu):
        return x.mean(axes, keepdim=True)

    def maximum(x, relu):
        return F.adaptive_max_pool2d(x, 1) if len(size) == 2 else F.adaptive_max_pool1d(x, 1)

    check(Case(model, (3, *size), average if op == "GlobalAveragePool" else maximum, affine=op == "GlobalAveragePool"), f"{op}-{size}")
