"""BatchNorm (stored sums over a scale factor) -> BatchNormalization; Scale -> Mul (+ Add)."""

from __future__ import annotations

import numpy as np

from zfnet.converters.caffe import caffe_pb2
from zfnet.converters.caffe.registry import Blobs, Builder, Value, canonical_axis, register
from zfnet.errors import InvalidArgument

Layer = caffe_pb2.LayerParameter


@register("BatchNorm")
def batch_norm(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """Blobs: mean sum (C), variance sum (C), scale factor s (1); mean = blob0 / s, var = blob1 / s (0 when s == 0).

    No affine part: a following Scale layer supplies it.
    """
    p, (x,) = layer.batch_norm_param, bottoms
    if p.HasField("use_global_stats") and not p.use_global_stats:
        raise InvalidArgument(
            "use_global_stats: false makes Caffe normalise with each batch's own statistics; "
            "converted nets use the stored ones: remove the line or set it to true"
        )
    if x.ndim < 2:
        raise InvalidArgument(f"needs an input with a channel axis, got shape {x.shape}")
    (channels,) = x.dims(1, 2)
    mean, var, factor = blobs.get(0, (channels,)), blobs.get(1, (channels,)), blobs.get(2, (1,))[0]
    inverse = np.float32(0 if factor == 0 else 1 / factor)
    inputs = [
        x.name,
        b.const("gamma", np.ones(channels)),
        b.const("beta", np.zeros(channels)),
        b.const("mean", mean * inverse),
        b.const("var", var * inverse),
    ]
    b.node("BatchNormalization", inputs, epsilon=p.eps)
    return [Value(b.top(), x.shape)]


@register("Scale", bottoms=(1, 2))
def scale(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """``x * gamma (+ beta)``, gamma spanning axes ``axis : axis + num_axes`` of x.

    gamma is blob 0, or the second bottom (then the bias, with ``bias_term``, is blob 0).
    """
    p, x = layer.scale_param, bottoms[0]
    axis = canonical_axis(p.axis, x.ndim)
    if len(bottoms) == 2:
        factor = bottoms[1]
        span = factor.shape
        if x.shape[axis : axis + len(span)] != span:
            raise InvalidArgument(f"the scale {factor.shape} must match axes {axis}.. of the input {x.shape}")
        trailing = x.ndim - axis - len(span)
        gamma = factor.name
        if trailing:
            target = b.const("gamma_shape", [0] * len(span) + [1] * trailing, np.int64)
            gamma = b.node("Reshape", [factor.name, target], "gamma")
    else:
        num_axes = x.ndim - axis if p.num_axes == -1 else p.num_axes
        if not 0 <= num_axes <= x.ndim - axis:
            raise InvalidArgument(f"num_axes {p.num_axes} does not fit axis {axis} of a {x.ndim}-D input")
        span = x.dims(axis, axis + num_axes)
        trailing = x.ndim - axis - num_axes
        gamma = b.const("gamma", blobs.get(0, span).reshape(*span, *[1] * trailing))
    if not p.bias_term:
        b.node("Mul", [x.name, gamma])
        return [Value(b.top(), x.shape)]
    beta = blobs.get(2 - len(bottoms), x.dims(axis, axis + len(span)))
    product = b.node("Mul", [x.name, gamma], "scaled")
    b.node("Add", [product, b.const("beta", beta.reshape(*beta.shape, *[1] * trailing))])
    return [Value(b.top(), x.shape)]
