"""Ops that move values without computing: the signal is moved back the same way (reshapes,
transposes and channel shuffles, concatenation and splitting, slicing, padding, gathering); and ops
that read only their input's shape (``Shape``, ``Size``), which take no signal."""

from __future__ import annotations

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.server.rules.arithmetic import unbroadcast
from zfnet.server.rules.registry import POINTWISE, Role, Span, op, union


@op({"Identity": (1, 13, 14, 16, 19, 21, 23, 24, 25)}, field=POINTWISE, role=Role.BLOCK, local=True)
def identity(b, node, signals):
    return [signals[0]]


@op({"Dropout": (1, 6, 7, 10, 12, 13, 22)}, field=POINTWISE, role=Role.BLOCK, local=True)
def dropout(b, node, signals):
    """Identity at inference; a training-mode Dropout (opset 12+) is random and refused."""
    mode = node.input[2] if len(node.input) > 2 else ""
    if mode and (b.needs(mode) or b.constant_value(mode) is None or bool(b.constant_value(mode))):
        raise b.refuse("training mode drops values at random; export the model in eval mode")
    if node.opset < 7 and not node.attrs.get("is_test", 0):
        raise b.refuse("is_test=0 drops values at random; export the model in eval mode")
    return [signals[0]] + [None] * (len(node.input) - 1)


@op({"Cast": (1, 6, 9, 13, 19, 21, 23, 24, 25, 28), "CastLike": (15, 19, 21, 23, 24, 25)}, field=POINTWISE, role=Role.BLOCK, local=True)
def cast(b, node, signals):
    """Casts between float types pass the signal (always float32); a cast to integers passes none."""
    return [signals[0] if b.index.is_float(node.output[0]) else None] + [None] * (len(node.input) - 1)


# -- shapes: outputs computed from the input's shape alone, which carry nothing of the image ----------
def _reads_no_values(index, node, spans, i) -> None:
    """No position of the input is read, only its shape."""
    return None


def _no_batch(index, node, axes) -> list[int | None]:
    return [None]


@op({"Shape": (1, 13, 15, 19, 21, 23, 24, 25)}, field=_reads_no_values, batch=_no_batch,
    from_shape=lambda dims, attrs: np.asarray(dims[attrs.get("start", 0) : attrs.get("end")], np.int64))
@op({"Size": (1, 13, 19, 21, 23, 24, 25)}, field=_reads_no_values, batch=_no_batch,
    from_shape=lambda dims, attrs: np.asarray(int(np.prod(dims)), np.int64))
def shape_of(b, node, signals) -> list[str | None]:
    """The output depends on the input's shape, not on its values: no signal goes back."""
    return [None]


# -- reshapes ------------------------------------------------------------------------------------------
_DYNAMIC = 1_000_003  # a prime no static product reaches: the one dynamic dimension (the batch) matches only itself


def _sized(shape: list) -> list[int]:
    """Dimensions as ints, the dynamic one (whatever its symbolic name, as inference may rename it) as a large prime."""
    return [d if isinstance(d, int) and d > 0 else _DYNAMIC for d in shape]


def reshape_groups(in_shape: list, out_shape: list) -> list[tuple[list[int], list[int]]] | None:
    """Pair the runs of input and output axes of a reshape whose sizes multiply to the same number."""
    a, z = _sized(in_shape), _sized(out_shape)
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(z):
        gi, gj, pi, pj = [], [], 1, 1
        if i < len(a):
            gi, pi, i = [i], a[i], i + 1
        if j < len(z):
            gj, pj, j = [j], z[j], j + 1
        while pi != pj:
            if pi < pj and i < len(a):
                gi, pi, i = gi + [i], pi * a[i], i + 1
            elif pj < pi and j < len(z):
                gj, pj, j = gj + [j], pj * z[j], j + 1
            else:
                return None
        groups.append((gi, gj))
    return groups


def _flat_range(spans: list, dims: list[int]) -> tuple[int, int]:
    """The row-major flat range covering a box over ``dims``."""
    lo = hi = 0
    for span, size in zip(spans, dims):
        s = span or (0, size - 1)
        lo, hi = lo * size + s[0], hi * size + s[1]
    return lo, hi


def _unravel_range(lo: int, hi: int, dims: list[int]) -> list[tuple[int, int] | None]:
    """The smallest box over ``dims`` holding the flat range lo..hi (row-major)."""
    spans: list[tuple[int, int] | None] = []
    for k, size in enumerate(dims):
        inner = int(np.prod(dims[k + 1 :], dtype=np.int64))
        first, last = lo // inner, hi // inner
        spans.append((first, last))
        if first != last:
            return spans + [None] * (len(dims) - k - 1)
        lo, hi = lo % inner, hi % inner
    return spans


