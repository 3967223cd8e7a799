"""Deconv reconstruction (Zeiler & Fergus 2013, Sec. 2.1): choose activations, send them down.

One forward pass serves every channel asked for on a batch of images; the projection graph then
runs once per chunk of (image, channel) rows. Selection is pure numpy, kept apart for testing: it
sees the layer with its channel axis moved to axis 1 (:func:`channels_first`), and the signals go
down in the layer's own layout (channels-last blocks, (N, tokens, features) layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfnet.errors import InvalidArgument, ResourceExhausted
from zfnet.server import projection, runtime
from zfnet.server.layers import named
from zfnet.server.models import LoadedModel
from zfnet.wire import deconv as wire
from zfnet.wire.deconv import Reconstruction

MODES = wire.MODES.names  # the names of DeconvMode
MAX_ROWS = 4096  # (image, channel) reconstructions per request
CHUNK_ROWS = 256  # rows per projection run, at most
RUN_BYTES = 256 << 20  # what one projection run may hold by the estimate (a row: about one image's forward pass)


@dataclass(frozen=True)
class Selection:
    """The activations to send down: one row per (image, channel)."""

    image_index: np.ndarray  # (M,) int64
    channel: np.ndarray  # (M,) int64
    value: np.ndarray  # (M,) float32: the activation (max) or the channel's maximum (map)
    location: list[tuple[int, ...]]  # position of that value on the axes other than the batch and channel axis
    signal: np.ndarray  # (M, channels, *other axes) float32: the layer channels first


def channels_first(model: LoadedModel, layer: str, activation: np.ndarray) -> np.ndarray:
    """A layer's tensor (or signal) with its channel axis moved to axis 1 (a view)."""
    return np.moveaxis(activation, named(model.layers, layer).channel_axis, 1)


def in_layout(model: LoadedModel, layer: str, signal: np.ndarray) -> np.ndarray:
    """Signals built channels first, in the layer's own layout (the inverse of :func:`channels_first`)."""
    return np.ascontiguousarray(np.moveaxis(signal, 1, named(model.layers, layer).channel_axis))


def choose_channels(activation: np.ndarray, channels: list[int] | None, top_k: int) -> list[list[int]]:
    """Per image: the explicit ``channels``, or the ``top_k`` channels with the strongest activation."""
    count = activation.shape[1]
    if channels:
        bad = [c for c in channels if not 0 <= c < count]
        if bad:
            raise InvalidArgument(
                f"channel(s) {bad} out of range: this layer has {count} channels (0..{count - 1})",
                field=f"channels.channels[{channels.index(bad[0])}]", reason="VALUE_OUT_OF_RANGE", metadata={"channels": count},
            )
        return [list(channels) for _ in range(activation.shape[0])]
    if top_k <= 0:
        raise InvalidArgument(f"top_k must be positive, got {top_k}", field="channels.top_k", reason="VALUE_OUT_OF_RANGE")
    strength = activation.reshape(activation.shape[0], count, -1).max(axis=2)
    k = min(top_k, count)
    return [list(np.argsort(-row, kind="stable")[:k]) for row in strength]


def select(activation: np.ndarray, chosen: list[list[int]], mode: str) -> Selection:
    """Build the signals: only the strongest activation of the channel (``max``) or its whole map (``map``)."""
    if mode not in MODES:
        raise InvalidArgument(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}", field="mode", reason="UNKNOWN_ENUM_VALUE")
    rows = [(i, c) for i, cs in enumerate(chosen) for c in cs]
    if len(rows) > MAX_ROWS:
        raise ResourceExhausted(
            f"{len(rows)} reconstructions asked for; at most {MAX_ROWS} per request",
            reason="TOO_MANY_RECONSTRUCTIONS", metadata={"limit": MAX_ROWS, "requested": len(rows)},
        )
    signal = np.zeros((len(rows), *activation.shape[1:]), np.float32)
    values, locations = np.zeros(len(rows), np.float32), []
    spatial = activation.shape[2:]
    for row, (i, c) in enumerate(rows):
        fmap = activation[i, c]
        location = tuple(int(p) for p in np.unravel_index(int(np.argmax(fmap)), spatial)) if spatial else ()
        values[row] = fmap[location] if spatial else fmap
        locations.append(location)
        if mode == "max":
            signal[(row, c, *location)] = values[row]
        else:
            signal[row, c] = fmap
    image_index = np.asarray([i for i, _ in rows], np.int64)
    return Selection(image_index, np.asarray([c for _, c in rows], np.int64), values, locations, signal)


