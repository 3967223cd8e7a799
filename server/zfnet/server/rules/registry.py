"""The op registry: everything zfnet knows about an ONNX op, in one entry per (domain, op type,
ONNX schema versions), declared next to its backward rule in the module of its op family.

An entry carries
- ``versions``: the op's schema versions (the ``since_version`` of each of its ONNX definitions) the
  entry was written and reviewed for. A node resolves to the schema its model's opset selects
  (``onnx.defs.get_schema(op, max_inclusive_version=opset).since_version``); a version no entry of an
  op covers is refused (:func:`lookup`), so a model at an opset where the op changed is never
  silently mis-handled;
- ``backward``: the rule that emits, into a projection graph, the nodes carrying a signal from the
  op's outputs back to its inputs (its vector-Jacobian product; only ReLU's depends on the method,
  Zeiler & Fergus 2013, Sec. 2.1; Springenberg et al. 2015 for guided backprop);
- ``field``: its receptive-field mapping, from the span of an output to the span of an input
  (``POINTWISE``, a window, an op's own function, or ``REFUSE``); it must be given;
- ``role``: its role in the paper's layer numbering (``BLOCK`` ops extend the block of the layer
  before them; anything else ends a block), unless ``weights`` makes the node a learned layer;
- ``weights``: for convolutional and fully connected layers, where a node's filters are (the
  constant input, its layout as (out, in, *kernel) or (out, in), the bias input); a node whose
  ``weights`` are found is a ``LEARNED`` layer: counted in the layer table, and what ``filters`` shows;
- ``batch``: where each output's batch axis is, given its inputs' (most ops keep it in place); the
  same map carries the axis of a tensor's features (channels) through the op, unless the entry's
  ``features`` says otherwise (a ``Gather`` of channels keeps the channel axis, never the batch);
  a learned layer's output has its features on the axis its ``Weights.axis`` names;
- ``switches``: the output that records max-pool switches, which the expose pass adds to every node;
- ``from_shape``: for ops whose output is computed from their input's shape alone (``Shape``,
  ``Size``), that output from the static dimensions; such outputs carry nothing of the image;
- ``stand_in``: for ops whose output size ONNX shape inference gets wrong for onnxruntime (ceil-mode
  pooling before opset 22), the attributes of a stand-in node it sizes right;
- ``local``: whether the op is local and translation-equivariant over the spatial axes (a bool, or a
  predicate of the node for ops that are where their constant operands do not vary over space): an
  output position reads only the input positions its ``field`` names, the same way at every
  position, so that a unit computed on an aligned crop of the image equals the whole image's
  (:mod:`zfnet.server.windows`). Default False: the whole image is used.

Attributes reach the rules bound with the defaults of the op's schema at the model's opset
(:class:`zfnet.converters.index.Node`). The rules package imports nothing of ``zfnet.converters`` at
run time (``GraphIndex`` and ``Node`` are type hints here): the graph index and the expose pass read
their op facts from it, and the rest of the server reads both, so there is no import cycle.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from zfnet.errors import InvalidArgument

if TYPE_CHECKING:
    from zfnet.converters.index import GraphIndex, Node
    from zfnet.server.projection import Builder

# the element types a signal flows through (as float32); integer and boolean tensors carry none
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16})

# (builder, forward node, signal at each output or None) -> signal at each input or None
BackwardRule = Callable[["Builder", "Node", list[str | None]], list[str | None]]

# A span: per axis of a tensor, the inclusive (lo, hi) of the positions that matter, None for all.
Span = tuple[tuple[int, int] | None, ...]
# (index, node, span of the node's outputs (None where an output is not used), input position) -> span of that input
# (None: no position of that input is under the spans)
FieldMap = Callable[["GraphIndex", "Node", list[Span | None], int], Span | None]
# (index, node, batch axis of each input or None) -> batch axis of each output or None
BatchMap = Callable[["GraphIndex", "Node", list[int | None]], list[int | None]]


class Role(enum.Enum):
    """An op's role in the paper's layer numbering."""

    LEARNED = "learned"  # a convolutional or fully connected layer (an entry's ``weights`` found): counted
    BLOCK = "block"  # nonlinearity, normalisation, pooling, bias: extends the layer's block
    OTHER = "other"  # ends a block


RoleOf = Role | Callable[["GraphIndex", "Node"], Role]
LocalOf = bool | Callable[["GraphIndex", "Node"], bool]


def as_stored(weights: np.ndarray) -> np.ndarray:
    """Filters already laid out as the op stores them."""
    return weights


@dataclass(frozen=True)
class Weights:
    """Where a learned layer's filters are: the constant input holding them, how to lay its value out
    as (out, in, *kernel) or (out, in) (a ``ValueError`` says why it cannot be), and the bias input."""

    tensor: str
    layout: Callable[[np.ndarray], np.ndarray] = as_stored
    bias: str | None = None
    axis: int = 1  # the output axis the layer's features (its filters' responses) lie on; negative: from the end


# (index, node) -> where the node's filters are, or None when the node is not a learned layer
WeightsOf = Callable[["GraphIndex", "Node"], Weights | None]
# (input's static dimensions, the node's bound attributes) -> the output
FromShape = Callable[[list[int], dict], np.ndarray]
# (the node's own attributes, its first input's shape) -> (a stand-in's attributes, whether ONNX infers
# another size for the node itself), or None when the node needs no stand-in
StandIn = Callable[[dict, list], tuple[dict, bool] | None]


@dataclass(frozen=True)
class OpRule:
    """What zfnet knows about one op over some of its schema versions."""

    op_type: str
    domain: str
    versions: tuple[int, ...]  # the schema versions (since_version) written and reviewed for
    backward: BackwardRule
    field: FieldMap
    role: RoleOf
    batch: BatchMap
    weights: WeightsOf | None = None
    switches: int | None = None  # the output position of the max-pool switches
    from_shape: FromShape | None = None
    stand_in: StandIn | None = None
    features: BatchMap | None = None  # where the features axis goes, where the op moves it unlike the batch axis
    local: LocalOf = False  # local and translation-equivariant over space (see the module's docstring)

    def is_local(self, index: GraphIndex, node: Node) -> bool:
        """Whether this node is local and translation-equivariant over the spatial axes."""
        return self.local(index, node) if callable(self.local) else self.local

    def axis_map(self, features: bool) -> BatchMap:
        """How the op moves the batch axis, or (``features``) the features axis."""
        return (self.features or self.batch) if features else self.batch

    def role_of(self, index: GraphIndex, node: Node) -> Role:
        if self.weights is not None and self.weights(index, node) is not None:
            return Role.LEARNED
        return self.role(index, node) if callable(self.role) else self.role


RULES: dict[tuple[str, str], list[OpRule]] = {}


def same_batch(index: GraphIndex, node: Node, axes: list[int | None]) -> list[int | None]:
    """Outputs keep the batch axis of their first batched input, aligned from the right (broadcasting)."""
    source = next(((name, axis) for name, axis in zip(node.input, axes) if axis is not None), None)
    if source is None:
        return [None] * len(node.output)
    in_rank = len(index.shape(source[0]) or [])
    out: list[int | None] = []
    for name in node.output:
        shape = index.shape(name)
        axis = None if shape is None else source[1] + len(shape) - in_rank
        out.append(axis if shape is not None and axis is not None and 0 <= axis < len(shape) else None)
    return out


def op(versions: Mapping[str, Sequence[int]], *, field: FieldMap, role: RoleOf = Role.OTHER, domain: str = "",
       batch: BatchMap = same_batch, weights: WeightsOf | None = None, switches: int | None = None,
       from_shape: FromShape | None = None, stand_in: StandIn | None = None,
       features: BatchMap | None = None, local: LocalOf = False) -> Callable[[BackwardRule], BackwardRule]:
    """Register ``fn`` as the backward rule of each op type in ``versions`` (op type -> its schema
    versions this entry covers), with the op's other facts; an entry sharing a version with an
    existing one is refused, and so is ``role=Role.LEARNED`` (a learned layer declares ``weights``)."""
    if role is Role.LEARNED:
        raise ValueError("a learned layer is an entry with weights=..., not role=Role.LEARNED")

    def register(fn: BackwardRule) -> BackwardRule:
        for op_type, covered in versions.items():
            entry = OpRule(op_type, domain, tuple(sorted(covered)), fn, field, role, batch, weights, switches, from_shape, stand_in, features, local)
            for other in RULES.get((domain, op_type), []):
                if set(other.versions) & set(entry.versions):
                    raise ValueError(f"{op_type} versions {entry.versions} overlap the entry in {other.backward.__module__}")
            RULES.setdefault((domain, op_type), []).append(entry)
        return fn

    return register


@functools.cache
def schema_version(domain: str, op_type: str, opset: int) -> int | None:
    """The ``since_version`` of the op's schema that a model at ``opset`` uses, or None when onnx has none."""
    try:
        return onnx.defs.get_schema(op_type, max_inclusive_version=opset, domain=domain).since_version
    except onnx.defs.SchemaError:
        return None


