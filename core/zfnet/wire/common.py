"""What the analyses share on the wire: enum names, images, layer references, boxes, fill values,
true classes, progress, skipped images and data sources, each with its codec in both directions.

Every enum's names come from the proto's enum descriptor (:class:`Names`): ``FILL_MEAN`` is
``"mean"``, ``TOP_BY_MAX`` is ``"max"``, ``DECONVNET`` is ``"deconvnet"``; the zero value
(``*_UNSPECIFIED``, what an unset field reads as) stands for the documented default.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar, cast

import numpy as np

from zfnet.errors import InvalidArgument, NotFound, ResourceExhausted, ZfnetError
from zfnet.tensors import from_proto, to_proto
from zfnet.v1 import zfnet_pb2 as pb

T = TypeVar("T")
E = TypeVar("E", bound=int)  # a proto enum type
Box = tuple[int, int, int, int]  # top, left, bottom, right (bottom and right exclusive), input pixels
LayerKey = str | int  # a layer number (the paper's numbering) or a tensor name
ImageLike = str | Path | bytes | np.ndarray  # what a caller gives as an image


# ---- enums ------------------------------------------------------------------------------------


class Names(Generic[E]):
    """An enum's values as names, from the proto's descriptor: a value's name without ``prefix``, in
    lower case (``FILL_MEAN`` -> ``"mean"``). The zero value stands for ``default`` (None: no default,
    refused); ``aliases`` are other spellings a caller may give for a name (``"0"`` for ``"zero"``)."""

    def __init__(self, enum: type[E], prefix: str = "", default: str | None = None, aliases: Mapping[str, str] | None = None) -> None:
        self.enum: Any = enum  # its EnumTypeWrapper: DESCRIPTOR, Name
        self.default = default
        self.by_number = {v.number: v.name.removeprefix(prefix).lower() for v in self.enum.DESCRIPTOR.values if v.number}
        self.by_name = {name: number for number, name in self.by_number.items()}
        self.aliases = dict(aliases or {})
        if default is not None and default not in self.by_name:
            raise ValueError(f"{self.enum.DESCRIPTOR.name}: the default {default!r} is none of {', '.join(self.by_name)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)

    def name(self, value: int, field: str) -> str:
        """The name of an enum field's value (the default when unset); a number the enum does not
        define is refused (UNKNOWN_ENUM_VALUE), naming ``field`` and the values it takes."""
        if value == 0 and self.default is not None:
            return self.default
        if value not in self.by_number:
            values = ", ".join(f"{self.enum.Name(v)} ({v})" for v in self.by_number)
            unset = f", or leave it unset for {self.enum.Name(self.by_name[self.default])}" if self.default is not None else " (it has no default)"
            raise InvalidArgument(
                f"{field} {value} is not a {self.enum.DESCRIPTOR.name}: use {values}{unset}",
                field=field, reason="UNKNOWN_ENUM_VALUE", metadata={"enum": self.enum.DESCRIPTOR.full_name, "value": value},
            )
        return self.by_number[value]

    def number(self, name: str, what: str) -> E:
        """The value of a name (or an alias); an unknown name is refused, listing the names."""
        name = self.aliases.get(name, name)
        if name not in self.by_name:
            raise InvalidArgument(f"unknown {what} {name!r}; choose one of {', '.join(self.by_name)}")
        return cast(E, self.by_name[name])


FILLS = Names(pb.Fill, "FILL_", "mean", aliases={"0": "zero"})


# ---- request fields ------------------------------------------------------------------------------


@contextmanager
def within(old: str, new: str) -> Iterator[None]:
    """Errors raised inside that name the request field ``old`` (or a field under it) name ``new``
    instead: checks written for one request's layout serve another's (``layer`` -> ``layers[2]``;
    ``model.sha256`` -> ``sha256`` where the request is the ModelRef itself)."""
    try:
        yield
    except ZfnetError as err:
        field = err.field or ""
        if field == old or field.startswith((old + ".", old + "[")):
            err.field = (new + field[len(old):]).lstrip(".") or None
        raise


def at_most(count: int, limit: int, field: str, what: str) -> None:
    """Refuse a request field holding ``count`` values (``what``) when the server takes at most
    ``limit`` (RESOURCE_EXHAUSTED, TOO_MANY_VALUES, metadata limit and requested)."""
    if count > limit:
        raise ResourceExhausted(
            f"{field}: {count:,} {what}, over the {limit:,} this server takes", field=field, reason="TOO_MANY_VALUES",
            metadata={"limit": limit, "requested": count},
        )


def require_model(ref: pb.ModelRef, at: str) -> None:
    """Refuse a ModelRef with neither sha256 nor name; ``at``: where it sits ("" for the request itself)."""
    if ref.WhichOneof("ref") is None:
        raise InvalidArgument("no model given: set ModelRef.sha256 or ModelRef.name", field=at or "ref", reason="FIELD_REQUIRED")


# ---- layers: a number is written in ASCII digits ---------------------------------------------


def layer_key(layer: LayerKey) -> LayerKey:
    """A layer as given: an int or a string of ASCII digits is a layer number, anything else a tensor name."""
    if isinstance(layer, int) or (layer.isascii() and layer.isdigit()):
        return int(layer)
    return layer


def layer_proto(layer: LayerKey) -> pb.LayerRef:
    key = layer_key(layer)
    return pb.LayerRef(number=key) if isinstance(key, int) else pb.LayerRef(name=key)


def layer_of(ref: pb.LayerRef) -> LayerKey:
    """The layer a LayerRef names (errors name the field ``layer``)."""
    kind = ref.WhichOneof("ref")
    if kind is None:
        raise InvalidArgument("no layer given: set LayerRef.number or LayerRef.name", field="layer", reason="FIELD_REQUIRED")
    if kind == "number":
        return ref.number
    if ref.name.isdigit() and not ref.name.isascii():
        raise NotFound(
            f"no layer named {ref.name!r}; a layer number is written in ASCII digits (or set LayerRef.number)",
            field="layer.name", reason="LAYER_NOT_FOUND", resource=("layer", ref.name),
        )
    return layer_key(ref.name)


# ---- boxes, fills, true classes ------------------------------------------------------------------


def box_proto(box: Sequence[int]) -> pb.Box:
    top, left, bottom, right = (int(v) for v in box)
    return pb.Box(top=top, left=left, bottom=bottom, right=right)


def box_of(box: pb.Box) -> Box:
    return (box.top, box.left, box.bottom, box.right)


@dataclass(frozen=True)
class FillValue:
    """What filled occluders, masks or borders: per input channel, in the model's input space (RGB 0..255)."""

    name: str  # a name of :data:`FILLS`
    values: tuple[float, ...]  # (C,)
    note: str  # where the values come from

    def describe(self) -> str:
        shown = ", ".join(f"{v:.4g}" for v in self.values)
        return f"{self.name} ({shown})"

    def to_proto(self) -> pb.FillValue:
        return pb.FillValue(fill=FILLS.number(self.name, "fill"), values=list(self.values), note=self.note)

    @classmethod
    def from_proto(cls, message: pb.FillValue) -> FillValue:
        return cls(FILLS.name(message.fill, "fill"), tuple(message.values), message.note)


