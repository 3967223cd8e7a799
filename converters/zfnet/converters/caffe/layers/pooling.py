"""Pooling (MAX, AVE, global; Caffe's ceil rounding) -> MaxPool / AveragePool with explicit padding.

Caffe's pooled size is ``ceil((size + 2 pad - kernel) / stride) + 1`` (``floor`` with round_mode FLOOR),
less one when ``pad > 0`` and the last window would start at or past ``size + pad``. ONNX's ``ceil_mode``
and onnxruntime disagree with each other on that last rule, so the converter always emits
``ceil_mode=0`` with the end padding that gives Caffe's size. AVE divides by the window clipped to
``size + pad`` (padding counts, the overhang past it does not): AveragePool with
``count_include_pad=1`` divides by the full window, and a constant per-row and per-column factor
(Mul nodes, only where needed) turns that into Caffe's divisor.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from zfnet.converters.caffe import caffe_pb2
from zfnet.converters.caffe.registry import Blobs, Builder, Value, register
from zfnet.errors import InvalidArgument

P = caffe_pb2.PoolingParameter


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    """Caffe's PoolingLayer::Reshape output size along one axis."""
    span = size + 2 * pad - kernel
    if span < 0:
        raise InvalidArgument(f"kernel {kernel} is larger than the padded input ({size} + 2 x {pad})")
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    if (out - 1) * stride - pad >= size:
        raise InvalidArgument(f"the last pooling window (stride {stride} > kernel {kernel}) lies outside the input of size {size}")
    return out


def divisor_factors(size: int, kernel: int, stride: int, pad: int, out: int) -> np.ndarray:
    """``kernel / caffe_window`` per output position: Caffe clips each AVE window at ``size + pad``."""
    starts = np.arange(out) * stride - pad
    ends = np.minimum(starts + kernel, size + pad)
    return (kernel / (ends - starts)).astype(np.float32)


def _pair(param: caffe_pb2.PoolingParameter, name: str, required: bool = False) -> tuple[int, int]:
    """``kernel_size``/``stride``/``pad`` or their ``_h``/``_w`` variants (an unset one of the pair reads 0)."""
    short = name.removesuffix("_size")
    if param.HasField(f"{short}_h") or param.HasField(f"{short}_w"):
        return getattr(param, f"{short}_h"), getattr(param, f"{short}_w")
    if required and not param.HasField(name):
        raise InvalidArgument(f"{name} (or {short}_h/{short}_w) is required unless global_pooling is set")
    return getattr(param, name), getattr(param, name)


@register("Pooling", tops=(1, 2))
def pooling(layer: caffe_pb2.LayerParameter, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """A second top on MAX pooling is Caffe's mask: per (n, c) plane, the argmax ``h * W + w`` as float."""
    param, (x,) = layer.pooling_param, bottoms
    if x.ndim != 4:
        raise InvalidArgument(f"needs a 4-D input, got shape {x.shape}")
    size = x.dims(2)
    if param.global_pooling:
        if param.HasField("kernel_size") or param.HasField("kernel_h") or param.HasField("kernel_w"):
            raise InvalidArgument("global_pooling takes no kernel size")
        kernel, stride, pad = size, (1, 1), (0, 0)
    else:
        kernel, stride, pad = _pair(param, "kernel_size", required=True), _pair(param, "stride"), _pair(param, "pad")
    if min(kernel) < 1 or min(stride) < 1:
        raise InvalidArgument(f"kernel {kernel} and stride {stride} must be at least 1")
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise InvalidArgument(f"pad {pad} must be smaller than the kernel {kernel}")
    ceil = param.ceil_mode if param.HasField("ceil_mode") and not param.HasField("round_mode") else param.round_mode == P.CEIL
    out = [pooled_size(*args, ceil) for args in zip(size, kernel, stride, pad)]
    end = [max(0, (o - 1) * s + k - n - p) for o, s, k, n, p in zip(out, stride, kernel, size, pad)]
    attrs = {"kernel_shape": list(kernel), "strides": list(stride), "pads": [*pad, *end]}
    shape = (*x.shape[:2], *out)
    if param.pool == P.MAX:
        if len(layer.top) == 1:
            b.node("MaxPool", [x.name], **attrs)
            return [Value(b.top(), shape)]
        b.node("MaxPool", [x.name], [0, "indices"], **attrs)
        plane = b.node("Mod", [b.name("indices"), b.const("plane_size", size[0] * size[1], np.int64)], "plane_index")
        b.node("Cast", [plane], 1, to=TensorProto.FLOAT)
        return [Value(b.top(), shape), Value(b.top(1), shape)]
    if param.pool != P.AVE:
        raise InvalidArgument(f"{P.PoolMethod.Name(param.pool)} pooling is not supported (only MAX and AVE)")
    if len(layer.top) != 1:
        raise InvalidArgument("only MAX pooling has a second (mask) top")
    rows, cols = (divisor_factors(*args) for args in zip(size, kernel, stride, pad, out))
    scales = [(axis, f) for axis, f in (("row", rows.reshape(-1, 1)), ("col", cols)) if np.any(f != 1)]
    current = b.node("AveragePool", [x.name], "window_mean" if scales else 0, count_include_pad=1, **attrs)
    for i, (axis, factor) in enumerate(scales):
        last = i == len(scales) - 1
        current = b.node("Mul", [current, b.const(f"{axis}_divisor", factor)], 0 if last else f"{axis}_scaled")
    return [Value(b.top(), shape)]
