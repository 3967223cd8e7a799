"""Correspondence across images (Zeiler & Fergus 2013, Sec. 4.3, Table 1).

K images of one class each have the same object part masked. For layer l, epsilon_i^l =
sign(x_i^l - x~_i^l), with x_i^l the layer's feature vector of image i and x~_i^l that of the masked
image; the paper's measure is Delta_l = sum over pairs i != j of the Hamming distance between
epsilon_i^l and epsilon_j^l. A part the network finds in the same place in every image changes the
features the same way, so its Delta is lower than that of random masks of the same size (the
control). Differences within float32 rounding of the layer (|x - x~| <= 1e-5 of the layer's largest
activation) count as no change, so they do not add noise signs.
"""

from __future__ import annotations

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.server import perturbation
from zfnet.server.models import LoadedModel
from zfnet.server.perturbation import Steps
from zfnet.wire.common import Box
from zfnet.wire.correspondence import MAX_TRIALS, CorrespondenceResult, CorrespondenceScore

RELATIVE_TOLERANCE = 1e-5
DEFAULT_TRIALS = 10


def sign_changes(original: np.ndarray, masked: np.ndarray, scale: float) -> np.ndarray:
    """epsilon = sign(original - masked), (n, D) int8; changes within ``RELATIVE_TOLERANCE * scale`` are 0."""
    diff = original.astype(np.float64) - masked.astype(np.float64)
    return np.where(np.abs(diff) > RELATIVE_TOLERANCE * scale, np.sign(diff), 0).astype(np.int8)


def hamming(signs: np.ndarray) -> np.ndarray:
    """(K, K) counts of positions where epsilon_i and epsilon_j differ."""
    return np.stack([(signs[i] != signs).sum(axis=1) for i in range(len(signs))]).astype(np.int64)


def check_boxes(parts: list[str], boxes: list[list[Box]], height: int, width: int, labels: list[str] | None = None) -> None:
    """Every image has one non-empty box per part, inside the ``height`` x ``width`` input."""
    if not parts:
        raise InvalidArgument("no parts given; name at least one part and give its box in every image")
    for i, image_boxes in enumerate(boxes):
        what = f"image {i}" + (f" ({labels[i]})" if labels and labels[i] else "")
        if len(image_boxes) != len(parts):
            raise InvalidArgument(f"{what} has {len(image_boxes)} part boxes; give one per part ({', '.join(parts)})")
        for part, (top, left, bottom, right) in zip(parts, image_boxes):
            if not (0 <= top < bottom <= height and 0 <= left < right <= width):
                raise InvalidArgument(
                    f"{what}, part {part!r}: box (top {top}, left {left}, bottom {bottom}, right {right}) is empty or "
                    f"outside the {height}x{width} input (bottom and right are exclusive)"
                )


def masked(image: np.ndarray, box: Box, fill: np.ndarray) -> np.ndarray:
    """A copy of ``image`` (C, H, W) with ``box`` set to ``fill`` (C,)."""
    top, left, bottom, right = box
    out = image.copy()
    out[:, top:bottom, left:right] = fill[:, None, None]
    return out


def random_boxes(boxes: np.ndarray, trials: int, height: int, width: int, seed: int) -> np.ndarray:
    """(parts, trials, K, 4): for each part, trial and image, a box of that image's part size at a
    uniformly random place inside the image."""
    rng = np.random.default_rng(seed)
    size = boxes[:, :, 2:] - boxes[:, :, :2]  # (K, parts, 2) height, width
    out = np.zeros((boxes.shape[1], trials, boxes.shape[0], 4), np.int64)
    for p in range(boxes.shape[1]):
        for t in range(trials):
            for i in range(boxes.shape[0]):
                h, w = size[i, p]
                top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                out[p, t, i] = (top, left, top + h, left + w)
    return out


