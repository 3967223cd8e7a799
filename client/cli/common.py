"""What the commands share: the server option and number lists."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from zfnet.client.api import SERVER_ENV
from zfnet.errors import InvalidArgument

ServerOption = typer.Option(
    None, "--server", envvar=SERVER_ENV,
    help=f"HOST:PORT of a running zfnet server (or ${SERVER_ENV}); without it the service runs in-process.",
)


def parse_numbers(text: str | None, what: str, kind: type = int) -> list:
    """``"3,17"`` -> ``[3, 17]``; a clear error for anything else."""
    if not text:
        return []
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgument(f"{what} must be comma-separated numbers, got {text!r}") from None


def job_progress(console: Console | None = None) -> Progress:
    """The progress bar of long jobs (on stderr): stage, bar, done/total, elapsed and time left."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console or Console(stderr=True), transient=True,
    )
