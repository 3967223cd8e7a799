"""``zfclient layers``: the layer table of any ONNX model."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file or a model name on the server."),
    server: str | None = ServerOption,
) -> None:
    """Index, tensor name, op, output shape, which tensor --layer N selects, and the names the
    tensor had in the model as saved (--layer accepts them too)."""
    with Client(server) as client:
        info = client.model_info(model)
    table = Table("#", "name", "op", "shape", "--layer", "also", title=f"{info.name}: input {info.input_name} {_shape(info.input_shape)}")
    for row in info.layers:
        table.add_row(str(row.index), row.name, row.op, _shape(row.shape), str(row.number) if row.number else "", ", ".join(row.aliases))
    Console(width=120).print(table)


def _shape(shape) -> str:
    return "(" + ", ".join("N" if d < 0 else str(d) for d in shape) + ")"
