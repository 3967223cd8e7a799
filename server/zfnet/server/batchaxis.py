"""A fixed batch axis made dynamic, where the graph computes the same at any batch size.

``torch.onnx.export`` without dynamic axes writes the example's batch B into the input, every
shape, and the shape constants it folded (``x.view(x.size(0), -1)`` becomes ``Reshape`` to
``[B, -1]``). Run as exported, every call pads to B rows (:class:`zfnet.server.runtime.FixedBatchSession`):
one image pays for B. When a model is first exposed (the cache keeps the result), :func:`freed`
writes a copy of the exposed graph whose input (and so every tensor) has a symbolic batch ``N``,
rewriting the constants that carry B where they are the batch (:data:`REWRITES`,
:func:`_repeated_constants`), then checks it: the copy at batch 1 and 3 against the original padded
to B on the same seeded images, every exposed tensor equal. The copy is kept only if it passes;
otherwise the model keeps its fixed batch and runs padded, and one log line says why.
"Equal" is exact for integer tensors (switches) and within 1e-6 of each float tensor's largest
magnitude (:func:`same`): onnxruntime may reduce in another order at another batch size, 1 ulp apart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from zfnet.converters import expose
from zfnet.converters.index import GraphIndex
from zfnet.errors import InvalidArgument, ResourceExhausted
from zfnet.server import runtime
from zfnet.server.admission import Estimate, MemoryBudget, value_bytes
from zfnet.server.rules import batch_axes

log = logging.getLogger("zfnet.server")

BATCH = "N"  # the symbolic batch dimension of a freed graph
CHECK_ROWS = (1, 3)  # batch sizes the freed graph is checked at
SEGMENTS = 16  # each part of the check's runs makes at most 1/SEGMENTS of the graph's tensor bytes per image (:class:`Parts`)
RELATIVE = 1e-6  # largest difference from the padded run, relative to a tensor's largest magnitude (a sum in another order: ~1e-7)
SEED = 0
COPY_FACTOR = 3  # the freed copy's peak over the load, in exposed models' bytes (ResNet-50: +215 MiB for 98 MB, VGG16: +1,055 MiB for 527 MB; 1x held through the check)
FETCH_COPIES = 2  # per tensor a part hands on: the copy fetched out of onnxruntime, and freed blocks the heap keeps (3 while the NCHWc layout added its Reorder buffers)
PIECE_COPIES = 3  # copies of a part's weights while its session is made (the graph, its serialised bytes, the session's)
# onnxruntime optimisers the check's sessions go without: the NCHWc layout turns every exposed tensor
# back to NCHW, all rows of it, before it is cut to the rows compared (ResNet-50 at 32 images: 27% of
# the padded run's kernel time in Reorder nodes); without it the check's peak is +654 MiB, not +857,
# and on one thread it costs 15-20% less CPU
PLAIN_LAYOUT = ("NchwcTransformer",)


class Unfreed(Exception):
    """Why a graph's batch axis cannot be made dynamic (one line, logged)."""


