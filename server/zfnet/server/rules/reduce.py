"""Reductions over axes (global average pooling as ``x.mean((2, 3))``, squeeze-and-excitation):
the signal is spread back over the reduced axes. Axes are an attribute before opset 18 (13 for
ReduceSum) and an input from then on."""

from __future__ import annotations

import numpy as np
import onnx

from zfnet.errors import InvalidArgument
from zfnet.server.rules.registry import Span, op, union

# op -> (its schema versions with the axes as an attribute, those with the axes as an input)
_FORMS = {
    "ReduceSum": ((1, 11), (13,)),
    "ReduceMean": ((1, 11, 13), (18,)),
    "ReduceMax": ((1, 11, 12, 13), (18, 20)),
    "ReduceMin": ((1, 11, 12, 13), (18, 20)),
    "ReduceSumSquare": ((1, 11, 13), (18,)),
    "ReduceL1": ((1, 11, 13), (18,)),
    "ReduceL2": ((1, 11, 13), (18,)),
}


def reduced_axes(index, node) -> list[int] | None:
    """The reduced axes, normalised (all of them when none are given); None for a no-op."""
    rank = len(index.shape(node.input[0]) or [])
    if node.opset >= _FORMS[node.op_type][1][0]:
        axes_name = node.input[1] if len(node.input) > 1 else ""
        if axes_name and index.constant(axes_name) is None:
            raise InvalidArgument(f"{node.label}: only constant axes are supported")
        axes = index.constant(axes_name).ravel().tolist() if axes_name else []
        if not axes and node.attrs.get("noop_with_empty_axes", 0):
            return None
    else:
        axes = list(node.attrs.get("axes") or [])
    return sorted({int(a) % rank for a in axes}) if axes else list(range(rank))


def _field(index, node, spans, i) -> Span:
    out = union(spans)
    axes = reduced_axes(index, node)
    if axes is None or i > 0:
        return out if i == 0 else ()
    keep = node.attrs.get("keepdims", 1)
    kept = iter(out)
    span = []
    for axis in range(len(index.shape(node.input[0]) or [])):
        if axis in axes:
            if keep:
                next(kept)
            span.append(None)
        else:
            span.append(next(kept))
    return tuple(span)


def _batch(index, node, in_axes):
    axes, batch = reduced_axes(index, node), in_axes[0]
    if axes is None or batch is None or node.attrs.get("keepdims", 1):
        return [batch]
    return [None if batch in axes else batch - sum(a < batch for a in axes)]


def _spread(b, node, signals) -> tuple[str, list[int], list[int]] | None:
    """The signal reshaped to keepdims form, the input's shape and the reduced axes; None for a no-op."""
    axes = reduced_axes(b.index, node)
    if axes is None:
        return None
    b.check_batch(node.input[0], axes, node.op_type)
    shape = b.shape(node.input[0])
    kept = [1 if a in axes else d for a, d in enumerate(shape)]
    g = signals[0] if node.attrs.get("keepdims", 1) else b.reshape(signals[0], kept)
    return g, shape, axes


def _expand(b, g: str, shape: list[int]) -> str:
    return b.op("Expand", [g, b.const([1 if d == -1 else d for d in shape], np.int64)])


def reduction(op_type: str):
    """Register ``grad(b, node, g, shape, axes) -> input signal`` as ``op_type``'s rule: one entry per
    axes form (:data:`_FORMS`)."""

    def register(grad):
        def rule(b, node, signals):
            spread = _spread(b, node, signals)
            if spread is None:
                return [signals[0]] + [None] * (len(node.input) - 1)
            return [grad(b, node, *spread)] + [None] * (len(node.input) - 1)

        rule.__doc__ = grad.__doc__
        for versions in _FORMS[op_type]:
            op({op_type: versions}, field=_field, batch=_batch)(rule)
        return grad

    return register


@reduction("ReduceSum")
def reduce_sum(b, node, g, shape, axes):
    return _expand(b, g, shape)


@reduction("ReduceMean")
def reduce_mean(b, node, g, shape, axes):
    count = float(np.prod([shape[a] for a in axes]))
    return _expand(b, b.op("Div", [g, b.const(count)]), shape)


def _extremum(b, node, g, shape, axes):
    """Shared evenly among the positions that hold the maximum (minimum), as PyTorch's amax (amin)."""
    x = b.forward(node.input[0])
    kept = [1 if a in axes else d for a, d in enumerate(shape)]
    y = b.reshape(b.forward(node.output[0]), kept)
    mask = b.op("Cast", [b.op("Equal", [x, y])], to=onnx.TensorProto.FLOAT)
    count = b.op("ReduceSum", [mask, b.const(axes, np.int64)], keepdims=1)
    return b.op("Mul", [mask, b.op("Div", [g, count])])


reduction("ReduceMax")(_extremum)
reduction("ReduceMin")(_extremum)


@reduction("ReduceSumSquare")
def reduce_sum_square(b, node, g, shape, axes):
    return b.op("Mul", [b.op("Mul", [b.const(2.0), b.forward(node.input[0])]), g])


@reduction("ReduceL1")
def reduce_l1(b, node, g, shape, axes):
    return b.op("Mul", [b.op("Sign", [b.forward(node.input[0])]), g])


@reduction("ReduceL2")
def reduce_l2(b, node, g, shape, axes):
    kept = [1 if a in axes else d for a, d in enumerate(shape)]
    y = b.reshape(b.forward(node.output[0]), kept)
    return b.op("Mul", [b.forward(node.input[0]), b.op("Div", [g, y])])
