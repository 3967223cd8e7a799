"""An on-disk cache of what preparing a model costs: the exposed model (renaming, switches, shape
inference) and its projection graphs, keyed by the SHA-256 of the model's bytes, under the user's
cache directory (``$XDG_CACHE_HOME/zfnet``, else ``~/.cache/zfnet``). A fingerprint of the code that
produces them is part of the path, so a change to the expose pass or a rule never reads stale
entries. The cache is a convenience: when it cannot be read or written, the work is simply done."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from zfnet.version import __version__
from zfnet.converters import expose, geometry, graph, index
from zfnet.converters.graph import get_metadata, set_metadata
from zfnet.converters.index import GraphIndex
from zfnet.server import projection as projection_graph
from zfnet.server import rules

log = logging.getLogger("zfnet.server")

PROJECTION_KEY = "zfnet.projection"
# the code whose output is cached (with every module of the rules package): a change starts a new cache
_SOURCES = (expose, index, geometry, graph, projection_graph)


def root() -> Path:
    """``$XDG_CACHE_HOME/zfnet`` or ``~/.cache/zfnet``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "zfnet"


@functools.cache
def fingerprint() -> str:
    """A short hash of zfnet's version, onnx's version and the source of the expose pass, the graph
    index, the projection builder and every op rule."""
    digest = hashlib.sha256(f"{__version__} onnx {onnx.__version__}".encode())
    files = [Path(module.__file__) for module in _SOURCES] + sorted(Path(rules.__file__).parent.glob("*.py"))
    for path in files:
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


def projection(sha256: str, layer: str, method: str, build: Callable[[], projection_graph.Projection]) -> projection_graph.Projection:
    """A projection graph of (model, layer, method), from the cache or built by ``build()`` and stored."""
    path = _folder(sha256) / f"projection-{method}-{hashlib.sha256(layer.encode()).hexdigest()[:16]}.onnx"
    cached = _read(path)
    if cached is not None:
        info = json.loads(get_metadata(cached, PROJECTION_KEY) or "{}")
        if info.get("layer") == layer and info.get("method") == method:
            return projection_graph.Projection(cached, layer, method, info["forward_tensors"], info.get("per_image", False))
    built = build()
    stored = onnx.ModelProto()
    stored.CopyFrom(built.model)
    set_metadata(stored, PROJECTION_KEY, json.dumps({"layer": layer, "method": method, "forward_tensors": built.forward_tensors, "per_image": built.per_image}))
    _write(path, stored)
    return built
