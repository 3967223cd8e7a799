"""Pictures and numbers of a feature-evolution job (Zeiler & Fergus 2013, Fig. 4).

``write`` puts under one folder::

    evolution.png   per layer: the sheet (rows channels, columns snapshots, each reconstruction of the
                    channel's strongest activation contrast-normalised on its own, cut to its receptive
                    field) beside a plot of each channel's strongest activation against the snapshot
    evolution.json  per layer, channel and snapshot: the image (index, path, class), the activation,
                    its location and receptive field; per layer and snapshot, the share of channels
                    whose strongest image is already the last snapshot's (how settled the layer is)
    evolution.npz   the same numbers as arrays, with the float reconstructions
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from zfnet import evolution  # noqa: E402
from zfnet.client.report import EMPTY, reconstruction, tile_size  # noqa: E402
from zfnet.wire.evolution import EvolutionResult  # noqa: E402

GAP = 2  # pixels between tiles of the sheet
DPI = 100
TITLE_CHAR_PX = 7.5  # pixels per character of the 11-point title, to wrap it within the figure
TITLE_LINE_PX = 18


def arrays(result: EvolutionResult, layer: str) -> dict[str, np.ndarray]:
    """One layer's numbers, (channels, snapshots) each: activation (NaN where no image was read), data-set
    index (-1 there), and the reconstructions (channels, snapshots, C, H, W)."""
    channels = result.channels[layer]
    count = len(result.columns)
    activation = np.full((len(channels), count), np.nan, np.float32)
    index = np.full((len(channels), count), -1, np.int64)
    pixels = None
    for r, channel in enumerate(channels):
        for c in range(count):
            entry = result.entry(layer, channel, c)
            if entry is None:
                continue
            activation[r, c], index[r, c] = entry.activation, entry.index
            if pixels is None:
                pixels = np.zeros((len(channels), count, *entry.reconstruction.shape), np.float32)
            pixels[r, c] = entry.reconstruction
    return {"activations": activation, "indices": index, "reconstructions": pixels if pixels is not None else np.zeros((len(channels), count, 0), np.float32)}


def mosaic(result: EvolutionResult, layer: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The sheet of one layer as an (H, W, 3) uint8 picture, and one tile's (width, height)."""
    channels = result.channels[layer]
    entries = [[result.entry(layer, ch, c) for c in range(len(result.columns))] for ch in channels]
    found = [e for row in entries for e in row if e is not None]
    width, height = tile_size(found)
    sheet = np.full((len(channels) * (height + GAP) - GAP, len(result.columns) * (width + GAP) - GAP, 3), 255, np.uint8)
    for r, row in enumerate(entries):
        for c, entry in enumerate(row):
            tile = Image.fromarray(reconstruction(entry)).resize((width, height), Image.Resampling.NEAREST) if entry is not None else Image.new("RGB", (width, height), EMPTY)
            top, left = r * (height + GAP), c * (width + GAP)
            sheet[top : top + height, left : left + width] = np.asarray(tile)
    return sheet, (width, height)


