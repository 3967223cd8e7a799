"""``zfclient activations``: the activations of chosen layers, as an .npz and pictures of the maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption
from zfnet.client.names import safe_name


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file or a model name on the server."),
    layer: list[str] = typer.Option(..., "--layer", help="Layer number or tensor name; repeat for several."),
    image: list[Path] = typer.Option(..., "--image", help="Image file; repeat for several."),
    out: Path = typer.Option(Path("out/activations"), "--out", help="Folder for activations.npz and the feature-map grids."),
    server: str | None = ServerOption,
) -> None:
    """Save activations (N, ...) per layer in one .npz, and a grid of feature maps per image and layer."""
    from zfnet.client import render  # matplotlib loads only when pictures are drawn

    with Client(server) as client:
        values = client.activations(model, image, layer)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "activations.npz", allow_pickle=True, **values, images=np.asarray([str(p) for p in image]))
    pictures = 0
    for name, value in values.items():
        if value.ndim == 4:
            for path, maps in zip(image, value):
                render.feature_map_tiles(maps, f"{path.name} | {name} | {maps.shape[0]} feature maps", out / f"{path.stem}_{safe_name(name)}_maps.png")
                pictures += 1
    print(f"wrote {out / 'activations.npz'} ({', '.join(f'{k} {list(v.shape)}' for k, v in values.items())}) and {pictures} feature-map grid(s) under {out}/")
