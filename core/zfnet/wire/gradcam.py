"""Grad-CAM and Grad-CAM++: a layer's maps weighted by the target's gradient, rectified, and
upsampled to the input, per image."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from zfnet.tensors import to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.attribution import Target, TargetUnit
from zfnet.wire.common import ImageInput, LayerKey, Names, array, images_of, images_proto, layer_of, layer_proto

VARIANTS = Names(pb.GradCamVariant, "", "grad_cam", aliases={"gradcam": "grad_cam", "gradcam++": "grad_cam_plus_plus", "grad-cam++": "grad_cam_plus_plus"})


@dataclass(frozen=True)
class GradCamRequest:
    images: list[ImageInput]
    layer: LayerKey | None = None  # whose maps are weighted (None: the last convolutional layer)
    target: Target = field(default_factory=Target)
    variant: str = "grad_cam"  # a name of VARIANTS

    def __post_init__(self) -> None:
        VARIANTS.number(self.variant, "variant")

    def to_proto(self, model: pb.ModelRef) -> pb.GradCamRequest:
        message = pb.GradCamRequest(model=model, images=images_proto(self.images), target=self.target.to_proto(), variant=VARIANTS.number(self.variant, "variant"))
        if self.layer is not None:
            message.layer.CopyFrom(layer_proto(self.layer))
        return message

    @classmethod
    def from_proto(cls, message: pb.GradCamRequest) -> GradCamRequest:
        layer = layer_of(message.layer) if message.HasField("layer") else None
        return cls(images_of(message.images), layer, Target.from_proto(message.target), VARIANTS.name(message.variant, "variant"))


@dataclass(frozen=True)
class GradCamMap:
    """One image's Grad-CAM."""

    label: str
    target: TargetUnit
    weights: np.ndarray  # (C,) float32: each channel's weight
    map: np.ndarray  # (h, w) float32: the rectified weighted sum at the layer's resolution
    heatmap: np.ndarray  # (H, W) float32: ``map`` upsampled to the input

    def to_proto(self) -> pb.GradCamMap:
        return pb.GradCamMap(label=self.label, target=self.target.to_proto(), weights=to_proto(self.weights), map=to_proto(self.map), heatmap=to_proto(self.heatmap))

    @classmethod
    def from_proto(cls, message: pb.GradCamMap) -> GradCamMap:
        return cls(message.label, TargetUnit.from_proto(message.target), array(message.weights), array(message.map), array(message.heatmap))


@dataclass(frozen=True)
class GradCamResult:
    layer: str  # the tensor whose maps were weighted
    target_layer: str
    variant: str
    layout: str  # "channels" (N, C, h, w) or "tokens" (N, T, D)
    classes: list[str]  # the model's
    images: list[GradCamMap]

    def to_proto(self) -> pb.GradCamResponse:
        return pb.GradCamResponse(
            layer=self.layer, target_layer=self.target_layer, variant=VARIANTS.number(self.variant, "variant"), layout=self.layout,
            classes=self.classes, images=[m.to_proto() for m in self.images],
        )

    @classmethod
    def from_proto(cls, message: pb.GradCamResponse) -> GradCamResult:
        return cls(
            message.layer, message.target_layer, VARIANTS.name(message.variant, "variant"), message.layout, list(message.classes),
            [GradCamMap.from_proto(m) for m in message.images],
        )
