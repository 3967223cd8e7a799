"""What the commands share: the server and connection options, number and layer lists, true classes, progress bars."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from zfnet.client import transport
from zfnet.client.transport import SERVER_ENV, TLS_CA_ENV, TLS_CERT_ENV, TLS_ENV, TLS_KEY_ENV, TOKEN_ENV, Connection
from zfnet.errors import InvalidArgument
from zfnet.wire.common import LayerKey, layer_key
from zfnet.wire.models import ModelInfo

ServerOption = typer.Option(
    None, "--server", envvar=SERVER_ENV,
    help=f"HOST:PORT of a running zfnet server (or ${SERVER_ENV}); several replicas as HOST:PORT,HOST:PORT or dns:///NAME:PORT; without it the service runs in-process.",
)


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


def input_size(info: ModelInfo) -> tuple[int, int]:
    """The (height, width) the server resizes images to: the last two of the model's (-1, C, H, W) input."""
    height, width = info.input_shape[2:4]
    return height, width


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
    token: str | None = typer.Option(None, "--token", envvar=TOKEN_ENV, help=f"Bearer token of a server started with --token-file (${TOKEN_ENV} keeps it out of `ps`)."),
    tls: bool = typer.Option(False, "--tls", envvar=TLS_ENV, help="Talk TLS to --server, trusting the system's CA certificates."),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", envvar=TLS_CA_ENV, help="Talk TLS to --server, trusting this PEM CA (a private CA or a self-signed certificate)."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", envvar=TLS_CERT_ENV, help="PEM client certificate, for a server that asks for one (mutual TLS)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", envvar=TLS_KEY_ENV, help="PEM private key of --tls-cert."),
) -> None:
    """How every command reaches a --server: TLS and a bearer token (given before the command)."""
    transport.cli_connection = Connection(token or None, tls, tls_ca, tls_cert, tls_key)


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
