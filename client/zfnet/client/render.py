"""Pictures people look at: reconstructions normalised for display as in the paper, labelled grids."""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from zfnet.client.names import safe_name  # noqa: E402
from zfnet.errors import InvalidArgument  # noqa: E402
from zfnet.wire.deconv import DeconvResult, Reconstruction  # noqa: E402


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` (its folder made), close it, return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def for_display(pixels: np.ndarray) -> np.ndarray:
    """(C, H, W) reconstruction -> (H, W, 3) uint8: zero at mid-grey, scaled by the largest magnitude
    (Zeiler & Fergus show each reconstruction contrast-normalised on its own)."""
    rgb = np.moveaxis(pixels, 0, -1) if pixels.shape[0] in (1, 3) else pixels
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    peak = float(np.abs(rgb).max())
    shown = 0.5 + rgb / (2 * peak) if peak > 0 else np.full_like(rgb, 0.5)
    return (np.clip(shown, 0, 1) * 255).round().astype(np.uint8)


def save_png(rgb: np.ndarray, path: Path, scale: int = 1) -> Path:
    """Write an (H, W, 3) uint8 image, enlarged ``scale`` times with nearest-neighbour pixels."""
    image = Image.fromarray(rgb)
    if scale > 1:
        image = image.resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, compress_level=PNG_COMPRESSION)
    return path


def crop(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W, ...) array cut to a (top, left, bottom, right) box; the whole array if the box is empty."""
    top, left, bottom, right = box
    return array[top:bottom, left:right] if bottom > top and right > left else array


PNG_COMPRESSION = 1  # zlib level of the PNGs drawn with Pillow: 5x faster than the default 6, files about 15% larger
FILTER_CANVAS = 1000  # pixels: about the width of a filter sheet
GRID_CELL = 96  # pixels: the side of each patch and reconstruction in a deconv grid
GRID_TEXT = 16  # pixels: a line of text
GRID_PAD = 8  # pixels between pictures


def _fit(picture: np.ndarray, side: int) -> Image.Image:
    """An (H, W, 3) picture enlarged (or reduced) with square pixels so that its longer side is ``side``."""
    height, width = picture.shape[:2]
    factor = side / max(height, width, 1)
    return Image.fromarray(picture).resize((max(1, round(width * factor)), max(1, round(height * factor))), Image.Resampling.NEAREST)


def deconv_grid(image: np.ndarray, title: str, items: list[Reconstruction], path: Path, columns: int = 3) -> Path:
    """One labelled picture per image (drawn with Pillow): for each channel, the input patch under its
    receptive field beside the reconstruction of the same patch, labelled with the channel and the
    activation that was projected back; the whole input on the left."""
    font = ImageFont.load_default(size=12)
    cell, text, pad = GRID_CELL, GRID_TEXT, GRID_PAD
    rows = max(1, -(-len(items) // columns))
    caption = "each pair: the input patch under the receptive field (ch = channel), its reconstruction (act = the activation projected)"
    left = 2 * cell + pad
    width = max(pad + left + columns * (2 * cell + 2 * pad) + pad, pad * 2 + int(max(font.getlength(title), font.getlength(caption))))
    top = 2 * text + pad
    canvas = Image.new("RGB", (width, top + rows * (text + cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), title, fill="black", font=font)
    draw.text((pad, 2 + text), caption, fill=(90, 90, 90), font=font)
    draw.text((pad, top), "input", fill="black", font=font)
    canvas.paste(_fit(image, 2 * cell), (pad, top + text))
    for k, item in enumerate(items):
        r, c = divmod(k, columns)
        x, y = pad + left + c * (2 * cell + 2 * pad), top + r * (text + cell + pad)
        patch = crop(image, item.receptive_field)
        recon = crop(for_display(item.pixels), item.receptive_field)
        for dx, picture, label in ((0, patch, f"ch {item.channel}"), (cell + pad // 2, recon, f"act {item.activation:.3g}")):
            draw.text((x + dx, y), label, fill="black", font=font)
            canvas.paste(_fit(picture, cell), (x + dx, y + text))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, compress_level=PNG_COMPRESSION)
    return path


def grid_path(out: Path, name: str, result: DeconvResult) -> Path:
    """Where one image's grid goes: its name carries the layer, the method and the mode."""
    return out / f"{name}_{safe_name(result.layer)}_{result.method}_{result.mode}_grid.png"


def deconv_files(result: DeconvResult, images: list[np.ndarray] | None, names: list[str], out: Path, raw: bool = False) -> dict[Path, Callable[[Path], Path]]:
    """What :func:`write_deconv` writes, by path, each with the function that writes it: every
    reconstruction as a PNG (and ``.npy`` when ``raw``) and one labelled grid per image; without
    ``images`` (no pictures), the ``.npy`` arrays only. Callers check the paths before any is written."""
    files: dict[Path, Callable[[Path], Path]] = {}
    layer = safe_name(result.layer)
    for index, name in enumerate(names):
        items = [r for r in result.reconstructions if r.image == index]
        for item in items:
            stem = out / name / f"{layer}_ch{item.channel:04d}_{result.method}_{result.mode}"
            if images is not None:
                files[stem.with_suffix(".png")] = functools.partial(save_png, for_display(item.pixels), scale=4)
            if raw or images is None:
                files[stem.with_suffix(".npy")] = functools.partial(_save_array, item.pixels)
        if images is not None:
            title = f"{name} | layer {result.layer} | {result.method}, {result.mode} | input patch and reconstruction per channel"
            files[grid_path(out, name, result)] = functools.partial(deconv_grid, images[index], title, items)
    return files


def _save_array(values: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, values)
    return path


def write_deconv(files: dict[Path, Callable[[Path], Path]], pool: Executor) -> list[Future[Path]]:
    """Write what :func:`deconv_files` planned on ``pool`` (Pillow encodes without the GIL, so the
    pictures of one batch are drawn while the server computes the next); the futures of the paths."""
    return [pool.submit(write, path) for path, write in files.items()]


def feature_map_tiles(activation: np.ndarray, title: str, path: Path, columns: int = 16) -> Path:
    """A layer's feature maps for one image, (C, H, W), as a labelled grid; each map scaled to its own range."""
    channels = activation.shape[0]
    rows = -(-channels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.75, rows * 0.8 + 0.5), dpi=110, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < channels:
            fmap = activation[k]
            ax.imshow(fmap, cmap="viridis", vmin=float(fmap.min()), vmax=float(fmap.max()) or 1.0, interpolation="nearest")
            ax.set_title(str(k), fontsize=6, pad=1)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def probe_plot(results: list, title: str, path: Path) -> Path:
    """Probe accuracy against layer (mean +- std over folds), one line per features folder, the raw
    pixels at x = 0 and as a dotted line across; ``results`` are :class:`zfnet.client.probe.ProbeResult` s."""
    fig, ax = plt.subplots(figsize=(7.5, 4.4), dpi=110)
    ticks: dict[int, str] = {0: "pixels"}
    for k, result in enumerate(results):
        rows = [r for r in result.layers if r.name != "pixels"]
        numbered = all(r.number for r in rows)
        xs = [0] + [r.number if numbered else i + 1 for i, r in enumerate(rows)]
        shown = [result.pixels] + rows
        color = f"C{k}"
        label = f"{result.model} on {result.data} ({result.probed_classes} classes)"
        ax.errorbar(xs, [100 * r.mean for r in shown], yerr=[100 * r.std for r in shown], marker="o", capsize=3, color=color, label=label)
        ax.axhline(100 * result.pixels.mean, color=color, linestyle=":", linewidth=1)
        for x, r in zip(xs[1:], rows):
            ticks.setdefault(x, f"{r.number}" if numbered else r.name)
    ax.set_xticks(sorted(ticks), [ticks[x] for x in sorted(ticks)])
    ax.set_xlabel("layer (dotted: the raw-pixel baseline of the same data)")
    ax.set_ylabel("test accuracy, mean per class (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


NORMALISE = ("sheet", "filter")


def filter_labels(weights: np.ndarray, limit: int) -> list[str]:
    """The labels of the tiles :func:`filter_tiles` shows, in its order: a first (3-input) layer's
    output channel ("7"), any other's (output, input) channel pair ("7,2"); at most ``limit``."""
    out_channels, in_channels = weights.shape[:2]
    if in_channels == 3:
        return [str(o) for o in range(min(limit, out_channels))]
    return [f"{k // in_channels},{k % in_channels}" for k in range(min(limit, out_channels * in_channels))]


def filter_tiles(weights: np.ndarray, limit: int = 1024, normalise: str = "sheet", bgr: bool = False, pad: int = 1) -> tuple[np.ndarray, str]:
    """A convolution's filters (out, in, kh, kw) tiled like the classic Caffe ``show_feature`` snippet:
    a first layer (3 input channels) as RGB tiles, one per output channel; any other as grey tiles, one
    per (output, input) pair, the first ``limit`` of them. Values are scaled to [0, 1] over the whole
    sheet (``normalise="sheet"``, what the snippet does) or per tile (``"filter"``); tiles sit in a
    square grid with ``pad`` pixels of 0 after each. Returns the image, (H, W) or (H, W, 3), and what it shows."""
    if weights.ndim != 4:
        raise InvalidArgument(f"filters to tile must be (out, in, kh, kw); these are {list(weights.shape)} (a fully connected layer?)")
    if normalise not in NORMALISE:
        raise InvalidArgument(f"unknown normalisation {normalise!r}; choose one of {', '.join(NORMALISE)}")
    if limit <= 0:
        raise InvalidArgument(f"the limit must be positive, got {limit}")
    out_channels, in_channels, kh, kw = weights.shape
    if in_channels == 3:
        tiles = weights.transpose(0, 2, 3, 1)[..., ::-1] if bgr else weights.transpose(0, 2, 3, 1)
        shown = f"{min(limit, out_channels)} of {out_channels} {kh}x{kw} RGB filters"
    else:
        tiles = weights.reshape(out_channels * in_channels, kh, kw)
        shown = f"{'first ' if limit < len(tiles) else ''}{min(limit, len(tiles)):,} of {len(tiles):,} (output, input) {kh}x{kw} filters, labelled output,input"
    data = np.array(tiles[: len(filter_labels(weights, limit))], dtype=np.float64)
    axes = tuple(range(1, data.ndim))
    low = data.min(axis=axes, keepdims=True) if normalise == "filter" else data.min()
    data -= low
    high = data.max(axis=axes, keepdims=True) if normalise == "filter" else data.max()
    data /= np.where(high > 0, high, 1.0)
    n = int(np.ceil(np.sqrt(len(data))))
    padding = ((0, n * n - len(data)), (0, pad), (0, pad)) + ((0, 0),) * (data.ndim - 3)
    data = np.pad(data, padding, mode="constant", constant_values=0)
    data = data.reshape(n, n, *data.shape[1:]).transpose((0, 2, 1, 3) + tuple(range(4, data.ndim + 1)))
    return data.reshape((n * data.shape[1], n * data.shape[3]) + data.shape[4:]), shown


def filters_figure(tiles: np.ndarray, labels: list[str], kernel: tuple[int, int], title: str, path: Path, pad: int = 1) -> Path:
    """The sheet of :func:`filter_tiles` (filters of ``kernel`` (kh, kw), ``pad`` pixels after each)
    drawn with Pillow: every filter enlarged with square pixels to fill a canvas about ``FILTER_CANVAS``
    pixels wide, its label (:func:`filter_labels`) above it, the title wrapped over the canvas."""
    count = len(labels)
    kh, kw = kernel
    side = tiles.shape[1] // (kw + pad)  # filters per row of the sheet
    scale = max(1, min(24, FILTER_CANVAS // (side * kw)))
    font = ImageFont.load_default(size=10)
    gap, label = 4, GRID_TEXT - 4
    cell_w, cell_h = kw * scale + gap, kh * scale + label
    width = gap + side * cell_w
    lines = textwrap.wrap(title, width=max(20, int(width / 6.5)))
    head = gap + GRID_TEXT * len(lines)
    rows = -(-count // side)
    canvas = Image.new("RGB", (width, head + rows * cell_h + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((gap, 2 + GRID_TEXT * k), line, fill="black", font=font)
    rgb = np.repeat(tiles[..., None], 3, axis=-1) if tiles.ndim == 2 else tiles
    pixels = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    small = ImageFont.load_default(size=9)
    for k in range(count):
        r, c = divmod(k, side)
        tile = pixels[r * (kh + pad) : r * (kh + pad) + kh, c * (kw + pad) : c * (kw + pad) + kw]
        x, y = gap + c * cell_w, head + r * cell_h
        draw.text((x, y), labels[k], fill=(70, 70, 70), font=small)
        canvas.paste(Image.fromarray(tile).resize((kw * scale, kh * scale), Image.Resampling.NEAREST), (x, y + label))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, compress_level=PNG_COMPRESSION)
    return path
