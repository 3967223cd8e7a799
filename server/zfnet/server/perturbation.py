"""The perturbation runner: many perturbed copies of one image, forwarded in batches.

Occlusion (Zeiler & Fergus 2013, Fig. 7), invariance (Fig. 5) and correspondence (Table 1) all
change the input and watch the network. Copies are made in the model's input space (RGB 0..255,
before the model's own preprocessing), a batch at a time (never the whole grid in memory), each
batch bounded by a memory estimate, and reduced to what the analysis keeps as soon as it comes
back. The unperturbed forward is computed once and reused: a copy equal to the unperturbed image
takes its outputs exactly.

Analyses are generators: they yield :class:`~zfnet.wire.common.Progress` after every batch and
return their result (a type of :mod:`zfnet.wire`), so the gRPC layer streams progress and the
in-process caller runs them with :func:`complete`.

Memory: a batch of copies is fitted to a share of the server's budget (:func:`copies_per_batch`,
:func:`zfnet.server.admission.room`); the engine admits the whole request before it starts: its
images, the unperturbed outputs, the results, the reply, and one batch at a time
(:func:`batch_cost`). A cancelled call stops before its next batch.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Generator
from typing import TypeVar

import numpy as np
from onnx import numpy_helper

from zfnet.converters.graph import MEAN_INITIALIZER
from zfnet.errors import InvalidArgument, ResourceExhausted
from zfnet.server import runtime
from zfnet.server.admission import FORWARD_FACTOR, Cost, next_batch
from zfnet.server.outputs import probabilities, softmax
from zfnet.server.layers import Layer, resolve
from zfnet.server.models import LoadedModel
from zfnet.wire.common import FILLS, FillValue, Progress, TrueClass

T = TypeVar("T")
MEMORY_BUDGET = 512 << 20  # bytes of activations one forward pass of copies may take, outside a server's budget
MAX_COPIES = 1024  # per forward pass, whatever the estimate
MAX_COPIES_PER_REQUEST = 1 << 20
GREY = 127.5


Steps = Generator[Progress, None, T]


class Tracker:
    """Counts the copies of a whole request, for progress messages; refuses requests too large to finish."""

    def __init__(self, total: int) -> None:
        check_copies(total)
        self.total = total
        self.done = 0

    def advance(self, count: int, stage: str) -> Progress:
        self.done += count
        return Progress(stage, self.done, self.total)


def check_copies(total: int, advice: str = "fewer images, a larger stride or fewer values") -> None:
    """Refuse a request of more than :data:`MAX_COPIES_PER_REQUEST` copies (RESOURCE_EXHAUSTED) before any work."""
    if total > MAX_COPIES_PER_REQUEST:
        raise ResourceExhausted(
            f"{total} perturbed copies asked for; at most {MAX_COPIES_PER_REQUEST} per request ({advice})",
            reason="TOO_MANY_VALUES", metadata={"limit": MAX_COPIES_PER_REQUEST, "requested": total},
        )


def complete(steps: Steps[T], progress: Callable[[Progress], None] | None = None) -> T:
    """Run an analysis to its end; its result."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(step)


# ---- memory --------------------------------------------------------------------------------


def bytes_per_copy(model: LoadedModel) -> int:
    """Upper estimate of one copy's forward pass: its input and every activation of the layer table,
    float32 (a dimension unknown before running counts as the input's size)."""
    size = math.prod(model.input_shape[1:])
    total = size
    for layer in model.layers:
        dims = layer.shape[1:]
        known = [d for d in dims if isinstance(d, int) and d > 0]
        total += math.prod(known) if len(known) == len(dims) else size
    return 4 * total


def copies_per_batch(model: LoadedModel, max_batch: int = 0, budget: int | None = None, cost: Cost | None = None) -> int:
    """Copies per batch: what ``budget`` bytes hold by ``cost`` (default :func:`batch_cost`; a gradient
    analysis: :func:`gradient_cost`), ``budget`` by default the share of the server's budget a batch
    is fitted to (:data:`MEMORY_BUDGET` outside a server); at most ``max_batch`` when given (> 0: a
    larger one is lowered to fit), at most :data:`MAX_COPIES`."""
    if max_batch < 0:
        raise InvalidArgument(f"max_batch must be 0 (as memory allows) or positive, got {max_batch}")
    fit = (cost or batch_cost(model, [])).fit(MAX_COPIES, model.room(MEMORY_BUDGET) if budget is None else budget)
    return min(fit, max_batch) if max_batch else fit