def run(
    model: LoadedModel, batch: np.ndarray, parts: list[str], boxes: list[list[Box]], random_trials: int | None = None,
    seed: int = 0, layers: list[str | int] | None = None, fill: str = "mean", max_batch: int = 0, labels: list[str] | None = None,
) -> Steps[CorrespondenceResult]:
    """The measure per part and layer for the K images of ``batch`` (K, C, H, W), and the random
    control; ``boxes[i][p]`` is part p in image i."""
    count, _, height, width = batch.shape
    if count < 2:
        raise InvalidArgument(f"correspondence compares images: give at least 2 images of one class, got {count}")
    if len(boxes) != count:
        raise InvalidArgument(f"{len(boxes)} sets of part boxes for {count} images; give one per image")
    check_boxes(parts, boxes, height, width, labels)
    trials = DEFAULT_TRIALS if random_trials is None else random_trials
    if not 0 <= trials <= MAX_TRIALS:
        raise InvalidArgument(f"random_trials must be between 0 and {MAX_TRIALS}, got {trials}")
    rows = perturbation.layers_or(model, list(layers or []), [perturbation.last_conv, perturbation.last_hidden])
    filler = perturbation.fill_value(model, fill)
    fill_values = np.asarray(filler.values, np.float32)
    copies = perturbation.copies_per_batch(model, max_batch)
    box_array = np.asarray(boxes, np.int64).reshape(count, len(parts), 4)
    control = random_boxes(box_array, trials, height, width, seed)
    # mask sets: one per part, then one per (part, trial); each masks every image once
    sets = [box_array[:, p] for p in range(len(parts))] + [control[p, t] for p in range(len(parts)) for t in range(trials)]
    names = [r.name for r in rows]
    base = perturbation.forward(model, batch, names, copies, exact=False)
    flat = {name: base[name].reshape(count, -1) for name in names}
    scale = {name: float(np.abs(flat[name]).max()) for name in names}
    tracker = perturbation.Tracker(len(sets) * count)
    signs: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for i, image in enumerate(batch):  # copies of image i: one per mask set

        def reduce(outputs: dict[str, np.ndarray], i: int = i) -> dict[str, np.ndarray]:
            return {name: sign_changes(flat[name][i], outputs[name].reshape(len(outputs[name]), -1), scale[name]) for name in names}

        kept = yield from perturbation.run(
            model, image, {name: value[i : i + 1] for name, value in base.items()}, len(sets),
            lambda start, stop, image=image, i=i: np.stack([masked(image, tuple(sets[s][i]), fill_values) for s in range(start, stop)]),
            reduce, tracker, f"correspondence: image {i + 1} of {count}", copies, exact=False,
        )
        for name in names:
            signs[name].append(kept[name])
    scores = []
    for row in rows:
        per_set = np.stack(signs[row.name], axis=1)  # (sets, K, D)
        distances = [hamming(per_set[s]) for s in range(len(sets))]
        for p, part in enumerate(parts):
            scores.append(_score(part, None, row.name, [distances[p]], per_set.shape[2]))
        for p, part in enumerate(parts):
            if trials:
                first = len(parts) + p * trials
                scores.append(_score(part, control[p], row.name, distances[first : first + trials], per_set.shape[2]))
    return CorrespondenceResult(names, list(parts), filler, list(labels or [""] * count), scores, trials, seed, copies)


def _score(part: str, trial_boxes: np.ndarray | None, layer: str, distances: list[np.ndarray], features: int) -> CorrespondenceScore:
    """Delta, and the mean and standard deviation of the normalised distance over pairs i < j."""
    upper = np.triu_indices(len(distances[0]), k=1)
    pairs = np.concatenate([d[upper] for d in distances]) / features
    deltas = [float(d.sum()) for d in distances]
    random = trial_boxes is not None
    boxes = [[tuple(box) for box in trial] for trial in trial_boxes.tolist()] if trial_boxes is not None else []
    return CorrespondenceScore(
        part, random, layer, float(np.mean(deltas)), float(pairs.mean()), float(pairs.std()), len(pairs), features,
        (np.mean(distances, axis=0) / features).astype(np.float32), deltas if random else [], boxes,
    )
