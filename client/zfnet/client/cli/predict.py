"""``zfclient predict``: class probabilities for images."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from zfnet.client.api import Client
from zfnet.client.cli.common import ImageOption, ServerOption, StrictOption, image_files, job_progress

BATCH = 64  # images per request (a folder may hold many)


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file or a model name on the server."),
    image: list[Path] = ImageOption,
    top: int = typer.Option(5, "--top", help="Classes to show per image."),
    strict: bool = StrictOption,
    server: str | None = ServerOption,
) -> None:
    """Top classes and their probabilities for each image."""
    files = image_files(image, strict)
    predictions = []
    with Client(server) as client, job_progress() as bar:
        task = bar.add_task("predicting", total=len(files))
        for start in range(0, len(files), BATCH):
            predictions += client.predict(model, files[start : start + BATCH], top).predictions
            bar.advance(task, len(files[start : start + BATCH]))
    table = Table("image", "class", "probability", title=f"predictions of {model}")
    for path, prediction in zip(files, predictions):
        for rank, score in enumerate(prediction.top):
            table.add_row(path.name if rank == 0 else "", score.label, f"{score.probability:.3f}")
    Console().print(table)
