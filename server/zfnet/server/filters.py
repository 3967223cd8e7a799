"""A learned layer's filters (weights) as arrays: what ``zfclient filters`` tiles. Which layers are
learned, where their filters are and how they are laid out is their op registry entry's ``weights``."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from zfnet.converters.index import GraphIndex
from zfnet.errors import InvalidArgument
from zfnet.server.layers import resolve
from zfnet.server.models import LoadedModel
from zfnet.server.rules import weights_of


@dataclass(frozen=True)
class Filters:
    layer: str  # the tensor the learned op produces
    op: str
    weights: np.ndarray  # Conv (out, in/group, kh, kw), ConvTranspose as stored (in, out/group, kh, kw); fully connected (out, in)
    bias: np.ndarray | None  # (out,)
    channel_order: str  # of the image input, from the model's preprocessing ("rgb" when unknown)


def find(model: LoadedModel, layer: str | int) -> Filters:
    """The filters of ``layer``: the learned layer that produces it, or the nearest one before it along
    its block (``--layer 1`` names pool1, whose filters are conv1's)."""
    row = resolve(model.layers, layer)
    index = model.index or GraphIndex(model.model)
    name = row.name
    while True:
        i = index.producers.get(name)
        if i is None:
            raise InvalidArgument(f"layer {row.name!r} has no convolutional or fully connected layer before it")
        node = index.node(i)
        found = weights_of(index, node)
        if found is not None:
            break
        inputs = [n for n in node.input if n and index.constant(n) is None]
        if len(inputs) != 1:
            raise InvalidArgument(f"layer {row.name!r}: {node.label} joins {len(inputs)} inputs; name the convolution itself")
        name = inputs[0]
    stored = index.constant(found.tensor)
    if stored is None:
        raise InvalidArgument(f"layer {row.name!r}: the weights of {node.label} are not known before the image is")
    try:
        weights = found.layout(stored.astype(np.float32))
    except ValueError as err:
        raise InvalidArgument(f"layer {row.name!r}: the weights of {node.label} are not filters: {err}") from None
    bias = index.constant(found.bias) if found.bias else None
    order = json.loads(model.preprocessing_json or "{}").get("channel_order") or "rgb"
    return Filters(node.output[0], node.op_type, np.ascontiguousarray(weights), None if bias is None else bias.astype(np.float32).reshape(-1), order)