def lookup(domain: str, op_type: str, opset: int) -> OpRule | None:
    """The entry for an op at a model's opset; None for an op without entries. An op with entries
    whose schema at this opset none of them covers is refused: its definition changed since its
    rules were reviewed (or it does not exist yet at this opset)."""
    entries = RULES.get((domain, op_type))
    if not entries:
        return None
    version = schema_version(domain, op_type, opset)
    found = next((e for e in entries if version in e.versions), None)
    if found is None:
        covered = ", ".join(str(v) for v in sorted(v for e in entries for v in e.versions))
        what = f"op {op_type} of domain {domain or 'ai.onnx'} at model opset {opset}"
        problem = ("has no ONNX schema (zfnet's rules cover" if version is None else
                   f"resolves to ONNX schema version {version}, which no zfnet rule covers (they cover")
        raise InvalidArgument(
            f"{what} {problem} schema versions {covered} of {op_type}); re-export the model at an opset they cover",
            reason="UNSUPPORTED_OP",
            metadata={"op": op_type, "domain": domain or "ai.onnx", "opset": opset, "schema_version": version or 0, "covered": covered},
        )
    return found


def lookup_node(index: GraphIndex, node: Node) -> OpRule | None:
    return lookup(node.domain, node.op_type, node.opset)


def weights_of(index: GraphIndex, node: Node) -> Weights | None:
    """Where the filters of a learned layer are; None when ``node`` is not one."""
    rule = lookup_node(index, node)
    return rule.weights(index, node) if rule is not None and rule.weights is not None else None


