"""Ops that move values without computing: the signal is moved back the same way."""

from __future__ import annotations

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.server.rules.registry import attribute, backward_rule


@backward_rule("Identity", "Dropout")
def identity(b, node, signals):
    return [signals[0]] + [None] * (len(node.input) - 1)


@backward_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(b, node, signals):
    return [b.reshape(signals[0], b.shape(node.input[0]))] + [None] * (len(node.input) - 1)


@backward_rule("Transpose")
def transpose(b, node, signals):
    perm = list(attribute(node, "perm", range(len(b.shape(node.input[0])))[::-1]))
    return [b.op("Transpose", [signals[0]], perm=list(np.argsort(perm)))]


@backward_rule("Concat")
def concat(b, node, signals):
    axis = attribute(node, "axis")
    starts = np.cumsum([0] + [b.shape(name)[axis] for name in node.input])
    return [
        b.op("Slice", [signals[0], b.const([lo], np.int64), b.const([hi], np.int64), b.const([axis], np.int64)]) if b.needs(name) else None
        for name, lo, hi in zip(node.input, starts[:-1], starts[1:])
    ]


@backward_rule("Split")
def split(b, node, signals):
    axis = attribute(node, "axis", 0)
    parts = [s if s is not None else b.zeros(next(x for x in signals if x), b.shape(out)[1:]) for s, out in zip(signals, node.output)]
    return [b.op("Concat", parts, axis=axis)] + [None] * (len(node.input) - 1)


@backward_rule("Gather")
def gather(b, node, signals):
    """Channel reordering (RGB <-> BGR): undone by the inverse permutation."""
    indices = b.constant_value(node.input[1])
    shape = b.shape(node.input[0])
    axis = attribute(node, "axis", 0) % len(shape)
    size = shape[axis]
    if indices is None or axis == 0 or sorted(indices.ravel().tolist()) != list(range(size)):
        raise InvalidArgument(f"Gather {node.output[0]!r}: only a constant permutation along a non-batch axis is supported")
    inverse = np.argsort(indices.ravel()).astype(np.int64)
    return [b.op("Gather", [signals[0], b.const(inverse, np.int64)], axis=axis), None]


@backward_rule("Pad")
def pad(b, node, signals):
    """Constant padding is undone by the opposite padding: what was added is cut, what was cut (negative pads) is zero."""
    mode = attribute(node, "mode", b"constant")
    pads = b.constant_value(node.input[1]) if len(node.input) > 1 else None
    has_axes = len(node.input) > 3 and bool(node.input[3])
    axes = b.constant_value(node.input[3]) if has_axes else None
    if mode not in (b"constant", "constant") or pads is None or (has_axes and axes is None):
        raise InvalidArgument(f"Pad {node.output[0]!r}: only constant-mode padding with constant pads (and axes) is supported")
    rank = len(b.shape(node.input[0]))
    axes = [int(a) % rank for a in axes] if has_axes else list(range(rank))
    if any(axis == 0 and (pads[i] or pads[i + len(axes)]) for i, axis in enumerate(axes)):
        raise InvalidArgument(f"Pad {node.output[0]!r}: padding the batch axis is not supported")
    extra = ["", b.const(axes, np.int64)] if has_axes else []
    return [b.op("Pad", [signals[0], b.const(-pads.astype(np.int64), np.int64), *extra])] + [None] * (len(node.input) - 1)
