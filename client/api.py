"""A small typed Python client over the zfnet gRPC stubs.

``Client()`` with no target starts the same service in-process on 127.0.0.1 and talks to it over
the same gRPC path, so scripts work with nothing else running.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np

from zfnet import errors, imagefolder, topk_proto
from zfnet.tensors import CHANNEL_OPTIONS, from_proto, to_proto
from zfnet.topk import BY, TopK
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
METHODS = {"deconvnet": pb.DECONVNET, "backprop": pb.BACKPROP, "guided": pb.GUIDED}

ImageLike = str | Path | bytes | np.ndarray
OnProgress = Callable[[pb.JobProgress], None]


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
class TopImage:
    """A winner's image as the model saw it: (C, H, W) float32 RGB 0..255."""

    index: int
    path: str
    label: str  # class name, "" when unknown
    pixels: np.ndarray


@dataclass(frozen=True)
class TopEntry:
    """One (layer, channel, rank) of a top-k job, with the reconstruction of its activation."""

    layer: str
    channel: int
    rank: int
    index: int  # data-set index; the image is TopResult.images[index]
    value: float  # the ranking value (the map's max or mean)
    activation: float  # the activation reconstructed
    location: tuple[int, ...]
    receptive_field: tuple[int, int, int, int]  # top, left, bottom, right (exclusive), clipped to the image
    patch: tuple[int, int, int, int]  # the whole field; it may leave the image
    reconstruction: np.ndarray  # (C, H, W) float32


@dataclass(frozen=True)
class TopResult:
    """A finished top-k job: the scan's state, the winners' images and every reconstruction."""

    state: TopK
    method: str
    classes: list[str]
    images: dict[int, TopImage]
    entries: dict[str, dict[int, list[TopEntry]]]  # layer -> channel -> ranked entries


@dataclass(frozen=True)
class Filters:
    """A learned layer's filters: Conv (out, in/group, kh, kw) or fully connected (out, in)."""

    layer: str
    op: str
    weights: np.ndarray
    bias: np.ndarray | None
    channel_order: str  # of the image input, for a first layer


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

    def part(self, start: int, stop: int) -> Dataset:
        """The same data set, indices ``[start, stop)`` only (a shard, or what is left to read)."""
        source = pb.DataSource()
        source.CopyFrom(self.source)
        source.start, source.stop = start, stop
        return replace(self, source=source)

    def batches(self, images_per_message: int = STREAM_IMAGES, indices: Sequence[int] | None = None) -> Iterator[pb.ImageBatch]:
        """The local folder's images ``[start, stop)``, or only those at ``indices`` (ascending), as
        ImageBatch messages of consecutive images, read lazily (bounded memory)."""
        folder = self.folder
        for begin, end in _runs(range(self.start, self.stop) if indices is None else indices, images_per_message):
            yield pb.ImageBatch(
                start=begin, labels=[int(x) for x in folder.labels[begin:end]],
                images=[pb.Image(encoded=_read_bytes(folder.files[i]), label=str(folder.files[i])) for i in range(begin, end)],
            )


