"""Top-k images per feature map over a data set, with their reconstructions (Zeiler & Fergus 2013, Fig. 2).

Two passes. :func:`scan` reads a range of the data set in batches, one forward pass up to the layers
asked for (a session whose only outputs they are, :meth:`LoadedModel.fetching`), and keeps a running :class:`~zfnet.topk.TopK` (k x channels per layer, mergeable,
resumable), reporting progress and checkpoints as it goes. :func:`reconstruct` reads only the
winners' images, checks each winner's activation again, and projects that single activation back to
pixels through the model's projection graph (deconvnet, guided or backprop), in chunks of rows the
budget has room for (:func:`projection_rows`).

Where it is exact and pays (:mod:`zfnet.server.windows`: every op up to the layer local over space, the
window at most half the image), a winner is reconstructed on its receptive-field window alone: the
aligned crop of its image holding its field goes through the model and the projection graph at the
window's size, and its reconstruction is pasted into a zero image; no forward pass of the whole
image is run for such a layer. At 224 px that is most of the second pass for the lower layers
(docs/benchmarks.md, "Reconstructions on the receptive-field window"); elsewhere (32-px CIFAR-10,
layers whose field covers most of the image, global pools) the full-size projection graph is used.

Memory: a job runs inside one reservation of the budget, made before anything is allocated and
refused at once with the numbers when it can never fit: the state (k x channels entries per layer,
with its checkpoint copies and their replies), the projection sessions to build, and one batch of
either pass at a time, each pass's batch fitted to a share of the budget (:func:`job_estimate`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import onnxruntime as ort

from zfnet.errors import FailedPrecondition, InvalidArgument
from zfnet.server import admission, deconv, projection, runtime
from zfnet.server.admission import FORWARD_FACTOR, NO_BUDGET, Cost, Estimate, next_batch, streamed_room
from zfnet.server.datasets import Source, StreamedSource
from zfnet.server.layers import named, resolve
from zfnet.server.models import FUSED_ROUNDING, PROJECTION_BUILD_FACTOR, LoadedModel
from zfnet.server.windows import WindowSessions
from zfnet.topk import EMPTY, TopK
from zfnet.wire import top as wire
from zfnet.wire.common import Progress
from zfnet.wire.top import Checkpoint, Event, Entry, TopImage

CHECKPOINT_EVERY = 1024  # images between checkpoints, unless the job says otherwise
SCAN, RECONSTRUCTIONS = "scan", "reconstructions"
STATE_COPIES = 4  # the state, a checkpoint's copy, and the two replies that carry them serialised


def plan(model: LoadedModel, layers: list[str | int], channels: list[int] | None) -> dict[str, tuple[np.ndarray, int]]:
    """The tensors of ``layers`` (numbers or names, each once) -> (tracked channels, spatial rank)."""
    if not layers:
        raise InvalidArgument("no layers asked for")
    out: dict[str, tuple[np.ndarray, int]] = {}
    for ref in layers:
        row = resolve(model.layers, ref)
        if len(row.shape) < 2 or not isinstance(row.channels, int):
            raise InvalidArgument(f"layer {row.name!r} has shape {row.shape}: it needs a channel (or unit) axis of fixed size")
        count = row.channels
        chosen = np.arange(count) if not channels else np.asarray(channels, np.int64)
        bad = [int(c) for c in chosen if not 0 <= c < count]
        if bad:
            raise InvalidArgument(f"channel(s) {bad} out of range: layer {row.name!r} has {count} channels (0..{count - 1})")
        out.setdefault(row.name, (chosen, len(row.shape) - 2))
    return out


def entry_bytes(spatial_rank: int) -> int:
    """Bytes of one (channel, rank) entry of a state: value, activation, index, location."""
    return 4 + 4 + 8 + 8 * spatial_rank


def state_bytes(plans: dict[str, tuple[np.ndarray, int]], k: int) -> int:
    """Bytes of a state of ``k`` entries per tracked channel of the planned layers."""
    return sum(len(chosen) * k * entry_bytes(rank) for chosen, rank in plans.values())


def job_estimate(
    model: LoadedModel, plans: dict[str, tuple[np.ndarray, int]], k: int, source: Source, passes: list[Cost], method: str | None, scans: bool = True,
) -> Estimate:
    """What a job holds from start to end: the state with its copies, the projection sessions and the
    forward sessions (of the scan, when it ``scans``, and of the reconstructions) it builds, one batch
    of its largest pass, the images being decoded, and the streamed images."""
    builds = sum(not _built(model, layer, method) for layer in plans) if method is not None else 0
    sessions = (model.fetching_build(plans, exact=False) if scans else 0) + (_reconstruction_build(model, plans, method) if method is not None else 0)
    channels = sum(len(chosen) for chosen, _ in plans.values())
    sizes = [fitted(model, source, cost).largest_batch for cost in passes]
    batch = max((cost.estimate(n) for cost, n in zip(passes, sizes)), key=lambda e: e.total, default=Estimate(""))
    return Estimate(
        f"TopActivations: the top-k state of k={k} x {channels:,} channel(s) in {len(plans)} layer(s), batches of {min(sizes, default=0)} image(s)",
        {
            "top-k state": STATE_COPIES * state_bytes(plans, k), "projection build": builds * PROJECTION_BUILD_FACTOR * model.size, "session build": sessions,
            **batch.parts, "streamed images": streamed_room(model.budget) if isinstance(source, StreamedSource) else 0,
        },
    )


def _built(model: LoadedModel, layer: str, method: str) -> bool:
    """Whether what reconstructing ``layer`` projects through is built: its window sessions, or its projection."""
    return model.has_window_sessions(layer, method) if model.window(layer) is not None else model.has_projection(layer, method)


def _projection(model: LoadedModel, layer: str, method: str) -> WindowSessions | tuple[projection.Projection, ort.InferenceSession]:
    """What reconstructing ``layer`` projects through, built once: its window sessions where it has a
    window (:meth:`LoadedModel.window`), else its projection graph and session."""
    return model.window_sessions(layer, method) if model.window(layer) is not None else model.projection(layer, method)


def _reconstruction_build(model: LoadedModel, layers: Iterable[str], method: str) -> int:
    """What building the reconstructions' forward session (of the whole image) costs, 0 when it is
    built or no layer needs it (its window sessions hold their own); not built while a projection it
    serves is not."""
    projections = {layer: model.built_projection(layer, method) for layer in layers if model.window(layer) is None}
    built = {layer: proj for layer, proj in projections.items() if proj is not None}
    return model.fetching_build(reconstruction_names(model, built), exact=True) if len(built) == len(projections) else PROJECTION_BUILD_FACTOR * model.size


def reconstruction_names(model: LoadedModel, projections: dict[str, projection.Projection]) -> list[str]:
    """The tensors the reconstructions' forward pass computes: each layer and what its projection reads."""
    return list(dict.fromkeys(name for layer, proj in projections.items() for name in model.fetched(proj, layer)))


