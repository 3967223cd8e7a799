"""``zfclient filters``: tile a convolution's filters into one labelled picture."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from zfnet.client.api import Client
from zfnet.client.cli.common import ForceOption, ServerOption, refuse_overwrite
from zfnet.client.names import safe_name


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file (uploaded if the server lacks it) or a model name on the server."),
    layer: str = typer.Option(..., "--layer", help="A convolution's name (conv1), or a layer number or tensor of its block."),
    limit: int = typer.Option(1024, "--limit", help="Tile at most this many filters (deeper layers: (output, input) pairs)."),
    out: Path | None = typer.Option(None, "--out", help="The PNG to write (default: out/filters/<model>_<layer>_<normalise>.png)."),
    normalise: str = typer.Option("sheet", "--normalise", help="Scale to [0, 1] over the whole sheet (as the classic show_feature snippet) or per filter."),
    force: bool = ForceOption,
    server: str | None = ServerOption,
) -> None:
    """Tile a convolution's filters: a first layer's as RGB tiles, deeper ones as a grey tile per (output, input) pair."""
    with Client(server) as client, Console(stderr=True).status(f"filters of {layer}"):
        found = client.filters(model, layer)
    from zfnet.client import render  # noqa: PLC0415  (matplotlib: only to draw)

    out = out or Path("out/filters") / f"{safe_name(Path(model).stem)}_{safe_name(found.layer)}_{normalise}.png"
    refuse_overwrite([out], force)

    tiles, shown = render.filter_tiles(found.weights, limit, normalise, bgr=found.channel_order == "bgr")
    title = f"{Path(model).name} · {found.layer} ({found.op}, weights {list(found.weights.shape)}) · {shown}, scaled to [0, 1] per {normalise}"
    render.filters_figure(tiles, render.filter_labels(found.weights, limit), found.weights.shape[2:], title, out)
    print(f"{found.layer}: {shown} -> {out}")
