"""Elementwise arithmetic: Add, Sub, Mul, Div, Pow, with broadcasting undone by summation."""

from __future__ import annotations

import numpy as np
import onnx

from zfnet.server.rules.registry import backward_rule


def _unbroadcast(b, signal: str, node, index: int) -> str:
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
    return [_unbroadcast(b, grad(), node, i) if b.needs(node.input[i]) else None for i, grad in enumerate(grads)]


@backward_rule("Add")
def add(b, node, signals):
    g = signals[0]
    return _each(b, node, [lambda: g, lambda: g])


@backward_rule("Sub")
def sub(b, node, signals):
    g = signals[0]
    return _each(b, node, [lambda: g, lambda: b.op("Neg", [g])])


@backward_rule("Mul")
def mul(b, node, signals):
    g, (x, y) = signals[0], node.input
    return _each(b, node, [lambda: b.op("Mul", [g, b.forward(y)]), lambda: b.op("Mul", [g, b.forward(x)])])


@backward_rule("Div")
def div(b, node, signals):
    g, divisor = signals[0], node.input[1]
    return _each(b, node, [
        lambda: b.op("Div", [g, b.forward(divisor)]),
        lambda: b.op("Neg", [b.op("Div", [b.op("Mul", [g, b.forward(node.output[0])]), b.forward(divisor)])]),
    ])


@backward_rule("Pow")
def pow_(b, node, signals):
    """d(x^e)/dx = e x^(e-1); d(x^e)/de = x^e ln x (the exponent may be an integer constant)."""
    g, (base, exponent) = signals[0], node.input

    def d_base():
        e = b.op("Cast", [b.forward(exponent)], to=onnx.TensorProto.FLOAT)
        return b.op("Mul", [g, b.op("Mul", [e, b.op("Pow", [b.forward(base), b.op("Sub", [e, b.const(1.0)])])])])

    return _each(b, node, [d_base, lambda: b.op("Mul", [g, b.op("Mul", [b.forward(node.output[0]), b.op("Log", [b.forward(base)])])])])
