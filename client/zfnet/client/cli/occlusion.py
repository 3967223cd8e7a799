"""``zfclient occlusion``: occlusion sensitivity (the paper's Fig. 7), a labelled sheet and an .npz per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption, framing, parse_layers, progress_bar, true_classes, unique_stems
from zfnet.wire.common import class_name
from zfnet.wire.occlusion import OcclusionMaps, OcclusionResult


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file (uploaded if the server lacks it) or a model name on the server."),
    image: list[Path] = typer.Option(..., "--image", help="Image file; repeat for several."),
    size: int | None = typer.Option(None, "--size", help="Occluder side in input pixels (default: a quarter of the input, 8 on 32x32)."),
    stride: int | None = typer.Option(None, "--stride", help="Pixels between occluder positions (default: a quarter of the size, 2 for 8)."),
    fill: str = typer.Option("mean", "--fill", help="Occluder colour: mean (the model's preprocessing mean), grey (127.5) or 0."),
    layer: str | None = typer.Option(None, "--layer", help="Layer of maps (b) and (c), number or tensor name (default: the last convolutional layer)."),
    label: list[str] = typer.Option([], "--label", help="True class (name or index) for map (d); once for all images or once per image (default: the image's folder name if it is a class, else the top-1 class)."),
    out: Path = typer.Option(Path("out/occlusion"), "--out", help="Folder for the sheets (PNG) and maps (.npz)."),
    all_classes: bool = typer.Option(False, "--all-classes", help="Also save every class's probability per position in the .npz."),
    max_batch: int = typer.Option(0, "--max-batch", help="Occluded copies per forward pass (0: as the server's memory allows)."),
    server: str | None = ServerOption,
) -> None:
    """Occlusion sensitivity (Fig. 7): per occluder position, a feature map's activation, the true class's probability, the top class."""
    from zfnet.client import plots  # matplotlib loads only when pictures are drawn

    with Client(server) as client:
        info = client.model_info(model)
        truths, sources = true_classes(label, image, list(info.classes))
        with progress_bar("occlusion") as update:
            result = client.occlusion(model, image, size, stride, fill, parse_layers(layer)[0] if layer else None, truths, max_batch, all_classes, update)
    pictures = [imagefolder.read_rgb(path, framing(info)) for path in image]
    out.mkdir(parents=True, exist_ok=True)
    table = Table("image", "true class", "p", "lowest p", "at (y, x)", "top-1 changed", "map",
                  title=f"occlusion {result.size}x{result.size} px, stride {result.stride}, fill {result.fill.describe()}; {result.layer}")
    sheets = []
    for picture, stem, path, maps, source in zip(pictures, unique_stems(image), image, result.images, sources):
        truth = class_name(result.classes, maps.true_class.index)
        title = f"{path.name} | true class {truth} ({source}) | {info.name}"
        sheets.append(plots.occlusion_sheet(picture, result, maps, title, out / f"{stem}_occlusion.png"))
        save_maps(out / f"{stem}_occlusion.npz", result, maps, source)
        r, c = np.unravel_index(int(np.argmin(maps.true_class_map)), maps.true_class_map.shape)
        changed = float(np.mean(maps.top_class_map != maps.top_class))
        table.add_row(
            path.name, f"{truth}" + (" (top-1)" if maps.true_class.from_top1 else ""), f"{maps.true_class_probability:.3f}",
            f"{maps.true_class_map[r, c]:.3f}", f"{result.tops[r] + result.size // 2}, {result.lefts[c] + result.size // 2}",
            f"{changed:.0%}", str(maps.channel),
        )
    Console().print(table)
    print(f"{len(result.tops) * len(result.lefts)} occluder positions per image, {result.batch} copies per forward pass; maps (.npz) under {out}/; sheets:")
    for sheet in sheets:
        print(f"  {sheet}")


def save_maps(path: Path, result: OcclusionResult, maps: OcclusionMaps, source: str) -> Path:
    """Every map of one image, with the grid and what it was computed with."""
    arrays = {
        "layer_total": maps.layer_total, "true_class_map": maps.true_class_map, "top_class_map": maps.top_class_map,
        "tops": result.tops, "lefts": result.lefts, "size": np.int32(result.size), "stride": np.int32(result.stride),
        "fill": np.asarray(result.fill.values, np.float32), "layer": np.str_(result.layer), "channel": np.int32(maps.channel),
        "true_class": np.int32(maps.true_class.index), "true_class_source": np.str_(source), "classes": np.asarray(result.classes, dtype=str),
        "true_class_probability": np.float32(maps.true_class_probability), "top_class": np.int32(maps.top_class),
    }
    if maps.projection is not None:
        arrays["projection"] = maps.projection.pixels
        arrays["projection_receptive_field"] = np.asarray(maps.projection.receptive_field, np.int32)
    if maps.probabilities is not None:
        arrays["probabilities"] = maps.probabilities
    np.savez_compressed(path, **arrays)
    return path
