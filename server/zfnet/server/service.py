"""The gRPC servicer: each handler decodes its request (:mod:`zfnet.wire`), calls the engine and
encodes the result; errors are mapped to status codes in one place (:func:`_status`)."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf.message import Message

from zfnet.errors import InvalidArgument, ResourceExhausted, ZfnetError
from zfnet.server import admission, evolution, runtime
from zfnet.server.engine import Engine
from zfnet.server.models import LoadedModel
from zfnet.status import to_grpc_status
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc
from zfnet.wire import activations, attribution, common, correspondence, deconv, features, filters, gradcam, invariance, models, occlusion, predict, top, visualise
from zfnet.wire import evolution as wire_evolution
from zfnet.wire.common import require_model, within

log = logging.getLogger("zfnet.server")


def _status(fn: Callable) -> Callable:
    """Map ZfnetError to its status code with error details (``zfnet.status``), MemoryError to
    RESOURCE_EXHAUSTED, any other exception to INTERNAL, logged; the server keeps serving. Every
    request message counts against the memory budget from the moment it is received
    (``admission.received``). Wraps unary and streaming (generator) methods alike."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(self, request, context: grpc.ServicerContext):
            with _mapped(self.engine.budget, fn.__name__, context):
                yield from fn(self, _counted(request), context)

        return stream

    @functools.wraps(fn)
    def wrapper(self, request, context: grpc.ServicerContext):
        with _mapped(self.engine.budget, fn.__name__, context):
            return fn(self, _counted(request), context)

    return wrapper


def _counted(request: Any) -> Any:
    """A unary request, counted now; a request stream, each message counted as it arrives."""
    if isinstance(request, Message):
        admission.received(request)
        return request
    return _counting(request)


def _counting(requests: Iterator[Message]) -> Iterator[Message]:
    for message in requests:
        admission.received(message)
        yield message


@contextmanager
def _mapped(budget: admission.MemoryBudget, name: str, context: grpc.ServicerContext) -> Iterator[None]:
    """The body of one call: memory reserved inside stays reserved until the call has ended
    (``admission.rpc_scope``); errors become status codes with details."""
    try:
        with admission.rpc_scope(budget, context.time_remaining(), context.add_callback, context.is_active):
            yield
    except ZfnetError as err:
        context.abort_with_status(to_grpc_status(err))
    except MemoryError:
        err = ResourceExhausted("out of memory; send fewer images or channels per request", reason="OUT_OF_MEMORY")
        context.abort_with_status(to_grpc_status(err))
    except Exception as err:
        if not context.is_active():  # the client cancelled (or the call was ended): reading its request stream raised, or an admission stopped it
            log.info("%s cancelled", name)
            return
        if runtime.is_allocation_failure(err):
            log.warning("%s: onnxruntime could not allocate memory: %s", name, str(err).splitlines()[0][-200:])
            failed = ResourceExhausted("onnxruntime could not allocate the memory this request needs; send fewer or smaller images", reason="OUT_OF_MEMORY")
            context.abort_with_status(to_grpc_status(failed))
        log.exception("%s failed", name)
        context.abort_with_status(to_grpc_status(ZfnetError(f"{name} failed on the server; see its log", reason="INTERNAL"), "INTERNAL"))


def model_info(model: LoadedModel, provider: str) -> models.ModelInfo:
    """What GetModelInfo and UploadModel answer about a loaded model (a dynamic dimension as -1)."""
    return models.ModelInfo(
        model.sha256, model.name, model.input_name, tuple(model.input_shape), model.preprocessing_json, list(model.classes),
        [
            models.LayerInfo(
                r.index, r.name, r.op, tuple(d if isinstance(d, int) and d > 0 else -1 for d in r.shape), r.number or 0, tuple(r.aliases),
                r.modules, r.internal, r.channel_axis,
            )
            for r in model.layers
        ],
        model.output_name, provider,
    )


