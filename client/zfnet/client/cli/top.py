"""``zfclient top``: the top-k images per feature map over a whole data set, their reconstructions,
and a browsable report (Zeiler & Fergus 2013, Fig. 2)."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console

from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption, job_progress, note_data, parse_ranges
from zfnet.client.facades.datasets import local_dataset
from zfnet.errors import InvalidArgument, ZfnetError
from zfnet.topk import TopK
from zfnet.wire.common import Progress
from zfnet.wire.top import TopResult
from zfnet.wire.visualise import MAX_STEPS, MAX_UNITS, STEPS, VisualiseResult

STATE, PARTIAL = "state.npz", "partial-state.npz"


def command(
    model: str = typer.Option(..., "--model", help="An .onnx file (uploaded if the server lacks it) or a model name on the server."),
    layer: list[str] = typer.Option([], "--layer", help="Layer number N (the paper's numbering) or a tensor name; repeat for several (one pass serves all)."),
    data: str = typer.Option(..., "--data", help="A local image folder (a class tree DIR/<class>/<image>, or a flat folder: no classes shown), streamed to the server, or a data set name on the server."),
    k: int | None = typer.Option(None, "--k", help="Images per channel (default: 9)."),
    channels: str | None = typer.Option(None, "--channels", help="Channels to track in every layer, e.g. 0-15,20 (default: all)."),
    method: str = typer.Option("deconvnet", "--method", help="Reconstruction: deconvnet (Zeiler & Fergus), guided or backprop."),
    by: str | None = typer.Option(None, "--by", help="Rank images by the map's spatial max (the paper) or mean (default: max)."),
    out: Path = typer.Option(Path("out/top"), "--out", help="Folder for the report (index.html), its pictures, manifest.json and state.npz."),
    json_out: bool = typer.Option(False, "--json", help="Print manifest.json to stdout instead of a summary."),
    raw: bool = typer.Option(False, "--raw", help="Also save the float reconstructions as .npy, one (k, C, H, W) file per channel."),
    visualise: bool = typer.Option(
        False, "--visualise", help="Also optimise an image per channel (feature visualisation) and show it beside its top-k; "
        "it costs about 10 s per channel at 32x32 and 512 steps on 2 CPU cores, so it is off by default.",
    ),
    visualise_steps: int = typer.Option(STEPS, "--visualise-steps", help="With --visualise: optimisation steps per channel."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    start: int = typer.Option(0, "--start", help="First data-set index to read (a shard: --start/--stop)."),
    stop: int = typer.Option(0, "--stop", help="One past the last index to read (0: the end)."),
    scan_only: bool = typer.Option(False, "--scan-only", help="Only scan: write OUT/state.npz (a shard to --merge later), no reconstructions."),
    merge: list[Path] = typer.Option([], "--merge", help="Merge the state.npz of these output folders (shards), read what none of them read, and report."),
    resume: bool = typer.Option(False, "--resume", help=f"Continue an interrupted job from OUT/{PARTIAL}."),
    checkpoint_every: int = typer.Option(1024, "--checkpoint-every", help=f"Images between checkpoints (OUT/{PARTIAL})."),
    server: str | None = ServerOption,
    ray: bool = typer.Option(
        False, "--ray", help="Run the job on Ray actors (needs the ray extra of zfnet): a local Ray, or --ray-address. --data and --model must be local.",
    ),
    ray_address: str | None = typer.Option(None, "--ray-address", help="With --ray: join this Ray cluster (auto, ray://host:10001) instead of starting a local one."),
    ray_workers: int = typer.Option(2, "--ray-workers", help="With --ray: actors in the pool, each holding one engine."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus", help="With --ray: GPUs per actor (1: one GPU each)."),
) -> None:
    """Top-k images per channel over a data set, their input patches and reconstructions: a Fig. 2 sheet per layer,
    a PNG per channel, a static HTML report (OUT/index.html), manifest.json and the scan's state."""
    state = _prior_state(out, merge, resume)
    layers = _layers(layer, state)
    if k is not None and k <= 0:
        raise InvalidArgument(f"--k must be positive, got {k}")
    if visualise and not 1 <= visualise_steps <= MAX_STEPS:  # now, not after the job
        raise InvalidArgument(f"--visualise-steps must be in 1..{MAX_STEPS}, got {visualise_steps}")
    if not scan_only:
        from zfnet.client import report  # noqa: PLC0415  (matplotlib's fonts: only to draw)

        report.check_replaceable(out)  # now, not after the job: the report will replace the folder whole
    for finished in ("index.html", "manifest.json"):  # an earlier report here must not pass for this job's
        (out / finished).unlink(missing_ok=True)
    console = Console(stderr=True)
    began = time.perf_counter()
    if ray or ray_address:
        if server:
            raise InvalidArgument("--ray runs the job on Ray actors, not on --server; give one of them")
        from zfnet.client import ray_jobs  # noqa: PLC0415  (Ray only with --ray)

        cluster = ray_jobs.Cluster(ray_address, ray_workers, ray_gpus)
        (out / PARTIAL).parent.mkdir(parents=True, exist_ok=True)
        with job_progress(console) as bar:
            try:
                with _resumable(console, out):
                    done = ray_jobs.top(
                        model, data, layers, k or (state.k if state is not None else 9), by or (state.by if state is not None else "max"),
                        parse_ranges(channels, "--channels") or _channels_of(state), method, batch_size, cluster, state, scan_only,
                        on_progress=functools.partial(_show_stage, bar, {}), start=start, stop=stop,
                        on_checkpoint=lambda s: s.save(out / PARTIAL), checkpoint_every=checkpoint_every,
                    )
            finally:
                ray_jobs.shutdown()
        (out / PARTIAL).unlink(missing_ok=True)
        scanned = done if isinstance(done, TopK) else done.state
        note_data(local_dataset(Path(data)), scanned.images_read - scanned.skipped_count, scanned.skipped, scanned.skipped_count)
        if isinstance(done, TopK):  # --scan-only: the merged state alone
            done.save(out / STATE)
            _print_scanned(done, out)
            return
        done.state.save(out / STATE)
        with Client() as client:
            visualisations = _visualise(client, model, done, visualise_steps, console) if visualise else None
        _finish(done, out, model, data, began, raw, json_out, visualisations)
        return
    with Client(server) as client:
        dataset = client.dataset(data, start, stop, batch_size)
        picked = parse_ranges(channels, "--channels") or _channels_of(state)
        k = k or (state.k if state is not None else 9)
        by = by or (state.by if state is not None else "max")
        (out / PARTIAL).parent.mkdir(parents=True, exist_ok=True)
        with job_progress(console) as bar:
            with _resumable(console, out):
                state = client.top_scan(
                    model, dataset, layers, k, by, picked, state, checkpoint_every,
                    on_progress=functools.partial(_show, bar, {}), on_checkpoint=lambda s: s.save(out / PARTIAL),
                    method=None if scan_only else method,
                )
        state.save(out / STATE)
        (out / PARTIAL).unlink(missing_ok=True)
        note_data(dataset, state.images_read - state.skipped_count, state.skipped, state.skipped_count)
        if scan_only:
            _print_scanned(state, out)
            return
        with job_progress(console) as bar:
            result = client.top_reconstruct(model, dataset, state, method, on_progress=functools.partial(_show, bar, {}))
        visualisations = _visualise(client, model, result, visualise_steps, console) if visualise else None
    _finish(result, out, model, data, began, raw, json_out, visualisations)


