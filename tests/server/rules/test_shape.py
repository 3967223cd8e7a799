"""Ops that move values, against autograd and onnxruntime's Jacobian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from rule_testing import Case, check, i64, make_model, node


SHAPE_CASES = {
    "Reshape": ((2, 3, 4), [node("Reshape", ["x", "s"])], {"s": i64([-1, 6, 4])}, lambda x, relu: x.reshape(-1, 6, 4)),
    "Reshape-zero": ((2, 3, 4), [node("Reshape", ["x", "s"])], {"s": i64([0, 3, 8])}, lambda x, relu: x.reshape(-1, 3, 8)),
    "Flatten": ((2, 3, 4), [node("Flatten", ["x"], axis=1)], {}, lambda x, relu: x.flatten(1)),
    "Squeeze": ((1, 3, 4), [node("Squeeze", ["x", "a"])], {"a": i64([1])}, lambda x, relu: x.squeeze(1)),
    "Unsqueeze": ((3, 4), [node("Unsqueeze", ["x", "a"])], {"a": i64([2, -1])}, lambda x, relu: x.unsqueeze(2).unsqueeze(-1)),
    "Transpose": ((2, 3, 4), [node("Transpose", ["x"], perm=[0, 2, 3, 1])], {}, lambda x, relu: x.permute(0, 2, 3, 1)),
    "Transpose-3cycle": ((2, 3, 4), [node("Transpose", ["x"], perm=[0, 3, 1, 2])], {}, lambda x, relu: x.permute(0, 3, 1, 2)),
    "Concat-branches": ((2, 3, 4), [node("Relu", ["x"], "r"), node("Tanh", ["x"], "t"), node("Concat", ["r", "t", "x"], axis=1)], {},
                        lambda x, relu: torch.cat([relu(x), torch.tanh(x), x], 1)),
    "Concat-negative-axis": ((2, 3, 4), [node("Sigmoid", ["x"], "s"), node("Concat", ["x", "s"], axis=-1)], {},
                             lambda x, relu: torch.cat([x, torch.sigmoid(x)], -1)),
    "Split-use-second": ((4, 3, 2), [helper.make_node("Split", ["x", "s"], ["a", "y"], axis=1)], {"s": i64([1, 3])},
                         lambda x, relu: x[:, 1:]),
    "Split-swap": ((4, 3, 2), [helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2), node("Concat", ["b", "a"], axis=1)], {},
                   lambda x, relu: torch.cat([x[:, 2:], x[:, :2]], 1)),
    "Split-three-use-two": ((2, 6, 2), [helper.make_node("Split", ["x"], ["a", "b", "c"], axis=2, num_outputs=3), node("Mul", ["a", "c"])], {},
                            lambda x, relu: x[:, :, :2] * x[:, :, 4:]),
    "Gather-channels": ((3, 4, 5), [node("Gather", ["x", "i"], axis=1)], {"i": i64([2, 1, 0])}, lambda x, relu: x[:, [2, 1, 0]]),
    "Gather-negative-axis": ((3, 4, 5), [node("Gather", ["x", "i"], axis=-3)], {"i": i64([2, 0, 1])}, lambda x, relu: x[:, [2, 0, 1]]),
    "Gather-cycle": ((3, 4, 5), [node("Gather", ["x", "i"], axis=1)], {"i": i64([1, 2, 0])}, lambda x, relu: x[:, [1, 2, 0]]),
    "Pad": ((2, 3, 4), [node("Pad", ["x", "p", "v"])], {"p": i64([0, 0, 1, 2, 0, 1, 0, 3]), "v": np.array(0.5, np.float32)},
            lambda x, relu: F.pad(x, (2, 3, 1, 0, 0, 1), value=0.5)),
    "Pad-negative": ((2, 5, 6), [node("Pad", ["x", "p"])], {"p": i64([0, 0, -1, 2, 0, 1, 1, -2])},
                     lambda x, relu: F.pad(x, (2, -2, -1, 1, 0, 1))),
    "Pad-axes": ((2, 3, 4), [node("Pad", ["x", "p", "", "a"])], {"p": i64([1, 0, 2, 1]), "a": i64([-1, 2])},
                 lambda x, relu: F.pad(x, (1, 2, 0, 1))),
    "Pad-zero": ((2, 3, 4), [node("Pad", ["x", "p"])], {"p": i64([0, 0, 1, 1, 0, 0, 1, 1])}, lambda x, relu: F.pad(x, (1, 1, 1, 1))),
    "Identity": ((2, 3, 4), [node("Identity", ["x"])], {}, lambda x, relu: x),
    "Dropout": ((2, 3, 4), [helper.make_node("Dropout", ["x"], ["y", "mask"])], {}, lambda x, relu: x),
    "Dropout-ratio": ((2, 3, 4), [node("Dropout", ["x", "r"])], {"r": np.array(0.3, np.float32)}, lambda x, relu: x),
}


@pytest.mark.parametrize("name", SHAPE_CASES)
def test_shape_op(name):
    shape, nodes, inits, ref = SHAPE_CASES[name]
    affine = not any(n.op_type in ("Relu", "Tanh", "Sigmoid", "Mul") for n in nodes)
    check(Case(make_model(nodes, shape, inits), shape, ref, affine=affine), f"shape-{name}")


# (input shape, nodes, initializers, torch reference, opset)
MORE_SHAPE_CASES = {
    "Gather-duplicates": ((4, 3), [node("Gather", ["x", "i"], axis=1)], {"i": i64([0, 3, 3, 1])}, lambda x, relu: x[:, [0, 3, 3, 1]], 18),
    "Gather-scalar-index": ((4, 3), [node("Gather", ["x", "i"], axis=1)], {"i": np.array(2, np.int64)}, lambda x, relu: x[:, 2], 18),
    "Gather-negative-2d-indices": ((5, 3), [node("Gather", ["x", "i"], axis=2)], {"i": i64([[-1, 0], [1, 1]])}, lambda x, relu: x[:, :, [[2, 0], [1, 1]]], 18),
    "Gather-class-token": ((5, 4), [node("Gather", ["x", "i"], axis=1)], {"i": np.array(0, np.int64)}, lambda x, relu: x[:, 0], 13),
    "Slice-steps": ((6, 7), [node("Slice", ["x", "s", "e", "a", "t"])], {"s": i64([1, 6]), "e": i64([6, 0]), "a": i64([1, 2]), "t": i64([2, -2])},
                    lambda x, relu: x[:, 1:6:2].flip(2)[:, :, 0:6:2], 18),
    "Slice-negative-starts": ((6, 7), [node("Slice", ["x", "s", "e", "a"])], {"s": i64([-4]), "e": i64([-1]), "a": i64([-1])},
                             lambda x, relu: x[:, :, -4:-1], 18),
    "Slice-past-the-end": ((6, 7), [node("Slice", ["x", "s", "e", "a"])], {"s": i64([2]), "e": i64([1 << 62]), "a": i64([1])},
                          lambda x, relu: x[:, 2:], 18),
    "Slice-opset9-attributes": ((6, 7), [node("Slice", ["x"], starts=[1, 0], ends=[4, 5], axes=[1, 2])], {}, lambda x, relu: x[:, 1:4, 0:5], 9),
    "Pad-opset9-attributes": ((3, 4), [node("Pad", ["x"], pads=[0, 1, 2, 0, 0, 1], value=0.25)], {},
                              lambda x, relu: F.pad(x, (2, 1, 1, 0), value=0.25), 9),
    "Pad-opset11-inputs": ((3, 4), [node("Pad", ["x", "p"])], {"p": i64([0, 2, 0, 0, 1, 3])}, lambda x, relu: F.pad(x, (0, 3, 2, 1)), 11),
    "Split-opset11-attribute": ((5, 2), [helper.make_node("Split", ["x"], ["a", "y"], axis=1, split=[2, 3])], {}, lambda x, relu: x[:, 2:], 11),
    "Split-opset13-input": ((5, 2), [helper.make_node("Split", ["x", "s"], ["y", "b"], axis=1)], {"s": i64([4, 1])}, lambda x, relu: x[:, :4], 13),
    "Split-chunk-and-shuffle": ((4, 3), [helper.make_node("Split", ["x"], ["a", "b"], axis=1), node("Relu", ["b"], "rb"), node("Concat", ["a", "rb"], axis=1)],
                                {}, lambda x, relu: torch.cat([x[:, :2], relu(x[:, 2:])], 1), 11),
    "Squeeze-opset11-attribute": ((1, 3, 4), [node("Squeeze", ["x"], axes=[1])], {}, lambda x, relu: x.squeeze(1), 11),
    "Unsqueeze-opset11-attribute": ((3, 4), [node("Unsqueeze", ["x"], axes=[1, 4])], {}, lambda x, relu: x.unsqueeze(1).unsqueeze(4), 11),
    "Expand": ((3, 1), [node("Expand", ["x", "s"])], {"s": i64([1, 3, 4])}, lambda x, relu: x.expand(-1, 3, 4), 18),
    "Where": ((3, 4), [node("Greater", ["x", "zero"], "c"), node("Tanh", ["x"], "t"), node("Where", ["c", "x", "t"])], {"zero": np.array(0.0, np.float32)},
              lambda x, relu: torch.where(x > 0, x, torch.tanh(x)), 18),
    "Cast-double-and-back": ((3, 4), [node("Cast", ["x"], "d", to=TensorProto.DOUBLE), node("Cast", ["d"], to=TensorProto.FLOAT)], {}, lambda x, relu: x, 18),
    "Dropout-opset7-ratio": ((3, 4), [node("Dropout", ["x"], ratio=0.4)], {}, lambda x, relu: x, 7),
    "Dropout-opset10": ((3, 4), [helper.make_node("Dropout", ["x"], ["y", "mask"], ratio=0.4)], {}, lambda x, relu: x, 10),
    "Concat-spatial": ((2, 3), [node("Relu", ["x"], "r"), node("Concat", ["r", "x"], axis=2)], {}, lambda x, relu: torch.cat([relu(x), x], 2), 18),
    # channel shuffle (ShuffleNet): groups of channels interleaved by Reshape -> Transpose -> Reshape
    "channel-shuffle": ((6, 2, 3), [node("Reshape", ["x", "g"], "v"), node("Transpose", ["v"], "t", perm=[0, 2, 1, 3, 4]), node("Reshape", ["t", "f"])],
                        {"g": i64([-1, 2, 3, 2, 3]), "f": i64([-1, 6, 2, 3])},
                        lambda x, relu: x.reshape(-1, 2, 3, 2, 3).transpose(1, 2).reshape(-1, 6, 2, 3), 18),
    # attention's q, k, v: the batch axis moves to position 1 and comes back to 0 through a Gather
    "batch-axis-moves": ((4, 6), [node("Reshape", ["x", "s"], "r"), node("Transpose", ["r"], "t", perm=[2, 0, 1, 3]), node("Gather", ["t", "one"], axis=0)],
                         {"s": i64([0, 4, 3, 2]), "one": np.array(1, np.int64)}, lambda x, relu: x.reshape(-1, 4, 3, 2).permute(2, 0, 1, 3)[1], 18),
}


@pytest.mark.parametrize("name", MORE_SHAPE_CASES)
def test_moving_values(name):
    shape, nodes, inits, ref, opset = MORE_SHAPE_CASES[name]
    affine = not any(n.op_type in ("Relu", "Tanh") for n in nodes)
    check(Case(make_model(nodes, shape, inits, opset=opset), shape, ref, affine=affine), f"moving-{name}")