def optional_input(node: Node, position: int) -> str | None:
    """The name of an optional input, None where it is absent."""
    return node.input[position] if len(node.input) > position and node.input[position] else None


def batch_axes(index: GraphIndex) -> dict[str, int | None]:
    """The batch axis of every tensor that depends on the image (None where an op merged it with
    another axis), from the image input's axis 0 through the entries' ``batch`` maps; once per model."""
    if "batch_axes" not in index.memo:
        index.memo["batch_axes"] = _carry(index, 0, features=False)
    return index.memo["batch_axes"]


def feature_axes(index: GraphIndex) -> dict[str, int | None]:
    """The axis of every tensor that depends on the image that holds its features (channels): the
    image's axis 1 (NCHW); the output axis of a learned layer's filters (``Weights.axis``: 1 for
    ``Conv``, the last for ``MatMul`` with weights on the right); moved through every other op as
    its entry moves an axis (``features``, else ``batch``): through ``Transpose`` into channels-last
    blocks and (N, tokens, features) layers, and out again. None where an op split or merged the
    axis with others (attention heads); once per model."""
    if "feature_axes" not in index.memo:
        index.memo["feature_axes"] = _carry(index, 1, features=True)
    return index.memo["feature_axes"]


def _carry(index: GraphIndex, start: int, features: bool) -> dict[str, int | None]:
    """One axis of every image-dependent tensor, from the inputs' axis ``start`` through the ops' maps."""
    axes: dict[str, int | None] = {name: start for name in index.inputs}
    for i in range(len(index.nodes)):
        node = index.node(i)
        if not any(name in index.live for name in node.input):
            continue
        rule = lookup_node(index, node)
        try:
            weights = rule.weights(index, node) if features and rule is not None and rule.weights is not None else None
            if weights is not None:
                rank = len(index.shape(node.output[0]) or [])
                found: list[int | None] = [weights.axis % rank if rank else None] + [None] * (len(node.output) - 1)
            else:
                found = (rule.axis_map(features) if rule is not None else same_batch)(index, node, [axes.get(n) for n in node.input])
        except (InvalidArgument, ValueError, IndexError, ZeroDivisionError, TypeError):  # shapes or values unknown
            found = [None] * len(node.output)
        axes.update(zip(node.output, found))
    return axes


