"""The layers of an exposed model: the table users pick from, ``--layer N`` numbering as in the
paper, names (a module's output is named after the module), the other modules a tensor is the output
of, its aliases (the tensor names the model had before the expose pass), the axis of its features,
and receptive fields (the input box an activation can see). What each op contributes comes from its
entry in the op registry (:mod:`zfnet.server.rules`).

A layer is selected by its paper number, its name, the name of any module whose output it is, an
alias, or ``logits`` for the graph's output; a miss suggests the nearest names. Its channels are the
positions on its ``channel_axis`` (1 for NCHW maps, the last axis for channels-last blocks and
(N, tokens, features) layers); a location is a position on its other axes but the batch's."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass

import onnx

from zfnet.converters.expose import ALIASES_KEY, INTERNAL_KEY, MODULES_KEY, SWITCHES_SUFFIX
from zfnet.converters.graph import get_metadata
from zfnet.converters.index import GraphIndex
from zfnet.errors import InvalidArgument, NotFound
from zfnet.server import projection
from zfnet.server.rules import Role, batch_axes, feature_axes, lookup_node
from zfnet.server.rules.registry import REFUSE, Span, union


@dataclass(frozen=True)
class Layer:
    """One row of the layer table."""

    index: int
    name: str
    op: str
    shape: list[int | str]  # the batch dimension as "N"
    number: int | None = None  # ``--layer number`` selects this tensor
    aliases: tuple[str, ...] = ()  # the tensor's names before the expose pass renamed it
    modules: tuple[str, ...] = ()  # the module calls whose output it is, outermost first
    internal: bool = False  # computed inside a module without being its output
    channel_axis: int = 1  # the axis of its features (channels)
    output: bool = False  # the graph's output: ``logits`` selects it

    @property
    def channels(self) -> int | str:
        """How many features (channels) it has: the size of its channel axis."""
        return self.shape[self.channel_axis]

    def spatial(self) -> list[int | str]:
        """Its axes other than the batch and the channel axis, in order: where a location points."""
        return [d for axis, d in enumerate(self.shape) if axis not in (0, self.channel_axis)]


def _index(model: onnx.ModelProto | GraphIndex) -> GraphIndex:
    return model if isinstance(model, GraphIndex) else GraphIndex(model)


def _role(index: GraphIndex, i: int) -> Role:
    node = index.node(i)
    rule = lookup_node(index, node)
    return rule.role_of(index, node) if rule is not None else Role.OTHER


def _block_end(index: GraphIndex, tensor: str, exposed: set[str]) -> str:
    """Follow a learned layer's output through the ops that extend its block (nonlinearity,
    normalisation, pooling, bias), as long as each is the tensor's only reader and is exposed."""
    while len(index.consumers.get(tensor, [])) == 1:
        i = index.consumers[tensor][0]
        output = index.nodes[i].output[0]
        if _role(index, i) is not Role.BLOCK or output not in exposed:
            break
        tensor = output
    return tensor


def channel_axis(index: GraphIndex, name: str) -> int:
    """The axis of a tensor's features (channels), from the graph (:func:`zfnet.server.rules.feature_axes`);
    axis 1 where the graph does not tell (an op split or merged it with other axes)."""
    axis, rank = feature_axes(index).get(name), len(index.shape(name) or [])
    return axis if axis is not None and 0 < axis < rank else 1


