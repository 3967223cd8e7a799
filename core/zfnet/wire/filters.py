"""GetFilters: the filters (weights) of a convolutional or fully connected layer, as arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfnet.tensors import to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import LayerKey, array, layer_of, layer_proto


@dataclass(frozen=True)
class FiltersRequest:
    layer: LayerKey  # a learned layer's output, or any tensor of its block (a layer number, relu1, pool1)

    def to_proto(self, model: pb.ModelRef) -> pb.FiltersRequest:
        return pb.FiltersRequest(model=model, layer=layer_proto(self.layer))

    @classmethod
    def from_proto(cls, message: pb.FiltersRequest) -> FiltersRequest:
        return cls(layer_of(message.layer))


@dataclass(frozen=True)
class Filters:
    layer: str  # the tensor the learned op produces
    op: str
    weights: np.ndarray  # float32: Conv (out, in/group, kh, kw), ConvTranspose as stored (in, out/group, kh, kw); fully connected (out, in)
    bias: np.ndarray | None  # (out,) float32
    channel_order: str  # of the image input, from the model's preprocessing ("rgb" when unknown)

    def to_proto(self) -> pb.FiltersResponse:
        bias = to_proto(self.bias) if self.bias is not None else pb.Tensor(dtype=pb.FLOAT32)
        return pb.FiltersResponse(layer=self.layer, op=self.op, weights=to_proto(self.weights), bias=bias, channel_order=self.channel_order)

    @classmethod
    def from_proto(cls, message: pb.FiltersResponse) -> Filters:
        return cls(message.layer, message.op, array(message.weights), array(message.bias) if message.bias.shape else None, message.channel_order)
