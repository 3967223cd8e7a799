"""Layering: the core (``core/zfnet``, shared by both sides) imports neither the server nor the client;
the client imports the server at exactly two places, both lazily inside a function that needs it:
starting an in-process server (``zfnet.client.transport``) and ``zfclient serve`` (``zfnet.client.cli.main``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (importing module, imported module) pairs allowed to cross from the client into the server, and why
CLIENT_TO_SERVER = {
    ("zfnet.client.transport", "zfnet.server.app"): "Client() with no target starts the service in-process",
    ("zfnet.client.cli.main", "zfnet.server.app"): "zfclient serve runs a server",
}


def modules(folder: str) -> dict[str, Path]:
    """Module name -> file of every Python file under ``folder`` (a namespace portion of zfnet)."""
    base = ROOT / folder
    out = {}
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(base).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path) -> list[tuple[str, str | None]]:
    """(imported module, the function it is imported in, or None at module level) of every import in a file."""
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                found.extend((f"{child.module}.{alias.name}", function) for alias in child.names)
            visit(child, child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function)

    visit(ast.parse(path.read_text()), None)
    return found


def crossings(folder: str, into: tuple[str, ...]) -> dict[tuple[str, str], str | None]:
    """(module, imported) -> the function it is imported in, for imports of ``into`` packages."""
    return {
        (name, imported if not imported.startswith("zfnet.server.") else ".".join(imported.split(".")[:3])): function
        for name, path in modules(folder).items()
        for imported, function in imports(path)
        if imported.startswith(into)
    }


def test_the_walk_sees_the_imports() -> None:
    assert len(modules("core")) > 15 and len(modules("client")) > 30
    assert ("zfnet.errors.InvalidArgument", None) in imports(ROOT / "core/zfnet/wire/common.py")
    assert ("zfnet.server.app.create_server", "_start_in_process") in imports(ROOT / "client/zfnet/client/transport.py")


def test_the_core_imports_neither_the_server_nor_the_client() -> None:
    assert crossings("core", ("zfnet.server", "zfnet.client", "zfnet.converters")) == {}


def test_the_client_reaches_the_server_only_where_it_must_and_lazily_in_the_transport() -> None:
    found = crossings("client", ("zfnet.server",))
    assert set(found) == set(CLIENT_TO_SERVER), f"client modules importing the server: {sorted(set(found) - set(CLIENT_TO_SERVER))}"
    assert found[("zfnet.client.transport", "zfnet.server.app")] == "_start_in_process"


def test_importing_the_client_loads_no_server_module() -> None:
    """The Python client, its facades, its pictures and its Ray jobs load without the engine (onnx, onnxruntime)."""
    code = (
        "import sys; import zfnet.client.api, zfnet.client.ray_jobs, zfnet.client.features, zfnet.client.report, zfnet.client.render; "
        "print(sorted(m for m in sys.modules if m.startswith(('zfnet.server', 'onnx', 'onnxruntime', 'torch'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_the_explorer_is_one_more_client_of_the_service() -> None:
    """``zfclient explore`` reaches the engine only through the gRPC service: none of its modules
    imports ``zfnet.server`` (at any level), and importing them loads no engine module."""
    explorer = {name for name in modules("client") if name.startswith(("zfnet.client.explore", "zfnet.client.cli.explore"))}
    assert {"zfnet.client.explore.app", "zfnet.client.explore.explorer", "zfnet.client.cli.explore"} <= explorer
    assert not {pair for pair in crossings("client", ("zfnet.server",)) if pair[0] in explorer}
    code = (
        "import sys; import zfnet.client.explore.app, zfnet.client.explore.explorer, zfnet.client.cli.explore; "
        "print(sorted(m for m in sys.modules if m.startswith(('zfnet.server', 'onnx', 'onnxruntime', 'torch'))))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
