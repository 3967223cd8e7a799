"""A small typed Python client over the zfnet gRPC stubs.

``Client()`` with no target starts the same service in-process on 127.0.0.1 and talks to it over
the same gRPC path, so scripts work with nothing else running.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from zfnet import errors
from zfnet.tensors import CHANNEL_OPTIONS, from_proto, to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

SERVER_ENV = "ZFNET_SERVER"
CHUNK_BYTES = 1 << 20
PROTOBUF_LIMIT = 2 << 30  # bytes: the most one protobuf message (one ONNX model) can hold
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
        data = model_bytes(path)
        sha = hashlib.sha256(data).hexdigest()
        if not self._call(self.stub.HasModel, pb.ModelRef(sha256=sha)).present:
            self._call(self.stub.UploadModel, _upload_parts(data, sha, path.stem))
        self._uploaded[path] = sha
        return sha

    def model_info(self, model: str | Path) -> pb.ModelInfo:
        return self._call(self.stub.GetModelInfo, self.model_ref(model))

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


def _upload_parts(data: bytes, sha: str, name: str) -> Iterator[pb.UploadModelRequest]:
    yield pb.UploadModelRequest(header=pb.UploadHeader(sha256=sha, size=len(data), name=name))
    for start in range(0, len(data), CHUNK_BYTES):
        yield pb.UploadModelRequest(chunk=data[start : start + CHUNK_BYTES])
