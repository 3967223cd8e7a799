"""Reductions against autograd, with their axes as an attribute (before opset 18; 13 for ReduceSum)
or as an input, with and without keepdims."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rule_testing import Case, check, i64, make_model, node

REFERENCES = {
    "ReduceMean": lambda x, axes, keep: x.mean(axes, keepdim=keep),
    "ReduceSum": lambda x, axes, keep: x.sum(axes, keepdim=keep),
    "ReduceMax": lambda x, axes, keep: x.amax(axes, keepdim=keep),
    "ReduceMin": lambda x, axes, keep: x.amin(axes, keepdim=keep),
    "ReduceSumSquare": lambda x, axes, keep: (x * x).sum(axes, keepdim=keep),
    "ReduceL1": lambda x, axes, keep: x.abs().sum(axes, keepdim=keep),
    "ReduceL2": lambda x, axes, keep: torch.sqrt((x * x).sum(axes, keepdim=keep)),
}
INPUT_FORM_FROM = {"ReduceSum": 13}


def reduce_model(op: str, axes: list[int], keepdims: int, opset: int, shape=(3, 4, 5)):
    if opset >= INPUT_FORM_FROM.get(op, 18):
        return make_model([node(op, ["x", "axes"], keepdims=keepdims)], shape, {"axes": i64(axes)}, opset=opset)
    return make_model([node(op, ["x"], axes=axes, keepdims=keepdims)], shape, opset=opset)


@pytest.mark.parametrize("op", list(REFERENCES))
@pytest.mark.parametrize("axes", [[2, 3], [-1], [1, 3]], ids=["spatial", "last", "channel+width"])
@pytest.mark.parametrize("keepdims", [1, 0])
@pytest.mark.parametrize("opset", [11, 13, 18])
def test_reduce(op, axes, keepdims, opset):
    model = reduce_model(op, axes, keepdims, opset)
    ref = REFERENCES[op]
    make_x = (lambda rng, shape: rng.uniform(0.5, 2.0, shape)) if op == "ReduceL2" else None
    check(Case(model, (3, 4, 5), lambda x, relu: ref(x, tuple(axes), bool(keepdims)), make_x=make_x), f"{op}-{axes}-{keepdims}-{opset}")


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_extremum_shares_ties_like_torch(op):
    """Equal maxima (a plateau after a ReLU) share the signal evenly, as PyTorch's amax/amin."""
    model = reduce_model(op, [2, 3], 1, 18)

    def make_x(rng, shape):
        x = rng.standard_normal(shape)
        x[:, :, :2, :2] = 3.0 if op == "ReduceMax" else -3.0
        return x

    check(Case(model, (3, 4, 5), lambda x, relu: REFERENCES[op](x, (2, 3), True), make_x=make_x), f"{op}-ties")


def test_reduce_sum_with_empty_axes_and_noop_is_identity():
    model = make_model([node("ReduceSum", ["x", "axes"], noop_with_empty_axes=1)], (3, 4), {"axes": np.zeros(0, np.int64)}, opset=13)
    check(Case(model, (3, 4), lambda x, relu: x, affine=True), "reduce-noop")


def test_global_average_pool_as_mean_of_relu():
    """``x.mean((2, 3))`` after a ReLU, as torch.onnx.export writes global average pooling."""
    model = make_model([node("Relu", ["x"], "r"), node("ReduceMean", ["r", "axes"], keepdims=0)], (3, 4, 5), {"axes": i64([2, 3])})
    check(Case(model, (3, 4, 5), lambda x, relu: relu(x).mean((2, 3))), "gap-mean")