class Rewriter:
    """Shape constants of one graph copy rewritten in place: each node that reads one gets its own."""

    def __init__(self, model: onnx.ModelProto, index: GraphIndex, batch: int) -> None:
        self.model, self.index, self.batch = model, index, batch
        self.axes = batch_axes(index)
        self.added: list[onnx.NodeProto] = []  # nodes that compute rewritten shapes, from the image input alone
        self._rows: str | None = None  # the input's batch size as a 1-D int64 tensor, made on first need

    def shape_input(self, node: onnx.NodeProto, k: int = 1) -> np.ndarray | None:
        """The constant shape a node reads at input ``k`` (None: computed, it follows the batch)."""
        value = self.index.constant(node.input[k]) if len(node.input) > k else None
        return None if value is None else np.array(value, dtype=np.int64).reshape(-1)

    def replace(self, node: onnx.NodeProto, k: int, shape: np.ndarray) -> None:
        """Point input ``k`` of ``node`` at a new initializer holding ``shape``."""
        name = f"{node.input[k]}/batch_{len(self.model.graph.initializer)}"
        self.model.graph.initializer.append(numpy_helper.from_array(shape.astype(np.int64), name))
        node.input[k] = name

    def rows(self) -> str:
        """A tensor holding ``[N]``, the image batch's size (``Shape`` then ``Gather`` of axis 0)."""
        if self._rows is None:
            image = self.index.image or ""
            shape, first, rows = f"{image}/batch_shape", f"{image}/batch_axis", f"{image}/batch_rows"
            self.model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), first))
            self.added += [helper.make_node("Shape", [image], [shape]), helper.make_node("Gather", [shape, first], [rows], axis=0)]
            self._rows = rows
        return self._rows

    def repeated(self, node: onnx.NodeProto, k: int, row: np.ndarray, axis: int) -> None:
        """Input ``k`` of ``node`` becomes ``row`` (size 1 on ``axis``) repeated once per image on ``axis``."""
        base = f"{node.input[k]}/batch_{len(self.model.graph.initializer)}"
        before, after = f"{base}/before", f"{base}/after"
        self.model.graph.initializer.extend([
            numpy_helper.from_array(np.ascontiguousarray(row), f"{base}/row"),
            numpy_helper.from_array(np.array(row.shape[:axis], np.int64), before),
            numpy_helper.from_array(np.array(row.shape[axis + 1 :], np.int64), after),
        ])
        self.added += [
            helper.make_node("Concat", [before, self.rows(), after], [f"{base}/shape"], axis=0),
            helper.make_node("Expand", [f"{base}/row", f"{base}/shape"], [f"{base}/repeated"]),
        ]
        node.input[k] = f"{base}/repeated"


def _reshape(r: Rewriter, node: onnx.NodeProto) -> None:
    """``Reshape`` of an image-dependent tensor to a constant shape: the batch's entry becomes 0
    (copy the input's) where the batch stays on the same axis, else -1 (the rest is fixed)."""
    shape = r.shape_input(node)
    axis, source = r.axes.get(node.output[0]), r.axes.get(node.input[0])
    if shape is None or axis is None or source is None or axis >= len(shape) or shape[axis] != r.batch:
        return
    allow_zero = any(a.name == "allowzero" and a.i for a in node.attribute)
    if source == axis and not allow_zero:
        shape[axis] = 0
    elif -1 not in shape:
        shape[axis] = -1
    else:
        raise Unfreed(f"Reshape {node.name or node.output[0]!r} to {shape.tolist()} has no free entry for the batch")
    r.replace(node, 1, shape)


def _repeated_constants(r: Rewriter, node: onnx.NodeProto) -> None:
    """A constant with one identical row per image on the batch axis of what it meets (a class token
    expanded to the batch, folded into a constant by the expose pass) becomes that row repeated
    once per image of the batch fed."""
    axis = r.axes.get(node.output[0]) if node.output else None
    if axis is None:
        return
    rank = len(r.index.shape(node.output[0]) or [])
    for k, name in enumerate(node.input):
        shape = r.index.shape(name)  # read first: the index keeps each value it makes (the weights, a second copy of the model)
        if shape is not None and (len(shape) != rank or shape[axis] != r.batch):
            continue
        value = r.index.constant(name)
        if value is None or value.ndim != rank or value.shape[axis] != r.batch:
            continue
        row = np.take(value, [0], axis=axis)
        if np.array_equal(value, np.broadcast_to(row, value.shape)):
            r.repeated(node, k, row, axis)


# op type -> how a node of it carrying the batch size in a constant shape is rewritten; every node
# that meets the image also goes through :func:`_repeated_constants`
REWRITES: dict[str, Callable[[Rewriter, onnx.NodeProto], None]] = {"Reshape": _reshape}