def _reshape_field(index, node, spans, i) -> Span:
    in_shape, out_shape = index.shape(node.input[0]) or [], index.shape(node.output[0]) or []
    out = union(spans)
    groups = reshape_groups(in_shape, out_shape)
    if groups is None:
        return (None,) * len(in_shape)
    a, z = _sized(in_shape), _sized(out_shape)
    span: list = [None] * len(in_shape)
    for gi, gj in groups:
        if not gi:
            continue
        lo, hi = _flat_range([out[k] for k in gj], [z[k] for k in gj]) if gj else (0, 0)
        for k, s in zip(gi, _unravel_range(lo, hi, [a[k] for k in gi])):
            span[k] = s
    return tuple(span)


def _reshape_batch(index, node, axes) -> list[int | None]:
    batch = axes[0]
    in_shape, out_shape = _sized(index.shape(node.input[0]) or []), _sized(index.shape(node.output[0]) or [])
    groups = reshape_groups(in_shape, out_shape) if batch is not None else None
    for gi, gj in groups or []:
        if batch in gi:
            if any(in_shape[k] != 1 for k in gi if k != batch):
                return [None]
            same = [k for k in gj if out_shape[k] == in_shape[batch]]
            rest_ones = all(out_shape[k] == 1 for k in gj if k not in same[:1])
            return [same[0] if same and rest_ones else None]
    return [None]


@op(
    {"Reshape": (1, 5, 13, 14, 19, 21, 23, 24, 25), "Flatten": (1, 9, 11, 13, 21, 23, 24, 25), "Squeeze": (1, 11, 13, 21, 23, 24, 25),
     "Unsqueeze": (1, 11, 13, 21, 23, 24, 25)},
    field=_reshape_field, batch=_reshape_batch,
)
def reshape(b, node, signals):
    return [b.reshape(signals[0], b.shape(node.input[0]))] + [None] * (len(node.input) - 1)


def _perm(index, node) -> list[int]:
    return list(node.attrs.get("perm") or range(len(index.shape(node.input[0]) or []))[::-1])


def _transpose_field(index, node, spans, i) -> Span:
    out, perm = union(spans), _perm(index, node)
    span: list = [None] * len(perm)
    for k, p in enumerate(perm):
        span[p] = out[k]
    return tuple(span)


def _transpose_batch(index, node, axes):
    return [None if axes[0] is None else _perm(index, node).index(axes[0])]


@op({"Transpose": (1, 13, 21, 23, 24, 25)}, field=_transpose_field, batch=_transpose_batch)
def transpose(b, node, signals):
    return [b.op("Transpose", [signals[0]], perm=[int(p) for p in np.argsort(_perm(b.index, node))])]


# -- concatenation and splitting -----------------------------------------------------------------------
def _offsets(index, names: list[str], axis: int) -> list[int]:
    return [0, *np.cumsum([(index.shape(n) or [])[axis] for n in names]).tolist()]


def _concat_field(index, node, spans, i) -> Span | None:
    out = union(spans)
    axis = node.attrs["axis"] % len(out)
    start, stop = _offsets(index, node.input, axis)[i : i + 2]
    span = list(out)
    if out[axis] is not None:
        lo, hi = max(out[axis][0], start), min(out[axis][1], stop - 1)
        if lo > hi:
            return None  # this input is not under the span
        span[axis] = (lo - start, hi - start)
    return tuple(span)


def _channel_concat(index, node) -> bool:
    """A Concat of NCHW maps along their channels is local; along space or of flattened tensors, not."""
    rank = len(index.shape(node.output[0]) or [])
    return rank == 4 and node.attrs["axis"] % rank == 1


@op({"Concat": (1, 4, 11, 13)}, field=_concat_field, local=_channel_concat)
def concat(b, node, signals):
    axis = node.attrs["axis"] % len(b.shape(node.output[0]))
    b.check_batch(node.output[0], [axis], "Concat")
    starts = _offsets(b.index, node.input, axis)
    return [
        b.op("Slice", [signals[0], b.const([lo], np.int64), b.const([hi], np.int64), b.const([axis], np.int64)]) if b.needs(name) else None
        for name, lo, hi in zip(node.input, starts[:-1], starts[1:])
    ]


def _split_field(index, node, spans, i) -> Span:
    rank = len(index.shape(node.input[0]) or [])
    axis = node.attrs.get("axis", 0) % rank
    offsets = _offsets(index, node.output, axis)
    shifted = []
    for k, span in enumerate(spans):
        if span is not None:
            part = list(span)
            part[axis] = None if span[axis] is None else (span[axis][0] + offsets[k], span[axis][1] + offsets[k])
            shifted.append(tuple(part))
    return union(shifted)


