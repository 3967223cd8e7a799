"""Features of chosen layers over a data set (transfer learning, Zeiler & Fergus 2013, Sec. 5): each
layer pooled on its spatial axes (:class:`Pooling`) and flattened to one row per image."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from zfnet.errors import InvalidArgument, ResourceExhausted
from zfnet.tensors import MAX_MESSAGE_BYTES, from_proto, to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import DataSource, LayerKey, Names, Progress, Skipped, layer_of, layer_proto, within

PIXELS = "pixels"  # the layer name of the model input itself: the raw-pixel baseline
POOL_KINDS = Names(pb.PoolKind, "POOL_", "none")
DTYPES = {"float32": pb.FLOAT32, "float16": pb.FLOAT16}  # how rows are stored (computed in float32 either way)
REPLY_BYTES = 32 << 20  # feature bytes per FeaturesReply; a batch over it travels in several replies


@dataclass(frozen=True)
class Pooling:
    """How a layer's spatial axes are reduced: ``none``, ``avg``, ``max`` or ``grid:S`` (the average
    over an S x S grid of adaptive-average-pool bins)."""

    kind: str = "none"  # a name of POOL_KINDS
    grid: int = 0

    @classmethod
    def parse(cls, text: str) -> Pooling:
        kind, _, size = text.strip().lower().partition(":")
        if kind not in POOL_KINDS.by_name or (kind == "grid") != bool(size):
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

    def to_proto(self) -> pb.Pooling:
        return pb.Pooling(kind=POOL_KINDS.number(self.kind, "pooling"), grid=self.grid)

    @classmethod
    def from_proto(cls, message: pb.Pooling, field: str) -> Pooling | None:
        """The pooling of the request field ``field``; None when unspecified."""
        if message.kind == pb.POOL_UNSPECIFIED:
            return None
        kind = POOL_KINDS.name(message.kind, f"{field}.kind")
        with within("", f"{field}.grid"):
            return cls.parse(f"grid:{message.grid}" if kind == "grid" else kind)


NONE = Pooling()


@dataclass(frozen=True)
class FeaturesJob:
    layers: list[tuple[LayerKey, Pooling | None]]  # a layer number, a tensor name or ``pixels``, with its own pooling (None: the default)
    data: DataSource
    default_pooling: Pooling = NONE  # for network layers with spatial axes
    dtype: str = "float32"  # a key of DTYPES

    def __post_init__(self) -> None:
        """An unknown dtype is refused when the job is made, before anything is sent."""
        if self.dtype not in DTYPES:
            raise InvalidArgument(f"unknown feature dtype {self.dtype!r}; use {' or '.join(DTYPES)}")

    def to_proto(self, model: pb.ModelRef) -> pb.FeaturesJob:
        return pb.FeaturesJob(
            model=model, dtype=DTYPES[self.dtype], data=self.data.to_proto(), default_pooling=self.default_pooling.to_proto(),
            layers=[pb.FeatureLayer(layer=layer_proto(x), pooling=p.to_proto() if p is not None else pb.Pooling()) for x, p in self.layers],
        )

    @classmethod
    def from_proto(cls, job: pb.FeaturesJob) -> FeaturesJob:
        """The job of a FeaturesRequest (errors name ``job.<field>``)."""
        dtype = next((name for name, code in DTYPES.items() if code == job.dtype), None) if job.dtype else "float32"
        if dtype is None:
            got = pb.DataType.Name(job.dtype) if job.dtype in pb.DataType.values() else job.dtype
            raise InvalidArgument(f"FeaturesJob.dtype must be FLOAT32 or FLOAT16, got {got}", field="job.dtype")
        layers = [(layer_of(f.layer), Pooling.from_proto(f.pooling, f"job.layers[{i}].pooling")) for i, f in enumerate(job.layers)]
        default = Pooling.from_proto(job.default_pooling, "job.default_pooling") or NONE
        return cls(layers, DataSource.from_proto(job.data), default, dtype)


@dataclass(frozen=True)
class FeatureSpec:
    """What one layer's rows hold."""

    name: str  # tensor name, or ``pixels``
    number: int | None  # the paper's layer number, when the tensor has one
    pooling: str  # as applied: none | avg | max | grid:S
    layer_shape: tuple[int, ...]  # per image, before pooling, channels first: (C, *spatial), (features, tokens)
    shape: tuple[int, ...]  # per image, after pooling; a row holds prod(shape) values, C order
    layer_dtype: str = "float32"  # the tensor's element type in the forward pass (the server's to know; not sent)
    channel_axis: int = 1  # where the tensor has its channels (the server's to know; not sent)

    @property
    def size(self) -> int:
        """D: values per row."""
        return math.prod(self.shape)

    def to_proto(self) -> pb.FeatureSpec:
        return pb.FeatureSpec(
            name=self.name, number=self.number or 0, pooling=Pooling.parse(self.pooling).to_proto(), layer_shape=self.layer_shape, shape=self.shape,
        )

    @classmethod
    def from_proto(cls, message: pb.FeatureSpec) -> FeatureSpec:
        kind = POOL_KINDS.name(message.pooling.kind, "pooling.kind")
        pooling = f"grid:{message.pooling.grid}" if kind == "grid" else kind
        return cls(message.name, message.number or None, pooling, tuple(message.layer_shape), tuple(message.shape))


