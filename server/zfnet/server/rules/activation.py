"""Activations. ReLU's rule is where the three methods differ (Zeiler & Fergus 2013, Sec. 2.1):

- ``backprop``: the gradient, masked where the forward input was not positive;
- ``deconvnet``: the signal itself is rectified, whatever the forward pass did;
- ``guided``: both (Springenberg et al. 2015).

Every other nonlinearity (ReLU6/Clip, LeakyReLU, PReLU, ELU, SELU, CELU, sigmoid, hard sigmoid,
hard swish, tanh, GELU, erf, softplus, softsign, mish, softmax ...) passes the signal back by its
derivative under all three methods: the deconvnet and guided backprop rectify at ReLUs only, which
is also what Captum's ``Deconvolution`` and ``GuidedBackprop`` do (they hook ``nn.ReLU`` modules).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from zfnet.server.rules.registry import constant_over_space, POINTWISE, Role, axes_field, op

FLOAT = onnx.TensorProto.FLOAT


def _mask(b, condition: str) -> str:
    """1.0 where ``condition`` holds, else 0.0."""
    return b.op("Cast", [condition], to=FLOAT)


def _positive(b, name: str) -> str:
    """1.0 where the forward tensor is positive, else 0.0."""
    return _mask(b, b.op("Greater", [b.forward(name), b.const(0.0)]))


def _times(b, node, signals, derivative: str) -> list[str | None]:
    """The signal times the op's derivative, for the first input; the others take none."""
    return [b.op("Mul", [signals[0], derivative])] + [None] * (len(node.input) - 1)


@op({"Relu": (1, 6, 13, 14)}, field=POINTWISE, role=Role.BLOCK, local=True)
def relu(b, node, signals):
    g = signals[0]
    if b.method == "deconvnet":
        return [b.op("Relu", [g])]
    if b.method == "guided":
        g = b.op("Relu", [g])
    return [b.op("Mul", [g, _positive(b, node.input[0])])]


@op({"LeakyRelu": (1, 6, 16)}, field=POINTWISE, role=Role.BLOCK, local=True)
def leaky_relu(b, node, signals):
    slope = b.op("Where", [b.op("Greater", [b.forward(node.input[0]), b.const(0.0)]), b.const(1.0), b.const(node.attrs["alpha"])])
    return _times(b, node, signals, slope)


@op({"PRelu": (1, 6, 7, 9, 16)}, field=POINTWISE, role=Role.BLOCK, local=constant_over_space)
def prelu(b, node, signals):
    if b.needs(node.input[1]):
        raise b.refuse("only a constant slope is supported")
    positive = b.op("Greater", [b.forward(node.input[0]), b.const(0.0)])
    return _times(b, node, signals, b.op("Where", [positive, b.const(1.0), b.forward(node.input[1])]))


@op({"Elu": (1, 6, 22)}, field=POINTWISE, role=Role.BLOCK, local=True)
def elu(b, node, signals):
    """y = x (x > 0), alpha (e^x - 1) else: the slope there is y + alpha."""
    positive = b.op("Greater", [b.forward(node.input[0]), b.const(0.0)])
    slope = b.op("Where", [positive, b.const(1.0), b.op("Add", [b.forward(node.output[0]), b.const(node.attrs["alpha"])])])
    return _times(b, node, signals, slope)


@op({"Selu": (1, 6, 22)}, field=POINTWISE, role=Role.BLOCK, local=True)
def selu(b, node, signals):
    """y = gamma x (x > 0), gamma alpha (e^x - 1) else: the slope there is y + gamma alpha."""
    alpha, gamma = node.attrs["alpha"], node.attrs["gamma"]
    positive = b.op("Greater", [b.forward(node.input[0]), b.const(0.0)])
    slope = b.op("Where", [positive, b.const(gamma), b.op("Add", [b.forward(node.output[0]), b.const(gamma * alpha)])])
    return _times(b, node, signals, slope)


@op({"Celu": (12, 28)}, field=POINTWISE, role=Role.BLOCK, local=True)
def celu(b, node, signals):
    """y = max(0, x) + min(0, alpha (e^(x/alpha) - 1)): the slope is e^(x/alpha) where x <= 0."""
    x, alpha = b.forward(node.input[0]), node.attrs["alpha"]
    slope = b.op("Where", [b.op("Greater", [x, b.const(0.0)]), b.const(1.0), b.op("Exp", [b.op("Div", [x, b.const(alpha)])])])
    return _times(b, node, signals, slope)


