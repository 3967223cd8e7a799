"""What the server holds: its models (upload, info, listing, deletion) and its named data sets."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from zfnet.errors import InvalidArgument
from zfnet.v1 import zfnet_pb2 as pb

CHUNK_BYTES = 1 << 20  # bytes per UploadModel chunk
EXTERNAL_DATA_MARK = b"location"  # a tensor names its external data file in a "location" entry: model bytes without it name none


@dataclass(frozen=True)
class LayerInfo:
    """One row of a model's layer table: an activation the server can read and project."""

    index: int  # position in the table (graph order)
    name: str  # tensor name
    op: str  # the ONNX op that produces it
    shape: tuple[int, ...]  # -1 for the batch (or any dynamic) dimension
    number: int  # > 0: the paper's layer number (LayerRef.number); 0: none
    aliases: tuple[str, ...]  # the tensor's names in the model as uploaded
    modules: tuple[str, ...] = ()  # the module calls whose output it is, outermost first (LayerRef.name takes them)
    internal: bool = False  # computed inside a module without being its output
    channel_axis: int = 1  # the axis of its features (channels); locations are positions on the other axes but the batch's


@dataclass(frozen=True)
class ModelInfo:
    """Inputs, preprocessing, classes and the layer table of one model."""

    sha256: str
    name: str
    input_name: str
    input_shape: tuple[int, ...]  # (-1, C, H, W): the size images are resized to
    preprocessing_json: str  # what the graph does at its input, a JSON object
    classes: list[str]  # output order; empty when unknown
    layers: list[LayerInfo]
    output_name: str  # the tensor Predict reads
    provider: str  # onnxruntime execution provider in use

    def to_proto(self) -> pb.ModelInfo:
        return pb.ModelInfo(
            sha256=self.sha256, name=self.name, input_name=self.input_name, input_shape=self.input_shape,
            preprocessing_json=self.preprocessing_json, classes=self.classes, output_name=self.output_name, provider=self.provider,
            layers=[
                pb.Layer(index=r.index, name=r.name, op=r.op, shape=r.shape, number=r.number, aliases=r.aliases, modules=r.modules, internal=r.internal, channel_axis=r.channel_axis)
                for r in self.layers
            ],
        )

    @classmethod
    def from_proto(cls, message: pb.ModelInfo) -> ModelInfo:
        return cls(
            message.sha256, message.name, message.input_name, tuple(message.input_shape), message.preprocessing_json, list(message.classes),
            [LayerInfo(r.index, r.name, r.op, tuple(r.shape), r.number, tuple(r.aliases), tuple(r.modules), r.internal, r.channel_axis or 1) for r in message.layers],
            message.output_name, message.provider,
        )


@dataclass(frozen=True)
class ModelDeleted:
    sha256: str
    removed: bool  # True: an upload, forgotten; False: a --model-dir model, only unloaded

    def to_proto(self) -> pb.DeleteModelResponse:
        return pb.DeleteModelResponse(sha256=self.sha256, removed=self.removed)

    @classmethod
    def from_proto(cls, message: pb.DeleteModelResponse) -> ModelDeleted:
        return cls(message.sha256, message.removed)


@dataclass(frozen=True)
class ModelSummary:
    """One model the server holds: an upload or a --model-dir file."""

    sha256: str
    name: str  # --model-dir file stem, or the first upload name
    size: int  # bytes
    upload_names: list[str]  # every display name uploaders gave these bytes
    in_model_dir: bool  # served from --model-dir (a ModelRef by name resolves it)
    loaded: bool  # in memory now (else loaded on next use)

    def to_proto(self) -> pb.ModelSummary:
        return pb.ModelSummary(
            sha256=self.sha256, name=self.name, size=self.size, upload_names=self.upload_names, in_model_dir=self.in_model_dir, loaded=self.loaded,
        )

    @classmethod
    def from_proto(cls, message: pb.ModelSummary) -> ModelSummary:
        return cls(message.sha256, message.name, message.size, list(message.upload_names), message.in_model_dir, message.loaded)


@dataclass(frozen=True)
class DatasetInfo:
    """A named data set of the server's --data-dir."""

    name: str  # what DataSource.dataset takes
    size: int  # images
    classes: list[str]  # folder names, in label order

    def to_proto(self) -> pb.DatasetInfo:
        return pb.DatasetInfo(name=self.name, size=self.size, classes=self.classes)

    @classmethod
    def from_proto(cls, message: pb.DatasetInfo) -> DatasetInfo:
        return cls(message.name, message.size, list(message.classes))


@dataclass(frozen=True)
class UploadHeader:
    sha256: str  # hex SHA-256 of the whole file; "" : not checked
    size: int  # bytes of the whole file; 0: unknown
    name: str  # display name for ListModels


def upload_requests(chunks: Iterable[bytes], header: UploadHeader) -> Iterator[pb.UploadModelRequest]:
    """An UploadModel stream: the header, then the model's bytes, one message per chunk (at most :data:`CHUNK_BYTES` each)."""
    yield pb.UploadModelRequest(header=pb.UploadHeader(sha256=header.sha256, size=header.size, name=header.name))
    for chunk in chunks:
        yield pb.UploadModelRequest(chunk=chunk)


def upload_of(requests: Iterator[pb.UploadModelRequest]) -> tuple[UploadHeader, Iterator[bytes]]:
    """The header of an UploadModel stream and its chunks' bytes, refused when out of order."""
    first = next(requests, None)
    if first is None:
        raise InvalidArgument("UploadModel: empty stream; send an UploadHeader and the model's bytes", field="header", reason="FIELD_REQUIRED")
    if first.WhichOneof("part") != "header":
        raise InvalidArgument("UploadModel: send the UploadHeader before any chunk", field="chunk", reason="STREAM_OUT_OF_ORDER")

    def chunks() -> Iterator[bytes]:
        for part in requests:
            if part.WhichOneof("part") != "chunk":
                raise InvalidArgument("UploadModel: send one UploadHeader, then only chunks", field="header", reason="STREAM_OUT_OF_ORDER")
            yield part.chunk

    header = first.header
    return UploadHeader(header.sha256, header.size, header.name), chunks()
