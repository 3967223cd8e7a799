"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018).

The target's gradient at a layer comes from the projection graph stopped at that layer; each
channel's weight is a rule of the gradient and the activation (:data:`WEIGHTS`); the weighted sum
of the layer's maps is rectified and upsampled to the input bilinearly with half-pixel centres
(``torch.nn.functional.interpolate(mode="bilinear")``, what Captum's ``LayerAttribution.interpolate``
calls). A transformer's tokens are read as maps when the last h x w of them lie on the input's grid.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.server import gradients
from zfnet.server.layers import Layer
from zfnet.server.models import LoadedModel
from zfnet.wire.gradcam import GradCamMap, GradCamResult

EPSILON = 1e-6  # Grad-CAM++'s alpha denominator, as pytorch-grad-cam adds it
MAX_EXTRA_TOKENS = 8  # class and distillation tokens before a transformer's grid


def grad_cam_weights(grads: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Grad-CAM: the gradient's mean over each map (global average pooling), (N, C)."""
    return grads.mean(axis=(2, 3))


def grad_cam_plus_plus_weights(grads: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (eq. 19, with the exponential's higher derivatives written through the first):
    alpha = g^2 / (2 g^2 + sum(A) g^3); weight = sum over the map of alpha relu(g), (N, C)."""
    squared = grads.astype(np.float64) ** 2
    alpha = squared / (2 * squared + maps.sum(axis=(2, 3), keepdims=True) * squared * grads + EPSILON)
    alpha = np.where(grads != 0, alpha, 0.0)
    return (alpha * np.maximum(grads, 0)).sum(axis=(2, 3)).astype(np.float32)


WEIGHTS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "grad_cam": grad_cam_weights,
    "grad_cam_plus_plus": grad_cam_plus_plus_weights,
}


def as_maps(values: np.ndarray, layer: str, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """A layer's values as (N, C, h, w) maps and the layout read: (N, C, h, w) as they are
    ("channels"); (N, T, D) tokens whose last h x w lie on a grid of the input's aspect ("tokens",
    leading class tokens left out)."""
    if values.ndim == 4:
        return values, "channels"
    if values.ndim == 3:
        tokens, height, width = values.shape[1], *size
        for extra in range(min(tokens, MAX_EXTRA_TOKENS + 1)):
            rows = int(round(np.sqrt((tokens - extra) * height / width)))
            if rows > 0 and (tokens - extra) % rows == 0 and rows * width == (tokens - extra) // rows * height:
                grid = values[:, extra:].reshape(len(values), rows, (tokens - extra) // rows, -1)
                return grid.transpose(0, 3, 1, 2), "tokens"
    raise InvalidArgument(
        f"layer {layer!r} has shape {list(values.shape[1:])} per image; Grad-CAM weighs maps (C, h, w), or tokens (T, D) "
        "whose last h x w lie on the input's grid: choose a convolutional layer", field="layer",
    )


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, H, W) bilinear with half-pixel centres, no corner alignment (torch's
    ``interpolate(mode="bilinear", align_corners=False)``)."""
    out = maps.astype(np.float32)
    for axis, target in ((1, size[0]), (2, size[1])):
        have = out.shape[axis]
        source = np.maximum((np.arange(target, dtype=np.float32) + 0.5) * np.float32(have / target) - 0.5, 0)
        low = np.minimum(source.astype(np.int64), have - 1)
        high = np.minimum(low + 1, have - 1)
        weight = (source - low).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = target
        out = np.take(out, low, axis=axis) * (1 - weight).reshape(shape) + np.take(out, high, axis=axis) * weight.reshape(shape)
    return out


def run(model: LoadedModel, batch: np.ndarray, layer: Layer, target: Layer, units: list[str], variant: str, labels: list[str]) -> GradCamResult:
    """Grad-CAM of ``layer`` for each image of ``batch`` (N, C, H, W), explaining ``units`` of ``target``."""
    if variant not in WEIGHTS:
        raise InvalidArgument(f"unknown Grad-CAM variant {variant!r}; choose one of {', '.join(WEIGHTS)}", field="variant")
    if target.index <= layer.index:
        raise InvalidArgument(f"the target layer {target.name!r} comes before layer {layer.name!r}; the target must follow the layer Grad-CAM weighs", field="target.layer")
    gradient = gradients.Gradient(model, target.name, "backprop", stop=layer.name)
    forward = gradient.forward(batch)
    size = (batch.shape[2], batch.shape[3])
    maps, layout = as_maps(forward[layer.name], layer.name, size)
    chosen = gradients.choose_units(model, target, units, forward[target.name])
    grads, _ = as_maps(gradient(forward, gradients.indicator(forward[target.name].shape, np.array([u.index for u in chosen]))), layer.name, size)
    weights = WEIGHTS[variant](grads, maps).astype(np.float32)
    cams = np.maximum(np.einsum("nc,nchw->nhw", weights, maps), 0).astype(np.float32)
    heatmaps = upsample(cams, size)
    images = [GradCamMap(label, unit, weights[i], cams[i], heatmaps[i]) for i, (label, unit) in enumerate(zip(labels, chosen))]
    return GradCamResult(layer.name, target.name, variant, layout, list(model.classes), images)
