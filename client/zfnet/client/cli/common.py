"""What the commands share: the server and connection options, number and layer lists, true classes, progress bars."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from zfnet.client import models, transport
from zfnet.client.facades.datasets import Dataset
from zfnet.client.transport import SERVER_ENV, TLS_CA_ENV, TLS_CERT_ENV, TLS_ENV, TLS_KEY_ENV, TOKEN_ENV, Connection
from zfnet import imagefolder
from zfnet.errors import FailedPrecondition, InvalidArgument, NotFound
from zfnet.preprocessing import INTERPOLATIONS, PRESETS, Framing, Preprocessing
from zfnet.wire.common import LayerKey, Skipped, layer_key
from zfnet.wire.models import ModelInfo

ServerOption = typer.Option(
    None, "--server", envvar=SERVER_ENV,
    help=f"HOST:PORT of a running zfnet server (or ${SERVER_ENV}); several replicas as HOST:PORT,HOST:PORT or dns:///NAME:PORT; without it the service runs in-process.",
)


ForceOption = typer.Option(False, "--force", help="Overwrite files that already exist (otherwise the command refuses before any work).")


def refuse_overwrite(paths: list[Path], force: bool) -> None:
    """Stop before any work when a file this command would write exists, unless ``--force``."""
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FailedPrecondition(f"{existing[0]} exists{more}; pass --force to overwrite it, or choose another path")


def parse_numbers(text: str | None, what: str, kind: type = int) -> list:
    """``"3,17"`` -> ``[3, 17]``; a clear error for anything else."""
    if not text:
        return []
    try:
        if not text.isascii():
            raise ValueError(text)
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgument(f"{what} must be comma-separated numbers, got {text!r}") from None


def job_progress(console: Console | None = None) -> Progress:
    """The progress bar of long jobs (on stderr): stage, bar, done/total, elapsed and time left."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console or Console(stderr=True), transient=True,
    )
def unique_stems(paths: list[Path]) -> list[str]:
    """File stems, prefixed by their folder where two images share a stem."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


ImageOption = typer.Option(
    ..., "--image", help="Image file, or folder searched recursively (class folders or flat); repeat for several. Non-image files are listed as ignored.",
)
StrictOption = typer.Option(False, "--strict", help="Stop at the first image that does not decode (default: skip it and list it, with its full path, at the end).")


def image_files(paths: list[Path], strict: bool, ignored: Sequence[Path] = ()) -> list[Path]:
    """The images a command reads (:func:`zfnet.imagefolder.gather`: files, folders searched
    recursively, class trees and flat folders alike); what was skipped or ignored (with ``ignored``,
    the non-image files found beside them) is listed on stderr when the command ends (commands are
    wrapped by :func:`noted`)."""
    found = imagefolder.gather(paths, strict)
    _notes.extend(imagefolder.summary(len(found.files), found.unreadable, [*ignored, *found.ignored]))
    return found.files


def note_data(dataset: Dataset, decoded: int, skipped: Sequence[Skipped], skipped_count: int | None = None) -> None:
    """What a data-set job left out, listed on stderr when the command ends (as :func:`image_files`
    does): the images that did not decode, by full path (``decoded`` images were read; a job's state
    names the first of its ``skipped_count``), and the non-image files of a local folder."""
    unreadable = [imagefolder.Unreadable(dataset.full_path(s.index, s.path), s.reason) for s in skipped]
    note_left_out(decoded, unreadable, dataset.folder.ignored if dataset.folder is not None else [], skipped_count)


def note_left_out(decoded: int, unreadable: Sequence[imagefolder.Unreadable], ignored: Sequence[Path], undecoded: int | None = None) -> None:
    """What a command that read a local folder itself left out, listed on stderr when it ends."""
    _notes.extend(imagefolder.summary(decoded, unreadable, ignored, undecoded))


_notes: list[str] = []  # what the running command left out, said when it ends (:func:`noted`)


def noted(command: Callable) -> Callable:
    """A command that ends, however it ends, by saying on stderr what it left out (:func:`image_files`)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _notes.clear()
        try:
            return command(*args, **kwargs)
        finally:
            for line in _notes:
                print(f"note: {line}", file=sys.stderr)
            _notes.clear()

    return wrapper


def framing(info: ModelInfo) -> Framing:
    """How the server brings an image to the model's input (resize, or resize and centre-crop, as the
    model records): the pictures drawn under reconstructions are framed the same way."""
    return Framing.of(info.input_shape, info.preprocessing_json)


def parse_layers(text: str | None) -> list[LayerKey]:
    """``"1,7"`` -> ``[1, 7]``; tensor names stay names."""
    return [layer_key(part.strip()) for part in (text or "").split(",") if part.strip()]


def layer_or_none(text: str | None) -> LayerKey | None:
    """A ``--layer``-style option: a number or a tensor name; None when not given."""
    return layer_key(text.strip()) if text and text.strip() else None


