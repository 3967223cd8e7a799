"""Activations. ReLU's rule is where the three methods differ (Zeiler & Fergus 2013, Sec. 2.1):

- ``backprop``: the gradient, masked where the forward input was not positive;
- ``deconvnet``: the signal itself is rectified, whatever the forward pass did;
- ``guided``: both (Springenberg et al. 2015).
Every other activation passes the signal back by its derivative.
"""

from __future__ import annotations

import onnx

from zfnet.server.rules.registry import attribute, backward_rule


def _positive(b, name: str) -> str:
    """1.0 where the forward tensor is positive, else 0.0."""
    return b.op("Cast", [b.op("Greater", [b.forward(name), b.const(0.0)])], to=onnx.TensorProto.FLOAT)


@backward_rule("Relu")
def relu(b, node, signals):
    g = signals[0]
    if b.method == "deconvnet":
        return [b.op("Relu", [g])]
    if b.method == "guided":
        g = b.op("Relu", [g])
    return [b.op("Mul", [g, _positive(b, node.input[0])])]


@backward_rule("LeakyRelu")
def leaky_relu(b, node, signals):
    slope = b.op("Where", [b.op("Greater", [b.forward(node.input[0]), b.const(0.0)]), b.const(1.0), b.const(attribute(node, "alpha", 0.01))])
    return [b.op("Mul", [signals[0], slope])]


@backward_rule("PRelu")
def prelu(b, node, signals):
    positive = b.op("Greater", [b.forward(node.input[0]), b.const(0.0)])
    slope = b.op("Where", [positive, b.const(1.0), b.forward(node.input[1])])
    return [b.op("Mul", [signals[0], slope]), None]


@backward_rule("Sigmoid")
def sigmoid(b, node, signals):
    y = b.forward(node.output[0])
    return [b.op("Mul", [signals[0], b.op("Mul", [y, b.op("Sub", [b.const(1.0), y])])])]


@backward_rule("Tanh")
def tanh(b, node, signals):
    y = b.forward(node.output[0])
    return [b.op("Mul", [signals[0], b.op("Sub", [b.const(1.0), b.op("Mul", [y, y])])])]


@backward_rule("Elu")
def elu(b, node, signals):
    alpha = b.const(attribute(node, "alpha", 1.0))
    positive = b.op("Greater", [b.forward(node.input[0]), b.const(0.0)])
    slope = b.op("Where", [positive, b.const(1.0), b.op("Add", [b.forward(node.output[0]), alpha])])
    return [b.op("Mul", [signals[0], slope])]


@backward_rule("Abs")
def abs_(b, node, signals):
    return [b.op("Mul", [signals[0], b.op("Sign", [b.forward(node.input[0])])])]


@backward_rule("Softmax")
def softmax(b, node, signals):
    y = b.forward(node.output[0])
    axis = attribute(node, "axis", -1)
    weighted = b.op("ReduceSum", [b.op("Mul", [signals[0], y]), b.const([axis], "int64")], keepdims=1)
    return [b.op("Mul", [y, b.op("Sub", [signals[0], weighted])])]
