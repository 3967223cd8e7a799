"""The layers of an exposed model: the table users pick from, ``--layer N`` numbering as in the
paper, and receptive fields (the input box an activation can see)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx

from zfnet.converters.expose import SWITCHES_SUFFIX, tensor_shape
from zfnet.errors import NotFound
from zfnet.server.rules.conv import explicit_pads
from zfnet.server.rules.registry import attribute

LEARNED_OPS = {"Conv", "Gemm", "MatMul", "ConvTranspose"}
# ops that end a layer's block when they follow it: nonlinearity, normalisation, pooling
BLOCK_OPS = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Sigmoid", "Tanh", "Clip", "BatchNormalization", "LRN",
    "MaxPool", "AveragePool", "Dropout", "Identity", "Add",
}
WINDOW_OPS = {"Conv", "MaxPool", "AveragePool"}
POINTWISE_SPATIAL_OPS = BLOCK_OPS | {"Sub", "Mul", "Div", "Gather", "Abs", "Pow", "Concat", "Split"}


@dataclass(frozen=True)
class Layer:
    """One row of the layer table."""

    index: int
    name: str
    op: str
    shape: list[int | str]
    number: int | None = None  # ``--layer number`` selects this tensor


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    return consumers


def _constants(graph: onnx.GraphProto) -> set[str]:
    return {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}


def _block_end(graph: onnx.GraphProto, tensor: str, consumers, constants: set[str]) -> str:
    """Follow a learned layer's output through its ReLU, normalisation and pooling."""
    outputs = {o.name for o in graph.output}
    while len(consumers.get(tensor, [])) == 1:
        node = consumers[tensor][0]
        if node.op_type not in BLOCK_OPS:
            break
        if node.op_type == "Add" and not any(name in constants for name in node.input if name != tensor):
            break  # a residual sum, not a bias
        if node.output[0] not in outputs:
            break
        tensor = node.output[0]
    return tensor


def layer_table(model: onnx.ModelProto) -> list[Layer]:
    """Every exposed activation in graph order, with the paper's layer numbers at block ends."""
    graph = model.graph
    producers, consumers, constants = _producers(graph), _consumers(graph), _constants(graph)
    numbers: dict[str, int] = {}
    count = 0
    for node in graph.node:
        if node.op_type in LEARNED_OPS and len(node.input) > 1 and node.input[1] in constants:
            count += 1
            numbers[_block_end(graph, node.output[0], consumers, constants)] = count
    order = {out: i for i, node in enumerate(graph.node) for out in node.output}
    rows = sorted((o for o in graph.output if not o.name.endswith(SWITCHES_SUFFIX) and o.name in producers), key=lambda o: order[o.name])
    return [
        Layer(i, o.name, producers[o.name].op_type, tensor_shape(o), numbers.get(o.name))
        for i, o in enumerate(rows)
    ]


def resolve(table: list[Layer], layer: str | int) -> Layer:
    """``layer`` as a paper number (an int or a digit string) or an exact tensor name."""
    if isinstance(layer, int) or (isinstance(layer, str) and layer.isdigit()):
        number = int(layer)
        for row in table:
            if row.number == number:
                return row
        last = max((r.number for r in table if r.number), default=0)
        raise NotFound(f"layer {number} is out of range: this model has {last} convolutional and fully connected layers (1..{last})", field="layer.number", reason="LAYER_NOT_FOUND", resource=("layer", str(number)))
    for row in table:
        if row.name == layer:
            return row
    raise NotFound(f"no layer named {layer!r}; `zfclient layers` lists them", field="layer.name", reason="LAYER_NOT_FOUND", resource=("layer", layer))


class ReceptiveFields:
    """Receptive fields of a model's activations, computed once per (layer, location)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self._nodes = list(reversed(graph.node))
        self._shapes = {v.name: tensor_shape(v) for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
        self._shapes.update({i.name: list(i.dims) for i in graph.initializer})
        self._constants = _constants(graph)
        self._image = next(v.name for v in graph.input if v.name not in self._constants)
        self._cache: dict[tuple[str, tuple[int, ...]], tuple[int, int, int, int]] = {}

    def box(self, layer: str, location: tuple[int, ...]) -> tuple[int, int, int, int]:
        """The input box (top, left, bottom, right; bottom/right exclusive) that can affect ``layer``
        at spatial ``location``; the whole image for fully connected layers."""
        key = (layer, tuple(location))
        if key not in self._cache:
            self._cache[key] = self._compute(layer, key[1])
        return self._cache[key]

    def _compute(self, layer: str, location: tuple[int, ...]) -> tuple[int, int, int, int]:
        height, width = self._shapes[self._image][2], self._shapes[self._image][3]
        spans: dict[str, list[tuple[int, int]] | None] = {layer: [(p, p) for p in location] if location else None}
        for node in self._nodes:
            if not any(o in spans for o in node.output):
                continue
            out_spans = _union([spans[o] for o in node.output if o in spans])
            for name in node.input:
                if name and name not in self._constants:
                    mapped = _to_input(node, out_spans, self._shapes, name)
                    spans[name] = _union([spans[name], mapped]) if name in spans else mapped
        box = spans.get(self._image)
        if box is None or len(box) != 2:
            return (0, 0, height, width)
        (top, bottom), (left, right) = box
        return (max(top, 0), max(left, 0), min(bottom + 1, height), min(right + 1, width))


def _union(spans: list[list[tuple[int, int]] | None]) -> list[tuple[int, int]] | None:
    if any(s is None for s in spans):
        return None
    return [(min(s[i][0] for s in spans), max(s[i][1] for s in spans)) for i in range(len(spans[0]))]


def _to_input(node: onnx.NodeProto, spans, shapes, name: str):
    """Map an output span to the span of input ``name``."""
    if spans is None:
        return None
    if node.op_type in WINDOW_OPS:
        in_shape = shapes.get(node.input[0])
        if node.op_type == "Conv":
            kernel = shapes[node.input[1]][2:] if node.input[1] in shapes else list(attribute(node, "kernel_shape"))
        else:
            kernel = list(attribute(node, "kernel_shape"))
        rank = len(kernel)
        strides = list(attribute(node, "strides", [1] * rank))
        dilations = list(attribute(node, "dilations", [1] * rank))
        pads = explicit_pads(node, in_shape[2:] if in_shape else [0] * rank, kernel, strides, dilations)
        return [(lo * s - p, hi * s - p + (k - 1) * d) for (lo, hi), s, p, k, d in zip(spans, strides, pads, kernel, dilations)]
    if node.op_type in POINTWISE_SPATIAL_OPS and len(shapes.get(name, [])) == len(spans) + 2:
        return spans
    return None
