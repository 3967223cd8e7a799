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
