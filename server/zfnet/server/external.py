"""ONNX external data: which tensors of a model keep their values in files the model names.

The server never lets onnxruntime open a file a model names: uploads and entries of the
prepared-model cache with any external tensor are refused, and ``--model-dir`` models may name only
files inside their directory (:func:`zfnet.server.models.inline_external_data`)."""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from zfnet.wire.models import EXTERNAL_DATA_MARK


def tensors(message) -> Iterator[onnx.TensorProto]:
    """Every TensorProto inside an ONNX message (initializers, Constant and attribute tensors, sparse
    tensors, subgraphs, functions, training info); never reads tensor bytes."""
    if isinstance(message, onnx.TensorProto):
        yield message
        return
    for fd in message.DESCRIPTOR.fields:
        if fd.message_type is None:
            continue
        if fd.is_repeated:
            for item in getattr(message, fd.name):
                yield from tensors(item)
        elif message.HasField(fd.name):
            yield from tensors(getattr(message, fd.name))


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0


def external(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of ``model`` that keep their values in external files."""
    return [t for t in tensors(model) if is_external(t)]


def may_name_files(data: bytes | bytearray) -> bool:
    """Whether a serialised model may name the files of external data, without parsing it: a tensor
    names its file in a ``location`` entry, so bytes without that word name none. (A tensor marked
    external without one is refused wherever it comes from, so such bytes are never prepared.)"""
    return EXTERNAL_DATA_MARK in data


def location(tensor: onnx.TensorProto) -> str:
    """The file an external tensor names ("" when none)."""
    return next((e.value for e in tensor.external_data if e.key == "location"), "")
