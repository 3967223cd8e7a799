"""Pooling. Max pooling is undone by *unpooling* through the switches recorded on the way up
(Zeiler & Fergus 2013, Sec. 2.1); where overlapping windows chose the same input their signals
**add** (ScatterElements with reduction="add", not MaxUnpool's last-write-wins)."""

from __future__ import annotations

import math

import numpy as np

from zfnet.errors import FailedPrecondition
from zfnet.server.rules.conv import window_field
from zfnet.server.rules.geometry import avg_pool_divisors, window
from zfnet.server.rules.registry import Role, Span, op, union

SWITCHES = 1  # MaxPool's output position of the switches (its Indices, from opset 8)


def pool_window(index, node):
    return window(node.attrs, (index.shape(node.input[0]) or [])[2:])


def ceil_mode_stand_in(attrs: dict, in_shape: list) -> tuple[dict, bool] | None:
    """Before opset 22, ONNX infers a ceil-mode pool's output one larger than onnxruntime computes when
    the last window would start in the end padding (2x2/2 with pad 1 on 7 pixels: 5 against 4;
    onnxruntime, like PyTorch, drops it). For a ceil-mode pool with explicit pads: a floor-mode
    stand-in of onnxruntime's size (same begin pads and strides, no end pads, the kernel that fits),
    and whether ONNX infers another size for the pool itself; None for any other pool, or where a
    size is unknown."""
    if attrs.get("ceil_mode", 0) != 1 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    in_spatial = list(in_shape[2:])
    if len(in_spatial) != len(attrs["kernel_shape"]) or not all(isinstance(d, int) and d > 0 for d in in_spatial):
        return None
    win = window(attrs, in_spatial)
    sizes = win.output_size(in_spatial)
    rank = len(in_spatial)
    begins, strides = list(attrs.get("pads", [0] * 2 * rank))[:rank], list(attrs.get("strides", [1] * rank))
    kernel = [n + b - (o - 1) * s for n, b, o, s in zip(in_spatial, begins, sizes, strides)]
    stand_in = {"kernel_shape": kernel, "strides": strides, "pads": begins + [0] * rank}
    return stand_in, sizes != win.output_size(in_spatial, keep_padding_window=True)


@op({"MaxPool": (1,)}, field=window_field(pool_window), role=Role.BLOCK, local=True)
def max_pool_without_switches(b, node, signals):
    """MaxPool-1 has no Indices output to record the switches in."""
    raise b.refuse("MaxPool before opset 8 has no switches output (Indices); re-export the model at opset 8 or later")


@op({"MaxPool": (8, 10, 11, 12, 22)}, field=window_field(pool_window), role=Role.BLOCK, switches=SWITCHES, stand_in=ceil_mode_stand_in, local=True)
def max_pool(b, node, signals):
    if len(node.output) <= SWITCHES or not node.output[SWITCHES]:
        raise FailedPrecondition(f"{node.label} has no switches output; run the expose pass on the model")
    if node.attrs.get("storage_order", 0) != 0:
        raise b.refuse("column-major switches (storage_order=1) are not supported")
    in_shape, out_shape = b.shape(node.input[0]), b.shape(node.output[0])
    channels, plane, out_plane = in_shape[1], math.prod(in_shape[2:]), math.prod(out_shape[2:])
    switches = b.op("Mod", [b.forward(node.output[SWITCHES]), b.const(plane, np.int64)])  # flat over N*C*H*W -> per plane
    switches = b.reshape(switches, [-1, channels, out_plane])
    g = b.reshape(signals[0], [-1, channels, out_plane])
    unpooled = b.op("ScatterElements", [b.zeros_rows([channels, plane]), switches, g], axis=2, reduction="add")
    return [b.reshape(unpooled, in_shape)]


@op({"AveragePool": (1, 7, 10, 11, 19, 22)}, field=window_field(pool_window), role=Role.BLOCK, stand_in=ceil_mode_stand_in, local=True)
def average_pool(b, node, signals):
    in_shape, out_shape = b.shape(node.input[0]), b.shape(node.output[0])
    win = pool_window(b.index, node)
    if any(d != 1 for d in win.dilations):
        raise b.refuse("dilated average pooling is not supported")
    channels = in_shape[1]
    divisors = avg_pool_divisors(in_shape[2:], out_shape[2:], win, bool(node.attrs.get("count_include_pad", 0)))
    scaled = b.op("Div", [signals[0], b.const(divisors)])
    ones = b.const(np.ones([channels, 1, *win.kernel], np.float32))
    spread = b.op("ConvTranspose", [scaled, ones], strides=list(win.strides), group=channels, pads=[0] * 2 * win.rank)
    return [b.fit_spatial(spread, list(win.begin), in_shape[2:], win.covered(out_shape[2:]))]


def _global_field(index, node, spans, i) -> Span:
    """Each channel of the output reads its whole input plane."""
    out = union(spans)
    return (out[0], out[1], *[None] * (len(index.shape(node.input[0]) or []) - 2))


@op({"GlobalAveragePool": (1, 22)}, field=_global_field)
def global_average_pool(b, node, signals):
    in_shape = b.shape(node.input[0])
    scaled = b.op("Div", [signals[0], b.const(float(math.prod(in_shape[2:])))])
    return [b.op("Expand", [scaled, b.const([1, *in_shape[1:]], np.int64)])]


@op({"GlobalMaxPool": (1, 22)}, field=_global_field)
def global_max_pool(b, node, signals):
    """The signal goes to the first maximum of each plane (PyTorch's adaptive max pooling index)."""
    in_shape = b.shape(node.input[0])
    channels, plane = in_shape[1], math.prod(in_shape[2:])
    flat = b.reshape(b.forward(node.input[0]), [-1, channels, plane])
    winner = b.op("ArgMax", [flat], axis=2, keepdims=1)
    g = b.reshape(signals[0], [-1, channels, 1])
    unpooled = b.op("ScatterElements", [b.zeros_rows([channels, plane]), winner, g], axis=2)
    return [b.reshape(unpooled, in_shape)]