def true_classes(labels: list[str], images: list[Path], classes: list[str]) -> tuple[list[str], list[str]]:
    """Per image, the true class to follow and where it comes from: ``--label`` (one for all images or
    one each), else the image's folder when it is named after a class, else "" (the server takes the
    original image's top-1 class)."""
    if len(labels) not in (0, 1, len(images)):
        raise InvalidArgument(f"{len(labels)} --label values for {len(images)} images; give one for all images or one per image")
    if labels:
        chosen = labels * len(images) if len(labels) == 1 else labels
        return list(chosen), ["--label"] * len(images)
    from_folder = [p.parent.name if p.parent.name in classes else "" for p in images]
    return from_folder, ["folder name" if name else "top-1 of the original: no label given" for name in from_folder]


@contextlib.contextmanager
def progress_bar(what: str) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr over the perturbed copies a request forwards; yields the callback."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("copies"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=None)
        yield lambda stage, done, total: bar.update(task, description=stage, completed=done, total=total)


def connection_options(
    ctx: typer.Context,
    token: str | None = typer.Option(None, "--token", envvar=TOKEN_ENV, help=f"Bearer token of a server started with --token-file (${TOKEN_ENV} keeps it out of `ps`)."),
    tls: bool = typer.Option(False, "--tls", envvar=TLS_ENV, help="Talk TLS to --server, trusting the system's CA certificates."),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", envvar=TLS_CA_ENV, help="Talk TLS to --server, trusting this PEM CA (a private CA or a self-signed certificate)."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", envvar=TLS_CERT_ENV, help="PEM client certificate, for a server that asks for one (mutual TLS)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", envvar=TLS_KEY_ENV, help="PEM private key of --tls-cert."),
) -> None:
    """How every command reaches a --server: TLS and a bearer token (given before the command); and,
    while the command runs, each model it uses that records no input normalisation is warned about, once."""
    transport.cli_connection = Connection(token or None, tls, tls_ca, tls_cert, tls_key)
    models.CHECK_PREPROCESSING = True
    ctx.call_on_close(lambda: setattr(models, "CHECK_PREPROCESSING", False))


def parse_ranges(text: str | None, what: str) -> list[int]:
    """``"0-15,20"`` -> ``[0, 1, ..., 15, 20]`` (inclusive ranges); a clear error for anything else."""
    out: list[int] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high) if high else int(low)
        except ValueError:
            raise InvalidArgument(f"{what} must be numbers or ranges like 0-15,20; got {text!r}") from None
        if first > last:
            raise InvalidArgument(f"{what}: the range {part} is empty")
        out.extend(range(first, last + 1))
    return list(dict.fromkeys(out))


# ---- preprocessing recorded with a model (convert torch, attach-preprocessing) ---------------------

PreprocessOption = typer.Option(
    None, "--preprocess", help="imagenet: ImageNet mean and std in the graph, resize and centre crop recorded (a built-in architecture's own evaluation transform).",
)
MeanOption = typer.Option(None, "--mean", help="Per-channel mean R,G,B on 0..255, subtracted in the graph (overrides --preprocess's).")
StdOption = typer.Option(None, "--std", help="Per-channel std R,G,B on 0..255, divided by in the graph after the mean (overrides --preprocess's).")
ResizeOption = typer.Option(None, "--resize", help="Resize each image's shorter side to N pixels before the centre crop to the input size (0: resize to the input size).")
InterpolationOption = typer.Option(None, "--interpolation", help=f"How images are resized: {', '.join(INTERPOLATIONS)} (default: bilinear).")
ChannelOrderOption = typer.Option("rgb", "--channel-order", help="Channel order the network expects: rgb or bgr.")


def chosen_preprocessing(
    preset: str | None, mean: str | None, std: str | None, resize: int | None, interpolation: str | None, channel_order: str,
    input_size: tuple[int, int], base: Preprocessing | None = None,
) -> Preprocessing | None:
    """The preprocessing the options ask to record for a model of ``input_size``: the preset
    (``base`` for ``imagenet`` where the architecture has its own, its resize scaled to another input
    size), changed by the explicit values; None when nothing is asked."""
    if preset is not None and preset not in PRESETS:
        raise InvalidArgument(f"unknown --preprocess {preset!r}; use {' or '.join(PRESETS)}, or give --mean/--std")
    if channel_order not in ("rgb", "bgr"):
        raise InvalidArgument(f"--channel-order must be rgb or bgr, got {channel_order!r}")
    if resize is not None and resize < 0:
        raise InvalidArgument(f"--resize must be positive (or 0), got {resize}")
    chosen = None
    if preset and base is not None and base.input_size:
        chosen = dataclasses.replace(base, input_size=input_size, resize=round(base.resize * max(input_size) / max(base.input_size)))
    elif preset:
        chosen = PRESETS[preset](input_size)
    if not (mean or std or resize is not None or interpolation or channel_order != "rgb"):
        return chosen
    chosen = chosen or Preprocessing(input_size=input_size)
    means, stds = parse_numbers(mean, "--mean", float), parse_numbers(std, "--std", float)
    if any(len(v) not in (0, 1, 3) for v in (means, stds)) or any(s <= 0 for s in stds):
        raise InvalidArgument("--mean and --std take one value or three (R,G,B); a std must be positive")
    return Preprocessing(
        channel_order=channel_order, mean=means or chosen.mean, scale=[1.0 / s for s in stds] or chosen.scale, input_size=input_size,
        resize=chosen.resize if resize is None else resize, interpolation=interpolation or chosen.interpolation,
    )
