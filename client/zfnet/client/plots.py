"""Pictures of the perturbation analyses: the occlusion sheet (the paper's Fig. 7), the invariance
grid (Fig. 5) and the correspondence bars (Table 1), labelled, with colour bars and legends."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from zfnet.client.render import for_display, save_figure  # noqa: E402
from zfnet.wire.common import class_name  # noqa: E402
from zfnet.errors import FailedPrecondition  # noqa: E402
from zfnet.wire.correspondence import CorrespondenceResult, CorrespondenceScore  # noqa: E402
from zfnet.wire.invariance import InvarianceResult, Sweep  # noqa: E402
from zfnet.wire.occlusion import OcclusionMaps, OcclusionResult  # noqa: E402

# ---- occlusion -------------------------------------------------------------------------------


def _map_extent(result: OcclusionResult) -> tuple[float, float, float, float]:
    """imshow extent placing map cell (r, c) at its occluder's centre, in input pixels."""
    half, step = result.size / 2, result.stride / 2
    return (result.lefts[0] + half - step, result.lefts[-1] + half + step, result.tops[-1] + half + step, result.tops[0] + half - step)


def _frame(ax: Axes, height: int, width: int, title: str) -> None:
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("occluder centre x (px)", fontsize=7)
    ax.set_ylabel("occluder centre y (px)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_facecolor("#d0d0d0")


def occlusion_sheet(image: np.ndarray, result: OcclusionResult, maps: OcclusionMaps, title: str, path: Path) -> Path:
    """The paper's Fig. 7 for one image: (a) the input with the occluder drawn to scale where it
    lowers the true class most, (b) total activation of the chosen feature map, (c) its deconvnet
    projection, (d) true-class probability, (e) most probable class; maps at the occluder centres."""
    height, width = image.shape[:2]
    extent = _map_extent(result)
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.2), dpi=110, gridspec_kw={"wspace": 0.45})
    truth = class_name(result.classes, maps.true_class.index)

    ax = axes[0]
    ax.imshow(image, interpolation="nearest")
    r, c = np.unravel_index(int(np.argmin(maps.true_class_map)), maps.true_class_map.shape)
    fill = tuple(np.clip(np.asarray(result.fill.values[:3]) / 255, 0, 1)) if len(result.fill.values) >= 3 else (0.5, 0.5, 0.5)
    ax.add_patch(Rectangle((result.lefts[c] - 0.5, result.tops[r] - 0.5), result.size, result.size, facecolor=fill, edgecolor="red", linewidth=1.5))
    ax.set_title(f"(a) input; occluder {result.size}x{result.size} px\nwhere p({truth}) is lowest", fontsize=8)
    ax.set_xlabel(f"stride {result.stride} px, fill {result.fill.describe()}", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])

    ax = axes[1]
    shown = ax.imshow(maps.layer_total, extent=extent, cmap="viridis", interpolation="nearest")
    _frame(ax, height, width, f"(b) {result.layer}: total activation\nof feature map {maps.channel} (original {maps.channel_total:.3g})")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="total activation").ax.tick_params(labelsize=6)

    ax = axes[2]
    if maps.projection is not None:
        ax.imshow(for_display(maps.projection.pixels), interpolation="nearest")
        top, left, bottom, right = maps.projection.receptive_field
        if (bottom - top, right - left) != (height, width):
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="yellow", linewidth=1.2))
        ax.set_title(f"(c) deconvnet projection of map {maps.channel}'s\nstrongest activation ({maps.projection.activation:.3g}) at {list(maps.projection.location)}", fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no projection:\n{maps.projection_error[:120]}", ha="center", va="center", fontsize=7, wrap=True, transform=ax.transAxes)
        ax.set_title("(c) deconvnet projection", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])

    ax = axes[3]
    shown = ax.imshow(maps.true_class_map, extent=extent, cmap="jet", vmin=0, vmax=1, interpolation="nearest")
    _frame(ax, height, width, f"(d) p({truth}) per occluder position\n(original {maps.true_class_probability:.3f})")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="probability").ax.tick_params(labelsize=6)

    ax = axes[4]
    present = sorted(set(np.unique(maps.top_class_map).tolist()) | {maps.top_class})
    palette = plt.get_cmap("tab10" if max(present) < 10 else "tab20")
    lookup = {k: n for n, k in enumerate(present)}
    cmap = colors.ListedColormap([palette(k % palette.N) for k in present])
    ax.imshow(np.vectorize(lookup.get)(maps.top_class_map), extent=extent, cmap=cmap, vmin=-0.5, vmax=len(present) - 0.5, interpolation="nearest")
    _frame(ax, height, width, f"(e) most probable class per position\n(original: {class_name(result.classes, maps.top_class)})")
    ax.legend(handles=[Patch(color=palette(k % palette.N), label=class_name(result.classes, k)) for k in present],
              fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.suptitle(title, fontsize=9, y=1.06)
    return save_figure(fig, path)


# ---- invariance ------------------------------------------------------------------------------


AMOUNTS = {"translate": "{:+g}px", "scale": "x{:g}", "rotate": "{:g}°"}  # how a thumbnail's transformation amount is labelled


def _copies(ax: Axes, sweep: Sweep, labels: list[str], gap: int = 2) -> None:
    """The transformed copies the server ran at a few of the sweep's values: one row per image, one
    column per value, each column labelled with its amount (the row of pictures of the paper's Fig. 5)."""
    n, t, h, w, _ = sweep.thumbnails.shape
    mosaic = np.full((n * (h + gap) - gap, t * (w + gap) - gap, 3), 255, np.uint8)
    for i in range(n):
        for k in range(t):
            mosaic[i * (h + gap) : i * (h + gap) + h, k * (w + gap) : k * (w + gap) + w] = sweep.thumbnails[i, k]
    ax.imshow(mosaic, interpolation="nearest")
    amount = AMOUNTS.get(sweep.transform, "{:g}")
    ax.set_xticks([k * (w + gap) + (w - 1) / 2 for k in range(t)], [amount.format(float(sweep.values[v])) for v in sweep.shown], fontsize=7)
    ax.set_yticks([i * (h + gap) + (h - 1) / 2 for i in range(n)], [label or f"image {i}" for i, label in enumerate(labels)], fontsize=6)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(f"{sweep.transform}: the copies at a few of the values", fontsize=8)


def invariance_grid(result: InvarianceResult, title: str, path: Path) -> Path:
    """The paper's Fig. 5: per transformation, the row of transformed copies (a few of its values, as
    the model took them), then the curves: the feature distance at each layer (divided by the norm of
    the original image's features, so that images and layers compare) and the true-class probability;
    one line per image."""
    rows, columns = len(result.sweeps), len(result.layers) + 1
    strip = 0.3 + 0.42 * len(result.labels)  # inches: the copies' row
    height = (2.6 + strip) * rows + 0.45  # and the title's two lines
    fig = plt.figure(figsize=(3.3 * columns, height), dpi=110)
    grid = fig.add_gridspec(2 * rows, columns, height_ratios=[strip, 2.6] * rows)
    axes = np.array([[fig.add_subplot(grid[2 * r + 1, c]) for c in range(columns)] for r in range(rows)])
    border = "border: reflect" if result.border == "reflect" else f"border: constant {result.fill.describe()}"
    for r, sweep in enumerate(result.sweeps):
        _copies(fig.add_subplot(grid[2 * r, :]), sweep, result.labels)
        for c in range(columns):
            ax = axes[r, c]
            for i, (label, truth) in enumerate(zip(result.labels, result.true_classes)):
                values = result.relative_distances(sweep)[i, c] if c < len(result.layers) else sweep.true_class_probability[i]
                named = f"{label or f'image {i}'}: {class_name(result.classes, truth.index)}{' (top-1)' if truth.from_top1 else ''}"
                ax.plot(sweep.values, values, marker=".", markersize=3, linewidth=1, label=named)
            ax.set_xlabel(sweep.unit or sweep.transform, fontsize=7)
            if c < len(result.layers):
                ax.set_ylabel("distance / norm of the original", fontsize=7)
                heading = f"{result.layers[c]}: feature distance"
            else:
                ax.set_ylabel("probability", fontsize=7)
                ax.set_ylim(-0.02, 1.02)
                heading = "true-class probability"
            ax.set_title(f"{sweep.transform} | {heading}", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(6, len(labels)), fontsize=7)
    fig.suptitle(f"{title}\n{border}; legend: image: true class", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))
    return save_figure(fig, path)


