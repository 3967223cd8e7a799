"""The registry of backward rules: one function per ONNX op type that emits, into a projection
graph, the nodes carrying a signal from an op's output back to its inputs.

Every op passes the signal back by its own vector-Jacobian product; only ReLU's rule depends on the
method (Zeiler & Fergus 2013, Sec. 2.1; Springenberg et al. 2015 for guided backprop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:
    from zfnet.server.projection import Builder

# (builder, forward node, signal at each output or None) -> signal at each input or None
BackwardRule = Callable[["Builder", onnx.NodeProto, list[str | None]], list[str | None]]

BACKWARD_RULES: dict[str, BackwardRule] = {}


def backward_rule(*op_types: str) -> Callable[[BackwardRule], BackwardRule]:
    """Register ``fn`` as the backward rule of ``op_types`` (default ONNX domain); duplicates are refused."""

    def register(fn: BackwardRule) -> BackwardRule:
        for op in op_types:
            if op in BACKWARD_RULES:
                raise ValueError(f"a backward rule for {op} is already registered ({BACKWARD_RULES[op].__module__})")
            BACKWARD_RULES[op] = fn
        return fn

    return register


def attribute(node: onnx.NodeProto, name: str, default=None):
    """An attribute's value with its schema default."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default
