"""Deconv reconstruction (Zeiler & Fergus 2013, Sec. 2.1): choose activations, send them down.

One forward pass serves every channel asked for on a batch of images; the projection graph then
runs once per chunk of (image, channel) rows. Selection is pure numpy, kept apart for testing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfnet.errors import InvalidArgument, ResourceExhausted
from zfnet.server import projection
from zfnet.server.models import LoadedModel

MODES = ("max", "map")
MAX_ROWS = 4096  # (image, channel) reconstructions per request
CHUNK_ROWS = 256  # rows per projection run


@dataclass(frozen=True)
class Selection:
    """The activations to send down: one row per (image, channel)."""

    image_index: np.ndarray  # (M,) int64
    channel: np.ndarray  # (M,) int64
    value: np.ndarray  # (M,) float32: the activation (max) or the channel's maximum (map)
    location: list[tuple[int, ...]]  # spatial position of that value
    signal: np.ndarray  # (M, *layer shape) float32


@dataclass(frozen=True)
class Reconstruction:
    """One reconstruction with what it came from."""

    image: int
    channel: int
    activation: float
    location: tuple[int, ...]
    receptive_field: tuple[int, int, int, int]
    pixels: np.ndarray  # (C, H, W) float32


def choose_channels(activation: np.ndarray, channels: list[int] | None, top_k: int) -> list[list[int]]:
    """Per image: the explicit ``channels``, or the ``top_k`` channels with the strongest activation."""
    count = activation.shape[1]
    if channels:
        bad = [c for c in channels if not 0 <= c < count]
        if bad:
            raise InvalidArgument(f"channel(s) {bad} out of range: this layer has {count} channels (0..{count - 1})")
        return [list(channels) for _ in range(activation.shape[0])]
    if top_k <= 0:
        raise InvalidArgument(f"top_k must be positive, got {top_k}")
    strength = activation.reshape(activation.shape[0], count, -1).max(axis=2)
    k = min(top_k, count)
    return [list(np.argsort(-row, kind="stable")[:k]) for row in strength]


def select(activation: np.ndarray, chosen: list[list[int]], mode: str) -> Selection:
    """Build the signals: only the strongest activation of the channel (``max``) or its whole map (``map``)."""
    if mode not in MODES:
        raise InvalidArgument(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    rows = [(i, c) for i, cs in enumerate(chosen) for c in cs]
    if len(rows) > MAX_ROWS:
        raise ResourceExhausted(f"{len(rows)} reconstructions asked for; at most {MAX_ROWS} per request")
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


def project(
    proj: projection.Projection, session, forward: dict[str, np.ndarray], signal: np.ndarray, image_index: np.ndarray, pixel_shape: tuple[int, ...],
) -> np.ndarray:
    """Send ``signal`` rows (M, *layer shape) down the projection graph in chunks of CHUNK_ROWS; row m
    belongs to image ``image_index[m]`` of the forward batch, whose tensors ``forward`` holds. (M, *pixel_shape)."""
    feeds = {projection.FORWARD_PREFIX + name: forward[name] for name in proj.forward_tensors}
    pixels = []
    for start in range(0, len(signal), CHUNK_ROWS):
        part = slice(start, start + CHUNK_ROWS)
        feeds[projection.SIGNAL] = signal[part]
        feeds[projection.IMAGE_INDEX] = image_index[part]
        pixels.append(session.run([projection.RECONSTRUCTION], feeds)[0])
    return np.concatenate(pixels) if pixels else np.zeros((0, *pixel_shape), np.float32)


def reconstruct(model: LoadedModel, batch: np.ndarray, layer: str, channels: list[int] | None, top_k: int, mode: str, method: str) -> list[Reconstruction]:
    """Forward once, select, project in chunks; one Reconstruction per (image, channel)."""
    proj, proj_session = model.projection(layer, method)
    computed = [name for name in proj.forward_tensors if name != model.input_name]  # the input is fed, not computed
    outputs = model.session.run([layer, *computed], {model.input_name: batch})
    activation, forward = outputs[0], {model.input_name: batch, **dict(zip(computed, outputs[1:]))}
    selection = select(activation, choose_channels(activation, channels, top_k), mode)
    pixels_all = project(proj, proj_session, forward, selection.signal, selection.image_index, batch.shape[1:])
    return [
        Reconstruction(
            int(selection.image_index[r]), int(selection.channel[r]), float(selection.value[r]), selection.location[r],
            model.receptive_fields.box(layer, selection.location[r]) if mode == "max" else (0, 0, *batch.shape[2:]),
            pixels_all[r],
        )
        for r in range(len(selection.channel))
    ]