def check_row_bytes(layers: Sequence[FeatureSpec], dtype: str) -> None:
    """Refuse a job whose one image's features take over half a message."""
    row_bytes = sum(f.size for f in layers) * np.dtype(dtype).itemsize
    if row_bytes > MAX_MESSAGE_BYTES // 2:
        raise ResourceExhausted(
            f"one image's features are {row_bytes} bytes, over half the {MAX_MESSAGE_BYTES}-byte message limit; pool the large layers",
            field="job.layers", reason="REPLY_TOO_LARGE", metadata={"limit": MAX_MESSAGE_BYTES // 2, "requested": row_bytes},
        )


@dataclass(frozen=True)
class FeatureHeader:
    """What a features job returns: its layers, float type and the data-set range it reads."""

    model_sha256: str
    layers: list[FeatureSpec]  # the order of FeatureBatch.features
    dtype: str  # float32 | float16
    size: int  # images in the whole data set
    classes: list[str]
    start: int  # the range read, [start, stop)
    stop: int
    batch_size: int  # images per forward pass

    def to_proto(self) -> pb.FeaturesHeader:
        return pb.FeaturesHeader(
            model_sha256=self.model_sha256, layers=[f.to_proto() for f in self.layers], dtype=DTYPES[self.dtype], size=self.size,
            classes=self.classes, start=self.start, stop=self.stop, batch_size=self.batch_size,
        )

    @classmethod
    def from_proto(cls, message: pb.FeaturesHeader) -> FeatureHeader:
        dtype = next(name for name, code in DTYPES.items() if code == message.dtype)
        return cls(
            message.model_sha256, [FeatureSpec.from_proto(f) for f in message.layers], dtype, message.size, list(message.classes),
            message.start, message.stop, message.batch_size,
        )


@dataclass(frozen=True)
class FeatureBatch:
    """Rows of consecutive data-set images; skipped images have no row here and are listed in ``skipped``."""

    indices: np.ndarray  # (n,) int64 data-set indices, increasing
    labels: np.ndarray  # (n,) int64 class index, -1 where unknown
    paths: list[str]  # relative to the data set, or the client's own path
    features: list[np.ndarray]  # per header layer: (n, D) in the job's dtype
    skipped: Sequence[Skipped] = field(default_factory=list)
    done: int = 0  # images of the range read so far, skipped ones included
    total: int = 0

    def replies(self) -> Iterator[pb.FeaturesReply]:
        """The batch as replies of at most REPLY_BYTES of features (at least one row each); the first
        carries the batch's skipped images."""
        row_bytes = sum(r.shape[1] * r.itemsize for r in self.features) or 1
        step = max(1, REPLY_BYTES // row_bytes)
        for begin in range(0, max(len(self.indices), 1), step):
            end = begin + step
            yield pb.FeaturesReply(
                rows=pb.FeatureRows(
                    indices=self.indices[begin:end].tolist(), labels=self.labels[begin:end].tolist(), paths=self.paths[begin:end],
                    features=[to_proto(r[begin:end]) for r in self.features],
                ),
                progress=Progress("features", self.done, self.total, self.skipped if begin == 0 else ()).to_proto(),
            )

    @classmethod
    def from_proto(cls, reply: pb.FeaturesReply, header: FeatureHeader) -> FeatureBatch:
        rows, progress = reply.rows, Progress.from_proto(reply.progress)
        return cls(
            np.asarray(rows.indices, np.int64), np.asarray(rows.labels, np.int64), list(rows.paths),
            [from_proto(t, f"features of {spec.name}") for t, spec in zip(rows.features, header.layers)],
            list(progress.skipped), progress.done, progress.total,
        )