def aliases(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Exposed tensor name -> the names it had before the expose pass."""
    renames = json.loads(get_metadata(model, ALIASES_KEY) or "{}")
    out: dict[str, list[str]] = {}
    for old, new in renames.items():
        out.setdefault(new, []).append(old)
    return out


def layer_table(model: onnx.ModelProto | GraphIndex) -> list[Layer]:
    """Every exposed float activation that keeps the batch on its first axis (or that leads with the
    images where the graph merged that axis away and back), in graph order, with the paper's layer
    numbers at block ends."""
    index = _index(model)
    axes = batch_axes(index)
    exposed = set(index.outputs)
    numbers: dict[str, int] = {}
    for i in range(len(index.nodes)):
        if _role(index, i) is Role.LEARNED:
            numbers[_block_end(index, index.nodes[i].output[0], exposed)] = len(numbers) + 1
    names = aliases(index.model)
    modules: dict[str, list[str]] = json.loads(get_metadata(index.model, MODULES_KEY) or "{}")
    internal = set(json.loads(get_metadata(index.model, INTERNAL_KEY) or "[]"))
    images = (index.shape(index.image) or [None])[0] if index.image else None  # the input's batch dimension
    rows = sorted(
        (
            name for name in index.outputs
            if not name.endswith(SWITCHES_SUFFIX) and name in index.producers and index.is_float(name) and len(index.shape(name) or []) >= 2
            and (axes.get(name) == 0 or (axes.get(name) is None and (images == 1 or isinstance(images, str)) and (index.shape(name) or [None])[0] in (1, images)))
        ),
        key=lambda name: index.producers[name],
    )
    table = []
    for position, name in enumerate(rows):
        shape = ["N" if axis == 0 else d for axis, d in enumerate(index.shape(name) or [])]
        table.append(Layer(
            position, name, index.nodes[index.producers[name]].op_type, shape, numbers.get(name), tuple(names.get(name, ())),
            tuple(modules.get(name, ())), name in internal, channel_axis(index, name), name == index.outputs[0],
        ))
    return table


LOGITS = "logits"  # selects the graph's output, unless a tensor has that name


def resolve(table: list[Layer], layer: str | int) -> Layer:
    """``layer`` as a paper number (an int or a digit string), an exact tensor name, the name of a
    module whose output it is, an alias, or ``logits``; a miss suggests the nearest names."""
    if isinstance(layer, int) or (isinstance(layer, str) and layer.isdigit()):
        number = int(layer)
        for row in table:
            if row.number == number:
                return row
        last = max((r.number for r in table if r.number), default=0)
        raise NotFound(f"layer {number} is out of range: this model has {last} convolutional and fully connected layers (1..{last})", field="layer.number", reason="LAYER_NOT_FOUND", resource=("layer", str(number)))
    for names in (lambda row: (row.name,), lambda row: row.modules, lambda row: row.aliases):
        found = next((row for row in table if layer in names(row)), None)
        if found is not None:
            return found
    if layer == LOGITS:
        found = next((row for row in table if row.output), None)
        if found is not None:
            return found
    known = [row.name for row in table] + [m for row in table for m in row.modules] + [a for row in table for a in row.aliases]
    near = difflib.get_close_matches(layer, list(dict.fromkeys(known)), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise NotFound(
        f"no layer named {layer!r}{hint} (GetModelInfo, or `zfclient layers`, lists them)",
        field="layer.name", reason="LAYER_NOT_FOUND", resource=("layer", layer),
    )


def named(table: list[Layer], name: str) -> Layer:
    """The row of an exposed tensor by its exact name (a layer already resolved; a name of digits, a
    ``Sequential``'s ``3``, is that tensor here, not the paper's layer 3)."""
    return next((row for row in table if row.name == name), None) or resolve(table, name)


class ReceptiveFields:
    """Receptive fields of a model's activations: each op on the way to the image maps the span of
    its outputs to the span of its inputs (its registry entry's ``field``); computed once per query."""

    def __init__(self, model: onnx.ModelProto | GraphIndex) -> None:
        self._index = _index(model)
        self._cache: dict[tuple, tuple[int, int, int, int]] = {}

    def box(self, layer: str, location: tuple[int, ...] | None, channel: int | None = None, clip: bool = True) -> tuple[int, int, int, int]:
        """The input box (top, left, bottom, right; bottom/right exclusive) that can affect ``layer``
        at ``location`` (its position on the axes other than the batch and channel axis, None: the
        whole map) of ``channel`` (on the layer's channel axis; None: every channel). With
        ``clip=False`` the box is not cut at the image's (and every tensor's) border: the whole field,
        as if the padding went on forever (the paper shows border patches padded with grey); a unit
        without a spatial location (fully connected) sees the image, clipped."""
        clip = clip or not location
        key = (layer, None if location is None else tuple(location), channel, clip)
        if key not in self._cache:
            rank, axis = len(self._index.shape(layer) or []), channel_axis(self._index, layer)
            positions = iter([None] * rank if location is None else [(p, p) for p in location])
            start = tuple(None if a == 0 else (None if channel is None else (channel, channel)) if a == axis else next(positions, None) for a in range(rank))
            self._cache[key] = self._compute(layer, start, clip)
        return self._cache[key]

    def _compute(self, layer: str, start: Span, clip: bool) -> tuple[int, int, int, int]:
        index = projection.index_for(self._index, layer)[0]  # as the projection sees the graph
        image = index.image
        spans: dict[str, Span] = {layer: start}
        for node in index.ancestors(layer):
            outgoing = [_explicit(spans.get(name), index.shape(name) or []) for name in node.output]
            if all(s is None for s in outgoing):
                continue
            rule = lookup_node(index, node)
            field = rule.field if rule is not None else REFUSE
            for i, name in enumerate(node.input):
                if not name or name not in index.live:
                    continue
                span = field(index, node, outgoing, i)
                span = _clip(span, index.shape(name) or []) if clip else span
                if span is not None:
                    spans[name] = union([spans.get(name), span])
        box = spans.get(image) if image is not None else None
        if image is None or box is None:
            return (0, 0, 0, 0)  # nothing of the image is under this activation
        shape = index.shape(image)
        if shape is None:
            raise InvalidArgument(f"the image input {image!r} declares no shape: receptive fields cannot be placed on it")
        (top, bottom), (left, right) = [_whole(s, size) for s, size in zip(box[2:4], shape[2:4])]
        return (top, left, bottom + 1, right + 1)


def _whole(span: tuple[int, int] | None, size: int | str) -> tuple[int, int]:
    """An image axis's (lo, hi): ``span``, or the whole axis where it is None."""
    if span is not None:
        return span
    if not isinstance(size, int):
        raise InvalidArgument(f"the image's size {size!r} is not fixed: a receptive field over all of it has no extent")
    return (0, size - 1)


def _explicit(span: Span | None, shape: list) -> Span | None:
    """``span`` with each whole static axis written as its range, so that mappings stay exact."""
    if span is None:
        return None
    return tuple((0, size - 1) if s is None and isinstance(size, int) and size > 0 else s for s, size in zip(span, shape))


def _clip(span: Span | None, shape: list) -> Span | None:
    """``span`` clipped to a tensor's extent; None when nothing of it is left."""
    if span is None:
        return None
    out = []
    for s, size in zip(span, shape):
        if s is None or not isinstance(size, int):
            out.append(s)
            continue
        lo, hi = max(s[0], 0), min(s[1], size - 1)
        if lo > hi:
            return None
        out.append((lo, hi))
    return tuple(out)
