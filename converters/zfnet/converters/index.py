"""One index of an ONNX graph, built once per model and shared by the expose pass, the layer table,
the receptive fields and the projection builder: producers, consumers, constants, static shapes and
element types, which tensors depend on the image, and each node's attributes bound with the
defaults of its ONNX schema at the model's opset. What it knows about ops (which outputs are computed
from shapes alone, which element types are floats) comes from the op registry
(:mod:`zfnet.server.rules`), which imports nothing of the converters."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from zfnet.server.rules import FLOAT_TYPES, OpRule, lookup
from zfnet.server.rules.registry import FromShape

DEFAULT_DOMAINS = ("", "ai.onnx")
EVALUATED_ELEMENTS = 1 << 16  # the most elements of any input of a node evaluated on static inputs


def domain_of(node: onnx.NodeProto) -> str:
    """The node's domain, with ``ai.onnx`` spelled ``""``."""
    return "" if node.domain in DEFAULT_DOMAINS else node.domain


def opsets_of(model: onnx.ModelProto) -> dict[str, int]:
    """The model's opset of each domain (``ai.onnx`` spelled ``""``)."""
    return {("" if o.domain in DEFAULT_DOMAINS else o.domain): o.version for o in model.opset_import}


def entry_of(node: onnx.NodeProto, opsets: dict[str, int]) -> OpRule | None:
    """The op registry's entry for a node of a model with ``opsets`` (see :func:`zfnet.server.rules.lookup`)."""
    return lookup(domain_of(node), node.op_type, opsets.get(domain_of(node), 1))


@dataclass(frozen=True)
class Node:
    """A forward node with its attributes bound from its schema (defaults filled in)."""

    proto: onnx.NodeProto
    index: int
    attrs: dict[str, Any]
    opset: int  # the model's opset for the node's domain

    @property
    def op_type(self) -> str:
        return self.proto.op_type

    @property
    def domain(self) -> str:
        return domain_of(self.proto)

    @property
    def input(self) -> list[str]:
        return list(self.proto.input)

    @property
    def output(self) -> list[str]:
        return list(self.proto.output)

    @property
    def label(self) -> str:
        """How messages name the node: ``Conv 'features.0'``."""
        return f"{self.op_type} {self.proto.name or self.proto.output[0]!r}"


def bind_attributes(node: onnx.NodeProto, opset: int) -> dict[str, Any]:
    """The node's attributes, with the schema's default for each one not set; strings decoded.
    Attributes without a default that are not set are absent."""
    attrs: dict[str, Any] = {}
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, domain_of(node))
    except onnx.defs.SchemaError:
        schema = None
    if schema is not None:
        for name, spec in schema.attributes.items():
            if spec.default_value.type != onnx.AttributeProto.UNDEFINED:
                attrs[name] = _decoded(helper.get_attribute_value(spec.default_value))
    for attr in node.attribute:
        attrs[attr.name] = _decoded(helper.get_attribute_value(attr))
    return attrs


