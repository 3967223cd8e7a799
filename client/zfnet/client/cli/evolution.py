"""``zfclient evolution``: how feature maps evolve over training (Zeiler & Fergus 2013, Fig. 4): for each
snapshot, each channel's strongest activation over a data set and its reconstruction, side by side."""

from __future__ import annotations

import glob
from pathlib import Path

import typer
from rich.console import Console

from zfnet import evolution
from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption, job_progress, note_data, parse_ranges
from zfnet.errors import InvalidArgument, NotFound
from zfnet.wire.common import Progress

DEFAULT_CHANNELS = "0-15"


def command(
    model: list[str] = typer.Option([], "--model", help="A snapshot (.onnx), in training order; repeat for each. Caffe snapshots: `zfclient convert caffe` first."),
    models: str | None = typer.Option(None, "--models", help="A glob over a snapshot folder, e.g. 'snaps/*.onnx', sorted by the epoch or iteration number in the names."),
    layer: list[str] = typer.Option([], "--layer", help="Layer number N (the paper's numbering) or a tensor name; repeat for several (one pass per snapshot serves all)."),
    data: str = typer.Option(..., "--data", help="A local image folder (a class tree DIR/<class>/<image>, or a flat folder), streamed to the server, or a data set name on the server."),
    channels: str = typer.Option(DEFAULT_CHANNELS, "--channels", help="Channels to follow in every layer, e.g. 0-15,20 (rows of the sheet)."),
    method: str = typer.Option("deconvnet", "--method", help="Reconstruction: deconvnet (Zeiler & Fergus), guided or backprop."),
    out: Path = typer.Option(Path("out/evolution"), "--out", help="Folder for evolution.png, evolution.json and evolution.npz."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    server: str | None = ServerOption,
) -> None:
    """Feature evolution over training: rows are channels, columns snapshots (labelled by epoch or iteration),
    each cell the reconstruction of the channel's strongest activation over the data set; beside it, that
    activation against the snapshot."""
    snapshots = _snapshots(model, models)
    if not layer:
        raise InvalidArgument("--layer is required (repeat it for several layers)")
    picked = parse_ranges(channels, "--channels")
    labels = [evolution.label(s) for s in snapshots]
    console = Console(stderr=True)
    with Client(server) as client:
        dataset = client.dataset(data, batch_size=batch_size)
        with job_progress(console) as bar:
            result = client.evolution(snapshots, dataset, list(layer), picked, method, labels, on_progress=_Bars(bar, labels))
    scanned = result.columns[0].result.state  # every snapshot reads the same images
    note_data(dataset, scanned.images_read - scanned.skipped_count, scanned.skipped, scanned.skipped_count)
    from zfnet.client import evolution as pictures  # noqa: PLC0415  (matplotlib: only to draw)

    source = f"images in {data}" if Path(data).is_dir() else f"data set {data} of the server"
    title = f"Feature evolution: {len(snapshots)} snapshots, {labels[0]} .. {labels[-1]}; {method}; {source}"
    saved = pictures.write(result, out, title, data)
    for layer_name in result.layers:
        strongest = [result.entry(layer_name, ch, c) for ch in result.channels[layer_name] for c in range(len(result.columns))]
        print(f"{layer_name}: {len(result.channels[layer_name])} channels x {len(result.columns)} snapshots ({sum(e is not None for e in strongest)} reconstructions)")
    print(f"sheet: {saved['sheet']}")
    print(f"numbers: {saved['json']}, {saved['npz']}")


def _snapshots(model: list[str], models: str | None) -> list[str]:
    """--model files as given (in training order), or the --models glob sorted by epoch or iteration."""
    if model and models:
        raise InvalidArgument("give the snapshots either with --model (repeated) or with --models GLOB, not both")
    if models:
        found = glob.glob(models)
        if not found:
            raise NotFound(f"no snapshot matches {models!r}")
        return [str(p) for p in evolution.in_training_order(found)]
    if not model:
        raise InvalidArgument("no snapshots: give --model for each (in training order) or --models 'DIR/*.onnx'")
    return list(model)


class _Bars:
    """Progress across snapshots: one bar for the snapshots, one per stage of the current snapshot."""

    def __init__(self, bar, labels: list[str]) -> None:
        self.bar, self.labels = bar, labels
        self.snapshots = bar.add_task("snapshots", total=len(labels))
        self.stages: dict[str, int] = {}
        self.current = -1

    def __call__(self, position: int, progress: Progress) -> None:
        if progress.stage == "snapshots":
            self.bar.update(self.snapshots, completed=progress.done, description=f"snapshots ({self.labels[min(position, len(self.labels) - 1)]})")
            return
        if position != self.current:
            for task in self.stages.values():
                self.bar.remove_task(task)
            self.stages, self.current = {}, position
        if progress.stage not in self.stages:
            self.stages[progress.stage] = self.bar.add_task(f"  {progress.stage}", total=progress.total)
        self.bar.update(self.stages[progress.stage], completed=progress.done, total=progress.total)