@op({"Clip": (1, 6)}, field=POINTWISE, role=Role.BLOCK, local=True)
def clip_attributes(b, node, signals):
    """Before opset 11 the bounds are attributes (ReLU6 is Clip(0, 6))."""
    x = b.forward(node.input[0])
    inside = b.op("And", [b.op("Greater", [x, b.const(node.attrs["min"])]), b.op("Less", [x, b.const(node.attrs["max"])])])
    return _times(b, node, signals, _mask(b, inside))


@op({"Clip": (11, 12, 13)}, field=POINTWISE, role=Role.BLOCK, local=True)
def clip(b, node, signals):
    """From opset 11 the bounds are optional inputs; the slope is 1 strictly between them (as
    PyTorch's hardtanh, which ReLU6 is), 0 elsewhere."""
    if any(b.needs(name) for name in node.input[1:]):
        raise b.refuse("only constant bounds are supported")
    x = b.forward(node.input[0])
    inside = b.const(True, np.bool_)
    for position, compare in ((1, "Greater"), (2, "Less")):
        if len(node.input) > position and node.input[position]:
            inside = b.op("And", [inside, b.op(compare, [x, b.forward(node.input[position])])])
    return _times(b, node, signals, _mask(b, inside))


@op({"Sigmoid": (1, 6, 13)}, field=POINTWISE, role=Role.BLOCK, local=True)
def sigmoid(b, node, signals):
    y = b.forward(node.output[0])
    return _times(b, node, signals, b.op("Mul", [y, b.op("Sub", [b.const(1.0), y])]))


@op({"HardSigmoid": (1, 6, 22)}, field=POINTWISE, role=Role.BLOCK, local=True)
def hard_sigmoid(b, node, signals):
    """y = max(0, min(1, alpha x + beta)): the slope is alpha where 0 < alpha x + beta < 1."""
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    z = b.op("Add", [b.op("Mul", [b.forward(node.input[0]), b.const(alpha)]), b.const(beta)])
    inside = b.op("And", [b.op("Greater", [z, b.const(0.0)]), b.op("Less", [z, b.const(1.0)])])
    return _times(b, node, signals, b.op("Mul", [_mask(b, inside), b.const(alpha)]))


@op({"HardSwish": (14, 22)}, field=POINTWISE, role=Role.BLOCK, local=True)
def hard_swish(b, node, signals):
    """y = x max(0, min(1, x/6 + 1/2)): slope 0 below -3, x/3 + 1/2 up to 3, 1 above (PyTorch's)."""
    x = b.forward(node.input[0])
    middle = b.op("Add", [b.op("Div", [x, b.const(3.0)]), b.const(0.5)])
    slope = b.op("Where", [b.op("Less", [x, b.const(-3.0)]), b.const(0.0), b.op("Where", [b.op("Greater", [x, b.const(3.0)]), b.const(1.0), middle])])
    return _times(b, node, signals, slope)


@op({"Tanh": (1, 6, 13)}, field=POINTWISE, role=Role.BLOCK, local=True)
def tanh(b, node, signals):
    y = b.forward(node.output[0])
    return _times(b, node, signals, b.op("Sub", [b.const(1.0), b.op("Mul", [y, y])]))


def _normal_pdf(b, x: str) -> str:
    """exp(-x^2 / 2) / sqrt(2 pi)."""
    return b.op("Mul", [b.op("Exp", [b.op("Mul", [b.op("Mul", [x, x]), b.const(-0.5)])]), b.const(1.0 / math.sqrt(2.0 * math.pi))])


@op({"Gelu": (20,)}, field=POINTWISE, role=Role.BLOCK, local=True)
def gelu(b, node, signals):
    """approximate="none": y = x Phi(x), slope Phi(x) + x phi(x); "tanh": PyTorch's tanh form."""
    x = b.forward(node.input[0])
    if node.attrs.get("approximate", "none") == "tanh":
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        x2 = b.op("Mul", [x, x])
        inner = b.op("Mul", [b.const(k), b.op("Add", [x, b.op("Mul", [b.const(c), b.op("Mul", [x2, x])])])])
        t = b.op("Tanh", [inner])
        d_inner = b.op("Mul", [b.const(k), b.op("Add", [b.const(1.0), b.op("Mul", [b.const(3.0 * c), x2])])])
        sech2 = b.op("Sub", [b.const(1.0), b.op("Mul", [t, t])])
        slope = b.op("Add", [
            b.op("Mul", [b.const(0.5), b.op("Add", [b.const(1.0), t])]),
            b.op("Mul", [b.op("Mul", [b.const(0.5), x]), b.op("Mul", [sech2, d_inner])]),
        ])
    else:
        cdf = b.op("Mul", [b.const(0.5), b.op("Add", [b.const(1.0), b.op("Erf", [b.op("Mul", [x, b.const(1.0 / math.sqrt(2.0))])])])])
        slope = b.op("Add", [cdf, b.op("Mul", [x, _normal_pdf(b, x)])])
    return _times(b, node, signals, slope)


