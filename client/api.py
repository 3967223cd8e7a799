"""A small typed Python client over the zfnet gRPC stubs.

``Client()`` with no target starts the same service in-process on 127.0.0.1 and talks to it over
the same gRPC path, so scripts work with nothing else running.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from zfnet import errors, imagefolder
from zfnet.client.features import FeatureBatch, FeatureHeader, FeatureSpec, Skipped
from zfnet.tensors import CHANNEL_OPTIONS, from_proto, to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

SERVER_ENV = "ZFNET_SERVER"
CHUNK_BYTES = 1 << 20
STREAM_IMAGES = 128  # images per ImageBatch message when the client streams a data set
_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
}
MODES = {"max": pb.MAX, "map": pb.MAP}
FEATURE_DTYPES = {"float32": pb.FLOAT32, "float16": pb.FLOAT16}
POOLS = {"none": pb.POOL_NONE, "avg": pb.POOL_AVG, "max": pb.POOL_MAX, "grid": pb.POOL_GRID}
POOL_NAMES = {code: name for name, code in POOLS.items()}
METHODS = {"deconvnet": pb.DECONVNET, "backprop": pb.BACKPROP, "guided": pb.GUIDED}

ImageLike = str | Path | bytes | np.ndarray


@dataclass(frozen=True)
class Reconstruction:
    """One deconv reconstruction, as the client sees it."""

    image: int
    label: str
    channel: int
    activation: float
    location: tuple[int, ...]
    receptive_field: tuple[int, int, int, int]  # top, left, bottom, right (exclusive)
    pixels: np.ndarray  # (C, H, W) float32


@dataclass(frozen=True)
class DeconvResult:
    layer: str
    mode: str
    method: str
    reconstructions: list[Reconstruction]


@dataclass(frozen=True)
class Dataset:
    """The images of a data-set job: a named data set on the server, or a local folder the client streams."""

    source: pb.DataSource
    size: int
    classes: list[str]
    folder: imagefolder.ImageFolder | None  # the local folder when the client streams it

    @property
    def start(self) -> int:
        return self.source.start

    @property
    def stop(self) -> int:
        return self.source.stop or self.size

    def batches(self, images_per_message: int = STREAM_IMAGES) -> Iterator[pb.ImageBatch]:
        """The local folder's images ``[start, stop)`` as ImageBatch messages, read lazily (bounded memory)."""
        folder = self.folder
        for begin in range(self.start, self.stop, images_per_message):
            end = min(begin + images_per_message, self.stop)
            yield pb.ImageBatch(
                start=begin, labels=[int(x) for x in folder.labels[begin:end]],
                images=[pb.Image(encoded=_read_bytes(folder.files[i]), label=str(folder.files[i])) for i in range(begin, end)],
            )


def _read_bytes(path: Path) -> bytes:
    """A file's bytes; an unreadable file travels as no bytes, and the server skips it with the reason."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def image_message(image: ImageLike) -> pb.Image:
    """A path or encoded bytes travel encoded; an (H, W, 3) array as RGB; a (C, H, W) float array as model input."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise errors.NotFound(f"image {path} does not exist")
        return pb.Image(encoded=path.read_bytes(), label=path.name)
    if isinstance(image, bytes):
        return pb.Image(encoded=image)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 3:
        return pb.Image(rgb=to_proto(array if array.dtype == np.uint8 else array.astype(np.float32)))
    if array.ndim == 3:
        return pb.Image(model_input=to_proto(array.astype(np.float32)))
    raise errors.InvalidArgument(f"an image array must be (H, W, 3) RGB or (C, H, W) model input, got {list(array.shape)}")


def layer_ref(layer: str | int) -> pb.LayerRef:
    if isinstance(layer, int) or str(layer).isdigit():
        return pb.LayerRef(number=int(layer))
    return pb.LayerRef(name=str(layer))