def _visualise(client: Client, model: str, result: TopResult, steps: int, console: Console) -> dict[str, VisualiseResult]:
    """Each reported channel's optimised image, by layer (MAX_UNITS channels a call), with progress."""
    found: dict[str, VisualiseResult] = {}
    with job_progress(console) as bar:
        task = bar.add_task("visualise", total=steps * sum(len(channels) for channels in result.entries.values()))
        finished = 0
        for layer, channels in result.entries.items():
            chosen, parts = list(channels), []
            for start in range(0, len(chosen), MAX_UNITS):
                units = chosen[start : start + MAX_UNITS]
                shown = functools.partial(lambda before, _stage, done, _total: bar.update(task, description=f"visualise {layer}", completed=before + done), finished)
                parts.append(client.visualise(model, units, layer, shown, steps=steps))
                finished += steps * len(units)
            found[layer] = replace(parts[0], units=[u for part in parts for u in part.units])
    return found


def _finish(
    result: TopResult, out: Path, model: str, data: str, began: float, raw: bool, json_out: bool, visualisations: dict[str, VisualiseResult] | None,
) -> None:
    """Write the report of a finished job (with the channels' optimised images, if made) and print its manifest or a summary."""
    from zfnet.client import report  # noqa: PLC0415  (matplotlib's fonts: only to draw)

    index = report.write(result, out, report.Job(Path(model).name, data, time.perf_counter() - began), raw, visualisations)
    if json_out:
        print((out / "manifest.json").read_text())
        return
    _summary(result.state, index, out)