def dynamic_copy(model: onnx.ModelProto, index: GraphIndex, batch: int) -> tuple[onnx.ModelProto, GraphIndex]:
    """A copy of the exposed ``model`` (fixed batch ``batch``) with a symbolic batch, its shape
    constants rewritten (:data:`REWRITES`) and its shapes inferred again; :class:`Unfreed` when a
    tensor loses the batch axis."""
    axes = batch_axes(index)
    lost = next((node for node in index.nodes if any(n in index.live and axes.get(n) is None for n in node.output)), None)
    if lost is not None:
        raise Unfreed(f"{lost.op_type} {lost.name or lost.output[0]!r} merges the batch axis with another")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    rewriter = Rewriter(copy, index, batch)
    for node in copy.graph.node:
        rule = REWRITES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is not None:
            rule(rewriter, node)
        _repeated_constants(rewriter, node)
    if rewriter.added:  # they read the image input only: first
        nodes = [*rewriter.added, *copy.graph.node]
        del copy.graph.node[:]
        copy.graph.node.extend(nodes)
    dim = next(v for v in copy.graph.input if v.name == index.image).type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_param = BATCH
    del copy.graph.value_info[:]
    for output in copy.graph.output:  # inferred again, from the symbolic batch
        output.type.tensor_type.ClearField("shape")
    try:
        return expose.expose_indexed(copy)
    except InvalidArgument as err:
        raise Unfreed(str(err)) from None


class Parts:
    """A graph's nodes in consecutive parts that each make at most a :data:`SEGMENTS`-th of the
    graph's tensor bytes per image (a node making more is a part alone; one part where a node reads
    a tensor made after it or holds a subgraph), and which part makes and last reads each tensor.
    Cut by bytes rather than by node count, no part holds the large early maps of several blocks."""

    def __init__(self, graph: onnx.GraphProto, index: GraphIndex) -> None:
        nodes = list(graph.node)
        made = {name: k for k, node in enumerate(nodes) for name in node.output if name}
        nested = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for node in nodes for a in node.attribute)
        ordered = all(made.get(name, -1) < k for k, node in enumerate(nodes) for name in node.input)
        sizes = [sum(value_bytes(index.infos[n]) for n in node.output if n in index.infos) for node in nodes]
        share = sum(sizes) / SEGMENTS if ordered and not nested else float("inf")
        bounds, held = [0], 0
        for k, size in enumerate(sizes):
            if held and held + size > share:
                bounds.append(k)
                held = 0
            held += size
        self.parts = [nodes[a:b] for a, b in zip(bounds, [*bounds[1:], len(nodes)])]
        self.constants = {t.name: t for t in graph.initializer}
        self.part_of = {name: p for p, part in enumerate(self.parts) for node in part for name in node.output if name}
        self.last_read = {name: p for p, part in enumerate(self.parts) for node in part for name in node.input}

    def reads(self, p: int) -> list[str]:
        """The tensors part ``p`` reads from the image or from earlier parts."""
        return list(dict.fromkeys(
            n for node in self.parts[p] for n in node.input if n and n not in self.constants and self.part_of.get(n, -1) < p
        ))


def check_bytes(model: onnx.ModelProto, index: GraphIndex, batch: int) -> int:
    """An upper bound of what :func:`check` holds at once over the load: the largest part's tensors
    (those it reads, those it makes, and :data:`FETCH_COPIES` of those it hands on) at ``batch``
    images for the padded run, and at the rows of the freed graph's runs and of the compared tensors
    waiting for their pair (a part's worth each, twice for the parts the two runs may be apart), plus
    the copies of its weights (serialised, in the session)."""
    split = Parts(model.graph, index)
    rows = batch + 2 * (sum(CHECK_ROWS) + max(CHECK_ROWS))

    def per_image(names: Iterable[str]) -> int:
        return sum(value_bytes(index.infos[n]) for n in names if n in index.infos)

    def held(p: int, part: list[onnx.NodeProto]) -> int:
        made = [n for node in part for n in node.output if n]
        carried = per_image(n for n in made if split.last_read.get(n, -1) > p)
        weights = sum(split.constants[n].ByteSize() for n in {n for node in part for n in node.input} if n in split.constants)
        return rows * (per_image(split.reads(p)) + per_image(made) + FETCH_COPIES * carried) + PIECE_COPIES * weights

    return max((held(p, part) for p, part in enumerate(split.parts)), default=0)