@op({"Erf": (9, 13)}, field=POINTWISE, local=True)
def erf(b, node, signals):
    x = b.forward(node.input[0])
    return _times(b, node, signals, b.op("Mul", [b.const(2.0 / math.sqrt(math.pi)), b.op("Exp", [b.op("Neg", [b.op("Mul", [x, x])])])]))


@op({"Softplus": (1, 22)}, field=POINTWISE, role=Role.BLOCK, local=True)
def softplus(b, node, signals):
    return _times(b, node, signals, b.op("Sigmoid", [b.forward(node.input[0])]))


@op({"Softsign": (1, 22)}, field=POINTWISE, role=Role.BLOCK, local=True)
def softsign(b, node, signals):
    """y = x / (1 + |x|): slope 1 / (1 + |x|)^2."""
    d = b.op("Add", [b.const(1.0), b.op("Abs", [b.forward(node.input[0])])])
    return _times(b, node, signals, b.op("Reciprocal", [b.op("Mul", [d, d])]))


@op({"Mish": (18, 22)}, field=POINTWISE, role=Role.BLOCK, local=True)
def mish(b, node, signals):
    """y = x tanh(softplus(x)): slope tanh(sp) + x sigmoid(x) (1 - tanh(sp)^2)."""
    x = b.forward(node.input[0])
    t = b.op("Tanh", [b.op("Softplus", [x])])
    cross = b.op("Mul", [b.op("Mul", [x, b.op("Sigmoid", [x])]), b.op("Sub", [b.const(1.0), b.op("Mul", [t, t])])])
    return _times(b, node, signals, b.op("Add", [t, cross]))


@op({"Abs": (1, 6, 13)}, field=POINTWISE, role=Role.BLOCK, local=True)
def abs_(b, node, signals):
    return _times(b, node, signals, b.op("Sign", [b.forward(node.input[0])]))


@op({"Neg": (1, 6, 13)}, field=POINTWISE, local=True)
def neg(b, node, signals):
    return [b.op("Neg", [signals[0]])]


@op({"Exp": (1, 6, 13)}, field=POINTWISE, local=True)
def exp(b, node, signals):
    return _times(b, node, signals, b.forward(node.output[0]))


@op({"Log": (1, 6, 13)}, field=POINTWISE, local=True)
def log(b, node, signals):
    return [b.op("Div", [signals[0], b.forward(node.input[0])])]


@op({"Sqrt": (1, 6, 13)}, field=POINTWISE, local=True)
def sqrt(b, node, signals):
    return [b.op("Div", [signals[0], b.op("Mul", [b.const(2.0), b.forward(node.output[0])])])]


@op({"Reciprocal": (1, 6, 13)}, field=POINTWISE, local=True)
def reciprocal(b, node, signals):
    y = b.forward(node.output[0])
    return [b.op("Neg", [b.op("Mul", [signals[0], b.op("Mul", [y, y])])])]


# -- softmax: over one axis from opset 13, over the flattened axes [axis:] before -----------------------
def _softmax_axes(b, node) -> list[int]:
    rank = len(b.shape(node.input[0]))
    axis = node.attrs["axis"] % rank
    return [axis] if node.opset >= 13 else list(range(axis, rank))


def _softmax_field_axes(index, node) -> list[int]:
    rank = len(index.shape(node.input[0]) or [])
    axis = node.attrs["axis"] % max(rank, 1)
    return [axis] if node.opset >= 13 else list(range(axis, rank))


def _softmax(b, node, signals, log: bool):
    axes = _softmax_axes(b, node)
    b.check_batch(node.input[0], axes, node.op_type)
    g, y = signals[0], b.forward(node.output[0])
    if log:  # y = x - logsumexp(x): g - softmax(x) sum(g)
        total = b.op("ReduceSum", [g, b.const(axes, np.int64)], keepdims=1)
        return [b.op("Sub", [g, b.op("Mul", [b.op("Exp", [y]), total])])]
    weighted = b.op("ReduceSum", [b.op("Mul", [g, y]), b.const(axes, np.int64)], keepdims=1)
    return [b.op("Mul", [y, b.op("Sub", [g, weighted])])]


@op({"Softmax": (1, 11, 13)}, field=axes_field(_softmax_field_axes))
def softmax(b, node, signals):
    return _softmax(b, node, signals, log=False)


@op({"LogSoftmax": (1, 11, 13)}, field=axes_field(_softmax_field_axes))
def log_softmax(b, node, signals):
    return _softmax(b, node, signals, log=True)

