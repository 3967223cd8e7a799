"""Correspondence (Zeiler & Fergus 2013, Table 1): sign changes of features when the same part is
masked in several images of one class, against random masks of the same size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfnet.tensors import to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import FILLS, Box, FillValue, ImageInput, LayerKey, array, at_most, box_of, box_proto, images_of, images_proto, layer_of, layer_proto


MAX_PARTS = 64  # CorrespondenceRequest.parts at most
MAX_TRIALS = 1000  # CorrespondenceRequest.random_trials at most


@dataclass(frozen=True)
class CorrespondenceRequest:
    images: list[ImageInput]  # K >= 2 images of one class
    parts: list[str]  # part names
    boxes: list[list[Box]]  # boxes[i][p]: part p in image i, model input pixels
    random_trials: int | None = None  # random-mask trials per part (None: 10; 0: no control)
    seed: int = 0
    layers: list[LayerKey] | None = None  # None or empty: the last convolutional and the last hidden layer
    fill: str = "mean"  # a name of FILLS
    max_batch: int = 0

    def __post_init__(self) -> None:
        """An unknown fill is refused when the request is made, before anything is sent."""
        FILLS.number(self.fill, "fill")

    def to_proto(self, model: pb.ModelRef) -> pb.CorrespondenceRequest:
        return pb.CorrespondenceRequest(
            model=model, images=images_proto(self.images), parts=self.parts,
            boxes=[pb.PartBoxes(boxes=[box_proto(b) for b in image_boxes]) for image_boxes in self.boxes],
            random_trials=self.random_trials, seed=self.seed, layers=[layer_proto(x) for x in self.layers or []],
            fill=FILLS.number(self.fill, "fill"), max_batch=self.max_batch,
        )

    @classmethod
    def from_proto(cls, message: pb.CorrespondenceRequest) -> CorrespondenceRequest:
        at_most(len(message.parts), MAX_PARTS, "parts", "parts")
        at_most(message.random_trials, MAX_TRIALS, "random_trials", "random-mask trials per part")
        images = images_of(message.images)
        boxes = [[box_of(b) for b in image.boxes] for image in message.boxes]
        trials = message.random_trials if message.HasField("random_trials") else None
        layers = [layer_of(r) for r in message.layers]
        return cls(images, list(message.parts), boxes, trials, message.seed, layers, FILLS.name(message.fill, "fill"), message.max_batch)


@dataclass(frozen=True)
class CorrespondenceScore:
    """The measure for one (part, layer), or for the random control sized like that part."""

    part: str
    random: bool  # the random-mask control
    layer: str
    delta: float  # the paper's Delta: sum over ordered pairs i != j of H(i, j); random: mean over trials
    mean: float  # mean over pairs i < j of H(i, j) / features (random: over all trials' pairs)
    std: float
    pairs: int
    features: int  # length of the feature vector
    pair_distances: np.ndarray  # (K, K) float32: H(i, j) / features; random: mean over trials
    trial_deltas: list[float]  # random: Delta of each trial
    trial_boxes: list[list[Box]]  # random: per trial, the mask of each image

    def to_proto(self) -> pb.CorrespondenceScore:
        return pb.CorrespondenceScore(
            part=self.part, random=self.random, layer=self.layer, delta=self.delta, mean=self.mean, std=self.std, pairs=self.pairs,
            features=self.features, pair_distances=to_proto(self.pair_distances), trial_deltas=self.trial_deltas,
            trial_boxes=[pb.PartBoxes(boxes=[box_proto(b) for b in trial]) for trial in self.trial_boxes],
        )

    @classmethod
    def from_proto(cls, message: pb.CorrespondenceScore) -> CorrespondenceScore:
        return cls(
            message.part, message.random, message.layer, message.delta, message.mean, message.std, message.pairs, message.features,
            array(message.pair_distances), list(message.trial_deltas), [[box_of(b) for b in trial.boxes] for trial in message.trial_boxes],
        )


@dataclass(frozen=True)
class CorrespondenceResult:
    layers: list[str]
    parts: list[str]
    fill: FillValue
    labels: list[str]  # per image
    scores: list[CorrespondenceScore]  # per part and layer, then the random control per part and layer
    random_trials: int
    seed: int
    batch: int  # copies per forward pass used

    def score(self, part: str, layer: str, random: bool = False) -> CorrespondenceScore | None:
        return next((s for s in self.scores if s.part == part and s.layer == layer and s.random == random), None)

    def to_proto(self) -> pb.CorrespondenceResult:
        return pb.CorrespondenceResult(
            layers=self.layers, parts=self.parts, fill=self.fill.to_proto(), labels=self.labels, scores=[s.to_proto() for s in self.scores],
            random_trials=self.random_trials, seed=self.seed, batch=self.batch,
        )

    @classmethod
    def from_proto(cls, message: pb.CorrespondenceResult) -> CorrespondenceResult:
        return cls(
            list(message.layers), list(message.parts), FillValue.from_proto(message.fill), list(message.labels),
            [CorrespondenceScore.from_proto(s) for s in message.scores], message.random_trials, message.seed, message.batch,
        )
