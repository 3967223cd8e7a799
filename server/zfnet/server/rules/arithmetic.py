"""Elementwise arithmetic: Add, Sub, Mul, Div, Pow, Sum, with broadcasting undone by summation.
Both sides may depend on the image (residual sums, squeeze-and-excitation gates, SiLU's x * sigmoid(x))."""

from __future__ import annotations

import numpy as np
import onnx

from zfnet.server.rules.registry import POINTWISE, Role, constant_over_space, op


def with_constants(index, node) -> Role:
    """A bias or a scale (one operand depends on the image) extends a block; a sum or product of two
    activations (a residual connection, a gate) ends it."""
    return Role.BLOCK if sum(name in index.live for name in node.input) == 1 else Role.OTHER


def unbroadcast(b, signal: str, node, index: int) -> str:
    """Sum ``signal`` (output-shaped) down to the shape of input ``index``."""
    out_shape, in_shape = b.shape(node.output[0]), b.shape(node.input[index])
    if in_shape == out_shape:
        return signal
    padded = [1] * (len(out_shape) - len(in_shape)) + in_shape
    axes = [i for i, (o, n) in enumerate(zip(out_shape, padded)) if n == 1 and o != 1]
    if axes:
        signal = b.op("ReduceSum", [signal, b.const(axes, np.int64)], keepdims=1)
    return b.reshape(signal, in_shape) if len(padded) != len(in_shape) else signal


def _each(b, node, grads) -> list[str | None]:
    """Signals for the inputs that depend on the image; ``grads[i]()`` builds input i's."""
    return [unbroadcast(b, grad(), node, i) if b.needs(node.input[i]) else None for i, grad in enumerate(grads)]


@op({"Add": (1, 6, 7, 13, 14)}, field=POINTWISE, role=with_constants, local=constant_over_space)
def add(b, node, signals):
    g = signals[0]
    return _each(b, node, [lambda: g, lambda: g])


@op({"Sum": (1, 6, 8, 13)}, field=POINTWISE, role=with_constants, local=constant_over_space)
def sum_(b, node, signals):
    g = signals[0]
    return _each(b, node, [lambda: g] * len(node.input))


@op({"Sub": (1, 6, 7, 13, 14)}, field=POINTWISE, role=with_constants, local=constant_over_space)
def sub(b, node, signals):
    g = signals[0]
    return _each(b, node, [lambda: g, lambda: b.op("Neg", [g])])


@op({"Mul": (1, 6, 7, 13, 14)}, field=POINTWISE, role=with_constants, local=constant_over_space)
def mul(b, node, signals):
    g, (x, y) = signals[0], node.input
    return _each(b, node, [lambda: b.op("Mul", [g, b.forward(y)]), lambda: b.op("Mul", [g, b.forward(x)])])


@op({"Div": (1, 6, 7, 13, 14)}, field=POINTWISE, role=with_constants, local=constant_over_space)
def div(b, node, signals):
    g, divisor = signals[0], node.input[1]
    return _each(b, node, [
        lambda: b.op("Div", [g, b.forward(divisor)]),
        lambda: b.op("Neg", [b.op("Div", [b.op("Mul", [g, b.forward(node.output[0])]), b.forward(divisor)])]),
    ])


@op({"Pow": (1, 7, 12, 13, 15)}, field=POINTWISE)
def pow_(b, node, signals):
    """d(x^e)/dx = e x^(e-1); d(x^e)/de = x^e ln x (the exponent may be an integer constant)."""
    g, (base, exponent) = signals[0], node.input

    def d_base():
        e = b.op("Cast", [b.forward(exponent)], to=onnx.TensorProto.FLOAT)
        return b.op("Mul", [g, b.op("Mul", [e, b.op("Pow", [b.forward(base), b.op("Sub", [e, b.const(1.0)])])])])

    return _each(b, node, [d_base, lambda: b.op("Mul", [g, b.op("Mul", [b.forward(node.output[0]), b.op("Log", [b.forward(base)])])])])
