"""What every command shares: the server option, the error edge, number lists."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import typer

from zfnet.client.api import SERVER_ENV, Client
from zfnet.errors import InvalidArgument, ZfnetError

ServerOption = typer.Option(
    None, "--server", envvar=SERVER_ENV,
    help=f"HOST:PORT of a running zfnet server (or ${SERVER_ENV}); without it the service runs in-process.",
)


def edge(command: Callable) -> Callable:
    """User errors -> one line on stderr and exit code 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ZfnetError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(1) from None
        except OSError as err:
            print(f"error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def connect(server: str | None) -> Client:
    """A client for ``server``, or an in-process service."""
    return Client(server)


def parse_numbers(text: str | None, what: str, kind: type = int) -> list:
    """``"3,17"`` -> ``[3, 17]``; a clear error for anything else."""
    if not text:
        return []
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgument(f"{what} must be comma-separated numbers, got {text!r}") from None