def scan_cost(model: LoadedModel, plans: dict[str, tuple[np.ndarray, int]], k: int, source: Source) -> Cost:
    """What a scan batch of ``n`` images allocates: its input (and the next, decoded ahead), a forward
    pass, each layer's tracked maps and their candidates, the merge with the state, the decoding."""
    footprint, per_image, merge = model.footprint, 0, 0
    for name, (chosen, rank) in plans.items():
        spatial = footprint.tensors.get(name, 0) // max(1, 4 * _channels_of(model, name))
        per_image += len(chosen) * (4 * spatial + 3 * entry_bytes(rank))
        merge += 3 * len(chosen) * k * entry_bytes(rank)
    return Cost(
        f"TopActivations scan of {len(plans)} layer(s), {{n}} images per batch",
        {"input batch": 2 * footprint.input, "forward pass": FORWARD_FACTOR * footprint.forward, "tracked maps": per_image},
        {"image decoding": source.decoding, "state merge": merge},
    )


def row_bytes(model: LoadedModel, plans: dict[str, tuple[np.ndarray, int]]) -> int:
    """What one reconstruction allocates: its signal, the projection run, its pixels."""
    footprint = model.footprint
    return max((footprint.tensors.get(name, 0) for name in plans), default=0) + footprint.forward + 4 * footprint.input


