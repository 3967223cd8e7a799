"""A held model's large weights left on disk: the graph the server keeps in Python holds its large
initializers without their bytes, and a graph that needs them (a session to some tensors, a
projection's filters, the Caffe mean) reads them back from the serialised exposed model in the
prepared-model cache, where they lie as each initializer's ``raw_data`` field. onnxruntime reads
that same file for the model's session, so no Python copy of the weights is made at load (VGG16:
553 MB held, and 553 more serialised for each session build).

Neither writing nor reading an entry makes a whole serialised copy: :func:`write` streams the model
to its file, serialising everything but the large ``raw_data`` fields and writing those bytes in
their places one tensor at a time (protobuf's wire format: length prefixes computed, fields in
number order, so the file is byte for byte ``SerializeToString()``), and :meth:`StoredWeights.read`
parses a skeleton of the file (its bytes without those fields, length prefixes rewritten).

The file is opened once and kept open: an entry trimmed from the cache (or rewritten) while its
model is held stays readable through the open file. Where the cache cannot be written the model
keeps its weights in Python, as before."""

from __future__ import annotations

import hashlib
import math
import mmap
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet
from onnx import numpy_helper

from zfnet.converters.index import EVALUATED_ELEMENTS

# field numbers of onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto.raw_data
MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_RAW_DATA = 7, 5, 9
LENGTH_DELIMITED = 2
MAX_SERIALISED = (1 << 31) - 1  # protobuf's limit: a model over 2 GiB cannot be written (nor parsed)
# bytes per element of the types whose raw_data is left on disk (packed 4-bit types and strings stay)
ITEMSIZE: dict[int, int] = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1, onnx.TensorProto.INT16: 2, onnx.TensorProto.UINT16: 2,
    onnx.TensorProto.INT32: 4, onnx.TensorProto.UINT32: 4, onnx.TensorProto.INT64: 8, onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.BOOL: 1,
}

Span = tuple[int, int]  # (offset, length) of an initializer's raw_data in a serialised model
Piece = bytes | onnx.TensorProto  # a model's bytes as written: serialised bytes, or a tensor's raw_data


