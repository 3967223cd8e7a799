"""What the explorer's pages ask, answered through one :class:`~zfnet.client.api.Client`:

- the model: its layer table with receptive fields, its first layer's filters, its classes;
- the reports' layers and units: channel lists, the top-k's patches, and their reconstructions in any
  method, which the server computes on the report's own images (a report holds each winner as the
  model saw it);
- live analyses of an uploaded image: predictions, a layer's feature maps, one unit's reconstructions,
  its occlusion maps (Fig. 7) and the image's invariance curves (Fig. 5).

Answers are kept (the least recently used dropped first), so what a page asks twice costs the server
nothing. Nothing here imports the engine: the server may be in this process or anywhere else.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from zfnet import imagefolder
from zfnet.client import plots
from zfnet.client.api import Client
from zfnet.client.cli.common import framing
from zfnet.client.explore import pictures
from zfnet.client.explore import reports as reports_
from zfnet.client.explore.reports import Report, Unit
from zfnet.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from zfnet.preprocessing import Framing
from zfnet.wire.common import class_name
from zfnet.wire.deconv import METHODS, Reconstruction
from zfnet.wire.filters import Filters
from zfnet.wire.models import LayerInfo, ModelInfo
from zfnet.wire.occlusion import OcclusionResult

T = TypeVar("T")
PER_PAGE = 48  # channel tiles per layer page
KEPT = 1024  # answers kept
UPLOADS_KEPT = 64  # uploaded images kept
UPLOAD_BYTES = 16 << 20  # the largest upload taken
PROBE_CHANNELS = 8  # reconstructions per layer that measure its receptive field on a probe image
COPIES_PER_CALL = 256  # occluded copies per GetActivations call
TOP = 5  # predictions shown


class Memo:
    """Answers by key, at most ``size`` of them, the least recently used dropped first; thread-safe
    (two threads asking for a missing key at once may both compute it)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value

    def find(self, key: Hashable) -> Any:
        """The answer kept under ``key``, or None."""
        with self._lock:
            return self._items.get(key)


@dataclass(frozen=True)
class Model:
    """A model the explorer shows: as the user named it (an .onnx file or a name on the server) and its info."""

    ref: str
    info: ModelInfo


@dataclass(frozen=True)
class Upload:
    """An uploaded image, decoded and resized to the model's input as the server would."""

    key: str
    name: str
    rgb: np.ndarray  # (H, W, 3) uint8


def first_layer(info: ModelInfo) -> LayerInfo | None:
    """The paper's layer 1 (number 1), else the first convolution; None for a model without either."""
    return next((row for row in info.layers if row.number == 1), None) or next((row for row in info.layers if row.op == "Conv"), None)


