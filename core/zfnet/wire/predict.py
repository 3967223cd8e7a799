"""Predict: class probabilities for a batch of images, and the top classes of each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.tensors import to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import ImageInput, array, images_of, images_proto

TOP_K = 5  # PredictRequest.top_k when unset


@dataclass(frozen=True)
class PredictRequest:
    images: list[ImageInput]
    top_k: int = TOP_K  # classes per image in ``predictions``; more than the classes: all

    def to_proto(self, model: pb.ModelRef) -> pb.PredictRequest:
        return pb.PredictRequest(model=model, images=images_proto(self.images), top_k=self.top_k)

    @classmethod
    def from_proto(cls, message: pb.PredictRequest) -> PredictRequest:
        if message.top_k < 0:
            raise InvalidArgument(
                f"top_k must not be negative (0 or unset means {TOP_K}), got {message.top_k}", field="top_k", reason="VALUE_OUT_OF_RANGE",
            )
        return cls(images_of(message.images), message.top_k or TOP_K)


@dataclass(frozen=True)
class ClassScore:
    index: int  # into the model's output (and its classes)
    label: str  # the class name, or the index as text when the model has no class names
    probability: float


@dataclass(frozen=True)
class Prediction:
    top: list[ClassScore]  # most probable first (ties: lower index first)


@dataclass(frozen=True)
class PredictResult:
    probabilities: np.ndarray  # (N, classes) float32, rows sum to 1
    predictions: list[Prediction]  # one per image
    softmax_applied: bool  # the model's output did not sum to 1, so softmax was applied

    @classmethod
    def of(cls, probabilities: np.ndarray, applied: bool, classes: list[str], top_k: int) -> PredictResult:
        """The top ``top_k`` classes of each row of ``probabilities``, named by ``classes``."""
        k = min(top_k, probabilities.shape[1])
        predictions = []
        for row in probabilities:
            top = np.argsort(-row, kind="stable")[:k]
            predictions.append(Prediction([ClassScore(int(i), classes[i] if i < len(classes) else str(i), float(row[i])) for i in top]))
        return cls(probabilities, predictions, applied)

    def to_proto(self) -> pb.PredictResponse:
        return pb.PredictResponse(
            probabilities=to_proto(self.probabilities), softmax_applied=self.softmax_applied,
            predictions=[pb.Prediction(top=[pb.ClassScore(index=s.index, label=s.label, probability=s.probability) for s in p.top]) for p in self.predictions],
        )

    @classmethod
    def from_proto(cls, message: pb.PredictResponse) -> PredictResult:
        return cls(
            array(message.probabilities),
            [Prediction([ClassScore(s.index, s.label, s.probability) for s in p.top]) for p in message.predictions], message.softmax_applied,
        )
