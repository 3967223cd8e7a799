"""The expose pass: make every layer of any ONNX model readable by name.

1. Tensors are renamed after what computes them, from the module paths torch.onnx records (the
   dynamo exporter's ``pkg.torch.onnx.name_scopes``, the legacy exporter's node names): a module's
   output (the last tensor of a run of nodes inside it) is named after the module, so ``layer3.5``,
   ``Mixed_6e`` or ``blocks.7`` is the block's output, never a same-shaped tensor inside it; a
   tensor that is the output of several nested modules gets the outermost one's name, and the
   others are recorded (metadata ``zfnet.modules``); a tensor computed inside a module that is not
   its output is named after the module and its op (``Mixed_6e.avg_pool2d``) and recorded as
   internal (``zfnet.internal``); any other tensor after its node's name where its own name says
   nothing (``123``, ``/conv1/Conv_output_0``). The names they had are kept as aliases (metadata
   ``zfnet.aliases``), so the graph's own output name still selects its layer.
2. Every node whose op registry entry names a switches output (``MaxPool`` from opset 8: its
   ``Indices``) gets it, ``<layer>.switches``: the max-pool switches that a deconvnet unpools through.
3. A float16, bfloat16 or float64 image input becomes a float32 one followed by a Cast, so every
   model takes float32 RGB images in 0..255 (the model itself still runs in its own precision).
4. Every tensor that depends on the image values (activations, switches, the masks a Where reads)
   becomes a graph output with its type and shape; the layer table lists the float ones.

The pass is idempotent, so the server runs it on every model it receives.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zfnet.converters.graph import get_metadata, set_metadata, set_versions
from zfnet.converters.index import EVALUATED_ELEMENTS, GraphIndex, entry_of, opsets_of
from zfnet.errors import InvalidArgument
from zfnet.server.rules import FLOAT_TYPES

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
EXPOSED_KEY = "zfnet.exposed"
ALIASES_KEY = "zfnet.aliases"
MODULES_KEY = "zfnet.modules"  # layer name -> the module calls whose output it is (JSON)
INTERNAL_KEY = "zfnet.internal"  # layer names of tensors inside a module that are not its output (JSON list)
SWITCHES_SUFFIX = ".switches"
_NO_LAYER_NAME = {"Constant", "ConstantOfShape", "Shape", "Size", "Range", "NonZero"}  # never name a layer after these
_MEANINGLESS = re.compile(r"^(\d+|onnx::.*|.*_output_\d+|val_\d+)$")
Message = TypeVar("Message", onnx.ModelProto, onnx.GraphProto)


def _chain(node: onnx.NodeProto) -> tuple[list[str], str]:
    """The module paths a node exported by torch.onnx runs inside, outermost first, and the node's
    own name within its innermost module: from the name scopes the dynamo exporter records, else from
    the legacy exporter's node name (``/features/features.1/block/block.0/Relu`` runs inside
    ``features``, ``features.1``, ``features.1.block``, ``features.1.block.0``: a scope that extends
    the one before it by ``.child`` names that child). ``([], "")`` for a node of no module."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return [], ""
            if len(scopes) < 3 or scopes[0] != "":
                return [], ""
            return [str(s) for s in scopes[1:-1]], str(scopes[-1])
    segments = node.name.split("/")
    if len(segments) < 3 or segments[0] or not all(segments[1:-1]):
        return [], ""
    path: list[str] = []
    chain, previous = [], None
    for scope in segments[1:-1]:
        path.append(scope[len(previous) + 1 :] if previous and scope.startswith(previous + ".") else scope)
        previous = scope
        chain.append(".".join(path))
    return chain, node.op_type


@dataclass
class Naming:
    """What the expose pass calls the tensors of a model exported by torch.onnx."""

    renames: dict[str, str] = field(default_factory=dict)  # old tensor name -> layer name
    modules: dict[str, list[str]] = field(default_factory=dict)  # layer name -> the module calls it is the output of, outermost first
    internal: list[str] = field(default_factory=list)  # layer names of tensors computed inside a module that are not its output


def _module_outputs(nodes: list[onnx.NodeProto], chains: list[list[str]]) -> dict[str, list[str]]:
    """Tensor -> the module calls whose output it is, outermost first. A call of module ``m`` is a run
    of consecutive nodes inside ``m``; its output is the output of the run's last node (``m`` for the
    first call, ``m:2`` for the second ...)."""
    calls: dict[str, int] = defaultdict(int)
    outputs: dict[str, list[str]] = {}
    for i, (node, chain) in enumerate(zip(nodes, chains)):
        after = set(chains[i + 1]) if i + 1 < len(nodes) else set()
        for module in chain:
            if module not in after:
                calls[module] += 1
                outputs.setdefault(node.output[0], []).append(module if calls[module] == 1 else f"{module}:{calls[module]}")
    return outputs


def _layer_names(model: onnx.ModelProto) -> Naming:
    """Name each tensor that depends on the image after what computes it: a module's output after the
    module (the outermost one whose output it is; the others are recorded), a tensor inside a module
    after that module and its op (``Mixed_6e.avg_pool2d``, ``layer3.5.Add``), any other after its
    node's name where the tensor's own name says nothing."""
    graph = model.graph
    live = GraphIndex(model).live
    nodes = [node for node in graph.node if node.op_type not in _NO_LAYER_NAME and node.output and node.output[0] in live]
    chains, leaves = zip(*(_chain(node) for node in nodes)) if nodes else ((), ())
    outputs = _module_outputs(nodes, list(chains))
    naming = Naming()
    used: set[str] = {v.name for v in graph.input} | {i.name for i in graph.initializer}
    for node, chain, leaf in zip(nodes, chains, leaves):
        old = node.output[0]
        recorded = any(p.key == SCOPES_KEY for p in node.metadata_props)
        keep = not recorded and not _MEANINGLESS.match(old)  # a name given at export (legacy exporter) stays
        calls = outputs.get(old, [])
        if calls:
            name = old if keep else next((c for c in calls if c not in used), None)
            if name is None:
                continue
            naming.modules[name] = calls
        elif chain:
            name = old if keep else _unused(f"{chain[-1]}.{leaf}", used)
            naming.internal.append(name)
        elif node.name and _MEANINGLESS.match(old):
            name = _unused(node.name.strip("/").replace("/", "."), used)
        else:
            continue
        used.add(name)
        if name != old:
            naming.renames[old] = name
    return naming


