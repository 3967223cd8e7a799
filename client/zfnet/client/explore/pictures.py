"""The explorer's pictures, as PNG bytes: a unit's patches and reconstructions in the top report's
grids, a layer's feature maps as one sheet, a first layer's filters, the perturbation figures. The
drawing is the report's and the CLI's (:mod:`zfnet.client.report`, :mod:`zfnet.client.render`,
:mod:`zfnet.client.plots`); this module only cuts, tiles and encodes."""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from zfnet.client import render, report
from zfnet.errors import InvalidArgument
from zfnet.wire.common import Box

GAP = 1  # pixels between feature maps on a sheet
MAP_PIXELS = 40  # a feature map is enlarged by a whole factor to about this many pixels
FILTER_SCALE = 6  # a filter's pixels, enlarged
VIRIDIS = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def png(picture: Image.Image | np.ndarray) -> bytes:
    """A picture ((H, W, 3) uint8 or a PIL image) as PNG bytes."""
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def figure(draw: Callable[[Path], Path]) -> bytes:
    """A figure that a :mod:`zfnet.client.plots` function writes to a file, as PNG bytes."""
    with tempfile.TemporaryDirectory(prefix="zfnet-explore-") as folder:
        return draw(Path(folder) / "figure.png").read_bytes()


def patches(images: list[np.ndarray], boxes: list[Box], k: int) -> bytes:
    """The input patches under ``boxes`` (one per (H, W, 3) image, grey outside it) in the report's
    k-grid, each enlarged to about report.TILE pixels."""
    return png(report.grid([report.padded_crop(rgb, box) for rgb, box in zip(images, boxes)], k, _cell(boxes)))


def reconstructions(pixels: list[np.ndarray], boxes: list[Box], k: int) -> bytes:
    """Reconstructions (C, H, W) cut to ``boxes``, zero at mid-grey, in the same grid as :func:`patches`."""
    return png(report.grid([report.padded_crop(render.for_display(p), box) for p, box in zip(pixels, boxes)], k, _cell(boxes)))


def _cell(boxes: list[Box]) -> tuple[int, int]:
    return report.enlarged(boxes[0]) if boxes else (report.TILE, report.TILE)


def tile(rgb: np.ndarray, pixels: np.ndarray, box: Box) -> bytes:
    """A channel at a glance, as the report draws it: a patch beside its reconstruction."""
    return png(report.pair(report.padded_crop(rgb, box), report.padded_crop(render.for_display(pixels), box)))


def whole(pixels: np.ndarray) -> bytes:
    """A reconstruction (C, H, W) over the whole input, zero at mid-grey."""
    return png(render.for_display(pixels))


@dataclass(frozen=True)
class MapSheet:
    """A layer's feature maps for one image on one sheet, row by row: where map ``c`` sits is
    (c // columns, c % columns) x (cell + GAP)."""

    picture: bytes  # PNG
    columns: int
    cell: tuple[int, int]  # (height, width) of one map on the sheet
    gap: int


def feature_maps(activation: np.ndarray) -> MapSheet:
    """One image's activation of a layer, (C, H, W) or (C,) for units, as viridis maps each scaled
    to its own range (a constant map is dark), enlarged by a whole factor, GAP white pixels apart."""
    if activation.ndim not in (1, 2, 3):
        raise InvalidArgument(f"feature maps are (C, H, W), (C, W) or (C,); this activation is {list(activation.shape)}")
    maps = activation.reshape(activation.shape[0], *([1] * (3 - activation.ndim)), *activation.shape[1:])
    channels, height, width = maps.shape
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    levels = np.where(span > 0, (maps - low) / np.where(span > 0, span, 1) * 255, 0).round().astype(np.uint8)
    scale = max(1, round(MAP_PIXELS / max(height, width)))
    cells = VIRIDIS[levels].repeat(scale, axis=1).repeat(scale, axis=2)  # (C, H*s, W*s, 3)
    columns = math.ceil(math.sqrt(channels * 1.6))  # wider than tall
    rows = math.ceil(channels / columns)
    ch, cw = height * scale, width * scale
    sheet = np.full((rows * (ch + GAP) - GAP, columns * (cw + GAP) - GAP, 3), 255, np.uint8)
    for c in range(channels):
        r, q = divmod(c, columns)
        sheet[r * (ch + GAP) : r * (ch + GAP) + ch, q * (cw + GAP) : q * (cw + GAP) + cw] = cells[c]
    return MapSheet(png(sheet), columns, (ch, cw), GAP)


def filters(weights: np.ndarray, bgr: bool, normalise: str = "sheet") -> bytes:
    """Filters (out, in, kh, kw) tiled as ``zfclient filters`` tiles them (RGB for a first layer), enlarged."""
    tiles, _ = render.filter_tiles(weights, normalise=normalise, bgr=bgr)
    picture = Image.fromarray((tiles * 255).round().astype(np.uint8))
    return png(picture.resize((picture.width * FILTER_SCALE, picture.height * FILTER_SCALE), Image.Resampling.NEAREST))
