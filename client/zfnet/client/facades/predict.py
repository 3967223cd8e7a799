"""Predict: class probabilities for images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zfnet.client.models import Models
from zfnet.wire.common import ImageInput, ImageLike
from zfnet.wire.predict import TOP_K, PredictRequest, PredictResult


class PredictFacade(Models):
    def predict(self, model: str | Path, images: Sequence[ImageLike], top_k: int = TOP_K) -> PredictResult:
        """Probabilities (N, classes) and the ``top_k`` classes of each image."""
        request = PredictRequest([ImageInput.of(i) for i in images], top_k)
        return PredictResult.from_proto(self._call(self.stub.Predict, request.to_proto(self.model_ref(model))))

    def probabilities(self, model: str | Path, images: Sequence[ImageLike]) -> np.ndarray:
        """(N, classes) probabilities."""
        return self.predict(model, images, top_k=1).probabilities
