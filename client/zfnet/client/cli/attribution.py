"""``zfclient integrated-gradients``, ``smoothgrad`` and ``input-x-gradient``: pixel attributions of
a target per image, a labelled sheet (heatmaps over the image, colour bars, the target named) and
an .npz each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption, framing, layer_or_none, progress_bar, unique_stems
from zfnet.client.cli.gradcam import TargetLayerOption, UnitOption
from zfnet.wire.attribution import Attribution, AttributionResult
from zfnet.wire.models import ModelInfo

ModelOption = typer.Option(..., "--model", help="An .onnx file (uploaded if the server lacks it) or a model name on the server.")
ImageOption = typer.Option(..., "--image", help="Image file; repeat for several.")
MaxBatchOption = typer.Option(0, "--max-batch", help="Copies per forward pass (0: as the server's memory allows).")


def integrated_gradients(
    model: str = ModelOption, image: list[Path] = ImageOption, target_layer: str | None = TargetLayerOption, unit: list[str] = UnitOption,
    baseline: str = typer.Option("black", "--baseline", help="The path's start: black (0), mean (the model's preprocessing mean) or blurred (the image under a Gaussian blur)."),
    steps: int = typer.Option(50, "--steps", help="Points on the path."),
    method: str = typer.Option("gauss_legendre", "--method", help="riemann_left, riemann_right, riemann_middle, riemann_trapezoid or gauss_legendre (Captum's)."),
    blur_sigma: float | None = typer.Option(None, "--blur-sigma", help="The blurred baseline's sigma in pixels (default: a tenth of the shorter side)."),
    max_batch: int = MaxBatchOption,
    out: Path = typer.Option(Path("out/integrated-gradients"), "--out", help="Folder for the sheets (PNG) and attributions (.npz)."),
    server: str | None = ServerOption,
) -> None:
    """Integrated gradients (Sundararajan et al.) from a baseline, with Captum's convergence delta."""
    with Client(server) as client, progress_bar("integrated gradients") as update:
        info = client.model_info(model)
        result = client.integrated_gradients(model, image, layer_or_none(target_layer), unit, baseline, steps, method, blur_sigma, max_batch, update)
    write(result, info, image, out)


def smoothgrad(
    model: str = ModelOption, image: list[Path] = ImageOption, target_layer: str | None = TargetLayerOption, unit: list[str] = UnitOption,
    squared: bool = typer.Option(False, "--squared", help="SmoothGrad-squared: the mean of the squared gradients."),
    over: str = typer.Option("backprop", "--over", help="The gradient averaged: backprop or guided (guided backprop)."),
    samples: int = typer.Option(50, "--samples", help="Noisy copies per image."),
    noise: float = typer.Option(0.15, "--noise", help="Noise standard deviation as a fraction of each image's range (max - min)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise."),
    max_batch: int = MaxBatchOption,
    out: Path = typer.Option(Path("out/smoothgrad"), "--out", help="Folder for the sheets (PNG) and attributions (.npz)."),
    server: str | None = ServerOption,
) -> None:
    """SmoothGrad (Smilkov et al.): gradients averaged over noisy copies of each image."""
    kind = "smoothgrad_squared" if squared else "smoothgrad"
    with Client(server) as client, progress_bar(kind) as update:
        info = client.model_info(model)
        result = client.smoothgrad(model, image, layer_or_none(target_layer), unit, kind, over, samples, noise, seed, max_batch, update)
    write(result, info, image, out)


def input_x_gradient(
    model: str = ModelOption, image: list[Path] = ImageOption, target_layer: str | None = TargetLayerOption, unit: list[str] = UnitOption,
    out: Path = typer.Option(Path("out/input-x-gradient"), "--out", help="Folder for the sheets (PNG) and attributions (.npz)."),
    server: str | None = ServerOption,
) -> None:
    """Input x gradient: the target's gradient times each pixel."""
    with Client(server) as client:
        info = client.model_info(model)
        result = client.input_x_gradient(model, image, layer_or_none(target_layer), unit)
    write(result, info, image, out)


def write(result: AttributionResult, info: ModelInfo, paths: list[Path], out: Path) -> list[Path]:
    """A sheet and an .npz per image; a table of what was explained."""
    from zfnet.client import heatmaps  # matplotlib loads only when pictures are drawn

    pictures = [imagefolder.read_rgb(path, framing(info)) for path in paths]
    out.mkdir(parents=True, exist_ok=True)
    delta = result.method == "integrated-gradients"
    table = Table("image", "target", "value", *(["delta"] if delta else []), "sheet", title=f"{result.method} for {result.target_layer}: {result.description}")
    written = []
    for picture, stem, path, item in zip(pictures, unique_stems(paths), paths, result.images):
        sheet = heatmaps.attribution_sheet(picture, result, item, f"{path.name} | {info.name}", out / f"{stem}_{result.method}.png")
        written += [sheet, save(out / f"{stem}_{result.method}.npz", result, item)]
        table.add_row(path.name, item.target.describe(), f"{item.target.value:.4g}", *([f"{item.delta:.3g}"] if delta else []), str(sheet))
    Console().print(table)
    return written


def save(path: Path, result: AttributionResult, item: Attribution) -> Path:
    """One image's attribution, and what it was computed with."""
    arrays = {
        "attribution": item.pixels, "method": np.str_(result.method), "description": np.str_(result.description),
        "target_layer": np.str_(result.target_layer), "target": np.int32(item.target.index), "target_label": np.str_(item.target.label),
        "target_value": np.float32(item.target.value), "classes": np.asarray(result.classes, dtype=str),
    }
    if item.baseline is not None:
        arrays.update(baseline=item.baseline, delta=np.float32(item.delta))
    if item.sigma:
        arrays["sigma"] = np.float32(item.sigma)
    np.savez_compressed(path, **arrays)
    return path
