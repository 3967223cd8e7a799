"""The gRPC servicer: request -> engine call -> response, errors mapped to status codes in one place."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import grpc
import numpy as np

from zfnet import topk_proto
from zfnet.errors import InvalidArgument, ResourceExhausted, ZfnetError
from zfnet.server import datasets, top
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
    """:func:`_status` for calls that stream their replies: errors raised while replying end the call the same way."""

    @functools.wraps(fn)
    def wrapper(self, request, context: grpc.ServicerContext):
        try:
            yield from fn(self, request, context)
        except ZfnetError as err:
            context.abort(getattr(grpc.StatusCode, err.code), str(err))
        except MemoryError:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory; use a smaller batch_size or fewer layers")
        except Exception:
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
    def TopActivations(self, request_iterator: Iterator[pb.TopRequest], context) -> Iterator[pb.TopReply]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "job":
            raise InvalidArgument("TopActivations: the first request must be the TopJob")
        job = first.job
        model = self._model(job.model)
        method, stage = METHODS.get(job.method), TOP_STAGES.get(job.stage)
        if method is None or stage is None:
            raise InvalidArgument(f"unknown method {job.method} or stage {job.stage}")
        method = method if job.method != pb.DECONV_METHOD_UNSPECIFIED else None  # a scan given a method checks it can project
        if job.k < 0:
            raise InvalidArgument(f"k must be positive, got {job.k}")
        source = data_source(self.engine, job.data, request_iterator)
        events = self.engine.top(
            model, source, data=topk_proto.data_name(job.data), layers=[layer_ref(r) for r in job.layers], channels=list(job.channels) or None,
            k=job.k or 9, by=topk_proto.BY_NAME.get(job.by, "max"), method=method, stage=stage,
            state=topk_proto.from_message(job.state) if job.HasField("state") else None, checkpoint_every=job.checkpoint_every,
        )
        for event in events:
            yield top_reply(event)

    @_status
    def GetFilters(self, request: pb.FiltersRequest, context) -> pb.FiltersResponse:
        model = self._model(request.model)
        found = self.engine.filters(model, layer_ref(request.layer))
        bias = to_proto(found.bias) if found.bias is not None else pb.Tensor(dtype=pb.FLOAT32)
        return pb.FiltersResponse(layer=found.layer, op=found.op, weights=to_proto(found.weights), bias=bias, channel_order=found.channel_order)


TOP_STAGES = {pb.TOP_ALL: "all", pb.TOP_SCAN: "scan", pb.TOP_RECONSTRUCT: "reconstruct"}


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
