"""Fully connected layers: the signal goes back through the transposed weights."""

from __future__ import annotations

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.server.rules.registry import attribute, backward_rule


@backward_rule("Gemm")
def gemm(b, node, signals):
    weight = b.constant_value(node.input[1])
    if weight is None or attribute(node, "transA", 0) or not b.needs(node.input[0]):
        raise InvalidArgument(f"Gemm {node.output[0]!r}: only activations times constant weights (transA=0) are supported")
    transposed = weight if attribute(node, "transB", 0) else weight.T  # (B')^T with B' = op(B)
    back = b.const(attribute(node, "alpha", 1.0) * transposed)
    return [b.op("MatMul", [signals[0], back])] + [None] * (len(node.input) - 1)


@backward_rule("MatMul")
def matmul(b, node, signals):
    a, w = node.input
    weight = b.constant_value(w)
    if weight is None or weight.ndim != 2 or not b.needs(a):
        raise InvalidArgument(f"MatMul {node.output[0]!r}: only activations times a constant 2-D matrix are supported")
    return [b.op("MatMul", [signals[0], b.const(np.ascontiguousarray(weight.T))]), None]
