"""LRN: ACROSS_CHANNELS -> ONNX LRN; WITHIN_CHANNEL decomposed (no ONNX op does it)."""

from __future__ import annotations

import numpy as np

from zfnet.converters.caffe import caffe_pb2
from zfnet.converters.caffe.registry import Blobs, Builder, Value, register
from zfnet.errors import InvalidArgument

P = caffe_pb2.LRNParameter


@register("LRN")
def lrn(layer: caffe_pb2.LayerParameter, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """ACROSS_CHANNELS: ``x / (k + alpha/n sum_{n channels} x^2)^beta``, ONNX LRN with ``bias = k``.

    WITHIN_CHANNEL: ``x * (1 + alpha/n^2 sum_{n x n window} x^2)^-beta`` (``k`` unused), built as Caffe
    builds it: square, zero-padded n x n average pool, scale and shift, power, product.
    """
    p, (x,) = layer.lrn_param, bottoms
    n = p.local_size
    if n % 2 == 0:
        raise InvalidArgument(f"local_size must be odd (Caffe's rule), got {n}")
    if x.ndim != 4:
        raise InvalidArgument(f"needs a 4-D input, got shape {x.shape}")
    if p.norm_region == P.ACROSS_CHANNELS:
        b.node("LRN", [x.name], size=n, alpha=p.alpha, beta=p.beta, bias=p.k)
        return [Value(b.top(), x.shape)]
    pad = (n - 1) // 2
    square = b.node("Mul", [x.name, x.name], "square")
    mean = b.node("AveragePool", [square], "window_mean", kernel_shape=[n, n], pads=[pad] * 4, count_include_pad=1)
    scaled = b.node("Mul", [mean, b.const("alpha", np.float32(p.alpha))], "scaled")
    shifted = b.node("Add", [scaled, b.const("one", np.float32(1))], "shifted")
    factor = b.node("Pow", [shifted, b.const("minus_beta", np.float32(-p.beta))], "factor")
    b.node("Mul", [x.name, factor])
    return [Value(b.top(), x.shape)]
