"""``zfclient gradcam``: Grad-CAM or Grad-CAM++ of a layer per image, a labelled sheet and an .npz each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption, framing, layer_or_none, unique_stems
from zfnet.wire.gradcam import GradCamMap, GradCamResult

UnitOption = typer.Option([], "--unit", help="What to explain: a class (name or index) at the output, else a channel; once for all images or once per image (default: the top-1 class, or the strongest channel).")
TargetLayerOption = typer.Option(None, "--target-layer", help="Layer of the target unit, number or tensor name (default: the model's output).")


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file (uploaded if the server lacks it) or a model name on the server."),
    image: list[Path] = typer.Option(..., "--image", help="Image file; repeat for several."),
    layer: str | None = typer.Option(None, "--layer", help="Layer whose maps are weighted, number or tensor name (default: the last convolutional layer)."),
    target_layer: str | None = TargetLayerOption,
    unit: list[str] = UnitOption,
    plus_plus: bool = typer.Option(False, "--plus-plus", help="Grad-CAM++: channel weights from the positive gradients, each weighted by its alpha."),
    out: Path = typer.Option(Path("out/gradcam"), "--out", help="Folder for the sheets (PNG) and maps (.npz)."),
    server: str | None = ServerOption,
) -> None:
    """Grad-CAM (Selvaraju et al.): a layer's maps weighted by the target's gradient, over each image."""
    from zfnet.client import heatmaps  # matplotlib loads only when pictures are drawn

    variant = "grad_cam_plus_plus" if plus_plus else "grad_cam"
    with Client(server) as client:
        info = client.model_info(model)
        result = client.grad_cam(model, image, layer_or_none(layer), layer_or_none(target_layer), unit, variant)
    pictures = [imagefolder.read_rgb(path, framing(info)) for path in image]
    out.mkdir(parents=True, exist_ok=True)
    table = Table("image", "target", "value", "peak at (y, x)", "sheet", title=f"{variant.replace('_', '-')} of {result.layer} ({result.layout}) for {result.target_layer}")
    for picture, stem, path, item in zip(pictures, unique_stems(image), image, result.images):
        sheet = heatmaps.gradcam_sheet(picture, result, item, f"{path.name} | {info.name}", out / f"{stem}_gradcam.png")
        save(out / f"{stem}_gradcam.npz", result, item)
        y, x = np.unravel_index(int(np.argmax(item.heatmap)), item.heatmap.shape)
        table.add_row(path.name, item.target.describe(), f"{item.target.value:.4g}", f"{y}, {x}", str(sheet))
    Console().print(table)


def save(path: Path, result: GradCamResult, item: GradCamMap) -> Path:
    """One image's maps, and what they were computed with."""
    np.savez_compressed(
        path, heatmap=item.heatmap, map=item.map, weights=item.weights, layer=np.str_(result.layer), target_layer=np.str_(result.target_layer),
        variant=np.str_(result.variant), layout=np.str_(result.layout), target=np.int32(item.target.index), target_label=np.str_(item.target.label),
        target_value=np.float32(item.target.value), classes=np.asarray(result.classes, dtype=str),
    )
    return path
