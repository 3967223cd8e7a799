"""Shared ONNX plumbing for the converters: versions, preprocessing at the input, model metadata.

Convention (every zfnet model): the graph input is a float32 (N, 3, H, W) batch of **RGB images in
0..255**. Whatever the network was trained on (BGR order, mean subtraction, scaling) is done by
nodes at the start of the graph (named ``preprocess/...``), and described in the metadata property
``zfnet.preprocessing`` (JSON) for people and tools, with the framing (resize, centre crop) that
whoever decodes an image does before the graph (:mod:`zfnet.preprocessing`). So bare onnxruntime,
the server and every zfnet call agree on the input, and reconstructions come back in image space.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zfnet.errors import InvalidArgument
from zfnet.preprocessing import Preprocessing  # noqa: F401  (what the metadata records; the core defines it, the client reads it)

OPSET = 18  # ScatterElements with reduction="add" (the unpooling rule) needs 16+
IR_VERSION = 10  # onnx 1.23 stamps 14; onnxruntime 1.31 accepts at most 13

PREPROCESSING_KEY = "zfnet.preprocessing"
CLASSES_KEY = "zfnet.classes"
SOURCE_KEY = "zfnet.source"
MEAN_INITIALIZER = "preprocess/mean_value"  # the mean prepend_preprocessing subtracts, (1, C, 1, 1) or (1, C, H, W)


def set_versions(model: onnx.ModelProto, opset: int = OPSET) -> onnx.ModelProto:
    """Stamp the IR version onnxruntime accepts and, where missing, the default-domain opset."""
    model.ir_version = IR_VERSION
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("", opset))
    return model


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set (or replace) one ``metadata_props`` entry."""
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def get_metadata(model: onnx.ModelProto, key: str) -> str | None:
    """One ``metadata_props`` value, or None."""
    return next((p.value for p in model.metadata_props if p.key == key), None)


def set_classes(model: onnx.ModelProto, classes: Sequence[str]) -> None:
    """Record the class names in output order."""
    set_metadata(model, CLASSES_KEY, json.dumps(list(classes)))


def prepend_preprocessing(
    model: onnx.ModelProto,
    preprocessing: Preprocessing,
    mean_array: np.ndarray | None = None,
    input_name: str | None = None,
) -> onnx.ModelProto:
    """Insert ``preprocess/...`` nodes between the graph input and its consumers, in place.

    ``mean_array`` (C, H, W or C) overrides ``preprocessing.mean`` for per-pixel means. The graph's
    input keeps its name and now takes RGB images in 0..255.
    """
    graph = model.graph
    initializer_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializer_names]
    source = input_name or inputs[0].name
    channels = inputs[0].type.tensor_type.shape.dim[1].dim_value or 3
    current = source
    nodes: list[onnx.NodeProto] = []

    def add(op: str, extra: list[str], name: str, **attrs) -> None:
        nonlocal current
        out = f"preprocess/{name}"
        nodes.append(helper.make_node(op, [current, *extra], [out], name=out, **attrs))
        current = out

    if preprocessing.channel_order == "bgr":
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "preprocess/bgr_index"))
        add("Gather", ["preprocess/bgr_index"], "bgr", axis=1)
    mean = mean_array if mean_array is not None else (np.asarray(preprocessing.mean, np.float32) if preprocessing.mean else None)
    if mean is not None:
        mean = np.asarray(mean, np.float32)
        mean = mean.reshape(1, channels, 1, 1) if mean.ndim == 1 else mean.reshape(1, *mean.shape)
        graph.initializer.append(numpy_helper.from_array(mean, MEAN_INITIALIZER))
        add("Sub", [MEAN_INITIALIZER], "mean")
    scale = np.asarray(preprocessing.scale, np.float32)
    if not np.all(scale == 1.0):
        scale = scale.reshape(1, -1, 1, 1) if scale.size > 1 else scale.reshape(())
        graph.initializer.append(numpy_helper.from_array(scale, "preprocess/scale_value"))
        add("Mul", ["preprocess/scale_value"], "scale")
    if current != source:
        for node in graph.node:
            node.input[:] = [current if name == source else name for name in node.input]
        old = list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes + old)
    set_metadata(model, PREPROCESSING_KEY, preprocessing.to_json())
    return model


def float_tensor_info(name: str, shape: Sequence[int | str | None]) -> onnx.ValueInfoProto:
    """A float32 value info with symbolic (str/None) or fixed dimensions."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def image_input(model: onnx.ModelProto) -> tuple[str, tuple[int, int]]:
    """The name and (H, W) of a model's image input, which must be (N, C, H, W) with H and W fixed."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise InvalidArgument(f"the model must have one input (an image batch); it has {[v.name for v in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not dims[2] or not dims[3]:
        raise InvalidArgument(f"the model's input {inputs[0].name!r} must be (N, C, H, W) with fixed H and W")
    return inputs[0].name, (dims[2], dims[3])


def attach_preprocessing(model: onnx.ModelProto, preprocessing: Preprocessing) -> onnx.ModelProto:
    """Give a model that records no normalisation the preprocessing it was trained with, in place: the
    normalisation as ``preprocess/...`` nodes at its input, the whole recorded in its metadata."""
    recorded = get_metadata(model, PREPROCESSING_KEY)
    if recorded is not None and Preprocessing.from_json(recorded).normalises:
        raise InvalidArgument(f"the model already records its preprocessing ({recorded}); attach it only to a model that records none")
    name, size = image_input(model)
    if preprocessing.input_size not in (None, size):
        raise InvalidArgument(f"the preprocessing is for {preprocessing.input_size} images; the model takes {size}")
    preprocessing.input_size = size
    return prepend_preprocessing(model, preprocessing, input_name=name)
