"""The gRPC servicer: request -> engine call -> response, errors mapped to status codes in one place."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np

from zfnet import topk_proto
from zfnet.errors import InvalidArgument, NotFound, ResourceExhausted, ZfnetError
from zfnet.server import admission, correspondence, datasets, evolution, invariance, occlusion, runtime, top
from zfnet.server.engine import Engine
from zfnet.server.features import NONE, FeatureLayer, Pooling
from zfnet.server.images import ImageInput
from zfnet.server.layers import resolve
from zfnet.server.models import LoadedModel
from zfnet.status import to_grpc_status
from zfnet.server.perturbation import FillValue, Progress, TrueClass
from zfnet.tensors import MAX_MESSAGE_BYTES, from_proto, to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

log = logging.getLogger("zfnet.server")

# Enum value -> engine name. The zero value (*_UNSPECIFIED, also what "not set" reads as) is the
# documented default; a number outside the enum is refused by ``enum_choice``.
MODES = {pb.DECONV_MODE_UNSPECIFIED: "max", pb.MAX: "max", pb.MAP: "map"}
METHODS = {pb.DECONV_METHOD_UNSPECIFIED: "deconvnet", pb.DECONVNET: "deconvnet", pb.BACKPROP: "backprop", pb.GUIDED: "guided"}
FILLS = {pb.FILL_UNSPECIFIED: "mean", pb.FILL_MEAN: "mean", pb.FILL_GREY: "grey", pb.FILL_ZERO: "zero"}
TRANSFORMS = {pb.TRANSLATE: "translate", pb.SCALE: "scale", pb.ROTATE: "rotate"}
BORDERS = {pb.BORDER_UNSPECIFIED: "reflect", pb.REFLECT: "reflect", pb.CONSTANT: "constant"}



PREDICT_TOP_K = 5  # PredictRequest.top_k when unset
DECONV_TOP_K = 9  # ChannelSelection.top_k when unset


def _status(fn: Callable) -> Callable:
    """Map ZfnetError to its status code with error details (``zfnet.status``), MemoryError to
    RESOURCE_EXHAUSTED, any other exception to INTERNAL, logged; the server keeps serving. Wraps
    unary and streaming (generator) methods alike."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(self, request, context: grpc.ServicerContext):
            with _mapped(fn.__name__, context):
                yield from fn(self, request, context)

        return stream

    @functools.wraps(fn)
    def wrapper(self, request, context: grpc.ServicerContext):
        with _mapped(fn.__name__, context):
            return fn(self, request, context)

    return wrapper


@contextmanager
def _mapped(name: str, context: grpc.ServicerContext) -> Iterator[None]:
    """The body of one call: memory reserved inside stays reserved until the reply is sent
    (``admission.rpc_scope``); errors become status codes with details."""
    try:
        with admission.rpc_scope(context.time_remaining(), context.add_callback):
            yield
    except ZfnetError as err:
        context.abort_with_status(to_grpc_status(err))
    except MemoryError:
        err = ResourceExhausted("out of memory; send fewer images or channels per request", reason="OUT_OF_MEMORY")
        context.abort_with_status(to_grpc_status(err))
    except Exception as err:
        if not context.is_active():  # the client cancelled: reading its request stream raised
            log.info("%s cancelled by the client", name)
            return
        if runtime.is_allocation_failure(err):
            log.warning("%s: onnxruntime could not allocate memory: %s", name, str(err).splitlines()[0][-200:])
            failed = ResourceExhausted("onnxruntime could not allocate the memory this request needs; send fewer or smaller images", reason="OUT_OF_MEMORY")
            context.abort_with_status(to_grpc_status(failed))
        log.exception("%s failed", name)
        context.abort_with_status(to_grpc_status(ZfnetError(f"{name} failed on the server; see its log", reason="INTERNAL"), "INTERNAL"))


@contextmanager
def within(old: str, new: str) -> Iterator[None]:
    """Errors raised inside that name the request field ``old`` (or a field under it) name ``new``
    instead: checks written for one request's layout serve another's (``layer`` -> ``layers[2]``;
    ``model.sha256`` -> ``sha256`` where the request is the ModelRef itself)."""
    try:
        yield
    except ZfnetError as err:
        field = err.field or ""
        if field == old or field.startswith((old + ".", old + "[")):
            err.field = (new + field[len(old):]).lstrip(".") or None
        raise