def _unused(name: str, used: set[str]) -> str:
    """``name``, or ``name:2``, ``name:3`` ... the first not taken."""
    k, candidate = 1, name
    while candidate in used:
        k += 1
        candidate = f"{name}:{k}"
    return candidate


def _rename(model: onnx.ModelProto, renames: dict[str, str]) -> None:
    graph = model.graph
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(graph.output) + list(graph.value_info):
        value.name = renames.get(value.name, value.name)


def _add_switches(model: onnx.ModelProto) -> None:
    opsets = opsets_of(model)
    for node in model.graph.node:
        entry = entry_of(node, opsets)
        position = entry.switches if entry is not None else None
        if position is None or (len(node.output) > position and node.output[position]):
            continue
        outputs = [*node.output, *[""] * (position + 1 - len(node.output))]
        outputs[position] = node.output[0] + SWITCHES_SUFFIX
        node.output[:] = outputs


def _float32_input(model: onnx.ModelProto) -> None:
    """A float16/float64 image input: the graph takes float32 and casts it to its own type first."""
    graph = model.graph
    index = GraphIndex(model)
    for name in index.inputs:
        value = next(v for v in graph.input if v.name == name)
        elem = value.type.tensor_type.elem_type
        if elem not in FLOAT_TYPES or elem == TensorProto.FLOAT:
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


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference, with the sizes onnxruntime computes where they differ.

    Inference runs on a copy without the bytes of the large weights (:func:`_weightless`): onnx
    serialises the model it infers and parses the result, so VGG16's 553 MB were copied four times.
    Where ONNX infers another output size than onnxruntime runs (an entry's ``stand_in``: ceil-mode
    pooling before opset 22), each such node of the copy is replaced, for its shape only, by a
    stand-in of onnxruntime's size, upstream first, inferring again after each size that changes.
    The result holds the large weights as initializers without their bytes.
    """
    surrogate, weights = _weightless(model)
    opsets = opsets_of(model)
    done: set[int] = set()
    while True:
        inferred = onnx.shape_inference.infer_shapes(surrogate, strict_mode=True, data_prop=True)
        infos = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
        shapes = {v.name: tensor_shape(v) for v in infos}
        for i, node in enumerate(surrogate.graph.node):
            entry = entry_of(node, opsets) if i not in done else None
            done.add(i)
            if entry is None or entry.stand_in is None:
                continue
            found = entry.stand_in({a.name: helper.get_attribute_value(a) for a in node.attribute}, shapes.get(node.input[0], []))
            if found is None:
                continue
            attributes, changed = found
            del node.attribute[:]
            node.attribute.extend(helper.make_attribute(k, v) for k, v in attributes.items())
            if changed:
                break  # downstream shapes are stale
        else:
            added = {w.name for w in weights} - {v.name for v in model.graph.input}
            kept = [v for v in inferred.graph.input if v.name not in added]
            del inferred.graph.input[:]
            inferred.graph.input.extend(kept)
            inferred.graph.initializer.extend(weights)
            return inferred


def _weightless(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """A copy of ``model`` in which each initializer of more than
    :data:`~zfnet.converters.index.EVALUATED_ELEMENTS` elements is a graph input of its type and
    shape, and those initializers without their bytes. Shape inference reads only the shapes of
    such weights; the constants whose values it reads (Reshape and Expand targets, pads, axes) are
    small and stay, and none of the large ones' bytes is copied."""
    copy = _without(model, "graph")
    copy.graph.CopyFrom(_without(model.graph, "initializer"))
    declared = {v.name for v in model.graph.input}
    weights = []
    for tensor in model.graph.initializer:
        if math.prod(tensor.dims) <= EVALUATED_ELEMENTS:
            copy.graph.initializer.append(tensor)
            continue
        weights.append(onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims))
        if tensor.name not in declared:
            copy.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return copy, weights


def _without(message: Message, skip: str) -> Message:
    """A copy of ``message`` without its field ``skip``."""
    copy = type(message)()
    for descriptor, value in message.ListFields():
        if descriptor.name == skip:
            continue
        if descriptor.is_repeated:
            getattr(copy, descriptor.name).extend(value)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            getattr(copy, descriptor.name).CopyFrom(value)
        else:
            setattr(copy, descriptor.name, value)
    return copy


def expose(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with layer-named intermediates and switches as graph outputs."""
    return expose_indexed(model)[0]


def expose_indexed(model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphIndex]:
    """:func:`expose`, and the graph index of the exposed model (for the layer table, the receptive
    fields and the projection builder)."""
    given, model = model, onnx.ModelProto()
    model.CopyFrom(given)  # no serialised copy in between (VGG16: 553 MB)
    del given
    set_versions(model)
    if get_metadata(model, EXPOSED_KEY) != "1":
        naming = _layer_names(model)
        _rename(model, naming.renames)
        set_metadata(model, ALIASES_KEY, json.dumps(naming.renames))
        set_metadata(model, MODULES_KEY, json.dumps(naming.modules))
        set_metadata(model, INTERNAL_KEY, json.dumps(naming.internal))
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

