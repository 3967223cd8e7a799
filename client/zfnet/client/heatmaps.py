"""Pictures of the attributions and feature visualisations: heatmaps overlaid on the image, each
with its colour bar and the target named; optimised images with their objective."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from zfnet.client.render import save_figure  # noqa: E402
from zfnet.wire.attribution import Attribution, AttributionResult, TargetUnit  # noqa: E402
from zfnet.wire.gradcam import GradCamMap, GradCamResult  # noqa: E402
from zfnet.wire.visualise import VisualiseResult  # noqa: E402

OVERLAY_ALPHA = 0.5


def target_text(target: TargetUnit, layer: str) -> str:
    """``cat (top-1) at fc8 = 3.21``: what the picture explains."""
    return f"{target.describe()} at {layer} = {target.value:.4g}"


def _image(ax: Axes, image: np.ndarray, title: str) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _overlay(fig: Figure, ax: Axes, image: np.ndarray, heat: np.ndarray, title: str, label: str, cmap: str = "jet", symmetric: bool = False) -> None:
    """``heat`` (H, W) over the greyed image, with a colour bar labelled ``label``."""
    grey = image.astype(np.float32).mean(axis=2) / 255
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    peak = float(np.abs(heat).max()) or 1.0
    low, high = (-peak, peak) if symmetric else (0.0, float(heat.max()) or 1.0)
    shown = ax.imshow(heat, cmap=cmap, vmin=low, vmax=high, alpha=OVERLAY_ALPHA, interpolation="bilinear")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=label).ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def gradcam_sheet(image: np.ndarray, result: GradCamResult, item: GradCamMap, title: str, path: Path) -> Path:
    """The input; the heatmap over it; the map at the layer's own resolution."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), dpi=110, gridspec_kw={"wspace": 0.35})
    name = "Grad-CAM++" if result.variant == "grad_cam_plus_plus" else "Grad-CAM"
    _image(axes[0], image, "input")
    _overlay(fig, axes[1], image, item.heatmap, f"{name} of {result.layer} over the input", "weighted activation (ReLU)")
    shown = axes[2].imshow(item.map, cmap="jet", vmin=0, interpolation="nearest")
    fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    axes[2].set_title(f"at {result.layer}'s resolution {item.map.shape[0]}x{item.map.shape[1]} ({result.layout})", fontsize=8)
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    fig.suptitle(f"{title}\ntarget: {target_text(item.target, result.target_layer)}", fontsize=9, y=1.04)
    return save_figure(fig, path)


METHOD_NAMES = {
    "integrated-gradients": "integrated gradients", "smoothgrad": "SmoothGrad", "smoothgrad-squared": "SmoothGrad-squared",
    "input-x-gradient": "input x gradient",
}


def attribution_sheet(image: np.ndarray, result: AttributionResult, item: Attribution, title: str, path: Path) -> Path:
    """The input (and the baseline for integrated gradients); the attribution summed over colour
    channels, signed, over the image; its magnitude over the image."""
    panels = 4 if item.baseline is not None else 3
    fig, axes = plt.subplots(1, panels, figsize=(3.7 * panels, 3.4), dpi=110, gridspec_kw={"wspace": 0.35})
    name = METHOD_NAMES.get(result.method, result.method)
    _image(axes[0], image, "input")
    summed = item.pixels.sum(axis=0)
    squared = result.method == "smoothgrad-squared"
    _overlay(fig, axes[1], image, summed, f"{name}, summed over colours", "attribution" + (" (squares)" if squared else ""), "bwr" if not squared else "jet", not squared)
    _overlay(fig, axes[2], image, np.abs(item.pixels).sum(axis=0), f"|{name}|, summed over colours", "magnitude")
    if item.baseline is not None:
        _image(axes[3], np.clip(np.moveaxis(item.baseline, 0, -1), 0, 255).astype(np.uint8), f"baseline; delta {item.delta:.3g}")
    details = f"{result.description}" + (f"; noise sigma {item.sigma:.3g}" if item.sigma else "")
    fig.suptitle(f"{title}\ntarget: {target_text(item.target, result.target_layer)} | {details}", fontsize=9, y=1.04)
    return save_figure(fig, path)


def visualisation_sheet(result: VisualiseResult, title: str, path: Path) -> Path:
    """Each unit's optimised images in a row, titled with its objective and its rank among the
    layer's units, and the objective's curve over the steps."""
    per_unit = max(len(u.images) for u in result.units)
    columns = per_unit + 1
    fig, axes = plt.subplots(len(result.units), columns, figsize=(2.1 * columns, 2.1 * len(result.units) + 0.6), dpi=110, squeeze=False)
    for row, unit in zip(axes, result.units):
        name = unit.label or f"unit {unit.unit}"
        for k, ax in enumerate(row[:-1]):
            ax.axis("off")
            if k < len(unit.images):
                ax.imshow(np.clip(np.moveaxis(unit.images[k], 0, -1), 0, 255).astype(np.uint8), interpolation="nearest")
                rank = int(unit.rank()[k])
                ax.set_title(f"{name}: {unit.objective[k]:.3g} (rank {rank + 1})", fontsize=7)
        ax = row[-1]
        ax.plot(np.arange(1, len(unit.curve) + 1), unit.curve, linewidth=1)
        ax.set_xlabel("step", fontsize=6)
        ax.set_ylabel("objective", fontsize=6)
        ax.tick_params(labelsize=5)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}\n{result.objective} objective at {result.layer}, {result.steps} steps, seed {result.seed}; {result.description}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
