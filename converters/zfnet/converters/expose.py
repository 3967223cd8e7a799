"""The expose pass: make every layer of any ONNX model readable by name.

1. Tensors are renamed after the layer that produces them: the module path recorded by the
   dynamo-based ``torch.onnx.export`` (``pkg.torch.onnx.name_scopes``), else the producing node's
   name when the tensor's own name says nothing (``123``, ``/conv1/Conv_output_0``).
   The names they had are kept as aliases (metadata ``zfnet.aliases``), so the graph's own output
   name (``logits``) still selects its layer.
2. Every MaxPool (opset 8 and later) gets its ``Indices`` output, ``<layer>.switches``: the max-pool
   switches that a deconvnet unpools through.
3. A float16 or float64 image input becomes a float32 one followed by a Cast, so every model takes
   float32 RGB images in 0..255 (the model itself still runs in its own precision).
4. Every tensor that depends on the image values (activations, switches, the masks a Where reads)
   becomes a graph output with its type and shape; the layer table lists the float ones.

The pass is idempotent, so the server runs it on every model it receives.
"""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zfnet.converters.geometry import window
from zfnet.converters.graph import get_metadata, set_metadata, set_versions
from zfnet.converters.index import GraphIndex
from zfnet.errors import InvalidArgument

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
EXPOSED_KEY = "zfnet.exposed"
ALIASES_KEY = "zfnet.aliases"
SWITCHES_SUFFIX = ".switches"
_NO_LAYER_NAME = {"Constant", "ConstantOfShape", "Shape", "Size", "Range", "NonZero"}  # never name a layer after these
_MEANINGLESS = re.compile(r"^(\d+|onnx::.*|.*_output_\d+|val_\d+)$")


def _module_of(node: onnx.NodeProto) -> str | None:
    """The innermost module path of a node exported by torch.onnx, or None: from the name scopes the
    dynamo exporter records, else from the legacy exporter's node name (``/features/features.1/block/
    block.0/Relu`` is module ``features.1.block.0``: a scope that extends the one before it by
    ``.child`` names that child)."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return str(scopes[-2]) if len(scopes) >= 3 and scopes[0] == "" else None
    segments = node.name.split("/")
    if len(segments) < 3 or segments[0] or not all(segments[1:-1]):
        return None
    path, previous = [], None
    for scope in segments[1:-1]:
        path.append(scope[len(previous) + 1 :] if previous and scope.startswith(previous + ".") else scope)
        previous = scope
    return ".".join(path)


def _layer_names(graph: onnx.GraphProto) -> dict[str, str]:
    """Map old tensor names to layer names: one per module call, else per meaningful node name."""
    renames: dict[str, str] = {}
    used: set[str] = {v.name for v in graph.input} | {i.name for i in graph.initializer}
    calls: dict[str, int] = defaultdict(int)
    nodes = [node for node in graph.node if node.op_type not in _NO_LAYER_NAME]
    for i, node in enumerate(nodes):
        module = _module_of(node)
        recorded = any(p.key == SCOPES_KEY for p in node.metadata_props)  # else read from a node name: keep a meaningful tensor name
        if module and not (i + 1 < len(nodes) and _module_of(nodes[i + 1]) == module):  # a module call's result:
            calls[module] += 1  # the output of the last node of its run
            name = module if calls[module] == 1 else f"{module}:{calls[module]}"
            if not recorded and not _MEANINGLESS.match(node.output[0]):
                continue
        elif node.name and node.op_type not in _NO_LAYER_NAME and _MEANINGLESS.match(node.output[0]):
            name = node.name.strip("/").replace("/", ".")
        else:
            continue
        if name not in used and node.output[0] not in renames:
            renames[node.output[0]] = name
            used.add(name)
    return renames


def _rename(model: onnx.ModelProto, renames: dict[str, str]) -> None:
    graph = model.graph
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(graph.output) + list(graph.value_info):
        value.name = renames.get(value.name, value.name)


def _add_switches(model: onnx.ModelProto) -> None:
    index = GraphIndex(model)
    for node in model.graph.node:
        if node.op_type == "MaxPool" and len(node.output) == 1 and index.opset(node) >= 8:
            node.output.append(node.output[0] + SWITCHES_SUFFIX)


def _float32_input(model: onnx.ModelProto) -> None:
    """A float16/float64 image input: the graph takes float32 and casts it to its own type first."""
    graph = model.graph
    index = GraphIndex(model)
    for name in index.inputs:
        value = next(v for v in graph.input if v.name == name)
        elem = value.type.tensor_type.elem_type
        if elem not in (TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16):
            continue
        cast = f"{name}.{TensorProto.DataType.Name(elem).lower()}"
        for node in graph.node:
            node.input[:] = [cast if n == name else n for n in node.input]
        graph.node.insert(0, helper.make_node("Cast", [name], [cast], name=cast, to=elem))
        value.type.tensor_type.elem_type = TensorProto.FLOAT


def _fold_static(model: onnx.ModelProto, inferred: GraphIndex) -> bool:
    """Replace what the image-dependent nodes read from shape arithmetic (``Shape -> Gather -> Div
    -> Slice`` chains of exporters) by its value where the shapes are static, so that shape inference
    sees constants; drop the shape arithmetic left without readers. True if anything was folded."""
    graph = model.graph
    constants = {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    read = {name for node in graph.node if any(i in inferred.live for i in node.input) for name in node.input}
    folded = {}
    for name in read - inferred.live - constants - {""}:
        value = inferred.constant(name)
        if value is not None:
            folded[name] = value
    if not folded:
        return False
    graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v), name) for name, v in folded.items())
    while True:
        needed = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node
                if not any(o in inferred.live or (o in needed and o not in folded) for o in node.output if o)]
        if not dead:
            return True
        for node in dead:
            graph.node.remove(node)


def _onnxruntime_pool_size(node: onnx.NodeProto, in_spatial: list) -> tuple[list[int], bool] | None:
    """For a ceil-mode pool with explicit pads: onnxruntime's output size, and whether it is below
    ONNX's (the last window would start in the end padding; onnxruntime, like PyTorch, drops it);
    None if the node is not such a pool or a size is unknown."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("ceil_mode", 0) != 1 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    if len(in_spatial) != len(attrs["kernel_shape"]) or not all(isinstance(d, int) and d > 0 for d in in_spatial):
        return None
    win = window(attrs, in_spatial)
    sizes = win.output_size(in_spatial)
    return sizes, sizes != win.output_size(in_spatial, keep_padding_window=True)


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference with onnxruntime's ceil-mode pooling sizes.

    Before opset 22, ONNX infers a ceil-mode MaxPool/AveragePool output one larger than onnxruntime
    computes when the last window would start in the end padding (2x2/2 with pad 1 on 7 pixels: 5
    against 4). So inference runs on a copy where each ceil-mode pool is replaced, for its shape only,
    by a floor-mode pool of onnxruntime's size (same begin pads and strides, no end pads, the kernel
    that fits), upstream first, inferring again after each size that changes.
    """
    surrogate = onnx.ModelProto.FromString(model.SerializeToString())
    done: set[int] = set()
    while True:
        inferred = onnx.shape_inference.infer_shapes(surrogate, strict_mode=True, data_prop=True)
        infos = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
        shapes = {v.name: tensor_shape(v) for v in infos}
        for i, node in enumerate(surrogate.graph.node):
            if node.op_type not in ("MaxPool", "AveragePool") or i in done:
                continue
            done.add(i)
            in_spatial = shapes.get(node.input[0], [])[2:]
            size = _onnxruntime_pool_size(node, in_spatial)
            if size is None:
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            rank = len(in_spatial)
            begins, strides = list(attrs.get("pads", [0] * 2 * rank))[:rank], attrs.get("strides", [1] * rank)
            kernel = [n + b - (o - 1) * s for n, b, o, s in zip(in_spatial, begins, size[0], strides)]
            del node.attribute[:]
            node.attribute.extend(
                helper.make_attribute(k, v) for k, v in {"kernel_shape": kernel, "strides": strides, "pads": begins + [0] * rank}.items()
            )
            if size[1]:
                break  # downstream shapes are stale
        else:
            return inferred


def expose(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with layer-named intermediates and switches as graph outputs."""
    return expose_indexed(model)[0]