def enum_choice(table: dict[int, str], value: int, field: str, enum) -> str:
    """The engine name of an enum field's value; a number the enum does not define is refused."""
    if value not in table:
        names = ", ".join(f"{enum.Name(v)} ({v})" for v in table if v)
        unset = f", or leave it unset for {enum.Name(next(v for v in table if v and table[v] == table[0]))}" if 0 in table else " (it has no default)"
        raise InvalidArgument(
            f"{field} {value} is not a {enum.DESCRIPTOR.name}: use {names}{unset}",
            field=field, reason="UNKNOWN_ENUM_VALUE", metadata={"enum": enum.DESCRIPTOR.full_name, "value": value},
        )
    return table[value]


def images_from(request_images) -> list[ImageInput]:
    """Proto images -> engine images."""
    out = []
    for i, image in enumerate(request_images):
        kind = image.WhichOneof("source")
        if kind == "encoded":
            out.append(ImageInput(encoded=image.encoded, label=image.label))
        elif kind == "rgb":
            out.append(ImageInput(rgb=from_proto(image.rgb, f"image {i}", f"images[{i}].rgb"), label=image.label))
        elif kind == "model_input":
            model_input = from_proto(image.model_input, f"image {i}", f"images[{i}].model_input")
            out.append(ImageInput(model_input=model_input.astype(np.float32), label=image.label))
        else:
            raise InvalidArgument(f"image {i} has no data (set encoded, rgb or model_input)", field=f"images[{i}]", reason="FIELD_REQUIRED")
    return out


def data_source(engine: Engine, source: pb.DataSource, rest: Iterator) -> datasets.Source:
    """The images a data-set job reads: a named data set, or ``ImageBatch`` messages that follow in
    the request stream (``rest`` yields them; each request's ``batch`` field)."""
    kind = source.WhichOneof("source")
    if kind == "dataset":
        return engine.datasets.source(source.dataset, source.start, source.stop, source.batch_size, engine.max_image_pixels, engine.decode_gate)
    if kind == "streamed":
        parts = (
            (r.batch.start, images_from(r.batch.images), list(r.batch.labels))
            for r in rest if r.WhichOneof("part") == "batch"
        )
        return datasets.streamed_source(
            source.streamed.size, list(source.streamed.classes), parts, source.start, source.stop, source.batch_size,
            engine.max_image_pixels, engine.decode_gate,
        )
    raise InvalidArgument("no data given: set DataSource.dataset (a name from ListDatasets) or DataSource.streamed", reason="FIELD_REQUIRED")


def progress(stage: str, done: int, total: int, skipped: list[datasets.Skipped] = ()) -> pb.JobProgress:
    return pb.JobProgress(stage=stage, done=done, total=total, skipped=[pb.SkippedImage(index=s.index, path=s.path, reason=s.reason) for s in skipped])


def layer_ref(ref: pb.LayerRef) -> str | int:
    kind = ref.WhichOneof("ref")
    if kind is None:
        raise InvalidArgument("no layer given: set LayerRef.number or LayerRef.name", field="layer", reason="FIELD_REQUIRED")
    if kind == "name" and ref.name.isdigit() and not ref.name.isascii():
        raise NotFound(
            f"no layer named {ref.name!r}; a layer number is written in ASCII digits (or set LayerRef.number)",
            field="layer.name", reason="LAYER_NOT_FOUND", resource=("layer", ref.name),
        )
    return ref.number if kind == "number" else ref.name


def _require_model(ref: pb.ModelRef, at: str) -> None:
    """Refuse a ModelRef with neither sha256 nor name; ``at``: where it sits ("" for the request itself)."""
    if ref.WhichOneof("ref") is None:
        raise InvalidArgument("no model given: set ModelRef.sha256 or ModelRef.name", field=at or "ref", reason="FIELD_REQUIRED")


def upload_chunks(first: pb.UploadModelRequest, rest: Iterator[pb.UploadModelRequest]) -> Iterator[bytes]:
    """The model bytes of an upload stream whose first message was the header."""
    for part in rest:
        if part.WhichOneof("part") != "chunk":
            raise InvalidArgument("UploadModel: send one UploadHeader, then only chunks", field="header", reason="STREAM_OUT_OF_ORDER")
        yield part.chunk


