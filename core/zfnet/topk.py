"""Running top-k activations per feature map over a data set (Zeiler & Fergus 2013, Fig. 2).

A :class:`TopK` keeps, for every tracked channel of every layer, the ``k`` images of a data set that
excite the channel most: the ranking value (the channel's spatial maximum, ``by="max"`` as in the
paper, or its spatial mean, ``by="mean"``), the strongest activation of the map and its location,
and the image's data-set index. The order is larger value first, ties to the lower data-set index;
an image appears at most once per channel. Memory is ``k x channels`` entries per layer, whatever the
size of the data set.

The state remembers which data-set indices it has read (``covered``) and which images it had to
skip. Two states over disjoint parts of the same data set merge (:meth:`TopK.merge`) into exactly
the state one pass over both would give; the merge is associative and commutative. That is how a
data set is split over processes or machines (shards are index ranges) and how an interrupted job
resumes (read the rest, merge). States save to and load from ``.npz``.

Pure numpy, no gRPC::

    state = TopK.empty(model="sha256...", data="dataset:cifar10/test", size=10000, k=9, by="max",
                       layers={"relu4": (np.arange(128), 2)})
    state.observe({"relu4": activations}, indices)   # (n, 128, 8, 8) activations of images ``indices``
    state.cover(0, 64)                               # those images were indices [0, 64)
    whole = state.merge(other_shard)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from zfnet.errors import InvalidArgument, NotFound
from zfnet.wire.common import Skipped

BY = ("max", "mean")
MAX_SKIPPED_NAMED = 1000  # skipped images named in a state (the lowest indices); all are counted
EMPTY = -1  # data-set index of an empty slot (fewer than k images seen)
FORMAT = 1  # version of the .npz layout


@dataclass
class LayerTop:
    """The top-k of one layer: one row per tracked channel, one column per rank."""

    channels: np.ndarray  # (C,) int64: the layer's channel numbers that are tracked
    values: np.ndarray  # (C, k) float32: ranking value (spatial max or mean); -inf where empty
    activations: np.ndarray  # (C, k) float32: the map's strongest activation (what is reconstructed)
    indices: np.ndarray  # (C, k) int64: data-set index; EMPTY where empty
    locations: np.ndarray  # (C, k, S) int64: spatial position of that activation (S = 0 for fully connected)

    @classmethod
    def empty(cls, channels: np.ndarray, k: int, spatial_rank: int) -> LayerTop:
        n = len(channels)
        return cls(
            np.asarray(channels, np.int64), np.full((n, k), -np.inf, np.float32), np.zeros((n, k), np.float32),
            np.full((n, k), EMPTY, np.int64), np.zeros((n, k, spatial_rank), np.int64),
        )

    def copy(self) -> LayerTop:
        return LayerTop(*(a.copy() for a in (self.channels, self.values, self.activations, self.indices, self.locations)))

    def same_layout(self, other: LayerTop) -> bool:
        return np.array_equal(self.channels, other.channels) and self.values.shape == other.values.shape and self.locations.shape == other.locations.shape

    def add(self, values: np.ndarray, activations: np.ndarray, indices: np.ndarray, locations: np.ndarray) -> None:
        """Take candidates (C, m) (and (C, m, S) locations) into the top-k, in place. Only the rows
        where a candidate can enter are sorted again (after the first batches of a scan, a few)."""
        rows = np.flatnonzero(self._may_enter(values)) if values.shape[1] else np.zeros(0, np.int64)
        if len(rows) == len(self.values):
            self._sort_in(values, activations, indices, locations)
        elif len(rows):
            part = LayerTop(self.channels[rows], self.values[rows], self.activations[rows], self.indices[rows], self.locations[rows])
            part._sort_in(values[rows], activations[rows], indices[rows], locations[rows])
            self.values[rows], self.activations[rows], self.indices[rows], self.locations[rows] = part.values, part.activations, part.indices, part.locations

    def _may_enter(self, values: np.ndarray) -> np.ndarray:
        """(C,) bool: rows with an empty slot or a NaN last (NaN ranks last), or a candidate that
        reaches the last value (a tie enters by the lower data-set index); a NaN candidate never
        passes a number."""
        last = self.values[:, -1]
        return (self.indices[:, -1] == EMPTY) | np.isnan(last) | (np.fmax.reduce(values, axis=1) >= last)

    def _sort_in(self, values: np.ndarray, activations: np.ndarray, indices: np.ndarray, locations: np.ndarray) -> None:
        """Every row's k best of its entries and the candidates."""
        k = self.values.shape[1]
        all_values = np.concatenate([self.values, values], axis=1)
        all_indices = np.concatenate([self.indices, indices], axis=1)
        empty = all_indices == EMPTY
        # primary key: filled slots first; then larger value (NaN last); then the lower data-set index
        order = np.lexsort((np.where(empty, np.iinfo(np.int64).max, all_indices), -all_values, empty), axis=1)[:, :k]
        self.values = np.take_along_axis(all_values, order, axis=1)
        self.indices = np.take_along_axis(all_indices, order, axis=1)
        self.activations = np.take_along_axis(np.concatenate([self.activations, activations], axis=1), order, axis=1)
        self.locations = np.take_along_axis(np.concatenate([self.locations, locations], axis=1), order[..., None], axis=1)


