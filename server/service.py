"""The gRPC servicer: request -> engine call -> response, errors mapped to status codes in one place."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Generator, Iterator

import grpc
import numpy as np

from zfnet.errors import InvalidArgument, ResourceExhausted, ZfnetError
from zfnet.server import correspondence, invariance, occlusion
from zfnet.server.engine import Engine
from zfnet.server.images import ImageInput
from zfnet.server.models import LoadedModel
from zfnet.server.perturbation import FillValue, Progress, TrueClass
from zfnet.tensors import from_proto, to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

log = logging.getLogger("zfnet.server")

MODES = {pb.DECONV_MODE_UNSPECIFIED: "max", pb.MAX: "max", pb.MAP: "map"}
METHODS = {pb.DECONV_METHOD_UNSPECIFIED: "deconvnet", pb.DECONVNET: "deconvnet", pb.BACKPROP: "backprop", pb.GUIDED: "guided"}
FILLS = {pb.FILL_UNSPECIFIED: "mean", pb.FILL_MEAN: "mean", pb.FILL_GREY: "grey", pb.FILL_ZERO: "zero"}
TRANSFORMS = {pb.TRANSLATE: "translate", pb.SCALE: "scale", pb.ROTATE: "rotate"}
BORDERS = {pb.BORDER_UNSPECIFIED: "reflect", pb.REFLECT: "reflect", pb.CONSTANT: "constant"}


@contextlib.contextmanager
def _mapped(context: grpc.ServicerContext, name: str) -> Iterator[None]:
    """Map ZfnetError to its status code; any other exception to INTERNAL, logged; the server keeps serving."""
    try:
        yield
    except ZfnetError as err:
        context.abort(getattr(grpc.StatusCode, err.code), str(err))
    except MemoryError:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory; send fewer images or channels per request")
    except Exception:
        log.exception("%s failed", name)
        context.abort(grpc.StatusCode.INTERNAL, f"{name} failed on the server; see its log")


def _status(fn: Callable) -> Callable:
    """A unary call with errors mapped by :func:`_mapped`."""

    @functools.wraps(fn)
    def wrapper(self, request, context: grpc.ServicerContext):
        with _mapped(context, fn.__name__):
            return fn(self, request, context)

    return wrapper


def _streamed(fn: Callable) -> Callable:
    """A server-streaming call with errors mapped by :func:`_mapped`, also those raised mid-stream."""

    @functools.wraps(fn)
    def wrapper(self, request, context: grpc.ServicerContext):
        with _mapped(context, fn.__name__):
            yield from fn(self, request, context)

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


    @_streamed
    def Occlusion(self, request: pb.OcclusionRequest, context) -> Iterator[pb.OcclusionReply]:
        model = self._model(request.model)
        images = images_from(request.images)
        steps = occlusion.run(
            model, self.engine.batch(model, images), layer_ref(request.layer) if request.HasField("layer") else None,
            request.size if request.HasField("size") else None, request.stride if request.HasField("stride") else None,
            _enum(FILLS, request.fill, "fill"), list(request.true_classes), request.max_batch, request.all_classes,
        )
        result = yield from _with_progress(steps, pb.OcclusionReply)
        yield pb.OcclusionReply(result=occlusion_result(result, images, model))

    @_streamed
    def Invariance(self, request: pb.InvarianceRequest, context) -> Iterator[pb.InvarianceReply]:
        model = self._model(request.model)
        images = images_from(request.images)
        sweeps = [(_enum(TRANSFORMS, sweep.transform, "transform"), list(sweep.values)) for sweep in request.sweeps]
        steps = invariance.run(
            model, self.engine.batch(model, images), sweeps, [layer_ref(r) for r in request.layers],
            _enum(BORDERS, request.border, "border"), _enum(FILLS, request.fill, "fill"), list(request.true_classes), request.max_batch,
        )
        result = yield from _with_progress(steps, pb.InvarianceReply)
        yield pb.InvarianceReply(result=invariance_result(result, images, model))

    @_streamed
    def Correspondence(self, request: pb.CorrespondenceRequest, context) -> Iterator[pb.CorrespondenceReply]:
        model = self._model(request.model)
        images = images_from(request.images)
        boxes = [[(b.top, b.left, b.bottom, b.right) for b in image.boxes] for image in request.boxes]
        steps = correspondence.run(
            model, self.engine.batch(model, images), list(request.parts), boxes,
            request.random_trials if request.HasField("random_trials") else None, request.seed,
            [layer_ref(r) for r in request.layers], _enum(FILLS, request.fill, "fill"), request.max_batch, [i.label for i in images],
        )
        result = yield from _with_progress(steps, pb.CorrespondenceReply)
        yield pb.CorrespondenceReply(result=correspondence_result(result, images))


# ---- perturbation analyses: engine results -> messages ---------------------------------------


def _enum(table: dict[int, str], value: int, what: str) -> str:
    if value not in table:
        raise InvalidArgument(f"unknown {what} {value}; the values are {', '.join(f'{k} ({v})' for k, v in table.items())}")
    return table[value]


def _with_progress(steps: Generator[Progress, None, object], reply: type) -> Generator:
    """Yield each progress step as ``reply(progress=...)``; return the analysis' result."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        yield reply(progress=pb.Progress(stage=step.stage, done=step.done, total=step.total))


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