POOL_KINDS = {pb.POOL_NONE: "none", pb.POOL_AVG: "avg", pb.POOL_MAX: "max", pb.POOL_GRID: "grid"}
POOL_PROTO = {kind: code for code, kind in POOL_KINDS.items()}
FEATURE_DTYPES = {pb.DATA_TYPE_UNSPECIFIED: "float32", pb.FLOAT32: "float32", pb.FLOAT16: "float16"}
FEATURE_DTYPE_PROTO = {"float32": pb.FLOAT32, "float16": pb.FLOAT16}
REPLY_BYTES = 32 << 20  # feature bytes per FeaturesReply; a batch over it travels in several replies


def pooling(message: pb.Pooling, field: str) -> Pooling | None:
    """Proto pooling (the request field ``field``) -> engine pooling; None when unspecified."""
    if message.kind == pb.POOL_UNSPECIFIED:
        return None
    if message.kind not in POOL_KINDS:
        raise InvalidArgument(
            f"{field}.kind {message.kind} is not a PoolKind: use POOL_NONE, POOL_AVG, POOL_MAX or POOL_GRID", field=f"{field}.kind",
            reason="UNKNOWN_ENUM_VALUE", metadata={"enum": pb.PoolKind.DESCRIPTOR.full_name, "value": message.kind},
        )
    kind = POOL_KINDS[message.kind]
    with within("", f"{field}.grid"):
        return Pooling.parse(f"grid:{message.grid}" if kind == "grid" else kind)


def pooling_proto(value: Pooling) -> pb.Pooling:
    return pb.Pooling(kind=POOL_PROTO[value.kind], grid=value.grid)


def features_header(sha256: str, layers: list[FeatureLayer], dtype: str, source: datasets.Source) -> pb.FeaturesHeader:
    return pb.FeaturesHeader(
        model_sha256=sha256, dtype=FEATURE_DTYPE_PROTO[dtype], size=source.size, classes=source.classes,
        start=source.start, stop=source.stop, batch_size=source.batch_size,
        layers=[
            pb.FeatureSpec(name=f.name, number=f.number or 0, pooling=pooling_proto(f.pooling), layer_shape=f.layer_shape, shape=f.shape)
            for f in layers
        ],
    )


