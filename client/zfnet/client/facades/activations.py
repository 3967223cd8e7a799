"""GetActivations: the activations of chosen layers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zfnet.client.models import Models
from zfnet.wire.activations import Activations, ActivationsRequest, activations_of
from zfnet.wire.common import ImageInput, ImageLike, LayerKey


class ActivationsFacade(Models):
    def activations(self, model: str | Path, images: Sequence[ImageLike], layers: Sequence[LayerKey]) -> Activations:
        """The chosen layers' activations (N, ...) by tensor name."""
        request = ActivationsRequest([ImageInput.of(i) for i in images], list(layers))
        return activations_of(self._call(self.stub.GetActivations, request.to_proto(self.model_ref(model))))
