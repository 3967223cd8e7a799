"""What the commands share: the server and connection options, number lists, progress bars."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from zfnet.client import api
from zfnet.client.api import SERVER_ENV, TLS_CA_ENV, TLS_CERT_ENV, TLS_ENV, TLS_KEY_ENV, TOKEN_ENV, Connection
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


def connection_options(
    token: str | None = typer.Option(None, "--token", envvar=TOKEN_ENV, help=f"Bearer token of a server started with --token-file (${TOKEN_ENV} keeps it out of `ps`)."),
    tls: bool = typer.Option(False, "--tls", envvar=TLS_ENV, help="Talk TLS to --server, trusting the system's CA certificates."),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", envvar=TLS_CA_ENV, help="Talk TLS to --server, trusting this PEM CA (a private CA or a self-signed certificate)."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", envvar=TLS_CERT_ENV, help="PEM client certificate, for a server that asks for one (mutual TLS)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", envvar=TLS_KEY_ENV, help="PEM private key of --tls-cert."),
) -> None:
    """How every command reaches a --server: TLS and a bearer token (given before the command)."""
    api.cli_connection = Connection(token or None, tls, tls_ca, tls_cert, tls_key)
