"""Convolution: the deconvnet's "filtering" step, a transposed convolution with the same filters."""

from __future__ import annotations

from zfnet.server.rules.geometry import Window, window
from zfnet.server.rules.transposed import Backward, forms
from zfnet.server.rules.registry import Span, Weights, op, optional_input, union


def filters(index, node) -> Weights | None:
    """A layer of its own when its filters (input 1) are constants: (out, in/group, *kernel) for Conv,
    kept as stored, (in, out/group, *kernel), for ConvTranspose; the bias is input 2."""
    if len(node.input) > 1 and node.input[1] in index.constants:
        return Weights(node.input[1], bias=optional_input(node, 2))
    return None


def conv_window(index, node) -> Window:
    """The window of a Conv node, its kernel taken from the filters' shape."""
    in_shape, weight = index.shape(node.input[0]), index.shape(node.input[1])
    kernel = node.attrs.get("kernel_shape") or weight[2:]
    return window(node.attrs, in_shape[2:], kernel)


def window_field(window_of):
    """Receptive-field mapping of a sliding window: each spatial axis through the window's geometry,
    every channel of the input (the filters and the group structure are not tracked)."""

    def field(index, node, spans, i) -> Span:
        rank = len(index.shape(node.input[i]) or [])
        if i != 0:
            return (None,) * rank
        out, win = union(spans), window_of(index, node)
        spatial = [None if s is None else win.input_span(a, *s) for a, s in enumerate(out[2:])]
        return (out[0], None, *spatial)

    return field


@op({"Conv": (1, 11, 22)}, field=window_field(conv_window), weights=filters, local=True)
def conv(b, node, signals):
    x, weight = node.input[0], node.input[1]
    value = b.constant_value(weight)
    if value is None:
        raise b.refuse("only constant filters can be transposed")
    out_shape = b.shape(node.output[0])
    backward = Backward(value, node.attrs["group"], conv_window(b.index, node), tuple(b.shape(x)[2:]), tuple(out_shape[2:]))
    return [b.fastest(backward.key, forms(backward), signals[0], out_shape[1:])] + [None] * (len(node.input) - 1)


def _transposed_field(index, node, spans, i) -> Span:
    """Output o of a transposed convolution reads the inputs i with o = i s - pad + k d, 0 <= k < K."""
    rank = len(index.shape(node.input[i]) or [])
    if i != 0:
        return (None,) * rank
    out, kernel = union(spans), index.shape(node.input[1])[2:]
    r = len(kernel)
    strides, dilations = node.attrs.get("strides") or [1] * r, node.attrs.get("dilations") or [1] * r
    pads = node.attrs.get("pads") or [0] * 2 * r
    spatial = []
    for a, s in enumerate(out[2:]):
        if s is None:
            spatial.append(None)
            continue
        lo, hi = s
        reach = (kernel[a] - 1) * dilations[a]
        spatial.append((-(-(lo + pads[a] - reach) // strides[a]), (hi + pads[a]) // strides[a]))
    return (out[0], None, *spatial)


@op({"ConvTranspose": (1, 11, 22)}, field=_transposed_field, weights=filters)
def conv_transpose(b, node, signals):
    weight = node.input[1]
    if b.constant_value(weight) is None:
        raise b.refuse("only constant filters are supported")
    if node.attrs.get("auto_pad", "NOTSET") != "NOTSET" or node.attrs.get("output_shape"):
        raise b.refuse("auto_pad and output_shape are not supported; use pads")
    rank = len(b.shape(weight)) - 2
    grad = b.op(
        "Conv", [signals[0], b.forward(weight)],
        strides=list(node.attrs.get("strides") or [1] * rank), dilations=list(node.attrs.get("dilations") or [1] * rank),
        group=node.attrs["group"], pads=list(node.attrs.get("pads") or [0] * 2 * rank),
    )
    return [grad] + [None] * (len(node.input) - 1)
