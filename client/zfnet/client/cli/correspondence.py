"""``zfclient correspondence``: does the network find the same object part in different images (the
paper's Table 1)? A table (terminal, JSON) and a bar plot per layer, against random masks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer
from PIL import Image
from rich.console import Console
from rich.table import Table

from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption, framing, parse_layers, progress_bar
from zfnet.errors import InvalidArgument, NotFound
from zfnet.wire.common import Box
from zfnet.wire.correspondence import CorrespondenceResult


@dataclass(frozen=True)
class Annotation:
    """Part boxes of the annotated images: ``boxes[i][p]`` in image i's own pixels."""

    files: list[Path]
    parts: list[str]
    boxes: list[list[Box]]


def load_parts(path: Path, folder: Path) -> Annotation:
    """Read a parts file: ``{"parts": [names], "images": {file: {part: [top, left, bottom, right]}}}``,
    boxes in the image file's pixels (bottom and right exclusive), files relative to ``folder``."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"parts file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise InvalidArgument(f"parts file {path} is not JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), dict) or not data["images"]:
        raise InvalidArgument(f'parts file {path}: expected {{"parts": [...], "images": {{"file.jpg": {{"part": [top, left, bottom, right]}}}}}}')
    parts = list(data.get("parts") or next(iter(data["images"].values())))
    files, boxes = [], []
    for name, marked in data["images"].items():
        file = folder / name
        if not file.is_file():
            raise NotFound(f"image {file} named in {path} does not exist")
        missing = [part for part in parts if part not in marked]
        if missing:
            raise InvalidArgument(f"{path}: image {name} has no box for part(s) {', '.join(map(repr, missing))}")
        with Image.open(file) as img:
            width, height = img.size
        image_boxes = []
        for part in parts:
            box = marked[part]
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box)):
                raise InvalidArgument(f"{path}: image {name}, part {part!r}: a box is four integers [top, left, bottom, right], got {box!r}")
            top, left, bottom, right = box
            if not (0 <= top < bottom <= height and 0 <= left < right <= width):
                raise InvalidArgument(f"{path}: image {name}, part {part!r}: box {box} is empty or outside the {height}x{width} image (bottom and right exclusive)")
            image_boxes.append((top, left, bottom, right))
        files.append(file)
        boxes.append(image_boxes)
    return Annotation(files, parts, boxes)


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file (uploaded if the server lacks it) or a model name on the server."),
    images: Path = typer.Option(..., "--images", help="Folder of the annotated images (e.g. samples/cifar10/dog)."),
    parts: Path = typer.Option(..., "--parts", help="JSON of part boxes per image (e.g. samples/parts/dogs.json)."),
    random: int = typer.Option(10, "--random", help="Random-mask trials per part (same size as the part's box, random place); 0: no control."),
    layers: str | None = typer.Option(None, "--layers", help="Layers, e.g. 5,7 (default: the last convolutional and the last hidden layer)."),
    fill: str = typer.Option("mean", "--fill", help="Mask colour: mean (the model's preprocessing mean), grey (127.5) or 0."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random masks."),
    out: Path = typer.Option(Path("out/correspondence"), "--out", help="Folder for correspondence.json and the pictures."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON on stdout instead of the table."),
    max_batch: int = typer.Option(0, "--max-batch", help="Masked copies per forward pass (0: as the server's memory allows)."),
    server: str | None = ServerOption,
) -> None:
    """Correspondence (Table 1): how consistently masking the same part of several images changes their features."""
    from zfnet.client import plots  # matplotlib loads only when pictures are drawn

    annotation = load_parts(parts, images)
    with Client(server) as client:
        info = client.model_info(model)
        framed = framing(info)  # boxes in the pixels of the picture the model sees, covering at least the same area
        boxes = [[framed.box(box, *_size(file)) for box in image_boxes] for file, image_boxes in zip(annotation.files, annotation.boxes)]
        with progress_bar("correspondence") as update:
            result = client.correspondence(model, annotation.files, annotation.parts, boxes, random, seed, parse_layers(layers), fill, max_batch, update)
    out.mkdir(parents=True, exist_ok=True)
    report = as_dict(result, annotation.files, boxes)
    (out / "correspondence.json").write_text(json.dumps(report, indent=1))
    title = f"correspondence of {info.name} on {len(annotation.files)} images of {images}"
    bars = plots.correspondence_bars(result, title, out / "correspondence.png")
    pictures = [imagefolder.read_rgb(file, framed) for file in annotation.files]
    sheet = plots.part_boxes(pictures, [f.name for f in annotation.files], annotation.parts, boxes, f"part boxes ({parts})", out / "correspondence_parts.png")
    if as_json:
        print(json.dumps(report))
        return
    table = Table("layer", "masked", "mean ± std", "Delta", title=f"{title}: sign changes differing between image pairs (Hamming / features)")
    for layer in result.layers:
        rows = sorted((s for s in result.scores if s.layer == layer), key=lambda s: s.random)
        for k, score in enumerate(rows):
            name = f"random, {score.part}-sized" if score.random else score.part
            table.add_row(layer, name, f"{score.mean:.4f} ± {score.std:.4f}", f"{score.delta:.0f}", end_section=k == len(rows) - 1)
    Console().print(table)
    print(f"{len(annotation.files)} images, {len(annotation.parts)} parts, {result.random_trials} random trials per part (seed {result.seed}), fill {result.fill.describe()}")
    print(f"wrote {out / 'correspondence.json'}, {bars} and {sheet}")


def _size(file: Path) -> tuple[int, int]:
    with Image.open(file) as img:
        return img.size[1], img.size[0]


def as_dict(result: CorrespondenceResult, files: list[Path], boxes: list[list[Box]]) -> dict:
    """Every score, with the boxes sent (model input pixels)."""
    return {
        "layers": result.layers, "parts": result.parts, "random_trials": result.random_trials, "seed": result.seed,
        "fill": {"name": result.fill.name, "values": list(result.fill.values), "note": result.fill.note},
        "images": [{"file": str(f), "boxes": dict(zip(result.parts, map(list, b)))} for f, b in zip(files, boxes)],
        "scores": [
            {"part": s.part, "random": s.random, "layer": s.layer, "delta": s.delta, "mean": s.mean, "std": s.std,
             "pairs": s.pairs, "features": s.features, "pair_distances": s.pair_distances.tolist(), "trial_deltas": s.trial_deltas,
             **({"trial_boxes": [list(map(list, trial)) for trial in s.trial_boxes]} if s.random else {})}
            for s in result.scores
        ],
    }
