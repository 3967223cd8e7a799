"""Build the projection graph that carries a signal from one layer back to the input pixels.

The projection graph is an ONNX model of its own, run on onnxruntime (so on the GPU when there is
one, and in batches). Its inputs are

- ``signal`` (M, *layer shape): what is sent down, one row per (image, channel) reconstruction;
- ``image_index`` (M,) int64: which image of the forward batch each row belongs to;
- ``fwd/<tensor>`` (N, ...): the forward values the rules need (ReLU inputs, max-pool switches),
  taken from the one forward pass that served every channel of the batch;

and its output is ``reconstruction`` (M, *input shape). Each op on the path passes the signal back
by its vector-Jacobian product (a rule in :mod:`zfnet.server.rules`); ReLU's rule is the method.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zfnet.converters.graph import IR_VERSION, OPSET
from zfnet.errors import FailedPrecondition, InvalidArgument
from zfnet.server.rules import BACKWARD_RULES

METHODS = ("deconvnet", "backprop", "guided")
SIGNAL, IMAGE_INDEX, RECONSTRUCTION = "signal", "image_index", "reconstruction"
FORWARD_PREFIX = "fwd/"


@dataclass(frozen=True)
class Projection:
    """A built projection graph and the forward tensors it must be fed."""

    model: onnx.ModelProto
    layer: str
    method: str
    forward_tensors: list[str]  # names in the forward model, its image input included; fed as ``fwd/<name>``


class Builder:
    """Accumulates the nodes of one projection graph; the API the backward rules are written in."""

    def __init__(self, model: onnx.ModelProto, method: str) -> None:
        if method not in METHODS:
            raise InvalidArgument(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.graph = model.graph
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._constants = {i.name: i for i in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self._constants[node.output[0]] = node.attribute[0].t
        self._infos = {v.name: v for v in itertools.chain(self.graph.input, self.graph.output, self.graph.value_info)}
        self._gathered: dict[str, str] = {}
        self._copied: dict[str, str] = {}
        self._counter = itertools.count()
        self.live = _live_tensors(self.graph)
        self.node: onnx.NodeProto | None = None  # the forward node whose rule is running

    @property
    def forward_tensors(self) -> list[str]:
        """The forward tensors the rules asked for, fed as ``fwd/<name>``."""
        return list(self._gathered)

    # -- what the rules read -------------------------------------------------------------------
    def shape(self, name: str) -> list[int]:
        """Static shape of a forward tensor, batch dimension as -1; an error if any other is unknown."""
        if name in self._constants:
            return list(self._constants[name].dims)
        info = self._infos.get(name)
        if info is None:
            raise FailedPrecondition(f"the shape of tensor {name!r} is unknown; was the model exposed?")
        dims = info.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
        if any(d < 0 for d in shape[1:]):
            raise InvalidArgument(f"tensor {name!r} has a dynamic shape {shape}; only the batch dimension may vary")
        return [-1, *shape[1:]]

    def needs(self, name: str) -> bool:
        """Whether a forward tensor depends on the input, so a signal must reach it."""
        return name in self.live

    def constant_value(self, name: str) -> np.ndarray | None:
        """The value of a forward initializer or Constant output, else None."""
        tensor = self._constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def forward(self, name: str) -> str:
        """A forward value in the projection graph: copied if constant, else gathered per signal row."""
        if name in self._constants:
            if name not in self._copied:
                copy = onnx.TensorProto()
                copy.CopyFrom(self._constants[name])
                copy.name = f"const/{name}"
                self.initializers.append(copy)
                self._copied[name] = copy.name
            return self._copied[name]
        if name not in self._gathered:
            self._gathered[name] = self.op("Gather", [FORWARD_PREFIX + name, IMAGE_INDEX], axis=0)
        return self._gathered[name]

    # -- what the rules write ------------------------------------------------------------------
    def const(self, value: np.ndarray | list | float, dtype=np.float32) -> str:
        """A new initializer holding ``value``."""
        name = f"c{next(self._counter)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str:
        """Append one node; returns its (first) output name."""
        stem = (self.node.output[0] if self.node is not None else "proj").replace("/", ".")
        outputs = [f"{stem}/{op_type}{next(self._counter)}" for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=outputs[0], **attrs))
        return outputs[0]

    def reshape(self, signal: str, shape: list[int]) -> str:
        """Reshape to a static shape whose batch dimension is -1."""
        return self.op("Reshape", [signal, self.const(shape, np.int64)])

    def zeros(self, like_batch_of: str, tail: list[int]) -> str:
        """Zeros of shape (M, *tail), M taken from ``like_batch_of``."""
        batch = self.op("Shape", [like_batch_of], start=0, end=1)
        shape = self.op("Concat", [batch, self.const(tail, np.int64)], axis=0)
        return self.op("ConstantOfShape", [shape], value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))

    def fit_spatial(self, signal: str, begin: list[int], length: list[int], have: list[int]) -> str:
        """Crop/zero-pad spatial axes 2.. of ``signal`` (sizes ``have``) to ``[begin, begin + length)``."""
        rank = 2 + len(begin)
        stop = [min(b + n, h) for b, n, h in zip(begin, length, have)]
        if any(b > 0 for b in begin) or stop != have:
            axes = list(range(2, rank))
            signal = self.op("Slice", [signal, self.const(begin, np.int64), self.const(stop, np.int64), self.const(axes, np.int64)])
        short = [b + n - s for b, n, s in zip(begin, length, stop)]
        if any(s > 0 for s in short):
            pads = [0] * rank + [0, 0] + short
            signal = self.op("Pad", [signal, self.const(pads, np.int64)])
        return signal


def _live_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors that depend on the graph's (non-initializer) inputs."""
    initializers = {i.name for i in graph.initializer}
    live = {v.name for v in graph.input if v.name not in initializers}
    for node in graph.node:
        if any(name in live for name in node.input):
            live.update(n for n in node.output if n)
    return live


