"""The op registry: everything zfnet knows about an ONNX op, in one entry per (domain, op type,
opset range), declared next to its backward rule in the module of its op family.

An entry carries
- ``backward``: the rule that emits, into a projection graph, the nodes carrying a signal from the
  op's outputs back to its inputs (its vector-Jacobian product; only ReLU's depends on the method,
  Zeiler & Fergus 2013, Sec. 2.1; Springenberg et al. 2015 for guided backprop);
- ``field``: its receptive-field mapping, from the span of an output to the span of an input
  (``POINTWISE``, a window, an op's own function, or ``REFUSE``); it must be given;
- ``role``: its role in the paper's layer numbering (``LEARNED`` layers are counted; ``BLOCK`` ops
  extend the block of the layer before them; anything else ends a block);
- ``batch``: where each output's batch axis is, given its inputs' (most ops keep it in place).

Attributes reach the rules bound with the defaults of the op's schema at the model's opset
(:class:`zfnet.converters.index.Node`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zfnet.converters.index import GraphIndex, Node
from zfnet.errors import InvalidArgument

if TYPE_CHECKING:
    from zfnet.server.projection import Builder

# (builder, forward node, signal at each output or None) -> signal at each input or None
BackwardRule = Callable[["Builder", Node, list[str | None]], list[str | None]]

# A span: per axis of a tensor, the inclusive (lo, hi) of the positions that matter, None for all.
Span = tuple[tuple[int, int] | None, ...]
# (index, node, span of the node's outputs (None where an output is not used), input position) -> span of that input
FieldMap = Callable[[GraphIndex, Node, list[Span | None], int], Span]
# (index, node, batch axis of each input or None) -> batch axis of each output or None
BatchMap = Callable[[GraphIndex, Node, list[int | None]], list[int | None]]


class Role(enum.Enum):
    """An op's role in the paper's layer numbering."""

    LEARNED = "learned"  # a convolutional or fully connected layer: counted
    BLOCK = "block"  # nonlinearity, normalisation, pooling, bias: extends the layer's block
    OTHER = "other"  # ends a block


RoleOf = Role | Callable[[GraphIndex, Node], Role]


@dataclass(frozen=True)
class OpRule:
    """What zfnet knows about one op over a range of opsets."""

    op_type: str
    domain: str
    first: int  # first opset (inclusive)
    last: int | None  # last opset (inclusive), None for all later ones
    backward: BackwardRule
    field: FieldMap
    role: RoleOf
    batch: BatchMap

    def covers(self, opset: int) -> bool:
        return self.first <= opset and (self.last is None or opset <= self.last)

    def role_of(self, index: GraphIndex, node: Node) -> Role:
        return self.role(index, node) if callable(self.role) else self.role


RULES: dict[tuple[str, str], list[OpRule]] = {}


def same_batch(index: GraphIndex, node: Node, axes: list[int | None]) -> list[int | None]:
    """Outputs keep the batch axis of their first batched input, aligned from the right (broadcasting)."""
    source = next(((name, axis) for name, axis in zip(node.input, axes) if axis is not None), None)
    if source is None:
        return [None] * len(node.output)
    in_rank = len(index.shape(source[0]) or [])
    out = []
    for name in node.output:
        shape = index.shape(name)
        axis = None if shape is None else source[1] + len(shape) - in_rank
        out.append(axis if axis is not None and 0 <= axis < len(shape) else None)
    return out


def op(*op_types: str, field: FieldMap, role: RoleOf = Role.OTHER, opsets: tuple[int, int | None] = (1, None),
       domain: str = "", batch: BatchMap = same_batch) -> Callable[[BackwardRule], BackwardRule]:
    """Register ``fn`` as the backward rule of ``op_types`` over ``opsets`` (inclusive), with the op's
    receptive-field mapping and layer role; an entry overlapping an existing one is refused."""

    def register(fn: BackwardRule) -> BackwardRule:
        for op_type in op_types:
            entry = OpRule(op_type, domain, opsets[0], opsets[1], fn, field, role, batch)
            for other in RULES.get((domain, op_type), []):
                if other.covers(entry.first) or entry.covers(other.first):
                    raise ValueError(f"{op_type} opsets {opsets} overlap the entry in {other.backward.__module__}")
            RULES.setdefault((domain, op_type), []).append(entry)
        return fn

    return register


def lookup(domain: str, op_type: str, opset: int) -> OpRule | None:
    """The entry for an op at a model's opset, or None."""
    return next((e for e in RULES.get((domain, op_type), []) if e.covers(opset)), None)


def lookup_node(index: GraphIndex, node: Node) -> OpRule | None:
    return lookup(node.domain, node.op_type, node.opset)


def batch_axes(index: GraphIndex) -> dict[str, int | None]:
    """The batch axis of every tensor that depends on the image (None where an op merged it with
    another axis), from the image input's axis 0 through the entries' ``batch`` maps; once per model."""
    if "batch_axes" not in index.memo:
        axes: dict[str, int | None] = {name: 0 for name in index.inputs}
        for i in range(len(index.nodes)):
            node = index.node(i)
            if not any(name in index.live for name in node.input):
                continue
            rule = lookup_node(index, node)
            try:
                found = (rule.batch if rule is not None else same_batch)(index, node, [axes.get(n) for n in node.input])
            except (InvalidArgument, ValueError, IndexError, ZeroDivisionError, TypeError):  # shapes or values unknown
                found = [None] * len(node.output)
            axes.update(zip(node.output, found))
        index.memo["batch_axes"] = axes
    return index.memo["batch_axes"]


def supported() -> str:
    """The op types with an entry, for messages."""
    return ", ".join(sorted({op_type if not domain else f"{domain}.{op_type}" for domain, op_type in RULES}))


# -- receptive-field mappings -----------------------------------------------------------------------
def union(spans: list[Span | None]) -> Span | None:
    """The smallest span holding all ``spans`` (of one tensor); None when there is none."""
    spans = [s for s in spans if s is not None]
    if not spans:
        return None
    return tuple(
        None if any(s[a] is None for s in spans) else (min(s[a][0] for s in spans), max(s[a][1] for s in spans))
        for a in range(len(spans[0]))
    )


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
