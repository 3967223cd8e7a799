"""An on-disk cache of what preparing a model costs: the exposed model (renaming, switches, shape
inference) and its projection graphs, keyed by the SHA-256 of the model's bytes, under the user's
cache directory (``$XDG_CACHE_HOME/zfnet``, else ``~/.cache/zfnet``). A fingerprint of the code that
produces them is part of the path, so a change to the expose pass or a rule never reads stale
entries. The cache is a convenience: when it cannot be read or written, the work is simply done."""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from zfnet.version import __version__
from zfnet.converters import expose
from zfnet.converters.graph import get_metadata, set_metadata
from zfnet.converters.index import GraphIndex
from zfnet.server import projection as projection_graph

log = logging.getLogger("zfnet.server")

PROJECTION_KEY = "zfnet.projection"
# the code whose output is cached: these modules and every zfnet module they import (the graph index,
# the op registry and its rules ...); a change to any of them starts a new cache
_PRODUCERS = (expose.__name__, projection_graph.__name__)


def _imported(path: Path) -> list[str]:
    """The absolute module names a source file imports (``from m import x`` may name a module m.x)."""
    names = []
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


@functools.cache
def sources() -> tuple[Path, ...]:
    """The files of the cached code: :data:`_PRODUCERS` and every zfnet module they import, transitively."""
    found: dict[str, Path] = {}
    pending = list(_PRODUCERS)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # ``from module import function``: no module of that name
            spec = None
        if spec is None or not spec.has_location or spec.origin is None:
            continue
        found[name] = Path(spec.origin)
        pending += [n for n in _imported(found[name]) if n.startswith("zfnet.")]
    return tuple(sorted(found.values()))


def root() -> Path:
    """``$XDG_CACHE_HOME/zfnet`` or ``~/.cache/zfnet``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "zfnet"


@functools.cache
def fingerprint() -> str:
    """A short hash of zfnet's version, onnx's version and the :func:`sources` of the cached code."""
    digest = hashlib.sha256(f"{__version__} onnx {onnx.__version__}".encode())
    for path in sources():
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _folder(sha256: str) -> Path:
    return root() / fingerprint() / sha256


def _read(path: Path) -> onnx.ModelProto | None:
    try:
        return onnx.ModelProto.FromString(path.read_bytes())
    except (OSError, DecodeError):
        return None


def _write(path: Path, model: onnx.ModelProto) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(model.SerializeToString())
        tmp.replace(path)
    except (OSError, ValueError) as err:  # a read-only home, a full disk, a model over 2 GiB
        log.debug("cache: cannot write %s: %s", path, err)


def exposed(model: onnx.ModelProto, sha256: str) -> tuple[onnx.ModelProto, GraphIndex]:
    """The exposed model and its graph index, from the cache when this model was exposed before."""
    path = _folder(sha256) / "exposed.onnx"
    cached = _read(path)
    if cached is not None and get_metadata(cached, expose.EXPOSED_KEY) == "1":
        return cached, GraphIndex(cached)
    result, result_index = expose.expose_indexed(model)
    _write(path, result)
    return result, result_index


def projection(sha256: str, layer: str, method: str, build: Callable[[], projection_graph.Projection], stop: str = "") -> projection_graph.Projection:
    """A projection graph of (model, layer, method[, stop]), from the cache or built by ``build()`` and stored."""
    key = layer if not stop else f"{layer}\0{stop}"
    path = _folder(sha256) / f"projection-{method}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
    cached = _read(path)
    if cached is not None:
        info = json.loads(get_metadata(cached, PROJECTION_KEY) or "{}")
        if info.get("layer") == layer and info.get("method") == method and info.get("stop", "") == stop:
            return projection_graph.Projection(cached, layer, method, info["forward_tensors"], info.get("per_image", False), stop)
    built = build()
    stored = onnx.ModelProto()
    stored.CopyFrom(built.model)
    info = {"layer": layer, "method": method, "forward_tensors": built.forward_tensors, "per_image": built.per_image}
    set_metadata(stored, PROJECTION_KEY, json.dumps(info | ({"stop": stop} if stop else {})))
    _write(path, stored)
    return built
