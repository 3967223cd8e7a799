"""Finished ``zfclient top`` reports read back for the explorer: every layer's channels with their
top-k (image, class, ranking value, boxes), each channel's class make-up, and the channel lists a
layer page shows, filtered by class make-up, sorted and paged. Pure: files and numbers, no gRPC."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from zfnet.errors import InvalidArgument, NotFound
from zfnet.wire.common import Box


@dataclass(frozen=True)
class Winner:
    """One of a channel's top-k images: the manifest's entry."""

    rank: int  # 1: the strongest
    index: int  # data-set index; the picture is images/<index>.png
    path: str
    label: str  # class name, "" when unknown
    value: float  # the ranking value (the map's max or mean)
    activation: float  # the strongest activation of the map, the one reconstructed
    location: tuple[int, ...]
    receptive_field: Box  # clipped to the image
    patch: Box  # the whole receptive field; it may leave the image

    @classmethod
    def of(cls, item: dict) -> Winner:
        return cls(
            item["rank"], item["index"], item["path"], item["class"] or "", item["value"], item["activation"],
            tuple(item["location"]), _box(item["receptive_field"]), _box(item["patch"]),
        )


def _box(values: list[int]) -> Box:
    top, left, bottom, right = values
    return top, left, bottom, right


@dataclass(frozen=True)
class Unit:
    """One channel of one layer in a report: its top-k, strongest first."""

    layer: str
    channel: int
    winners: list[Winner]
    tile: str | None  # the report's tile of it (strongest patch and reconstruction), relative to the folder

    @property
    def value(self) -> float:
        """The ranking value of its strongest image (-inf: no image read)."""
        return self.winners[0].value if self.winners else -math.inf

    def histogram(self) -> list[tuple[str, int]]:
        """The classes of its top-k, most frequent first (ties by name); "?" for images without a class."""
        counts = Counter(w.label or "?" for w in self.winners)
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))

    @property
    def purity(self) -> float:
        """The share of its top-k in its most frequent class (0: no image)."""
        return self.histogram()[0][1] / len(self.winners) if self.winners else 0.0

    def share(self, label: str) -> float:
        """The share of its top-k in class ``label``."""
        return sum(w.label == label for w in self.winners) / len(self.winners) if self.winners else 0.0


@dataclass(frozen=True)
class Report:
    """A finished top-k report folder (``manifest.json`` and ``images/``)."""

    key: str  # names it in URLs: the first 16 hex digits of its manifest's SHA-256 (a re-run changes it)
    folder: Path
    model: str  # display name of the model
    model_sha256: str
    data: str
    images_read: int
    k: int
    by: str
    method: str  # of the report's own reconstructions
    layers: dict[str, dict[int, Unit]]  # in the report's order, channels ascending

    @property
    def name(self) -> str:
        return self.folder.name

    def layer(self, layer: str) -> dict[int, Unit]:
        if layer not in self.layers:
            raise NotFound(f"report {self.name} has no layer {layer!r}; it covers {', '.join(self.layers)}")
        return self.layers[layer]

    def unit(self, layer: str, channel: int) -> Unit:
        units = self.layer(layer)
        if channel not in units:
            raise NotFound(f"report {self.name} has no channel {channel} of layer {layer}; it tracked {_ranges(list(units))}")
        return units[channel]

    def image(self, index: int) -> Path:
        """The picture of data-set image ``index`` (one of the winners), as the model saw it."""
        path = self.folder / "images" / f"{index}.png"
        if not path.is_file():
            raise NotFound(f"report {self.name} holds no image {index}")
        return path

    def summary(self) -> dict:
        """What the pages show of the report as a whole."""
        return {
            "key": self.key, "name": self.name, "model": self.model, "model_sha256": self.model_sha256, "data": self.data,
            "images_read": self.images_read, "k": self.k, "by": self.by, "method": self.method,
            "layers": {layer: len(units) for layer, units in self.layers.items()},
        }


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) or "none"


def load(folder: Path) -> Report:
    """Read a report folder; a clear error for anything that is not a finished ``zfclient top`` report."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise NotFound(f"{folder} is not a finished top report: it has no manifest.json (zfclient top --out {folder} writes one)")
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
        layers = {
            layer: {
                int(channel): Unit(layer, int(channel), [Winner.of(item) for item in data["top"]], data.get("tile"))
                for channel, data in sorted(info["channels"].items(), key=lambda item: int(item[0]))
            }
            for layer, info in manifest["layers"].items()
        }
        return Report(
            hashlib.sha256(raw).hexdigest()[:16], folder, manifest["model"], manifest["model_sha256"], manifest["data"],
            manifest["images_read"], manifest["k"], manifest["by"], manifest["method"], layers,
        )
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidArgument(f"{manifest_path} is not a top report's manifest ({type(err).__name__}: {err})") from None


# How a layer page orders its channels: name -> sort key of a unit
SORTS: dict[str, Callable[[Unit], tuple]] = {
    "channel": lambda u: (u.channel,),
    "value": lambda u: (-u.value, u.channel),  # strongest activation first
    "purity": lambda u: (-u.purity, -u.value, u.channel),  # most single-class top-k first
}


def select(units: Iterable[Unit], sort: str = "channel", label: str = "", share: float = 0.5) -> list[Unit]:
    """The channels a layer page lists: those whose top-k holds at least ``share`` of class ``label``
    (every channel when no label is given), in the order ``sort`` names (a key of :data:`SORTS`)."""
    if sort not in SORTS:
        raise InvalidArgument(f"unknown sort {sort!r}; choose one of {', '.join(SORTS)}")
    if not 0 <= share <= 1:
        raise InvalidArgument(f"share must be between 0 and 1, got {share}")
    kept = [u for u in units if not label or (u.winners and u.share(label) >= share)]
    return sorted(kept, key=SORTS[sort])


@dataclass(frozen=True)
class Page:
    """One page of a channel list."""

    units: list[Unit]
    number: int  # 1-based
    pages: int
    total: int  # channels in the whole list
    first: int  # position of units[0] in the whole list, 0-based


def page_of(units: list[Unit], number: int, per_page: int) -> Page:
    """Page ``number`` (1-based) of ``units``, ``per_page`` to a page; past the end: the last page."""
    if per_page <= 0 or number <= 0:
        raise InvalidArgument(f"page and page size must be positive, got page {number} of {per_page}")
    pages = max(1, math.ceil(len(units) / per_page))
    number = min(number, pages)
    first = (number - 1) * per_page
    return Page(units[first : first + per_page], number, pages, len(units), first)