# ---- correspondence --------------------------------------------------------------------------


def correspondence_bars(result: CorrespondenceResult, title: str, path: Path) -> Path:
    """Per layer: the mean normalised Hamming distance of each part (and of random masks of the
    same size), with the standard deviation over image pairs."""
    fig, axes = plt.subplots(1, len(result.layers), figsize=(1.3 + 1.5 * len(result.parts) * len(result.layers), 3.4), dpi=110, squeeze=False)
    x = np.arange(len(result.parts))
    width = 0.38 if result.random_trials else 0.7
    for ax, layer in zip(axes[0], result.layers):
        parts = [_score(result, p, layer) for p in result.parts]
        ax.bar(x - (width / 2 if result.random_trials else 0), [s.mean for s in parts], width, yerr=[s.std for s in parts],
               capsize=3, color="tab:blue", label="part masked")
        if result.random_trials:
            control = [_score(result, p, layer, random=True) for p in result.parts]
            ax.bar(x + width / 2, [s.mean for s in control], width, yerr=[s.std for s in control], capsize=3,
                   color="tab:gray", hatch="//", label=f"random mask, same size ({result.random_trials} trials)")
        ax.set_xticks(x, result.parts, fontsize=7)
        ax.set_title(f"{layer} ({parts[0].features} features)", fontsize=8)
        ax.set_ylabel("sign changes differing between images\n(Hamming / features, mean ± std over pairs)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(axis="y", alpha=0.3)
    axes[0, -1].legend(fontsize=6, loc="lower right")
    fig.suptitle(f"{title}\nlower = the masked part changes the features the same way in every image; fill {result.fill.describe()}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _score(result: CorrespondenceResult, part: str, layer: str, random: bool = False) -> CorrespondenceScore:
    """One bar: the score of ``part`` (or of its random control) at ``layer``, which the server sends for every pair."""
    score = result.score(part, layer, random)
    if score is None:
        raise FailedPrecondition(f"the correspondence result has no {'random-mask ' if random else ''}score for part {part!r} at layer {layer}")
    return score


def part_boxes(images: list[np.ndarray], labels: list[str], parts: list[str], boxes: list[list[tuple[int, int, int, int]]], title: str, path: Path) -> Path:
    """The annotated images: each part's box drawn in its own colour (model input pixels)."""
    palette = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(images), figsize=(2.4 * len(images), 2.9), dpi=110, squeeze=False)
    for ax, image, label, image_boxes in zip(axes[0], images, labels, boxes):
        ax.imshow(image, interpolation="nearest")
        for p, (top, left, bottom, right) in enumerate(image_boxes):
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor=palette(p % 10), linewidth=1.5))
        ax.set_title(label, fontsize=7)
        ax.axis("off")
    fig.legend(handles=[Patch(edgecolor=palette(p % 10), fill=False, label=part) for p, part in enumerate(parts)],
               loc="lower center", ncol=len(parts), fontsize=7, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)
