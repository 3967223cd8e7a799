"""Invariance (Zeiler & Fergus 2013, Fig. 5): how far chosen layers' features move, and how the
true class's probability changes, under vertical translation, scale and rotation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfnet.tensors import to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import FILLS, FillValue, ImageInput, LayerKey, Names, TrueClass, array, at_most, images_of, images_proto, layer_of, layer_proto

TRANSFORMS = Names(pb.Transform)
BORDERS = Names(pb.Border, "", "reflect")
MAX_VALUES = 1024  # transformation values (angles, shifts, scales) of all sweeps of a request together, at most


@dataclass(frozen=True)
class InvarianceRequest:
    images: list[ImageInput]
    sweeps: list[tuple[str, list[float]]]  # (transform, values); empty values: its defaults; no sweeps: all three
    layers: list[LayerKey]  # empty: the first convolutional and the last hidden layer
    border: str = "reflect"  # a name of BORDERS
    fill: str = "mean"  # a name of FILLS, for the constant border
    true_classes: list[str] | None = None
    max_batch: int = 0

    def __post_init__(self) -> None:
        """Unknown names are refused when the request is made, before anything is sent."""
        for name, _ in self.sweeps:
            TRANSFORMS.number(name, "transform")
        BORDERS.number(self.border, "border")
        FILLS.number(self.fill, "fill")

    def to_proto(self, model: pb.ModelRef) -> pb.InvarianceRequest:
        return pb.InvarianceRequest(
            model=model, images=images_proto(self.images),
            sweeps=[pb.Sweep(transform=TRANSFORMS.number(name, "transform"), values=list(values)) for name, values in self.sweeps],
            layers=[layer_proto(x) for x in self.layers], border=BORDERS.number(self.border, "border"), fill=FILLS.number(self.fill, "fill"),
            true_classes=list(self.true_classes or []), max_batch=self.max_batch,
        )

    @classmethod
    def from_proto(cls, message: pb.InvarianceRequest) -> InvarianceRequest:
        at_most(sum(len(s.values) for s in message.sweeps), MAX_VALUES, "sweeps", "transformation values (all sweeps together)")
        images = images_of(message.images)
        sweeps = [(TRANSFORMS.name(s.transform, f"sweeps[{i}].transform"), list(s.values)) for i, s in enumerate(message.sweeps)]
        layers = [layer_of(r) for r in message.layers]
        return cls(
            images, sweeps, layers, BORDERS.name(message.border, "border"), FILLS.name(message.fill, "fill"), list(message.true_classes), message.max_batch,
        )


@dataclass(frozen=True)
class Sweep:
    """One transformation's curves, and the transformed copies at a few of its values."""

    transform: str  # a name of TRANSFORMS
    unit: str  # of the values, for axis labels
    values: np.ndarray  # (V,) float32
    distances: np.ndarray  # (N images, L layers, V) float32: Euclidean distance of each layer's features to the original's
    true_class_probability: np.ndarray  # (N, V) float32
    thumbnails: np.ndarray  # (N, T, h, w, 3) uint8: each image transformed at the values ``shown``, as the model took it
    shown: np.ndarray  # (T,) int32: indices into ``values``

    def to_proto(self) -> pb.SweepResult:
        return pb.SweepResult(
            transform=TRANSFORMS.number(self.transform, "transform"), unit=self.unit, values=self.values.tolist(),
            distances=to_proto(self.distances), true_class_probability=to_proto(self.true_class_probability),
            thumbnails=to_proto(self.thumbnails), thumbnail_values=self.shown.tolist(),
        )

    @classmethod
    def from_proto(cls, message: pb.SweepResult) -> Sweep:
        return cls(
            TRANSFORMS.name(message.transform, "transform"), message.unit, np.asarray(message.values, np.float32),
            array(message.distances), array(message.true_class_probability), array(message.thumbnails),
            np.asarray(message.thumbnail_values, np.int32),
        )


@dataclass(frozen=True)
class InvarianceResult:
    layers: list[str]  # tensor names, in the order of the distances' axis 1
    border: str
    fill: FillValue
    labels: list[str]  # per image
    true_classes: list[TrueClass]  # per image
    feature_norms: np.ndarray  # (N, L) float32: Euclidean norm of each original feature vector
    sweeps: list[Sweep]
    classes: list[str]  # the model's
    batch: int  # copies per forward pass used

    def relative_distances(self, sweep: Sweep) -> np.ndarray:
        """(N, L, V): each distance divided by the norm of the original image's features at that layer
        (0 where the norm is 0), so that images and layers compare."""
        norms = self.feature_norms[:, :, None]
        return np.divide(sweep.distances, norms, out=np.zeros_like(sweep.distances), where=norms > 0)

    def to_proto(self) -> pb.InvarianceResult:
        return pb.InvarianceResult(
            layers=self.layers, border=BORDERS.number(self.border, "border"), fill=self.fill.to_proto(), labels=self.labels,
            true_classes=[t.to_proto() for t in self.true_classes], feature_norms=to_proto(self.feature_norms),
            sweeps=[s.to_proto() for s in self.sweeps], classes=self.classes, batch=self.batch,
        )

    @classmethod
    def from_proto(cls, message: pb.InvarianceResult) -> InvarianceResult:
        return cls(
            list(message.layers), BORDERS.name(message.border, "border"), FillValue.from_proto(message.fill), list(message.labels),
            [TrueClass.from_proto(t) for t in message.true_classes], array(message.feature_norms), [Sweep.from_proto(s) for s in message.sweeps],
            list(message.classes), message.batch,
        )
