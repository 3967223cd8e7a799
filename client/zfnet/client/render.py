"""Pictures people look at: reconstructions normalised for display as in the paper, labelled grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

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
    image.save(path)
    return path


def crop(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W, ...) array cut to a (top, left, bottom, right) box; the whole array if the box is empty."""
    top, left, bottom, right = box
    return array[top:bottom, left:right] if bottom > top and right > left else array


def deconv_grid(image: np.ndarray, title: str, items: list[Reconstruction], path: Path, columns: int = 3) -> Path:
    """One labelled figure per image: for each channel, the input patch under the receptive field
    beside the reconstruction of the same patch; the whole input on the left."""
    rows = max(1, -(-len(items) // columns))
    fig = plt.figure(figsize=(2.2 + 2.6 * columns, 1.45 * rows + 0.7), dpi=110)
    grid = fig.add_gridspec(rows, 1 + 2 * columns, width_ratios=[1.6] + [1, 1] * columns, wspace=0.08, hspace=0.35)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(image, interpolation="nearest")
    ax.set_title("input", fontsize=8)
    ax.axis("off")
    for k, item in enumerate(items):
        r, c = divmod(k, columns)
        patch = crop(image, item.receptive_field)
        recon = crop(for_display(item.pixels), item.receptive_field)
        for offset, picture, label in ((1, patch, f"ch {item.channel}"), (2, recon, f"{item.activation:.3g}")):
            ax = fig.add_subplot(grid[r, 1 + 2 * c + offset - 1])
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(label, fontsize=7, pad=2)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def write_deconv(result: DeconvResult, images: list[np.ndarray], names: list[str], out: Path, raw: bool = False) -> list[Path]:
    """Every reconstruction as a PNG (and ``.npy`` when ``raw``), and one labelled grid per image."""
    written: list[Path] = []
    for index, (image, name) in enumerate(zip(images, names)):
        items = [r for r in result.reconstructions if r.image == index]
        folder = out / name
        layer = safe_name(result.layer)
        for item in items:
            stem = f"{layer}_ch{item.channel:04d}_{result.method}_{result.mode}"
            written.append(save_png(for_display(item.pixels), folder / f"{stem}.png", scale=4))
            if raw:
                np.save(folder / f"{stem}.npy", item.pixels)
                written.append(folder / f"{stem}.npy")
        title = f"{name} | layer {result.layer} | {result.method}, {result.mode} | input patch and reconstruction per channel"
        written.append(deconv_grid(image, title, items, out / f"{name}_{layer}_{result.method}_grid.png"))
    return written


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
        shown = f"{'first ' if limit < len(tiles) else ''}{min(limit, len(tiles)):,} of {len(tiles):,} (output, input) {kh}x{kw} filters"
    data = np.array(tiles[:limit], dtype=np.float64)
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


def filters_figure(tiles: np.ndarray, title: str, path: Path) -> Path:
    """The tiled filters as a labelled figure (nearest-neighbour pixels, grey or RGB)."""
    side = max(4.0, min(12.0, tiles.shape[1] / 24))
    fig, ax = plt.subplots(figsize=(side, side * tiles.shape[0] / tiles.shape[1] + 0.6), dpi=110)
    ax.imshow(tiles, cmap="gray" if tiles.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
