"""Occlusion sensitivity (Zeiler & Fergus 2013, Sec. 4.2, Fig. 7): a square slid over the image.

For every position of the occluder, one batched pass gives the paper's maps: (b) the total
activation of the layer's feature map that is strongest on the unoccluded image, (d) the
probability of the true class, (e) the most probable class; (c) is the deconvnet projection of
that feature map's strongest activation on the unoccluded image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.server import deconv, perturbation
from zfnet.wire.common import at_most
from zfnet.server.layers import resolve
from zfnet.server.models import LoadedModel
from zfnet.server.perturbation import Steps
from zfnet.wire.deconv import Reconstruction
from zfnet.wire.occlusion import OcclusionMaps, OcclusionResult


MAX_POSITIONS = 65536  # occluder positions per image at most (a 256 x 256 grid)


@dataclass(frozen=True)
class Grid:
    """Occluder positions: top-left corners where the square fits in the image."""

    size: int
    stride: int
    tops: np.ndarray  # (P,) int
    lefts: np.ndarray  # (Q,) int

    @property
    def count(self) -> int:
        return len(self.tops) * len(self.lefts)


def grid(height: int, width: int, size: int | None, stride: int | None) -> Grid:
    """The positions of a ``size`` square every ``stride`` pixels; defaults: a quarter of the shorter
    side, and a quarter of the size. At most :data:`MAX_POSITIONS` of them."""
    size = max(1, min(height, width) // 4) if size is None else size
    stride = max(1, size // 4) if stride is None else stride
    if size < 1:
        raise InvalidArgument(f"occluder size must be at least 1 pixel, got {size}")
    if size > min(height, width):
        raise InvalidArgument(f"occluder size {size} is larger than the {height}x{width} input; at most {min(height, width)}")
    if stride < 1:
        raise InvalidArgument(f"occluder stride must be at least 1 pixel, got {stride}")
    where = Grid(size, stride, np.arange(0, height - size + 1, stride), np.arange(0, width - size + 1, stride))
    at_most(where.count, MAX_POSITIONS, "stride", f"occluder positions per image ({len(where.tops)} x {len(where.lefts)})")
    return where


def occluded(image: np.ndarray, where: Grid, fill: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Copies start..stop-1 of ``image`` (C, H, W), position k = row-major over (tops, lefts)."""
    copies = np.repeat(image[None], stop - start, axis=0)
    for n, k in enumerate(range(start, stop)):
        top, left = where.tops[k // len(where.lefts)], where.lefts[k % len(where.lefts)]
        copies[n, :, top : top + where.size, left : left + where.size] = fill[:, None, None]
    return copies


def run(
    model: LoadedModel, batch: np.ndarray, layer: str | int | None = None, size: int | None = None, stride: int | None = None,
    fill: str = "mean", true_classes: list[str] | None = None, max_batch: int = 0, all_classes: bool = False, labels: list[str] | None = None,
) -> Steps[OcclusionResult]:
    """The maps of every image of ``batch`` (N, C, H, W), labelled by ``labels``; yields progress."""
    row = perturbation.last_conv(model) if layer is None else resolve(model.layers, layer)
    where = grid(batch.shape[2], batch.shape[3], size, stride)
    filler = perturbation.fill_value(model, fill)
    fill_values = np.asarray(filler.values, np.float32)
    copies = perturbation.copies_per_batch(model, max_batch)
    tracker = perturbation.Tracker(len(batch) * where.count)
    names = list(dict.fromkeys([row.name, model.output_name]))
    base = perturbation.forward(model, batch, names, copies, exact=False)
    base_probs, applied = perturbation.base_probabilities(model, base)
    truth = perturbation.true_classes(model, true_classes or [], base_probs)
    projections, error = _projections(model, batch, row.name)
    first = np.moveaxis(base[row.name], row.channel_axis, 1)  # the layer's channels on axis 1
    strength = first.reshape(len(batch), first.shape[1], -1).max(axis=2)
    channels = [p.channel for p in projections] if projections else list(np.argmax(strength, axis=1))
    shape = (len(where.tops), len(where.lefts))
    maps = []
    for i, image in enumerate(batch):
        channel = int(channels[i])

        def reduce(outputs: dict[str, np.ndarray], channel: int = channel) -> dict[str, np.ndarray]:
            activation = np.take(outputs[row.name], channel, axis=row.channel_axis)
            return {"total": activation.reshape(len(activation), -1).sum(axis=1), "probs": perturbation.output_probabilities(model, outputs, applied)}

        kept = yield from perturbation.run(
            model, image, {name: value[i : i + 1] for name, value in base.items()}, where.count,
            lambda start, stop, image=image: occluded(image, where, fill_values, start, stop),
            reduce, tracker, f"occlusion: image {i + 1} of {len(batch)}", copies, exact=False,
        )
        probs = kept["probs"].reshape(*shape, -1)
        label = labels[i] if labels else ""
        maps.append(OcclusionMaps(
            label=label, true_class=truth[i], channel=channel,
            channel_total=float(first[i, channel].sum()),
            true_class_probability=float(base_probs[i, truth[i].index]), top_class=int(np.argmax(base_probs[i])),
            layer_total=kept["total"].reshape(shape).astype(np.float32),
            projection=replace(projections[i], label=label) if projections else None, projection_error=error,
            true_class_map=probs[..., truth[i].index].astype(np.float32), top_class_map=np.argmax(probs, axis=2).astype(np.int32),
            probabilities=probs.astype(np.float32) if all_classes else None,
        ))
    return OcclusionResult(row.name, where.size, where.stride, filler, where.tops, where.lefts, list(model.classes), maps, copies)


def _projections(model: LoadedModel, batch: np.ndarray, layer: str) -> tuple[list[Reconstruction], str]:
    """Map (c): each image's strongest activation of ``layer`` projected by the deconvnet; or the
    reason the model has no projection for this layer (maps b, d, e need only the forward pass)."""
    try:
        return deconv.reconstruct(model, batch, layer, None, 1, "max", "deconvnet"), ""
    except InvalidArgument as err:
        return [], str(err)
