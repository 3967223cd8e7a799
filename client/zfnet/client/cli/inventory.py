"""``zfclient models`` and ``zfclient datasets``: what a server holds, as a table or as JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import typer
from rich.console import Console
from rich.table import Table

from zfnet.client.api import Client
from zfnet.client.cli.common import ServerOption
from zfnet.wire.models import DatasetInfo, ModelSummary

JsonOption = typer.Option(False, "--json", help="Print a JSON list on stdout and nothing else.")


def models(as_json: bool = JsonOption, server: str | None = ServerOption) -> None:
    """The models the server holds: its --model-dir files (pass their name as --model) and the uploads."""
    with Client(server) as client:
        held = client.list_models()
    table = Table("name", "from", "size", "in memory", "sha256", title=f"{len(held)} model(s) on {server or 'the in-process server'}")
    for m in held:
        table.add_row(m.name, "--model-dir" if m.in_model_dir else "upload", f"{m.size / 1e6:.1f} MB", "yes" if m.loaded else "no", m.sha256[:12])
    _show(held, table, as_json)


def datasets(as_json: bool = JsonOption, server: str | None = ServerOption) -> None:
    """The named data sets of the server's --data-dir (what `zfclient top` and `features` take by name)."""
    with Client(server) as client:
        held = client.list_datasets()
    table = Table("name", "images", "classes", title=f"{len(held)} data set(s) on {server or 'the in-process server'}")
    for d in held:
        table.add_row(d.name, str(d.size), ", ".join(d.classes[:8]) + (f" ... ({len(d.classes)})" if len(d.classes) > 8 else ""))
    _show(held, table, as_json)


def _show(held: Sequence[ModelSummary] | Sequence[DatasetInfo], table: Table, as_json: bool) -> None:
    """The rows as a JSON list on stdout (and nothing else), or the table."""
    if as_json:
        print(json.dumps([dataclasses.asdict(row) for row in held]))
    else:
        Console().print(table)
