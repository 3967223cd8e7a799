"""Eltwise: SUM (with ``coeff``) -> Mul + Add, PROD -> Mul, MAX -> Max."""

from __future__ import annotations

import numpy as np

from zfnet.converters.caffe import caffe_pb2
from zfnet.converters.caffe.registry import Blobs, Builder, Value, register
from zfnet.errors import InvalidArgument

P = caffe_pb2.EltwiseParameter


def _chain(b: Builder, op: str, names: list[str], suffix: str) -> None:
    """Fold ``names`` with a binary ``op``; the last node writes the layer's top."""
    current = names[0]
    for i, name in enumerate(names[1:], start=1):
        current = b.node(op, [current, name], 0 if i == len(names) - 1 else f"{suffix}{i}")


@register("Eltwise", bottoms=(2, None))
def eltwise(layer: caffe_pb2.LayerParameter, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """All bottoms must have the same shape (Caffe broadcasts nothing)."""
    p = layer.eltwise_param
    shapes = {x.shape for x in bottoms}
    if len(shapes) > 1:
        raise InvalidArgument(f"the bottoms have different shapes: {', '.join(str(x.shape) for x in bottoms)}")
    if p.coeff and p.operation != P.SUM:
        raise InvalidArgument("coeff is only for operation SUM")
    if p.coeff and len(p.coeff) != len(bottoms):
        raise InvalidArgument(f"{len(p.coeff)} coeff values for {len(bottoms)} bottoms")
    names = [x.name for x in bottoms]
    if p.operation == P.SUM:
        for i, c in enumerate(p.coeff):
            if c != 1:
                names[i] = b.node("Mul", [names[i], b.const(f"coeff{i}", np.float32(c))], f"scaled{i}")
        _chain(b, "Add", names, "sum")
    elif p.operation == P.PROD:
        _chain(b, "Mul", names, "product")
    else:
        b.node("Max", names)
    return [Value(b.top(), bottoms[0].shape)]