def in_parts(model: onnx.ModelProto, index: GraphIndex, feeds: list[np.ndarray], rows: int = 0) -> Iterator[dict[str, list[np.ndarray]]]:
    """Every exposed tensor of ``model`` run on each image batch of ``feeds``, a part of the graph at a
    time: the graph runs in consecutive parts (:class:`Parts`), each fed the tensors the earlier ones
    made that it reads, and each part yields the exposed tensors it made (one per feed; their first
    ``rows`` rows on the batch axis where ``rows`` is given) before the next part runs. onnxruntime
    holds every tensor of a run to its end, so the whole exposed graph at once held the padded batch
    of all of them (ResNet-50 at 32 images: 4.3 GB over the load; in parts, 0.65 GB)."""
    split = Parts(model.graph, index)
    constants, last_read = split.constants, split.last_read
    axes, exposed = batch_axes(index), {o.name for o in model.graph.output}
    values = [{index.image or "": feed} for feed in feeds]
    for p, part in enumerate(split.parts):
        reads = split.reads(p)
        made_here = [n for node in part for n in node.output if n]
        carried = [n for n in made_here if last_read.get(n, -1) > p]
        cut = [n for n in made_here if n in exposed]
        sliced = {n for n in cut if rows and axes.get(n) is not None}
        extra = {"check/start": np.array([0], np.int64), "check/stop": np.array([rows], np.int64)} if sliced else {}
        slices = []
        for name in (n for n in cut if n in sliced):
            axis = axes[name]
            extra.setdefault(f"check/axis{axis}", np.array([axis], np.int64))
            slices.append(helper.make_node("Slice", [name, "check/start", "check/stop", f"check/axis{axis}"], [f"check/{name}"]))
        fetched = list(dict.fromkeys([*carried, *(f"check/{n}" if n in sliced else n for n in cut)]))
        if not fetched:  # nothing of it is exposed or read later
            continue
        read = {n for node in part for n in node.input}
        piece = helper.make_graph(
            [*part, *slices], f"check{p}", [helper.make_tensor_value_info(n, index.elem_type(n), None) for n in reads],
            [helper.make_tensor_value_info(n, index.elem_type(n.removeprefix("check/")), None) for n in fetched],
            [t for name, t in constants.items() if name in read] + [numpy_helper.from_array(v, k) for k, v in extra.items()],
        )
        session = runtime.session(
            helper.make_model(piece, opset_imports=model.opset_import, ir_version=model.ir_version, functions=model.functions).SerializeToString(),
            disabled=PLAIN_LAYOUT,
        )
        found: dict[str, list[np.ndarray]] = {n: [] for n in cut}
        for k, held in enumerate(values):
            got = dict(zip(fetched, runtime.tensors(session, fetched, {n: held[n] for n in reads})))
            for n in cut:
                found[n].append(got[f"check/{n}" if n in sliced else n])
            values[k] = {n: v for n, v in held.items() if last_read.get(n, -1) > p} | {n: got[n] for n in carried}
            del got, held  # (held to the next part, it kept this part's inputs too)
        del session
        yield found
        del found


def _next(parts: Iterator[dict[str, list[np.ndarray]]], failed: str) -> dict[str, list[np.ndarray]] | None:
    """The next part's tensors of :func:`in_parts` (None after the last); :class:`Unfreed` naming
    ``failed`` when onnxruntime fails on it (Fail/InvalidGraph/RuntimeException)."""
    try:
        return next(parts, None)
    except Exception as err:
        raise Unfreed(f"{failed}: {str(err).splitlines()[0][:200]}") from None


