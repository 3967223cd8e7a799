"""``zfclient invariance``: feature distance and true-class probability under translation, scale and
rotation (the paper's Fig. 5), one grid of curves and a JSON of every value."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from zfnet.client.api import Client
from zfnet.client.cli.common import ForceOption, ImageOption, ServerOption, StrictOption, image_files, parse_layers, progress_bar, refuse_overwrite, true_classes, unique_stems
from zfnet.errors import InvalidArgument
from zfnet.wire.common import class_name
from zfnet.wire.invariance import TRANSFORMS, InvarianceResult


def parse_values(text: str | None, what: str) -> list[float]:
    """``"-8:8:2"`` (start:stop:step, stop included) or ``"0.8,1,1.25"``; empty: the server's defaults."""
    if not text:
        return []
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop < start:
                raise InvalidArgument(f"{what} {text!r}: give start:stop:step with start <= stop and a positive step")
            return [round(float(v), 6) for v in np.arange(start, stop + step * 1e-6, step)]
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgument(f"{what} must be start:stop:step or comma-separated numbers, got {text!r}") from None


def parse_transforms(text: str) -> list[str]:
    """``all`` or comma-separated transform names."""
    names = list(TRANSFORMS.names) if text.strip() == "all" else [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in TRANSFORMS.names]
    if unknown or not names:
        raise InvalidArgument(f"unknown transform {', '.join(map(repr, unknown)) or repr(text)}; choose {', '.join(TRANSFORMS.names)} or all")
    return names


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file (uploaded if the server lacks it) or a model name on the server."),
    image: list[Path] = ImageOption,
    transform: str = typer.Option("all", "--transform", help="translate, scale, rotate, a comma list of them, or all."),
    layers: str | None = typer.Option(None, "--layers", help="Layers whose feature distance to plot, e.g. 1,7 (default: the first convolutional and the last hidden layer)."),
    shifts: str | None = typer.Option(None, "--shifts", help="Vertical shifts in pixels, + down: start:stop:step or a list (default: -H/4..H/4)."),
    scales: str | None = typer.Option(None, "--scales", help="Scale factors: start:stop:step or a list (default: 0.6:1.8:0.05)."),
    angles: str | None = typer.Option(None, "--angles", help="Rotations in degrees, counter-clockwise: start:stop:step or a list (default: 0:360:10)."),
    border: str = typer.Option("reflect", "--border", help="Fill where the transformed image leaves the frame: reflect or constant."),
    fill: str = typer.Option("mean", "--fill", help="The constant for --border constant: mean, grey (127.5) or 0."),
    label: list[str] = typer.Option([], "--label", help="True class (name or index); once for all images or once per image (default: the folder name if it is a class, else the top-1 class)."),
    out: Path = typer.Option(Path("out/invariance"), "--out", help="Folder for invariance.png and invariance.json."),
    max_batch: int = typer.Option(0, "--max-batch", help="Transformed copies per forward pass (0: as the server's memory allows)."),
    strict: bool = StrictOption,
    force: bool = ForceOption,
    server: str | None = ServerOption,
) -> None:
    """Invariance (Fig. 5): feature distance and true-class probability under translation, scale and rotation."""
    from zfnet.client import plots  # matplotlib loads only when pictures are drawn

    values = {"translate": parse_values(shifts, "--shifts"), "scale": parse_values(scales, "--scales"), "rotate": parse_values(angles, "--angles")}
    sweeps = [(name, values[name]) for name in parse_transforms(transform)]
    image = image_files(image, strict)
    refuse_overwrite([out / "invariance.png", out / "invariance.json"], force)
    with Client(server) as client:
        info = client.model_info(model)
        truths, _ = true_classes(label, image, list(info.classes))
        with progress_bar("invariance") as update:
            result = client.invariance(model, image, sweeps, parse_layers(layers), border, fill, truths, max_batch, update)
    out.mkdir(parents=True, exist_ok=True)
    labels = unique_stems(image)
    result = dataclasses.replace(result, labels=labels)
    picture = plots.invariance_grid(
        result, f"invariance of {info.name}: feature distance to the original (relative to its norm) and true-class probability", out / "invariance.png",
    )
    (out / "invariance.json").write_text(json.dumps(as_json(result, image), indent=1))
    table = Table("transform", *(f"{layer} largest distance" for layer in result.layers), "lowest p(true)", "image", "at",
                  title=f"invariance, border {result.border}")
    for sweep in result.sweeps:
        i, v = np.unravel_index(int(np.argmin(sweep.true_class_probability)), sweep.true_class_probability.shape)
        table.add_row(sweep.transform, *(f"{sweep.distances[:, k].max():.3g}" for k in range(len(result.layers))),
                      f"{sweep.true_class_probability[i, v]:.3f}", labels[i], f"{sweep.values[v]:g}")
    Console().print(table)
    print(f"wrote {picture} and {out / 'invariance.json'}")


def as_json(result: InvarianceResult, images: list[Path]) -> dict:
    """Every value of the run, by transform, layer and image."""
    return {
        "layers": result.layers, "border": result.border,
        "fill": {"name": result.fill.name, "values": list(result.fill.values), "note": result.fill.note},
        "images": [
            {"file": str(path), "true_class": class_name(result.classes, t.index), "true_class_index": t.index, "from_top1": t.from_top1,
             "feature_norms": dict(zip(result.layers, map(float, norms)))}
            for path, t, norms in zip(images, result.true_classes, result.feature_norms)
        ],
        "sweeps": [
            {
                "transform": sweep.transform, "unit": sweep.unit, "values": sweep.values.tolist(),
                "distances": {layer: sweep.distances[:, k].tolist() for k, layer in enumerate(result.layers)},
                "relative_distances": {layer: result.relative_distances(sweep)[:, k].tolist() for k, layer in enumerate(result.layers)},
                "true_class_probability": sweep.true_class_probability.tolist(),
            }
            for sweep in result.sweeps
        ],
    }