def expose_indexed(model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphIndex]:
    """:func:`expose`, and the graph index of the exposed model (for the layer table, the receptive
    fields and the projection builder)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    set_versions(model)
    if get_metadata(model, EXPOSED_KEY) != "1":
        renames = _layer_names(model.graph)
        _rename(model, renames)
        set_metadata(model, ALIASES_KEY, json.dumps(renames))
        _add_switches(model)
        _float32_input(model)
    try:
        inferred = _infer_shapes(model)
        while _fold_static(model, GraphIndex(inferred)):
            inferred = _infer_shapes(model)
    except onnx.shape_inference.InferenceError as err:
        raise InvalidArgument(f"ONNX shape inference failed on this model: {err}") from None
    graph = model.graph
    types = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    outputs = {o.name for o in graph.output}
    for output in graph.output:  # a declared output may lack the shape that inference found
        info = types.get(output.name)
        if info is not None and info.type.tensor_type.HasField("shape"):
            output.type.CopyFrom(info.type)
    live = GraphIndex(model).live
    for node in graph.node:
        for name in node.output:
            info = types.get(name)
            if not name or name in outputs or info is None:
                continue
            if (name in live or name.endswith(SWITCHES_SUFFIX)) and len(info.type.tensor_type.shape.dim) >= 1:
                graph.output.append(info)
                outputs.add(name)
    del graph.value_info[:]
    graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in outputs)
    set_metadata(model, EXPOSED_KEY, "1")
    return model, GraphIndex(model)


def tensor_shape(info: onnx.ValueInfoProto) -> list[int | str]:
    """Dimensions of a value info: ints, or the symbolic name (``"N"``) where not fixed."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in info.type.tensor_type.shape.dim]

