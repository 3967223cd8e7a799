"""Models held by a server, addressed by the SHA-256 of their bytes (or by file stem in --model-dir).

Every model is run through the expose pass on arrival, gets one forward session, and caches one
projection graph and session per (layer, method)."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from zfnet.converters import expose
from zfnet.converters.graph import CLASSES_KEY, PREPROCESSING_KEY, get_metadata
from zfnet.converters.index import GraphIndex
from zfnet.errors import InvalidArgument, NotFound, ResourceExhausted
from zfnet.server import cache, projection, runtime
from zfnet.server.layers import Layer, ReceptiveFields, layer_table
from zfnet.server.rules import batch_axes

log = logging.getLogger("zfnet.server")


@dataclass
class LoadedModel:
    """An exposed model with its sessions and layer table."""

    sha256: str
    name: str
    size: int
    model: onnx.ModelProto
    session: ort.InferenceSession | runtime.FixedBatchSession
    input_name: str
    input_shape: list[int]  # (-1, C, H, W)
    output_name: str
    layers: list[Layer]
    preprocessing_json: str
    classes: list[str]
    receptive_fields: ReceptiveFields
    index: GraphIndex | None = None  # the exposed model's graph index, shared by the layer table, fields and projections
    _projections: dict[tuple[str, str], tuple[projection.Projection, ort.InferenceSession]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def projection(self, layer: str, method: str) -> tuple[projection.Projection, ort.InferenceSession]:
        """The projection graph and its session for (layer, method), built once."""
        key = (layer, method)
        with self._lock:
            if key not in self._projections:
                built = cache.projection(self.sha256, layer, method, lambda: projection.build(self.index or self.model, layer, method))
                self._projections[key] = (built, runtime.session(built.model.SerializeToString()))
            return self._projections[key]


def load(data: bytes, name: str, sha256: str | None = None) -> LoadedModel:
    """Parse, expose and open a model from its bytes."""
    sha256 = sha256 or hashlib.sha256(data).hexdigest()
    try:
        model = onnx.ModelProto.FromString(data)
    except DecodeError:
        raise InvalidArgument(f"model {name!r} is not an ONNX file (protobuf decoding failed)") from None
    if not model.graph.node:
        raise InvalidArgument(f"model {name!r} has an empty graph; is it an ONNX file?")
    exposed, index = cache.exposed(model, sha256)  # renames tensors and appends outputs: output[0] stays the model's own output
    try:
        session = runtime.session(exposed.SerializeToString())
    except Exception as err:  # onnxruntime raises Fail/InvalidGraph/RuntimeException
        raise InvalidArgument(f"onnxruntime cannot load model {name!r}: {str(err).splitlines()[0][:300]}") from None
    initializers = {i.name for i in exposed.graph.initializer}
    inputs = [v for v in exposed.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise InvalidArgument(f"model {name!r} must have one input (an image batch); it has {[v.name for v in inputs]}")
    declared = expose.tensor_shape(inputs[0])
    input_shape = [d if isinstance(d, int) and d > 0 else -1 for d in declared]
    if len(input_shape) != 4 or any(d < 0 for d in input_shape[1:]):
        raise InvalidArgument(f"model {name!r}: the input must be (N, C, H, W) with fixed C, H, W; it is {declared}")
    if input_shape[0] > 0:  # exported with a fixed batch: run any number of images that many at a time
        session = runtime.FixedBatchSession(session, inputs[0].name, input_shape[0], batch_axes(index))
        input_shape[0] = -1
    classes = json.loads(get_metadata(exposed, CLASSES_KEY) or "[]")
    return LoadedModel(
        sha256=sha256, name=name, size=len(data), model=exposed, session=session,
        input_name=inputs[0].name, input_shape=input_shape, output_name=exposed.graph.output[0].name,
        layers=layer_table(index), preprocessing_json=get_metadata(exposed, PREPROCESSING_KEY) or "{}", classes=classes,
        receptive_fields=ReceptiveFields(index), index=index,
    )


class ModelStore:
    """Uploaded models and the ``.onnx`` files of a model directory (loaded on first use)."""

    def __init__(self, model_dir: Path | None = None, max_model_bytes: int = 2 << 30) -> None:
        self.max_model_bytes = max_model_bytes
        self._loaded: dict[str, LoadedModel] = {}
        self._files: dict[str, Path] = {}  # sha256 -> path
        self._names: dict[str, str] = {}  # name -> sha256
        self._lock = threading.Lock()
        if model_dir is not None:
            if not model_dir.is_dir():
                raise NotFound(f"model directory {model_dir} does not exist")
            for path in sorted(model_dir.glob("*.onnx")):
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
                self._files[sha] = path
                self._names[path.stem] = sha
            log.info("serving %d model(s) from %s", len(self._files), model_dir)

    def lookup(self, sha256: str = "", name: str = "") -> str | None:
        """The SHA-256 of a held model, or None."""
        if name:
            return self._names.get(name)
        sha = sha256.lower()
        return sha if sha in self._loaded or sha in self._files else None

    def get(self, sha256: str = "", name: str = "") -> LoadedModel:
        """A held model, loading it from the model directory on first use."""
        if not sha256 and not name:
            raise InvalidArgument("no model given: set ModelRef.sha256 or ModelRef.name")
        sha = self.lookup(sha256, name)
        if sha is None:
            what = f"name {name!r}" if name else f"sha256 {sha256}"
            raise NotFound(f"no model with {what} on this server; upload it first (the client does so automatically)")
        with self._lock:
            if sha not in self._loaded:
                path = self._files[sha]
                self._loaded[sha] = load(path.read_bytes(), path.stem, sha)
            return self._loaded[sha]

    def add(self, data: bytes, name: str, sha256: str = "") -> LoadedModel:
        """Hold an uploaded model; ``sha256`` (when given) must match its bytes."""
        if len(data) > self.max_model_bytes:
            raise ResourceExhausted(f"model {name!r} is {len(data)} bytes; this server takes at most {self.max_model_bytes}")
        actual = hashlib.sha256(data).hexdigest()
        if sha256 and sha256.lower() != actual:
            raise InvalidArgument(f"upload of {name!r} is corrupt: its SHA-256 is {actual}, the header said {sha256}")
        with self._lock:
            if actual in self._loaded:
                return self._loaded[actual]
        model = load(data, name or actual[:12], actual)
        with self._lock:
            self._loaded.setdefault(actual, model)
            if name:
                self._names.setdefault(name, actual)
            return self._loaded[actual]

    def summaries(self) -> list[tuple[str, str, int]]:
        """(sha256, name, size) of every held model."""
        names = {sha: name for name, sha in self._names.items()}
        out = {sha: (sha, m.name, m.size) for sha, m in self._loaded.items()}
        for sha, path in self._files.items():
            out.setdefault(sha, (sha, names.get(sha, path.stem), path.stat().st_size))
        return sorted(out.values(), key=lambda t: t[1])

