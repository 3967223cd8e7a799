"""Occlusion sensitivity (Zeiler & Fergus 2013, Fig. 7): a square slid over each image; per
occluder position, (b) a feature map's total activation, (d) the true class's probability and (e)
the most probable class, with (c) the deconvnet projection of that map's strongest activation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfnet.tensors import to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import FILLS, FillValue, ImageInput, LayerKey, TrueClass, array, images_of, images_proto, layer_of, layer_proto
from zfnet.wire.deconv import Reconstruction


@dataclass(frozen=True)
class OcclusionRequest:
    images: list[ImageInput]
    size: int | None = None  # occluder side, input pixels (None: a quarter of the input's shorter side)
    stride: int | None = None  # pixels between positions (None: a quarter of the size)
    fill: str = "mean"  # a name of FILLS
    layer: LayerKey | None = None  # of maps (b) and (c) (None: the last convolutional layer)
    true_classes: list[str] | None = None  # per image, or one for all: a class name or index ("" or none: the top-1)
    max_batch: int = 0  # copies per forward pass (0: as memory allows)
    all_classes: bool = False  # also every class's probability per position

    def __post_init__(self) -> None:
        """An unknown fill is refused when the request is made, before anything is sent."""
        FILLS.number(self.fill, "fill")

    def to_proto(self, model: pb.ModelRef) -> pb.OcclusionRequest:
        message = pb.OcclusionRequest(
            model=model, images=images_proto(self.images), size=self.size, stride=self.stride, fill=FILLS.number(self.fill, "fill"),
            true_classes=list(self.true_classes or []), max_batch=self.max_batch, all_classes=self.all_classes,
        )
        if self.layer is not None:
            message.layer.CopyFrom(layer_proto(self.layer))
        return message

    @classmethod
    def from_proto(cls, message: pb.OcclusionRequest) -> OcclusionRequest:
        return cls(
            images_of(message.images), message.size if message.HasField("size") else None, message.stride if message.HasField("stride") else None,
            FILLS.name(message.fill, "fill"), layer_of(message.layer) if message.HasField("layer") else None,
            list(message.true_classes), message.max_batch, message.all_classes,
        )


@dataclass(frozen=True)
class OcclusionMaps:
    """One image's maps, (P, Q) over the occluder positions."""

    label: str
    true_class: TrueClass
    channel: int  # the layer's feature map strongest on the unoccluded image
    channel_total: float  # that map's total activation on the unoccluded image
    true_class_probability: float  # on the unoccluded image
    top_class: int  # of the unoccluded image
    layer_total: np.ndarray  # (b) float32: total activation of ``channel`` per position
    projection: Reconstruction | None  # (c); None when the model has no projection for the layer
    projection_error: str  # why there is no projection
    true_class_map: np.ndarray  # (d) float32
    top_class_map: np.ndarray  # (e) int32
    probabilities: np.ndarray | None  # (P, Q, classes) float32, with all_classes

    def to_proto(self) -> pb.OcclusionMaps:
        message = pb.OcclusionMaps(
            label=self.label, true_class=self.true_class.to_proto(), channel=self.channel, channel_total=self.channel_total,
            true_class_probability=self.true_class_probability, top_class=self.top_class, layer_total=to_proto(self.layer_total),
            projection_error=self.projection_error, true_class_map=to_proto(self.true_class_map), top_class_map=to_proto(self.top_class_map),
        )
        if self.projection is not None:
            message.projection.CopyFrom(self.projection.to_proto())
        if self.probabilities is not None:
            message.probabilities.CopyFrom(to_proto(self.probabilities))
        return message

    @classmethod
    def from_proto(cls, message: pb.OcclusionMaps, image: int) -> OcclusionMaps:
        return cls(
            message.label, TrueClass.from_proto(message.true_class), message.channel, message.channel_total, message.true_class_probability,
            message.top_class, array(message.layer_total),
            Reconstruction.from_proto(message.projection, image, message.label) if message.HasField("projection") else None, message.projection_error,
            array(message.true_class_map), array(message.top_class_map), array(message.probabilities) if message.HasField("probabilities") else None,
        )


@dataclass(frozen=True)
class OcclusionResult:
    layer: str  # the tensor of maps (b) and (c)
    size: int
    stride: int
    fill: FillValue
    tops: np.ndarray  # (P,) occluder top rows, input pixels
    lefts: np.ndarray  # (Q,) occluder left columns
    classes: list[str]  # the model's
    images: list[OcclusionMaps]
    batch: int  # copies per forward pass used

    def to_proto(self) -> pb.OcclusionResult:
        return pb.OcclusionResult(
            layer=self.layer, size=self.size, stride=self.stride, fill=self.fill.to_proto(), tops=self.tops.tolist(), lefts=self.lefts.tolist(),
            classes=self.classes, images=[m.to_proto() for m in self.images], batch=self.batch,
        )

    @classmethod
    def from_proto(cls, message: pb.OcclusionResult) -> OcclusionResult:
        return cls(
            message.layer, message.size, message.stride, FillValue.from_proto(message.fill), np.asarray(message.tops), np.asarray(message.lefts),
            list(message.classes), [OcclusionMaps.from_proto(m, i) for i, m in enumerate(message.images)], message.batch,
        )