@op({"Split": (1, 2, 11, 13, 18)}, field=_split_field)
def split(b, node, signals):
    """The parts' signals are concatenated back (zeros for parts that take none); sizes come from the
    outputs' shapes, so every form of the split sizes (attribute, input, num_outputs) is covered."""
    axis = node.attrs.get("axis", 0) % len(b.shape(node.input[0]))
    b.check_batch(node.input[0], [axis], "Split")
    parts = [s if s is not None else b.zeros(out) for s, out in zip(signals, node.output)]
    return [b.op("Concat", parts, axis=axis)] + [None] * (len(node.input) - 1)


# -- selecting -----------------------------------------------------------------------------------------
def along_axis(b, g: str, axis: int, rank: int, matrix: np.ndarray) -> str:
    """Carry ``g`` back along ``axis``, (..., K, ...) -> (..., D, ...), through the (K, D) matrix of a
    linear map along that axis (0/1 for a selection, where positions chosen twice add up)."""
    perm = [a for a in range(rank) if a != axis] + [axis]
    moved = b.op("Transpose", [g], perm=perm)
    back = b.op("MatMul", [moved, b.const(matrix.astype(np.float32))])
    return b.op("Transpose", [back], perm=[int(p) for p in np.argsort(perm)])


def _onehot(indices: np.ndarray, size: int) -> np.ndarray:
    onehot = np.zeros((indices.size, size), np.float32)
    onehot[np.arange(indices.size), indices.ravel()] = 1.0
    return onehot


def _gather_indices(index, node) -> tuple[int, np.ndarray]:
    in_shape = index.shape(node.input[0]) or []
    axis = node.attrs["axis"] % len(in_shape)
    indices = index.constant(node.input[1])
    if indices is None:
        raise InvalidArgument(f"{node.label}: only constant indices are supported")
    return axis, np.where(indices < 0, indices + in_shape[axis], indices).astype(np.int64)


def _gather_field(index, node, spans, i) -> Span:
    out = union(spans)
    axis, indices = _gather_indices(index, node)
    k = indices.ndim
    chosen = out[axis : axis + k]
    lo, hi = _flat_range(list(chosen), list(indices.shape)) if k else (0, 0)
    picked = indices.ravel()[lo : hi + 1]
    return (*out[:axis], (int(picked.min()), int(picked.max())), *out[axis + k :])


def _gather_batch(index, node, axes) -> list[int | None]:
    batch = axes[0]
    if batch is None:
        return [None]
    axis = node.attrs["axis"] % len(index.shape(node.input[0]) or [])
    depth = len(index.shape(node.input[1]) or [])  # the indices' rank replaces the gathered axis
    return [None if batch == axis else batch if batch < axis else batch + depth - 1]


def _gather_features(index, node, axes) -> list[int | None]:
    """Gathering along the features axis with a vector of indices (a channel reorder, BGR to RGB)
    keeps it there; otherwise the axis moves as a batch axis does."""
    if axes[0] is not None and axes[0] == node.attrs["axis"] % len(index.shape(node.input[0]) or []) and len(index.shape(node.input[1]) or []) == 1:
        return [axes[0]]
    return _gather_batch(index, node, axes)


@op({"Gather": (1, 11, 13)}, field=_gather_field, batch=_gather_batch, features=_gather_features)
def gather(b, node, signals):
    """Constant indices (channel reorders, ``x[:, 0]``, a class token): each position's signal goes back
    to the position it was read from."""
    if b.needs(node.input[1]):
        raise b.refuse("only constant indices are supported")
    axis, indices = _gather_indices(b.index, node)
    b.check_batch(node.input[0], [axis], "Gather")
    in_shape = b.shape(node.input[0])
    picked = b.reshape(signals[0], [*in_shape[:axis], indices.size, *in_shape[axis + 1 :]])
    return [along_axis(b, picked, axis, len(in_shape), _onehot(indices, in_shape[axis])), None]


