"""``zfclient layers``: the layer table of any ONNX model."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file or a model name on the server."),
    show_all: bool = typer.Option(False, "--all", help="Also list the tensors computed inside a module that are not its output."),
    server: str | None = ServerOption,
) -> None:
    """Index, tensor name, op, output shape, channel axis, which tensor --layer N selects, and the other
    names --layer accepts: the modules whose output the tensor is and the names it had in the model
    as saved. Module outputs are listed; tensors inside a module only with --all."""
    with Client(server) as client:
        info = client.model_info(model)
    rows = [row for row in info.layers if show_all or not row.internal]
    hidden = len(info.layers) - len(rows)
    title = f"{info.name}: input {info.input_name} {_shape(info.input_shape)}; logits = {info.output_name}"
    table = Table("#", "name", "op", "shape", "channels", "--layer", "also", title=title)
    for row in rows:
        also = [*(m for m in row.modules if m != row.name), *row.aliases]
        table.add_row(
            str(row.index), row.name + (" (inside)" if row.internal else ""), row.op, _shape(row.shape), f"axis {row.channel_axis}",
            str(row.number) if row.number else "", ", ".join(also),
        )
    Console(width=140).print(table)
    if hidden:
        print(f"{hidden} tensors computed inside modules are not shown; --all lists them")


def _shape(shape) -> str:
    return "(" + ", ".join("N" if d < 0 else str(d) for d in shape) + ")"
