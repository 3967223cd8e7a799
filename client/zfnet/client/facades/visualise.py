"""Feature visualisation by optimisation: streams its progress (optimisation steps), then the images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zfnet.client.facades.perturbation import PerturbationFacade, ProgressCallback
from zfnet.wire.common import LayerKey
from zfnet.wire.visualise import VisualiseRequest, VisualiseResult


class VisualiseFacade(PerturbationFacade):
    def visualise(
        self, model: str | Path, units: Sequence[str | int], layer: LayerKey | None = None, progress: ProgressCallback | None = None, **options,
    ) -> VisualiseResult:
        """Images optimised to excite each of ``units`` (channels of ``layer``; classes when ``layer``
        is None); ``options`` are :class:`~zfnet.wire.visualise.VisualiseRequest`'s (objective, steps,
        learning_rate, seed, jitter, scale, rotate, diversity, images_per_unit, pixels)."""
        request = VisualiseRequest([str(u) for u in units], layer, **options)
        return VisualiseResult.from_proto(self._analysis(self.stub.VisualiseFeatures, request.to_proto(self.model_ref(model)), progress))
