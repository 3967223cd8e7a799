"""Convolution: the deconvnet's "filtering" step, a transposed convolution with the same filters."""

from __future__ import annotations

import math

from zfnet.errors import InvalidArgument
from zfnet.server.rules.registry import attribute, backward_rule


def explicit_pads(node, in_spatial: list[int], kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """The begin/end pads of a Conv or pooling node, resolving ``auto_pad``."""
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    rank = len(in_spatial)
    if auto_pad in ("NOTSET", ""):
        return list(attribute(node, "pads", [0] * 2 * rank))
    if auto_pad == "VALID":
        return [0] * 2 * rank
    begin, end = [], []
    for size, k, s, d in zip(in_spatial, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


@backward_rule("Conv")
def conv(b, node, signals):
    x, weight = node.input[0], node.input[1]
    if b.constant_value(weight) is None:
        raise InvalidArgument(f"Conv {node.name or node.output[0]!r}: only constant filters can be transposed")
    kernel = list(b.shape(weight)[2:])
    in_spatial, out_spatial = b.shape(x)[2:], b.shape(node.output[0])[2:]
    rank = len(kernel)
    strides = list(attribute(node, "strides", [1] * rank))
    dilations = list(attribute(node, "dilations", [1] * rank))
    pads = explicit_pads(node, in_spatial, kernel, strides, dilations)
    full = b.op(
        "ConvTranspose", [signals[0], b.forward(weight)],
        strides=strides, dilations=dilations, group=attribute(node, "group", 1), pads=[0] * 2 * rank,
    )
    have = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out_spatial, strides, kernel, dilations)]
    return [b.fit_spatial(full, pads[:rank], in_spatial, have)] + [None] * (len(node.input) - 1)


@backward_rule("ConvTranspose")
def conv_transpose(b, node, signals):
    weight = node.input[1]
    if b.constant_value(weight) is None:
        raise InvalidArgument(f"ConvTranspose {node.name or node.output[0]!r}: only constant filters are supported")
    if attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or attribute(node, "output_shape") is not None:
        raise InvalidArgument(f"ConvTranspose {node.name or node.output[0]!r}: auto_pad and output_shape are not supported; use pads")
    rank = len(b.shape(weight)) - 2
    grad = b.op(
        "Conv", [signals[0], b.forward(weight)],
        strides=list(attribute(node, "strides", [1] * rank)), dilations=list(attribute(node, "dilations", [1] * rank)),
        group=attribute(node, "group", 1), pads=list(attribute(node, "pads", [0] * 2 * rank)),
    )
    return [grad] + [None] * (len(node.input) - 1)
