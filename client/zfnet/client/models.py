"""Model files on the client: a local ``.onnx`` file streamed from disk in chunks (or, when it keeps
external data, read whole with that data inlined), uploaded once to the server (or to every replica)
and addressed by its SHA-256 afterwards; uploaded again when the server has lost it."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from zfnet import errors
from zfnet.client.transport import Transport
from zfnet.preprocessing import UnnormalisedInput, unnormalised
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.models import CHUNK_BYTES, EXTERNAL_DATA_MARK, DatasetInfo, ModelDeleted, ModelInfo, ModelSummary, UploadHeader, upload_requests

CHECKPOINT_SUFFIXES = (".pt", ".pth")  # PyTorch checkpoints: a state_dict, not a model the server can run
PROTOBUF_LIMIT = 2 << 30  # bytes: the most one protobuf message (one ONNX model) can hold
CHECK_PREPROCESSING = False  # zfclient sets it: each model a command uses that records no normalisation is warned about once
REPLICA_CHECK_S = 10.0  # seconds a replica gets to answer HasModel before it counts as unreachable
UPLOAD_TIMEOUT_S = 600.0


def model_bytes(path: Path) -> bytes:
    """A model file's bytes, with the weights of any external data file (``model.onnx.data``, as
    ``torch.onnx.export`` writes by default) inlined, so that one self-contained model travels."""
    data = path.read_bytes()
    if EXTERNAL_DATA_MARK not in data:
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


@dataclass(frozen=True)
class ModelUpload:
    """A local model as it is uploaded: its header (SHA-256, size, name) and its bytes, read again in
    chunks for each upload. A file that names no external data is streamed from disk and never held
    whole (VGG16's 553 MB stayed in the client for the whole upload and load); one that may is read
    with its external data inlined (:func:`model_bytes`). A file changed between the two reads
    arrives with another SHA-256 than its header's, and the server refuses it."""

    header: UploadHeader
    path: Path
    inlined: bytes | None = None  # the model with its external data inlined; None: the file itself

    @classmethod
    def of(cls, path: Path) -> ModelUpload:
        digest, size, tail = hashlib.sha256(), 0, b""
        with path.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                if EXTERNAL_DATA_MARK in tail + chunk[: len(EXTERNAL_DATA_MARK) - 1] or EXTERNAL_DATA_MARK in chunk:
                    data = model_bytes(path)
                    return cls(UploadHeader(hashlib.sha256(data).hexdigest(), len(data), path.stem), path, data)
                digest.update(chunk)
                size += len(chunk)
                tail = chunk[1 - len(EXTERNAL_DATA_MARK) :]
        return cls(UploadHeader(digest.hexdigest(), size, path.stem), path)

    def chunks(self) -> Iterator[bytes]:
        """The model's bytes, :data:`~zfnet.wire.models.CHUNK_BYTES` at a time."""
        if self.inlined is not None:
            for start in range(0, len(self.inlined), CHUNK_BYTES):
                yield self.inlined[start : start + CHUNK_BYTES]
            return
        with self.path.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk


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


def is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text.lower())


class Models(Transport):
    """The models on the server, as a client addresses them: local files (uploaded when the server
    lacks them) or names of the server's --model-dir models; and its named data sets."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._uploaded: dict[Path, str] = {}
        self._checked: set[str] = set()

    def model_ref(self, model: str | Path) -> pb.ModelRef:
        """A local ``.onnx`` path is uploaded once (only if the server lacks it); else a name on the server."""
        path = Path(model)
        ref = pb.ModelRef(sha256=self.ensure_model(path)) if path.suffix == ".onnx" or path.exists() else pb.ModelRef(name=str(model))
        if CHECK_PREPROCESSING and str(model) not in self._checked:
            self._checked.add(str(model))
            self.check_preprocessing(model, ref)
        return ref

    def check_preprocessing(self, model: str | Path, ref: pb.ModelRef) -> None:
        """Warn (:class:`~zfnet.preprocessing.UnnormalisedInput`) when the model records no input normalisation."""
        message = unnormalised(str(model), self._call(self.stub.GetModelInfo, ref).preprocessing_json)
        if message:
            warnings.warn(message, UnnormalisedInput, stacklevel=2)

    def ensure_model(self, path: Path) -> str:
        """SHA-256 of a local model, uploading it when the server does not have it."""
        path = path.resolve()
        if path in self._uploaded:
            return self._uploaded[path]
        if not path.is_file():
            raise errors.NotFound(f"model {path} does not exist")
        if path.suffix.lower() in CHECKPOINT_SUFFIXES:
            raise errors.InvalidArgument(
                f"model {path} is a PyTorch checkpoint, not an ONNX model; export it first: zfclient convert torch ARCH --weights {path} -o MODEL.onnx"
            )
        upload = ModelUpload.of(path)
        sha = upload.header.sha256
        if self._replicas is not None:
            self._upload_to_replicas(upload)
        elif not self._call(self.stub.HasModel, pb.ModelRef(sha256=sha)).present:
            self._call(self.stub.UploadModel, upload_requests(upload.chunks(), upload.header))
        self._uploaded[path] = sha
        return sha

    def _recover(self, request) -> bool:
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

    def _upload_to_replicas(self, upload: ModelUpload) -> None:
        """Upload a model to every replica that lacks it, each over its own channel. A replica that
        cannot be reached is skipped: should it come back without the model, its NOT_FOUND brings
        the model to it (:meth:`_recover`)."""
        reached = 0
        for _, stub in self.replica_stubs():
            try:
                if not stub.HasModel(pb.ModelRef(sha256=upload.header.sha256), timeout=REPLICA_CHECK_S).present:
                    stub.UploadModel(upload_requests(upload.chunks(), upload.header), timeout=UPLOAD_TIMEOUT_S)
                reached += 1
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise self._error(err) from None
        if not reached:
            raise errors.Unavailable(f"cannot reach any zfnet replica of {self.target}")

    def model_info(self, model: str | Path) -> ModelInfo:
        return ModelInfo.from_proto(self._call(self.stub.GetModelInfo, self.model_ref(model)))

    def delete_model(self, model: str | Path) -> ModelDeleted:
        """Forget an uploaded model (a local path this client uploaded, or a SHA-256), or unload a
        --model-dir model (by name) from the server's memory."""
        path = Path(model)
        if path.resolve() in self._uploaded:
            ref = pb.ModelRef(sha256=self._uploaded.pop(path.resolve()))
        elif path.is_file():
            ref = pb.ModelRef(sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        elif is_sha256(str(model)):
            ref = pb.ModelRef(sha256=str(model).lower())
        else:
            ref = pb.ModelRef(name=str(model))
        return ModelDeleted.from_proto(self._call(self.stub.DeleteModel, ref))

    def list_models(self) -> list[ModelSummary]:
        """The models the server holds: its --model-dir files and the uploads, by name."""
        return [ModelSummary.from_proto(m) for m in self._call(self.stub.ListModels, pb.ListModelsRequest()).models]

    def list_datasets(self) -> list[DatasetInfo]:
        """The named data sets of the server's --data-dir."""
        return [DatasetInfo.from_proto(d) for d in self._call(self.stub.ListDatasets, pb.ListDatasetsRequest()).datasets]
