"""Deconv: activations of one layer projected back to pixels (deconvnet, backprop, guided backprop),
per image and channel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfnet.tensors import to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import Box, ImageInput, LayerKey, Names, array, box_of, box_proto, images_of, images_proto, layer_of, layer_proto

MODES = Names(pb.DeconvMode, "", "max")
METHODS = Names(pb.DeconvMethod, "", "deconvnet")
TOP_K = 9  # ChannelSelection.top_k when unset


@dataclass(frozen=True)
class DeconvRequest:
    images: list[ImageInput]
    layer: LayerKey
    channels: list[int] | None = None  # the same channels for every image; None: the ``top_k`` strongest per image
    top_k: int = TOP_K
    mode: str = "max"  # a name of MODES
    method: str = "deconvnet"  # a name of METHODS

    def __post_init__(self) -> None:
        """Unknown names are refused when the request is made, before anything is sent."""
        MODES.number(self.mode, "mode")
        METHODS.number(self.method, "method")

    def to_proto(self, model: pb.ModelRef) -> pb.DeconvRequest:
        return pb.DeconvRequest(
            model=model, images=images_proto(self.images), layer=layer_proto(self.layer),
            channels=pb.ChannelSelection(channels=list(self.channels or []), top_k=self.top_k),
            mode=MODES.number(self.mode, "mode"), method=METHODS.number(self.method, "method"),
        )

    @classmethod
    def from_proto(cls, message: pb.DeconvRequest) -> DeconvRequest:
        images = images_of(message.images)
        mode, method = MODES.name(message.mode, "mode"), METHODS.name(message.method, "method")
        return cls(images, layer_of(message.layer), list(message.channels.channels) or None, message.channels.top_k or TOP_K, mode, method)


@dataclass(frozen=True)
class Reconstruction:
    """One (image, channel) reconstruction and what it came from."""

    image: int  # index of the request image
    channel: int
    activation: float  # the selected activation (max mode) or the channel's maximum (map mode)
    location: tuple[int, ...]  # (row, column) of that activation in the layer's map; () for fully connected
    receptive_field: Box  # the input box that can affect it
    pixels: np.ndarray  # (C, H, W) float32, the model's input space
    label: str = ""  # its image's label

    def to_proto(self) -> pb.Reconstruction:
        return pb.Reconstruction(
            channel=self.channel, activation=self.activation, location=list(self.location),
            receptive_field=box_proto(self.receptive_field), pixels=to_proto(self.pixels),
        )

    @classmethod
    def from_proto(cls, message: pb.Reconstruction, image: int, label: str) -> Reconstruction:
        return cls(image, message.channel, message.activation, tuple(message.location), box_of(message.receptive_field), array(message.pixels), label)


@dataclass(frozen=True)
class DeconvResult:
    layer: str  # the tensor that was projected
    mode: str
    method: str
    labels: list[str]  # per request image
    reconstructions: list[Reconstruction]  # per image, in selection order

    def to_proto(self) -> pb.DeconvResponse:
        images = [pb.ImageReconstructions(label=label) for label in self.labels]
        for r in self.reconstructions:
            images[r.image].reconstructions.append(r.to_proto())
        return pb.DeconvResponse(layer=self.layer, mode=MODES.number(self.mode, "mode"), method=METHODS.number(self.method, "method"), images=images)

    @classmethod
    def from_proto(cls, message: pb.DeconvResponse) -> DeconvResult:
        return cls(
            message.layer, MODES.name(message.mode, "mode"), METHODS.name(message.method, "method"), [image.label for image in message.images],
            [Reconstruction.from_proto(r, i, image.label) for i, image in enumerate(message.images) for r in image.reconstructions],
        )
