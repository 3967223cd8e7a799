"""GetActivations: the activations of chosen layers for a batch of images, by tensor name."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfnet.tensors import to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import ImageInput, LayerKey, array, images_of, images_proto, layer_of, layer_proto, within

Activations = dict[str, np.ndarray]  # tensor name -> (N, ...) float32; two references to one layer give one entry


@dataclass(frozen=True)
class ActivationsRequest:
    images: list[ImageInput]
    layers: list[LayerKey]

    def to_proto(self, model: pb.ModelRef) -> pb.ActivationsRequest:
        return pb.ActivationsRequest(model=model, images=images_proto(self.images), layers=[layer_proto(x) for x in self.layers])

    @classmethod
    def from_proto(cls, message: pb.ActivationsRequest) -> ActivationsRequest:
        layers = []
        for i, ref in enumerate(message.layers):
            with within("layer", f"layers[{i}]"):
                layers.append(layer_of(ref))
        return cls(images_of(message.images), layers)


def activations_proto(values: Activations) -> pb.ActivationsResponse:
    return pb.ActivationsResponse(activations={name: to_proto(v) for name, v in values.items()})


def activations_of(message: pb.ActivationsResponse) -> Activations:
    return {name: array(t) for name, t in message.activations.items()}
