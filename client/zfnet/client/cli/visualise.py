"""``zfclient visualise``: images optimised to excite units of a layer (feature visualisation,
Olah et al. 2017): a labelled sheet, a PNG per image and an .npz."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption, job_progress, layer_or_none, parse_ranges
from zfnet.client.names import safe_name
from zfnet.wire.visualise import VisualiseResult

RANGE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def units_of(given: list[str]) -> list[str]:
    """``--unit`` values: ranges of indices (``0-15,20``) expanded; class names kept."""
    out: list[str] = []
    for text in given:
        out += [str(u) for u in parse_ranges(text, "--unit")] if RANGE.match(text.strip()) else [text.strip()]
    return out


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file (uploaded if the server lacks it) or a model name on the server."),
    unit: list[str] = typer.Option(..., "--unit", help="Channels (0-15,20) or, at the output, classes (names or indices); repeat for more."),
    layer: str | None = typer.Option(None, "--layer", help="Layer number or tensor name (default: the model's output, its units the classes)."),
    objective: str = typer.Option("channel", "--objective", help="channel: the unit's mean over its map; neuron: the unit at the map's centre."),
    steps: int = typer.Option(512, "--steps", help="Optimisation steps (Adam)."),
    learning_rate: float = typer.Option(0.05, "--lr", help="Adam's learning rate."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial images and the random transforms."),
    jitter: int | None = typer.Option(None, "--jitter", help="Random shift of up to this many pixels per step (default: 1 + H/32)."),
    scale: float = typer.Option(0.1, "--scale", help="Random scale within 1 +- this per step."),
    rotate: float = typer.Option(10.0, "--rotate", help="Random rotation within +- this many degrees per step."),
    diversity: float = typer.Option(0.0, "--diversity", help="Weight of Lucid's diversity term (needs --images-per-unit 2 or more)."),
    images_per_unit: int = typer.Option(1, "--images-per-unit", help="Images optimised per unit."),
    pixels: bool = typer.Option(False, "--pixels", help="Optimise pixels directly (no Fourier parameterisation, no colour decorrelation)."),
    out: Path = typer.Option(Path("out/visualise"), "--out", help="Folder for the sheet, the images (PNG) and the .npz."),
    server: str | None = ServerOption,
) -> None:
    """Feature visualisation: images optimised to excite each unit, robust to jitter, scale and rotation."""
    from zfnet.client import heatmaps, render  # matplotlib loads only when pictures are drawn

    options = dict(objective=objective, steps=steps, learning_rate=learning_rate, seed=seed, jitter=jitter, scale=scale, rotate=rotate,
                   diversity=diversity, images_per_unit=images_per_unit, pixels=pixels)
    chosen = units_of(unit)
    with Client(server) as client, job_progress() as bar:
        info = client.model_info(model)
        task = bar.add_task("visualise", total=len(chosen) * steps)
        result = client.visualise(model, chosen, layer_or_none(layer), lambda stage, done, total: bar.update(task, description=stage, completed=done, total=total), **options)
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_name(result.layer)
    sheet = heatmaps.visualisation_sheet(result, f"{info.name}: feature visualisation", out / f"{stem}_visualisation.png")
    for item in result.units:
        for k, picture in enumerate(item.images):
            rgb = np.clip(np.moveaxis(picture, 0, -1), 0, 255).round().astype(np.uint8)
            render.save_png(rgb, out / f"{stem}_unit{item.unit:04d}_{k}.png", scale=4)
    save(out / f"{stem}_visualisation.npz", result)
    table = Table("unit", "objective", "rank in layer", "first step", "last step", title=f"{result.objective} objective at {result.layer}: {result.description}")
    for item in result.units:
        table.add_row(item.label or str(item.unit), " ".join(f"{v:.3g}" for v in item.objective), " ".join(str(int(r) + 1) for r in item.rank()),
                      f"{item.curve[0]:.3g}", f"{item.curve[-1]:.3g}")
    Console().print(table)
    print(f"sheet: {sheet}; images and .npz under {out}/")


def save(path: Path, result: VisualiseResult) -> Path:
    """Every unit's images, objective, the layer's responses and curve, with the settings."""
    np.savez_compressed(
        path, images=np.stack([u.images for u in result.units]), units=np.asarray([u.unit for u in result.units], np.int32),
        labels=np.asarray([u.label for u in result.units], dtype=str), objective=np.stack([u.objective for u in result.units]),
        layer_means=np.stack([u.layer_means for u in result.units]), curves=np.stack([u.curve for u in result.units]),
        layer=np.str_(result.layer), objective_kind=np.str_(result.objective), steps=np.int32(result.steps), seed=np.uint64(result.seed),
        description=np.str_(result.description),
    )
    return path
