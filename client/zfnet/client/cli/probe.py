"""``zfclient probe``: linear probes per layer on feature folders (no server needed)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from zfnet.client import probe
from zfnet.client import features as feature_files
from zfnet.client.cli.common import job_progress, parse_numbers
from zfnet.errors import InvalidArgument, ZfnetWarning


def at_the_edge(result: probe.ProbeResult) -> list[str]:
    """The layers whose C (median over folds) is the smallest or largest of the grid: the best C may lie beyond it."""
    edges = (min(result.cs), max(result.cs))
    return [row.name for row in result.layers if float(np.median(row.c)) in edges]


def _table(result: probe.ProbeResult) -> Table:
    pixels = result.pixels.mean
    table = Table(
        "layer", "#", "pooling", "dims", "accuracy", "vs pixels", "C",
        title=(
            f"{result.model} on {result.data}: {result.train_per_class} train / up to {result.test_per_class} test images per class, "
            f"{result.probed_classes} classes, {result.folds} folds (seed {result.seed})"
        ),
        caption=(
            f"accuracy: mean per-class test accuracy, mean ± std over folds; LogisticRegressionCV on features standardised on the "
            f"training split, C from {', '.join(f'{c:g}' for c in result.cs)} by {result.cv}-fold CV on it (median shown), "
            f"max_iter {result.max_iter}; layers over {result.max_dim} dims reduced by PCA fit on the training split (dims a→b)"
        ),
    )
    for row in result.layers:
        dims = f"{row.dim}" if row.used_dim == row.dim else f"{row.dim}→{row.used_dim}"
        delta = "" if row.name == "pixels" else f"{100 * (row.mean - pixels):+.1f}"
        table.add_row(
            row.name, str(row.number or ""), row.pooling, dims, f"{100 * row.mean:.1f} ± {100 * row.std:.1f}", delta, f"{np.median(row.c):g}",
            style="bold" if row.name != "pixels" and row.mean == max(r.mean for r in result.layers) else None,
        )
    return table


def _per_class_table(result: probe.ProbeResult) -> Table:
    table = Table("class", *[r.name for r in result.layers], title=f"{result.model} on {result.data}: accuracy per class (mean over folds)")
    for k, name in enumerate(result.classes):
        values = [r.per_class[k] for r in result.layers]
        if all(np.isnan(v) for v in values):
            continue
        table.add_row(name, *[f"{100 * v:.0f}" for v in values])
    return table


def command(
    features: list[Path] = typer.Option(..., "--features", help="A folder written by `zfclient features`; repeat to compare several in one plot."),
    layer: list[str] = typer.Option([], "--layer", help="Probe only these layers (number or name; repeatable). The raw pixels are always probed."),
    train_per_class: int = typer.Option(30, "--train-per-class", help="Training images per class in each fold."),
    test_per_class: int = typer.Option(50, "--test-per-class", help="Test images per class in each fold (at most; fewer where a class has fewer left)."),
    folds: int = typer.Option(5, "--folds", help="Train/test splits, each drawn with the seed."),
    seed: int = typer.Option(0, "--seed", help="Seed of the splits (and of the CV folds and PCA)."),
    cv: int = typer.Option(3, "--cv", help="Folds of the training split that choose C."),
    max_dim: int = typer.Option(probe.MAX_DIM, "--max-dim", help="Reduce larger layers by PCA (fit on the training split) to this many dimensions."),
    max_iter: int = typer.Option(probe.MAX_ITER, "--max-iter", help="L-BFGS iterations per fit."),
    c_grid: str = typer.Option(
        ",".join(f"{c:g}" for c in probe.CS), "--c-grid", help="The inverse regularisation strengths C that cross-validation chooses from (a warning says when a layer's best C is at an edge).",
    ),
    jobs: int = typer.Option(os.cpu_count() or 1, "--jobs", help="Fits run in parallel processes (one thread each)."),
    per_class: bool = typer.Option(False, "--per-class", help="Also show the accuracy of each class per layer."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list (one object per folder, splits included) on stdout and nothing else."),
    plot: Path | None = typer.Option(None, "--plot", help="Where to save the plot of accuracy against layer (default: FEATURES/probe.png)."),
) -> None:
    """Train a linear classifier on each layer's features with a few images per class and report the
    test accuracy per layer beside the raw-pixel baseline (Zeiler & Fergus, Sec. 5)."""
    cs = parse_numbers(c_grid, "--c-grid", float)
    if len(cs) < 2 or min(cs) <= 0:
        raise InvalidArgument(f"--c-grid needs at least two positive values, got {c_grid!r}")
    sets = [feature_files.load(folder) for folder in features]
    results = []
    with job_progress() as bar:
        for fs in sets:
            count = len(layer) + 1 if layer else len(fs.layers)
            task = bar.add_task(f"probing {fs.folder.name}", total=count * folds)
            results.append(probe.run(
                fs, layer or None, train_per_class, test_per_class, folds, seed, cv, cs=sorted(cs), max_dim=max_dim, max_iter=max_iter, jobs=jobs,
                on_step=lambda name, fold, task=task: bar.update(task, advance=1, description=f"probing {name}"),
            ))
    plot = plot or features[0] / "probe.png"
    title = f"Linear probe per layer: {train_per_class} train / up to {test_per_class} test images per class, {folds} folds (seed {seed})"
    from zfnet.client import render

    render.probe_plot(results, title, plot)
    for result in results:
        edge = at_the_edge(result)
        if edge:
            warnings.warn(
                f"{result.model}: the best C of {', '.join(edge)} is at an edge of the grid ({', '.join(f'{c:g}' for c in result.cs)}); "
                "the best value may lie beyond it: widen --c-grid past that edge", ZfnetWarning, stacklevel=2,
            )
    if as_json:
        print(json.dumps([r.to_dict() for r in results]))
        return
    console = Console()
    for result in results:
        console.print(_table(result))
        if per_class:
            console.print(_per_class_table(result))
    console.print(f"plot: {plot}")
