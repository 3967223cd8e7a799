"""The gRPC servicer: request -> engine call -> response, errors mapped to status codes in one place."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import grpc
import numpy as np

from zfnet.errors import InvalidArgument, NotFound, ZfnetError
from zfnet.server import admission, datasets, runtime
from zfnet.server.engine import Engine
from zfnet.server.images import ImageInput
from zfnet.server.models import LoadedModel
from zfnet.tensors import from_proto, to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

log = logging.getLogger("zfnet.server")

MODES = {pb.DECONV_MODE_UNSPECIFIED: "max", pb.MAX: "max", pb.MAP: "map"}
METHODS = {pb.DECONV_METHOD_UNSPECIFIED: "deconvnet", pb.DECONVNET: "deconvnet", pb.BACKPROP: "backprop", pb.GUIDED: "guided"}


def _status(fn: Callable) -> Callable:
    """Map ZfnetError to its status code, a failed allocation (Python's or onnxruntime's) to
    RESOURCE_EXHAUSTED, any other exception to INTERNAL, logged; the server keeps serving.
    Memory reserved during the call stays reserved until its reply is sent (``admission.rpc_scope``)."""

    @functools.wraps(fn)
    def wrapper(self, request, context: grpc.ServicerContext):
        try:
            with admission.rpc_scope(context.time_remaining(), context.add_callback):
                return fn(self, request, context)
        except ZfnetError as err:
            context.abort(getattr(grpc.StatusCode, err.code), str(err))
        except MemoryError:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory; send fewer images or channels per request")
        except Exception as err:
            if runtime.is_allocation_failure(err):
                log.warning("%s: onnxruntime could not allocate memory: %s", fn.__name__, str(err).splitlines()[0][-200:])
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "onnxruntime could not allocate the memory this request needs; send fewer or smaller images")
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
    if kind == "name" and ref.name.isdigit() and not ref.name.isascii():
        raise NotFound(f"no layer named {ref.name!r}; a layer number is written in ASCII digits (or set LayerRef.number)")
    return ref.number if kind == "number" else ref.name


def upload_chunks(first: pb.UploadModelRequest, rest: Iterator[pb.UploadModelRequest]) -> Iterator[bytes]:
    """The model bytes of an upload stream whose first message was the header."""
    for part in rest:
        if part.WhichOneof("part") != "chunk":
            raise InvalidArgument("UploadModel: send one UploadHeader, then only chunks")
        yield part.chunk


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
        first = next(request_iterator, None)
        if first is None:
            raise InvalidArgument("UploadModel: empty stream; send an UploadHeader and the model's bytes")
        if first.WhichOneof("part") != "header":
            raise InvalidArgument("UploadModel: send the UploadHeader before any chunk")
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
        return model_info(self._model(request), self.provider)

    @_status
    def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        if request.top_k < 0:
            raise InvalidArgument(f"top_k must be positive (or 0 for the default 5), got {request.top_k}")
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
