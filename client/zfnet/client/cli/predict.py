"""``zfclient predict``: class probabilities for images."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption, expand

BATCH = 64  # images per request (a folder may hold many)


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file or a model name on the server."),
    image: list[Path] = typer.Option(..., "--image", help="Image file or folder (searched recursively for images); repeat for several."),
    top: int = typer.Option(5, "--top", help="Classes to show per image."),
    server: str | None = ServerOption,
) -> None:
    """Top classes and their probabilities for each image."""
    files = expand(image)
    with Client(server) as client:
        predictions = [p for start in range(0, len(files), BATCH) for p in client.predict(model, files[start : start + BATCH], top).predictions]
    table = Table("image", "class", "probability", title=f"predictions of {model}")
    for path, prediction in zip(files, predictions):
        for rank, score in enumerate(prediction.top):
            table.add_row(path.name if rank == 0 else "", score.label, f"{score.probability:.3f}")
    Console().print(table)