def feature_replies(batch: datasets.Batch, rows: list[np.ndarray], done: int, total: int) -> Iterator[pb.FeaturesReply]:
    """One batch's rows as replies of at most REPLY_BYTES of features (at least one row each); the
    first carries the batch's skipped images."""
    row_bytes = sum(r.shape[1] * r.itemsize for r in rows) or 1
    step = max(1, REPLY_BYTES // row_bytes)
    for begin in range(0, max(len(batch.indices), 1), step):
        end = begin + step
        yield pb.FeaturesReply(
            rows=pb.FeatureRows(
                indices=batch.indices[begin:end].tolist(), labels=batch.labels[begin:end].tolist(), paths=batch.paths[begin:end],
                features=[to_proto(r[begin:end]) for r in rows],
            ),
            progress=progress("features", done, total, batch.skipped if begin == 0 else []),
        )


def model_info(model: LoadedModel, provider: str) -> pb.ModelInfo:
    return pb.ModelInfo(
        sha256=model.sha256, name=model.name, input_name=model.input_name, input_shape=model.input_shape,
        preprocessing_json=model.preprocessing_json, classes=model.classes, output_name=model.output_name, provider=provider,
        layers=[
            pb.Layer(index=r.index, name=r.name, op=r.op, shape=[d if isinstance(d, int) and d > 0 else -1 for d in r.shape], number=r.number or 0,
                     aliases=list(r.aliases))
            for r in model.layers
        ],
    )


class ZfnetServicer(zfnet_pb2_grpc.ZfnetServicer):
    """Thin over :class:`Engine`."""

    def __init__(self, engine: Engine, provider: str) -> None:
        self.engine = engine
        self.provider = provider

    def _model(self, ref: pb.ModelRef, at: str = "model") -> LoadedModel:
        """The model ``ref`` names; ``at`` is where the ModelRef sits in the request ("" for the request itself)."""
        _require_model(ref, at)
        with within("model", at):
            return self.engine.store.get(ref.sha256, ref.name)

    @_status
    def HasModel(self, request: pb.ModelRef, context) -> pb.HasModelResponse:
        _require_model(request, "")
        sha = self.engine.store.lookup(request.sha256, request.name)
        return pb.HasModelResponse(present=sha is not None, sha256=sha or "")

    @_status
    def UploadModel(self, request_iterator: Iterator[pb.UploadModelRequest], context) -> pb.ModelInfo:
        first = next(request_iterator, None)
        if first is None:
            raise InvalidArgument("UploadModel: empty stream; send an UploadHeader and the model's bytes", field="header", reason="FIELD_REQUIRED")
        if first.WhichOneof("part") != "header":
            raise InvalidArgument("UploadModel: send the UploadHeader before any chunk", field="chunk", reason="STREAM_OUT_OF_ORDER")
        header = first.header
        model = self.engine.store.receive(upload_chunks(first, request_iterator), header.name, header.size, header.sha256)
        log.info("model %s (%s) uploaded as %s, %d bytes", model.name, model.sha256[:12], header.name, model.size)
        return model_info(model, self.provider)

    @_status
    def ListModels(self, request, context) -> pb.ListModelsResponse:
        store = self.engine.store
        return pb.ListModelsResponse(models=[
            pb.ModelSummary(sha256=s, name=n, size=z, upload_names=store.upload_names(s), in_model_dir=store.in_model_dir(s), loaded=store.is_loaded(s))
            for s, n, z in store.summaries()
        ])

    @_status
    def DeleteModel(self, request: pb.ModelRef, context) -> pb.DeleteModelResponse:
        sha, removed = self.engine.store.delete(request.sha256, request.name)
        return pb.DeleteModelResponse(sha256=sha, removed=removed)

    @_status
    def GetModelInfo(self, request: pb.ModelRef, context) -> pb.ModelInfo:
        return model_info(self._model(request, at=""), self.provider)

    @_status
    def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        if request.top_k < 0:
            raise InvalidArgument(
                f"top_k must not be negative (0 or unset means {PREDICT_TOP_K}), got {request.top_k}", field="top_k", reason="VALUE_OUT_OF_RANGE",
            )
        model = self._model(request.model)
        probabilities, applied = self.engine.predict(model, images_from(request.images))
        k = min(request.top_k or PREDICT_TOP_K, probabilities.shape[1])
        predictions = []
        for row in probabilities:
            top = np.argsort(-row, kind="stable")[:k]
            labels = [model.classes[i] if i < len(model.classes) else str(i) for i in top]
            predictions.append(pb.Prediction(top=[pb.ClassScore(index=int(i), label=lab, probability=float(row[i])) for i, lab in zip(top, labels)]))
        return pb.PredictResponse(probabilities=to_proto(probabilities), predictions=predictions, softmax_applied=applied)

    @_status
    def GetActivations(self, request: pb.ActivationsRequest, context) -> pb.ActivationsResponse:
        model = self._model(request.model)
        images = images_from(request.images)
        layers = []
        for i, ref in enumerate(request.layers):  # checked one by one, so that an error names its layers[i]
            with within("layer", f"layers[{i}]"):
                layers.append(resolve(model.layers, layer_ref(ref)).name)
        values = self.engine.activations(model, images, layers)
        return pb.ActivationsResponse(activations={name: to_proto(v) for name, v in values.items()})

    @_status
    def Deconv(self, request: pb.DeconvRequest, context) -> pb.DeconvResponse:
        model = self._model(request.model)
        images = images_from(request.images)
        mode = enum_choice(MODES, request.mode, "mode", pb.DeconvMode)
        method = enum_choice(METHODS, request.method, "method", pb.DeconvMethod)
        layer, results = self.engine.deconv(
            model, images, layer_ref(request.layer), list(request.channels.channels) or None,
            request.channels.top_k or DECONV_TOP_K, mode, method,
        )
        per_image = [pb.ImageReconstructions(label=image.label) for image in images]
        for r in results:
            top, left, bottom, right = r.receptive_field
            per_image[r.image].reconstructions.append(pb.Reconstruction(
                channel=r.channel, activation=r.activation, location=list(r.location),
                receptive_field=pb.Box(top=top, left=left, bottom=bottom, right=right), pixels=to_proto(r.pixels),
            ))
        return pb.DeconvResponse(layer=layer.name, mode=request.mode or pb.MAX, method=request.method or pb.DECONVNET, images=per_image)


    def _job(self, requests: Iterator, rpc: str, job_type: str) -> tuple[Any, LoadedModel]:
        """The job of a data-set stream (its first request, ``part`` "job") and the model it names."""
        first = next(requests, None)
        if first is None or first.WhichOneof("part") != "job":
            raise InvalidArgument(f"{rpc}: the first request must be the {job_type}", field="job", reason="STREAM_OUT_OF_ORDER")
        with within("model", "job.model"):
            return first.job, self._model(first.job.model)

    @_status
    def ListDatasets(self, request, context) -> pb.ListDatasetsResponse:
        store = self.engine.datasets
        return pb.ListDatasetsResponse(datasets=[
            pb.DatasetInfo(name=name, size=len(store.folder(name)), classes=store.folder(name).classes) for name in store.names()
        ])

    @_status
    def Features(self, request_iterator: Iterator[pb.FeaturesRequest], context) -> Iterator[pb.FeaturesReply]:
        job, model = self._job(request_iterator, "Features", "FeaturesJob")
        if job.dtype not in FEATURE_DTYPES:
            raise InvalidArgument(f"FeaturesJob.dtype must be FLOAT32 or FLOAT16, got {pb.DataType.Name(job.dtype) if job.dtype in pb.DataType.values() else job.dtype}", field="job.dtype")
        dtype = FEATURE_DTYPES[job.dtype]
        asked = [(layer_ref(f.layer), pooling(f.pooling, f"job.layers[{i}].pooling")) for i, f in enumerate(job.layers)]
        layers = self.engine.feature_layers(model, asked, pooling(job.default_pooling, "job.default_pooling") or NONE)
        row_bytes = sum(f.size for f in layers) * np.dtype(dtype).itemsize
        if row_bytes > MAX_MESSAGE_BYTES // 2:
            raise ResourceExhausted(
                f"one image's features are {row_bytes} bytes, over half the {MAX_MESSAGE_BYTES}-byte message limit; pool the large layers",
                field="job.layers", reason="REPLY_TOO_LARGE", metadata={"limit": MAX_MESSAGE_BYTES // 2, "requested": row_bytes},
            )
        source = data_source(self.engine, job.data, request_iterator)
        yield pb.FeaturesReply(header=features_header(model.sha256, layers, dtype, source))
        done = 0
        for batch, rows in self.engine.features(model, layers, source, dtype):
            done += batch.read
            yield from feature_replies(batch, rows, done, source.count)

    @_status
    def Occlusion(self, request: pb.OcclusionRequest, context) -> Iterator[pb.OcclusionReply]:
        model = self._model(request.model)
        images = images_from(request.images)
        steps = occlusion.run(
            model, self.engine.batch(model, images), layer_ref(request.layer) if request.HasField("layer") else None,
            request.size if request.HasField("size") else None, request.stride if request.HasField("stride") else None,
            enum_choice(FILLS, request.fill, "fill", pb.Fill), list(request.true_classes), request.max_batch, request.all_classes,
        )
        result = yield from _with_progress(steps, pb.OcclusionReply)
        yield pb.OcclusionReply(result=occlusion_result(result, images, model))

    @_status
    def Invariance(self, request: pb.InvarianceRequest, context) -> Iterator[pb.InvarianceReply]:
        model = self._model(request.model)
        images = images_from(request.images)
        sweeps = [(enum_choice(TRANSFORMS, sweep.transform, f"sweeps[{i}].transform", pb.Transform), list(sweep.values)) for i, sweep in enumerate(request.sweeps)]
        steps = invariance.run(
            model, self.engine.batch(model, images), sweeps, [layer_ref(r) for r in request.layers],
            enum_choice(BORDERS, request.border, "border", pb.Border), enum_choice(FILLS, request.fill, "fill", pb.Fill), list(request.true_classes), request.max_batch,
        )
        result = yield from _with_progress(steps, pb.InvarianceReply)
        yield pb.InvarianceReply(result=invariance_result(result, images, model))

    @_status
    def Correspondence(self, request: pb.CorrespondenceRequest, context) -> Iterator[pb.CorrespondenceReply]:
        model = self._model(request.model)
        images = images_from(request.images)
        boxes = [[(b.top, b.left, b.bottom, b.right) for b in image.boxes] for image in request.boxes]
        steps = correspondence.run(
            model, self.engine.batch(model, images), list(request.parts), boxes,
            request.random_trials if request.HasField("random_trials") else None, request.seed,
            [layer_ref(r) for r in request.layers], enum_choice(FILLS, request.fill, "fill", pb.Fill), request.max_batch, [i.label for i in images],
        )
        result = yield from _with_progress(steps, pb.CorrespondenceReply)
        yield pb.CorrespondenceReply(result=correspondence_result(result, images))


    @_status
    def TopActivations(self, request_iterator: Iterator[pb.TopRequest], context) -> Iterator[pb.TopReply]:
        job, model = self._job(request_iterator, "TopActivations", "TopJob")
        method = enum_choice(METHODS, job.method, "job.method", pb.DeconvMethod)
        stage = enum_choice(TOP_STAGES, job.stage, "job.stage", pb.TopStage)
        by = enum_choice(topk_proto.BY_NAME, job.by, "job.by", pb.TopBy)
        method = method if job.method != pb.DECONV_METHOD_UNSPECIFIED else None  # a scan given a method checks it can project
        if job.k < 0:
            raise InvalidArgument(f"k must be positive (0 or unset means 9), got {job.k}", field="job.k", reason="VALUE_OUT_OF_RANGE")
        source = data_source(self.engine, job.data, request_iterator)
        events = self.engine.top(
            model, source, data=topk_proto.data_name(job.data), layers=[layer_ref(r) for r in job.layers], channels=list(job.channels) or None,
            k=job.k or 9, by=by, method=method, stage=stage,
            state=topk_proto.from_message(job.state) if job.HasField("state") else None, checkpoint_every=job.checkpoint_every,
        )
        for event in events:
            yield top_reply(event)

    @_status
    def Evolution(self, request: pb.EvolutionRequest, context) -> Iterator[pb.EvolutionReply]:
        if not request.models:
            raise InvalidArgument("Evolution: no snapshots given (EvolutionRequest.models)", field="models", reason="FIELD_REQUIRED")
        if request.labels and len(request.labels) != len(request.models):
            raise InvalidArgument(f"{len(request.labels)} labels for {len(request.models)} snapshots; give one per snapshot or none", field="labels")
        if request.data.WhichOneof("source") != "dataset":
            raise InvalidArgument(
                "Evolution reads a named data set on the server (DataSource.dataset); for images only the client has, "
                "run TopActivations with k=1 on each snapshot", field="data.dataset", reason="FIELD_REQUIRED",
            )
        method = enum_choice(METHODS, request.method, "method", pb.DeconvMethod)
        for i, ref in enumerate(request.models):
            _require_model(ref, f"models[{i}]")
        snapshots = [
            evolution.Snapshot(request.labels[i] if request.labels else (ref.name or ref.sha256[:12]), functools.partial(self._model, ref, f"models[{i}]"))
            for i, ref in enumerate(request.models)
        ]
        data = request.data
        events = self.engine.evolution(
            snapshots, data.dataset, data.start, data.stop, data.batch_size, data=topk_proto.data_name(data),
            layers=[layer_ref(r) for r in request.layers], channels=list(request.channels) or None, method=method,
        )
        for position, event in events:
            yield pb.EvolutionReply(snapshot=position, reply=top_reply(event))

    @_status
    def GetFilters(self, request: pb.FiltersRequest, context) -> pb.FiltersResponse:
        model = self._model(request.model)
        found = self.engine.filters(model, layer_ref(request.layer))
        bias = to_proto(found.bias) if found.bias is not None else pb.Tensor(dtype=pb.FLOAT32)
        return pb.FiltersResponse(layer=found.layer, op=found.op, weights=to_proto(found.weights), bias=bias, channel_order=found.channel_order)


# ---- perturbation analyses: engine results -> messages ---------------------------------------



def _with_progress(steps: Generator[Progress, None, object], reply: type) -> Generator:
    """Yield each progress step as ``reply(progress=...)``; return the analysis' result."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        yield reply(progress=pb.JobProgress(stage=step.stage, done=step.done, total=step.total))


def _fill(fill: FillValue) -> pb.FillValue:
    return pb.FillValue(fill={v: k for k, v in FILLS.items()}[fill.fill], values=fill.values.tolist(), note=fill.note)


def _true_class(truth: TrueClass) -> pb.TrueClass:
    return pb.TrueClass(index=truth.index, label=truth.label, from_top1=truth.from_top1)


def occlusion_result(result: occlusion.Occlusion, images: list[ImageInput], model: LoadedModel) -> pb.OcclusionResult:
    maps = []
    for image, sheet in zip(images, result.sheets):
        item = pb.OcclusionMaps(
            label=image.label, true_class=_true_class(sheet.true_class), channel=sheet.channel, channel_total=sheet.channel_total,
            true_class_probability=sheet.true_class_probability, top_class=sheet.top_class, layer_total=to_proto(sheet.layer_total),
            projection_error=sheet.projection_error, true_class_map=to_proto(sheet.true_class_map), top_class_map=to_proto(sheet.top_class_map),
        )
        if sheet.projection is not None:
            r = sheet.projection
            top, left, bottom, right = r.receptive_field
            item.projection.CopyFrom(pb.Reconstruction(
                channel=r.channel, activation=r.activation, location=list(r.location),
                receptive_field=pb.Box(top=top, left=left, bottom=bottom, right=right), pixels=to_proto(r.pixels),
            ))
        if sheet.probabilities is not None:
            item.probabilities.CopyFrom(to_proto(sheet.probabilities))
        maps.append(item)
    return pb.OcclusionResult(
        layer=result.layer, size=result.grid.size, stride=result.grid.stride, fill=_fill(result.fill),
        tops=result.grid.tops.tolist(), lefts=result.grid.lefts.tolist(), classes=model.classes, images=maps, batch=result.batch,
    )


def invariance_result(result: invariance.Invariance, images: list[ImageInput], model: LoadedModel) -> pb.InvarianceResult:
    codes = {v: k for k, v in TRANSFORMS.items()}
    return pb.InvarianceResult(
        layers=result.layers, border={"reflect": pb.REFLECT, "constant": pb.CONSTANT}[result.border], fill=_fill(result.fill),
        labels=[image.label for image in images], true_classes=[_true_class(t) for t in result.true_classes],
        feature_norms=to_proto(result.feature_norms), classes=model.classes, batch=result.batch,
        sweeps=[
            pb.SweepResult(transform=codes[s.transform], unit=s.unit, values=s.values.tolist(), distances=to_proto(s.distances),
                           true_class_probability=to_proto(s.true_class_probability))
            for s in result.sweeps
        ],
    )


def correspondence_result(result: correspondence.Correspondence, images: list[ImageInput]) -> pb.CorrespondenceResult:
    return pb.CorrespondenceResult(
        layers=result.layers, parts=result.parts, fill=_fill(result.fill), labels=[image.label for image in images],
        random_trials=result.random_trials, seed=result.seed, batch=result.batch,
        scores=[
            pb.CorrespondenceScore(
                part=s.part, random=s.random, layer=s.layer, delta=s.delta, mean=s.mean, std=s.std, pairs=s.pairs,
                features=s.features, pair_distances=to_proto(s.pair_distances), trial_deltas=s.trial_deltas,
                trial_boxes=[pb.PartBoxes(boxes=[pb.Box(top=t, left=l, bottom=b, right=r) for t, l, b, r in trial.tolist()])
                             for trial in (s.trial_boxes if s.trial_boxes is not None else [])],
            )
            for s in result.scores
        ],
    )
TOP_STAGES = {pb.TOP_STAGE_UNSPECIFIED: "all", pb.TOP_ALL: "all", pb.TOP_SCAN: "scan", pb.TOP_RECONSTRUCT: "reconstruct"}


def _box(box: tuple[int, int, int, int]) -> pb.Box:
    return pb.Box(top=box[0], left=box[1], bottom=box[2], right=box[3])


def top_reply(event) -> pb.TopReply:
    """One event of a top-k job -> its reply."""
    if isinstance(event, top.Progress):
        return pb.TopReply(progress=progress(event.stage, event.done, event.total, event.skipped))
    if isinstance(event, top.Checkpoint):
        state = topk_proto.to_message(event.state)
        return pb.TopReply(state=state) if event.final else pb.TopReply(checkpoint=state)
    if isinstance(event, top.WinnerImage):
        return pb.TopReply(image=pb.TopImage(index=event.index, path=event.path, label=event.label, pixels=to_proto(event.pixels)))
    return pb.TopReply(entry=pb.TopEntry(
        layer=event.layer, channel=event.channel, rank=event.rank, index=event.index, value=event.value, activation=event.activation,
        location=list(event.location), receptive_field=_box(event.receptive_field), patch=_box(event.patch), reconstruction=to_proto(event.reconstruction),
    ))
