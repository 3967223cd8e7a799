"""Invariance (Zeiler & Fergus 2013, Sec. 4, Fig. 5): how far a layer's features move, and how the
true-class probability changes, when the image is translated vertically, scaled or rotated.

Transformations are small pure rules in :data:`TRANSFORMS`: each maps output pixel coordinates to
the source coordinates it samples (bilinear, about the image centre); the border is reflected or
filled with a constant. The result carries, per sweep and image, thumbnails of the transformed copies
at a few of the values (the row of pictures above the paper's curves).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from zfnet.errors import InvalidArgument
from zfnet.server import perturbation
from zfnet.server.models import LoadedModel
from zfnet.server.perturbation import Steps
from zfnet.wire.invariance import InvarianceResult, Sweep

BORDERS = {"reflect": "reflect", "constant": "grid-constant"}  # ours -> scipy.ndimage mode
THUMBNAILS = 5  # transformed copies shown per sweep and image, at most
THUMBNAIL_SIDE = 64  # pixels: a thumbnail's longer side, at most
Coordinates = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Transform:
    """One transformation: its unit, its identity value, default values for an (H, W) image, and
    where output pixel (row, col) samples from for a value, about ``centre``."""

    name: str
    unit: str
    identity: float
    defaults: Callable[[int, int], np.ndarray]
    source: Callable[[np.ndarray, np.ndarray, float, tuple[float, float]], Coordinates]
    normalise: Callable[[float], float] = float
    check: Callable[[float], bool] = np.isfinite


def _shift(rows: np.ndarray, cols: np.ndarray, dy: float, centre: tuple[float, float]) -> Coordinates:
    return rows - dy, cols


def _zoom(rows: np.ndarray, cols: np.ndarray, factor: float, centre: tuple[float, float]) -> Coordinates:
    cy, cx = centre
    return cy + (rows - cy) / factor, cx + (cols - cx) / factor


def _turn(rows: np.ndarray, cols: np.ndarray, degrees: float, centre: tuple[float, float]) -> Coordinates:
    """Counter-clockwise on screen: the output point o samples R(-theta) o, with y pointing up."""
    cy, cx = centre
    theta = np.deg2rad(degrees)
    u, v = cols - cx, cy - rows
    return cy - (-np.sin(theta) * u + np.cos(theta) * v), cx + (np.cos(theta) * u + np.sin(theta) * v)


TRANSFORMS: dict[str, Transform] = {
    t.name: t for t in (
        Transform("translate", "vertical shift (pixels, + down)", 0.0,
                  lambda h, w: np.arange(-(h // 4), h // 4 + 1, max(1, h // 32), dtype=np.float64), _shift),
        Transform("scale", "scale factor", 1.0, lambda h, w: np.round(np.arange(0.6, 1.8 + 1e-9, 0.05), 4), _zoom,
                  check=lambda v: bool(np.isfinite(v) and v > 0)),
        Transform("rotate", "rotation (degrees, counter-clockwise)", 0.0, lambda h, w: np.arange(0.0, 361.0, 10.0), _turn,
                  normalise=lambda v: float(v) % 360.0),
    )
}


def transform(image: np.ndarray, name: str, value: float, border: str = "reflect", fill: np.ndarray | None = None) -> np.ndarray:
    """``image`` (C, H, W) transformed by ``name`` at ``value``; pixels from outside the frame are
    reflected at the edge or set to ``fill`` (C,). The identity returns an exact copy."""
    rule = _rule(name)
    if border not in BORDERS:
        raise InvalidArgument(f"unknown border {border!r}; choose one of {', '.join(BORDERS)}")
    if not rule.check(value):
        raise InvalidArgument(f"{name} value {value} is not allowed ({rule.unit})")
    value = rule.normalise(value)
    if value == rule.identity:
        return image.copy()
    channels, height, width = image.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    source = np.stack(rule.source(rows, cols, value, ((height - 1) / 2, (width - 1) / 2)))
    fill = np.zeros(channels, np.float32) if fill is None else fill
    from scipy import ndimage  # noqa: PLC0415  (a quarter of a second to import: not at server start)

    return np.stack([
        ndimage.map_coordinates(image[c], source, order=1, mode=BORDERS[border], cval=float(fill[c])) for c in range(channels)
    ]).astype(np.float32)


def _rule(name: str) -> Transform:
    if name not in TRANSFORMS:
        raise InvalidArgument(f"unknown transform {name!r}; choose one of {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name]


def plan(height: int, width: int, sweeps: list[tuple[str, list[float]]] | None = None) -> list[tuple[Transform, np.ndarray]]:
    """Each sweep's transformation and values (its defaults for an ``height`` x ``width`` input when
    none are given; no sweeps: all three with their defaults)."""
    return [(_rule(name), np.asarray(values, np.float64) if len(values) else _rule(name).defaults(height, width))
            for name, values in (sweeps or [(name, []) for name in TRANSFORMS])]


def shown_values(count: int) -> np.ndarray:
    """Indices of the ``count`` values of a sweep whose copies have thumbnails: the first, the last
    and evenly between, at most :data:`THUMBNAILS`."""
    return np.unique(np.round(np.linspace(0, count - 1, min(count, THUMBNAILS)))).astype(np.int32)


def thumbnail_shape(height: int, width: int) -> tuple[int, int]:
    """(h, w) of the thumbnail of a ``height`` x ``width`` input: as it is, or shrunk to a longer side of :data:`THUMBNAIL_SIDE`."""
    scale = min(1.0, THUMBNAIL_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def thumbnail_bytes(images: int, sweeps: list[tuple[Transform, np.ndarray]], height: int, width: int) -> int:
    """Bytes of the thumbnails a result carries for ``images`` images under the planned ``sweeps``."""
    h, w = thumbnail_shape(height, width)
    return images * sum(len(shown_values(len(values))) for _, values in sweeps) * h * w * 3


def thumbnail(copy: np.ndarray) -> np.ndarray:
    """A transformed copy as the model took it, (C, H, W) float in 0..255 RGB, as an (h, w, 3) uint8
    picture (:func:`thumbnail_shape`; shrunk bilinearly where larger)."""
    rgb = np.clip(np.rint(copy.transpose(1, 2, 0)), 0, 255).astype(np.uint8)
    h, w = thumbnail_shape(*rgb.shape[:2])
    return rgb if (h, w) == rgb.shape[:2] else np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))


def run(
    model: LoadedModel, batch: np.ndarray, sweeps: list[tuple[str, list[float]]] | None = None,
    layers: list[str | int] | None = None, border: str = "reflect", fill: str = "mean",
    true_classes: list[str] | None = None, max_batch: int = 0, labels: list[str] | None = None,
) -> Steps[InvarianceResult]:
    """Distances and true-class probabilities of every image of ``batch`` (N, C, H, W) under each
    sweep, ``(transform, values)`` (empty values: the defaults; no sweeps: all three); ``labels`` name the images."""
    height, width = batch.shape[2:]
    planned = plan(height, width, sweeps)
    if border not in BORDERS:
        raise InvalidArgument(f"unknown border {border!r}; choose one of {', '.join(BORDERS)}")
    for rule, values in planned:
        bad = [float(v) for v in values if not rule.check(v)]
        if bad:
            raise InvalidArgument(f"{rule.name} values {bad} are not allowed ({rule.unit})")
    rows = perturbation.layers_or(model, list(layers or []), [perturbation.first_conv, perturbation.last_hidden])
    filler = perturbation.fill_value(model, fill)
    fill_values = np.asarray(filler.values, np.float32)
    copies = perturbation.copies_per_batch(model, max_batch)
    tasks = [(rule.name, float(v)) for rule, values in planned for v in values]
    tracker = perturbation.Tracker(len(batch) * len(tasks))
    names = list(dict.fromkeys([*(r.name for r in rows), model.output_name]))
    base = perturbation.forward(model, batch, names, copies, exact=False)
    base_probs, applied = perturbation.base_probabilities(model, base)
    truth = perturbation.true_classes(model, true_classes or [], base_probs)
    distance = np.zeros((len(batch), len(rows), len(tasks)), np.float32)
    probability = np.zeros((len(batch), len(tasks)), np.float32)
    for i, image in enumerate(batch):

        def reduce(outputs: dict[str, np.ndarray], i: int = i) -> dict[str, np.ndarray]:
            moved = [np.linalg.norm((outputs[r.name] - base[r.name][i]).reshape(len(outputs[r.name]), -1).astype(np.float64), axis=1) for r in rows]
            return {"distance": np.stack(moved, axis=1), "probability": perturbation.output_probabilities(model, outputs, applied)[:, truth[i].index]}

        kept = yield from perturbation.run(
            model, image, {name: value[i : i + 1] for name, value in base.items()}, len(tasks),
            lambda start, stop, image=image: np.stack([transform(image, *tasks[k], border, fill_values) for k in range(start, stop)]),
            reduce, tracker, f"invariance: image {i + 1} of {len(batch)}", copies, exact=False,
        )
        distance[i], probability[i] = kept["distance"].T, kept["probability"]
    out, start = [], 0
    for rule, values in planned:
        part = slice(start, start + len(values))
        shown = shown_values(len(values))
        thumbnails = np.stack([[thumbnail(transform(image, rule.name, float(values[t]), border, fill_values)) for t in shown] for image in batch])
        out.append(Sweep(rule.name, rule.unit, values.astype(np.float32), distance[:, :, part], probability[:, part], thumbnails, shown))
        start += len(values)
    norms = np.array([[np.linalg.norm(base[r.name][i].astype(np.float64)) for r in rows] for i in range(len(batch))], np.float32)
    return InvarianceResult(
        [r.name for r in rows], border, filler, list(labels or [""] * len(batch)), truth, norms, out, list(model.classes), copies,
    )
