"""``zfclient evaluate``: top-1 accuracy on a one-folder-per-class image tree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption, StrictOption, image_files
from zfnet.errors import InvalidArgument


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file or a model name on the server."),
    data: Path = typer.Option(..., "--data", help="A labelled image tree: DATA/<class>/<image> (class = folder; images under it found recursively)."),
    classes: str | None = typer.Option(None, "--classes", help="Class names in the model's output order (default: the model's own)."),
    batch_size: int = typer.Option(500, "--batch-size", help="Images per request."),
    as_json: bool = typer.Option(False, "--json", help='Print {"top1", "n", "per_class"} on stdout and nothing else.'),
    strict: bool = StrictOption,
    server: str | None = ServerOption,
) -> None:
    """Top-1 accuracy overall and per class (classes without images left out)."""
    console = Console(stderr=True)
    with Client(server) as client:
        info = client.model_info(model)
        order = [c.strip() for c in classes.split(",")] if classes else list(info.classes)
        if not order:
            raise InvalidArgument("the model records no class names; pass --classes in its output order")
        folder = imagefolder.scan(data, order).require_labels("evaluate")
        decoded = set(image_files(folder.files, strict, folder.ignored))  # the count read is the count decoded
        kept = np.asarray([f in decoded for f in folder.files])
        files, labels = [f for f, k in zip(folder.files, kept) if k], folder.labels[kept]
        predicted = np.empty(len(files), np.int64)
        with Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task("", total=len(files))
            for start in range(0, len(files), batch_size):
                batch = files[start : start + batch_size]
                predicted[start : start + len(batch)] = client.probabilities(model, batch).argmax(axis=1)
                bar.advance(task, len(batch))
    correct = predicted == labels
    per_class = {name: float(correct[labels == i].mean()) for i, name in enumerate(order) if np.any(labels == i)}
    top1 = float(correct.mean())
    if as_json:
        print(json.dumps({"top1": top1, "n": len(files), "per_class": per_class}))
        return
    table = Table("class", "top-1", "images", title=f"{info.name} on {data}")
    for i, name in enumerate(order):
        if name in per_class:
            table.add_row(name, f"{per_class[name]:.2%}", str(int(np.sum(labels == i))))
    table.add_row("all", f"{top1:.2%}", str(len(files)), style="bold")
    Console().print(table)
