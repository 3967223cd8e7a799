"""A small typed Python client over the zfnet gRPC stubs.

``Client()`` with no target starts the same service in-process, listening on a Unix socket in a
private (0700) temporary directory, and talks to it over the same gRPC path, so scripts work with
nothing else running and no other local user can reach that server. A remote server may need TLS
(``tls_ca`` / ``$ZFNET_TLS_CA`` for a private CA, ``tls=True`` / ``ZFNET_TLS=1`` for public ones,
``tls_cert``/``tls_key`` for mutual TLS) and a bearer token (``token`` / ``$ZFNET_TOKEN``).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np

from zfnet import errors, evolution, extras, imagefolder, status, topk_proto
from zfnet.client import replicas, results
from zfnet.client.features import FeatureBatch, FeatureHeader, FeatureSpec, Skipped
from zfnet.client.results import BORDERS, FILLS, TRANSFORMS
from zfnet.tensors import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES, from_proto, to_proto
from zfnet.topk import BY, TopK
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

SERVER_ENV = "ZFNET_SERVER"
TOKEN_ENV = "ZFNET_TOKEN"
TLS_ENV = "ZFNET_TLS"
TLS_CA_ENV = "ZFNET_TLS_CA"
TLS_CERT_ENV = "ZFNET_TLS_CERT"
TLS_KEY_ENV = "ZFNET_TLS_KEY"
CHUNK_BYTES = 1 << 20
STREAM_IMAGES = 128  # images per ImageBatch message when the client streams a data set
DECONV_BATCH = 32  # images per Deconv request when the client splits a long list
DECONV_ROWS = 1024  # reconstructions per Deconv request at most (the server takes up to 4096)
PROTOBUF_LIMIT = 2 << 30  # bytes: the most one protobuf message (one ONNX model) can hold
REPLICA_CHECK_S = 10.0  # seconds a replica gets to answer HasModel before it counts as unreachable
_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
}
MODES = {"max": pb.MAX, "map": pb.MAP}
FEATURE_DTYPES = {"float32": pb.FLOAT32, "float16": pb.FLOAT16}
POOLS = {"none": pb.POOL_NONE, "avg": pb.POOL_AVG, "max": pb.POOL_MAX, "grid": pb.POOL_GRID}
POOL_NAMES = {code: name for name, code in POOLS.items()}
METHODS = {"deconvnet": pb.DECONVNET, "backprop": pb.BACKPROP, "guided": pb.GUIDED}
ProgressCallback = Callable[[str, int, int], None]  # (stage, copies done, copies in all)

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
class EvolutionColumn:
    """One snapshot of a feature-evolution job: its label ("epoch 3"), its model, and its top-1 result."""

    label: str
    model: str
    result: TopResult


@dataclass(frozen=True)
class EvolutionResult:
    """Feature evolution over training (Zeiler & Fergus 2013, Fig. 4): one top-1 result per snapshot, in training order."""

    layers: list[str]  # tensor names
    channels: dict[str, list[int]]  # layer -> the channels followed
    method: str
    columns: list[EvolutionColumn]

    def entry(self, layer: str, channel: int, column: int) -> TopEntry | None:
        """The strongest activation of ``channel`` in snapshot ``column`` (None: no image could be read)."""
        ranked = self.columns[column].result.entries[layer][channel]
        return ranked[0] if ranked else None


EvolutionProgress = Callable[[int, pb.JobProgress], None]  # (snapshot position, progress)


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
    """A layer number (an int, or ASCII digits) or an exact tensor name."""
    if isinstance(layer, int) or (str(layer).isascii() and str(layer).isdigit()):
        return pb.LayerRef(number=int(layer))
    return pb.LayerRef(name=str(layer))


@dataclass(frozen=True)
class Connection:
    """How to reach a server beyond its address: TLS files and a bearer token."""

    token: str | None = None
    tls: bool = False  # TLS with the system's CA certificates (implied by tls_ca)
    tls_ca: Path | None = None  # PEM CA that signed the server's certificate (a private CA)
    tls_cert: Path | None = None  # PEM client certificate (mutual TLS), with tls_key
    tls_key: Path | None = None

    @classmethod
    def from_env(cls) -> Connection:
        """``$ZFNET_TOKEN``, ``$ZFNET_TLS`` (1), ``$ZFNET_TLS_CA``, ``$ZFNET_TLS_CERT``, ``$ZFNET_TLS_KEY``."""
        env = os.environ.get
        path = lambda name: Path(env(name)) if env(name) else None  # noqa: E731
        return cls(env(TOKEN_ENV) or None, env(TLS_ENV, "") not in ("", "0"), path(TLS_CA_ENV), path(TLS_CERT_ENV), path(TLS_KEY_ENV))

    @property
    def secure(self) -> bool:
        return self.tls or self.tls_ca is not None or self.tls_cert is not None

    def channel(self, target: str, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
        """A channel to ``target`` with these settings and extra channel ``options`` (the token rides on every call)."""
        if self.secure:
            if (self.tls_cert is None) != (self.tls_key is None):
                raise errors.InvalidArgument("a client certificate (--tls-cert) and its key (--tls-key) go together")
            credentials = grpc.ssl_channel_credentials(
                _read_pem(self.tls_ca, "--tls-ca"), _read_pem(self.tls_key, "--tls-key"), _read_pem(self.tls_cert, "--tls-cert"),
            )
            channel = grpc.secure_channel(target, credentials, options=[*CHANNEL_OPTIONS, *options])
        else:
            channel = grpc.insecure_channel(target, options=[*CHANNEL_OPTIONS, *options])
        if not self.token:
            return channel
        if not self.token.isascii() or not self.token.isprintable() or " " in self.token:
            raise errors.InvalidArgument("the token has spaces or characters that cannot travel in gRPC metadata")
        if not self.secure and not _is_local(target):
            warnings.warn(f"sending a bearer token to {target} without TLS; anyone on the path can read it (use --tls-ca)", stacklevel=3)
        return grpc.intercept_channel(channel, _BearerToken(self.token))


def _read_pem(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise errors.NotFound(f"{what} {path}: {err.strerror or err}") from None


def _is_local(target: str) -> bool:
    """Whether every address of ``target`` (one, a list, or a ``dns:``/``ipv4:`` target) is this machine."""
    if target.startswith("unix"):
        return True
    addresses = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:").split(",")
    return all(a.strip().rpartition(":")[0].strip("[]") in ("localhost", "127.0.0.1", "::1") for a in addresses)


class _Details(collections.namedtuple("_Details", "method timeout metadata credentials wait_for_ready compression"), grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, d: grpc.ClientCallDetails) -> _Details:
        return _Details(d.method, d.timeout, [*(d.metadata or ()), self._header], d.credentials, d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


# What ``zfclient``'s global options (--token, --tls-ca, ...) set; None: read the environment.
cli_connection: Connection | None = None


class Client:
    """Talks to a zfnet server at ``target`` (``host:port``, ``unix:/path``), ``$ZFNET_SERVER``, or one
    started in-process on a private Unix socket; or to several replicas, ``dns:///host:port`` or
    ``host1:port,host2:port``, balanced per call (:mod:`zfnet.client.replicas`). ``connection`` (TLS,
    token) defaults to the environment; keyword arguments override single fields of it."""

    def __init__(self, target: str | None = None, connection: Connection | None = None, **overrides) -> None:
        target = target or os.environ.get(SERVER_ENV) or None
        self._server = None
        self._private_dir: str | None = None
        if target is None:
            target = self._start_in_process()
            connection = Connection()  # a private socket: no TLS, no token
        else:
            connection = connection or cli_connection or Connection.from_env()
        self.connection = replace(connection, **overrides)
        self.target = target
        balanced = replicas.is_replicated(target)
        if balanced:
            self._channel = self.connection.channel(replicas.channel_target(target), replicas.channel_options())
        else:
            self._channel = self.connection.channel(target)
        self.stub = zfnet_pb2_grpc.ZfnetStub(self._channel)
        self._uploaded: dict[Path, str] = {}
        self._replicas: dict[str, tuple[grpc.Channel, zfnet_pb2_grpc.ZfnetStub]] | None = {} if balanced else None

    def _start_in_process(self) -> str:
        """Serve in this process on a Unix socket in a fresh 0700 directory; the target."""
        try:
            from zfnet.server.app import create_server
        except ImportError as err:  # a client-only install: say which extra, or pass a server
            raise (extras.missing(err, "an in-process server (no --server)") or err) from None

        base = None if len(tempfile.gettempdir()) < 60 else "/tmp"  # a socket path is limited to about 107 bytes
        self._private_dir = tempfile.mkdtemp(prefix="zfnet-", dir=base)  # mode 0700: only this user can reach the socket
        target = f"unix:{self._private_dir}/zfnet.sock"
        try:
            self._server, _, _ = create_server(target)
        except BaseException:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            raise
        return target

    def close(self) -> None:
        self._channel.close()
        for channel, _ in (self._replicas or {}).values():
            channel.close()
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method, request, timeout: float | None = 600):
        """A unary call, gRPC errors turned into zfnet errors. NOT_FOUND for a model this client
        uploaded (the server restarted, evicted or deleted it) uploads it again and retries once."""
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND or not self._upload_again(request):
                raise self._error(err) from None
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _upload_again(self, request) -> bool:
        """Upload again the model ``request`` names if this client uploaded it before and the server
        no longer holds it; False when that is not why the call failed."""
        ref = request if isinstance(request, pb.ModelRef) else getattr(request, "model", None)
        if not isinstance(ref, pb.ModelRef) or not ref.sha256:
            return False
        path = next((p for p, sha in self._uploaded.items() if sha == ref.sha256), None)
        if path is None or (self._replicas is None and self._call(self.stub.HasModel, pb.ModelRef(sha256=ref.sha256)).present):
            return False
        del self._uploaded[path]
        if self.ensure_model(path) != ref.sha256:
            raise errors.NotFound(f"the server lost model {path}, and the file changed since this client uploaded it; run again")
        return True

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
        """The zfnet error for a failed call, with the server's details (field, reason, resource, metadata)."""
        code = err.code()
        details = err.details() or str(code)
        if code == grpc.StatusCode.UNAVAILABLE:
            return errors.Unavailable(f"cannot reach the zfnet server at {self.target}: {details}")
        cls, sent = _CODES.get(code, errors.ZfnetError), status.details_of(err)
        error = cls(details, **sent)
        if cls is errors.ZfnetError and code is not None:  # INTERNAL, DEADLINE_EXCEEDED, ...: keep the real code
            error.code = code.name
            error.reason = sent.get("reason") or code.name
        return error

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
        data = model_bytes(path)
        sha = hashlib.sha256(data).hexdigest()
        if self._replicas is not None:
            self._upload_to_replicas(data, sha, path.stem)
        elif not self._call(self.stub.HasModel, pb.ModelRef(sha256=sha)).present:
            self._call(self.stub.UploadModel, _upload_parts(data, sha, path.stem))
        self._uploaded[path] = sha
        return sha

    def _upload_to_replicas(self, data: bytes, sha: str, name: str) -> None:
        """Upload a model to every replica that lacks it, each over its own channel (a balanced call
        cannot choose its replica). A replica that cannot be reached is skipped: should it come back
        without the model, its NOT_FOUND brings the model to it (:meth:`_upload_again`)."""
        reached = 0
        for address in replicas.addresses(self.target):
            if address not in self._replicas:
                channel = self.connection.channel(address, replicas.name_override(self.target) if self.connection.secure else ())
                self._replicas[address] = (channel, zfnet_pb2_grpc.ZfnetStub(channel))
            stub = self._replicas[address][1]
            try:
                if not stub.HasModel(pb.ModelRef(sha256=sha), timeout=REPLICA_CHECK_S).present:
                    stub.UploadModel(_upload_parts(data, sha, name), timeout=600)
                reached += 1
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise self._error(err) from None
        if not reached:
            raise errors.Unavailable(f"cannot reach any zfnet replica of {self.target}")

    def model_info(self, model: str | Path) -> pb.ModelInfo:
        return self._call(self.stub.GetModelInfo, self.model_ref(model))

    def delete_model(self, model: str | Path) -> pb.DeleteModelResponse:
        """Forget an uploaded model (a local path this client uploaded, or a SHA-256), or unload a
        --model-dir model (by name) from the server's memory."""
        path = Path(model)
        if path.resolve() in self._uploaded:
            ref = pb.ModelRef(sha256=self._uploaded.pop(path.resolve()))
        elif path.is_file():
            ref = pb.ModelRef(sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        elif len(str(model)) == 64 and all(c in "0123456789abcdef" for c in str(model).lower()):
            ref = pb.ModelRef(sha256=str(model).lower())
        else:
            ref = pb.ModelRef(name=str(model))
        return self._call(self.stub.DeleteModel, ref)

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

    def deconv_batches(
        self, model: str | Path, images: Sequence[ImageLike], layer: str | int, channels: Sequence[int] | None = None,
        top_k: int = 9, mode: str = "max", method: str = "deconvnet", batch_size: int = 0,
    ) -> Iterator[tuple[int, int, DeconvResult]]:
        """:meth:`deconv` over any number of images, one request per batch: yields (start, stop,
        result) for ``images[start:stop]`` as each reply arrives (result image indices are relative to start). ``batch_size`` 0 picks the largest
        batch whose reply stays well inside the message limit."""
        if not batch_size:
            info = self.model_info(model)
            per_image = (len(channels) if channels else max(top_k, 1)) * 4 * int(np.prod(info.input_shape[1:]))
            batch_size = max(1, min(DECONV_BATCH, (MAX_MESSAGE_BYTES // 4) // max(per_image, 1), DECONV_ROWS // max(len(channels or []) or top_k, 1)))
        for start in range(0, len(images), batch_size):
            stop = min(start + batch_size, len(images))
            yield start, stop, self.deconv(model, images[start:stop], layer, channels, top_k, mode, method)

    def _analysis(self, method, request, progress: ProgressCallback | None):
        """Run a server-streaming analysis: report each Progress, return the final result message."""
        try:
            for reply in method(request, timeout=None):
                if reply.WhichOneof("reply") == "progress":
                    if progress is not None:
                        progress(reply.progress.stage, reply.progress.done, reply.progress.total)
                else:
                    return reply.result
        except grpc.RpcError as err:
            raise self._error(err) from None
        raise errors.Unavailable(f"the server at {self.target} ended the stream without a result")

    def occlusion(
        self, model: str | Path, images: Sequence[ImageLike], size: int | None = None, stride: int | None = None,
        fill: str = "mean", layer: str | int | None = None, true_classes: Sequence[str] = (), max_batch: int = 0,
        all_classes: bool = False, progress: ProgressCallback | None = None,
    ) -> results.OcclusionResult:
        """Occlusion sensitivity maps (b)-(e) of each image (the paper's Fig. 7)."""
        request = pb.OcclusionRequest(
            model=self.model_ref(model), images=[image_message(i) for i in images], size=size, stride=stride,
            fill=_choice(FILLS, fill, "fill"), true_classes=list(true_classes), max_batch=max_batch, all_classes=all_classes,
        )
        if layer is not None:
            request.layer.CopyFrom(layer_ref(layer))
        return results.occlusion(self._analysis(self.stub.Occlusion, request, progress))

    def invariance(
        self, model: str | Path, images: Sequence[ImageLike], sweeps: Sequence[tuple[str, Sequence[float]]] = (),
        layers: Sequence[str | int] = (), border: str = "reflect", fill: str = "mean", true_classes: Sequence[str] = (),
        max_batch: int = 0, progress: ProgressCallback | None = None,
    ) -> results.InvarianceResult:
        """Feature distances and true-class probability under each sweep, ``(transform, values)``
        (empty values: the server's defaults; no sweeps: translate, scale and rotate) (the paper's Fig. 5)."""
        request = pb.InvarianceRequest(
            model=self.model_ref(model), images=[image_message(i) for i in images],
            sweeps=[pb.Sweep(transform=_choice(TRANSFORMS, name, "transform"), values=list(values)) for name, values in sweeps],
            layers=[layer_ref(x) for x in layers], border=_choice(BORDERS, border, "border"), fill=_choice(FILLS, fill, "fill"),
            true_classes=list(true_classes), max_batch=max_batch,
        )
        return results.invariance(self._analysis(self.stub.Invariance, request, progress))

    def correspondence(
        self, model: str | Path, images: Sequence[ImageLike], parts: Sequence[str], boxes: Sequence[Sequence[tuple[int, int, int, int]]],
        random_trials: int | None = None, seed: int = 0, layers: Sequence[str | int] = (), fill: str = "mean",
        max_batch: int = 0, progress: ProgressCallback | None = None,
    ) -> results.CorrespondenceResult:
        """The paper's Delta per part and layer (Table 1); ``boxes[i][p]`` = (top, left, bottom, right)
        of part p in image i, model input pixels, bottom/right exclusive."""
        request = pb.CorrespondenceRequest(
            model=self.model_ref(model), images=[image_message(i) for i in images], parts=list(parts),
            boxes=[pb.PartBoxes(boxes=[pb.Box(top=t, left=l, bottom=b, right=r) for t, l, b, r in image_boxes]) for image_boxes in boxes],
            random_trials=random_trials, seed=seed, layers=[layer_ref(x) for x in layers], fill=_choice(FILLS, fill, "fill"), max_batch=max_batch,
        )
        return results.correspondence(self._analysis(self.stub.Correspondence, request, progress))

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
        collected = _TopCollector(dataset, method, state)
        for reply in self._job(self.stub.TopActivations, pb.TopRequest(job=job), dataset, lambda b: pb.TopRequest(batch=b), state.winner_indices()):
            collected.take(reply, on_progress)
        return collected.result()

    def top(
        self, model: str | Path, dataset: Dataset, layers: Sequence[str | int], k: int = 9, by: str = "max",
        channels: Sequence[int] | None = None, method: str = "deconvnet", state: TopK | None = None,
        on_progress: OnProgress | None = None, on_checkpoint: Callable[[TopK], None] | None = None, checkpoint_every: int = 0,
    ) -> TopResult:
        """Top-``k`` images per channel of ``layers`` over ``dataset`` and their reconstructions (Zeiler &
        Fergus 2013, Fig. 2): :meth:`top_scan`, then :meth:`top_reconstruct`."""
        state = self.top_scan(model, dataset, layers, k, by, channels, state, checkpoint_every, on_progress, on_checkpoint, method)
        return self.top_reconstruct(model, dataset, state, method, on_progress)

    def evolution(
        self, models: Sequence[str | Path], dataset: Dataset, layers: Sequence[str | int], channels: Sequence[int] | None = None,
        method: str = "deconvnet", labels: Sequence[str] | None = None, on_progress: EvolutionProgress | None = None,
    ) -> EvolutionResult:
        """Feature evolution over training (Zeiler & Fergus 2013, Fig. 4): for each snapshot in turn (``models``
        in training order; :func:`zfnet.evolution.in_training_order` sorts files), the strongest activation of
        each channel over ``dataset`` and its reconstruction, i.e. :meth:`top` with k = 1 per snapshot. A named
        data set runs as one Evolution call; a local folder, streamed, as one top-1 job per snapshot. Snapshots
        whose chosen layers differ in name or shape are refused before any image is read (SNAPSHOTS_DIFFER)."""
        if method not in METHODS:
            raise errors.InvalidArgument(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if not models:
            raise errors.InvalidArgument("no snapshots given")
        labels = list(labels) if labels is not None else [evolution.label(m) for m in models]
        if len(labels) != len(models):
            raise errors.InvalidArgument(f"{len(labels)} labels for {len(models)} snapshots")
        report = on_progress or (lambda position, progress: None)
        if dataset.folder is None:
            results = self._evolution_call(models, dataset, layers, channels, method, labels, report)
        else:
            results = self._evolution_streamed(models, dataset, layers, channels, method, labels, report)
        first = results[0].state
        columns = [EvolutionColumn(lab, str(m), r) for lab, m, r in zip(labels, models, results)]
        return EvolutionResult(list(first.layers), {name: [int(c) for c in top.channels] for name, top in first.layers.items()}, method, columns)

    def _evolution_call(self, models, dataset: Dataset, layers, channels, method: str, labels: list[str], report: EvolutionProgress) -> list[TopResult]:
        """One Evolution call over a named data set: each snapshot's replies collected as its top-1 result."""
        request = pb.EvolutionRequest(
            models=[self.model_ref(m) for m in models], labels=labels, layers=[layer_ref(x) for x in layers],
            channels=list(channels or []), method=METHODS[method], data=dataset.source,
        )
        collectors = [_TopCollector(dataset, method) for _ in models]
        for reply in self._stream(self.stub.Evolution, request):
            collectors[reply.snapshot].take(reply.reply, functools.partial(report, reply.snapshot))
        return [c.result() for c in collectors]

    def _evolution_streamed(self, models, dataset: Dataset, layers, channels, method: str, labels: list[str], report: EvolutionProgress) -> list[TopResult]:
        """A local folder: the snapshots' chosen layers compared on one image (a forward pass each), then a
        top-1 job per snapshot, streaming the folder each time."""
        probe = dataset.folder.files[dataset.start]
        signatures = []
        for label, model in zip(labels, models):
            found = [next(iter(self.activations(model, [probe], [layer]).items())) for layer in layers]  # one call per layer: a reply's map has no order
            signatures.append((label, [(name, tuple(a.shape[1:])) for name, a in found]))
        evolution.check_same(signatures)
        out = []
        for i, model in enumerate(models):
            report(i, pb.JobProgress(stage="snapshots", done=i, total=len(models)))
            out.append(self.top(model, dataset, layers, k=1, by="max", channels=channels, method=method, on_progress=functools.partial(report, i)))
        report(len(models) - 1, pb.JobProgress(stage="snapshots", done=len(models), total=len(models)))
        return out

    def filters(self, model: str | Path, layer: str | int) -> Filters:
        """The filters of a convolutional or fully connected layer (a number names its block)."""
        reply = self._call(self.stub.GetFilters, pb.FiltersRequest(model=self.model_ref(model), layer=layer_ref(layer)))
        bias = from_proto(reply.bias).copy() if reply.bias.shape else None
        return Filters(reply.layer, reply.op, from_proto(reply.weights).copy(), bias, reply.channel_order)

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


class _TopCollector:
    """The replies of one top-k job (TopReply) gathered into a :class:`TopResult`; ``state``: the scan's
    state when it is known already (a reconstruct-only job), else the final state the replies carry."""

    def __init__(self, dataset: Dataset, method: str, state: TopK | None = None) -> None:
        self.dataset, self.method, self.state = dataset, method, state
        self.images: dict[int, TopImage] = {}
        self.entries: dict[str, dict[int, list[TopEntry]]] = {}
        if state is not None:
            self._expect(state)

    def _expect(self, state: TopK) -> None:
        self.entries = {layer: {int(c): [] for c in top.channels} for layer, top in state.layers.items()}

    def take(self, reply: pb.TopReply, on_progress: OnProgress | None = None) -> None:
        kind = reply.WhichOneof("part")
        if kind == "progress" and on_progress is not None:
            on_progress(reply.progress)
        elif kind == "state":
            self.state = topk_proto.from_message(reply.state)
            self._expect(self.state)
        elif kind == "image":
            m = reply.image
            classes = self.dataset.classes
            self.images[m.index] = TopImage(m.index, m.path, classes[m.label] if 0 <= m.label < len(classes) else "", from_proto(m.pixels).copy())
        elif kind == "entry":
            e = reply.entry
            self.entries[e.layer][e.channel].append(TopEntry(
                e.layer, e.channel, e.rank, e.index, e.value, e.activation, tuple(e.location), _box(e.receptive_field), _box(e.patch),
                from_proto(e.reconstruction).copy(),
            ))

    def result(self) -> TopResult:
        if self.state is None:
            raise errors.ZfnetError("the server ended the top-k job without its final state")
        for per_channel in self.entries.values():
            for ranked in per_channel.values():
                ranked.sort(key=lambda entry: entry.rank)
        return TopResult(self.state, self.method, list(self.dataset.classes), self.images, self.entries)


def _choice(table: dict[str, int], name: str, what: str) -> int:
    if name not in table:
        raise errors.InvalidArgument(f"unknown {what} {name!r}; choose one of {', '.join(table)}")
    return table[name]


def model_bytes(path: Path) -> bytes:
    """A model file's bytes, with the weights of any external data file (``model.onnx.data``, as
    ``torch.onnx.export`` writes by default) inlined, so that one self-contained model travels."""
    data = path.read_bytes()
    if b"location" not in data:  # external data is named by a "location" entry: without one there is none
        return data
    import onnx  # noqa: PLC0415  (only models that may reference external data need it)
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data  # noqa: PLC0415

    model = onnx.ModelProto.FromString(data)
    tensors = [t for t in _tensors(model.graph) if uses_external_data(t)]
    if not tensors:
        return data
    total = len(data) + sum(_external_length(path.parent, t) for t in tensors)
    if total > PROTOBUF_LIMIT:
        raise errors.ResourceExhausted(
            f"model {path} with its external data is {total / (1 << 30):.1f} GiB; one ONNX model (a protobuf message) "
            f"holds at most 2 GiB, so zfnet cannot take it whole"
        )
    try:
        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as err:
        raise errors.InvalidArgument(f"cannot read the external data of {path}: {err}") from None
    return model.SerializeToString()


def _tensors(graph) -> Iterator:
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _tensors(sub)


def _external_length(folder: Path, tensor) -> int:
    """The byte length of one tensor's external data (its ``length`` entry, else its file's size)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    if "length" in info:
        return int(info["length"])
    location = folder / info.get("location", "")
    if not location.is_file():
        raise errors.NotFound(f"external data file {location} of tensor {tensor.name!r} does not exist")
    return location.stat().st_size


def _box(box: pb.Box) -> tuple[int, int, int, int]:
    return (box.top, box.left, box.bottom, box.right)


def _upload_parts(data: bytes, sha: str, name: str) -> Iterator[pb.UploadModelRequest]:
    yield pb.UploadModelRequest(header=pb.UploadHeader(sha256=sha, size=len(data), name=name))
    for start in range(0, len(data), CHUNK_BYTES):
        yield pb.UploadModelRequest(chunk=data[start : start + CHUNK_BYTES])
