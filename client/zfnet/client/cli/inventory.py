"""``zfclient models`` and ``zfclient datasets``: what a server holds, as a table or as JSON."""

from __future__ import annotations

import dataclasses
import json

import typer
from rich.console import Console
from rich.table import Table

from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption

JsonOption = typer.Option(False, "--json", help="Print a JSON list on stdout and nothing else.")


def models(as_json: bool = JsonOption, server: str | None = ServerOption) -> None:
    """The models the server holds: its --model-dir files (pass their name as --model) and the uploads."""
    with Client(server) as client:
        held = client.list_models()
    if as_json:
        print(json.dumps([dataclasses.asdict(m) for m in held]))
        return
    table = Table("name", "from", "size", "in memory", "sha256", title=f"{len(held)} model(s) on {server or 'the in-process server'}")
    for m in held:
        table.add_row(m.name, "--model-dir" if m.in_model_dir else "upload", f"{m.size / 1e6:.1f} MB", "yes" if m.loaded else "no", m.sha256[:12])
    Console().print(table)


def datasets(as_json: bool = JsonOption, server: str | None = ServerOption) -> None:
    """The named data sets of the server's --data-dir (what `zfclient top` and `features` take by name)."""
    with Client(server) as client:
        held = client.list_datasets()
    if as_json:
        print(json.dumps([dataclasses.asdict(d) for d in held]))
        return
    table = Table("name", "images", "classes", title=f"{len(held)} data set(s) on {server or 'the in-process server'}")
    for d in held:
        shown = ", ".join(d.classes[:8]) + (f" ... ({len(d.classes)})" if len(d.classes) > 8 else "")
        table.add_row(d.name, str(d.size), shown)
    Console().print(table)