def rows_per_run(row: int, room: int | None = None) -> int:
    """Rows per projection run: :data:`CHUNK_ROWS`, fewer where that many rows of ``row`` bytes would
    hold more than ``room`` (None: :data:`RUN_BYTES`, a row being about one image's forward pass:
    VGG16 at 224 px runs a few), so that a small request of a large model stays small."""
    return max(1, min(CHUNK_ROWS, (RUN_BYTES if room is None else room) // max(1, row)))


def project(
    proj: projection.Projection, session, forward: dict[str, np.ndarray], signal: np.ndarray, image_index: np.ndarray, pixel_shape: tuple[int, ...],
    rows: int = CHUNK_ROWS,
) -> np.ndarray:
    """Send ``signal`` rows (M, *layer shape) down the projection graph ``rows`` at a time; row m
    belongs to image ``image_index[m]`` of the forward batch, whose tensors ``forward`` holds. (M, *pixel_shape)."""
    feeds = {projection.FORWARD_PREFIX + name: forward[name] for name in proj.forward_tensors}
    pixels = []
    for start in range(0, len(signal), rows):
        part = slice(start, start + rows)
        feeds[projection.SIGNAL] = signal[part]
        feeds[projection.IMAGE_INDEX] = image_index[part]
        pixels.append(runtime.run(session, [projection.RECONSTRUCTION], feeds)[projection.RECONSTRUCTION])
    return np.concatenate(pixels) if pixels else np.zeros((0, *pixel_shape), np.float32)


def reconstruct(model: LoadedModel, batch: np.ndarray, layer: str, channels: list[int] | None, top_k: int, mode: str, method: str) -> list[Reconstruction]:
    """Forward once, select, project in chunks; one Reconstruction per (image, channel)."""
    proj, proj_session = model.projection(layer, method)
    if proj.per_image:
        return _per_image(model, proj, proj_session, batch, layer, channels, top_k, mode)
    names = model.fetched(proj, layer)
    forward = {model.input_name: batch, **runtime.run(model.fetching(names, exact=True), names, {model.input_name: batch}, host=[layer])}
    activation = channels_first(model, layer, forward[layer])
    selection = select(activation, choose_channels(activation, channels, top_k), mode)
    signal = in_layout(model, layer, selection.signal)
    pixels = project(proj, proj_session, forward, signal, selection.image_index, batch.shape[1:], rows_per_run(model.footprint.forward))
    return _reconstructions(model, layer, mode, selection, pixels)


def _per_image(model: LoadedModel, proj: projection.Projection, proj_session, batch: np.ndarray, layer: str,
               channels: list[int] | None, top_k: int, mode: str) -> list[Reconstruction]:
    """For a model whose graph merges the batch axis away: each image alone, its forward pass and then
    its rows one at a time, so that the projection is exactly that of the one-image computation."""
    names = model.fetched(proj, layer)
    forwards = [{model.input_name: batch[i : i + 1], **dict(zip(names, runtime.tensors(model.session, names, {model.input_name: batch[i : i + 1]})))}
                for i in range(len(batch))]
    activation = np.concatenate([forward[layer] for forward in forwards])
    _check_images_apart(model, batch, layer, activation)
    activation = channels_first(model, layer, activation)
    selection = select(activation, choose_channels(activation, channels, top_k), mode)
    signal = in_layout(model, layer, selection.signal)
    pixels = np.zeros((len(selection.channel), *batch.shape[1:]), np.float32)
    for row, image in enumerate(selection.image_index):
        feeds = {projection.FORWARD_PREFIX + name: forwards[image][name] for name in proj.forward_tensors}
        feeds.update({projection.SIGNAL: signal[row : row + 1], projection.IMAGE_INDEX: np.zeros(1, np.int64)})
        pixels[row] = proj_session.run([projection.RECONSTRUCTION], feeds)[0][0]
    return _reconstructions(model, layer, mode, selection, pixels)


def _check_images_apart(model: LoadedModel, batch: np.ndarray, layer: str, alone: np.ndarray) -> None:
    """Refuse when the batch's forward pass differs from its images' one by one: the graph mixes the
    images of a batch, and the projection of one image alone would not be the batch's."""
    if len(batch) == 1:
        return
    together = runtime.tensors(model.session, [layer], {model.input_name: batch})[0]
    scale = float(np.abs(alone).max(initial=0.0))
    if together.shape != alone.shape or not np.allclose(together, alone, rtol=1e-3, atol=1e-4 * max(scale, 1e-12)):
        raise InvalidArgument(f"layer {layer!r}: the model mixes the images of a batch on the way to this layer "
                              "(an image alone gives other values); send one image per request or choose another layer")


def _reconstructions(model: LoadedModel, layer: str, mode: str, selection: Selection, pixels: np.ndarray) -> list[Reconstruction]:
    """One Reconstruction per selected row, with its receptive field (of the whole map in map mode)."""
    return [
        Reconstruction(
            int(selection.image_index[r]), int(selection.channel[r]), float(selection.value[r]), selection.location[r],
            model.receptive_fields.box(layer, selection.location[r] if mode == "max" else None, int(selection.channel[r])),
            pixels[r],
        )
        for r in range(len(selection.channel))
    ]
