"""Features of chosen layers over a data set, for transfer learning (Zeiler & Fergus 2013, Sec. 5):
the trained layers stay fixed and a linear classifier is trained on layer l's features of a new
data set.

One forward pass per batch gives every chosen layer; each layer's activation is pooled on its
spatial axes (``none``, ``avg``, ``max``, or ``grid:S``, the average over an S x S grid with
adaptive-average-pool bins, as probing protocols do) and flattened to one row of D values per
image. ``pixels`` is the model input itself (RGB 0..255 at the model's input size, before the
graph's own preprocessing): the raw-pixel baseline a probe compares against.

Free of gRPC: the servicer streams :func:`run`'s output, and any other driver (a Ray actor) can call
:func:`plan` and :func:`run` directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.server.datasets import Batch, Source

if TYPE_CHECKING:  # the client parses pooling specs here without loading onnx
    from zfnet.server.models import LoadedModel

PIXELS = "pixels"
DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}

# -- pooling: one small pure rule per kind, on (n, C, *spatial) float32 arrays -------------------
PoolRule = Callable[[np.ndarray, int], np.ndarray]
POOLS: dict[str, PoolRule] = {}


def pool_rule(kind: str) -> Callable[[PoolRule], PoolRule]:
    def register(rule: PoolRule) -> PoolRule:
        if kind in POOLS:
            raise ValueError(f"pooling {kind!r} is registered twice")
        POOLS[kind] = rule
        return rule

    return register


@pool_rule("none")
def _none(x: np.ndarray, grid: int) -> np.ndarray:
    return x


@pool_rule("avg")
def _avg(x: np.ndarray, grid: int) -> np.ndarray:
    return x.mean(axis=tuple(range(2, x.ndim)), dtype=np.float32)


@pool_rule("max")
def _max(x: np.ndarray, grid: int) -> np.ndarray:
    return x.max(axis=tuple(range(2, x.ndim)))


def _bins(length: int, grid: int) -> np.ndarray:
    """(length, grid) weights of adaptive average pooling: bin i averages ``[floor(i L / S), ceil((i + 1) L / S))``."""
    weights = np.zeros((length, grid), np.float32)
    for i in range(grid):
        begin, end = i * length // grid, -(-(i + 1) * length // grid)
        weights[begin:end, i] = 1.0 / (end - begin)
    return weights


@pool_rule("grid")
def _grid(x: np.ndarray, grid: int) -> np.ndarray:
    """Average over an S x S (x S ...) grid of adaptive-average-pool bins. The bins are products of
    intervals, so the average is one matrix product per spatial axis."""
    for axis in range(x.ndim - 1, 1, -1):
        if x.shape[axis] == grid:
            continue  # one bin per position: the identity
        x = np.moveaxis(np.moveaxis(x, axis, -1) @ _bins(x.shape[axis], grid), -1, axis)
    return x


@dataclass(frozen=True)
class Pooling:
    """How a layer's spatial axes are reduced: ``none``, ``avg``, ``max`` or ``grid:S``."""

    kind: str = "none"
    grid: int = 0

    @classmethod
    def parse(cls, text: str) -> Pooling:
        kind, _, size = text.strip().lower().partition(":")
        if kind not in POOLS or (kind == "grid") != bool(size):
            raise InvalidArgument(f"unknown pooling {text!r}; use none, avg, max or grid:S (S x S average grid, e.g. grid:2)")
        if kind != "grid":
            return cls(kind)
        if not size.isdigit() or int(size) < 1:
            raise InvalidArgument(f"pooling {text!r}: the grid size S in grid:S must be a whole number >= 1")
        return cls("grid", int(size))

    def __str__(self) -> str:
        return f"grid:{self.grid}" if self.kind == "grid" else self.kind

    def shape(self, layer: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-image shape after pooling a layer of per-image ``shape`` (C, *spatial); refuses pooling
        a layer without spatial axes, or a grid finer than the layer's map."""
        if self.kind == "none":
            return shape
        if len(shape) < 2:
            raise InvalidArgument(
                f"layer {layer} has no spatial axes (shape {list(shape)}): it cannot be pooled with {self}; use none"
            )
        if self.kind == "grid":
            if self.grid > min(shape[1:]):
                raise InvalidArgument(f"pooling {self} on layer {layer}: the grid is finer than its {'x'.join(map(str, shape[1:]))} map")
            return (shape[0],) + (self.grid,) * (len(shape) - 1)
        return shape[:1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n, C, *spatial) -> (n, D) float32."""
        return POOLS[self.kind](x.astype(np.float32, copy=False), self.grid).reshape(len(x), -1)


NONE = Pooling()


@dataclass(frozen=True)
class FeatureLayer:
    """One layer of a features job: which tensor, how it is pooled, what its rows hold."""

    name: str  # tensor name, or ``pixels``
    number: int | None  # the paper's layer number, when the tensor has one
    pooling: Pooling
    layer_shape: tuple[int, ...]  # per image, before pooling
    shape: tuple[int, ...]  # per image, after pooling

    @property
    def size(self) -> int:
        """D: values per row."""
        return math.prod(self.shape)


def plan(
    model: LoadedModel, layers: Sequence[tuple[str | int, Pooling | None]], default: Pooling = NONE,
) -> list[FeatureLayer]:
    """Resolve the asked layers (numbers, tensor names or ``pixels``) with their pooling. A layer's own
    pooling wins; else ``default`` applies to network layers with spatial axes, and ``none`` to the
    others and to ``pixels``."""
    from zfnet.server.layers import resolve  # noqa: PLC0415  (onnx: only where a model is served)

    if not layers:
        raise InvalidArgument("no layers asked for", field="job.layers", reason="FIELD_REQUIRED")
    resolved: list[tuple[str, int | None, Pooling | None]] = []
    for layer, pooling in layers:
        if layer == PIXELS:
            resolved.append((PIXELS, None, pooling))
        else:
            row = resolve(model.layers, layer)
            resolved.append((row.name, row.number, pooling))
    names = [name for name, _, _ in resolved]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidArgument(f"layer(s) {', '.join(twice)} asked for more than once")
    shapes = _shapes(model, [n for n in names if n != PIXELS])
    shapes[PIXELS] = tuple(model.input_shape[1:])
    out = []
    for name, number, pooling in resolved:
        shape = shapes[name]
        if pooling is None:
            pooling = default if name != PIXELS and len(shape) >= 2 else NONE
        out.append(FeatureLayer(name, number, pooling, shape, pooling.shape(name, shape)))
    return out


def _shapes(model: LoadedModel, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Per-image shapes of tensors, from one forward pass on a blank image (dynamic axes included)."""
    if not names:
        return {}
    blank = np.zeros([1, *model.input_shape[1:]], np.float32)
    values = model.session.run(names, {model.input_name: blank})
    return {name: tuple(int(d) for d in value.shape[1:]) for name, value in zip(names, values)}


def feature_dtype(dtype: str) -> np.dtype:
    """The stored type of feature rows: ``float32`` or ``float16``."""
    if dtype not in DTYPES:
        raise InvalidArgument(f"unknown feature dtype {dtype!r}; use {' or '.join(DTYPES)}")
    return DTYPES[dtype]


def extract(model: LoadedModel, layers: Sequence[FeatureLayer], inputs: np.ndarray, dtype: str = "float32") -> list[np.ndarray]:
    """Rows (n, D) of each layer for a batch of model inputs (n, C, H, W), from one forward pass;
    computed in float32, stored as ``dtype``."""
    stored = feature_dtype(dtype)
    names = [layer.name for layer in layers if layer.name != PIXELS]
    values = dict(zip(names, model.session.run(names, {model.input_name: inputs}))) if names else {}
    values[PIXELS] = inputs
    return [layer.pooling(values[layer.name]).astype(stored) for layer in layers]


def run(model: LoadedModel, layers: Sequence[FeatureLayer], source: Source, dtype: str = "float32") -> Iterator[tuple[Batch, list[np.ndarray]]]:
    """Every batch of ``source`` in data-set order with its rows per layer; a batch whose images
    were all skipped comes with empty arrays."""
    stored = feature_dtype(dtype)
    for batch in source.batches(model.input_shape):
        if len(batch.indices):
            rows = extract(model, layers, batch.inputs, dtype)
        else:
            rows = [np.zeros((0, layer.size), stored) for layer in layers]
        yield batch, rows