def batch_cost(model: LoadedModel, names: list[str]) -> Cost:
    """What a forward pass of ``n`` copies allocates: the copies, their activations (every layer,
    :func:`bytes_per_copy`, at the forward pass's measured factor) and the ``names`` tensors
    fetched, kept while they are reduced."""
    input_bytes = 4 * math.prod(model.input_shape[1:])
    fetched = sum(model.footprint.tensors.get(name, 0) for name in names)
    per_copy = {"copies": 2 * input_bytes, "forward pass": FORWARD_FACTOR * bytes_per_copy(model)}
    return Cost("a forward pass of {n} perturbed copies", {**per_copy, "outputs": 2 * fetched})


def gradient_cost(model: LoadedModel) -> Cost:
    """What a batch of ``n`` copies of a gradient analysis (integrated gradients, SmoothGrad, input x
    gradient, feature visualisation) allocates: the copies and their gradients, and a forward pass
    and a projection back to the input of each, at the forward pass's measured factor."""
    footprint = model.footprint
    per_copy = {"copies and gradients": 3 * footprint.input, "forward pass and projection": 2 * FORWARD_FACTOR * footprint.forward}
    return Cost("a forward pass and projection of {n} copies", per_copy)


# ---- forward passes ------------------------------------------------------------------------


def forward(model: LoadedModel, batch: np.ndarray, names: list[str], chunk: int = 0, *, exact: bool) -> dict[str, np.ndarray]:
    """The named tensors of ``batch``'s forward pass, by name; ``chunk`` images per pass (0: all at once);
    ``exact``: on the exact session (values that feed a gradient), else on the fused one (:meth:`LoadedModel.fetching`)."""
    chunk = chunk or max(1, len(batch))
    parts = [runtime.tensors(model.fetching(names, exact=exact), names, {model.input_name: batch[start : start + chunk]}) for start in range(0, len(batch), chunk)]
    return {name: np.concatenate([part[k] for part in parts]) for k, name in enumerate(names)}


def run(
    model: LoadedModel, base: np.ndarray, base_outputs: dict[str, np.ndarray], count: int,
    make: Callable[[int, int], np.ndarray], reduce: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    tracker: Tracker, stage: str, batch: int, *, exact: bool,
) -> Steps[dict[str, np.ndarray]]:
    """Forward ``count`` copies of ``base`` (C, H, W), ``batch`` at a time; ``make(start, stop)`` builds
    copies start..stop-1, ``reduce`` turns a batch's outputs (by tensor name, (n, ...)) into what is kept
    (by key, (n, ...)). ``base_outputs`` (by name, (1, ...)) are the unperturbed image's: copies equal
    to ``base`` take them without a forward pass, and so must come from the same kind of session (``exact``,
    :func:`forward`). Returns the kept arrays, concatenated over copies."""
    names = list(base_outputs)
    kept: dict[str, list[np.ndarray]] = defaultdict(list)
    for start in range(0, count, batch):
        next_batch()
        stop = min(count, start + batch)
        reduced = reduce(_forward_reusing(model, make(start, stop), base, base_outputs, names, exact))
        for key, value in reduced.items():
            kept[key].append(value)
        yield tracker.advance(stop - start, stage)
    return {key: np.concatenate(values) for key, values in kept.items()}


def _forward_reusing(model: LoadedModel, copies: np.ndarray, base: np.ndarray, base_outputs: dict[str, np.ndarray], names: list[str], exact: bool) -> dict[str, np.ndarray]:
    same = np.array([np.array_equal(copy, base) for copy in copies])
    if not same.any():
        return forward(model, copies, names, exact=exact)
    out = {name: np.repeat(base_outputs[name], len(copies), axis=0) for name in names}
    if not same.all():
        changed = forward(model, copies[~same], names, exact=exact)
        for name in names:
            out[name][~same] = changed[name]
    return out


# ---- what the analyses share ----------------------------------------------------------------


def fill_value(model: LoadedModel, fill: str) -> FillValue:
    """``mean``: the model's preprocessing mean per input channel (a per-pixel mean: its per-channel
    average; mid-grey when the model records none); ``grey``: 127.5; ``zero``: 0."""
    values, note = _fill(model, fill)
    return FillValue(fill, tuple(np.broadcast_to(np.asarray(values, np.float32), (model.input_shape[1],)).tolist()), note)


