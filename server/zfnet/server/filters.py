"""A learned layer's filters (weights) as arrays: what ``zfclient filters`` tiles."""

from __future__ import annotations

import json

import numpy as np

from zfnet.converters.index import GraphIndex
from zfnet.errors import InvalidArgument
from zfnet.server.layers import resolve
from zfnet.server.models import LoadedModel
from zfnet.wire.filters import Filters

LEARNED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def find(model: LoadedModel, layer: str | int) -> Filters:
    """The filters of ``layer``: the learned op that produces it, or the nearest one before it along its
    block (``--layer 1`` names pool1, whose filters are conv1's)."""
    row = resolve(model.layers, layer)
    index = model.index or GraphIndex(model.model)
    name = row.name
    while True:
        i = index.producers.get(name)
        if i is None:
            raise InvalidArgument(f"layer {row.name!r} has no convolutional or fully connected layer before it")
        node = index.node(i)
        if node.op_type in LEARNED_OPS and len(node.input) > 1 and index.constant(node.input[1]) is not None:
            break
        inputs = [n for n in node.input if n and index.constant(n) is None]
        if len(inputs) != 1:
            raise InvalidArgument(f"layer {row.name!r}: {node.label} joins {len(inputs)} inputs; name the convolution itself")
        name = inputs[0]
    weights = index.constant(node.input[1]).astype(np.float32)
    if node.op_type == "MatMul" or (node.op_type == "Gemm" and not node.attrs.get("transB", 0)):
        weights = weights.T
    bias = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    order = json.loads(model.preprocessing_json or "{}").get("channel_order") or "rgb"
    return Filters(node.output[0], node.op_type, np.ascontiguousarray(weights), None if bias is None else bias.astype(np.float32).reshape(-1), order)
