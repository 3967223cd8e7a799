"""Pooling. Max pooling is undone by *unpooling* through the switches recorded on the way up
(Zeiler & Fergus 2013, Sec. 2.1); where overlapping windows chose the same input their signals
**add** (ScatterElements with reduction="add", not MaxUnpool's last-write-wins)."""

from __future__ import annotations

import math

import numpy as np

from zfnet.errors import FailedPrecondition, InvalidArgument
from zfnet.server.rules.conv import explicit_pads
from zfnet.server.rules.registry import attribute, backward_rule


def _geometry(b, node):
    in_shape, out_shape = b.shape(node.input[0]), b.shape(node.output[0])
    kernel = list(attribute(node, "kernel_shape"))
    rank = len(kernel)
    strides = list(attribute(node, "strides", [1] * rank))
    dilations = list(attribute(node, "dilations", [1] * rank))
    pads = explicit_pads(node, in_shape[2:], kernel, strides, dilations)
    return in_shape, out_shape, kernel, strides, dilations, pads


@backward_rule("MaxPool")
def max_pool(b, node, signals):
    if len(node.output) < 2 or not node.output[1]:
        raise FailedPrecondition(f"MaxPool {node.output[0]!r} has no switches output; run the expose pass on the model")
    if attribute(node, "storage_order", 0) != 0:
        raise InvalidArgument(f"MaxPool {node.output[0]!r}: column-major switches (storage_order=1) are not supported")
    in_shape, out_shape = b.shape(node.input[0]), b.shape(node.output[0])
    channels, plane, out_plane = in_shape[1], math.prod(in_shape[2:]), math.prod(out_shape[2:])
    switches = b.op("Mod", [b.forward(node.output[1]), b.const(plane, np.int64)])  # flat over N*C*H*W -> per plane
    switches = b.reshape(switches, [-1, channels, out_plane])
    g = b.reshape(signals[0], [-1, channels, out_plane])
    unpooled = b.op("ScatterElements", [b.zeros(g, [channels, plane]), switches, g], axis=2, reduction="add")
    return [b.reshape(unpooled, in_shape)]


def avg_pool_divisors(in_spatial, out_spatial, kernel, strides, pads, count_include_pad: bool) -> np.ndarray:
    """The divisor of each output position, as onnxruntime (and Caffe, and PyTorch) compute it:
    the window clipped to the padded input (``count_include_pad``) or to the input itself."""
    rank = len(kernel)
    per_axis = []
    for axis in range(rank):
        begin_pad, end_pad = pads[axis], pads[axis + rank]
        start = np.arange(out_spatial[axis]) * strides[axis] - begin_pad
        stop = np.minimum(start + kernel[axis], in_spatial[axis] + end_pad)
        if not count_include_pad:
            start, stop = np.maximum(start, 0), np.minimum(stop, in_spatial[axis])
        per_axis.append((stop - start).astype(np.float32))
    divisors = per_axis[0]
    for extra in per_axis[1:]:
        divisors = np.multiply.outer(divisors, extra)
    return divisors


@backward_rule("AveragePool")
def average_pool(b, node, signals):
    in_shape, out_shape, kernel, strides, dilations, pads = _geometry(b, node)
    if any(d != 1 for d in dilations):
        raise InvalidArgument(f"AveragePool {node.output[0]!r}: dilated average pooling is not supported")
    rank, channels = len(kernel), in_shape[1]
    divisors = avg_pool_divisors(in_shape[2:], out_shape[2:], kernel, strides, pads, bool(attribute(node, "count_include_pad", 0)))
    scaled = b.op("Div", [signals[0], b.const(divisors)])
    ones = b.const(np.ones([channels, 1, *kernel], np.float32))
    spread = b.op("ConvTranspose", [scaled, ones], strides=strides, group=channels, pads=[0] * 2 * rank)
    have = [(o - 1) * s + k for o, s, k in zip(out_shape[2:], strides, kernel)]
    return [b.fit_spatial(spread, pads[:rank], in_shape[2:], have)]


@backward_rule("GlobalAveragePool")
def global_average_pool(b, node, signals):
    in_shape = b.shape(node.input[0])
    scaled = b.op("Div", [signals[0], b.const(float(math.prod(in_shape[2:])))])
    return [b.op("Expand", [scaled, b.const([1, *in_shape[1:]], np.int64)])]


@backward_rule("GlobalMaxPool")
def global_max_pool(b, node, signals):
    in_shape = b.shape(node.input[0])
    channels, plane = in_shape[1], math.prod(in_shape[2:])
    flat = b.reshape(b.forward(node.input[0]), [-1, channels, plane])
    winner = b.op("ArgMax", [flat], axis=2, keepdims=1)
    g = b.reshape(signals[0], [-1, channels, 1])
    unpooled = b.op("ScatterElements", [b.zeros(g, [channels, plane]), winner, g], axis=2)
    return [b.reshape(unpooled, in_shape)]
