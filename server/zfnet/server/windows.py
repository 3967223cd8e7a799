"""Reconstructions on the receptive-field window: one activation projected back to pixels from an
aligned crop of its image that holds its receptive field, instead of the whole image.

A unit's value, and the switches and ReLU masks in its cone, depend only on the pixels of its field
when every op between the image and the layer is local and translation-equivariant over space (the
op registry's ``local``: Conv, pooling, BatchNorm, LRN, activations, Add/Mul ... whose constant
operands do not vary over space, Concat over channels). Computed on a crop whose origin is a
multiple of the layer's total stride, every intermediate grid lines up with the whole image's; a
crop holding the field (unclipped: the padding the field reaches is the image's own border, where a
window moved inside the image has its edge too) then gives the whole image's values in the cone,
and its reconstruction, pasted into a zero image, the whole image's. Any other op (a global pool or
squeeze-and-excitation gate, Resize, Reshape/Flatten, attention, a mean image subtracted as a
full-size constant) falls back to the whole image, and so does a window that would not pay
(:data:`PAYS`: its area over the image's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from zfnet.converters import expose
from zfnet.converters.graph import set_metadata
from zfnet.converters.index import GraphIndex
from zfnet.server import projection
from zfnet.server.admission import Footprint
from zfnet.server.layers import ReceptiveFields, channel_axis
from zfnet.server.rules import lookup_node

log = logging.getLogger("zfnet.server")

PAYS = 0.5  # a window is used where its area is at most this share of the image's


@dataclass(frozen=True)
class FieldWindow:
    """The crop a layer's units are reconstructed on: its size in pixels, the layer's total stride,
    and where the field of the unit at location (0, 0) starts (unclipped, so possibly negative)."""

    size: tuple[int, int]
    stride: tuple[int, int]
    first: tuple[int, int]
    image: tuple[int, int]  # the model's input height and width

    def origins(self, locations: np.ndarray) -> np.ndarray:
        """(M, 2) top-left pixels of the windows of units at ``locations`` (M, 2): the field's start
        rounded down to the stride, moved inside the image (still holding the field)."""
        stride, first = np.asarray(self.stride, np.int64), np.asarray(self.first, np.int64)
        aligned = (first + locations * stride) // stride * stride
        return np.clip(aligned, 0, np.asarray(self.image, np.int64) - np.asarray(self.size, np.int64))

    def cells(self, origins: np.ndarray) -> np.ndarray:
        """The layer locations of windows' origins: a unit's location in its window is its own minus this."""
        return origins // np.asarray(self.stride, np.int64)


@dataclass(frozen=True)
class WindowSessions:
    """What reconstructing a layer's units on their windows runs: the projection graph at the
    window's size and its session, and the exact session of the model at that size (its
    :meth:`~zfnet.server.models.LoadedModel.fetching` counterpart) to the tensors it reads."""

    window: FieldWindow
    projection: projection.Projection
    session: ort.InferenceSession
    forward: ort.InferenceSession
    fetched: list[str]  # the forward session's outputs: the layer and what the projection reads
    footprint: Footprint  # of the model at the window's size, per window


def plan(index: GraphIndex, fields: ReceptiveFields, layer: str) -> FieldWindow | None:
    """The window ``layer``'s reconstructions are exact on and pay on, or None (the whole image is
    used; the reason is logged once per model and layer)."""
    key = f"window:{layer}"
    if key not in index.memo:
        found, why = _plan(index, fields, layer)
        if found is None:
            log.info("layer %s: reconstructions on the whole image (%s)", layer, why)
        index.memo[key] = found
    return index.memo[key]


def _plan(index: GraphIndex, fields: ReceptiveFields, layer: str) -> tuple[FieldWindow | None, str]:
    image = index.image
    image_shape, layer_shape = (index.shape(image) if image else None) or [], index.shape(layer) or []
    if len(image_shape) != 4 or len(layer_shape) != 4 or channel_axis(index, layer) != 1 or isinstance(image_shape[0], int):
        return None, "only NCHW maps of a model with a free batch axis are windowed"
    sizes = [d for d in [*image_shape[2:], *layer_shape[2:]] if isinstance(d, int)]
    if len(sizes) < 4 or min(sizes[2:]) < 2:
        return None, "its map has fewer than 2 positions on an axis"
    if projection.index_for(index, layer)[1]:
        return None, "its projection runs one image at a time"
    for node in index.ancestors(layer):
        if any(name in index.live for name in node.input):
            rule = lookup_node(index, node)
            if rule is None or not rule.is_local(index, node):
                return None, f"{node.label} is not local over space"
    height, width = sizes[:2]
    origin = fields.box(layer, (0, 0), clip=False)
    down, right = fields.box(layer, (1, 0), clip=False), fields.box(layer, (0, 1), clip=False)
    stride = (down[0] - origin[0], right[1] - origin[1])
    extent = (origin[2] - origin[0], origin[3] - origin[1])
    if min(stride) < 1:
        return None, "its field does not move with its location"
    size = tuple(_window_size(first % s + e, s, full) for first, s, e, full in zip(origin[:2], stride, extent, (height, width)))
    if size[0] > height or size[1] > width or size[0] * size[1] > PAYS * height * width:
        return None, f"a {size[0]}x{size[1]} window would not pay on a {height}x{width} image"
    return FieldWindow((size[0], size[1]), stride, (origin[0], origin[1]), (height, width)), ""


def _window_size(reach: int, stride: int, full: int) -> int:
    """The smallest size at least ``reach`` that leaves a multiple of ``stride`` to the image's
    ``full`` size (so that a window moved to the image's far edge stays aligned)."""
    return reach + (full - reach) % stride


def specialised(part: onnx.ModelProto, index: GraphIndex, window: FieldWindow) -> tuple[onnx.ModelProto, GraphIndex]:
    """``part`` (a :func:`zfnet.server.models.pruned` part of the exposed model of ``index``) with its
    image input set to the window's size, shapes inferred again (its tensors keep their names, it is
    not exposed again); its index reads the weights where ``index`` does."""
    set_metadata(part, expose.EXPOSED_KEY, "1")
    image = next(v for v in part.graph.input if v.name == index.image)
    dims = image.type.tensor_type.shape.dim
    for dim, size in zip(dims[2:], window.size):
        dim.Clear()
        dim.dim_value = size
    del part.graph.value_info[:]
    for output in part.graph.output:  # inferred again, at the window's size
        output.type.tensor_type.ClearField("shape")
    exposed, windowed = expose.expose_indexed(part)
    windowed.stored = index.stored
    return exposed, windowed