def _slice_params(index, node) -> dict[int, list[int]]:
    """Per sliced axis, the input positions the output reads, in order (axes left whole are absent)."""
    shape = index.shape(node.input[0]) or []
    if node.opset < 10:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes, steps = node.attrs.get("axes") or list(range(len(starts))), [1] * len(starts)
    else:
        values = [index.constant(n) if n else None for n in [*node.input[1:], "", ""][:4]]
        given_starts, given_ends, given_axes, given_steps = values
        if given_starts is None or given_ends is None or any(v is None for v, n in zip(values, node.input[1:]) if n):
            raise InvalidArgument(f"{node.label}: only constant starts, ends, axes and steps are supported")
        starts, ends = given_starts.tolist(), given_ends.tolist()
        axes = given_axes.tolist() if given_axes is not None else list(range(len(starts)))
        steps = given_steps.tolist() if given_steps is not None else [1] * len(starts)
    picked = {}
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= len(shape)
        size = shape[axis]
        if not isinstance(size, int):  # the dynamic batch: only its whole range
            if (start, step) == (0, 1) and end >= 1 << 31:
                continue
            raise InvalidArgument(f"{node.label}: slicing the batch axis mixes the images of a batch; this is not supported")
        start, end = start + size if start < 0 else start, end + size if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), size), min(max(end, 0), size)
        else:
            start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
        positions = list(range(start, end, step))
        if positions != list(range(size)):
            picked[axis] = positions
    return picked


def _slice_field(index, node, spans, i) -> Span | None:
    out = list(union(spans))
    for axis, positions in _slice_params(index, node).items():
        span = out[axis]
        if span is not None:
            chosen = positions[span[0] : span[1] + 1]
            if not chosen:
                return None
            out[axis] = (min(chosen), max(chosen))
    return tuple(out)


@op({"Slice": (1, 10, 11, 13)}, field=_slice_field)
def slice_(b, node, signals):
    """Unit steps are undone by zero padding; other steps (reversal, strides) scatter back."""
    shape = b.shape(node.input[0])
    g = signals[0]
    for axis, positions in _slice_params(b.index, node).items():
        b.check_batch(node.input[0], [axis], "Slicing")
        if positions and positions == list(range(positions[0], positions[-1] + 1)):
            pads = [0] * 2 * len(shape)
            pads[axis], pads[axis + len(shape)] = positions[0], shape[axis] - positions[-1] - 1
            g = b.op("Pad", [g, b.const(pads, np.int64)])
        else:
            g = along_axis(b, g, axis, len(shape), _onehot(np.asarray(positions, np.int64), shape[axis]))
    return [g] + [None] * (len(node.input) - 1)


# -- padding and broadcasting --------------------------------------------------------------------------
def _pads(index, node) -> tuple[str, dict[int, tuple[int, int]]]:
    """The mode and, per padded axis, (begin, end) pads (negative ones crop)."""
    rank = len(index.shape(node.input[0]) or [])
    if node.opset < 11:
        pads, axes = list(node.attrs["pads"]), list(range(rank))
    else:
        pads = index.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        has_axes = len(node.input) > 3 and bool(node.input[3])
        axes = index.constant(node.input[3]) if has_axes else np.arange(rank)
        if pads is None or axes is None:
            raise InvalidArgument(f"{node.label}: only constant pads (and axes) are supported")
        pads, axes = pads.tolist(), [int(a) % rank for a in axes.tolist()]
    return node.attrs.get("mode", "constant"), {a: (pads[k], pads[k + len(axes)]) for k, a in enumerate(axes)}


def _pad_field(index, node, spans, i) -> Span:
    out = list(union(spans))
    for axis, (begin, _) in _pads(index, node)[1].items():
        span = out[axis]
        if span is not None:
            out[axis] = (span[0] - begin, span[1] - begin)
    return tuple(out)


@op({"Pad": (2, 11, 13, 18, 19, 21, 23, 24, 25)}, field=_pad_field)  # Pad-1 names its pads "paddings"
def pad(b, node, signals):
    """Constant padding is undone by the opposite padding: what was added is cut, what was cut (negative pads) is zero."""
    mode, per_axis = _pads(b.index, node)
    if mode != "constant":
        raise b.refuse(f"only constant-mode padding is supported (this one is {mode!r})")
    rank = len(b.shape(node.input[0]))
    b.check_batch(node.input[0], [a for a, p in per_axis.items() if any(p)], "Padding")
    pads = [0] * 2 * rank
    for axis, (begin, end) in per_axis.items():
        pads[axis], pads[axis + rank] = -begin, -end
    return [b.op("Pad", [signals[0], b.const(pads, np.int64)])] + [None] * (len(node.input) - 1)


@op({"Expand": (8, 13)}, field=POINTWISE)
def expand(b, node, signals):
    return [unbroadcast(b, signals[0], node, 0), None]


@op({"Where": (9, 16)}, field=POINTWISE)
def where(b, node, signals):
    """The signal goes to X where the condition holds, to Y elsewhere."""
    condition, g = b.forward(node.input[0]), signals[0]
    zero = b.const(0.0)
    picks = {1: lambda: b.op("Where", [condition, g, zero]), 2: lambda: b.op("Where", [condition, zero, g])}
    return [None] + [unbroadcast(b, picks[i](), node, i) if b.needs(node.input[i]) else None for i in (1, 2)]