def projection_rows(model: LoadedModel, plans: dict[str, tuple[np.ndarray, int]]) -> int:
    """Reconstructions per projection run: ``deconv.CHUNK_ROWS``, fewer where that many would take
    more than half the room a batch is fitted to (a 224-px ResNet-50's row is estimated at ~150 MB)."""
    return deconv.rows_per_run(row_bytes(model, plans), model.room(NO_BUDGET) // 2)


def reconstruct_cost(model: LoadedModel, plans: dict[str, tuple[np.ndarray, int]], source: Source) -> Cost:
    """What a batch of ``n`` winners' images allocates: input, forward pass, then chunks of
    projections (signals, the projection run, pixels) and the entries sent."""
    footprint = model.footprint
    return Cost(
        f"TopActivations reconstructions of {len(plans)} layer(s), {{n}} images per batch",
        {"input batch": 3 * footprint.input, "forward pass": FORWARD_FACTOR * footprint.forward},
        {"image decoding": source.decoding, "projections": projection_rows(model, plans) * row_bytes(model, plans)},
    )


def _channels_of(model: LoadedModel, layer: str) -> int:
    shape = resolve(model.layers, layer).shape
    return shape[1] if len(shape) > 1 and isinstance(shape[1], int) and shape[1] > 0 else 1


def layout(state: TopK) -> dict[str, tuple[np.ndarray, int]]:
    """A state's layers as :func:`plan` gives them: (tracked channels, spatial rank)."""
    return {name: (top.channels, top.locations.shape[2]) for name, top in state.layers.items()}


def fitted(model: LoadedModel, source: Source, cost: Cost) -> Source:
    """``source`` with its batch lowered to fit a share of the budget when the one asked for does not."""
    return source.fitted(cost.fit(source.batch_size, model.room(NO_BUDGET)), streamed_room(model.budget))


def start(model: LoadedModel, data: str, size: int, layers: list[str | int], channels: list[int] | None, k: int, by: str, state: TopK | None) -> TopK:
    """A fresh state for the job, or ``state`` (to continue) after checking it belongs to the job."""
    fresh = TopK.empty(model.sha256, data, size, k, by, plan(model, layers, channels))
    if state is None:
        return fresh
    reason = fresh.compatible(state)
    if reason:
        raise InvalidArgument(f"the top-k state sent does not belong to this job: {reason}")
    return state.copy()


def scan(model: LoadedModel, source: Source, state: TopK, checkpoint_every: int = CHECKPOINT_EVERY) -> Iterator[Event]:
    """Read ``source``'s range into ``state`` (in place): progress after every batch, a checkpoint every
    ``checkpoint_every`` images, the final state last."""
    clash = [r for r in state.covered if max(r[0], source.start) < min(r[1], source.stop)]
    if clash:
        raise InvalidArgument(f"the range [{source.start}, {source.stop}) overlaps indices [{clash[0][0]}, {clash[0][1]}) that the state has read already; send only the rest")
    names = list(state.layers)
    source = fitted(model, source, scan_cost(model, layout(state), state.k, source))
    position, since = source.start, 0
    yield Progress(SCAN, 0, source.count, [])
    for batch in source.batches(model.framing):
        next_batch()
        if len(batch.indices):
            tensors = runtime.tensors(model.fetching(names, exact=False), names, {model.input_name: batch.inputs})
            state.observe({name: deconv.channels_first(model, name, t) for name, t in zip(names, tensors)}, batch.indices)
        state.cover(position, position + batch.read, batch.skipped)
        position += batch.read
        since += batch.read
        yield Progress(SCAN, position - source.start, source.count, batch.skipped)
        if since >= checkpoint_every and position < source.stop:
            since = 0
            yield Checkpoint(state.copy(), final=False)
    yield Checkpoint(state, final=True)


def _check_fits(model: LoadedModel, source: Source, data: str, state: TopK) -> None:
    """Refuse a state made with another model or data set, or whose layers, channels or locations do not fit."""
    if state.model != model.sha256:
        raise InvalidArgument(f"the top-k state is for model {state.model[:12]}, not {model.sha256[:12]} ({model.name})")
    if (state.data, state.size) != (data, source.size):
        raise InvalidArgument(f"the top-k state is for data set {state.data!r} of {state.size} images, not {data!r} of {source.size}")
    for layer, top in state.layers.items():
        (_, rank), = plan(model, [layer], [int(c) for c in top.channels]).values()
        shape = named(model.layers, layer).spatial()
        if top.locations.shape[2] != rank or np.any(top.locations < 0) or np.any(top.locations >= np.asarray(shape, np.int64)):
            raise InvalidArgument(f"the top-k state's locations do not fit layer {layer!r} of shape {shape}")


def reconstruct(model: LoadedModel, source: Source, data: str, state: TopK, method: str) -> Iterator[Event]:
    """Read the winners of ``state`` from ``source`` and reconstruct every (layer, channel, rank):
    each image once (before its entries), progress in reconstructions."""
    _check_fits(model, source, data, state)
    projections = {layer: _projection(model, layer, method) for layer in state.layers}  # refuse early, before reading
    needed = reconstruction_names(model, {layer: found[0] for layer, found in projections.items() if isinstance(found, tuple)})
    total = sum(int((top.indices != EMPTY).sum()) for top in state.layers.values())
    source = fitted(model, source, reconstruct_cost(model, layout(state), source))
    chunk = projection_rows(model, layout(state))
    done = 0
    yield Progress(RECONSTRUCTIONS, 0, total, [])
    for batch in source.take(state.winner_indices(), model.framing):
        next_batch()
        for event in _reconstruct_batch(model, batch, source, state, needed, projections, chunk):
            done += isinstance(event, Entry)
            yield event
        yield Progress(RECONSTRUCTIONS, done, total, [])


def _reconstruct_batch(model: LoadedModel, batch, source: Source, state: TopK, needed: list[str], projections, chunk: int) -> Iterator[Event]:
    """The winners' images of one batch, then their entries, layer by layer, in chunks of ``chunk`` rows."""
    if batch.skipped:
        s = batch.skipped[0]
        raise FailedPrecondition(f"image {s.index} ({s.path}) was read by the scan but cannot be read now: {s.reason}")
    forward = {model.input_name: batch.inputs}
    if needed:  # layers reconstructed on the whole image
        forward.update(runtime.run(model.fetching(needed, exact=True), needed, {model.input_name: batch.inputs}, host=list(state.layers)))
    for i, index in enumerate(batch.indices):
        yield TopImage.of(int(index), batch.paths[i], int(batch.labels[i]), source.classes, batch.inputs[i])
    for layer, top in state.layers.items():
        rows, ranks = np.nonzero(np.isin(top.indices, batch.indices))
        found = projections[layer]
        step = _window_rows(model, layer, found) if isinstance(found, WindowSessions) else chunk
        for part in range(0, len(rows), step):
            some = (rows[part : part + step], ranks[part : part + step])
            if isinstance(found, WindowSessions):
                yield from _reconstruct_on_windows(model, layer, top, *some, batch, found)
            else:
                yield from _reconstruct_rows(model, layer, top, *some, batch.indices, forward, found)


def _reconstruct_rows(model, layer, top, rows, ranks, batch_indices, forward, proj) -> Iterator[Entry]:
    """Entries for the (channel row, rank) pairs ``rows, ranks`` of one layer, whose images are in the batch."""
    activation = deconv.channels_first(model, layer, forward[layer])
    image = np.searchsorted(batch_indices, top.indices[rows, ranks])
    current, signal = _checked_signal(model, layer, top, rows, ranks, activation, image, top.locations[rows, ranks])
    pixels = deconv.project(proj[0], proj[1], forward, deconv.in_layout(model, layer, signal), image, forward[model.input_name].shape[1:])
    yield from _entries(model, layer, top, rows, ranks, current, pixels)


def _window_rows(model: LoadedModel, layer: str, sessions: WindowSessions) -> int:
    """Reconstructions per run on windows: ``deconv.CHUNK_ROWS``, fewer where that many would take
    more than half the room a batch is fitted to (one row: its window's forward pass and projection,
    and its pasted pixels; a whole image's row, :func:`row_bytes`, is more)."""
    footprint = sessions.footprint
    row = footprint.tensors.get(layer, 0) + (FORWARD_FACTOR + 1) * footprint.forward + 4 * footprint.input + model.footprint.input
    return deconv.rows_per_run(row, model.room(NO_BUDGET) // 2)


def _reconstruct_on_windows(model: LoadedModel, layer: str, top, rows: np.ndarray, ranks: np.ndarray, batch, sessions: WindowSessions) -> Iterator[Entry]:
    """Entries for the (channel row, rank) pairs ``rows, ranks`` of one layer, each unit on its window:
    the windows' crops of the winners' images (each crop once) through the model at the window's
    size (exact), the projection at that size, each reconstruction pasted into a zero image."""
    window, (height, width) = sessions.window, sessions.window.size
    image = np.searchsorted(batch.indices, top.indices[rows, ranks])
    locations = top.locations[rows, ranks]
    origins = window.origins(locations)
    crops, crop = np.unique(np.column_stack([image, origins]), axis=0, return_inverse=True)
    crop = crop.reshape(-1)
    inputs = np.stack([batch.inputs[i, :, y : y + height, x : x + width] for i, y, x in crops])
    forward = {model.input_name: inputs, **runtime.run(sessions.forward, sessions.fetched, {model.input_name: inputs}, host=[layer])}
    activation = deconv.channels_first(model, layer, forward[layer])
    current, signal = _checked_signal(model, layer, top, rows, ranks, activation, crop, locations - window.cells(origins))
    inside = deconv.project(sessions.projection, sessions.session, forward, deconv.in_layout(model, layer, signal), crop, inputs.shape[1:])
    pixels = np.zeros((len(rows), *batch.inputs.shape[1:]), np.float32)
    for m, (y, x) in enumerate(origins):
        pixels[m, :, y : y + height, x : x + width] = inside[m]
    yield from _entries(model, layer, top, rows, ranks, current, pixels)


def _checked_signal(model, layer, top, rows, ranks, activation, image, locations) -> tuple[np.ndarray, np.ndarray]:
    """The winners' activations now (``activation``'s image ``image[m]`` at ``locations[m]``), checked
    against the scan's, and the signals that send each alone down: (current values, signals)."""
    channels = top.channels[rows]
    where = (image, channels, *locations.T)
    current = activation[where]
    recorded = top.activations[rows, ranks]
    atol = max(1e-5, FUSED_ROUNDING * float(np.abs(activation).max()))  # the scan's fused session rounds otherwise, by a share of the layer's scale
    if not np.allclose(current, recorded, rtol=1e-3, atol=atol):
        m = int(np.argmax(~np.isclose(current, recorded, rtol=1e-3, atol=atol)))
        raise FailedPrecondition(
            f"image {top.indices[rows[m], ranks[m]]}: layer {layer!r} channel {channels[m]} gives {current[m]:.6g} now and gave "
            f"{recorded[m]:.6g} in the scan; is this the model and data set the state was made with?"
        )
    signal = np.zeros((len(rows), *activation.shape[1:]), np.float32)
    signal[(np.arange(len(rows)), channels, *locations.T)] = current
    return current, signal


def _entries(model, layer, top, rows, ranks, current, pixels) -> Iterator[Entry]:
    """The entries of the (channel row, rank) pairs ``rows, ranks``: their values now and reconstructions."""
    channels, locations = top.channels[rows], top.locations[rows, ranks]
    for m in range(len(rows)):
        location = tuple(int(p) for p in locations[m])
        yield Entry(
            layer, int(channels[m]), int(ranks[m]), int(top.indices[rows[m], ranks[m]]), float(top.values[rows[m], ranks[m]]), float(current[m]),
            location, model.receptive_fields.box(layer, location), model.receptive_fields.box(layer, location, clip=False), pixels[m],
        )


STAGES = wire.STAGES.names  # the names of TopStage


def job(
    model: LoadedModel, source: Source, *, data: str, layers: list[str | int], channels: list[int] | None, k: int, by: str,
    method: str | None, stage: str, state: TopK | None, checkpoint_every: int = CHECKPOINT_EVERY,
) -> Iterator[Event]:
    """A whole top-k job: scan (continuing ``state`` if given), then reconstruct the winners; or one of the two
    (``stage``). Everything the job needs is checked before the first image is read: a scan given a
    ``method`` (None: not given; deconvnet for the reconstructions) also builds the projection graphs
    its reconstructions will need, so that a layer the method cannot project is refused before the scan."""
    if stage not in STAGES:
        raise InvalidArgument(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if method is not None and method not in projection.METHODS:
        raise InvalidArgument(f"unknown method {method!r}; choose one of {', '.join(projection.METHODS)}")
    if stage == "all" and isinstance(source, StreamedSource):
        raise InvalidArgument("a job over streamed images cannot re-read its winners: run stage scan, then stage reconstruct with the final state and the winners' images")
    if stage == "reconstruct":
        if state is None:
            raise InvalidArgument("stage reconstruct needs the top-k state whose winners to reconstruct (TopJob.state)")
        winners = state.check()
        plans = layout(winners)
        estimate = job_estimate(model, plans, winners.k, source, [reconstruct_cost(model, plans, source)], method or "deconvnet", scans=False)
        with model.reserve(estimate), admission.covering(estimate.parts["streamed images"]):
            yield from reconstruct(model, source, data, winners, method or "deconvnet")
        return
    if checkpoint_every < 0:
        raise InvalidArgument(f"checkpoint_every must be positive, got {checkpoint_every}")
    projects = stage == "all" or method is not None
    plans = plan(model, layers, channels)
    passes = [scan_cost(model, plans, k, source), *([reconstruct_cost(model, plans, source)] if stage == "all" else [])]
    estimate = job_estimate(model, plans, k, source, passes, (method or "deconvnet") if projects else None)
    with model.reserve(estimate, model.fetching_key(plans, exact=False)), admission.covering(estimate.parts["streamed images"]):  # before any state exists
        running = start(model, data, source.size, layers, channels, k, by, state)
        if projects:
            for layer in running.layers:
                _projection(model, layer, method or "deconvnet")
        yield from scan(model, source, running, checkpoint_every or CHECKPOINT_EVERY)
        if stage == "all":
            yield from reconstruct(model, source, data, running, method or "deconvnet")
