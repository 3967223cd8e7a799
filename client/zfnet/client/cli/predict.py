"""``zfclient predict``: class probabilities for images."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file or a model name on the server."),
    image: list[Path] = typer.Option(..., "--image", help="Image file; repeat for several."),
    top: int = typer.Option(5, "--top", help="Classes to show per image."),
    server: str | None = ServerOption,
) -> None:
    """Top classes and their probabilities for each image."""
    with Client(server) as client:
        reply = client.predict(model, image, top)
    table = Table("image", "class", "probability", title=f"predictions of {model}")
    for path, prediction in zip(image, reply.predictions):
        for rank, score in enumerate(prediction.top):
            table.add_row(path.name if rank == 0 else "", score.label, f"{score.probability:.3f}")
    Console().print(table)
