"""Layers that move data without arithmetic: Concat, Flatten, Reshape, Split, Slice, Silence."""

from __future__ import annotations

import math

import numpy as np

from zfnet.converters.caffe import caffe_pb2
from zfnet.converters.caffe.registry import Blobs, Builder, Dim, Value, canonical_axis, register
from zfnet.errors import InvalidArgument

Layer = caffe_pb2.LayerParameter


def _reshape(b: Builder, x: Value, shape: list[Dim]) -> Value:
    """Reshape ``x`` to ``shape``; the batch axis stays in front and is copied (ONNX ``0``)."""
    if any(isinstance(d, str) for d in shape[1:]) or shape[0] != x.shape[0]:
        raise InvalidArgument(f"cannot move or merge the batch axis: {x.shape} -> {tuple(shape)}")
    b.node("Reshape", [x.name, b.const("shape", [0, *shape[1:]], np.int64)])
    return Value(b.top(), tuple(shape))


@register("Concat", bottoms=(1, None))
def concat(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """Along ``axis`` (or the legacy ``concat_dim``); the other axes must agree."""
    p, first = layer.concat_param, bottoms[0]
    axis = canonical_axis(p.concat_dim if p.HasField("concat_dim") else p.axis, first.ndim)
    if axis == 0:
        raise InvalidArgument("concatenating along the batch axis is not supported")
    for x in bottoms[1:]:
        if x.ndim != first.ndim or x.shape[:axis] + x.shape[axis + 1 :] != first.shape[:axis] + first.shape[axis + 1 :]:
            raise InvalidArgument(f"bottoms {first.shape} and {x.shape} differ outside axis {axis}")
    b.node("Concat", [x.name for x in bottoms], axis=axis)
    size = sum(x.dims(axis, axis + 1)[0] for x in bottoms)
    return [Value(b.top(), (*first.shape[:axis], size, *first.shape[axis + 1 :]))]


@register("Flatten")
def flatten(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """Merge axes ``axis..end_axis`` (defaults 1..-1) into one."""
    p, (x,) = layer.flatten_param, bottoms
    start, end = canonical_axis(p.axis, x.ndim), canonical_axis(p.end_axis, x.ndim)
    if not 1 <= start <= end:
        raise InvalidArgument(f"flattens axes {start}..{end}; only 1 <= axis <= end_axis is supported")
    return [_reshape(b, x, [*x.shape[:start], x.count(start, end + 1), *x.shape[end + 1 :]])]


@register("Reshape")
def reshape(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """Caffe's rule: axes ``axis .. axis + num_axes`` become ``shape``; 0 copies a size, one -1 is inferred."""
    p, (x,) = layer.reshape_param, bottoms
    start = p.axis if p.axis >= 0 else x.ndim + p.axis + 1
    end = x.ndim if p.num_axes == -1 else start + p.num_axes
    if not 0 <= start <= end <= x.ndim or p.num_axes < -1:
        raise InvalidArgument(f"axis {p.axis} and num_axes {p.num_axes} do not fit a {x.ndim}-D input")
    spec: list[Dim] = []
    for i, d in enumerate(p.shape.dim):
        if d == 0 and start + i >= x.ndim:
            raise InvalidArgument(f"shape dim {i} is 0 (copy) but the input has no axis {start + i}")
        if d < -1:
            raise InvalidArgument(f"shape dim {i} is {d}; sizes are >= 1, 0 (copy) or -1 (infer)")
        spec.append(x.shape[start + i] if d == 0 else d)
    if spec.count(-1) > 1:
        raise InvalidArgument("at most one shape dim can be -1")
    region = x.shape[start:end]
    have = math.prod(d for d in region if isinstance(d, int))
    want = math.prod(d for d in spec if isinstance(d, int) and d != -1)
    batch = [d for d in region if isinstance(d, str)]
    if -1 in spec:
        absorbs_batch = batch and not any(isinstance(d, str) for d in spec)
        if have % want or (absorbs_batch and have != want):
            raise InvalidArgument(f"cannot infer the -1 in {list(p.shape.dim)} from input {x.shape}")
        spec[spec.index(-1)] = batch[0] if absorbs_batch else have // want
    if [d for d in spec if isinstance(d, str)] != batch or math.prod(d for d in spec if isinstance(d, int)) != have:
        raise InvalidArgument(f"shape {list(p.shape.dim)} does not hold the input {x.shape}")
    shape = [*x.shape[:start], *spec, *x.shape[end:]]
    return [_reshape(b, x, shape)]


@register("Split", tops=(1, None))
def split(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """Each top is a copy of the bottom (an Identity node, so every top has its own tensor)."""
    (x,) = bottoms
    return [Value(b.node("Identity", [x.name], i), x.shape) for i in range(len(layer.top))]


@register("Slice", tops=(1, None))
def slice_(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """Cut along ``axis`` (or the legacy ``slice_dim``) at ``slice_point``s, or into equal parts -> ONNX Split."""
    p, (x,) = layer.slice_param, bottoms
    axis = canonical_axis(p.slice_dim if p.HasField("slice_dim") else p.axis, x.ndim)
    (size,), parts = x.dims(axis, axis + 1), len(layer.top)
    if p.slice_point:
        points = [0, *p.slice_point, size]
        if len(p.slice_point) != parts - 1 or any(a >= c for a, c in zip(points, points[1:])):
            raise InvalidArgument(f"slice_point {list(p.slice_point)} must be {parts - 1} increasing points inside 1..{size - 1}")
        sizes = [c - a for a, c in zip(points, points[1:])]
    elif size % parts:
        raise InvalidArgument(f"axis {axis} of size {size} does not split into {parts} equal parts")
    else:
        sizes = [size // parts] * parts
    b.node("Split", [x.name, b.const("split", sizes, np.int64)], list(range(parts)), axis=axis)
    return [Value(b.top(i), (*x.shape[:axis], s, *x.shape[axis + 1 :])) for i, s in enumerate(sizes)]


@register("Silence", bottoms=(1, None), tops=(0, 0))
def silence(layer: Layer, bottoms: list[Value], blobs: Blobs, b: Builder) -> list[Value]:
    """Consumes its bottoms, produces nothing."""
    return []