def check(fixed: onnx.ModelProto, index: GraphIndex, free: onnx.ModelProto, free_index: GraphIndex, batch: int) -> None:
    """:class:`Unfreed` unless the ``free`` graph at each of :data:`CHECK_ROWS` images gives every
    exposed tensor as the ``fixed`` graph does (:func:`same`) on the same images padded with zeros to
    ``batch``. Both run a part at a time (:func:`in_parts`), the padded run only as far as the freed
    one has gone: each tensor is compared as soon as both have made it, then dropped."""
    image = next(v for v in fixed.graph.input if v.name == index.image)
    shape = [d.dim_value for d in image.type.tensor_type.shape.dim]
    rows = min(max(CHECK_ROWS), batch)
    sizes = [n for n in CHECK_ROWS if n <= rows]
    images = np.random.default_rng(SEED).uniform(0, 255, (rows, *shape[1:])).astype(np.float32)
    padded = np.concatenate([images, np.zeros((batch - rows, *shape[1:]), np.float32)])
    reference = in_parts(fixed, index, [padded], rows)
    runs = in_parts(free, free_index, [images[:n] for n in sizes])
    del padded
    axes, left = batch_axes(index), {o.name for o in fixed.graph.output}
    expected: dict[str, np.ndarray] = {}
    while (made := _next(runs, "onnxruntime fails on the freed graph")) is not None:
        for name in (n for n in made if n in left):
            while name not in expected:
                part = _next(reference, "the padded reference run failed")
                if part is None:
                    raise Unfreed(f"tensor {name!r} of the freed graph is not made by the padded run")
                expected |= {n: tensors[0] for n, tensors in part.items()}
            want, axis = expected.pop(name), axes.get(name)
            for n, got in zip(sizes, made[name]):
                # (fewer rows: a tensor the batch was reduced out of, compared whole)
                if not same(got, np.take(want, range(n), axis=axis) if axis is not None and want.shape[axis] >= n else want):
                    raise Unfreed(f"at batch {n} tensor {name!r} differs from the padded run")
            left.discard(name)
        del made
    if left:
        raise Unfreed(f"the freed graph does not make tensor {min(left)!r}")


def same(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal shapes, and equal values: integers (switches) exactly, floats to :data:`RELATIVE` of the
    tensor's largest magnitude (onnxruntime's kernels may sum in another order at another batch size)."""
    if got.shape != want.shape:
        return False
    if not np.issubdtype(want.dtype, np.floating):
        return np.array_equal(got, want)
    scale = float(np.nanmax(np.abs(want), initial=0.0))
    return np.allclose(got, want, rtol=0.0, atol=RELATIVE * scale, equal_nan=True)


def fixed_batch(index: GraphIndex) -> int:
    """The image input's batch size when fixed, else 0."""
    info = index.infos.get(index.image or "")
    dims = info.type.tensor_type.shape.dim if info is not None else []
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0


def estimate(model: onnx.ModelProto, index: GraphIndex, name: str, batch: int) -> Estimate:
    """What :func:`freed` allocates over the load: the freed copy (:data:`COPY_FACTOR` times the
    exposed model) and the check (:func:`check_bytes`)."""
    return Estimate(
        f"checking the fixed batch of model {name!r}", {"freed copy": COPY_FACTOR * model.ByteSize(), "check": check_bytes(model, index, batch)},
    )


def freed(
    model: onnx.ModelProto, index: GraphIndex, name: str, limits: Callable[[onnx.ModelProto, str], None] | None = None,
    budget: MemoryBudget | None = None,
) -> tuple[onnx.ModelProto, GraphIndex, bool]:
    """The exposed ``model`` (and its index) with a fixed batch of more than one image made dynamic
    (:func:`dynamic_copy`) where :func:`check` passes; else ``model`` as it is, with one log line
    saying why. ``limits`` (the server's admission check) sees the model before it runs on a batch;
    the copy and the check run inside a reservation of their :func:`estimate` in ``budget``. The
    third item says whether the answer is final (to be cached): when ``budget`` has no room for the
    check, the model runs padded for now and is checked again on its next load."""
    batch = fixed_batch(index)
    if batch <= 1:  # dynamic already, or one image at a time: nothing is padded
        return model, index, True
    if limits is not None:
        limits(model, name)
    with contextlib.ExitStack() as reserved:
        try:
            if budget is not None:
                reserved.enter_context(budget.reserve(estimate(model, index, name, batch)))
        except ResourceExhausted as err:
            log.info("model %s keeps its fixed batch of %d for now (each run padded to it): %s", name, batch, str(err).splitlines()[0])
            return model, index, False
        try:
            free, free_index = dynamic_copy(model, index, batch)
            check(model, index, free, free_index, batch)
        except Unfreed as why:
            log.info("model %s keeps its fixed batch of %d (each run padded to it): %s", name, batch, why)
            return model, index, True
    log.info("model %s: fixed batch of %d made dynamic (equal at batch %s to the padded run)", name, batch, " and ".join(map(str, CHECK_ROWS)))
    return free, free_index, True
