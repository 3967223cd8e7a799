"""The engine: what the server can do, in numpy terms, free of gRPC.

Every analysis first estimates what it will allocate (``estimate``) and runs inside a reservation
of the server's memory budget (``admit``); a job over many items (a data set, perturbed copies)
also admits each batch, fitted to the budget, in turn; see :mod:`zfnet.server.admission`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace

import numpy as np

from zfnet.errors import InvalidArgument, ResourceExhausted
from zfnet.server import attribution, correspondence, datasets, deconv, evolution, features, filters, gradcam, gradients, invariance, occlusion, perturbation, runtime, top, visualise
from zfnet.server.admission import FORWARD_FACTOR, Estimate, admitted, check_reply, next_batch
from zfnet.server.datasets import Batch, DatasetStore, Source
from zfnet.server.images import MAX_IMAGE_PIXELS, DecodeGate, ImageInput, inspect, to_batch
from zfnet.server.layers import Layer, resolve
from zfnet.server.models import LoadedModel, ModelStore
from zfnet.server.outputs import probabilities
from zfnet.server.perturbation import Steps
from zfnet.wire.attribution import AttributionResult, InputXGradientRequest, IntegratedGradientsRequest, SmoothGradRequest
from zfnet.wire.common import DataSource, ImageBatch, within
from zfnet.wire.correspondence import CorrespondenceRequest, CorrespondenceResult
from zfnet.wire.features import NONE, FeatureSpec, Pooling
from zfnet.wire.filters import Filters
from zfnet.wire.gradcam import GradCamRequest, GradCamResult
from zfnet.wire.invariance import InvarianceRequest, InvarianceResult
from zfnet.wire.occlusion import OcclusionRequest, OcclusionResult
from zfnet.wire.predict import TOP_K, PredictResult
from zfnet.wire.visualise import VisualiseRequest, VisualiseResult

MAX_IMAGES = 1024  # per request
DATASET_DECODE_BYTES = 256 << 20  # images being decoded at once across data-set jobs, at most (and an eighth of the budget)


class Engine:
    """Forward passes and analyses over the models of a :class:`ModelStore`."""

    def __init__(self, store: ModelStore, datasets: DatasetStore | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.store = store
        self.datasets = datasets or DatasetStore()
        self.budget = store.budget
        self.max_image_pixels = max_image_pixels
        # data-set jobs decode on several threads (each batch's reservation counts the gate); requests one image at a time
        self.decode_gate = DecodeGate(lambda: min(DATASET_DECODE_BYTES, self.budget.limit // 8))
        runtime.limit_gpu_memory(self.budget.limit)  # sessions on CUDA: device arenas capped at the budget

    def batch(self, model: LoadedModel, images: list[ImageInput]) -> np.ndarray:
        if len(images) > MAX_IMAGES:
            raise ResourceExhausted(f"{len(images)} images in one request; at most {MAX_IMAGES}", field="images", reason="TOO_MANY_IMAGES", metadata={"limit": MAX_IMAGES, "requested": len(images)})
        return to_batch(images, model.framing, self.max_image_pixels)

    # -- admission ------------------------------------------------------------------------
    def estimate(self, model: LoadedModel, images: list[ImageInput], what: str, **parts: int) -> Estimate:
        """What a request over ``images`` costs: their input batch, a forward pass, the largest
        image decode (headers are checked here, nothing is decoded), and the analysis' own ``parts``."""
        if not images:
            raise InvalidArgument("the request has no images", field="images", reason="FIELD_REQUIRED")
        if len(images) > MAX_IMAGES:
            raise ResourceExhausted(f"{len(images)} images in one request; at most {MAX_IMAGES}", field="images", reason="TOO_MANY_IMAGES", metadata={"limit": MAX_IMAGES, "requested": len(images)})
        headers = [inspect(image, i, self.max_image_pixels) for i, image in enumerate(images)]
        footprint = model.footprint
        n = len(images)
        base = {
            "input batch": n * footprint.input, "image decoding": max(h.decode_bytes for h in headers),
            "forward pass": FORWARD_FACTOR * runtime.rows(model.session, n) * footprint.forward,
        }
        return Estimate(what, {**base, **{name.replace("_", " "): int(v) for name, v in parts.items()}})

    def admit(self, model: LoadedModel, estimate: Estimate, *pins: Hashable, until_reply: bool = True) -> AbstractContextManager[None]:
        """Reserve ``estimate`` in the memory budget, keeping ``model`` (and ``pins``) loaded meanwhile.
        Within a unary gRPC call the reservation lasts until its reply is sent (``admission.admitted``);
        ``until_reply=False`` ends it with the block (a job admitting one batch at a time)."""
        reservation = model.reserve(estimate, *pins)
        return admitted(reservation) if until_reply else reservation

    # -- analyses -------------------------------------------------------------------------
    def predict(self, model: LoadedModel, images: list[ImageInput], top_k: int = TOP_K) -> PredictResult:
        """Class probabilities (N, K) and the ``top_k`` classes of each image."""
        with self.admit(model, self.estimate(model, images, f"Predict on {len(images)} image(s)")):
            out = runtime.tensors(model.session, [model.output_name], {model.input_name: self.batch(model, images)})[0]  # to the output is the whole graph: no second session
        return PredictResult.of(*probabilities(out.reshape(out.shape[0], -1).astype(np.float32)), model.classes, top_k)

    def activations(self, model: LoadedModel, images: list[ImageInput], layers: list[str | int]) -> dict[str, np.ndarray]:
        """The chosen layers' activations, by tensor name (an unknown layer's error names its ``layers[i]``)."""
        if not layers:
            raise InvalidArgument("no layers asked for", field="layers", reason="FIELD_REQUIRED")
        names = []
        for i, layer in enumerate(layers):
            with within("layer", f"layers[{i}]"):
                names.append(resolve(model.layers, layer).name)
        names = list(dict.fromkeys(names))
        footprint = model.footprint
        what = f"GetActivations of {len(names)} layer(s) on {len(images)} image(s)"
        reply = len(images) * sum(footprint.tensors.get(name, 0) for name in names)
        check_reply(reply, what, "ask for fewer images or layers per request")
        with self.admit(model, self.estimate(model, images, what, reply=2 * reply, session_build=model.fetching_build(names, exact=False)), model.fetching_key(names, exact=False)):
            values = runtime.tensors(model.fetching(names, exact=False), names, {model.input_name: self.batch(model, images)})
            return dict(zip(names, values))

    def deconv(
        self, model: LoadedModel, images: list[ImageInput], layer: str | int,
        channels: list[int] | None = None, top_k: int = 9, mode: str = "max", method: str = "deconvnet",
    ) -> tuple[Layer, list[deconv.Reconstruction]]:
        """Reconstructions of ``layer`` for every image and selected channel."""
        row = resolve(model.layers, layer)
        if not channels and top_k <= 0:
            raise InvalidArgument(f"top_k must be positive, got {top_k}", field="channels.top_k", reason="VALUE_OUT_OF_RANGE")
        count = row.channels if isinstance(row.channels, int) and row.channels > 0 else 1
        rows = len(images) * (len(channels) if channels else min(top_k, count))
        what = f"Deconv of {len(images)} image(s) x {rows // max(len(images), 1)} channel(s) of {row.name}"
        if rows > deconv.MAX_ROWS:
            raise ResourceExhausted(
                f"{rows} reconstructions asked for; at most {deconv.MAX_ROWS} per request",
                reason="TOO_MANY_RECONSTRUCTIONS", metadata={"limit": deconv.MAX_ROWS, "requested": rows},
            )
        footprint = model.footprint
        reply = rows * footprint.input
        check_reply(reply, what, "send fewer images or channels per request")
        estimate = self.estimate(
            model, images, what, signals=rows * footprint.tensors.get(row.name, 0),
            projection=min(rows, deconv.rows_per_run(footprint.forward)) * footprint.forward, reconstructions=3 * reply,
            projection_build=model.projection_build(row.name, method),
        )
        with self.admit(model, estimate, model.projection_key(row.name, method)):
            found = []
            step = max(1, deconv.CHUNK_ROWS // max(1, rows // len(images)))  # images whose rows fill one projection run
            for start in range(0, len(images), step):  # a cancelled call stops before the next part
                next_batch()
                part = deconv.reconstruct(model, self.batch(model, images[start : start + step]), row.name, channels, top_k, mode, method)
                found += [replace(r, image=r.image + start, label=images[r.image + start].label) for r in part]
        return row, found

    def occlusion(self, model: LoadedModel, request: OcclusionRequest) -> Steps[OcclusionResult]:
        """Occlusion sensitivity of the request's images (see :func:`zfnet.server.occlusion.run`), admitted
        for the whole call: its images, the projections, results and reply, and one batch of copies at a time."""
        n, (height, width) = len(request.images), model.input_shape[2:]
        where = occlusion.grid(height, width, request.size, request.stride)
        row = perturbation.last_conv(model) if request.layer is None else resolve(model.layers, request.layer)
        classes = self._classes(model)
        maps = where.count * 4 * (3 + (classes if request.all_classes else 0)) + model.footprint.input
        what = f"Occlusion of {n} image(s), {where.count} positions each"
        check_reply(n * maps, what, "send fewer images, or a larger stride")
        names = list(dict.fromkeys([row.name, model.output_name]))
        estimate = self._perturbing(
            model, request.images, what, request.max_batch, names, results=n * (where.count * 4 * (classes + 1) + maps), reply=2 * n * maps,
            projections=n * (model.footprint.tensors.get(row.name, 0) + 3 * model.footprint.input), projection_build=model.projection_build(row.name, "deconvnet"),
        )
        with self.admit(model, estimate, model.fetching_key(names, exact=False)):
            return (yield from occlusion.run(
                model, self.batch(model, request.images), request.layer, request.size, request.stride, request.fill, request.true_classes,
                request.max_batch, request.all_classes, [image.label for image in request.images],
            ))

    def invariance(self, model: LoadedModel, request: InvarianceRequest) -> Steps[InvarianceResult]:
        """Invariance of the request's images (see :func:`zfnet.server.invariance.run`), admitted as occlusion is."""
        n, (height, width) = len(request.images), model.input_shape[2:]
        planned = invariance.plan(height, width, request.sweeps)
        values = sum(len(v) for _, v in planned)
        rows = perturbation.layers_or(model, list(request.layers), [perturbation.first_conv, perturbation.last_hidden])
        curves = n * values * 4 * (len(rows) + 1) + invariance.thumbnail_bytes(n, planned, height, width)
        what = f"Invariance of {n} image(s), {values} transformation values"
        check_reply(curves, what, "send fewer images or values")
        names = list(dict.fromkeys([*(r.name for r in rows), model.output_name]))
        estimate = self._perturbing(model, request.images, what, request.max_batch, names, results=2 * curves, reply=2 * curves)
        with self.admit(model, estimate, model.fetching_key(names, exact=False)):
            return (yield from invariance.run(
                model, self.batch(model, request.images), request.sweeps, request.layers, request.border, request.fill, request.true_classes,
                request.max_batch, [image.label for image in request.images],
            ))

    def correspondence(self, model: LoadedModel, request: CorrespondenceRequest) -> Steps[CorrespondenceResult]:
        """Correspondence across the request's images (see :func:`zfnet.server.correspondence.run`), admitted as occlusion is."""
        n = len(request.images)
        trials = correspondence.DEFAULT_TRIALS if request.random_trials is None else max(0, request.random_trials)
        sets = len(request.parts) * (1 + trials)
        rows = perturbation.layers_or(model, list(request.layers or []), [perturbation.last_conv, perturbation.last_hidden])
        names = [r.name for r in rows]
        features_bytes = sum(model.footprint.tensors.get(name, 0) for name in names)  # float32: 4 bytes a feature, its sign 1
        what = f"Correspondence of {n} image(s), {sets} mask sets"
        estimate = self._perturbing(
            model, request.images, what, request.max_batch, names, signs=2 * sets * n * features_bytes // 4,
            distances=sets * n * n * 8 * len(rows), reply=2 * len(rows) * sets * (n * n * 4 + n * 32),
        )
        with self.admit(model, estimate, model.fetching_key(names, exact=False)):
            return (yield from correspondence.run(
                model, self.batch(model, request.images), request.parts, request.boxes, request.random_trials, request.seed,
                request.layers, request.fill, request.max_batch, [image.label for image in request.images],
            ))

    def _perturbing(self, model: LoadedModel, images: list[ImageInput], what: str, max_batch: int, names: list[str], **parts: int) -> Estimate:
        """A perturbation request's estimate: its images (:meth:`estimate`: their batch, the largest
        decode, a forward pass), the unperturbed outputs of ``names`` kept, the analysis' ``parts``,
        one batch of copies (:func:`zfnet.server.perturbation.batch_cost`) at a time, and the build of
        the session to ``names`` when it is not built (the caller pins it)."""
        copies = perturbation.copies_per_batch(model, max_batch)
        batch = perturbation.batch_cost(model, names).estimate(copies)
        kept = len(images) * sum(model.footprint.tensors.get(name, 0) for name in names)
        return self.estimate(
            model, images, what, unperturbed_outputs=kept, **parts, **{f"batch of {copies} copies": batch.total}, session_build=model.fetching_build(names, exact=False),
        )

    @staticmethod
    def _classes(model: LoadedModel) -> int:
        """Values per image of the model's output (its classes)."""
        return max(1, model.footprint.tensors.get(model.output_name, 0) // 4)

    def grad_cam(self, model: LoadedModel, request: GradCamRequest) -> GradCamResult:
        """Grad-CAM or Grad-CAM++ of the request's images (see :func:`zfnet.server.gradcam.run`)."""
        row = perturbation.last_conv(model) if request.layer is None else resolve(model.layers, request.layer)
        target = gradients.target_layer(model, request.target.layer)
        n, footprint = len(request.images), model.footprint
        what = f"GradCam of {n} image(s) at {row.name}"
        reply = n * (footprint.input // model.input_shape[1] + footprint.tensors.get(row.name, 0))
        check_reply(reply, what, "send fewer images per request")
        estimate = self.estimate(
            model, request.images, what, projection=FORWARD_FACTOR * n * footprint.forward, maps=3 * reply,
            projection_build=model.projection_build(target.name, "backprop", row.name),
        )
        with self.admit(model, estimate, model.projection_key(target.name, "backprop", row.name)):
            labels = [image.label for image in request.images]
            return gradcam.run(model, self.batch(model, request.images), row, target, request.target.units, request.variant, labels)

    def integrated_gradients(self, model: LoadedModel, request: IntegratedGradientsRequest) -> Steps[AttributionResult]:
        """Integrated gradients of the request's images (see :func:`zfnet.server.attribution.integrated_gradients`)."""
        target = gradients.target_layer(model, request.target.layer)
        what = f"IntegratedGradients of {len(request.images)} image(s), {request.steps} steps"
        with self._gradient_copies(model, request.images, what, target.name, "backprop", request.max_batch, request.steps, baselines=True):
            return (yield from attribution.integrated_gradients(model, self.batch(model, request.images), target, request, self._labels(request.images)))

    def smoothgrad(self, model: LoadedModel, request: SmoothGradRequest) -> Steps[AttributionResult]:
        """SmoothGrad of the request's images (see :func:`zfnet.server.attribution.smoothgrad`)."""
        target = gradients.target_layer(model, request.target.layer)
        what = f"SmoothGrad of {len(request.images)} image(s), {request.samples} samples"
        with self._gradient_copies(model, request.images, what, target.name, request.method, request.max_batch, request.samples):
            return (yield from attribution.smoothgrad(model, self.batch(model, request.images), target, request, self._labels(request.images)))

    def input_x_gradient(self, model: LoadedModel, request: InputXGradientRequest) -> AttributionResult:
        """Input x gradient of the request's images (see :func:`zfnet.server.attribution.input_x_gradient`)."""
        target = gradients.target_layer(model, request.target.layer)
        what = f"InputXGradient of {len(request.images)} image(s)"
        with self._gradient_copies(model, request.images, what, target.name, "backprop", 1, 1):
            batch = self.batch(model, request.images)
            return perturbation.complete(attribution.input_x_gradient(model, batch, target, request.target.units, self._labels(request.images)))

    def visualise(self, model: LoadedModel, request: VisualiseRequest) -> Steps[VisualiseResult]:
        """Feature visualisation by optimisation (see :func:`zfnet.server.visualise.run`)."""
        row = resolve(model.layers, model.output_name if request.layer is None else request.layer)
        footprint, images = model.footprint, len(request.units) * request.images_per_unit
        what = f"VisualiseFeatures of {len(request.units)} unit(s) of {row.name}, {request.steps} steps"
        reply = images * footprint.input + len(request.units) * 4 * request.steps
        check_reply(reply, what, "ask for fewer units or steps per request")
        perturbation.check_copies(len(request.units) * request.steps, "fewer units or steps")
        cost = perturbation.gradient_cost(model)
        units = max(1, perturbation.copies_per_batch(model, cost=cost) // request.images_per_unit)  # optimised together, as visualise.run does
        per_batch = min(images, units * request.images_per_unit)
        estimate = Estimate(what, {
            "optimised images": 8 * per_batch * footprint.input, f"batch of {per_batch} images": cost.estimate(per_batch).total,
            "reply": 2 * reply,
            "projection build": model.projection_build(row.name, "backprop") + model.projection_build(row.name, "deconvnet"),
        })
        pins = (model.projection_key(row.name, "backprop"), model.projection_key(row.name, "deconvnet"))
        with self.admit(model, estimate, *pins, until_reply=False):
            return (yield from visualise.run(model, row, request))

    def _gradient_copies(
        self, model: LoadedModel, images: list[ImageInput], what: str, layer: str, method: str, max_batch: int, each: int, baselines: bool = False,
    ) -> AbstractContextManager[None]:
        """Admit a gradient analysis over ``each`` copies of every image of ``images``: a batch of copies
        forwarded and projected at a time, the images' sums, (baselines,) and the reply; for the whole request."""
        n, footprint = len(images), model.footprint
        perturbation.check_copies(n * each, "fewer images, steps or samples")
        reply = (2 if baselines else 1) * n * footprint.input
        check_reply(reply, what, "send fewer images per request")
        cost = perturbation.gradient_cost(model)
        copies = perturbation.copies_per_batch(model, max_batch, cost=cost)
        estimate = self.estimate(
            model, images, what, **{f"batch of {copies} copies": cost.estimate(copies).total}, sums=n * footprint.input,
            baselines=n * footprint.input if baselines else 0, reply=3 * reply, projection_build=model.projection_build(layer, method),
        )
        return self.admit(model, estimate, model.projection_key(layer, method), until_reply=False)

    @staticmethod
    def _labels(images: list[ImageInput]) -> list[str]:
        return [image.label for image in images]

    def source(self, data: DataSource, parts: Iterable[ImageBatch] = ()) -> Source:
        """The images a data-set job reads: a named data set, or the ImageBatch ``parts`` the client streams."""
        if data.dataset:
            return self.datasets.source(data.dataset, data.start, data.stop, data.batch_size, self.max_image_pixels, self.decode_gate)
        if data.streamed is not None:
            return datasets.streamed_source(
                data.streamed.size, list(data.streamed.classes), parts, data.start, data.stop, data.batch_size, self.max_image_pixels, self.decode_gate,
            )
        raise InvalidArgument("no data given: set DataSource.dataset (a name from ListDatasets) or DataSource.streamed", reason="FIELD_REQUIRED")

    def top(self, model: LoadedModel, source: Source, **job) -> Iterator:
        """A top-k job over a data set (see :func:`zfnet.server.top.job`): progress, checkpoints, results."""
        return top.job(model, source, **job)

    def evolution(self, snapshots: list[evolution.Snapshot], data: DataSource, **job) -> Iterator:
        """Feature evolution over training snapshots on a named data set (see :func:`zfnet.server.evolution.job`)."""
        self.source(data)  # an unknown name or a bad range is refused before any model loads
        return evolution.job(snapshots, lambda: self.source(data), data=data.name, **job)

    def filters(self, model: LoadedModel, layer: str | int) -> Filters:
        """The filters of a convolutional or fully connected layer (at most the model's largest
        weights, copied as float32, laid out and sent)."""
        weights = model.footprint.weights
        what = f"GetFilters of layer {layer}"
        with self.admit(model, Estimate(what, {"filters": 3 * weights, "reply": 2 * weights})):
            return filters.find(model, layer)

    def feature_layers(
        self, model: LoadedModel, layers: Sequence[tuple[str | int, Pooling | None]], default: Pooling = NONE,
    ) -> list[FeatureSpec]:
        """The layers of a features job with their pooling and row sizes."""
        return features.plan(model, layers, default)

    def features(
        self, model: LoadedModel, layers: Sequence[FeatureSpec], source: Source, dtype: str = "float32",
    ) -> tuple[Source, Iterator[tuple[Batch, list[np.ndarray]]]]:
        """The source as the job reads it (its batch lowered to fit the budget when it does not) and
        each of its batches with the feature rows per layer, in data-set order; see :func:`zfnet.server.features.job`."""
        return features.job(model, layers, source, dtype)