def reduce(activation: np.ndarray, channels: np.ndarray, by: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and channel: the ranking value, the strongest activation and its location.

    ``activation`` is (n, C_layer, *spatial); returns (n, C), (n, C) float32 and (n, C, S) int64.
    The location is the first maximum in C order (as ``np.argmax``); a fully connected unit has none.
    """
    if by not in BY:
        raise InvalidArgument(f"unknown ranking {by!r}; choose one of {', '.join(BY)}")
    every = len(channels) == activation.shape[1] and np.array_equal(channels, np.arange(activation.shape[1]))
    picked = activation if every else activation[:, channels]  # (every channel: no copy)
    n, c, spatial = picked.shape[0], picked.shape[1], picked.shape[2:]
    flat = picked.reshape(n, c, -1)
    where = flat.argmax(axis=2)
    peak = np.take_along_axis(flat, where[..., None], axis=2)[..., 0].astype(np.float32)
    value = peak if by == "max" else flat.mean(axis=2, dtype=np.float64).astype(np.float32)
    location = np.stack(np.unravel_index(where, spatial), axis=-1) if spatial else np.zeros((n, c, 0), np.int64)
    return value, peak, location.astype(np.int64)


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, stop in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], stop))
        else:
            out.append((start, stop))
    return out


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> tuple[int, int] | None:
    for s1, e1 in a:
        for s2, e2 in b:
            if max(s1, s2) < min(e1, e2):
                return max(s1, s2), min(e1, e2)
    return None


@dataclass
class TopK:
    """The running top-k of several layers over one data set, for one model (see the module doc)."""

    model: str  # SHA-256 of the model
    data: str  # which data set: "dataset:<name>" (on the server) or "streamed" (sent by a client)
    size: int  # images in the whole data set
    k: int
    by: str  # "max" or "mean"
    layers: dict[str, LayerTop]
    covered: list[tuple[int, int]] = field(default_factory=list)  # data-set index ranges read, sorted, disjoint
    skipped: list[Skipped] = field(default_factory=list)  # the first MAX_SKIPPED_NAMED by index
    skipped_count: int = 0

    @classmethod
    def empty(cls, model: str, data: str, size: int, k: int, by: str, layers: dict[str, tuple[np.ndarray, int]]) -> TopK:
        """A state that has seen nothing; ``layers`` maps a layer to (tracked channels, spatial rank)."""
        if k <= 0:
            raise InvalidArgument(f"k must be positive, got {k}")
        if by not in BY:
            raise InvalidArgument(f"unknown ranking {by!r}; choose one of {', '.join(BY)}")
        if not layers:
            raise InvalidArgument("no layers to track")
        return cls(model, data, size, k, by, {name: LayerTop.empty(ch, k, rank) for name, (ch, rank) in layers.items()})

    def check(self) -> TopK:
        """Refuse a state whose arrays do not fit together (one read from a file or the wire)."""
        if self.k <= 0 or self.by not in BY or not self.layers:
            raise InvalidArgument(f"malformed top-k state: k={self.k}, by={self.by!r}, {len(self.layers)} layer(s)")
        for name, top in self.layers.items():
            c = top.channels.shape[0] if top.channels.ndim == 1 else -1
            shapes = [a.shape for a in (top.values, top.activations, top.indices)]
            if c < 0 or any(s != (c, self.k) for s in shapes) or top.locations.ndim != 3 or top.locations.shape[:2] != (c, self.k):
                raise InvalidArgument(f"malformed top-k state: the arrays of layer {name!r} do not fit {c} channels x k={self.k}")
            if top.indices.dtype != np.int64 or top.locations.dtype != np.int64 or top.values.dtype != np.float32:
                raise InvalidArgument(f"malformed top-k state: layer {name!r} has arrays of the wrong dtype")
        if any(not 0 <= s < e <= self.size for s, e in self.covered) or _coalesce(self.covered) != self.covered:
            raise InvalidArgument(f"malformed top-k state: covered ranges {self.covered} do not fit {self.size} images")
        return self

    # -- reading images ---------------------------------------------------------------------
    def observe(self, activations: dict[str, np.ndarray], indices: np.ndarray) -> None:
        """Take one batch: ``activations[layer]`` (n, C_layer, *spatial) of the images at data-set ``indices``."""
        indices = np.asarray(indices, np.int64)
        if self.covered and len(indices):
            starts, stops = np.asarray(self.covered).T
            slot = np.searchsorted(starts, indices, side="right") - 1
            seen = indices[(slot >= 0) & (indices < stops[np.maximum(slot, 0)])]
            if len(seen):
                raise InvalidArgument(f"image {seen[0]} was read already (each image counts once per channel)")
        for name, top in self.layers.items():
            value, peak, location = reduce(activations[name], top.channels, self.by)
            top.add(value.T, peak.T, np.broadcast_to(indices, value.T.shape), location.transpose(1, 0, 2))

    def cover(self, start: int, stop: int, skipped: Sequence[Skipped] = ()) -> None:
        """Record that indices ``[start, stop)`` were read (the images of ``skipped`` could not be)."""
        if not 0 <= start <= stop <= self.size:
            raise InvalidArgument(f"range [{start}, {stop}) is outside the data set's {self.size} images")
        clash = _overlap(self.covered, [(start, stop)])
        if clash:
            raise InvalidArgument(f"indices [{clash[0]}, {clash[1]}) were read already")
        self.covered = _coalesce([*self.covered, (start, stop)])
        self._skip(list(skipped), len(skipped))

    def _skip(self, more: list[Skipped], count: int) -> None:
        self.skipped = sorted([*self.skipped, *more], key=lambda s: s.index)[:MAX_SKIPPED_NAMED]
        self.skipped_count += count

    # -- combining ----------------------------------------------------------------------------
    def compatible(self, other: TopK) -> str | None:
        """Why two states cannot be merged, or None."""
        for what in ("model", "data", "size", "k", "by"):
            if getattr(self, what) != getattr(other, what):
                return f"they differ in {what} ({getattr(self, what)!r} and {getattr(other, what)!r})"
        if list(self.layers) != list(other.layers):
            return f"they track different layers ({', '.join(self.layers)} and {', '.join(other.layers)})"
        for name, top in self.layers.items():
            if not top.same_layout(other.layers[name]):
                return f"they track different channels of layer {name!r}"
        return None

    def merge(self, other: TopK) -> TopK:
        """The state of one pass over both states' images (their covered ranges must not overlap)."""
        reason = self.compatible(other)
        if reason:
            raise InvalidArgument(f"cannot merge these top-k states: {reason}")
        clash = _overlap(self.covered, other.covered)
        if clash:
            raise InvalidArgument(f"cannot merge these top-k states: both read indices [{clash[0]}, {clash[1]}) (shards must not overlap)")
        merged = self.copy()
        for name, top in merged.layers.items():
            theirs = other.layers[name]
            top.add(theirs.values, theirs.activations, theirs.indices, theirs.locations)
        merged.covered = _coalesce([*self.covered, *other.covered])
        merged._skip(other.skipped, other.skipped_count)
        return merged

    def copy(self) -> TopK:
        return replace(self, layers={n: t.copy() for n, t in self.layers.items()}, covered=list(self.covered), skipped=list(self.skipped))

    def remaining(self, start: int = 0, stop: int = 0) -> list[tuple[int, int]]:
        """The ranges of ``[start, stop)`` (0 = the end) not read yet."""
        stop = stop or self.size
        out, position = [], start
        for s, e in self.covered:
            if e <= position or s >= stop:
                continue
            if s > position:
                out.append((position, s))
            position = max(position, e)
        if position < stop:
            out.append((position, stop))
        return out

    @property
    def images_read(self) -> int:
        return sum(e - s for s, e in self.covered)

    def winner_indices(self) -> np.ndarray:
        """Sorted data-set indices of every image in any top-k: what a second pass must read."""
        found = [t.indices[t.indices != EMPTY] for t in self.layers.values()]
        return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the state as ``.npz`` (atomically: a half-written file never replaces a good one)."""
        path = Path(path)
        meta = {
            "format": FORMAT, "model": self.model, "data": self.data, "size": self.size, "k": self.k, "by": self.by,
            "layers": list(self.layers), "covered": self.covered, "skipped_count": self.skipped_count,
            "skipped": [[s.index, s.path, s.reason] for s in self.skipped],
        }
        arrays = {"meta": np.asarray(json.dumps(meta))}
        for i, top in enumerate(self.layers.values()):
            for what in ("channels", "values", "activations", "indices", "locations"):
                arrays[f"layer{i}.{what}"] = getattr(top, what)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".writing")
        with open(partial, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)  # numbers and the JSON text only
        partial.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TopK:
        """Read a state written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise NotFound(f"no top-k state at {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("format") != FORMAT:
                    raise InvalidArgument(f"{path} is a top-k state of format {meta.get('format')}; this zfnet reads format {FORMAT}")
                layers = {
                    name: LayerTop(*(data[f"layer{i}.{what}"] for what in ("channels", "values", "activations", "indices", "locations")))
                    for i, name in enumerate(meta["layers"])
                }
        except (OSError, ValueError, KeyError) as err:
            raise InvalidArgument(f"{path} is not a zfnet top-k state ({err})") from None
        return cls(
            meta["model"], meta["data"], meta["size"], meta["k"], meta["by"], layers, [tuple(r) for r in meta["covered"]],
            [Skipped(*s) for s in meta["skipped"]], meta["skipped_count"],
        ).check()
