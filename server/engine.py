"""The engine: what the server can do, in numpy terms, free of gRPC."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from zfnet.errors import InvalidArgument, ResourceExhausted
from zfnet.server import deconv, features
from zfnet.server.datasets import Batch, DatasetStore, Source
from zfnet.server.images import ImageInput, to_batch
from zfnet.server.layers import Layer, resolve
from zfnet.server.models import LoadedModel, ModelStore

MAX_IMAGES = 1024  # per request


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class Engine:
    """Forward passes and analyses over the models of a :class:`ModelStore`."""

    def __init__(self, store: ModelStore, datasets: DatasetStore | None = None) -> None:
        self.store = store
        self.datasets = datasets or DatasetStore()

    def batch(self, model: LoadedModel, images: list[ImageInput]) -> np.ndarray:
        if len(images) > MAX_IMAGES:
            raise ResourceExhausted(f"{len(images)} images in one request; at most {MAX_IMAGES}")
        return to_batch(images, model.input_shape)

    def predict(self, model: LoadedModel, images: list[ImageInput]) -> tuple[np.ndarray, bool]:
        """Class probabilities (N, K); True when softmax was applied to the model's output."""
        out = model.session.run([model.output_name], {model.input_name: self.batch(model, images)})[0]
        out = out.reshape(out.shape[0], -1).astype(np.float32)
        is_probability = bool(np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
        return (out, False) if is_probability else (softmax(out), True)

    def activations(self, model: LoadedModel, images: list[ImageInput], layers: list[str | int]) -> dict[str, np.ndarray]:
        """The chosen layers' activations, by tensor name."""
        if not layers:
            raise InvalidArgument("no layers asked for")
        names = [resolve(model.layers, layer).name for layer in layers]
        values = model.session.run(names, {model.input_name: self.batch(model, images)})
        return dict(zip(names, values))

    def deconv(
        self, model: LoadedModel, images: list[ImageInput], layer: str | int,
        channels: list[int] | None = None, top_k: int = 9, mode: str = "max", method: str = "deconvnet",
    ) -> tuple[Layer, list[deconv.Reconstruction]]:
        """Reconstructions of ``layer`` for every image and selected channel."""
        row = resolve(model.layers, layer)
        return row, deconv.reconstruct(model, self.batch(model, images), row.name, channels, top_k, mode, method)

    def feature_layers(
        self, model: LoadedModel, layers: Sequence[tuple[str | int, features.Pooling | None]], default: features.Pooling = features.NONE,
    ) -> list[features.FeatureLayer]:
        """The layers of a features job with their pooling and row sizes."""
        return features.plan(model, layers, default)

    def features(
        self, model: LoadedModel, layers: Sequence[features.FeatureLayer], source: Source, dtype: str = "float32",
    ) -> Iterator[tuple[Batch, list[np.ndarray]]]:
        """Each batch of ``source`` with its feature rows per layer, in data-set order."""
        return features.run(model, layers, source, dtype)
