"""Caffe net + weights -> ONNX model: the one place that wires the layer converters together."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from zfnet.converters.caffe import layers as _layers  # noqa: F401  (registers the converters)
from zfnet.converters.caffe import netdef, preprocess, weights as weights_io
from zfnet.converters.caffe.netdef import Layer, NetDef
from zfnet.converters.caffe.registry import Blobs, Builder, Entry, Value, lookup, supported_types
from zfnet.converters.graph import OPSET, SOURCE_KEY, float_tensor_info, prepend_preprocessing, set_classes, set_metadata, set_versions
from zfnet.errors import InvalidArgument, ResourceExhausted, ZfnetError

INPUT = "data"
MAX_AXIS = 1 << 20  # larger axes mean a wrong net definition, and would make conversion allocate too much


def convert(
    net: str | Path,
    weights: str | Path,
    *,
    mean_file: str | Path | None = None,
    mean_value: Sequence[float] | None = None,
    scale: float | None = None,
    channel_order: str | None = None,
    input_size: tuple[int, int] | None = None,
    classes: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """Convert a Caffe prototxt and its ``.caffemodel`` / ``.caffemodel.h5`` weights.

    The graph takes RGB images in 0..255 as ``data`` (N, C, H, W); the preprocessing (channel order,
    mean, scale) is prepended and recorded (see ``zfnet.converters.graph``). Each layer's output is
    the tensor named after the layer. Options override the TEST data layer's ``transform_param``.
    """
    definition = netdef.read(net)
    for layer in definition.layers:
        if lookup(layer.type) is None:
            raise InvalidArgument(
                f"{definition.path}: layer '{layer.name}' has type '{layer.type}', which zfnet cannot convert; "
                f"supported: {', '.join(supported_types())}"
            )
    preprocessing, mean_array, chw = preprocess.resolve(
        definition, mean_file=mean_file, mean_value=mean_value, scale=scale, channel_order=channel_order, input_size=input_size
    )
    image = Value(INPUT, ("N", *chw))
    _check_size(image, f"{definition.path}: input")
    graph = _build(definition, weights_io.load(weights), image)
    model = helper.make_model(graph, producer_name="zfnet.converters.caffe", opset_imports=[helper.make_opsetid("", OPSET)])
    set_versions(model)
    prepend_preprocessing(model, preprocessing, mean_array)
    set_metadata(model, SOURCE_KEY, f"caffe: {Path(net).name} + {Path(weights).name}")
    if classes is not None:
        last = model.graph.output[-1]
        dims = last.type.tensor_type.shape.dim
        if len(dims) > 1 and dims[1].dim_value not in (0, len(classes)):
            raise InvalidArgument(f"{len(classes)} class names for output '{last.name}' with {dims[1].dim_value} channels")
        set_classes(model, classes)
    return _checked(model)


def _build(net: NetDef, stored: weights_io.Weights, image: Value) -> onnx.GraphProto:
    """Run every layer's converter, tracking Caffe top names -> tensors; the unconsumed tensors are the outputs."""
    tensors = {net.input_top: image}
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    produced: list[Value] = []
    consumed: set[str] = set()
    names = {image.name}
    shared: dict[str, np.ndarray] = {}
    for layer in net.layers:
        entry = lookup(layer.type)
        assert entry is not None  # convert() checked every type
        try:
            _check_counts(layer, entry)
            bottoms = [_bottom(tensors, name) for name in layer.bottom]
            builder = Builder(layer)
            blobs = Blobs(_layer_blobs(layer, stored, shared))
            tops = entry.fn(layer, bottoms, blobs, builder)
            blobs.check_all_used()
        except ZfnetError as err:
            raise type(err)(f"{net.path}: layer '{layer.name}' ({layer.type}): {err}") from None
        for top in tops:
            _check_size(top, f"{net.path}: layer '{layer.name}' ({layer.type})")
        new_names = [*(o for n in builder.nodes for o in n.output), *(i.name for i in builder.initializers)]
        clash = next((n for n in new_names if n in names), None)
        if clash is not None:
            raise InvalidArgument(f"{net.path}: layer '{layer.name}' makes tensor '{clash}', which another layer already made; rename one of them")
        names.update(new_names)
        nodes += builder.nodes
        initializers += builder.initializers
        consumed.update(b.name for b in bottoms)
        produced += tops
        tensors.update(zip(layer.top, tops))
    outputs = [v for v in produced if v.name not in consumed]
    if not outputs:
        raise InvalidArgument(f"{net.path}: the net computes nothing from its input")
    return helper.make_graph(
        nodes,
        net.name or "caffe",
        [float_tensor_info(image.name, image.shape)],
        [float_tensor_info(v.name, v.shape) for v in outputs],
        initializer=initializers,
    )


def _check_size(value: Value, where: str) -> None:
    if any(isinstance(d, int) and d > MAX_AXIS for d in value.shape):
        raise ResourceExhausted(f"{where}: shape {value.shape} has an axis over {MAX_AXIS}; is the net definition right?")


def _check_counts(layer: Layer, entry: Entry) -> None:
    for what, have, (low, high) in (("bottom", len(layer.bottom), entry.bottoms), ("top", len(layer.top), entry.tops)):
        if have < low or (high is not None and have > high):
            wanted = str(low) if low == high else f"{low} or more" if high is None else f"{low} to {high}"
            raise InvalidArgument(f"takes {wanted} {what}(s), has {have}")


def _bottom(tensors: dict[str, Value], name: str) -> Value:
    if name not in tensors:
        raise InvalidArgument(f"bottom '{name}' is not made by any earlier layer of the TEST phase")
    return tensors[name]


def _layer_blobs(layer: Layer, stored: weights_io.Weights, shared: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The layer's own blobs; a blob shared by ``param { name }`` comes from the first layer that owns it
    (HDF5 snapshots store shared blobs only there)."""
    own = stored.get(layer.name, [])
    arrays = []
    for i in range(max(len(own), len(layer.param))):
        name = layer.param[i].name if i < len(layer.param) else ""
        if name in shared:
            arrays.append(shared[name])
        elif i < len(own):
            arrays.append(own[i])
            if name:
                shared[name] = own[i]
        else:
            break
    return arrays


def _checked(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference (strict: it must agree with the shapes the converters computed) and the full ONNX check."""
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise InvalidArgument(f"the converted graph is not valid ONNX ({err}); please report this with the prototxt") from None
    return model


def save(model: onnx.ModelProto, path: str | Path) -> None:
    """Write ``model`` to ``path`` atomically (a temporary file in the same folder, then a rename),
    creating the folder if needed."""
    path = Path(path)
    try:
        data = model.SerializeToString()
    except ValueError as err:
        raise ResourceExhausted(f"the model is too large for one ONNX file ({err})") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise InvalidArgument(f"cannot write to {path.parent}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temp, path)
    except OSError as err:
        Path(temp).unlink(missing_ok=True)
        raise InvalidArgument(f"cannot write {path}: {err.strerror}") from None
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
