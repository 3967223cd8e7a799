"""``zfclient deconv``: project a layer's strongest activations back to pixels and save pictures.

Images may be files or folders (searched recursively for images); they go to the server in
batches, and each batch's pictures are written as its reply arrives. Every image gets its own
output name, so no image's pictures overwrite another's."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import typer
from rich.console import Console

from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption, expand, framing, job_progress, parse_numbers
from zfnet.errors import InvalidArgument, ZfnetError

LISTED_GRIDS = 10  # grids printed one per line; more are summarised


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file (uploaded if the server lacks it) or a model name on the server."),
    layer: str = typer.Option(..., "--layer", help="Layer number N (the N-th conv/fc layer, as in the paper) or an exact tensor name."),
    image: list[Path] = typer.Option(..., "--image", help="Image file or folder (searched recursively for images); repeat for several."),
    channels: str | None = typer.Option(None, "--channels", help="Explicit channels, e.g. 3,17 (default: the top channels)."),
    top: int = typer.Option(9, "--top", help="Reconstruct the TOP channels with the strongest activation per image."),
    mode: str = typer.Option("max", "--mode", help="max: only the strongest activation (the paper); map: the whole feature map."),
    method: str = typer.Option("deconvnet", "--method", help="deconvnet (Zeiler & Fergus), backprop (gradient) or guided."),
    out: Path = typer.Option(Path("out/deconv"), "--out", help="Folder for the PNGs."),
    raw: bool = typer.Option(False, "--raw", help="Also save the float reconstructions as .npy."),
    batch_size: int = typer.Option(0, "--batch-size", help="Images per request (0: as many as keep the reply well under the message limit)."),
    server: str | None = ServerOption,
) -> None:
    """Deconv reconstructions of one layer for each image: a PNG per channel and a labelled grid per image."""
    from zfnet.client import render  # matplotlib loads only when pictures are drawn

    chosen = parse_numbers(channels, "--channels")
    if not chosen and top <= 0:
        raise InvalidArgument("--top must be positive")
    if batch_size < 0:
        raise InvalidArgument("--batch-size must be positive (or 0 for automatic)")
    files = expand(image)
    names = output_names(files)
    console = Console(stderr=True)
    written: list[Path] = []
    reconstructions, layer_name = 0, layer
    try:
        with Client(server) as client, job_progress(console) as bar:
            info = client.model_info(model)
            framed = framing(info)
            task = bar.add_task(f"deconv {method} of layer {layer}", total=len(files))
            for start, stop, result in client.deconv_batches(model, files, layer, chosen or None, top, mode, method, batch_size):
                batch = files[start:stop]
                pictures = [imagefolder.read_rgb(path, framed) for path in batch]
                written += render.write_deconv(result, pictures, names[start:stop], out, raw)
                reconstructions, layer_name = reconstructions + len(result.reconstructions), result.layer
                bar.advance(task, len(batch))
    except ZfnetError:
        if written:
            _report(written, out, reconstructions, layer_name, method, mode, f"before the error, for {len(files)} image(s) asked")
        raise
    _report(written, out, reconstructions, layer_name, method, mode, f"of {len(files)} image(s)")


def _report(written: list[Path], out: Path, reconstructions: int, layer: str, method: str, mode: str, of: str) -> None:
    """Say exactly what was written: counts by kind, and where the grids are."""
    if len(set(written)) != len(written):  # output_names makes this impossible; never report a count that is not on disk
        raise InvalidArgument("two outputs were written to the same file; please report this")
    kinds = Counter("grid" if p.name.endswith("_grid.png") else p.suffix for p in written)
    grids = [p for p in written if p.name.endswith("_grid.png")]
    print(f"layer {layer}: {reconstructions} reconstructions ({method}, {mode}) {of}")
    print(f"wrote {len(written)} files under {out}/: {kinds['.png']} reconstruction PNGs, {kinds['.npy']} .npy arrays, {kinds['grid']} grid(s)" + (":" if grids else ""))
    for grid in grids[:LISTED_GRIDS]:
        print(f"  {grid}")
    if len(grids) > LISTED_GRIDS:
        print(f"  ... and {len(grids) - LISTED_GRIDS} more (*_grid.png)")


def output_names(paths: list[Path]) -> list[str]:
    """A distinct output name per image: its stem; where stems repeat, led by as few parent folders
    as tell the images apart; in one folder, followed by the suffix; never the same name twice."""
    resolved = [p.resolve() for p in paths]
    names = [p.stem for p in paths]
    by_stem: dict[str, list[int]] = defaultdict(list)
    for i, path in enumerate(paths):
        by_stem[path.stem].append(i)
    for stem, group in by_stem.items():
        folders = {resolved[i].parent for i in group}
        if len(folders) > 1:
            for i in group:
                mine = resolved[i].parent
                depth = next(d for d in range(1, len(mine.parts) + 1) if all(f.parts[-d:] != mine.parts[-d:] for f in folders - {mine}))
                names[i] = "_".join([*mine.parts[-depth:], stem]).lstrip("/_")
        neighbours = Counter(resolved[i].parent for i in group)
        for i in group:
            if neighbours[resolved[i].parent] > 1 and paths[i].suffix:
                names[i] += "_" + paths[i].suffix.lstrip(".").lower()
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, k = name, 1
        while candidate in taken:
            k += 1
            candidate = f"{name}-{k}"
        taken.add(candidate)
        unique.append(candidate)
    return unique
