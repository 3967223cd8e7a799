"""``zfclient features``: features of chosen layers over a whole data set, written to disk."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from zfnet.client import features
from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption, job_progress, note_data
from zfnet.errors import InvalidArgument
from zfnet.wire.common import Skipped


def parse_pools(options: list[str]) -> tuple[str, dict[str, str]]:
    """``["grid:2", "7=none"]`` -> default ``grid:2`` and ``{"7": "none"}``."""
    default, per_layer = "none", {}
    for option in options:
        layer, sep, spec = option.rpartition("=")
        if not sep:
            default = option
        elif not layer:
            raise InvalidArgument(f"--pool {option!r}: give LAYER=SPEC or SPEC")
        else:
            per_layer[layer] = spec
    return default, per_layer


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file or a model name on the server."),
    layer: list[str] = typer.Option(
        ..., "--layer", help="Layer number, tensor name, or 'all' (every numbered layer); repeat for several. The raw pixels ('pixels') are always stored too.",
    ),
    data: str = typer.Option(..., "--data", help="A local image folder (a class tree DIR/<class>/<image>, or a flat folder: every label -1), streamed to the server, or a data set name on the server."),
    pool: list[str] = typer.Option(
        ["none"], "--pool",
        help="none | avg | max | grid:S (mean over an S x S grid) for every layer with spatial axes, or LAYER=SPEC for one layer; repeatable.",
    ),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float16 (computed in float32 either way)."),
    fmt: str = typer.Option("npy", "--format", help="npy (one <layer>.npy per layer), npz (one file) or parquet (one file, a list column per layer)."),
    out: Path = typer.Option(Path("out/features"), "--out", help="Folder for the feature files and index.json."),
    start: int = typer.Option(0, "--start", help="First data-set index to read."),
    stop: int = typer.Option(0, "--stop", help="One past the last index to read (0: the end)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    force: bool = typer.Option(False, "--force", help="Replace the files of a different job in --out (otherwise refused)."),
    server: str | None = ServerOption,
    ray: bool = typer.Option(
        False, "--ray", help="Compute the rows on Ray actors (needs the ray extra of zfnet): a local Ray, or --ray-address. --data and --model must be local.",
    ),
    ray_address: str | None = typer.Option(None, "--ray-address", help="With --ray: join this Ray cluster (auto, ray://host:10001) instead of starting a local one."),
    ray_workers: int = typer.Option(2, "--ray-workers", help="With --ray: actors in the pool, each holding one engine."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus", help="With --ray: GPUs per actor (1: one GPU each)."),
) -> None:
    """Features of chosen layers for every image of a data set: one row per image, with labels and
    index.json; an interrupted run continues where it stopped when run again."""
    default, per_layer = parse_pools(pool)
    if ray or ray_address:
        if server:
            raise InvalidArgument("--ray runs the job on Ray actors, not on --server; give one of them")
        from zfnet.client import ray_jobs  # noqa: PLC0415  (Ray only with --ray)

        runner = contextlib.closing(ray_jobs.RayFeatures(ray_jobs.Cluster(ray_address, ray_workers, ray_gpus)))
    else:
        runner = Client(server)
    with runner as client, job_progress() as bar:
        task = bar.add_task("features", total=None)
        result = features.save(
            client, model, data, layer, out, default, per_layer, dtype, fmt, start, stop, batch_size, force,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
        index = features.read_index(result.folder)
        note_data(client.dataset(data), result.rows - result.skipped, [Skipped(s["index"], s["path"], s["reason"]) for s in index["skipped"]])
    if result.complete_before:
        print(f"{result.folder} already holds these features ({result.rows} rows); nothing to do")
        return
    shapes = ", ".join(f"{x['name']} {x['size']}" + (f" ({x['pooling']})" if x["pooling"] != "none" else "") for x in index["layers"])
    resumed = f"; continued from row {result.resumed_from}" if result.resumed_from else ""
    skipped = f"; {result.skipped} unreadable image(s) kept as NaN rows, listed in index.json" if result.skipped else ""
    print(f"wrote {result.rows} rows of {shapes} ({index['dtype']}, {index['format']}) to {result.folder}/{resumed}{skipped}")
