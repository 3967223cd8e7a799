"""The command-line edge shared by ``zfclient`` and ``zfserver``: user errors become one line on
stderr and exit code 1, never a traceback; zfnet's warnings one line each."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable

import typer

from zfnet.errors import ZfnetError, ZfnetWarning


def edge(command: Callable) -> Callable:
    """Wrap a Typer command so that ZfnetError and OSError end it with one line and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default", ZfnetWarning)  # each message once per command
                shown = warnings.showwarning
                warnings.showwarning = lambda message, category, *rest, **options: (
                    print(f"warning: {message}", file=sys.stderr) if issubclass(category, ZfnetWarning) else shown(message, category, *rest, **options)
                )
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