def supported() -> str:
    """The op types with an entry, for messages."""
    return ", ".join(sorted({op_type if not domain else f"{domain}.{op_type}" for domain, op_type in RULES}))


# -- receptive-field mappings -----------------------------------------------------------------------
def union(spans: list[Span | None]) -> Span:
    """The smallest span holding all ``spans`` (of one tensor) that are not None, of which there
    must be one (a field map's: the receptive-field walk maps a node back only when one of its
    outputs is under a span)."""
    present = [s for s in spans if s is not None]
    if not present:
        raise ValueError("the union of no spans")
    return tuple(_hull([s[a] for s in present]) for a in range(len(present[0])))


def _hull(ranges: list[tuple[int, int] | None]) -> tuple[int, int] | None:
    """The smallest (lo, hi) holding all ``ranges`` of one axis; None (all of it) when any is None."""
    bounded = [r for r in ranges if r is not None]
    if len(bounded) < len(ranges):
        return None
    return (min(lo for lo, _ in bounded), max(hi for _, hi in bounded))


def broadcast_span(in_shape: list, out_shape: list, out: Span) -> Span:
    """The span of an input broadcast (numpy rules, aligned from the right) to ``out_shape``."""
    offset = len(out_shape) - len(in_shape)
    if offset < 0 or len(out) != len(out_shape):
        return (None,) * len(in_shape)
    return tuple(
        out[axis + offset] if size == out_shape[axis + offset] else (0, 0) if size == 1 else None
        for axis, size in enumerate(in_shape)
    )


def POINTWISE(index: GraphIndex, node: Node, spans: list[Span | None], i: int) -> Span:
    """Each output position reads the same position of each input (with numpy broadcasting)."""
    return broadcast_span(index.shape(node.input[i]) or [], index.shape(node.output[0]) or [], union(spans))


def REFUSE(index: GraphIndex, node: Node, spans: list[Span | None], i: int) -> Span:
    """No receptive-field mapping is known: refuse rather than answer with the whole image."""
    raise InvalidArgument(f"{node.label}: no receptive-field mapping is known for {node.op_type}")


def constant_over_space(index: GraphIndex, node: Node) -> bool:
    """``local`` of elementwise ops: every operand that does not depend on the image is the same at
    every spatial position (size 1 on the output's axes after the channel axis: a per-channel
    scale or bias, not a mean image)."""
    rank = len(index.shape(node.output[0]) or [])
    for name in node.input:
        if not name or name in index.live:
            continue
        dims = index.shape(name)
        if dims is None:
            return False
        spatial = dims[max(0, len(dims) - (rank - 2)) :] if rank > 2 else []
        if any(d != 1 for d in spatial):
            return False
    return True


def axes_field(axes_of: Callable[[GraphIndex, Node], list[int]]) -> FieldMap:
    """Pointwise except along ``axes_of(node)`` (of the output), where every position reads every one."""

    def field(index: GraphIndex, node: Node, spans: list[Span | None], i: int) -> Span:
        span = list(POINTWISE(index, node, spans, i))
        rank_in, rank_out = len(index.shape(node.input[i]) or []), len(index.shape(node.output[0]) or [])
        for axis in axes_of(index, node):
            local = axis % rank_out - (rank_out - rank_in)
            if 0 <= local < rank_in:
                span[local] = None
        return tuple(span)

    return field
