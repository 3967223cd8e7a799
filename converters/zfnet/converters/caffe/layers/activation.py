"""Element-wise layers: ReLU (LeakyRelu when ``negative_slope``), PReLU, Sigmoid, TanH, ELU, AbsVal,
Power, Softmax, Dropout (identity at inference)."""

from __future__ import annotations

import numpy as np

from zfnet.converters.caffe import caffe_pb2
from zfnet.converters.caffe.registry import Blobs, Builder, Value, canonical_axis, register
from zfnet.errors import InvalidArgument

Layer = caffe_pb2.LayerParameter


@register("ReLU")
def relu(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """``max(x, 0) + negative_slope * min(x, 0)``."""
    (x,), slope = bottoms, layer.relu_param.negative_slope
    if slope:
        b.node("LeakyRelu", [x.name], alpha=slope)
    else:
        b.node("Relu", [x.name])
    return [Value(b.top(), x.shape)]


@register("PReLU")
def prelu(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """Learned slope per channel (axis 1), or one slope with ``channel_shared``."""
    (x,) = bottoms
    if x.ndim < 2:
        raise InvalidArgument(f"needs an input with a channel axis, got shape {x.shape}")
    channels = 1 if layer.prelu_param.channel_shared else x.dims(1, 2)[0]
    slope = blobs.get(0, (channels,)).reshape(channels, *[1] * (x.ndim - 2))
    b.node("PRelu", [x.name, b.const("slope", slope)])
    return [Value(b.top(), x.shape)]


def _unary(op: str):
    def convert(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
        b.node(op, [bottoms[0].name])
        return [Value(b.top(), bottoms[0].shape)]

    convert.__doc__ = f"ONNX {op}."
    return convert


register("Sigmoid")(_unary("Sigmoid"))
register("TanH")(_unary("Tanh"))
register("AbsVal")(_unary("Abs"))
register("Dropout")(_unary("Identity"))


@register("ELU")
def elu(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """``x`` if positive, else ``alpha (exp(x) - 1)``."""
    b.node("Elu", [bottoms[0].name], alpha=layer.elu_param.alpha)
    return [Value(b.top(), bottoms[0].shape)]


@register("Power")
def power(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """``(shift + scale * x) ** power``: Mul, Add and Pow, each only when it does something."""
    p, (x,) = layer.power_param, bottoms
    steps = [(op, name, value) for op, name, value, noop in (("Mul", "scale", p.scale, 1), ("Add", "shift", p.shift, 0), ("Pow", "power", p.power, 1)) if value != noop]
    current = x.name
    for i, (op, name, value) in enumerate(steps):
        current = b.node(op, [current, b.const(name, np.float32(value))], 0 if i == len(steps) - 1 else f"after_{name}")
    if not steps:
        b.node("Identity", [x.name])
    return [Value(b.top(), x.shape)]


@register("Softmax")
def softmax(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """Softmax along ``axis`` (default 1, the channels), as ONNX Softmax (opset 13+)."""
    (x,) = bottoms
    b.node("Softmax", [x.name], axis=canonical_axis(layer.softmax_param.axis, x.ndim))
    return [Value(b.top(), x.shape)]