@dataclass(frozen=True)
class TrueClass:
    """The class whose probability an analysis follows for one image."""

    index: int
    label: str  # its name, "" when the model records none
    from_top1: bool  # no class was given: the unperturbed image's top-1

    def to_proto(self) -> pb.TrueClass:
        return pb.TrueClass(index=self.index, label=self.label, from_top1=self.from_top1)

    @classmethod
    def from_proto(cls, message: pb.TrueClass) -> TrueClass:
        return cls(message.index, message.label, message.from_top1)


def class_name(classes: Sequence[str], index: int) -> str:
    """A class's name, or ``class <index>`` for a model without class names."""
    return classes[index] if 0 <= index < len(classes) else f"class {index}"


def array(tensor: pb.Tensor) -> np.ndarray:
    """A reply's tensor as a writable array of its own."""
    return from_proto(tensor).copy()


# ---- progress and skipped images -----------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    """An image a job could not read: its data-set index, path and why; it is left out of the results."""

    index: int
    path: str
    reason: str

    def to_proto(self) -> pb.SkippedImage:
        return pb.SkippedImage(index=self.index, path=self.path, reason=self.reason)

    @classmethod
    def from_proto(cls, message: pb.SkippedImage) -> Skipped:
        return cls(message.index, message.path, message.reason)


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` items of a stage (images, perturbed copies, reconstructions); the images
    skipped since the last report."""

    stage: str
    done: int
    total: int
    skipped: Sequence[Skipped] = ()

    def to_proto(self) -> pb.JobProgress:
        return pb.JobProgress(stage=self.stage, done=self.done, total=self.total, skipped=[s.to_proto() for s in self.skipped])

    @classmethod
    def from_proto(cls, message: pb.JobProgress) -> Progress:
        return cls(message.stage, message.done, message.total, [Skipped.from_proto(s) for s in message.skipped])


def with_progress(steps: Generator[Progress, None, T], reply: Callable[..., Any]) -> Generator[Any, None, T]:
    """Yield each progress step of an analysis as ``reply(progress=...)``; return the analysis' result."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        yield reply(progress=step.to_proto())


# ---- images ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInput:
    """One image as it travels: exactly one of ``encoded``, ``rgb`` (H, W, 3), ``model_input`` (C, H, W)."""

    encoded: bytes | None = None
    rgb: np.ndarray | None = None
    model_input: np.ndarray | None = None
    label: str = ""

    @classmethod
    def of(cls, image: ImageLike) -> ImageInput:
        """A path or encoded bytes travel encoded (a path labelled by its file name); an (H, W, 3)
        array as RGB; a (C, H, W) array as model input."""
        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise NotFound(f"image {path} does not exist")
            return cls(encoded=path.read_bytes(), label=path.name)
        if isinstance(image, bytes):
            return cls(encoded=image)
        values = np.asarray(image)
        if values.ndim == 3 and values.shape[2] == 3:
            return cls(rgb=values if values.dtype == np.uint8 else values.astype(np.float32))
        if values.ndim == 3:
            return cls(model_input=values.astype(np.float32))
        raise InvalidArgument(f"an image array must be (H, W, 3) RGB or (C, H, W) model input, got {list(values.shape)}")

    def to_proto(self) -> pb.Image:
        if self.encoded is not None:
            return pb.Image(encoded=self.encoded, label=self.label)
        if self.rgb is not None:
            return pb.Image(rgb=to_proto(self.rgb), label=self.label)
        return pb.Image(model_input=to_proto(np.asarray(self.model_input, np.float32)), label=self.label)

    @classmethod
    def from_proto(cls, image: pb.Image, i: int) -> ImageInput:
        """Request image ``i`` (errors name ``images[i]``)."""
        kind = image.WhichOneof("source")
        if kind == "encoded":
            return cls(encoded=image.encoded, label=image.label)
        if kind == "rgb":
            return cls(rgb=from_proto(image.rgb, f"image {i}", f"images[{i}].rgb"), label=image.label)
        if kind == "model_input":
            return cls(model_input=from_proto(image.model_input, f"image {i}", f"images[{i}].model_input").astype(np.float32), label=image.label)
        raise InvalidArgument(f"image {i} has no data (set encoded, rgb or model_input)", field=f"images[{i}]", reason="FIELD_REQUIRED")


def images_of(images: Iterable[pb.Image]) -> list[ImageInput]:
    return [ImageInput.from_proto(image, i) for i, image in enumerate(images)]


def images_proto(images: Iterable[ImageInput]) -> list[pb.Image]:
    return [image.to_proto() for image in images]


# ---- data sources ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamedImages:
    """Images the client streams: how many the whole data set holds, and its class names."""

    size: int
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataSource:
    """Which images a data-set job reads: a named data set on the server (``dataset``) or images the
    client streams (``streamed``); indices ``[start, stop)`` (stop 0: the end), ``batch_size`` images
    per forward pass (0: the server's default)."""

    dataset: str = ""
    streamed: StreamedImages | None = None
    start: int = 0
    stop: int = 0
    batch_size: int = 0

    @property
    def name(self) -> str:
        """How a top-k state names its data set (``TopState.data``): ``dataset:<name>`` or ``streamed``."""
        return f"dataset:{self.dataset}" if self.dataset else "streamed"

    def to_proto(self) -> pb.DataSource:
        message = pb.DataSource(start=self.start, stop=self.stop, batch_size=self.batch_size)
        if self.dataset:
            message.dataset = self.dataset
        elif self.streamed is not None:
            message.streamed.CopyFrom(pb.StreamedImages(size=self.streamed.size, classes=self.streamed.classes))
        return message

    @classmethod
    def from_proto(cls, message: pb.DataSource) -> DataSource:
        kind = message.WhichOneof("source")
        streamed = StreamedImages(message.streamed.size, tuple(message.streamed.classes)) if kind == "streamed" else None
        return cls(message.dataset if kind == "dataset" else "", streamed, message.start, message.stop, message.batch_size)


class ImageBatch(NamedTuple):
    """Streamed images at consecutive data-set indices from ``start``; ``labels``: class index per
    image (empty: unknown). A tuple: a data source reads it as (start, images, labels)."""

    start: int
    images: list[ImageInput]
    labels: Sequence[int] = ()

    def to_proto(self) -> pb.ImageBatch:
        return pb.ImageBatch(start=self.start, images=images_proto(self.images), labels=list(self.labels))

    @classmethod
    def from_proto(cls, message: pb.ImageBatch) -> ImageBatch:
        return cls(message.start, images_of(message.images), list(message.labels))


def image_batches(requests: Iterable[Any]) -> Iterator[ImageBatch]:
    """The ImageBatch parts (``batch``) of a data-set job's request stream, as they arrive."""
    return (ImageBatch.from_proto(r.batch) for r in requests if r.WhichOneof("part") == "batch")
