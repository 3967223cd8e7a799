"""A held model's large weights left on disk: the graph the server keeps in Python holds its large
initializers without their bytes, and a graph that needs them (a session to some tensors, a
projection's filters, the Caffe mean) reads them back from the serialised exposed model in the
prepared-model cache, where they lie as each initializer's ``raw_data`` field. onnxruntime reads
that same file for the model's session, so no Python copy of the weights is made at load (VGG16:
553 MB held, and 553 more serialised for each session build).

The file is opened once and kept open: an entry trimmed from the cache (or rewritten) while its
model is held stays readable through the open file. Where the cache cannot be written the model
keeps its weights in Python, as before."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from zfnet.converters.index import EVALUATED_ELEMENTS

# field numbers of onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto.name and .raw_data
MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_NAME, TENSOR_RAW_DATA = 7, 5, 8, 9
LENGTH_DELIMITED = 2


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end of its value) of each field of the message in data[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            after = _varint(data, pos)[1]
        elif wire == 1:
            after = pos + 8
        elif wire == LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            after = pos + length
        elif wire == 5:
            after = pos + 4
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {pos}")
        yield number, wire, pos, after
        pos = after


def raw_data_spans(data: bytes | memoryview) -> dict[str, tuple[int, int]]:
    """(offset, length) in a serialised ModelProto of each main-graph initializer's ``raw_data``,
    by name; names given to several initializers are left out."""
    spans: dict[str, tuple[int, int]] = {}
    seen: set[str] = set()
    for number, wire, start, end in _fields(data, 0, len(data)):
        if number != MODEL_GRAPH or wire != LENGTH_DELIMITED:
            continue
        for inner, kind, first, last in _fields(data, start, end):
            if inner != GRAPH_INITIALIZER or kind != LENGTH_DELIMITED:
                continue
            name, raw = None, None
            for field, form, lo, hi in _fields(data, first, last):
                if field == TENSOR_NAME and form == LENGTH_DELIMITED:
                    name = bytes(data[lo:hi]).decode()
                elif field == TENSOR_RAW_DATA and form == LENGTH_DELIMITED:
                    raw = (lo, hi - lo)
            if name is not None and raw is not None:
                if name in seen:
                    spans.pop(name, None)
                else:
                    spans[name] = raw
                seen.add(name)
    return spans


class StoredWeights:
    """The large initializers of a serialised model, read back from its file (kept open) by name."""

    def __init__(self, path: Path, data: bytes | memoryview) -> None:
        """``data``: the bytes of the file at ``path``, as they were read or written."""
        self.path = path
        self._spans = raw_data_spans(data)
        self._file = path.open("rb")
        if os.fstat(self._file.fileno()).st_size != len(data):
            self._file.close()
            raise OSError(f"{path} changed since it was read")

    def stripped(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of ``model`` (the model serialised in this file) without the bytes of its
        initializers that are larger than the graph index ever evaluates through
        (:data:`~zfnet.converters.index.EVALUATED_ELEMENTS`); the others stay in the graph. A copy:
        protobuf keeps a message's cleared bytes until the whole message goes, so ``model`` is
        emptied and its caller lets go of it."""
        kept = {}
        for tensor in model.graph.initializer:
            span = self._spans.get(tensor.name)
            if span is not None and math.prod(tensor.dims) > EVALUATED_ELEMENTS and len(tensor.raw_data) == span[1]:
                tensor.ClearField("raw_data")
                kept[tensor.name] = span
        self._spans = kept
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
