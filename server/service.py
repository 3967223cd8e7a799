"""The gRPC servicer: request -> engine call -> response, errors mapped to status codes in one place."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import grpc
import numpy as np

from zfnet.errors import InvalidArgument, ResourceExhausted, ZfnetError
from zfnet.server import datasets
from zfnet.server.engine import Engine
from zfnet.server.features import NONE, FeatureLayer, Pooling
from zfnet.server.images import ImageInput
from zfnet.server.models import LoadedModel
from zfnet.tensors import MAX_MESSAGE_BYTES, from_proto, to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

log = logging.getLogger("zfnet.server")

MODES = {pb.DECONV_MODE_UNSPECIFIED: "max", pb.MAX: "max", pb.MAP: "map"}
METHODS = {pb.DECONV_METHOD_UNSPECIFIED: "deconvnet", pb.DECONVNET: "deconvnet", pb.BACKPROP: "backprop", pb.GUIDED: "guided"}


def _status(fn: Callable) -> Callable:
    """Map ZfnetError to its status code; any other exception to INTERNAL, logged; the server keeps serving."""

    @functools.wraps(fn)
    def wrapper(self, request, context: grpc.ServicerContext):
        try:
            return fn(self, request, context)
        except ZfnetError as err:
            context.abort(getattr(grpc.StatusCode, err.code), str(err))
        except MemoryError:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory; send fewer images or channels per request")
        except Exception:
            log.exception("%s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{fn.__name__} failed on the server; see its log")

    return wrapper


def _status_stream(fn: Callable) -> Callable:
    """:func:`_status` for server-streaming methods: errors raised while the replies are generated."""

    @functools.wraps(fn)
    def wrapper(self, request, context: grpc.ServicerContext):
        try:
            yield from fn(self, request, context)
        except ZfnetError as err:
            context.abort(getattr(grpc.StatusCode, err.code), str(err))
        except MemoryError:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory; use a smaller batch_size")
        except Exception:
            if not context.is_active():  # the client cancelled: its request stream ends in an RpcError
                log.info("%s cancelled by the client", fn.__name__)
                return
            log.exception("%s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{fn.__name__} failed on the server; see its log")

    return wrapper


def images_from(request_images) -> list[ImageInput]:
    """Proto images -> engine images."""
    out = []
    for i, image in enumerate(request_images):
        kind = image.WhichOneof("source")
        if kind == "encoded":
            out.append(ImageInput(encoded=image.encoded, label=image.label))
        elif kind == "rgb":
            out.append(ImageInput(rgb=from_proto(image.rgb, f"image {i}"), label=image.label))
        elif kind == "model_input":
            out.append(ImageInput(model_input=from_proto(image.model_input, f"image {i}").astype(np.float32), label=image.label))
        else:
            raise InvalidArgument(f"image {i} has no data (set encoded, rgb or model_input)")
    return out


def data_source(engine: Engine, source: pb.DataSource, rest: Iterator) -> datasets.Source:
    """The images a data-set job reads: a named data set, or ``ImageBatch`` messages that follow in
    the request stream (``rest`` yields them; each request's ``batch`` field)."""
    kind = source.WhichOneof("source")
    if kind == "dataset":
        return engine.datasets.source(source.dataset, source.start, source.stop, source.batch_size)
    if kind == "streamed":
        parts = (
            (r.batch.start, images_from(r.batch.images), list(r.batch.labels))
            for r in rest if r.WhichOneof("part") == "batch"
        )
        return datasets.streamed_source(source.streamed.size, list(source.streamed.classes), parts, source.start, source.stop, source.batch_size)
    raise InvalidArgument("no data given: set DataSource.dataset (a name from ListDatasets) or DataSource.streamed")


def progress(stage: str, done: int, total: int, skipped: list[datasets.Skipped] = ()) -> pb.JobProgress:
    return pb.JobProgress(stage=stage, done=done, total=total, skipped=[pb.SkippedImage(index=s.index, path=s.path, reason=s.reason) for s in skipped])


def layer_ref(ref: pb.LayerRef) -> str | int:
    kind = ref.WhichOneof("ref")
    if kind is None:
        raise InvalidArgument("no layer given: set LayerRef.number or LayerRef.name")
    return ref.number if kind == "number" else ref.name


POOL_KINDS = {pb.POOL_NONE: "none", pb.POOL_AVG: "avg", pb.POOL_MAX: "max", pb.POOL_GRID: "grid"}
POOL_PROTO = {kind: code for code, kind in POOL_KINDS.items()}
FEATURE_DTYPES = {pb.DATA_TYPE_UNSPECIFIED: "float32", pb.FLOAT32: "float32", pb.FLOAT16: "float16"}
FEATURE_DTYPE_PROTO = {"float32": pb.FLOAT32, "float16": pb.FLOAT16}
REPLY_BYTES = 32 << 20  # feature bytes per FeaturesReply; a batch over it travels in several replies


def pooling(message: pb.Pooling) -> Pooling | None:
    """Proto pooling -> engine pooling; None when unspecified."""
    if message.kind == pb.POOL_UNSPECIFIED:
        return None
    if message.kind not in POOL_KINDS:
        raise InvalidArgument(f"unknown Pooling.kind {message.kind}")
    kind = POOL_KINDS[message.kind]
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
            pb.Layer(index=r.index, name=r.name, op=r.op, shape=[d if isinstance(d, int) and d > 0 else -1 for d in r.shape], number=r.number or 0)
            for r in model.layers
        ],
    )


