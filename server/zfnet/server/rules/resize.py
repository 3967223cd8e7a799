"""Resize and Upsample (nearest, linear): separable linear maps, one (output x input) matrix per
resized axis built from the ONNX specification's coordinate transformation; the signal goes back
through their transposes."""

from __future__ import annotations

import math

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.server.rules.registry import Span, op, union
from zfnet.server.rules.shape import along_axis


def _original(x: float, scale: float, in_size: int, out_size: int, mode: str) -> float:
    """The input coordinate that output position ``x`` samples (ONNX Resize's coordinate_transformation_mode)."""
    out_width = scale * in_size
    if mode == "align_corners":
        return 0.0 if out_width == 1 else x * (in_size - 1) / (out_width - 1)
    if mode == "asymmetric":
        return x / scale
    if mode == "pytorch_half_pixel":
        return -0.5 if out_width == 1 else (x + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = in_size / 2 * (1 - out_size / out_width)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    raise ValueError(mode)


def _nearest(x: float, rule: str, downsampling: bool) -> int:
    if rule == "simple":  # before opset 11 (onnxruntime): floor when upsampling, ceil when downsampling
        return math.ceil(x) if downsampling else int(x)
    if x == int(x) or rule == "floor":
        return math.floor(x)
    if rule == "ceil":
        return math.ceil(x)
    frac = x - math.floor(x)
    up = frac > 0.5 if rule == "round_prefer_floor" else frac >= 0.5
    return math.floor(x) + int(up)


def interpolation_matrix(in_size: int, out_size: int, scale: float, mode: str, coordinates: str, nearest: str) -> np.ndarray:
    """W (out_size x in_size) with output = W @ input along one axis; positions beyond the edges
    take the edge value, as the specification's edge padding does."""
    matrix = np.zeros((out_size, in_size), np.float64)
    for x in range(out_size):
        original = _original(float(x), scale, in_size, out_size, coordinates)
        if mode == "nearest":
            matrix[x, min(max(_nearest(original, nearest, scale < 1), 0), in_size - 1)] = 1.0
        else:
            low = math.floor(original)
            ratio = original - low
            for position, weight in ((low, 1.0 - ratio), (low + 1, ratio)):
                matrix[x, min(max(position, 0), in_size - 1)] += weight
    return matrix


def _scales(index, node, in_shape: list[int], out_shape: list[int]) -> list[float]:
    """Per axis the scale the coordinates are transformed with: the given scales, else out / in
    (one scale for all resized axes under keep_aspect_ratio_policy not_larger / not_smaller)."""
    rank = len(in_shape)
    if node.op_type == "Upsample" and node.opset < 9:
        return list(node.attrs["scales"])
    names = {"Upsample": {1: "scales"}, "Resize": {1: "scales"} if node.opset == 10 else {2: "scales", 3: "sizes"}}[node.op_type]
    axes = [a % rank for a in node.attrs.get("axes") or range(rank)]
    for position, kind in names.items():
        name = node.input[position] if len(node.input) > position else ""
        if not name:
            continue
        value = index.constant(name)
        if value is None:
            raise InvalidArgument(f"{node.label}: only constant {kind} are supported")
        if value.size == 0:
            continue
        scales = [1.0] * rank
        if kind == "scales":
            for a, s in zip(axes, value.tolist()):
                scales[a] = float(s)
            return scales
        ratios = {a: out_shape[a] / in_shape[a] if isinstance(in_shape[a], int) and isinstance(out_shape[a], int) else 1.0 for a in axes}
        policy = node.attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            common = (min if policy == "not_larger" else max)(ratios.values())
            ratios = dict.fromkeys(axes, common)
        for a, r in ratios.items():
            scales[a] = r
        return scales
    raise InvalidArgument(f"{node.label}: neither scales nor sizes are given")


def resize_matrices(index, node) -> dict[int, np.ndarray]:
    """Per resized axis, its interpolation matrix."""
    mode = node.attrs.get("mode", "nearest")
    mode = "linear" if mode == "bilinear" else mode
    if mode not in ("nearest", "linear"):
        raise InvalidArgument(f"{node.label}: only nearest and linear modes are supported (this one is {mode!r})")
    if node.attrs.get("antialias", 0):
        raise InvalidArgument(f"{node.label}: antialiased resizing is not supported")
    legacy = node.op_type == "Upsample" or node.opset < 11
    coordinates = "asymmetric" if legacy else node.attrs.get("coordinate_transformation_mode", "half_pixel")
    if coordinates == "tf_crop_and_resize":
        raise InvalidArgument(f"{node.label}: tf_crop_and_resize is not supported")
    nearest = "simple" if legacy else node.attrs.get("nearest_mode", "round_prefer_floor")
    in_shape, out_shape = index.shape(node.input[0]) or [], index.shape(node.output[0]) or []
    scales = _scales(index, node, in_shape, out_shape)
    matrices = {}
    for axis, (size, out_size) in enumerate(zip(in_shape, out_shape)):
        if not isinstance(size, int) or not isinstance(out_size, int):  # the dynamic batch
            if scales[axis] != 1.0:
                raise InvalidArgument(f"{node.label}: resizing the batch axis mixes the images of a batch; this is not supported")
        elif size != out_size or scales[axis] != 1.0:
            matrices[axis] = interpolation_matrix(size, out_size, scales[axis], mode, coordinates, nearest)
    return matrices


def _field(index, node, spans, i) -> Span:
    out = list(union(spans))
    for axis, matrix in resize_matrices(index, node).items():
        span = out[axis]
        if span is not None:
            lo, hi = span
            columns = np.nonzero(matrix[lo : hi + 1].any(axis=0))[0]
            out[axis] = (int(columns.min()), int(columns.max()))
    return tuple(out)


@op({"Resize": (10, 11, 13, 18, 19), "Upsample": (7, 9, 10)}, field=_field)  # Upsample-1 scaled by height_scale/width_scale
def resize(b, node, signals):
    shape = b.shape(node.input[0])
    g = signals[0]
    for axis, matrix in resize_matrices(b.index, node).items():
        b.check_batch(node.input[0], [axis], "Resizing")
        g = along_axis(b, g, axis, len(shape), matrix)
    return [g] + [None] * (len(node.input) - 1)