class ZfnetServicer(zfnet_pb2_grpc.ZfnetServicer):
    """Thin over :class:`Engine`: decode (wire), engine call, encode (wire)."""

    def __init__(self, engine: Engine, provider: str) -> None:
        self.engine = engine
        self.provider = provider

    def _model(self, ref: pb.ModelRef, at: str = "model") -> LoadedModel:
        """The model ``ref`` names; ``at`` is where the ModelRef sits in the request ("" for the request itself)."""
        require_model(ref, at)
        with within("model", at):
            return self.engine.store.get(ref.sha256, ref.name)

    def _job(self, requests: Iterator, rpc: str, job_type: str) -> tuple[Any, LoadedModel]:
        """The job of a data-set stream (its first request, ``part`` "job") and the model it names."""
        first = next(requests, None)
        if first is None or first.WhichOneof("part") != "job":
            raise InvalidArgument(f"{rpc}: the first request must be the {job_type}", field="job", reason="STREAM_OUT_OF_ORDER")
        with within("model", "job.model"):
            return first.job, self._model(first.job.model)

    # -- models and data sets ------------------------------------------------------------------
    @_status
    def HasModel(self, request: pb.ModelRef, context) -> pb.HasModelResponse:
        require_model(request, "")
        sha = self.engine.store.lookup(request.sha256, request.name)
        return pb.HasModelResponse(present=sha is not None, sha256=sha or "")

    @_status
    def UploadModel(self, request_iterator: Iterator[pb.UploadModelRequest], context) -> pb.ModelInfo:
        header, chunks = models.upload_of(request_iterator)
        model = self.engine.store.receive(chunks, header.name, header.size, header.sha256)
        log.info("model %s (%s) uploaded as %s, %d bytes", model.name, model.sha256[:12], header.name, model.size)
        return model_info(model, self.provider).to_proto()

    @_status
    def ListModels(self, request, context) -> pb.ListModelsResponse:
        store = self.engine.store
        return pb.ListModelsResponse(models=[
            pb.ModelSummary(sha256=s, name=n, size=z, upload_names=store.upload_names(s), in_model_dir=store.in_model_dir(s), loaded=store.is_loaded(s))
            for s, n, z in store.summaries()
        ])

    @_status
    def DeleteModel(self, request: pb.ModelRef, context) -> pb.DeleteModelResponse:
        return models.ModelDeleted(*self.engine.store.delete(request.sha256, request.name)).to_proto()

    @_status
    def GetModelInfo(self, request: pb.ModelRef, context) -> pb.ModelInfo:
        return model_info(self._model(request, at=""), self.provider).to_proto()

    @_status
    def ListDatasets(self, request, context) -> pb.ListDatasetsResponse:
        store = self.engine.datasets
        return pb.ListDatasetsResponse(datasets=[
            models.DatasetInfo(name, len(store.folder(name)), store.folder(name).classes).to_proto() for name in store.names()
        ])

    # -- analyses of a batch of images -----------------------------------------------------------
    @_status
    def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        model = self._model(request.model)
        asked = predict.PredictRequest.from_proto(request)
        return self.engine.predict(model, asked.images, asked.top_k).to_proto()

    @_status
    def GetActivations(self, request: pb.ActivationsRequest, context) -> pb.ActivationsResponse:
        model = self._model(request.model)
        asked = activations.ActivationsRequest.from_proto(request)
        return activations.activations_proto(self.engine.activations(model, asked.images, asked.layers))

    @_status
    def Deconv(self, request: pb.DeconvRequest, context) -> pb.DeconvResponse:
        model = self._model(request.model)
        asked = deconv.DeconvRequest.from_proto(request)
        layer, found = self.engine.deconv(model, asked.images, asked.layer, asked.channels, asked.top_k, asked.mode, asked.method)
        return deconv.DeconvResult(layer.name, asked.mode, asked.method, [image.label for image in asked.images], found).to_proto()

    @_status
    def GetFilters(self, request: pb.FiltersRequest, context) -> pb.FiltersResponse:
        model = self._model(request.model)
        return self.engine.filters(model, filters.FiltersRequest.from_proto(request).layer).to_proto()

    @_status
    def Occlusion(self, request: pb.OcclusionRequest, context) -> Iterator[pb.OcclusionReply]:
        model = self._model(request.model)
        result = yield from common.with_progress(self.engine.occlusion(model, occlusion.OcclusionRequest.from_proto(request)), pb.OcclusionReply)
        yield pb.OcclusionReply(result=result.to_proto())

    @_status
    def Invariance(self, request: pb.InvarianceRequest, context) -> Iterator[pb.InvarianceReply]:
        model = self._model(request.model)
        result = yield from common.with_progress(self.engine.invariance(model, invariance.InvarianceRequest.from_proto(request)), pb.InvarianceReply)
        yield pb.InvarianceReply(result=result.to_proto())

    @_status
    def Correspondence(self, request: pb.CorrespondenceRequest, context) -> Iterator[pb.CorrespondenceReply]:
        model = self._model(request.model)
        steps = self.engine.correspondence(model, correspondence.CorrespondenceRequest.from_proto(request))
        result = yield from common.with_progress(steps, pb.CorrespondenceReply)
        yield pb.CorrespondenceReply(result=result.to_proto())

    @_status
    def GradCam(self, request: pb.GradCamRequest, context) -> pb.GradCamResponse:
        model = self._model(request.model)
        return self.engine.grad_cam(model, gradcam.GradCamRequest.from_proto(request)).to_proto()

    @_status
    def IntegratedGradients(self, request: pb.IntegratedGradientsRequest, context) -> Iterator[pb.AttributionReply]:
        model = self._model(request.model)
        steps = self.engine.integrated_gradients(model, attribution.IntegratedGradientsRequest.from_proto(request))
        result = yield from common.with_progress(steps, pb.AttributionReply)
        yield pb.AttributionReply(result=result.to_proto())

    @_status
    def SmoothGrad(self, request: pb.SmoothGradRequest, context) -> Iterator[pb.AttributionReply]:
        model = self._model(request.model)
        result = yield from common.with_progress(self.engine.smoothgrad(model, attribution.SmoothGradRequest.from_proto(request)), pb.AttributionReply)
        yield pb.AttributionReply(result=result.to_proto())

    @_status
    def InputXGradient(self, request: pb.InputXGradientRequest, context) -> pb.AttributionResult:
        model = self._model(request.model)
        return self.engine.input_x_gradient(model, attribution.InputXGradientRequest.from_proto(request)).to_proto()

    @_status
    def VisualiseFeatures(self, request: pb.VisualiseRequest, context) -> Iterator[pb.VisualiseReply]:
        model = self._model(request.model)
        result = yield from common.with_progress(self.engine.visualise(model, visualise.VisualiseRequest.from_proto(request)), pb.VisualiseReply)
        yield pb.VisualiseReply(result=result.to_proto())

    # -- data-set jobs ---------------------------------------------------------------------------
    @_status
    def Features(self, request_iterator: Iterator[pb.FeaturesRequest], context) -> Iterator[pb.FeaturesReply]:
        message, model = self._job(request_iterator, "Features", "FeaturesJob")
        job = features.FeaturesJob.from_proto(message)
        layers = self.engine.feature_layers(model, job.layers, job.default_pooling)
        features.check_row_bytes(layers, job.dtype)
        source, batches = self.engine.features(model, layers, self.engine.source(job.data, common.image_batches(request_iterator)), job.dtype)
        header = features.FeatureHeader(model.sha256, layers, job.dtype, source.size, source.classes, source.start, source.stop, source.batch_size)
        yield pb.FeaturesReply(header=header.to_proto())
        done = 0
        for batch, rows in batches:
            done += batch.read
            yield from features.FeatureBatch(batch.indices, batch.labels, batch.paths, rows, batch.skipped, done, source.count).replies()

    @_status
    def TopActivations(self, request_iterator: Iterator[pb.TopRequest], context) -> Iterator[pb.TopReply]:
        message, model = self._job(request_iterator, "TopActivations", "TopJob")
        job = top.TopJob.from_proto(message)
        source = self.engine.source(job.data, common.image_batches(request_iterator))
        events = self.engine.top(
            model, source, data=job.data.name, layers=job.layers, channels=job.channels, k=job.k, by=job.by, method=job.method,
            stage=job.stage, state=job.state, checkpoint_every=job.checkpoint_every,
        )
        yield from (top.reply_proto(event) for event in events)

    @_status
    def Evolution(self, request: pb.EvolutionRequest, context) -> Iterator[pb.EvolutionReply]:
        job = wire_evolution.EvolutionRequest.from_proto(request)
        for i, ref in enumerate(request.models):
            require_model(ref, f"models[{i}]")
        snapshots = [
            evolution.Snapshot(label, functools.partial(self._model, ref, f"models[{i}]")) for i, (label, ref) in enumerate(zip(job.labels, request.models))
        ]
        events = self.engine.evolution(snapshots, job.data, layers=job.layers, channels=job.channels, method=job.method)
        yield from (wire_evolution.reply_proto_at(position, event) for position, event in events)
