"""Convolution and transposed convolution against autograd and onnxruntime's Jacobian."""

from __future__ import annotations

import pytest
import torch.nn.functional as F
from onnx import helper, numpy_helper

from rule_testing import Case, Reference, T, check, make_model, node, same_pads, torch_pads, weights


def conv_case(cin=3, cout=4, k=3, size=(7, 7), stride=1, pads=None, dilation=1, group=1, auto_pad=None, bias=True, seed=0) -> Case:
    rank = len(size)
    kernel = [k] * rank if isinstance(k, int) else list(k)
    strides = [stride] * rank if isinstance(stride, int) else list(stride)
    dilations = [dilation] * rank
    w = weights(seed, cout, cin // group, *kernel, scale=0.5)
    b = weights(seed + 1, cout)
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dilations, group=group)
    if auto_pad:
        attrs["auto_pad"] = auto_pad
        pads = [0] * 2 * rank if auto_pad == "VALID" else same_pads(size, kernel, strides, dilations, auto_pad == "SAME_UPPER")
    else:
        pads = pads if pads is not None else [0] * 2 * rank
        attrs["pads"] = pads
    inits = {"w": w, "b": b} if bias else {"w": w}
    model = make_model([node("Conv", ["x", *inits], **attrs)], (cin, *size), inits)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]

    def ref(x, relu):
        return conv(F.pad(x, torch_pads(pads)), T(w), T(b) if bias else None, strides, 0, dilations, group)

    return Case(model, (cin, *size), ref, affine=True)


CONV_CASES = {
    "k3-s1-p1": dict(k=3, pads=[1, 1, 1, 1]),
    "k5-s1-p2": dict(k=5, pads=[2, 2, 2, 2]),
    "k3-s2-p1-even": dict(k=3, stride=2, pads=[1, 1, 1, 1], size=(8, 8)),  # (8 + 2 - 3) % 2 = 1: last row unused
    "k5-s2-p1-odd": dict(k=5, stride=2, pads=[1, 1, 1, 1], size=(10, 9)),  # (10 + 2 - 5) % 2 = 1
    "k3-s2-nopad": dict(k=3, stride=2, size=(8, 9)),
    "k5-s2-p2": dict(k=5, stride=2, pads=[2, 2, 2, 2], size=(9, 9)),
    "stride-2x1": dict(k=3, stride=(2, 1), pads=[1, 0, 1, 0], size=(8, 7)),
    "asymmetric-pads": dict(k=3, pads=[0, 1, 2, 0], size=(7, 6)),
    "asymmetric-pads-s2": dict(k=3, stride=2, pads=[2, 0, 0, 1], size=(8, 7)),
    "dilation2": dict(k=3, dilation=2, pads=[2, 2, 2, 2], size=(9, 9)),
    "dilation2-s2": dict(k=3, dilation=2, stride=2, pads=[1, 1, 1, 1], size=(10, 9)),
    "group2": dict(cin=4, cout=6, group=2, pads=[1, 1, 1, 1]),
    "depthwise": dict(cin=3, cout=3, group=3, pads=[1, 1, 1, 1]),
    "depthwise-x2": dict(cin=3, cout=6, group=3, stride=2, pads=[1, 1, 1, 1], size=(8, 8)),
    "no-bias": dict(bias=False, pads=[1, 1, 1, 1]),
    "1x1": dict(k=1),
    "same-upper-s1": dict(k=4, auto_pad="SAME_UPPER", size=(7, 7)),
    "same-lower-s1": dict(k=4, auto_pad="SAME_LOWER", size=(7, 7)),
    "same-upper-s2": dict(k=3, stride=2, auto_pad="SAME_UPPER", size=(8, 7)),
    "same-lower-s2": dict(k=3, stride=2, auto_pad="SAME_LOWER", size=(8, 7)),
    "same-upper-k5-s2": dict(k=5, stride=2, auto_pad="SAME_UPPER", size=(10, 9)),
    "valid-s2": dict(k=3, stride=2, auto_pad="VALID", size=(8, 9)),
    "conv1d": dict(k=3, stride=2, pads=[1, 2], size=(11,)),
    "conv1d-dilated-group": dict(cin=4, cout=4, k=3, dilation=2, group=2, pads=[2, 2], size=(9,)),
    "conv3d": dict(cin=2, cout=2, k=3, stride=2, pads=[1, 0, 1, 1, 1, 0], size=(4, 5, 5)),
}


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv(name):
    check(conv_case(**CONV_CASES[name]), f"conv-{name}")


def test_conv_with_constant_node_weights():
    w = weights(5, 2, 3, 3, 3)
    model = make_model(
        [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w")), node("Conv", ["x", "w"], pads=[1, 1, 1, 1])],
        (3, 6, 6),
    )
    check(Case(model, (3, 6, 6), lambda x, relu: F.conv2d(x, T(w), padding=1), affine=True), "conv-constant-node")


def conv_transpose_case(cin=4, cout=3, k=3, size=(5, 5), stride=2, pad=0, output_padding=0, group=1, dilation=1, pads=None, seed=0) -> Case:
    rank = len(size)
    w = weights(seed, cin, cout // group, *[k] * rank, scale=0.5)
    b = weights(seed + 1, cout)
    attrs = dict(strides=[stride] * rank, group=group, dilations=[dilation] * rank, pads=pads or [pad] * 2 * rank)
    if output_padding:
        attrs["output_padding"] = [output_padding] * rank
    model = make_model([node("ConvTranspose", ["x", "w", "b"], **attrs)], (cin, *size), {"w": w, "b": b})
    transpose = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[rank]
    ref: Reference | None = None
    if pads is None:  # torch pads symmetrically only

        def transposed(x, relu):
            return transpose(x, T(w), T(b), stride, pad, output_padding, group, dilation)

        ref = transposed
    return Case(model, (cin, *size), ref, affine=True)


CONV_TRANSPOSE_CASES = {
    "s2": dict(),
    "s2-p1": dict(pad=1),
    "s2-p1-outpad1": dict(pad=1, output_padding=1),
    "s3-k3-outpad2": dict(stride=3, output_padding=2, size=(4, 4)),
    "group2-k4-s2-p1": dict(cin=4, cout=6, k=4, pad=1, group=2),
    "dilation2": dict(dilation=2, pad=1, output_padding=1),
    "s1-p1": dict(stride=1, pad=1),
    "asymmetric-pads": dict(pads=[0, 1, 2, 1], output_padding=1),
    "1d": dict(size=(6,), pad=1, output_padding=1),
}


@pytest.mark.parametrize("name", CONV_TRANSPOSE_CASES)
def test_conv_transpose(name):
    check(conv_transpose_case(**CONV_TRANSPOSE_CASES[name]), f"convT-{name}")