class Explorer:
    """The explorer's questions over ``client``: ``models`` (the first is the one the model and live
    pages show; give each report's model) and finished top ``reports``."""

    def __init__(self, client: Client, models: Sequence[str], reports: Sequence[Path]) -> None:
        if not models:
            raise InvalidArgument("no model given: --model FILE.onnx or the name of a model on the server")
        self.client = client
        known = [Model(str(m), client.model_info(m)) for m in models]
        self.model = known[0]
        self.models = {m.info.sha256: m for m in known}
        self.reports: dict[str, Report] = {}
        for folder in reports:
            report = reports_.load(Path(folder))
            if report.key in self.reports:
                raise InvalidArgument(f"report {folder} is given twice (or is a copy of {self.reports[report.key].folder})")
            if report.model_sha256 not in self.models:
                raise InvalidArgument(
                    f"report {folder} was made with model {report.model} ({report.model_sha256[:12]}), which is none of the --model given "
                    f"({', '.join(f'{m.info.name} ({sha[:12]})' for sha, m in self.models.items())}); add its .onnx with another --model"
                )
            self.reports[report.key] = report
        self._kept = Memo(KEPT)
        self._uploads = Memo(UPLOADS_KEPT)

    # ---- the model ----------------------------------------------------------------------------

    def summary(self) -> dict:
        """The model page's data: the layer table, classes, the reports and what each covers."""
        info = self.model.info
        first = first_layer(info)
        return {
            "name": info.name, "sha256": info.sha256, "input_shape": list(info.input_shape), "provider": info.provider, "classes": info.classes,
            "layers": [{"index": r.index, "name": r.name, "op": r.op, "shape": list(r.shape), "number": r.number} for r in info.layers],
            "first_layer": first.name if first is not None and self._rgb_filters(self.model, first.name) is not None else None,
            "reports": [self._report_summary(r) for r in self.reports.values()], "methods": list(METHODS.names), "per_page": PER_PAGE,
        }

    def _report_summary(self, report: Report) -> dict:
        return {**report.summary(), "model_name": self.models[report.model_sha256].info.name}

    def fields(self) -> dict[str, dict | None]:
        """Each layer's receptive field (height, width) in input pixels: from a report's patches where one
        covers the layer, else from a few reconstructions of a probe image: exact where one of their
        fields lies inside the input, else the largest, clipped to the input (at least that; ``whole``:
        all of it); None where the server cannot project the layer."""
        return self._kept.get(("fields", self.model.info.sha256), self._measure_fields)

    def _measure_fields(self) -> dict[str, dict | None]:
        info = self.model.info
        framed = framing(info)
        height, width = framed.height, framed.width
        found: dict[str, dict | None] = {}
        for report in self.reports.values():
            if report.model_sha256 != info.sha256:
                continue
            for layer, units in report.layers.items():
                winner = next((u.winners[0] for u in units.values() if u.winners), None)
                if winner is not None:
                    top, left, bottom, right = winner.patch
                    found[layer] = {"size": [bottom - top, right - left], "exact": True, "whole": False}
        probe = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        for row in info.layers:
            if row.name in found:
                continue
            try:
                result = self.client.deconv(self.model.ref, [probe], row.name, top_k=PROBE_CHANNELS)
            except (InvalidArgument, FailedPrecondition, NotFound):
                found[row.name] = None
                continue
            boxes = [r.receptive_field for r in result.reconstructions]
            inside = [b for b in boxes if b[0] > 0 and b[1] > 0 and b[2] < height and b[3] < width]  # not clipped: the whole field
            size = [max(b[2] - b[0] for b in inside or boxes), max(b[3] - b[1] for b in inside or boxes)]
            found[row.name] = {"size": size, "exact": bool(inside), "whole": size == [height, width]}
        return found

    def _rgb_filters(self, model: Model, layer: str) -> Filters | None:
        """The filters of ``layer``'s block when they see the RGB input (a first layer), else None."""

        def fetch() -> Filters | None:
            try:
                found = self.client.filters(model.ref, layer)
            except (InvalidArgument, FailedPrecondition, NotFound):
                return None
            return found if found.weights.ndim == 4 and found.weights.shape[1] == 3 else None

        return self._kept.get(("filters", model.info.sha256, layer), fetch)

    def filters_png(self, sha256: str) -> bytes:
        """The first layer's filters of a model, tiled as ``zfclient filters`` tiles them."""
        model = self._model(sha256)
        first = first_layer(model.info)
        found = self._rgb_filters(model, first.name) if first is not None else None
        if found is None:
            raise NotFound(f"model {model.info.name} has no first layer of RGB filters to show")
        return self._kept.get(("filters.png", sha256), lambda: pictures.filters(found.weights, found.channel_order == "bgr"))

    def _model(self, sha256: str) -> Model:
        if sha256 not in self.models:
            raise NotFound(f"no model {sha256[:12]} here; this explorer shows {', '.join(m.info.name for m in self.models.values())}")
        return self.models[sha256]

    # ---- reports: layers and units ------------------------------------------------------------

    def report(self, key: str) -> Report:
        if key not in self.reports:
            raise NotFound(f"no report {key} here; this explorer shows {', '.join(r.name for r in self.reports.values()) or 'none (--report DIR)'}")
        return self.reports[key]

    def channels(self, key: str, layer: str, sort: str = "channel", label: str = "", share: float = 0.5, page: int = 1, channel: int | None = None) -> dict:
        """One page of a layer's channel list (filtered by class make-up, sorted); with ``channel``,
        the page that holds that channel."""
        report = self.report(key)
        units = reports_.select(report.layer(layer).values(), sort, label, share)
        if channel is not None:
            at = next((i for i, u in enumerate(units) if u.channel == channel), None)
            if at is None:
                raise NotFound(f"channel {channel} of {layer} is not in this list" + (f" (its top-{report.k} is not {share:.0%} {label})" if label else ""))
            page = at // PER_PAGE + 1
        found = reports_.page_of(units, page, PER_PAGE)
        layers = list(report.layers)
        at_layer = layers.index(layer)
        return {
            "report": self._report_summary(report), "layer": layer, "channels": len(report.layers[layer]),
            "classes": self._report_classes(report), "page": found.number, "pages": found.pages, "total": found.total, "first": found.first,
            "previous_layer": layers[at_layer - 1] if at_layer > 0 else None, "next_layer": layers[at_layer + 1] if at_layer + 1 < len(layers) else None,
            "units": [{"channel": u.channel, "value": u.value if u.winners else None, "purity": u.purity, "histogram": u.histogram()[:3]} for u in found.units],
        }

    def _report_classes(self, report: Report) -> list[str]:
        """The classes a report's model names, else those its winners have."""
        classes = self.models[report.model_sha256].info.classes
        return list(classes) or sorted({w.label for units in report.layers.values() for u in units.values() for w in u.winners if w.label})

    def unit(self, key: str, layer: str, channel: int) -> dict:
        """The unit page's data: the top-k with boxes and classes, the class histogram, its neighbours,
        the reports that cover it too (an evolution strip, a comparison) and whether it has an RGB filter."""
        report = self.report(key)
        unit = report.unit(layer, channel)
        channels, layers = list(report.layers[layer]), list(report.layers)
        at, at_layer = channels.index(channel), layers.index(layer)
        model = self.models[report.model_sha256]

        def neighbour(name: str) -> dict:
            there = list(report.layers[name])
            return {"layer": name, "channel": channel if channel in there else there[min(channel, len(there) - 1)]}

        filters = self._rgb_filters(model, layer)
        return {
            "report": self._report_summary(report), "layer": layer, "channel": channel, "k": report.k, "image_size": [framing(model.info).height, framing(model.info).width],
            "winners": [asdict(w) for w in unit.winners], "histogram": unit.histogram(), "purity": unit.purity,
            "previous_unit": channels[at - 1] if at > 0 else None, "next_unit": channels[at + 1] if at + 1 < len(channels) else None,
            "previous_layer": neighbour(layers[at_layer - 1]) if at_layer > 0 else None,
            "next_layer": neighbour(layers[at_layer + 1]) if at_layer + 1 < len(layers) else None,
            "filter": filters is not None and channel < filters.weights.shape[0],
            "covered_by": [self._report_summary(r) for r in self.reports.values() if channel in r.layers.get(layer, {})],
        }

    def _rgb(self, report: Report, index: int) -> np.ndarray:
        """A winner's picture in a report, (H, W, 3) uint8, as the model saw it."""
        return self._kept.get(("image", report.key, index), lambda: imagefolder.read_rgb(report.image(index)))

    def _reconstructions(self, report: Report, unit: Unit, method: str) -> list[Reconstruction]:
        """Each winner's reconstruction of the unit's strongest activation on it (what the report shows for its own method)."""
        METHODS.number(method, "method")

        def compute() -> list[Reconstruction]:
            images = [self._rgb(report, w.index) for w in unit.winners]
            model = self.models[report.model_sha256]
            return self.client.deconv(model.ref, images, unit.layer, channels=[unit.channel], method=method).reconstructions if images else []

        return self._kept.get(("reconstructions", report.key, unit.layer, unit.channel, method), compute)

    def patches_png(self, key: str, layer: str, channel: int) -> bytes:
        """The unit's top-k input patches in the report's grid."""
        report = self.report(key)
        unit = report.unit(layer, channel)
        return self._kept.get(
            ("patches.png", key, layer, channel),
            lambda: pictures.patches([self._rgb(report, w.index) for w in unit.winners], [w.patch for w in unit.winners], report.k),
        )

    def reconstructions_png(self, key: str, layer: str, channel: int, method: str = "") -> bytes:
        """The unit's top-k reconstructions by ``method`` ("": the report's own), in the same grid as :meth:`patches_png`."""
        report = self.report(key)
        unit = report.unit(layer, channel)
        method = method or report.method
        pixels = [r.pixels for r in self._reconstructions(report, unit, method)]
        return self._kept.get(("reconstructions.png", key, layer, channel, method), lambda: pictures.reconstructions(pixels, [w.patch for w in unit.winners], report.k))

    def tile_png(self, key: str, layer: str, channel: int) -> bytes:
        """The unit's tile: the report's own, or (a report written before reports had tiles) drawn alike."""
        report = self.report(key)
        unit = report.unit(layer, channel)
        if unit.tile is not None and (report.folder / unit.tile).is_file():
            return (report.folder / unit.tile).read_bytes()
        if not unit.winners:
            raise NotFound(f"channel {channel} of {layer} had no image in report {report.name}")
        strongest = unit.winners[0]
        recon = self._reconstructions(report, unit, report.method)[0]
        return pictures.tile(self._rgb(report, strongest.index), recon.pixels, strongest.patch)

    def filter_png(self, key: str, layer: str, channel: int) -> bytes:
        """A first-layer unit's filter, alone, scaled to its own range."""
        report = self.report(key)
        report.unit(layer, channel)
        found = self._rgb_filters(self.models[report.model_sha256], layer)
        if found is None or channel >= found.weights.shape[0]:
            raise NotFound(f"{layer} channel {channel} has no filter over the RGB input to show (only a first layer's units have one)")
        return pictures.filters(found.weights[channel : channel + 1], found.channel_order == "bgr", normalise="filter")

    # ---- live: an uploaded image --------------------------------------------------------------

    def upload(self, data: bytes, name: str) -> dict:
        """Take an image (its file's bytes): its key, size and top predictions."""
        if not data:
            raise InvalidArgument("the upload is empty: send an image file's bytes")
        if len(data) > UPLOAD_BYTES:
            raise ResourceExhausted(f"the upload is {len(data) / (1 << 20):.1f} MiB; the explorer takes images up to {UPLOAD_BYTES >> 20} MiB")
        key = hashlib.sha256(self.model.info.sha256.encode() + data).hexdigest()[:16]
        upload = self._uploads.get(key, lambda: Upload(key, name or "upload", _decoded(data, name, framing(self.model.info))))
        result = self._kept.get(("predict", key), lambda: self.client.predict(self.model.ref, [upload.rgb], top_k=TOP))
        top = [{"index": s.index, "label": s.label, "probability": s.probability} for s in result.predictions[0].top]
        return {"key": key, "name": upload.name, "size": list(upload.rgb.shape[:2]), "top": top, "classes": self.model.info.classes}

    def _upload(self, key: str) -> Upload:
        found = self._uploads.find(key)
        if found is None:
            raise NotFound(f"no uploaded image {key} (the explorer keeps the last {UPLOADS_KEPT}); drop it again")
        return found

    def input_png(self, key: str) -> bytes:
        """The uploaded image as the model sees it."""
        return pictures.png(self._upload(key).rgb)

    def _activation(self, key: str, layer: str) -> np.ndarray:
        """One layer's activation of the uploaded image, without the batch axis."""
        upload = self._upload(key)
        return self._kept.get(("activation", key, layer), lambda: next(iter(self.client.activations(self.model.ref, [upload.rgb], [layer]).values()))[0])

    def maps(self, key: str, layer: str) -> dict:
        """Where each feature map sits on the sheet of :meth:`maps_png`, and each map's strongest activation."""
        activation = self._activation(key, layer)
        sheet = self._map_sheet(key, layer)
        maxima = activation.reshape(activation.shape[0], -1).max(axis=1)
        return {
            "layer": layer, "channels": int(activation.shape[0]), "columns": sheet.columns, "cell": list(sheet.cell), "gap": sheet.gap,
            "maxima": [float(v) for v in maxima], "strongest": int(np.argmax(maxima)),
        }

    def _map_sheet(self, key: str, layer: str) -> pictures.MapSheet:
        activation = self._activation(key, layer)
        return self._kept.get(("maps", key, layer), lambda: pictures.feature_maps(activation))

    def maps_png(self, key: str, layer: str) -> bytes:
        return self._map_sheet(key, layer).picture

    def _live_reconstruction(self, key: str, layer: str, channel: int, method: str) -> Reconstruction:
        upload = self._upload(key)
        METHODS.number(method, "method")
        return self._kept.get(
            ("live", key, layer, channel, method),
            lambda: self.client.deconv(self.model.ref, [upload.rgb], layer, channels=[channel], method=method).reconstructions[0],
        )

    def live_unit(self, key: str, layer: str, channel: int) -> dict:
        """One unit of the uploaded image in every method: its strongest activation, where, and its receptive field."""
        methods = {}
        for method in METHODS.names:
            found = self._live_reconstruction(key, layer, channel, method)
            methods[method] = {"activation": found.activation, "location": list(found.location), "receptive_field": list(found.receptive_field)}
        return {"layer": layer, "channel": channel, "size": list(self._upload(key).rgb.shape[:2]), "methods": methods}

    def live_reconstruction_png(self, key: str, layer: str, channel: int, method: str) -> bytes:
        """The unit's reconstruction by ``method`` over the whole input, zero at mid-grey."""
        return pictures.whole(self._live_reconstruction(key, layer, channel, method).pixels)

    def occlusion_png(self, key: str, layer: str, channel: int, label: str = "") -> bytes:
        """The paper's Fig. 7 for one unit of the uploaded image: the server's occlusion maps of the true
        class (``label``; "" for the top-1), with map (b) the total activation of this unit's map and
        (c) its deconvnet projection."""
        upload = self._upload(key)

        def draw() -> bytes:
            result = self.client.occlusion(self.model.ref, [upload.rgb], layer=layer, true_classes=[label])
            maps = result.images[0]
            totals = self.occlusion_map(upload.rgb, result, layer, channel)
            unit = replace(
                maps, channel=channel, channel_total=float(self._activation(key, layer)[channel].sum()), layer_total=totals,
                projection=self._live_reconstruction(key, layer, channel, "deconvnet"), projection_error="",
            )
            title = f"{upload.name} | {result.layer} channel {channel} | true class {class_name(result.classes, maps.true_class.index)} | {self.model.info.name}"
            return pictures.figure(lambda path: plots.occlusion_sheet(upload.rgb, result, unit, title, path))

        return self._kept.get(("occlusion.png", key, layer, channel, label), draw)

    def occlusion_map(self, rgb: np.ndarray, result: OcclusionResult, layer: str, channel: int) -> np.ndarray:
        """Map (b) for any unit: the total activation of ``channel``'s map per occluder position of
        ``result`` (P, Q), over the copies the server made (its square, its fill), read through GetActivations."""
        base = np.moveaxis(rgb, -1, 0).astype(np.float32)  # the model input (C, H, W), RGB 0..255
        fill = np.asarray(result.fill.values, np.float32)
        if fill.shape != (base.shape[0],):
            raise FailedPrecondition(f"the occluder's fill has {fill.size} values for an input of {base.shape[0]} channels; one unit's map needs an RGB model")
        positions = [(top, left) for top in result.tops for left in result.lefts]
        totals: list[float] = []
        for start in range(0, len(positions), COPIES_PER_CALL):
            copies = []
            for top, left in positions[start : start + COPIES_PER_CALL]:
                copy = base.copy()
                copy[:, top : top + result.size, left : left + result.size] = fill[:, None, None]
                copies.append(copy)
            found = next(iter(self.client.activations(self.model.ref, copies, [layer]).values()))
            totals.extend(found[:, channel].reshape(len(copies), -1).sum(axis=1, dtype=np.float64))
        return np.asarray(totals, np.float32).reshape(len(result.tops), len(result.lefts))

    def invariance_png(self, key: str, label: str = "") -> bytes:
        """The paper's Fig. 5 for the uploaded image: feature distances and the true class's probability
        (``label``; "" for the top-1) under translation, scale and rotation."""
        upload = self._upload(key)

        def draw() -> bytes:
            result = replace(self.client.invariance(self.model.ref, [upload.rgb], true_classes=[label]), labels=[upload.name])
            title = f"invariance of {self.model.info.name}: feature distance to the original and true-class probability"
            return pictures.figure(lambda path: plots.invariance_grid(result, title, path))

        return self._kept.get(("invariance.png", key, label), draw)


def _decoded(data: bytes, name: str, size: Framing) -> np.ndarray:
    """An upload's bytes -> (H, W, 3) uint8 at the model's input size, framed as the server frames it."""
    try:
        return imagefolder.read_rgb(io.BytesIO(data), size)
    except InvalidArgument:
        raise InvalidArgument(f"{name or 'the upload'} is not an image the explorer can read (PNG, JPEG, BMP, WebP, ...)") from None