def _ancestors(graph: onnx.GraphProto, target: str) -> list[onnx.NodeProto]:
    """Nodes that ``target`` depends on, in reverse topological order."""
    producers = {out: node for node in graph.node for out in node.output}
    needed, stack, seen = set(), [target], set()
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        needed.add(id(node))
        stack.extend(node.input)
    return [node for node in reversed(graph.node) if id(node) in needed]


def build(model: onnx.ModelProto, layer: str, method: str) -> Projection:
    """Build the projection graph from tensor ``layer`` of an exposed model to its image input."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise InvalidArgument(f"deconv needs a model with one image input; this one has {[v.name for v in inputs]}")
    image = inputs[0].name
    builder = Builder(model, method)
    live = builder.live
    if layer not in live:
        raise InvalidArgument(f"tensor {layer!r} does not depend on the input {image!r}")
    signals: dict[str, str] = {layer: SIGNAL}
    for node in _ancestors(graph, layer):
        outgoing = [signals.get(name) for name in node.output]
        if all(s is None for s in outgoing):
            continue
        rule = BACKWARD_RULES.get(node.op_type)
        if rule is None or node.domain not in ("", "ai.onnx"):
            raise InvalidArgument(
                f"no backward rule for op {node.op_type!r} (node {node.name or node.output[0]!r}, between layer {layer!r} "
                f"and the input); rules exist for {', '.join(sorted(BACKWARD_RULES))}",
                reason="UNSUPPORTED_OP", metadata={"op": node.op_type, "node": node.name or node.output[0]},
            )
        builder.node = node
        incoming = rule(builder, node, outgoing)
        builder.node = None
        for name, signal in zip(node.input, incoming):
            if signal is None or name not in live:
                continue
            signals[name] = builder.op("Add", [signals[name], signal]) if name in signals else signal
    if image not in signals:
        raise InvalidArgument(f"no signal reaches the input from layer {layer!r}")
    builder.nodes.append(helper.make_node("Identity", [signals[image]], [RECONSTRUCTION], name=RECONSTRUCTION))
    layer_shape = builder.shape(layer)
    image_shape = builder.shape(image)
    forward_tensors = builder.forward_tensors
    elem_types = {v.name: v.type.tensor_type.elem_type for v in itertools.chain(graph.input, graph.output, graph.value_info)}
    proj_inputs = [
        helper.make_tensor_value_info(SIGNAL, TensorProto.FLOAT, ["M", *layer_shape[1:]]),
        helper.make_tensor_value_info(IMAGE_INDEX, TensorProto.INT64, ["M"]),
    ] + [
        helper.make_tensor_value_info(FORWARD_PREFIX + name, elem_types.get(name, TensorProto.FLOAT), ["N", *builder.shape(name)[1:]])
        for name in forward_tensors
    ]
    proj_graph = helper.make_graph(
        builder.nodes, f"projection_{method}_{layer}", proj_inputs,
        [helper.make_tensor_value_info(RECONSTRUCTION, TensorProto.FLOAT, ["M", *image_shape[1:]])],
        initializer=builder.initializers,
    )
    proj = helper.make_model(proj_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="zfnet")
    proj.ir_version = IR_VERSION
    onnx.checker.check_model(proj)
    return Projection(proj, layer, method, forward_tensors)