def figure(result: EvolutionResult, title: str, path: Path) -> Path:
    """evolution.png: for each layer, the sheet (left) and the strongest activation per channel against the snapshot (right)."""
    labels = [column.label for column in result.columns]
    sheets = [mosaic(result, layer) for layer in result.layers]
    heights = [max(s.shape[0], 160) for s, _ in sheets]
    sheet_width = max(s.shape[1] for s, _ in sheets)
    fig_width = (sheet_width + 110 + 420) / DPI
    title_lines = textwrap.wrap(title, width=int(fig_width * DPI / TITLE_CHAR_PX))  # the title fits the figure's width
    head = TITLE_LINE_PX * len(title_lines) + 16  # pixels kept above the first row's headers
    fig, axes = plt.subplots(
        len(result.layers), 2, figsize=(fig_width, (sum(heights) + 150 * len(heights) + head) / DPI), squeeze=False,
        gridspec_kw={"height_ratios": heights, "width_ratios": [sheet_width + 110, 420]}, dpi=DPI,
    )
    parsed = [evolution.number(c.model) for c in result.columns]
    steps = [n for n in parsed if n is not None]
    by_number = len(steps) == len(parsed) and len({n for _, n in steps}) == len(steps) and len({u for u, _ in steps}) == 1
    xs = [n for _, n in steps] if by_number else list(range(len(labels)))
    for row, (layer, (sheet, (width, height))) in enumerate(zip(result.layers, sheets)):
        channels = result.channels[layer]
        left, right = axes[row]
        left.imshow(sheet, interpolation="nearest")
        stacked = [label.replace(" ", "\n", 1) for label in labels]  # "iter\n4000": one tile wide, never running into the next
        left.set_xticks([c * (width + GAP) + width / 2 for c in range(len(labels))], stacked, rotation=45 if len(labels) > 6 else 0, fontsize=8)
        left.xaxis.tick_top()
        left.set_yticks([r * (height + GAP) + height / 2 for r in range(len(channels))], [f"ch {ch}" for ch in channels], fontsize=8)
        left.tick_params(length=0)
        for spine in left.spines.values():
            spine.set_visible(False)
        left.set_title(f"{layer}: reconstructions", fontsize=10, pad=30)
        values = arrays(result, layer)["activations"]
        colours = plt.get_cmap("tab20")
        for r, channel in enumerate(channels):
            right.plot(xs, values[r], marker="o", markersize=3, linewidth=1, color=colours(r % 20), label=f"ch {channel}")
        if by_number:
            right.set_xticks(xs, [str(x) for x in xs], fontsize=8)
            right.set_xlabel(steps[0][0] or "snapshot", fontsize=9)
        else:
            right.set_xticks(xs, labels, rotation=45 if len(labels) > 4 else 0, fontsize=8)
        right.set_ylabel("strongest activation", fontsize=9)
        right.set_title(f"{layer}: strongest activation per channel", fontsize=10)
        right.tick_params(labelsize=8)
        right.grid(alpha=0.3)
        if len(channels) <= 20:
            right.legend(fontsize=6, ncol=2 if len(channels) > 8 else 1, loc="best", frameon=False)
    fig.suptitle("\n".join(title_lines), fontsize=11, y=1 - 6 / (fig.get_figheight() * DPI), va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - head / (fig.get_figheight() * DPI)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def numbers(result: EvolutionResult, data: str) -> dict:
    """What evolution.json holds."""
    layers = {}
    for layer in result.layers:
        per_channel = {}
        for channel in result.channels[layer]:
            column_entries = []
            for c, column in enumerate(result.columns):
                entry = result.entry(layer, channel, c)
                image = column.result.images.get(entry.index) if entry is not None else None
                column_entries.append(None if entry is None else {
                    "index": entry.index, "path": image.path if image else "", "class": image.label if image else "",
                    "activation": entry.activation, "location": list(entry.location),
                    "receptive_field": list(entry.receptive_field), "patch": list(entry.patch),
                })
            per_channel[str(channel)] = column_entries
        indices = arrays(result, layer)["indices"]
        layers[layer] = {"same_image_as_last": (indices == indices[:, -1:]).mean(axis=0).round(4).tolist(), "channels": per_channel}
    return {
        "method": result.method, "data": data,
        "snapshots": [{"label": c.label, "model": c.model, "sha256": c.result.state.model} for c in result.columns],
        "layers": layers,
    }


def write(result: EvolutionResult, out: Path, title: str, data: str) -> dict[str, Path]:
    """evolution.png, evolution.json and evolution.npz under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    saved = {"sheet": figure(result, title, out / "evolution.png")}
    (out / "evolution.json").write_text(json.dumps(numbers(result, data), indent=1))
    saved["json"] = out / "evolution.json"
    packed = {"labels": np.asarray([c.label for c in result.columns]), "layers": np.asarray(result.layers)}
    for i, layer in enumerate(result.layers):
        packed[f"layer{i}.channels"] = np.asarray(result.channels[layer], np.int64)
        for name, array in arrays(result, layer).items():
            packed[f"layer{i}.{name}"] = array
    np.savez_compressed(out / "evolution.npz", allow_pickle=True, **packed)
    saved["npz"] = out / "evolution.npz"
    return saved