class Client:
    """Talks to a zfnet server at ``target`` (``host:port``), ``$ZFNET_SERVER``, or one started in-process."""

    def __init__(self, target: str | None = None) -> None:
        target = target or os.environ.get(SERVER_ENV) or None
        self._server = None
        if target is None:
            from zfnet.server.app import create_server

            self._server, port, _ = create_server("127.0.0.1:0")
            target = f"127.0.0.1:{port}"
        self.target = target
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = zfnet_pb2_grpc.ZfnetStub(self._channel)
        self._uploaded: dict[Path, str] = {}

    def close(self) -> None:
        self._channel.close()
        if self._server is not None:
            self._server.stop(grace=None)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method, request, timeout: float | None = 600):
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _stream(self, method, requests, timeout: float | None = None) -> Iterator:
        """The replies of a streaming call, gRPC errors turned into zfnet errors."""
        try:
            yield from method(requests, timeout=timeout)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _job(self, method, job: object, dataset: Dataset, wrap: Callable[[pb.ImageBatch], object]) -> Iterator:
        """Run a data-set job: ``job`` (the first request), then, when the client streams the data,
        every ImageBatch wrapped as a request; yields the replies as they come."""

        def requests():
            yield job
            if dataset.folder is not None:
                yield from (wrap(batch) for batch in dataset.batches())

        return self._stream(method, requests())

    def _error(self, err: grpc.RpcError) -> errors.ZfnetError:
        code = err.code()
        details = err.details() or str(code)
        if code == grpc.StatusCode.UNAVAILABLE:
            return errors.Unavailable(f"cannot reach the zfnet server at {self.target}: {details}")
        return _CODES.get(code, errors.ZfnetError)(details)

    # -- models ---------------------------------------------------------------------------
    def model_ref(self, model: str | Path) -> pb.ModelRef:
        """A local ``.onnx`` path is uploaded once (only if the server lacks it); else a name on the server."""
        path = Path(model)
        if path.suffix == ".onnx" or path.exists():
            return pb.ModelRef(sha256=self.ensure_model(path))
        return pb.ModelRef(name=str(model))

    def ensure_model(self, path: Path) -> str:
        """SHA-256 of a local model, uploading it when the server does not have it."""
        path = path.resolve()
        if path in self._uploaded:
            return self._uploaded[path]
        if not path.is_file():
            raise errors.NotFound(f"model {path} does not exist")
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if not self._call(self.stub.HasModel, pb.ModelRef(sha256=sha)).present:
            self._call(self.stub.UploadModel, _upload_parts(data, sha, path.stem))
        self._uploaded[path] = sha
        return sha

    def model_info(self, model: str | Path) -> pb.ModelInfo:
        return self._call(self.stub.GetModelInfo, self.model_ref(model))

    # -- data sets ------------------------------------------------------------------------
    def list_datasets(self) -> list[pb.DatasetInfo]:
        """The named data sets of the server's --data-dir."""
        return list(self._call(self.stub.ListDatasets, pb.ListDatasetsRequest()).datasets)

    def dataset(self, data: str | Path, start: int = 0, stop: int = 0, batch_size: int = 0, classes: Sequence[str] | None = None) -> Dataset:
        """A local image folder (``data/<class>/<image>``, streamed by this client) or the name of a data
        set on the server; ``[start, stop)`` picks a range of its images (0 = to the end)."""
        path = Path(data)
        if path.is_dir():
            folder = imagefolder.scan(path, classes)
            source = pb.DataSource(streamed=pb.StreamedImages(size=len(folder), classes=folder.classes), start=start, stop=stop, batch_size=batch_size)
            dataset = Dataset(source, len(folder), list(folder.classes), folder)
        else:
            known = {d.name: d for d in self.list_datasets()}
            if str(data) not in known:
                raise errors.NotFound(
                    f"{data} is neither a local image folder nor a data set on the server "
                    f"(it has: {', '.join(sorted(known)) or 'none; start zfserver with --data-dir'})"
                )
            info = known[str(data)]
            source = pb.DataSource(dataset=info.name, start=start, stop=stop, batch_size=batch_size)
            dataset = Dataset(source, info.size, list(info.classes), None)
        if not 0 <= start <= dataset.stop <= dataset.size:
            raise errors.InvalidArgument(f"range [{start}, {stop}) is outside the data set's {dataset.size} images")
        return dataset

    # -- analyses -------------------------------------------------------------------------
    def predict(self, model: str | Path, images: Sequence[ImageLike], top_k: int = 5) -> pb.PredictResponse:
        request = pb.PredictRequest(model=self.model_ref(model), images=[image_message(i) for i in images], top_k=top_k)
        return self._call(self.stub.Predict, request)

    def probabilities(self, model: str | Path, images: Sequence[ImageLike]) -> np.ndarray:
        """(N, classes) probabilities."""
        return from_proto(self.predict(model, images, top_k=1).probabilities).copy()

    def activations(self, model: str | Path, images: Sequence[ImageLike], layers: Sequence[str | int]) -> dict[str, np.ndarray]:
        request = pb.ActivationsRequest(model=self.model_ref(model), images=[image_message(i) for i in images], layers=[layer_ref(x) for x in layers])
        reply = self._call(self.stub.GetActivations, request)
        return {name: from_proto(t).copy() for name, t in reply.activations.items()}

    def deconv(
        self, model: str | Path, images: Sequence[ImageLike], layer: str | int,
        channels: Sequence[int] | None = None, top_k: int = 9, mode: str = "max", method: str = "deconvnet",
    ) -> DeconvResult:
        """Reconstructions of ``layer`` for each image and channel."""
        if mode not in MODES:
            raise errors.InvalidArgument(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if method not in METHODS:
            raise errors.InvalidArgument(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        request = pb.DeconvRequest(
            model=self.model_ref(model), images=[image_message(i) for i in images], layer=layer_ref(layer),
            channels=pb.ChannelSelection(channels=list(channels or []), top_k=top_k), mode=MODES[mode], method=METHODS[method],
        )
        reply = self._call(self.stub.Deconv, request)
        out = [
            Reconstruction(
                i, img.label, r.channel, r.activation, tuple(r.location),
                (r.receptive_field.top, r.receptive_field.left, r.receptive_field.bottom, r.receptive_field.right),
                from_proto(r.pixels).copy(),
            )
            for i, img in enumerate(reply.images) for r in img.reconstructions
        ]
        return DeconvResult(reply.layer, mode, method, out)

    def features(
        self, model: str | Path, data: str | Path | Dataset, layers: Sequence[str | int], pool: str = "none",
        layer_pool: dict[str, str] | None = None, dtype: str = "float32", start: int = 0, stop: int = 0, batch_size: int = 0,
    ) -> FeatureStream:
        """Features of ``layers`` (numbers, tensor names, or ``"pixels"`` for the model input) over a data
        set (a local folder, a server data-set name, or a :class:`Dataset`), ``[start, stop)``. ``pool``
        (``none | avg | max | grid:S``) applies to the network layers with spatial axes; ``layer_pool``
        maps a layer (as given in ``layers``) to its own pooling. Iterate the stream for the batches."""
        if dtype not in FEATURE_DTYPES:
            raise errors.InvalidArgument(f"unknown feature dtype {dtype!r}; use {' or '.join(FEATURE_DTYPES)}")
        layer_pool = {str(k): v for k, v in (layer_pool or {}).items()}
        unknown = sorted(set(layer_pool) - {str(x) for x in layers})
        if unknown:
            raise errors.InvalidArgument(f"pooling given for layer(s) {', '.join(unknown)} that are not among the layers asked for")
        dataset = data if isinstance(data, Dataset) else self.dataset(data, start, stop, batch_size)
        job = pb.FeaturesJob(
            model=self.model_ref(model), dtype=FEATURE_DTYPES[dtype], data=dataset.source, default_pooling=pooling_message(pool),
            layers=[pb.FeatureLayer(layer=layer_ref(x), pooling=pooling_message(layer_pool.get(str(x)))) for x in layers],
        )
        replies = self._job(self.stub.Features, pb.FeaturesRequest(job=job), dataset, lambda batch: pb.FeaturesRequest(batch=batch))
        return FeatureStream(replies)


class FeatureStream:
    """A running features job: ``header`` says what the rows hold; iterating yields
    :class:`FeatureBatch` es in data-set order. ``close()`` cancels the job."""

    def __init__(self, replies: Iterator[pb.FeaturesReply]) -> None:
        self._replies = replies
        first = next(replies, None)
        if first is None or not first.HasField("header"):
            raise errors.ZfnetError("the server did not start the features job (no FeaturesHeader)")
        h = first.header
        dtype = {pb.FLOAT32: "float32", pb.FLOAT16: "float16"}[h.dtype]
        self.header = FeatureHeader(
            h.model_sha256, [FeatureSpec(f.name, f.number or None, _pooling_text(f.pooling), tuple(f.layer_shape), tuple(f.shape)) for f in h.layers],
            dtype, h.size, list(h.classes), h.start, h.stop, h.batch_size,
        )

    def __iter__(self) -> Iterator[FeatureBatch]:
        for reply in self._replies:
            rows, p = reply.rows, reply.progress
            yield FeatureBatch(
                np.asarray(rows.indices, np.int64), np.asarray(rows.labels, np.int64), list(rows.paths),
                [from_proto(t, f"features of {spec.name}") for t, spec in zip(rows.features, self.header.layers)],
                [Skipped(s.index, s.path, s.reason) for s in p.skipped], p.done, p.total,
            )

    def close(self) -> None:
        close = getattr(self._replies, "close", None)
        if close is not None:
            close()


def _pooling_text(message: pb.Pooling) -> str:
    kind = POOL_NAMES.get(message.kind, "none")
    return f"grid:{message.grid}" if kind == "grid" else kind


def pooling_message(text: str | None) -> pb.Pooling:
    """``none | avg | max | grid:S`` (None: unspecified) -> proto Pooling, checked."""
    if text is None:
        return pb.Pooling()
    from zfnet.server.features import Pooling

    value = Pooling.parse(text)
    return pb.Pooling(kind=POOLS[value.kind], grid=value.grid)


def _upload_parts(data: bytes, sha: str, name: str) -> Iterator[pb.UploadModelRequest]:
    yield pb.UploadModelRequest(header=pb.UploadHeader(sha256=sha, size=len(data), name=name))
    for start in range(0, len(data), CHUNK_BYTES):
        yield pb.UploadModelRequest(chunk=data[start : start + CHUNK_BYTES])