def _runs(indices: Sequence[int], longest: int) -> Iterator[tuple[int, int]]:
    """Ascending ``indices`` as [begin, end) runs of consecutive numbers, each at most ``longest`` long."""
    begin = end = None
    for i in indices:
        i = int(i)
        if begin is not None and i == end and end - begin < longest:
            end += 1
            continue
        if begin is not None:
            yield begin, end
        begin, end = i, i + 1
    if begin is not None:
        yield begin, end


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

    def _job(self, method, job: object, dataset: Dataset, wrap: Callable[[pb.ImageBatch], object], indices: Sequence[int] | None = None) -> Iterator:
        """Run a data-set job: ``job`` (the first request), then, when the client streams the data,
        every ImageBatch (of the range, or of ``indices`` only) wrapped as a request; yields the replies as they come."""

        def requests():
            yield job
            if dataset.folder is not None:
                yield from (wrap(batch) for batch in dataset.batches(indices=indices))

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

    # -- data-set jobs ----------------------------------------------------------------------
    def top_scan(
        self, model: str | Path, dataset: Dataset, layers: Sequence[str | int], k: int = 9, by: str = "max",
        channels: Sequence[int] | None = None, state: TopK | None = None, checkpoint_every: int = 0,
        on_progress: OnProgress | None = None, on_checkpoint: Callable[[TopK], None] | None = None, method: str | None = None,
    ) -> TopK:
        """The first pass of a top-k job: the running top-``k`` of every channel over ``dataset``'s range.
        With ``state`` (a checkpoint, or a shard's state), it reads only what the state has not read yet
        and returns the merged state. ``on_checkpoint`` gets the state every ``checkpoint_every`` images.
        Given the ``method`` of the reconstructions to come, the server refuses a layer it cannot project
        before reading any image."""
        if k <= 0:
            raise errors.InvalidArgument(f"k must be positive, got {k}")
        if by not in BY:
            raise errors.InvalidArgument(f"unknown ranking {by!r}; choose one of {', '.join(BY)}")
        if method is not None and method not in METHODS:
            raise errors.InvalidArgument(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        ranges = state.remaining(dataset.start, dataset.stop) if state is not None else [(dataset.start, dataset.stop)]
        ref = self.model_ref(model)
        for start, stop in ranges:
            part = dataset.part(start, stop)
            job = pb.TopJob(
                model=ref, layers=[layer_ref(x) for x in layers], k=k, by=topk_proto.BY[by], channels=list(channels or []),
                data=part.source, stage=pb.TOP_SCAN, checkpoint_every=checkpoint_every, method=METHODS.get(method or "", 0),
                state=topk_proto.to_message(state) if state is not None else None,
            )
            final = None
            for reply in self._job(self.stub.TopActivations, pb.TopRequest(job=job), part, lambda b: pb.TopRequest(batch=b)):
                kind = reply.WhichOneof("part")
                if kind == "progress" and on_progress is not None:
                    on_progress(reply.progress)
                elif kind == "checkpoint" and on_checkpoint is not None:
                    on_checkpoint(topk_proto.from_message(reply.checkpoint))
                elif kind == "state":
                    final = topk_proto.from_message(reply.state)
            if final is None:
                raise errors.ZfnetError("the server ended the top-k scan without its final state")
            state = final
        return state

    def top_reconstruct(
        self, model: str | Path, dataset: Dataset, state: TopK, method: str = "deconvnet", on_progress: OnProgress | None = None,
    ) -> TopResult:
        """The second pass: every winner of ``state`` with its image, patch box and reconstruction."""
        if method not in METHODS:
            raise errors.InvalidArgument(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        job = pb.TopJob(model=self.model_ref(model), data=dataset.source, stage=pb.TOP_RECONSTRUCT, method=METHODS[method], state=topk_proto.to_message(state))
        images: dict[int, TopImage] = {}
        entries = {layer: {int(c): [] for c in top.channels} for layer, top in state.layers.items()}
        replies = self._job(self.stub.TopActivations, pb.TopRequest(job=job), dataset, lambda b: pb.TopRequest(batch=b), state.winner_indices())
        for reply in replies:
            kind = reply.WhichOneof("part")
            if kind == "progress" and on_progress is not None:
                on_progress(reply.progress)
            elif kind == "image":
                m = reply.image
                label = dataset.classes[m.label] if 0 <= m.label < len(dataset.classes) else ""
                images[m.index] = TopImage(m.index, m.path, label, from_proto(m.pixels).copy())
            elif kind == "entry":
                e = reply.entry
                entries[e.layer][e.channel].append(TopEntry(
                    e.layer, e.channel, e.rank, e.index, e.value, e.activation, tuple(e.location), _box(e.receptive_field), _box(e.patch),
                    from_proto(e.reconstruction).copy(),
                ))
        for per_channel in entries.values():
            for ranked in per_channel.values():
                ranked.sort(key=lambda entry: entry.rank)
        return TopResult(state, method, list(dataset.classes), images, entries)

    def top(
        self, model: str | Path, dataset: Dataset, layers: Sequence[str | int], k: int = 9, by: str = "max",
        channels: Sequence[int] | None = None, method: str = "deconvnet", state: TopK | None = None,
        on_progress: OnProgress | None = None, on_checkpoint: Callable[[TopK], None] | None = None, checkpoint_every: int = 0,
    ) -> TopResult:
        """Top-``k`` images per channel of ``layers`` over ``dataset`` and their reconstructions (Zeiler &
        Fergus 2013, Fig. 2): :meth:`top_scan`, then :meth:`top_reconstruct`."""
        state = self.top_scan(model, dataset, layers, k, by, channels, state, checkpoint_every, on_progress, on_checkpoint, method)
        return self.top_reconstruct(model, dataset, state, method, on_progress)

    def filters(self, model: str | Path, layer: str | int) -> Filters:
        """The filters of a convolutional or fully connected layer (a number names its block)."""
        reply = self._call(self.stub.GetFilters, pb.FiltersRequest(model=self.model_ref(model), layer=layer_ref(layer)))
        bias = from_proto(reply.bias).copy() if reply.bias.shape else None
        return Filters(reply.layer, reply.op, from_proto(reply.weights).copy(), bias, reply.channel_order)


def _box(box: pb.Box) -> tuple[int, int, int, int]:
    return (box.top, box.left, box.bottom, box.right)


def _upload_parts(data: bytes, sha: str, name: str) -> Iterator[pb.UploadModelRequest]:
    yield pb.UploadModelRequest(header=pb.UploadHeader(sha256=sha, size=len(data), name=name))
    for start in range(0, len(data), CHUNK_BYTES):
        yield pb.UploadModelRequest(chunk=data[start : start + CHUNK_BYTES])