class ZfnetServicer(zfnet_pb2_grpc.ZfnetServicer):
    """Thin over :class:`Engine`."""

    def __init__(self, engine: Engine, provider: str) -> None:
        self.engine = engine
        self.provider = provider

    def _model(self, ref: pb.ModelRef) -> LoadedModel:
        return self.engine.store.get(ref.sha256, ref.name)

    @_status
    def HasModel(self, request: pb.ModelRef, context) -> pb.HasModelResponse:
        sha = self.engine.store.lookup(request.sha256, request.name)
        return pb.HasModelResponse(present=sha is not None, sha256=sha or "")

    @_status
    def UploadModel(self, request_iterator: Iterator[pb.UploadModelRequest], context) -> pb.ModelInfo:
        header, chunks, received = None, [], 0
        limit = self.engine.store.max_model_bytes
        for part in request_iterator:
            if part.WhichOneof("part") == "header":
                header = part.header
            elif header is None:
                raise InvalidArgument("UploadModel: send the UploadHeader before any chunk")
            else:
                chunks.append(part.chunk)
                received += len(part.chunk)
            if header is not None and max(header.size, received) > limit:
                raise ResourceExhausted(f"model {header.name!r} is over {limit} bytes, this server's limit (--max-model-mb)")
        if header is None:
            raise InvalidArgument("UploadModel: empty stream; send an UploadHeader and the model's bytes")
        data = b"".join(chunks)
        if header.size and header.size != len(data):
            raise InvalidArgument(f"UploadModel: received {len(data)} bytes, the header said {header.size}")
        model = self.engine.store.add(data, header.name, header.sha256)
        log.info("model %s (%s) uploaded, %d bytes", model.name, model.sha256[:12], model.size)
        return model_info(model, self.provider)

    @_status
    def ListModels(self, request, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[pb.ModelSummary(sha256=s, name=n, size=z) for s, n, z in self.engine.store.summaries()])

    @_status
    def GetModelInfo(self, request: pb.ModelRef, context) -> pb.ModelInfo:
        return model_info(self._model(request), self.provider)

    @_status
    def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        model = self._model(request.model)
        probabilities, applied = self.engine.predict(model, images_from(request.images))
        k = min(request.top_k or 5, probabilities.shape[1])
        predictions = []
        for row in probabilities:
            top = np.argsort(-row, kind="stable")[:k]
            labels = [model.classes[i] if i < len(model.classes) else str(i) for i in top]
            predictions.append(pb.Prediction(top=[pb.ClassScore(index=int(i), label=lab, probability=float(row[i])) for i, lab in zip(top, labels)]))
        return pb.PredictResponse(probabilities=to_proto(probabilities), predictions=predictions, softmax_applied=applied)

    @_status
    def GetActivations(self, request: pb.ActivationsRequest, context) -> pb.ActivationsResponse:
        model = self._model(request.model)
        values = self.engine.activations(model, images_from(request.images), [layer_ref(r) for r in request.layers])
        return pb.ActivationsResponse(activations={name: to_proto(v) for name, v in values.items()})

    @_status
    def Deconv(self, request: pb.DeconvRequest, context) -> pb.DeconvResponse:
        model = self._model(request.model)
        images = images_from(request.images)
        mode, method = MODES.get(request.mode), METHODS.get(request.method)
        if mode is None or method is None:
            raise InvalidArgument(f"unknown mode {request.mode} or method {request.method}")
        layer, results = self.engine.deconv(
            model, images, layer_ref(request.layer), list(request.channels.channels) or None,
            request.channels.top_k or 9, mode, method,
        )
        per_image = [pb.ImageReconstructions(label=image.label) for image in images]
        for r in results:
            top, left, bottom, right = r.receptive_field
            per_image[r.image].reconstructions.append(pb.Reconstruction(
                channel=r.channel, activation=r.activation, location=list(r.location),
                receptive_field=pb.Box(top=top, left=left, bottom=bottom, right=right), pixels=to_proto(r.pixels),
            ))
        return pb.DeconvResponse(layer=layer.name, mode=request.mode or pb.MAX, method=request.method or pb.DECONVNET, images=per_image)


    @_status
    def ListDatasets(self, request, context) -> pb.ListDatasetsResponse:
        store = self.engine.datasets
        return pb.ListDatasetsResponse(datasets=[
            pb.DatasetInfo(name=name, size=len(store.folder(name)), classes=store.folder(name).classes) for name in store.names()
        ])

    @_status_stream
    def Features(self, request_iterator: Iterator[pb.FeaturesRequest], context) -> Iterator[pb.FeaturesReply]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "job":
            raise InvalidArgument("Features: the first request must be the FeaturesJob")
        job = first.job
        model = self._model(job.model)
        if job.dtype not in FEATURE_DTYPES:
            raise InvalidArgument("FeaturesJob.dtype must be FLOAT32 or FLOAT16")
        dtype = FEATURE_DTYPES[job.dtype]
        layers = self.engine.feature_layers(
            model, [(layer_ref(f.layer), pooling(f.pooling)) for f in job.layers], pooling(job.default_pooling) or NONE,
        )
        row_bytes = sum(f.size for f in layers) * np.dtype(dtype).itemsize
        if row_bytes > MAX_MESSAGE_BYTES // 2:
            raise ResourceExhausted(f"one image's features are {row_bytes} bytes, over half the {MAX_MESSAGE_BYTES}-byte message limit; pool the large layers")
        source = data_source(self.engine, job.data, request_iterator)
        yield pb.FeaturesReply(header=features_header(model.sha256, layers, dtype, source))
        done = 0
        for batch, rows in self.engine.features(model, layers, source, dtype):
            done += batch.read
            yield from feature_replies(batch, rows, done, source.count)
