"""The perturbation analyses' results as the client sees them: numpy arrays and plain fields,
decoded from the reply messages (shapes and units: proto/zfnet/v1/zfnet.proto)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfnet.tensors import from_proto
from zfnet.v1 import zfnet_pb2 as pb

FILLS = {"mean": pb.FILL_MEAN, "grey": pb.FILL_GREY, "zero": pb.FILL_ZERO, "0": pb.FILL_ZERO}
TRANSFORMS = {"translate": pb.TRANSLATE, "scale": pb.SCALE, "rotate": pb.ROTATE}
BORDERS = {"reflect": pb.REFLECT, "constant": pb.CONSTANT}
FILL_NAMES = {pb.FILL_MEAN: "mean", pb.FILL_GREY: "grey", pb.FILL_ZERO: "zero"}
TRANSFORM_NAMES = {code: name for name, code in TRANSFORMS.items()}
BORDER_NAMES = {code: name for name, code in BORDERS.items()}


@dataclass(frozen=True)
class Fill:
    """What filled occluders, masks or borders: per input channel, RGB 0..255."""

    name: str
    values: tuple[float, ...]
    note: str

    def describe(self) -> str:
        shown = ", ".join(f"{v:.4g}" for v in self.values)
        return f"{self.name} ({shown})"


@dataclass(frozen=True)
class TrueClass:
    index: int
    label: str
    from_top1: bool  # no class was given: the unperturbed image's top-1


@dataclass(frozen=True)
class Projection:
    """Map (c): the deconvnet projection of the chosen feature map's strongest activation."""

    channel: int
    activation: float
    location: tuple[int, ...]
    receptive_field: tuple[int, int, int, int]  # top, left, bottom, right (exclusive)
    pixels: np.ndarray  # (C, H, W) float32, model input space


@dataclass(frozen=True)
class OcclusionMaps:
    """One image's maps over the occluder grid, (P, Q) each."""

    label: str
    true_class: TrueClass
    channel: int
    channel_total: float
    true_class_probability: float
    top_class: int
    layer_total: np.ndarray  # (b)
    projection: Projection | None  # (c)
    projection_error: str
    true_class_map: np.ndarray  # (d)
    top_class_map: np.ndarray  # (e)
    probabilities: np.ndarray | None  # (P, Q, classes)


@dataclass(frozen=True)
class OcclusionResult:
    layer: str
    size: int
    stride: int
    fill: Fill
    tops: np.ndarray  # (P,) occluder top rows
    lefts: np.ndarray  # (Q,) occluder left columns
    classes: list[str]
    images: list[OcclusionMaps]
    batch: int


@dataclass(frozen=True)
class Sweep:
    transform: str
    unit: str  # of the values
    values: np.ndarray  # (V,)
    distances: np.ndarray  # (N, L, V)
    true_class_probability: np.ndarray  # (N, V)


@dataclass(frozen=True)
class InvarianceResult:
    layers: list[str]
    border: str
    fill: Fill
    labels: list[str]
    true_classes: list[TrueClass]
    feature_norms: np.ndarray  # (N, L)
    sweeps: list[Sweep]
    classes: list[str]
    batch: int


@dataclass(frozen=True)
class CorrespondenceScore:
    part: str
    random: bool
    layer: str
    delta: float
    mean: float
    std: float
    pairs: int
    features: int
    pair_distances: np.ndarray  # (K, K)
    trial_deltas: list[float]
    trial_boxes: list[list[tuple[int, int, int, int]]]  # random: per trial, one (top, left, bottom, right) per image


@dataclass(frozen=True)
class CorrespondenceResult:
    layers: list[str]
    parts: list[str]
    fill: Fill
    labels: list[str]
    scores: list[CorrespondenceScore]
    random_trials: int
    seed: int
    batch: int

    def score(self, part: str, layer: str, random: bool = False) -> CorrespondenceScore | None:
        return next((s for s in self.scores if s.part == part and s.layer == layer and s.random == random), None)


def _array(tensor: pb.Tensor) -> np.ndarray:
    return from_proto(tensor).copy()


def _fill(message: pb.FillValue) -> Fill:
    return Fill(FILL_NAMES.get(message.fill, "mean"), tuple(message.values), message.note)


def _truth(message: pb.TrueClass) -> TrueClass:
    return TrueClass(message.index, message.label, message.from_top1)


def occlusion(reply: pb.OcclusionResult) -> OcclusionResult:
    images = []
    for item in reply.images:
        projection = None
        if item.HasField("projection"):
            r, box = item.projection, item.projection.receptive_field
            projection = Projection(r.channel, r.activation, tuple(r.location), (box.top, box.left, box.bottom, box.right), _array(r.pixels))
        images.append(OcclusionMaps(
            item.label, _truth(item.true_class), item.channel, item.channel_total, item.true_class_probability, item.top_class,
            _array(item.layer_total), projection, item.projection_error, _array(item.true_class_map), _array(item.top_class_map),
            _array(item.probabilities) if item.HasField("probabilities") else None,
        ))
    return OcclusionResult(
        reply.layer, reply.size, reply.stride, _fill(reply.fill), np.asarray(reply.tops), np.asarray(reply.lefts),
        list(reply.classes), images, reply.batch,
    )


def invariance(reply: pb.InvarianceResult) -> InvarianceResult:
    return InvarianceResult(
        list(reply.layers), BORDER_NAMES.get(reply.border, "reflect"), _fill(reply.fill), list(reply.labels),
        [_truth(t) for t in reply.true_classes], _array(reply.feature_norms),
        [
            Sweep(TRANSFORM_NAMES.get(s.transform, str(s.transform)), s.unit, np.asarray(s.values, np.float32), _array(s.distances), _array(s.true_class_probability))
            for s in reply.sweeps
        ],
        list(reply.classes), reply.batch,
    )


def correspondence(reply: pb.CorrespondenceResult) -> CorrespondenceResult:
    return CorrespondenceResult(
        list(reply.layers), list(reply.parts), _fill(reply.fill), list(reply.labels),
        [
            CorrespondenceScore(
                s.part, s.random, s.layer, s.delta, s.mean, s.std, s.pairs, s.features, _array(s.pair_distances), list(s.trial_deltas),
                [[(b.top, b.left, b.bottom, b.right) for b in trial.boxes] for trial in s.trial_boxes],
            )
            for s in reply.scores
        ],
        reply.random_trials, reply.seed, reply.batch,
    )


def class_name(classes: list[str], index: int) -> str:
    """A class's name, or ``class <index>`` for a model without class names."""
    return classes[index] if 0 <= index < len(classes) else f"class {index}"