@contextmanager
def _resumable(console: Console, out: Path) -> Iterator[None]:
    """A scan that stops early (interrupted, or its server went away or failed) after a checkpoint
    says how to continue from it."""
    try:
        yield
    except (KeyboardInterrupt, ZfnetError):
        if (out / PARTIAL).is_file():
            console.print(f"stopped: the last checkpoint is {out / PARTIAL}; run the same command with --resume to continue")
        raise


def _prior_state(out: Path, merge: list[Path], resume: bool) -> TopK | None:
    """The state to continue from: shards merged, or the interrupted job's last checkpoint."""
    if resume and merge:
        raise InvalidArgument("--resume and --merge do not go together")
    if resume:
        return TopK.load(out / PARTIAL)
    if merge:
        states = [TopK.load(Path(folder) / STATE if Path(folder).is_dir() else Path(folder)) for folder in merge]
        return functools.reduce(TopK.merge, states)
    return None


def _layers(layer: list[str], state: TopK | None) -> list[str]:
    """The layers of the job: --layer, else those of the state continued from."""
    if layer:
        return list(layer)
    if state is None:
        raise InvalidArgument("--layer is required (repeat it for several layers)")
    return list(state.layers)


def _channels_of(state: TopK | None) -> list[int] | None:
    """The --channels a state was made with: the list every layer shares, or None (all) where they differ."""
    if state is None:
        return None
    lists = {tuple(int(c) for c in top.channels) for top in state.layers.values()}
    return list(lists.pop()) if len(lists) == 1 else None


def _show(bar, tasks: dict, progress: Progress) -> None:
    """Progress replies -> the bar: one task per stage, skipped images counted."""
    stage = progress.stage
    if stage not in tasks:
        tasks[stage] = [bar.add_task(stage, total=progress.total), 0]
    tasks[stage][1] += len(progress.skipped)
    label = stage + (f" ({tasks[stage][1]} skipped)" if tasks[stage][1] else "")
    bar.update(tasks[stage][0], completed=progress.done, total=progress.total, description=label)


def _show_stage(bar, tasks: dict, stage: str, done: int, total: int) -> None:
    """A Ray job's (stage, done, total) -> the bar, as :func:`_show` shows a server's progress."""
    _show(bar, tasks, Progress(stage, done, total))


def _print_scanned(state: TopK, out: Path) -> None:
    """The one line of a --scan-only job."""
    print(f"scanned {state.images_read - state.skipped_count:,} images ({_ranges(state)}); state in {out / STATE}; merge shards with --merge")


def _ranges(state: TopK) -> str:
    return ", ".join(f"[{s}, {e})" for s, e in state.covered) or "nothing"


def _summary(state: TopK, index: Path, out: Path) -> None:
    layers = ", ".join(f"{name} ({len(top.channels)} channels)" for name, top in state.layers.items())
    print(f"top-{state.k} by {state.by} over {state.images_read - state.skipped_count:,} images: {layers}")
    print(f"report: {index}")
    print(f"manifest: {out / 'manifest.json'}")
