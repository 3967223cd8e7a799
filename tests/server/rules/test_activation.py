"""Activations against autograd: ReLU's three methods, every other nonlinearity by its derivative."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rule_testing import IMAGE_INDEX, METHODS, N_IMAGES, Case, Projector, T, check, make_model, node, positive


def test_relu_rules_explicit():
    """deconvnet = relu(g) whatever x; guided = relu(g) * (x > 0); backprop = g * (x > 0)."""
    model = make_model([node("Relu", ["x"])], (3, 4, 4))
    rng = np.random.default_rng(11)
    x = rng.standard_normal((N_IMAGES, 3, 4, 4)).astype(np.float32)
    x[0, 0, 0, :2] = 0.0  # the kink: not positive
    g = rng.standard_normal((len(IMAGE_INDEX), 3, 4, 4)).astype(np.float32)
    mask = (x[IMAGE_INDEX] > 0).astype(np.float32)
    expected = {"deconvnet": np.maximum(g, 0), "guided": np.maximum(g, 0) * mask, "backprop": g * mask}
    projector = Projector(model)
    for method in METHODS:
        np.testing.assert_array_equal(projector.project(method, x, g, IMAGE_INDEX), expected[method], err_msg=method)
    assert projector.projections["deconvnet"].forward_tensors == []  # deconvnet needs no forward values at all


ACTIVATION_CASES = {
    "Relu": ([node("Relu", ["x"])], {}, lambda x, relu: relu(x)),
    "LeakyRelu": ([node("LeakyRelu", ["x"], alpha=0.2)], {}, lambda x, relu: F.leaky_relu(x, 0.2)),
    "LeakyRelu-default": ([node("LeakyRelu", ["x"])], {}, lambda x, relu: F.leaky_relu(x, 0.01)),
    "PRelu": ([node("PRelu", ["x", "slope"])], {"slope": np.array([0.1, -0.5, 2.0], np.float32).reshape(3, 1, 1)},
              lambda x, relu: F.prelu(x, T([0.1, -0.5, 2.0]))),
    "Sigmoid": ([node("Sigmoid", ["x"])], {}, lambda x, relu: torch.sigmoid(x)),
    "Tanh": ([node("Tanh", ["x"])], {}, lambda x, relu: torch.tanh(x)),
    "Elu": ([node("Elu", ["x"], alpha=0.5)], {}, lambda x, relu: F.elu(x, 0.5)),
    "Elu-default": ([node("Elu", ["x"])], {}, lambda x, relu: F.elu(x)),
    "Abs": ([node("Abs", ["x"])], {}, lambda x, relu: x.abs()),
    "Softmax-axis1": ([node("Softmax", ["x"], axis=1)], {}, lambda x, relu: torch.softmax(x, 1)),
    "Softmax-default-axis": ([node("Softmax", ["x"])], {}, lambda x, relu: torch.softmax(x, -1)),
    "Softmax-axis2": ([node("Softmax", ["x"], axis=2)], {}, lambda x, relu: torch.softmax(x, 2)),
}


@pytest.mark.parametrize("name", ACTIVATION_CASES)
def test_activation(name):
    nodes, inits, ref = ACTIVATION_CASES[name]
    check(Case(make_model(nodes, (3, 4, 5), inits), (3, 4, 5), ref), f"act-{name}")


def test_softmax_on_logits():
    model = make_model([node("Softmax", ["x"], axis=1)], (7,))
    check(Case(model, (7,), lambda x, relu: torch.softmax(x, 1), make_x=lambda rng, shape: rng.standard_normal(shape) * 3), "softmax-2d")


def _scaled(factor: float):
    return lambda rng, shape: rng.standard_normal(shape) * factor


# (nodes, inits, torch reference, opset, input maker): nonlinearities other than ReLU pass the signal by their derivative
NONLINEAR_CASES = {
    "Selu": ([node("Selu", ["x"])], {}, lambda x, relu: F.selu(x), 18, None),
    "Selu-attributes": ([node("Selu", ["x"], alpha=1.2, gamma=0.9)], {}, lambda x, relu: 0.9 * torch.where(x > 0, x, 1.2 * torch.expm1(x)), 18, None),
    "Celu": ([node("Celu", ["x"], alpha=0.7)], {}, lambda x, relu: F.celu(x, 0.7), 18, None),
    "HardSigmoid-default": ([node("HardSigmoid", ["x"])], {}, lambda x, relu: torch.clamp(0.2 * x + 0.5, 0, 1), 18, _scaled(4)),
    "HardSigmoid-torch": ([node("HardSigmoid", ["x"], alpha=1 / 6, beta=0.5)], {}, lambda x, relu: F.hardsigmoid(x), 18, _scaled(5)),
    "HardSwish": ([node("HardSwish", ["x"])], {}, lambda x, relu: F.hardswish(x), 18, _scaled(5)),
    "Gelu": ([node("Gelu", ["x"])], {}, lambda x, relu: F.gelu(x), 20, _scaled(2)),
    "Gelu-tanh": ([node("Gelu", ["x"], approximate="tanh")], {}, lambda x, relu: F.gelu(x, approximate="tanh"), 20, _scaled(2)),
    "Erf": ([node("Erf", ["x"])], {}, lambda x, relu: torch.erf(x), 18, None),
    "Softplus": ([node("Softplus", ["x"])], {}, lambda x, relu: F.softplus(x), 18, _scaled(3)),
    "Softsign": ([node("Softsign", ["x"])], {}, lambda x, relu: F.softsign(x), 18, None),
    "Mish": ([node("Mish", ["x"])], {}, lambda x, relu: F.mish(x), 18, _scaled(2)),
    "Neg": ([node("Neg", ["x"])], {}, lambda x, relu: -x, 18, None),
    "Exp": ([node("Exp", ["x"])], {}, lambda x, relu: torch.exp(x), 18, None),
    "Log": ([node("Log", ["x"])], {}, lambda x, relu: torch.log(x), 18, positive),
    "Sqrt": ([node("Sqrt", ["x"])], {}, lambda x, relu: torch.sqrt(x), 18, positive),
    "Reciprocal": ([node("Reciprocal", ["x"])], {}, lambda x, relu: 1 / x, 18, positive),
    # ReLU6 and other clips: bounds as inputs from opset 11, as attributes before
    "Clip-relu6": ([node("Clip", ["x", "lo", "hi"])], {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)},
                   lambda x, relu: F.relu6(x), 18, _scaled(5)),
    "Clip-min-only": ([node("Clip", ["x", "lo"])], {"lo": np.array(-0.5, np.float32)}, lambda x, relu: torch.clamp(x, min=-0.5), 13, None),
    "Clip-max-only": ([node("Clip", ["x", "", "hi"])], {"hi": np.array(0.3, np.float32)}, lambda x, relu: torch.clamp(x, max=0.3), 13, None),
    "Clip-no-bounds": ([node("Clip", ["x"])], {}, lambda x, relu: x, 11, None),
    "Clip-attributes-opset10": ([node("Clip", ["x"], min=0.0, max=6.0)], {}, lambda x, relu: F.relu6(x), 10, _scaled(5)),
    "Clip-attribute-defaults-opset6": ([node("Clip", ["x"], max=0.5)], {}, lambda x, relu: torch.clamp(x, max=0.5), 6, None),
    # softmax: over one axis from opset 13; over the flattened axes [axis:] before (default axis 1)
    "Softmax-opset11-default": ([node("Softmax", ["x"])], {}, lambda x, relu: torch.softmax(x.flatten(1), 1).reshape(x.shape), 11, _scaled(2)),
    "Softmax-opset11-axis2": ([node("Softmax", ["x"], axis=2)], {}, lambda x, relu: torch.softmax(x.flatten(2), 2).reshape(x.shape), 11, _scaled(2)),
    "Softmax-opset13-axis1": ([node("Softmax", ["x"], axis=1)], {}, lambda x, relu: torch.softmax(x, 1), 13, _scaled(2)),
    "LogSoftmax-axis1": ([node("LogSoftmax", ["x"], axis=1)], {}, lambda x, relu: torch.log_softmax(x, 1), 13, _scaled(2)),
    "LogSoftmax-opset11-axis2": ([node("LogSoftmax", ["x"], axis=2)], {}, lambda x, relu: torch.log_softmax(x.flatten(2), 2).reshape(x.shape), 11, None),
    "SiLU": ([node("Sigmoid", ["x"], "s"), node("Mul", ["x", "s"])], {}, lambda x, relu: F.silu(x), 18, _scaled(2)),
}


@pytest.mark.parametrize("name", NONLINEAR_CASES)
def test_nonlinearity_passes_its_derivative(name):
    """Under every method, deconvnet and guided included: only ReLU rectifies."""
    nodes, inits, ref, opset, make_x = NONLINEAR_CASES[name]
    check(Case(make_model(nodes, (3, 4, 5), inits, opset=opset), (3, 4, 5), ref, make_x=make_x), f"nonlinear-{name}")
