"""InnerProduct -> Flatten + Gemm (axis 1), or Reshape + MatMul (+ Add) for a later axis."""

from __future__ import annotations

import numpy as np

from zfnet.converters.caffe import caffe_pb2
from zfnet.converters.caffe.registry import Blobs, Builder, Value, canonical_axis, register
from zfnet.errors import InvalidArgument


@register("InnerProduct")
def inner_product(layer: caffe_pb2.LayerParameter, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """Flattens axes ``axis:`` in C order into K; weights (num_output, K), or (K, num_output) with ``transpose``.

    V1 models store them 4-D as (1, 1, num_output, K); :meth:`Blobs.get` accepts that.
    """
    p, (x,) = layer.inner_product_param, bottoms
    axis = canonical_axis(p.axis, x.ndim)
    if axis == 0:
        raise InvalidArgument("axis 0 would mix the images of a batch; only axis >= 1 is supported")
    if p.num_output < 1:
        raise InvalidArgument(f"num_output must be at least 1, got {p.num_output}")
    k, n = x.count(axis), p.num_output
    weight = blobs.get(0, (k, n) if p.transpose else (n, k))
    bias = [b.const("bias", blobs.get(1, (n,)))] if p.bias_term else []
    if axis == 1:
        flat = b.node("Flatten", [x.name], "flatten", axis=1) if x.ndim > 2 else x.name
        b.node("Gemm", [flat, b.const("weight", weight), *bias], transB=0 if p.transpose else 1)
    else:
        target = b.const("shape", [0] * axis + [k], dtype=np.int64)
        flat = b.node("Reshape", [x.name, target], "flatten")
        product = b.node("MatMul", [flat, b.const("weight", weight if p.transpose else weight.T)], "matmul" if bias else 0)
        if bias:
            b.node("Add", [product, *bias])
    return [Value(b.top(), (*x.shape[:axis], n))]
