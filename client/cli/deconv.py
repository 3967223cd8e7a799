"""``zfclient deconv``: project a layer's strongest activations back to pixels and save pictures."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption, parse_numbers
from zfnet.errors import InvalidArgument


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file (uploaded if the server lacks it) or a model name on the server."),
    layer: str = typer.Option(..., "--layer", help="Layer number N (the N-th conv/fc layer, as in the paper) or an exact tensor name."),
    image: list[Path] = typer.Option(..., "--image", help="Image file; repeat for several."),
    channels: str | None = typer.Option(None, "--channels", help="Explicit channels, e.g. 3,17 (default: the top channels)."),
    top: int = typer.Option(9, "--top", help="Reconstruct the TOP channels with the strongest activation per image."),
    mode: str = typer.Option("max", "--mode", help="max: only the strongest activation (the paper); map: the whole feature map."),
    method: str = typer.Option("deconvnet", "--method", help="deconvnet (Zeiler & Fergus), backprop (gradient) or guided."),
    out: Path = typer.Option(Path("out/deconv"), "--out", help="Folder for the PNGs."),
    raw: bool = typer.Option(False, "--raw", help="Also save the float reconstructions as .npy."),
    server: str | None = ServerOption,
) -> None:
    """Deconv reconstructions of one layer for each image: a PNG per channel and a labelled grid per image."""
    from zfnet.client import render  # matplotlib loads only when pictures are drawn

    chosen = parse_numbers(channels, "--channels")
    if not chosen and top <= 0:
        raise InvalidArgument("--top must be positive")
    console = Console(stderr=True)
    with Client(server) as client, console.status(f"deconv {method} of layer {layer} on {len(image)} image(s)"):
        info = client.model_info(model)
        result = client.deconv(model, image, layer, chosen or None, top, mode, method)
    size = tuple(info.input_shape[2:4])
    pictures = [imagefolder.read_rgb(path, size) for path in image]
    names = _unique_stems(image)
    written = render.write_deconv(result, pictures, names, out, raw)
    grids = [p for p in written if p.name.endswith("_grid.png")]
    print(f"layer {result.layer}: {len(result.reconstructions)} reconstructions ({method}, {mode}) of {len(image)} image(s)")
    print(f"wrote {len(written) - len(grids)} files under {out}/ and {len(grids)} grid(s):")
    for grid in grids:
        print(f"  {grid}")


def _unique_stems(paths: list[Path]) -> list[str]:
    """File stems, prefixed by their folder where two images share a stem."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