def _decoded(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The value of a ``Constant`` node as a TensorProto named after its output."""
    if not node.attribute:
        return None
    attr = node.attribute[0]
    value = helper.get_attribute_value(attr)
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
    elif attr.name in ("value_float", "value_floats"):
        tensor = numpy_helper.from_array(np.asarray(value, np.float32))
    elif attr.name in ("value_int", "value_ints"):
        tensor = numpy_helper.from_array(np.asarray(value, np.int64))
    else:
        return None
    tensor.name = node.output[0]
    return tensor


@dataclass
class GraphIndex:
    """Facts about one graph, computed once; ``memo`` holds what later passes derive from them."""

    model: onnx.ModelProto
    # reads an initializer whose bytes the graph does not hold (a held model's weights, left on disk;
    # None for any other): see zfnet.server.weights
    stored: Callable[[onnx.TensorProto], np.ndarray | None] | None = None
    nodes: list[onnx.NodeProto] = field(init=False)
    producers: dict[str, int] = field(init=False)  # tensor -> index of the node producing it
    consumers: dict[str, list[int]] = field(init=False)  # tensor -> indices of the nodes reading it
    constants: dict[str, onnx.TensorProto] = field(init=False)  # initializers and Constant outputs
    infos: dict[str, onnx.ValueInfoProto] = field(init=False)
    inputs: list[str] = field(init=False)  # graph inputs that are not initializers
    outputs: list[str] = field(init=False)
    live: set[str] = field(init=False)  # tensors whose values depend on the inputs
    opsets: dict[str, int] = field(init=False)
    memo: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        graph = self.model.graph
        self.nodes = list(graph.node)
        self.opsets = opsets_of(self.model)
        self.producers, self.consumers = {}, defaultdict(list)
        self.constants = {i.name: i for i in graph.initializer}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.consumers[name].append(i)
            for name in node.output:
                if name:
                    self.producers[name] = i
            if node.op_type == "Constant" and domain_of(node) == "":
                tensor = _constant_tensor(node)
                if tensor is not None:
                    self.constants[node.output[0]] = tensor
        self.infos = {v.name: v for v in [*graph.input, *graph.output, *graph.value_info]}
        self.inputs = [v.name for v in graph.input if v.name not in self.constants]
        self.outputs = [v.name for v in graph.output]
        self.live = set(self.inputs)
        for node in self.nodes:
            if any(name in self.live for name in node.input) and self._from_shape(node) is None:
                self.live.update(n for n in node.output if n)
        self._attrs: dict[int, dict[str, Any]] = {}
        self._arrays: dict[str, np.ndarray | None] = {}

    # -- nodes -------------------------------------------------------------------------------------
    def opset(self, node: onnx.NodeProto) -> int:
        return self.opsets.get(domain_of(node), 1)

    def _from_shape(self, node: onnx.NodeProto) -> FromShape | None:
        """How the node's output follows from its input's shape alone (``Shape``, ``Size``), else None."""
        entry = entry_of(node, self.opsets)
        return entry.from_shape if entry is not None else None

    def node(self, i: int) -> Node:
        """Node ``i`` with bound attributes."""
        if i not in self._attrs:
            self._attrs[i] = bind_attributes(self.nodes[i], self.opset(self.nodes[i]))
        return Node(self.nodes[i], i, self._attrs[i], self.opset(self.nodes[i]))

    def ancestors(self, target: str) -> list[Node]:
        """The nodes ``target`` depends on, in reverse graph order."""
        needed, stack = set(), [target]
        while stack:
            i = self.producers.get(stack.pop())
            if i is None or i in needed:
                continue
            needed.add(i)
            stack.extend(n for n in self.nodes[i].input if n)
        return [self.node(i) for i in sorted(needed, reverse=True)]

    # -- values ------------------------------------------------------------------------------------
    @property
    def image(self) -> str | None:
        """The image input, when the graph has exactly one input."""
        return self.inputs[0] if len(self.inputs) == 1 else None

    def shape(self, name: str) -> list[int | str] | None:
        """Dimensions (ints, or the symbolic name where not fixed), or None when unknown."""
        if name in self.constants:
            return list(self.constants[name].dims)
        info = self.infos.get(name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in info.type.tensor_type.shape.dim]

    def elem_type(self, name: str) -> int:
        """The ONNX element type (``TensorProto.FLOAT`` ...), 0 when unknown."""
        if name in self.constants:
            return self.constants[name].data_type
        info = self.infos.get(name)
        return info.type.tensor_type.elem_type if info is not None else 0

    def is_float(self, name: str) -> bool:
        return self.elem_type(name) in FLOAT_TYPES

    def constant(self, name: str) -> np.ndarray | None:
        """The numpy value of a tensor that does not depend on the image: an initializer, a Constant,
        or one computed from them and from static shapes (exporters' ``Shape -> Gather -> Div``
        chains), evaluated once with onnx's reference evaluator; else None."""
        if not name or name in self.live:
            return None
        if name not in self._arrays:
            self._arrays[name] = self._static_value(name)
        return self._arrays[name]

    def _static_value(self, name: str) -> np.ndarray | None:
        if name in self.constants:
            array = self.stored(self.constants[name]) if self.stored is not None else None
            if array is None:
                array = numpy_helper.to_array(self.constants[name])
        else:
            i = self.producers.get(name)
            if i is None:
                return None
            node = self.nodes[i]
            if domain_of(node) or node.op_type in ("If", "Loop", "Scan"):
                return None
            from_shape = self._from_shape(node)
            values = [self._from_static_shape(i, from_shape)] if from_shape is not None else None
            if values is None or values[0] is None:
                values = self._evaluate(node)
            if values is None:
                return None
            for out, value in zip(node.output, values):
                if out and out != name:
                    self._arrays.setdefault(out, value)
            array = values[list(node.output).index(name)]
            if array is None:
                return None
            array = np.asarray(array)
        array.setflags(write=False)
        return array

    def _from_static_shape(self, i: int, from_shape: FromShape) -> np.ndarray | None:
        """The output of node ``i`` (``Shape``, ``Size``) when its input's dimensions are all static."""
        dims = self.shape(self.nodes[i].input[0])
        static = [d for d in dims or [] if isinstance(d, int) and d > 0]
        if dims is None or len(static) < len(dims):
            return None
        return from_shape(static, self.node(i).attrs)

    def _evaluate(self, node: onnx.NodeProto) -> list[np.ndarray | None] | None:
        """Run one node on static inputs with onnx's reference evaluator."""
        from onnx.reference import ReferenceEvaluator  # noqa: PLC0415  (rarely needed, slow to import)

        static = [[d for d in dims if isinstance(d, int)] for dims in (self.shape(n) or [] for n in node.input if n)]
        if any(math.prod(dims) > EVALUATED_ELEMENTS for dims in static):
            return None  # too large, refused before its inputs are read
        names = [f"i{k}" if n else "" for k, n in enumerate(node.input)]
        given = [(name, self.constant(n)) for name, n in zip(names, node.input) if n]
        inputs = {name: v for name, v in given if v is not None}
        if len(inputs) < len(given) or any(v.size > EVALUATED_ELEMENTS for v in inputs.values()):
            return None
        one = helper.make_node(node.op_type, names, [f"o{k}" for k in range(len(node.output))], domain=node.domain)
        one.attribute.extend(node.attribute)
        graph = helper.make_graph(
            [one], "static", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in inputs.items()],
            [helper.make_tensor_value_info(f"o{k}", onnx.TensorProto.UNDEFINED, None) for k in range(len(node.output))],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset(node))])
        try:
            outputs = ReferenceEvaluator(model).run(None, inputs)
        except Exception:  # an op the reference evaluator lacks, or inputs it refuses: not static after all
            return None
        assert isinstance(outputs, list), "run gives a list of outputs without intermediate=True"
        return outputs