def _fill(model: LoadedModel, fill: str) -> tuple[np.ndarray | float, str]:
    """A fill's values (one per input channel, or one for all) and where they come from."""
    if fill == "grey":
        return GREY, "mid-grey 127.5"
    if fill == "zero":
        return 0.0, "zero (black)"
    if fill != "mean":
        raise InvalidArgument(f"unknown fill {fill!r}; choose one of {', '.join(FILLS.names)}")
    recorded = json.loads(model.preprocessing_json or "{}")
    mean, note = recorded.get("mean"), "the model's preprocessing mean per channel"
    if not mean:
        pixel_mean = next((numpy_helper.to_array(i) for i in model.model.graph.initializer if i.name == MEAN_INITIALIZER), None)
        if pixel_mean is None or pixel_mean.ndim < 3:
            return GREY, "mid-grey 127.5: the model records no preprocessing mean"
        mean = pixel_mean.reshape(pixel_mean.shape[-3], -1).mean(axis=1)
        note = f"per-channel average of the model's per-pixel mean ({recorded.get('mean_source') or MEAN_INITIALIZER})"
    values = np.broadcast_to(np.asarray(mean, np.float32).ravel(), (model.input_shape[1],))
    if recorded.get("channel_order") == "bgr":
        values = values[::-1]  # recorded in the network's order; the input is RGB
    return values, note


def numbered(model: LoadedModel) -> list[Layer]:
    """The layers ``--layer N`` selects, in order."""
    rows = sorted((r for r in model.layers if r.number), key=lambda r: r.number or 0)
    if not rows:
        raise InvalidArgument(f"model {model.name!r} has no numbered convolutional or fully connected layers; name the layers")
    return rows


def first_conv(model: LoadedModel) -> Layer:
    """The first numbered layer with spatial maps (the paper's layer 1)."""
    rows = numbered(model)
    return next((r for r in rows if len(r.shape) == 4), rows[0])


def last_conv(model: LoadedModel) -> Layer:
    """The last numbered layer with spatial maps (the paper's layer 5)."""
    rows = numbered(model)
    return next((r for r in reversed(rows) if len(r.shape) == 4), rows[-1])


def last_hidden(model: LoadedModel) -> Layer:
    """The numbered layer before the output (the paper's layer 7)."""
    rows = numbered(model)
    return rows[-2] if len(rows) > 1 else rows[-1]


def layers_or(model: LoadedModel, layers: list[str | int], default: list[Callable[[LoadedModel], Layer]]) -> list[Layer]:
    """The chosen layers, or the defaults; each once, in the order given."""
    rows = [resolve(model.layers, layer) for layer in layers] if layers else [pick(model) for pick in default]
    return list({row.name: row for row in rows}.values())


def true_classes(model: LoadedModel, given: list[str], base: np.ndarray) -> list[TrueClass]:
    """Per image: the class given (a name or an index; one for all images, or one each), or the
    unperturbed image's top-1 class where none is; ``base`` is the (N, classes) probabilities."""
    count, classes = base.shape
    names = model.classes
    if len(given) not in (0, 1, count):
        raise InvalidArgument(f"{len(given)} true classes for {count} images; give one for all images or one per image")
    given = given * count if len(given) == 1 else given or [""] * count
    out = []
    for i, label in enumerate(given):
        label = label.strip()
        if not label:
            index = int(np.argmax(base[i]))
        elif label in names:
            index = names.index(label)
        elif label.isdigit() and int(label) < classes:
            index = int(label)
        else:
            known = f"this model's classes are {', '.join(names)}" if names else f"this model records no class names; give an index 0..{classes - 1}"
            raise InvalidArgument(f"true class {label!r} of image {i} is unknown; {known}")
        out.append(TrueClass(index, names[index] if index < len(names) else "", not label))
    return out


def output_probabilities(model: LoadedModel, outputs: dict[str, np.ndarray], applied: bool) -> np.ndarray:
    """(n, classes) probabilities from a batch's model output, softmax applied as on the unperturbed image."""
    out = outputs[model.output_name]
    out = out.reshape(out.shape[0], -1).astype(np.float32)
    return softmax(out) if applied else out


def base_probabilities(model: LoadedModel, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, bool]:
    """(N, classes) probabilities of the unperturbed images, and whether softmax was applied."""
    out = outputs[model.output_name]
    return probabilities(out.reshape(out.shape[0], -1).astype(np.float32))