def _varint(data: bytes | mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise ValueError(f"a varint runs past byte {end}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encoded(value: int) -> bytes:
    """``value`` as a protobuf varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out) + bytes([value])


def _prefix(number: int, length: int) -> bytes:
    """The key and length of a length-delimited field."""
    return _encoded(number << 3 | LENGTH_DELIMITED) + _encoded(length)


def _fields(data: bytes | mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of its key, start and end of its value) of each field of the
    message in data[start:end]; ValueError where a field runs past the message."""
    pos = start
    while pos < end:
        key = pos
        tag, pos = _varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            after = _varint(data, pos, end)[1]
        elif wire == 1:
            after = pos + 8
        elif wire == LENGTH_DELIMITED:
            length, pos = _varint(data, pos, end)
            after = pos + length
        elif wire == 5:
            after = pos + 4
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {key}")
        if after > end:
            raise ValueError(f"field {number} at byte {key} runs past its message (byte {end})")
        yield number, wire, key, pos, after
        pos = after


def raw_size(tensor: onnx.TensorProto) -> int | None:
    """The length of ``raw_data`` of an initializer whose bytes are left on disk: more elements than
    the graph index ever evaluates through (:data:`~zfnet.converters.index.EVALUATED_ELEMENTS`), of
    a fixed-size type, no fields this onnx does not know; None for any other (it keeps its bytes)."""
    elements = math.prod(tensor.dims)
    if elements <= EVALUATED_ELEMENTS or tensor.data_type not in ITEMSIZE or len(UnknownFieldSet(tensor)):
        return None
    return elements * ITEMSIZE[tensor.data_type]


def _unique(spans: list[tuple[str, Span]]) -> dict[str, Span]:
    """The spans by name; names given to several initializers are left out."""
    names = Counter(name for name, _ in spans)
    return {name: span for name, span in spans if names[name] == 1}


# -- writing ---------------------------------------------------------------------------------------
def _shell(message: Message, left_out: str) -> Message:
    """A copy of ``message`` without its field ``left_out``, which is never read (no copy of its bytes)."""
    shell = type(message)()
    for field in message.DESCRIPTOR.fields:
        if field.name == left_out:
            continue
        if field.is_repeated:
            getattr(shell, field.name).extend(getattr(message, field.name))
        elif not message.HasField(field.name):
            continue
        elif field.message_type is not None:
            getattr(shell, field.name).CopyFrom(getattr(message, field.name))
        else:
            setattr(shell, field.name, getattr(message, field.name))
    return shell


def _around(message: Message, number: int, inside: list[Piece]) -> list[Piece]:
    """The pieces of ``message`` serialised, its field ``number`` (left out of it) being ``inside``:
    fields are serialised in number order, so they go before the first field numbered above it."""
    shell = _shell(message, message.DESCRIPTOR.fields_by_number[number].name).SerializeToString()
    cut = next((key for field, _, key, _, _ in _fields(shell, 0, len(shell)) if field > number), len(shell))
    return [shell[:cut], *inside, shell[cut:]]


def _length(pieces: list[Piece]) -> int:
    return sum(len(piece) if isinstance(piece, bytes) else raw_size(piece) or 0 for piece in pieces)


def _initializer(tensor: onnx.TensorProto) -> list[Piece]:
    """One initializer as a field of its graph: its raw_data a piece of its own when it is left on disk."""
    size = raw_size(tensor) if tensor.HasField("raw_data") else None
    body: list[Piece] = [tensor.SerializeToString()] if size is None else _around(tensor, TENSOR_RAW_DATA, [_prefix(TENSOR_RAW_DATA, size), tensor])
    return [_prefix(GRAPH_INITIALIZER, _length(body)), *body]


def _pieces(model: onnx.ModelProto) -> list[Piece]:
    """``model.SerializeToString()`` in pieces, the large raw_data fields not serialised; one piece
    when the model or its graph has fields this onnx does not know (a shell would lose them)."""
    if not model.HasField("graph") or len(UnknownFieldSet(model)) or len(UnknownFieldSet(model.graph)):
        return [model.SerializeToString()]
    graph = _around(model.graph, GRAPH_INITIALIZER, [piece for tensor in model.graph.initializer for piece in _initializer(tensor)])
    return _around(model, MODEL_GRAPH, [_prefix(MODEL_GRAPH, _length(graph)), *graph])


def write(model: onnx.ModelProto, file: BinaryIO) -> tuple[dict[str, Span], str]:
    """Stream ``model`` serialised into ``file``, each large initializer's bytes written from its
    tensor (one tensor's bytes in memory at a time): where they are, and the SHA-256 of what was
    written. ValueError, before anything is written, for a model over 2 GiB."""
    pieces = _pieces(model)
    if (total := _length(pieces)) > MAX_SERIALISED:
        raise ValueError(f"the model serialised is {total} bytes, over protobuf's 2 GiB")
    digest, offset, spans = hashlib.sha256(), 0, []
    for piece in pieces:
        if isinstance(piece, bytes):
            data = piece
        else:
            data = piece.raw_data
            if len(data) != raw_size(piece):
                raise ValueError(f"initializer {piece.name!r} has {len(data)} bytes of raw_data for its {raw_size(piece)}")
            spans.append((piece.name, (offset, len(data))))
        digest.update(data)
        file.write(data)
        offset += len(data)
        del data  # this tensor's copy goes before the next one is made
    file.flush()
    return _unique(spans), digest.hexdigest()


# -- reading ---------------------------------------------------------------------------------------
def _left_on_disk(data: bytes | mmap.mmap, start: int, end: int) -> tuple[str, int, int, int] | None:
    """For the initializer in data[start:end] whose raw_data is left on disk: its name, the start of
    its raw_data field's key, and the start and end of its bytes; else None."""
    raws = [(key, first, last) for number, wire, key, first, last in _fields(data, start, end) if number == TENSOR_RAW_DATA and wire == LENGTH_DELIMITED]
    if len(raws) != 1:
        return None
    key, first, last = raws[0]
    head = onnx.TensorProto.FromString(data[start:key] + data[last:end])
    return (head.name, key, first, last) if raw_size(head) == last - first else None


def skeleton(data: bytes | mmap.mmap) -> tuple[bytes, dict[str, Span]]:
    """The serialised model in ``data`` without the raw_data of the initializers left on disk (the
    length prefixes of their tensors and graphs rewritten), and where those bytes are in ``data``.
    ValueError where a field runs past its message."""
    large = {}  # by the start of the tensor in data
    for number, wire, _, start, end in _fields(data, 0, len(data)):
        if number == MODEL_GRAPH and wire == LENGTH_DELIMITED:
            for inner, kind, _, first, last in _fields(data, start, end):
                if inner == GRAPH_INITIALIZER and kind == LENGTH_DELIMITED and (found := _left_on_disk(data, first, last)):
                    large[first] = found
    spans = _unique([(name, (first, last - first)) for name, _, first, last in large.values()])
    out = bytearray()
    for number, wire, key, start, end in _fields(data, 0, len(data)):
        if number != MODEL_GRAPH or wire != LENGTH_DELIMITED:
            out += data[key:end]
            continue
        graph = bytearray()
        for inner, kind, field, first, last in _fields(data, start, end):
            found = large.get(first) if inner == GRAPH_INITIALIZER and kind == LENGTH_DELIMITED else None
            if found is not None and found[0] in spans:
                _, raw_key, _, raw_end = found
                tensor = data[first:raw_key] + data[raw_end:last]
                graph += _prefix(GRAPH_INITIALIZER, len(tensor)) + tensor
            else:
                graph += data[field:last]
        out += _prefix(MODEL_GRAPH, len(graph)) + graph
    return bytes(out), spans


class StoredWeights:
    """The large initializers of a serialised model, read back from its file (kept open) by name."""

    def __init__(self, path: Path, file: BinaryIO, spans: dict[str, Span]) -> None:
        """``file``: the file at ``path`` as it was written or verified; ``spans``: where the bytes of
        its large initializers are."""
        self.path, self._file, self._spans = path, file, spans

    @classmethod
    def read(cls, path: Path, file: BinaryIO) -> tuple[onnx.ModelProto, StoredWeights]:
        """The model serialised in ``file`` without the bytes of its large initializers (a skeleton
        of the file parsed: the model never holds them), and those weights. ValueError or
        DecodeError where the file is not such a model."""
        if os.fstat(file.fileno()).st_size == 0:
            raise ValueError(f"{path} is empty")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            bones, spans = skeleton(data)
        return onnx.ModelProto.FromString(bones), cls(path, file, spans)

    def close(self) -> None:
        self._file.close()

    def stripped(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of ``model`` (the model serialised in this file) without the bytes of the
        initializers left on disk (:func:`raw_size`); the others stay in the graph. A copy:
        protobuf keeps a message's cleared bytes until the whole message goes, so ``model`` is
        emptied and its caller lets go of it."""
        for tensor in model.graph.initializer:
            if tensor.name in self._spans:
                tensor.ClearField("raw_data")
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy

    def _raw(self, name: str) -> bytes:
        offset, length = self._spans[name]
        raw = os.pread(self._file.fileno(), length, offset)
        if len(raw) != length:
            raise OSError(f"{self.path}: {name!r} is cut short ({len(raw)} of {length} bytes)")
        return raw

    def array(self, tensor: onnx.TensorProto) -> np.ndarray | None:
        """The value of an initializer whose bytes were stripped, else None (it holds its own)."""
        if tensor.name not in self._spans or tensor.HasField("raw_data"):
            return None
        whole = onnx.TensorProto()
        whole.CopyFrom(tensor)
        whole.raw_data = self._raw(tensor.name)
        return numpy_helper.to_array(whole)

    def restore(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """``model`` (a graph made from the stripped one: a part of it) with the bytes of its stripped initializers put back."""
        for tensor in model.graph.initializer:
            if tensor.name in self._spans and not tensor.HasField("raw_data"):
                tensor.raw_data = self._raw(tensor.name)
        return model
