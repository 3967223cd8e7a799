"""``zfclient explore``: explore a model in the browser, every layer and unit of finished top reports
and live on your own images, through the gRPC service (in-process, or --server)."""

from __future__ import annotations

from pathlib import Path

import typer

from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption

LOCAL = ("127.0.0.1", "localhost", "::1")


def command(
    model: list[str] = typer.Option(
        ..., "--model", help="An .onnx file (uploaded if the server lacks it) or a model name on the server; repeat to give each report's model (the first is explored live).",
    ),
    report: list[Path] = typer.Option([], "--report", help="A finished `zfclient top` report folder; repeat for snapshots, other models or other methods."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (anything but loopback lets others use the explorer, and your server through it)."),
    port: int = typer.Option(0, "--port", help="Port to listen on (0: any free one; the URL is printed)."),
    server: str | None = ServerOption,
) -> None:
    """A local web app over the service: the model's layers and filters, each report's layers and units (top-9 patches,
    reconstructions by any method, class make-up), live predictions, feature maps, reconstructions, occlusion and
    invariance on your own images, and two reports side by side."""
    from zfnet.client.explore import app  # noqa: PLC0415  (starlette and uvicorn: the explore extra)
    from zfnet.client.explore.explorer import Explorer  # noqa: PLC0415

    if host not in LOCAL:
        typer.echo(f"warning: listening on {host}: anyone who reaches it can use the explorer and, through it, the zfnet server", err=True)
    with Client(server) as client:
        explorer = Explorer(client, model, report)
        app.serve(explorer, host, port, lambda url: typer.echo(f"explorer: {url} (Ctrl-C stops it)"))
