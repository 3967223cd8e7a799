"""Elementwise arithmetic against autograd, constants and two activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rule_testing import Case, T, check, make_model, node, positive


CONSTANT = np.array([0.5, -1.5, 2.0], np.float32).reshape(1, 3, 1, 1)
ARITH = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}


@pytest.mark.parametrize("op", list(ARITH))
@pytest.mark.parametrize("constant_first", [False, True])
@pytest.mark.parametrize("constant", [CONSTANT, CONSTANT.reshape(3, 1, 1), np.array(1.7, np.float32)], ids=["1C11", "C11", "scalar"])
def test_arithmetic_with_constant(op, constant_first, constant):
    inputs = ["c", "x"] if constant_first else ["x", "c"]
    model = make_model([node(op, inputs)], (3, 4, 5), {"c": constant})
    make_x = positive if op == "Div" and constant_first else None

    def ref(x, relu):
        a, b = (T(constant), x) if constant_first else (x, T(constant))
        return ARITH[op](a, b)

    check(Case(model, (3, 4, 5), ref, affine=op != "Div" or not constant_first, make_x=make_x), f"{op}-{constant_first}-{constant.shape}")


def _relu_minus_itself(x, relu):
    r = relu(x)  # one ReLU, two consumers: their signals add before its rule
    return r - r


TWO_INPUT_CASES = {
    # x op f(x): both inputs carry the signal, which adds at x
    "Add-x-relu": ([node("Relu", ["x"], "r"), node("Add", ["x", "r"])], lambda x, relu: x + relu(x)),
    "Sub-relu-x": ([node("Relu", ["x"], "r"), node("Sub", ["r", "x"])], lambda x, relu: relu(x) - x),
    "Mul-x-relu": ([node("Relu", ["x"], "r"), node("Mul", ["x", "r"])], lambda x, relu: x * relu(x)),
    "Mul-x-tanh": ([node("Tanh", ["x"], "t"), node("Mul", ["x", "t"])], lambda x, relu: x * torch.tanh(x)),
    "Div-x-sigmoid": ([node("Sigmoid", ["x"], "s"), node("Div", ["x", "s"])], lambda x, relu: x / torch.sigmoid(x)),
    "Div-relu-sigmoid": ([node("Relu", ["x"], "r"), node("Sigmoid", ["x"], "s"), node("Div", ["r", "s"])], lambda x, relu: relu(x) / torch.sigmoid(x)),
    "Add-x-x": ([node("Add", ["x", "x"])], lambda x, relu: x + x),
    "Mul-x-x": ([node("Mul", ["x", "x"])], lambda x, relu: x * x),
    "Sub-r-r": ([node("Relu", ["x"], "r"), node("Sub", ["r", "r"])], _relu_minus_itself),
    # broadcasting between two activations (squeeze-and-excitation): the pooled branch sums back
    "Mul-x-gap": ([node("GlobalAveragePool", ["x"], "p"), node("Mul", ["x", "p"])], lambda x, relu: x * x.mean((2, 3), keepdim=True)),
    "Div-x-gap-sigmoid": ([node("GlobalAveragePool", ["x"], "p"), node("Sigmoid", ["p"], "s"), node("Div", ["x", "s"])],
                          lambda x, relu: x / torch.sigmoid(x.mean((2, 3), keepdim=True))),
    "Sub-gap-x": ([node("GlobalMaxPool", ["x"], "p"), node("Sub", ["p", "x"])], lambda x, relu: F.adaptive_max_pool2d(x, 1) - x),
}


@pytest.mark.parametrize("name", TWO_INPUT_CASES)
def test_arithmetic_two_activations(name):
    nodes, ref = TWO_INPUT_CASES[name]
    check(Case(make_model(nodes, (3, 4, 5)), (3, 4, 5), ref), f"two-{name}")


@pytest.mark.parametrize(
    "exponent", [np.array(2.0, np.float32), np.array(3.0, np.float32), np.array(0.5, np.float32), np.array(-1.5, np.float32),
                 np.array([1.0, 2.0, 0.5], np.float32).reshape(1, 3, 1, 1), np.array(2, np.int64), np.array(3, np.int32)],
    ids=["2", "3", "0.5", "-1.5", "per-channel", "int64-2", "int32-3"],
)
def test_pow_constant_exponent(exponent):
    model = make_model([node("Pow", ["x", "e"])], (3, 4, 5), {"e": exponent})
    check(Case(model, (3, 4, 5), lambda x, relu: x ** T(exponent), make_x=positive), f"pow-{exponent.tolist()}")


def test_pow_of_an_activation_exponent():
    """x ** Sigmoid(x): the exponent carries signal too."""
    model = make_model([node("Sigmoid", ["x"], "s"), node("Pow", ["x", "s"])], (3, 4, 5))
    check(Case(model, (3, 4, 5), lambda x, relu: x ** torch.sigmoid(x), make_x=positive), "pow-activation-exponent")
