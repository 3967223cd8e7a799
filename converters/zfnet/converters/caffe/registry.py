"""The layer-converter registry and what every converter works with.

A converter is ``fn(layer, bottoms, blobs, builder) -> list[Value]``: it reads the Caffe layer's
parameters, takes its weights from ``blobs`` (shape-checked), emits ONNX nodes through ``builder``
and returns one :class:`Value` per top. The driver (``driver.py``) does all the wiring: top -> tensor
names, bottom/top counts, blob bookkeeping and the layer name in error messages.

Tensor names: a layer's first top is the tensor named exactly after the layer; further tops are
``<layer>/<top>``; internal tensors and weights are ``<layer>:<suffix>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.typing import ArrayLike, DTypeLike
from onnx import helper, numpy_helper

from zfnet.converters.caffe import caffe_pb2
from zfnet.errors import InvalidArgument

Dim = int | str  # str: symbolic (the batch "N", or a size only known at run time)


@dataclass(frozen=True)
class Value:
    """An ONNX tensor and its shape as far as it is known."""

    name: str
    shape: tuple[Dim, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dims(self, start: int = 0, stop: int | None = None) -> tuple[int, ...]:
        """The sizes of axes ``start:stop``, which must be known numbers."""
        part = self.shape[start:stop]
        if not all(isinstance(d, int) for d in part):
            raise InvalidArgument(f"needs known sizes on axes {start}..{(stop or self.ndim) - 1} of {self.shape}")
        return tuple(part)  # type: ignore[arg-type]

    def count(self, start: int = 0, stop: int | None = None) -> int:
        """The number of elements in axes ``start:stop``, which must be known."""
        return math.prod(self.dims(start, stop))


class Blobs:
    """The weights of one layer, handed out by index with a shape check."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self.arrays = list(arrays)
        self.used = 0

    def get(self, index: int, shape: Sequence[int]) -> np.ndarray:
        """Blob ``index`` as float32 with ``shape``; Caffe's legacy 4-D blobs (leading 1s) are accepted."""
        shape = tuple(int(d) for d in shape)
        if index >= len(self.arrays):
            raise InvalidArgument(f"the weights have no blob {index} (the net needs shape {shape}); do the net and the weights belong together?")
        array = self.arrays[index]
        legacy = (1,) * (4 - len(shape)) + shape if len(shape) <= 4 else None
        if array.shape != shape and array.shape != legacy:
            raise InvalidArgument(f"blob {index} has shape {array.shape} in the weights, the net needs {shape}; do the net and the weights belong together?")
        self.used = max(self.used, index + 1)
        return np.ascontiguousarray(array, dtype=np.float32).reshape(shape)

    def check_all_used(self) -> None:
        """Refuse weights with more blobs than the layer uses."""
        if len(self.arrays) > self.used:
            shapes = ", ".join(str(a.shape) for a in self.arrays[self.used :])
            raise InvalidArgument(f"the weights have {len(self.arrays)} blobs, the net uses {self.used}; extra: {shapes} (bias_term, or the wrong weights?)")


class Builder:
    """Collects the nodes and initializers of one layer and names them after it."""

    def __init__(self, layer: caffe_pb2.LayerParameter) -> None:
        self.layer = layer.name
        self.tops = list(layer.top)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def top(self, index: int = 0) -> str:
        """The tensor name of top ``index``."""
        return self.layer if index == 0 else f"{self.layer}/{self.tops[index]}"

    def name(self, out: int | str) -> str:
        """A top index -> its tensor name; a suffix -> the internal name ``<layer>:<suffix>``."""
        return self.top(out) if isinstance(out, int) else f"{self.layer}:{out}"

    def const(self, suffix: str, array: ArrayLike, dtype: DTypeLike = np.float32) -> str:
        """Add an initializer ``<layer>:<suffix>``; returns its name."""
        name = self.name(suffix)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: Sequence[str], out: int | str | Sequence[int | str] = 0, **attrs) -> str:
        """Add a node; ``out`` is a top index, an internal suffix, or a list of them. Returns the first output's name."""
        outs = [self.name(o) for o in ([out] if isinstance(out, (int, str)) else out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=outs[0], **attrs))
        return outs[0]


Converter = Callable[[caffe_pb2.LayerParameter, list[Value], Blobs, Builder], list[Value]]


@dataclass(frozen=True)
class Entry:
    """A registered converter and the bottom/top counts it accepts (max None: any)."""

    fn: Converter
    bottoms: tuple[int, int | None]
    tops: tuple[int, int | None]


_REGISTRY: dict[str, Entry] = {}


def register(*types: str, bottoms: tuple[int, int | None] = (1, 1), tops: tuple[int, int | None] = (1, 1)) -> Callable[[Converter], Converter]:
    """Register a converter for Caffe layer ``types``; a type can have only one converter."""

    def wrap(fn: Converter) -> Converter:
        for layer_type in types:
            if layer_type in _REGISTRY:
                other = _REGISTRY[layer_type].fn
                raise ValueError(f"Caffe layer type {layer_type!r} already has a converter: {other.__module__}.{other.__qualname__}")
            _REGISTRY[layer_type] = Entry(fn, bottoms, tops)
        return fn

    return wrap


def lookup(layer_type: str) -> Entry | None:
    """The converter for a Caffe layer type, or None."""
    return _REGISTRY.get(layer_type)


def supported_types() -> list[str]:
    """The Caffe layer types with a converter, sorted."""
    return sorted(_REGISTRY)


def canonical_axis(axis: int, ndim: int) -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end."""
    if not -ndim <= axis < ndim:
        raise InvalidArgument(f"axis {axis} is out of range for a {ndim}-D input")
    return axis % ndim
