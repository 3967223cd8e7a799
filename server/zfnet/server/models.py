"""Models held by a server, addressed by the SHA-256 of their bytes (or by file stem in --model-dir).

Every model is run through the expose pass on arrival, gets one forward session (every tensor an
output), and caches a session per set of tensors a job fetches and kind, exact or fused (the graph up
to them, those its only outputs) and one projection graph and session per (layer, method).

Names belong to the operator: ``ModelRef.name`` resolves only the file stems of ``--model-dir``.
An uploaded model is addressed by its SHA-256 only; the name its uploader gives is shown by
ListModels and never resolves, so no client can stand in for another's model. Models never name
files: an uploaded model that keeps any tensor as external data is refused, and a ``--model-dir``
model may keep external data only in files inside that directory. Loaded models and projection
sessions are held against the server's memory budget and evicted least recently used; an evicted
``--model-dir`` model is loaded again on its next use, an evicted upload is uploaded again by the
client (``zfnet.client.api.Client`` does it on NOT_FOUND)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Hashable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from zfnet.converters import expose
from zfnet.converters.graph import CLASSES_KEY, PREPROCESSING_KEY, get_metadata
from zfnet.converters.index import GraphIndex
from zfnet.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from zfnet.preprocessing import Framing
from zfnet.server import admission, batchaxis, external, projection, runtime, windows
from zfnet.server.admission import MAX_INPUT_PIXELS, Estimate, Footprint, MemoryBudget, fmt_bytes, value_bytes
from zfnet.server.cache import Cache
from zfnet.server.layers import Layer, ReceptiveFields, layer_table
from zfnet.server.rules import batch_axes
from zfnet.server.weights import StoredWeights

log = logging.getLogger("zfnet.server")

MAX_NAME_CHARS = 200  # an upload's display name is cut to this
# What a model costs in memory, measured (docs/security.md): loading one peaks at about 8x its
# file size (received bytes, parsed, exposed, serialised, session), a loaded one holds about 3x,
# building a projection session peaks at about 5x the model and holds about 3x the projection graph.
LOAD_FACTOR, RESIDENT_FACTOR, PROJECTION_BUILD_FACTOR, PROJECTION_FACTOR = 8, 3, 5, 3
MODEL_OVERHEAD = 8 << 20  # a session's own structures, per model
PROJECTION_OVERHEAD = 1 << 20
# onnxruntime's fusions that fold one operator's arithmetic into another's (and so round differently
# from the operators apart, as the exposed session, every tensor an output, computes them); fusions
# that only apply an activation in place of a separate node change no value and stay on.
ROUNDING_FUSIONS = (
    "ConvBNFusion", "ConvAddFusion", "ConvMulFusion", "MatMulAddFusion", "MatMulScaleFusion", "GemmSumFusion",
    "LayerNormFusion", "SimplifiedLayerNormFusion", "SkipLayerNormFusion", "GeluFusion", "FastGeluFusion",
    "BiasGeluFusion", "QuickGeluFusion", "AttentionFusion", "BiasSoftmaxFusion",
)
EXACT, FUSED = "exact", "fused"  # the two kinds of fetching session (:meth:`LoadedModel.fetching`), in their budget keys
FUSED_ROUNDING = 1e-5  # a fused session's values are this close to the exact ones, as a share of the tensor's largest (measured: 1.3e-6, ResNet-50)


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
    framing: Framing  # how an image of any size becomes its input picture
    output_name: str
    layers: list[Layer]
    preprocessing_json: str
    classes: list[str]
    receptive_fields: ReceptiveFields
    budget: MemoryBudget | None = None  # the store's, which holds the cached projection sessions
    index: GraphIndex | None = None  # the exposed model's graph index, shared by the layer table, fields and projections
    cache: Cache | None = None  # where its projection graphs are cached (None: the user's cache)
    weights: StoredWeights | None = None  # where its large weights are left (its cache entry); None: the model holds them
    _projections: dict[tuple[str, str, str], tuple[projection.Projection, ort.InferenceSession]] = field(default_factory=dict)
    _fetching: dict[tuple[bool, frozenset[str]], ort.InferenceSession | runtime.FixedBatchSession] = field(default_factory=dict)  # by (exact, names)
    _windows: dict[tuple[str, str], windows.WindowSessions] = field(default_factory=dict)  # by (layer, method)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> tuple[str, str]:
        """This model's key in the memory budget."""
        return ("model", self.sha256)

    @functools.cached_property
    def footprint(self) -> Footprint:
        """Bytes per image of its input and exposed activations, for admission estimates."""
        return Footprint.of(self.model)

    def reserve(self, estimate: Estimate, *pins: Hashable) -> AbstractContextManager[None]:
        """``estimate`` reserved in the budget that holds this model, the model (and ``pins``) kept
        loaded meanwhile; a model outside any budget (:func:`load` alone) reserves nothing."""
        if self.budget is None:
            return contextlib.nullcontext()
        return self.budget.reserve(estimate, pin=[self.key, *pins])

    def room(self, default: int) -> int:
        """The bytes one batch of a job on this model is fitted to (:func:`zfnet.server.admission.room`)."""
        return admission.room(self.budget, default)

    def projection_key(self, layer: str, method: str, stop: str = "") -> tuple[str, ...]:
        return ("projection", self.sha256, layer, method) + ((stop,) if stop else ())

    def has_projection(self, layer: str, method: str, stop: str = "") -> bool:
        """Whether the projection session of (layer, method[, stop]) is built (else the next use builds it)."""
        with self._lock:
            return (layer, method, stop) in self._projections

    def projection(self, layer: str, method: str, stop: str = "") -> tuple[projection.Projection, ort.InferenceSession]:
        """The projection graph and its session for (layer, method), to the input or to the inner
        tensor ``stop`` (see :func:`projection.build`), built once (until evicted)."""
        key = (layer, method, stop)
        with self._lock:
            built = key not in self._projections
            if built:
                graph = (self.cache or Cache.user()).projection(
                    self.sha256, layer, method, lambda: projection.build(self.index or self.model, layer, method, stop), stop,
                )
                data = graph.model.SerializeToString()
                self._projections[key] = (graph, runtime.session(data))
            found = self._projections[key]
        if built:
            what = f"projection {layer}/{method}" + (f" to {stop}" if stop else "")
            self._hold(self.projection_key(*key), PROJECTION_FACTOR * len(data) + PROJECTION_OVERHEAD, what, lambda: self._drop_projection(key))
        else:
            self._touch(self.projection_key(*key))
        return found

    def _hold(self, key: tuple[str, ...], nbytes: int, what: str, drop: Callable[[], None]) -> None:
        """Hold a session just built in the budget under ``key``, ``drop`` forgetting it when evicted."""
        if self.budget is not None:
            self.budget.hold(key, nbytes, f"{what} of model {self.name!r}", drop)

    def _touch(self, key: tuple[str, ...]) -> None:
        """Mark a held session as just used (least recently used goes first)."""
        if self.budget is not None:
            self.budget.touch(key)

    def fetched(self, proj: projection.Projection, layer: str, stop: str = "") -> list[str]:
        """The tensors a forward pass for ``proj`` (of ``layer``, to ``stop``) computes: the layer,
        ``stop`` and the forward tensors the projection reads (the input is fed, not computed)."""
        return list(dict.fromkeys(name for name in [layer, stop, *proj.forward_tensors] if name and name != self.input_name))

    def built_projection(self, layer: str, method: str, stop: str = "") -> projection.Projection | None:
        """The projection graph of (layer, method[, stop]) when its session is built, else None (nothing is built)."""
        with self._lock:
            found = self._projections.get((layer, method, stop))
        return None if found is None else found[0]

    def projection_build(self, layer: str, method: str, stop: str = "") -> int:
        """What building the projection session of (layer, method[, stop]) and the forward session it
        reads from (:meth:`fetching`) costs at its peak (one after the other), 0 when both are built."""
        found = self.built_projection(layer, method, stop)
        return PROJECTION_BUILD_FACTOR * self.size if found is None else self.fetching_build(self.fetched(found, layer, stop), exact=True)

    def _drop_projection(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._projections.pop(key, None)

    def fetching_key(self, names: Iterable[str], *, exact: bool) -> tuple[str, ...]:
        """The budget key of the session to ``names`` of that kind (:meth:`fetching`)."""
        return ("fetching", self.sha256, EXACT if exact else FUSED, *sorted(set(names)))

    def has_fetching(self, names: Iterable[str], *, exact: bool) -> bool:
        """Whether the session to ``names`` of that kind is built (else the next use builds it)."""
        with self._lock:
            return (exact, frozenset(names)) in self._fetching

    def fetching_build(self, names: Iterable[str], *, exact: bool) -> int:
        """What building the session to ``names`` of that kind costs at its peak, 0 when it is built (or ``names`` is empty)."""
        wanted = frozenset(names)
        return 0 if not wanted or self.has_fetching(wanted, exact=exact) else PROJECTION_BUILD_FACTOR * self.size

    def fetching(self, names: Iterable[str], *, exact: bool) -> ort.InferenceSession | runtime.FixedBatchSession:
        """A session of the graph up to ``names``, whose only outputs they are, built once per set of
        names and kind (until evicted) and held in the budget like a projection session: a request admits its
        build (:meth:`fetching_build`, or :meth:`projection_build` for the session a projection reads
        from) and pins :meth:`fetching_key` where it knows the names up front. onnxruntime runs only the nodes
        they need and, no other tensor being an output, frees each tensor once read: on ResNet-50 at
        224 px the exposed session (every tensor an output) was 3x slower to a layer and held every
        tensor of a batch (about 10 GB at 32 images). It holds only the weights it uses.

        ``exact``: fusions that would fold one operator's arithmetic into another's are off
        (:data:`ROUNDING_FUSIONS`), so its values are the exposed session's bit for bit, for passes whose
        values feed a projection or gradient: switches and ReLU masks fed to a projection graph are the
        ones it was built for (a BatchNorm folded into its Conv moved integrated gradients 2.6e-4 from
        Captum near a tie). Fused (not ``exact``): onnxruntime's default optimisations, faster (ResNet-50
        at 224 px: docs/benchmarks.md), values within float32 rounding of the exact ones
        (:data:`FUSED_ROUNDING`), for passes whose values are only reported, ranked or summarised."""
        wanted = frozenset(names)
        with self._lock:
            built = (exact, wanted) not in self._fetching
            if built:
                data = self.serialised(pruned(self.model, sorted(wanted)))
                session = runtime.session(data, disabled=ROUNDING_FUSIONS if exact else ())
                if isinstance(self.session, runtime.FixedBatchSession):
                    session = runtime.FixedBatchSession(session, self.input_name, self.session.batch, self.session.batch_axes)
                self._fetching[exact, wanted] = session
            found = self._fetching[exact, wanted]
        key = self.fetching_key(wanted, exact=exact)
        if built:
            shown = ", ".join(sorted(wanted)[:3]) + (", ..." if len(wanted) > 3 else "")
            self._hold(key, PROJECTION_FACTOR * len(data) + MODEL_OVERHEAD, f"{EXACT if exact else FUSED} session to {shown}", lambda: self._drop_fetching(exact, wanted))
        else:
            self._touch(key)
        return found

    def window(self, layer: str) -> windows.FieldWindow | None:
        """The receptive-field window ``layer``'s units are reconstructed on (:func:`windows.plan`),
        None where it would not be exact or pay, or the model runs a fixed batch: the whole image."""
        if self.index is None or isinstance(self.session, runtime.FixedBatchSession):
            return None
        return windows.plan(self.index, self.receptive_fields, layer)

    def window_key(self, layer: str, method: str) -> tuple[str, ...]:
        return ("window", self.sha256, layer, method)

    def has_window_sessions(self, layer: str, method: str) -> bool:
        """Whether the window sessions of (layer, method) are built (else the next use builds them)."""
        with self._lock:
            return (layer, method) in self._windows

    def window_sessions(self, layer: str, method: str) -> windows.WindowSessions:
        """The projection of (layer, method) at the size of the layer's window (:meth:`window`, not
        None) with its session, and the exact session of the model at that size to what it reads,
        built once (until evicted; a request admits the build as a projection's,
        ``PROJECTION_BUILD_FACTOR`` times the model) and held in the budget as those are."""
        key = (layer, method)
        window = self.window(layer)
        if window is None or self.index is None:
            raise FailedPrecondition(f"layer {layer!r} is reconstructed on the whole image, not on a window")
        with self._lock:
            built = key not in self._windows
            if built:
                model, index = windows.specialised(pruned(self.model, [layer]), self.index, window)
                graph = projection.build(index, layer, method)
                names = self.fetched(graph, layer)
                data, forward = graph.model.SerializeToString(), self.serialised(pruned(model, names))
                self._windows[key] = windows.WindowSessions(
                    window, graph, runtime.session(data), runtime.session(forward, disabled=ROUNDING_FUSIONS), names, Footprint.of(model),
                )
                nbytes = PROJECTION_FACTOR * (len(data) + len(forward)) + MODEL_OVERHEAD + PROJECTION_OVERHEAD
            found = self._windows[key]
        if built:
            self._hold(self.window_key(layer, method), nbytes, f"window sessions {layer}/{method}", lambda: self._drop_window(key))
        else:
            self._touch(self.window_key(layer, method))
        return found

    def _drop_window(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._windows.pop(key, None)

    def serialised(self, graph: onnx.ModelProto) -> bytes:
        """A graph made from this model's (:func:`pruned`) serialised with the weights it reads,
        read back from :attr:`weights` where the model does not hold them."""
        return (graph if self.weights is None else self.weights.restore(graph)).SerializeToString()

    def _drop_fetching(self, exact: bool, names: frozenset[str]) -> None:
        with self._lock:
            self._fetching.pop((exact, names), None)

    def drop_projections(self) -> None:
        """Forget every cached projection and fetching session (the model is evicted or deleted)."""
        with self._lock:
            keys = [self.projection_key(*key) for key in self._projections] + [self.fetching_key(names, exact=exact) for exact, names in self._fetching]
            keys += [self.window_key(*key) for key in self._windows]
            self._projections.clear()
            self._fetching.clear()
            self._windows.clear()
        if self.budget is not None:
            for key in keys:
                self.budget.release(key)


def pruned(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """The part of ``model`` that computes ``outputs`` (graph outputs of it), with only those as
    outputs: the nodes they need and the initializers those read (copied once, to be serialised)."""
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        keep, read = list(graph.node), constants  # subgraphs read outer tensors implicitly: keep it all, onnxruntime prunes
    else:
        producer = {out: k for k, node in enumerate(graph.node) for out in node.output}
        needed, stack = set(), list(outputs)
        while stack:
            k = producer.get(stack.pop())
            if k is not None and k not in needed:
                needed.add(k)
                stack.extend(graph.node[k].input)
        keep = [node for k, node in enumerate(graph.node) if k in needed]
        read = {name for node in keep for name in node.input}
    by_name = {o.name: o for o in graph.output}
    part = onnx.helper.make_graph(
        keep, graph.name, [i for i in graph.input if i.name in read or i.name not in constants],
        [by_name[name] for name in outputs], [t for t in graph.initializer if t.name in read],
    )
    return onnx.helper.make_model(part, opset_imports=model.opset_import, ir_version=model.ir_version, functions=model.functions)


def inline_external_data(model: onnx.ModelProto, name: str, base_dir: Path | None) -> None:
    """Refuse or inline external data, so that onnxruntime never opens a file a model names.

    ``base_dir`` None (an upload): any external tensor is refused. Else (a ``--model-dir`` model)
    each location must resolve, symlinks followed, to a file inside ``base_dir``; the data is then
    read into the model."""
    found = external.external(model)
    if not found:
        return
    if base_dir is None:
        first = found[0]
        raise InvalidArgument(
            f"model {name!r} keeps tensor {first.name!r} as external data (file {external.location(first)!r})"
            + (f" and {len(found) - 1} more" if len(found) > 1 else "")
            + "; the server never reads files a model names: upload it with its weights inline (zfclient and the Python client do that)",
            reason="EXTERNAL_DATA", metadata={"tensor": first.name},
        )
    root = base_dir.resolve()
    for tensor in found:
        location = external.location(tensor)
        target = (root / location).resolve() if location else root
        if not location or Path(location).is_absolute() or not target.is_relative_to(root) or not target.is_file():
            raise FailedPrecondition(
                f"model {name!r} in the model directory keeps tensor {tensor.name!r} in {location!r}, "
                f"which is not a file inside {base_dir}; external data must stay in the model's directory",
                reason="EXTERNAL_DATA", metadata={"tensor": tensor.name},
            )
    try:
        external_data_helper.load_external_data_for_model(model, str(root))
    except (OSError, ValueError, onnx.checker.ValidationError) as err:
        raise FailedPrecondition(f"model {name!r}: cannot read its external data ({err})", reason="EXTERNAL_DATA") from None


def load(
    data: bytes | bytearray, name: str, sha256: str | None = None, base_dir: Path | None = None, check: Callable[[onnx.ModelProto, str], None] | None = None,
    cache: Cache | None = None, budget: MemoryBudget | None = None,
) -> LoadedModel:
    """Parse, expose and open a model from its bytes. External data is refused, or read from inside
    ``base_dir`` (see :func:`inline_external_data`); ``check`` sees the exposed model before any
    session is made (admission limits). What preparing it costs is cached in ``cache`` (default: the
    user's cache directory). A bytearray (an upload's buffer, a file read for this load) is emptied
    once parsed, or once the cache's entry for the model is found, before that entry is read: VGG16's
    553 MB were held to the end of the load. (An entry found and then refused, which takes a forged
    cache, leaves nothing to parse: the load fails with NOT_FOUND, and the model is uploaded or read
    again.) Freeing a fixed batch reserves what it takes in ``budget``."""
    cache = cache or Cache.user()
    sha256 = sha256 or hashlib.sha256(data).hexdigest()
    size = len(data)

    def parsed() -> onnx.ModelProto:
        if size and not data:
            raise NotFound(
                f"model {name!r}: its prepared entry in the cache was refused after its bytes were let go; send or load it again (the entry is rebuilt)",
                reason="MODEL_NOT_FOUND", resource=("model", sha256),
            )
        model = parse(data, name, base_dir)
        _release(data)
        admission.release_memory()  # what receiving the bytes left in the heap goes back before the model is exposed (VGG16: 0.4 GB)
        return model

    # Bytes that may name external data are parsed and checked first, whether or not the cache holds
    # the model (the same bytes may come from the model directory and from an upload); others are
    # parsed only to be exposed, not when the cache holds the exposed model.
    checked = parsed() if external.may_name_files(data) else None
    # renames tensors and appends outputs: output[0] stays the model's own output
    exposed, index, weights = cache.exposed(
        sha256, lambda: checked or parsed(), lambda: _release(data), lambda model, index: batchaxis.freed(model, index, name, check, budget),
    )
    del checked  # the exposed model (or its cache entry) holds the weights from here
    _release(data)
    admission.release_memory()  # what preparing it freed goes back before onnxruntime builds the session
    if check is not None:
        check(exposed, name)
    try:  # onnxruntime reads the cache entry itself: no serialised copy in Python
        session = runtime.session(exposed.SerializeToString() if weights is None else str(weights.path))
    except Exception as err:  # onnxruntime raises Fail/InvalidGraph/RuntimeException
        raise InvalidArgument(f"onnxruntime cannot load model {name!r}: {str(err).splitlines()[0][:300]}", reason="BAD_MODEL") from None
    initializers = {i.name for i in exposed.graph.initializer}
    inputs = [v for v in exposed.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise InvalidArgument(f"model {name!r} must have one input (an image batch); it has {[v.name for v in inputs]}", reason="BAD_MODEL")
    declared = expose.tensor_shape(inputs[0])
    input_shape = [d if isinstance(d, int) and d > 0 else -1 for d in declared]
    if len(input_shape) != 4 or any(d < 0 for d in input_shape[1:]):
        raise InvalidArgument(f"model {name!r}: the input must be (N, C, H, W) with fixed C, H, W; it is {declared}", reason="BAD_MODEL")
    if input_shape[0] > 0:  # a fixed batch that could not be freed (batchaxis): run any number of images that many at a time
        session = runtime.FixedBatchSession(session, inputs[0].name, input_shape[0], batch_axes(index))
        input_shape[0] = -1
    classes = json.loads(get_metadata(exposed, CLASSES_KEY) or "[]")
    recorded = get_metadata(exposed, PREPROCESSING_KEY) or "{}"
    try:
        framing = Framing.of(input_shape, recorded)
    except (ValueError, TypeError, InvalidArgument) as err:
        raise InvalidArgument(f"model {name!r}: its recorded preprocessing ({PREPROCESSING_KEY}) cannot be read: {err}", reason="BAD_MODEL") from None
    return LoadedModel(
        sha256=sha256, name=name, size=size, model=exposed, session=session,
        input_name=inputs[0].name, input_shape=input_shape, framing=framing, output_name=exposed.graph.output[0].name,
        layers=layer_table(index), preprocessing_json=recorded, classes=classes,
        receptive_fields=ReceptiveFields(index), index=index, cache=cache, weights=weights,
    )


def _read_file(path: Path) -> bytearray:
    """A file's bytes in a bytearray of their own, read without a second copy (:func:`load` empties it)."""
    with path.open("rb") as f:
        data = bytearray(os.fstat(f.fileno()).st_size)
        del data[f.readinto(data) :]
        data += f.read()  # what the file grew by since
    return data


def _release(data: bytes | bytearray) -> None:
    """Empty a bytearray the load owns (bytes stay with their caller)."""
    if isinstance(data, bytearray):
        data.clear()


def parse(data: bytes | bytearray, name: str, base_dir: Path | None) -> onnx.ModelProto:
    """A model's bytes parsed, with its external data refused or inlined (:func:`inline_external_data`)."""
    try:
        # typeshed's protobuf stub takes bytes only; the parser reads any buffer (an upload's bytearray, not copied)
        model = onnx.ModelProto.FromString(data)  # pyright: ignore[reportArgumentType]
    except DecodeError:
        raise InvalidArgument(f"model {name!r} is not an ONNX file (protobuf decoding failed)", reason="BAD_MODEL") from None
    if not model.graph.node:
        raise InvalidArgument(f"model {name!r} has an empty graph; is it an ONNX file?", reason="BAD_MODEL")
    inline_external_data(model, name, base_dir)
    return model


class ModelStore:
    """Uploaded models and the ``.onnx`` files of a model directory (loaded on first use), held
    against a memory budget and evicted least recently used."""

    def __init__(
        self, model_dir: Path | None = None, max_model_bytes: int = 2 << 30, budget: MemoryBudget | None = None,
        max_input_pixels: int = MAX_INPUT_PIXELS, cache: Cache | None = None,
    ) -> None:
        self.max_model_bytes = max_model_bytes
        self.max_input_pixels = max_input_pixels
        self.budget = budget if budget is not None else MemoryBudget.for_process()
        self.cache = cache or Cache.user()
        self._loaded: dict[str, LoadedModel] = {}
        self._files: dict[str, Path] = {}  # sha256 -> path, --model-dir only
        self._names: dict[str, str] = {}  # name -> sha256, --model-dir only
        self._uploads: dict[str, list[str]] = {}  # sha256 -> display names its uploaders gave
        self._loading: dict[str, threading.Lock] = {}
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
        """The SHA-256 of a held model, or None. Names are the file stems of --model-dir only."""
        if name:
            return self._names.get(name)
        sha = sha256.lower()
        return sha if sha in self._loaded or sha in self._files else None

    def _resolve(self, sha256: str, name: str) -> str:
        if not sha256 and not name:
            raise InvalidArgument("no model given: set ModelRef.sha256 or ModelRef.name", field="model", reason="FIELD_REQUIRED")
        sha = self.lookup(sha256, name)
        if sha is None:
            if name:
                raise NotFound(
                    f"no model named {name!r} in this server's --model-dir (names address only those; an uploaded model is addressed by its SHA-256)",
                    field="model.name", reason="MODEL_NOT_FOUND", resource=("model", name),
                )
            raise NotFound(
                f"no model with sha256 {sha256} on this server; upload it (again) with UploadModel",
                field="model.sha256", reason="MODEL_NOT_FOUND", resource=("model", sha256),
            )
        return sha

    def get(self, sha256: str = "", name: str = "") -> LoadedModel:
        """A held model, loading it from the model directory on first use (or after eviction)."""
        sha = self._resolve(sha256, name)
        with self._lock:
            model = self._loaded.get(sha)
        if model is not None:
            self.budget.touch(model.key)
            return model
        path = self._files.get(sha)
        if path is None:  # an upload evicted since the lookup
            raise NotFound(
                f"no model with sha256 {sha} on this server; upload it (again) with UploadModel",
                field="model.sha256", reason="MODEL_NOT_FOUND", resource=("model", sha),
            )
        with self._load_lock(sha):
            with self._lock:
                if sha in self._loaded:
                    return self._loaded[sha]
            try:
                size = path.stat().st_size
                with self.budget.reserve(self._load_estimate(f"loading model {path.stem!r}", size)):
                    data = _read_file(path)
                    actual = self._current(sha, path, data)
                    model = self._keep(load(data, path.stem, actual, base_dir=path.parent, check=self._check, cache=self.cache, budget=self.budget))
            except OSError as err:
                raise NotFound(f"model {path.stem!r} cannot be read from the model directory: {err.strerror or err}", reason="MODEL_NOT_FOUND", resource=("model", path.stem)) from None
        return self._hold(model)

    def _current(self, sha: str, path: Path, data: bytes | bytearray) -> str:
        """The SHA-256 of a --model-dir file's ``data`` as read now: a file changed on disk since it was
        listed is a new model, addressed by its new SHA-256 (the old one is no longer served)."""
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            with self._lock:
                self._files.pop(sha, None)
                self._files[actual] = path
                self._names[path.stem] = actual
            log.info("model %s changed on disk: %s, was %s", path.stem, actual[:12], sha[:12])
        return actual

    def add(self, data: bytes, name: str, sha256: str = "") -> LoadedModel:
        """Hold an uploaded model; ``sha256`` (when given) must match its bytes."""
        if len(data) > self.max_model_bytes:
            raise ResourceExhausted(f"model {name!r} is {len(data)} bytes; this server takes at most {self.max_model_bytes}", reason="MODEL_TOO_LARGE", metadata={"limit": self.max_model_bytes, "requested": len(data)})
        with self.budget.reserve(self._load_estimate(f"loading model {name!r}", len(data))):
            model, new = self._add(data, hashlib.sha256(data).hexdigest(), name, sha256)
        return self._hold(model) if new else model

    def receive(self, chunks: Iterable[bytes], name: str, size: int, sha256: str = "") -> LoadedModel:
        """Receive an upload's bytes and hold the model. The bytes count against the budget as they
        arrive (the servicer counts every request message, :func:`zfnet.server.admission.received`),
        never more than ``size`` (0: unknown) or the largest model allowed; the model's load is then
        admitted for the size received."""
        limit = self.max_model_bytes
        if size > limit:
            raise ResourceExhausted(f"model {name!r} is over {limit} bytes, this server's limit (--max-model-mb)", reason="MODEL_TOO_LARGE", metadata={"limit": limit, "requested": size})
        data, digest = bytearray(), hashlib.sha256()
        for chunk in chunks:
            if len(data) + len(chunk) > limit:
                raise ResourceExhausted(
                    f"model {name!r} is over {limit} bytes, this server's limit (--max-model-mb)",
                    reason="MODEL_TOO_LARGE", metadata={"limit": limit, "requested": len(data) + len(chunk)},
                )
            if size and len(data) + len(chunk) > size:
                raise ResourceExhausted(f"model {name!r} is larger than the {size} bytes its UploadHeader declared", field="header.size", reason="UPLOAD_MISMATCH")
            data += chunk
            digest.update(chunk)
        if size and size != len(data):
            raise InvalidArgument(
                f"UploadModel: received {len(data)} bytes, the header said {size}", field="header.size", reason="UPLOAD_MISMATCH",
                metadata={"received": len(data), "header": size},
            )
        admission.consumed(len(data))  # from here the bytes count in the load's estimate
        with self.budget.reserve(self._load_estimate(f"upload of model {name!r}", len(data))):
            model, new = self._add(data, digest.hexdigest(), name, sha256)
        return self._hold(model) if new else model

    def _add(self, data: bytes | bytearray, actual: str, name: str, sha256: str) -> tuple[LoadedModel, bool]:
        """Load uploaded bytes whose SHA-256 is ``actual`` (``sha256``, when given, must match),
        unless the model is held already; True when it was loaded now."""
        if sha256 and sha256.lower() != actual:
            raise InvalidArgument(f"upload of {name!r} is corrupt: its SHA-256 is {actual}, the header said {sha256}", field="header.sha256", reason="UPLOAD_MISMATCH")
        name = name[:MAX_NAME_CHARS]
        with self._lock:
            own = self._files.get(actual)
        shown = own.stem if own is not None else name or actual[:12]  # the operator's name stays a --model-dir model's
        with self._load_lock(actual):
            with self._lock:
                model = self._loaded.get(actual)
                if model is not None:
                    self._remember_name(actual, name)
                    return model, False
            model = load(data, shown, actual, check=self._check, cache=self.cache, budget=self.budget)
            with self._lock:
                self._remember_name(actual, name)
            return self._keep(model), True

    def _remember_name(self, sha: str, name: str) -> None:
        """Under the lock: keep an uploader's display name (never resolvable) for ListModels."""
        if sha in self._files:
            return
        names = self._uploads.setdefault(sha, [])
        if name and name not in names:
            names.append(name)

    def _load_lock(self, sha: str) -> threading.Lock:
        """One load at a time per model; other models load and serve meanwhile."""
        with self._lock:
            return self._loading.setdefault(sha, threading.Lock())

    def _load_estimate(self, what: str, size: int) -> Estimate:
        return Estimate(what, {"model load": LOAD_FACTOR * size + MODEL_OVERHEAD})

    def _check(self, model: onnx.ModelProto, name: str) -> None:
        """Refuse, before a session is made, a model whose input or activations cannot fit this server."""
        footprint = Footprint.of(model)
        image = next(v for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer})
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in image.type.tensor_type.shape.dim]
        pixels = 1
        for d in dims[2:]:
            pixels *= max(d, 1)
        if pixels > self.max_input_pixels:
            raise ResourceExhausted(
                f"model {name!r} declares a {'x'.join(str(d) for d in dims[1:])} input ({pixels:,} pixels per image); "
                f"this server takes at most {self.max_input_pixels:,} (--max-input-pixels)",
                reason="MODEL_TOO_LARGE", metadata={"limit": self.max_input_pixels, "requested": pixels},
            )
        values = list(model.graph.value_info) + list(model.graph.output)
        largest = max(values, key=value_bytes, default=None)
        per_image = footprint.input + 2 * footprint.forward
        biggest = value_bytes(largest) if largest is not None else 0
        if max(per_image, biggest) > self.budget.limit:
            raise ResourceExhausted(
                f"model {name!r} needs about {fmt_bytes(max(per_image, biggest))} per image"
                + (f" (tensor {largest.name!r} alone is {fmt_bytes(biggest)})" if largest is not None else "")
                + f", over this server's memory budget of {fmt_bytes(self.budget.limit)}",
                reason="OVER_MEMORY_BUDGET", metadata={"limit": self.budget.limit, "requested": max(per_image, biggest)},
            )

    def _keep(self, model: LoadedModel) -> LoadedModel:
        """Serve a freshly loaded model (called under its load lock)."""
        model.budget = self.budget
        with self._lock:
            self._loaded[model.sha256] = model
        return model

    def _hold(self, model: LoadedModel) -> LoadedModel:
        """Account for a kept model in the budget, evictable (after its load's reservation ended)."""
        self.budget.hold(model.key, RESIDENT_FACTOR * model.size + MODEL_OVERHEAD, f"model {model.name!r}", lambda: self._unload(model.sha256, "evicted", model))
        log.info("model %s (%s) loaded, %d bytes", model.name, model.sha256[:12], model.size)
        return model

    def _unload(self, sha: str, why: str, only: LoadedModel | None = None) -> bool:
        """Drop a loaded model (an upload is forgotten, a --model-dir model reloads on next use);
        ``only``: if it is still this very model (an eviction racing a new load of the same bytes)."""
        with self._lock:
            if only is not None and self._loaded.get(sha) is not only:
                return False
            model = self._loaded.pop(sha, None)
            if sha not in self._files:
                self._uploads.pop(sha, None)
        if model is None:
            return False
        key, name = model.key, model.name
        model.drop_projections()
        del model, only  # gone before the budget hands memory back
        self.budget.release(key)
        log.info("model %s (%s) %s", name, sha[:12], why)
        return True

    def delete(self, sha256: str = "", name: str = "") -> tuple[str, bool]:
        """DeleteModel: forget an upload, or unload a --model-dir model (it stays on disk and loads
        again on next use), and the cached preparation of either. Returns (sha256, removed): removed
        is False for --model-dir models."""
        sha = self._resolve(sha256, name)
        self._unload(sha, "deleted" if sha not in self._files else "unloaded")
        self.cache.forget(sha)
        return sha, sha not in self._files

    def upload_names(self, sha: str) -> list[str]:
        """The display names uploaders gave a model (shown by ListModels, never resolved)."""
        with self._lock:
            return list(self._uploads.get(sha, []))

    def in_model_dir(self, sha: str) -> bool:
        return sha in self._files

    def is_loaded(self, sha: str) -> bool:
        with self._lock:
            return sha in self._loaded

    def summaries(self) -> list[tuple[str, str, int]]:
        """(sha256, name, size) of every held model."""
        names = {sha: name for name, sha in self._names.items()}
        with self._lock:
            out = {sha: (sha, m.name, m.size) for sha, m in self._loaded.items()}
        for sha, path in self._files.items():
            out[sha] = (sha, names.get(sha, path.stem), path.stat().st_size)
        return sorted(out.values(), key=lambda t: t[1])
