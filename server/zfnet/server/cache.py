"""An on-disk cache of what preparing a model costs: the exposed model (renaming, switches, shape
inference) and its projection graphs, keyed by the SHA-256 of the model's bytes. A fingerprint of
the code that produces them is part of the path, so a change to the expose pass or a rule never
reads stale entries. The cache is a convenience: when it cannot be read or written, the work is
simply done.

The cache belongs to the process that writes it:

- **Where.** A server in the client's own process (``zfclient`` without ``--server``, ``Client()``)
  keeps it in the user's cache directory (``$XDG_CACHE_HOME/zfnet``, else ``~/.cache/zfnet``), so
  the next run starts warm; ``zfserver`` keeps it in a private temporary directory of its own,
  removed at exit, and forgets an upload's entries on DeleteModel.
- **Private.** Directories are 0700 and files 0600 (a cache directory left wider by an older version
  is narrowed; one owned by another user is not used).
- **Bounded.** ``$ZFNET_CACHE_MAX`` (default 2G; ``512M``, ``10G``) bounds its size: after every
  write the least recently used entries go until it fits.
- **Verified.** Every file has the SHA-256 of its bytes stored beside it (``<file>.sha256``) and
  checked at every read; an entry that does not match, cannot be parsed, or keeps any tensor as
  external data (a file it would make onnxruntime read) is removed and the work done again.
- **Streamed.** An entry is written and read without a whole serialised copy of its model: written
  from the model's tensors, hashed as it is written, read back as a skeleton without its large
  weights, its digest checked by reading the file in chunks (:mod:`zfnet.server.weights`).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import stat
import tempfile
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import onnx
from google.protobuf.message import DecodeError

from zfnet.version import __version__
from zfnet.converters import expose
from zfnet.converters.graph import get_metadata, set_metadata
from zfnet.converters.index import GraphIndex
from zfnet.server import external, weights
from zfnet.server import projection as projection_graph
from zfnet.server.admission import parse_bytes
from zfnet.server.weights import StoredWeights

log = logging.getLogger("zfnet.server")

PROJECTION_KEY = "zfnet.projection"
MAX_ENV = "ZFNET_CACHE_MAX"
DEFAULT_MAX = "2G"
DIGEST = ".sha256"  # suffix of the file holding an entry's SHA-256
# the code whose output is cached: these modules and every zfnet module they import (the graph index,
# the op registry and its rules ...); a change to any of them starts a new cache. Projection graphs
# are built on the graph a fixed batch was freed into (batchaxis), when it was.
_PRODUCERS = (expose.__name__, projection_graph.__name__, "zfnet.server.batchaxis")


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


def max_bytes() -> int:
    """The size bound, ``$ZFNET_CACHE_MAX`` (default 2G)."""
    return parse_bytes(os.environ.get(MAX_ENV) or DEFAULT_MAX)


def _private_folder(path: Path) -> bool:
    """Make ``path`` (and missing parents) a directory only this user can enter; False when it cannot
    be (another user's, or not a directory)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            log.warning("cache: %s is not a directory of this user; not used", path)
            return False
        if info.st_mode & 0o077:
            path.chmod(0o700)
        return True
    except OSError as err:
        log.debug("cache: cannot use %s: %s", path, err)
        return False


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[BinaryIO]:
    """A new file (0600, readable and writable) renamed over ``path`` when the block ends, atomically;
    removed if it raises. The file stays open: its caller closes it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    file = os.fdopen(fd, "w+b")
    try:
        yield file
        file.flush()
        os.replace(tmp, path)
    except BaseException:
        file.close()
        Path(tmp).unlink(missing_ok=True)
        raise


class Cache:
    """One cache directory (see the module doc): :meth:`exposed` and :meth:`projection` read an entry
    back or build and store it; :meth:`forget` drops a model's entries."""

    def __init__(self, folder: Path, limit: int, temporary: bool = False) -> None:
        self.folder, self.limit, self.temporary = folder, limit, temporary
        self.usable = _private_folder(folder)
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(folder), True) if temporary else None

    @classmethod
    def user(cls) -> Cache:
        """The user's cache directory (a server in the client's own process)."""
        return cls(root(), max_bytes())

    @classmethod
    def private(cls) -> Cache:
        """A fresh 0700 temporary directory, removed by :meth:`close`, at exit, or when the cache goes."""
        return cls(Path(tempfile.mkdtemp(prefix="zfnet-cache-")), max_bytes(), temporary=True)

    def close(self) -> None:
        """Remove a temporary cache now (a user cache stays)."""
        if self._finalizer is not None:
            self._finalizer()

    def _model_folder(self, sha256: str) -> Path:
        return self.folder / fingerprint() / sha256

    def forget(self, sha256: str) -> None:
        """Drop every entry of model ``sha256``."""
        shutil.rmtree(self._model_folder(sha256), ignore_errors=True)

    # -- entries ---------------------------------------------------------------------------------
    def _read(self, path: Path, verified: Callable[[], object] = lambda: None) -> tuple[onnx.ModelProto, StoredWeights] | None:
        """An entry, if it is there, its bytes (streamed) match the digest beside them (then
        ``verified()`` is called, before it is parsed), it parses, and it names no external file:
        the model without its large weights, and those weights
        (:meth:`~zfnet.server.weights.StoredWeights.read`); anything else is removed (and rebuilt by
        the caller)."""
        if not self.usable:
            return None
        try:
            file = path.open("rb")
        except OSError:
            return None
        problem, entry = None, None
        try:
            recorded = path.with_name(path.name + DIGEST).read_text().strip()
            if hashlib.file_digest(file, "sha256").hexdigest() != recorded:
                problem = "its bytes do not match their SHA-256"
            else:
                verified()
                entry = StoredWeights.read(path, file)
                if external.external(entry[0]):
                    problem = "it keeps tensors as external data"
        except OSError:
            file.close()
            return None
        except (DecodeError, ValueError) as err:
            problem = f"it is not an ONNX model ({err})"
        if problem is not None:
            file.close()
            log.warning("cache: %s is not used and is removed: %s", path, problem)
            self._remove(path)
            return None
        try:
            os.utime(path)  # used now: least recently used entries go first
        except OSError:
            pass
        assert entry is not None, "an entry without a problem parsed"
        return entry

    def _write(self, path: Path, model: onnx.ModelProto) -> StoredWeights | None:
        """Store ``model`` at ``path``, streamed (:func:`zfnet.server.weights.write`): where its large
        weights are in what was written, None when it could not be."""
        if not self.usable:
            return None
        try:
            if not all(_private_folder(folder) for folder in (self.folder, path.parent.parent, path.parent)):
                return None
            with _replacing(path) as file:  # the digest is in place before the entry
                spans, sha256 = weights.write(model, file)
                with _replacing(path.with_name(path.name + DIGEST)) as digest:
                    digest.write(sha256.encode())
                digest.close()
        except (OSError, ValueError) as err:  # a read-only home, a full disk, a model over 2 GiB
            log.debug("cache: cannot write %s: %s", path, err)
            return None
        self._trim()
        return StoredWeights(path, file, spans)

    @staticmethod
    def _remove(path: Path) -> None:
        for gone in (path, path.with_name(path.name + DIGEST)):
            gone.unlink(missing_ok=True)

    def _trim(self) -> None:
        """Remove the least recently used entries until the cache fits :attr:`limit`."""
        entries, total = [], 0
        for folder, _, names in os.walk(self.folder):
            for name in names:
                path = Path(folder) / name
                try:
                    info = path.lstat()
                except OSError:
                    continue
                total += info.st_size
                if not name.endswith((DIGEST, ".tmp")):
                    entries.append((info.st_mtime, info.st_size, path))
        for _, size, path in sorted(entries):
            if total <= self.limit:
                break
            digest = path.with_name(path.name + DIGEST)
            total -= size + (digest.stat().st_size if digest.exists() else 0)
            self._remove(path)
            log.info("cache: removed %s (least recently used; %s bounds the cache to %d bytes)", path, MAX_ENV, self.limit)
            try:
                path.parent.rmdir()  # an emptied model folder goes too
            except OSError:
                pass

    # -- what is cached --------------------------------------------------------------------------
    def exposed(
        self, sha256: str, original: Callable[[], onnx.ModelProto], found: Callable[[], object] = lambda: None,
        finish: Callable[[onnx.ModelProto, GraphIndex], tuple[onnx.ModelProto, GraphIndex, bool]] | None = None,
    ) -> tuple[onnx.ModelProto, GraphIndex, StoredWeights | None]:
        """The exposed model and its graph index, from the cache when this model was exposed before
        (``found()`` is called once its entry's digest matches, before it is parsed: what ``original``
        reads may go); else ``original()`` (the parsed model, called only then) exposed, passed through
        ``finish`` (the server frees a fixed batch axis there: :mod:`zfnet.server.batchaxis`) and stored,
        unless ``finish`` says its answer is not final. When the entry
        is in the cache, its large weights are left there (:mod:`zfnet.server.weights`): the model
        comes without their bytes, the index reads them back, and the entry's file is the third
        item (None: the model holds all its weights)."""
        path = self._model_folder(sha256) / "exposed.onnx"
        entry = self._read(path, found)
        index = None
        if entry is not None and get_metadata(entry[0], expose.EXPOSED_KEY) == "1":
            model, stored = entry
        else:
            if entry is not None:
                entry[1].close()
            model, index = expose.expose_indexed(original())
            final = True
            if finish is not None:
                model, index, final = finish(model, index)
            stored = self._write(path, model) if final else None
            if stored is not None:
                index = None  # it reads the model about to go
                model = stored.stripped(model)
        del entry
        if stored is None:
            return model, index if index is not None else GraphIndex(model), None
        return model, GraphIndex(model, stored.array), stored

    def projection(
        self, sha256: str, layer: str, method: str, build: Callable[[], projection_graph.Projection], stop: str = "",
    ) -> projection_graph.Projection:
        """A projection graph of (model, layer, method[, stop]), from the cache or built by ``build()`` and stored."""
        key = layer if not stop else f"{layer}\0{stop}"
        path = self._model_folder(sha256) / f"projection-{method}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
        found = self._read(path)
        if found is not None:
            cached, weights_on_disk = found
            weights_on_disk.restore(cached)
            weights_on_disk.close()
            info = json.loads(get_metadata(cached, PROJECTION_KEY) or "{}")
            if info.get("layer") == layer and info.get("method") == method and info.get("stop", "") == stop:
                return projection_graph.Projection(cached, layer, method, info["forward_tensors"], info.get("per_image", False), stop)
        built = build()
        stored = onnx.ModelProto()
        stored.CopyFrom(built.model)
        info = {"layer": layer, "method": method, "forward_tensors": built.forward_tensors, "per_image": built.per_image}
        set_metadata(stored, PROJECTION_KEY, json.dumps(info | ({"stop": stop} if stop else {})))
        written = self._write(path, stored)
        if written is not None:
            written.close()
        return built
