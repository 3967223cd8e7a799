"""Features of chosen layers over a data set, for transfer learning (Zeiler & Fergus 2013, Sec. 5):
the trained layers stay fixed and a linear classifier is trained on layer l's features of a new
data set.

One forward pass per batch gives every chosen layer; each layer's activation is pooled on its
spatial axes (``none``, ``avg``, ``max``, or ``grid:S``, the average over an S x S grid with
adaptive-average-pool bins, as probing protocols do) and flattened to one row of D values per
image. ``pixels`` is the model input itself (RGB 0..255 at the model's input size, before the
graph's own preprocessing): the raw-pixel baseline a probe compares against.

Free of gRPC: the servicer streams :func:`job`'s batches through the engine. What a job asks and
returns (its layers, :class:`~zfnet.wire.features.Pooling`, rows) is :mod:`zfnet.wire.features`.
A job runs inside one reservation of the memory budget, for one batch at a time, its size lowered
to fit when the one asked for does not (:func:`job`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zfnet.converters.graph import IR_VERSION, OPSET
from zfnet.errors import InvalidArgument
from zfnet.server import admission, runtime
from zfnet.server.admission import FORWARD_FACTOR, NO_BUDGET, Cost, next_batch, streamed_room
from zfnet.server.datasets import Batch, Source, StreamedSource
from zfnet.server.layers import resolve
from zfnet.server.models import LoadedModel
from zfnet.wire.features import NONE, PIXELS, FeatureSpec, Pooling

DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}

# -- pooling: one small pure rule per kind, each adding the ONNX nodes that pool one layer ------
# A rule takes the graph being built, the layer's tensor (n, C, *spatial) in float32, its per-image
# shape and the grid size S, and returns the pooled tensor's name. The pooled rows come out of
# onnxruntime in the model's own run of the batch (on the GPU where the model runs there).


class HeadGraph:
    """The nodes and constants of a feature head under construction; names are unique per layer."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []

    def node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def constant(self, name: str, value: np.ndarray) -> str:
        self.constants.append(numpy_helper.from_array(value, name))
        return name


PoolRule = Callable[[HeadGraph, str, tuple[int, ...], int], str]
POOLS: dict[str, PoolRule] = {}


def pool_rule(kind: str) -> Callable[[PoolRule], PoolRule]:
    def register(rule: PoolRule) -> PoolRule:
        if kind in POOLS:
            raise ValueError(f"pooling {kind!r} is registered twice")
        POOLS[kind] = rule
        return rule

    return register


@pool_rule("none")
def _none(graph: HeadGraph, x: str, shape: tuple[int, ...], grid: int) -> str:
    return x


@pool_rule("avg")
def _avg(graph: HeadGraph, x: str, shape: tuple[int, ...], grid: int) -> str:
    return graph.node("GlobalAveragePool", [x], f"{x}/avg")


@pool_rule("max")
def _max(graph: HeadGraph, x: str, shape: tuple[int, ...], grid: int) -> str:
    return graph.node("GlobalMaxPool", [x], f"{x}/max")


def _bins(length: int, grid: int) -> np.ndarray:
    """(length, grid) weights of adaptive average pooling: bin i averages ``[floor(i L / S), ceil((i + 1) L / S))``."""
    weights = np.zeros((length, grid), np.float32)
    for i in range(grid):
        begin, end = i * length // grid, -(-(i + 1) * length // grid)
        weights[begin:end, i] = 1.0 / (end - begin)
    return weights


@pool_rule("grid")
def _grid(graph: HeadGraph, x: str, shape: tuple[int, ...], grid: int) -> str:
    """Average over an S x S (x S ...) grid of adaptive-average-pool bins. The bins are products of
    intervals, so the average is one matrix product per spatial axis: the last axis is reduced, then
    turned to the front of the spatial axes, once per axis, which leaves them in their order."""
    rank = len(shape) + 1  # with the batch axis
    turn = [0, 1, rank - 1, *range(2, rank - 1)]
    for k, length in enumerate(reversed(shape[1:])):
        x = graph.node("MatMul", [x, graph.constant(f"{x}/bins{k}", _bins(length, grid))], f"{x}/grid{k}")
        x = graph.node("Transpose", [x], f"{x}/turn", perm=turn) if rank > 3 else x
    return x


def plan(
    model: LoadedModel, layers: Sequence[tuple[str | int, Pooling | None]], default: Pooling = NONE,
) -> list[FeatureSpec]:
    """Resolve the asked layers (numbers, tensor names or ``pixels``) with their pooling. A layer's own
    pooling wins; else ``default`` applies to network layers with spatial axes, and ``none`` to the
    others and to ``pixels``."""
    if not layers:
        raise InvalidArgument("no layers asked for", field="job.layers", reason="FIELD_REQUIRED")
    resolved: list[tuple[str, int | None, Pooling | None, int]] = []
    for layer, pooling in layers:
        if layer == PIXELS:
            resolved.append((PIXELS, None, pooling, 1))
        else:
            row = resolve(model.layers, layer)
            resolved.append((row.name, row.number, pooling, row.channel_axis))
    names = [name for name, _, _, _ in resolved]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidArgument(f"layer(s) {', '.join(twice)} asked for more than once")
    tensors = _tensors(model, [n for n in names if n != PIXELS])
    tensors[PIXELS] = (tuple(model.input_shape[1:]), "float32")
    out = []
    for name, number, pooling, axis in resolved:
        stored, element = tensors[name]
        shape = (stored[axis - 1], *stored[: axis - 1], *stored[axis:])  # channels first
        if pooling is None:
            pooling = default if name != PIXELS and len(shape) >= 2 else NONE
        out.append(FeatureSpec(name, number, str(pooling), shape, pooling.shape(name, shape), element, axis))
    return out


def _tensors(model: LoadedModel, names: list[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-image shapes and element types of tensors, from one forward pass on a blank image (dynamic
    axes included)."""
    if not names:
        return {}
    blank = np.zeros([1, *model.input_shape[1:]], np.float32)
    values = runtime.tensors(model.session, names, {model.input_name: blank})
    return {name: (tuple(int(d) for d in value.shape[1:]), value.dtype.name) for name, value in zip(names, values)}


class Head:
    """The graph that turns one forward pass's tensors into feature rows: each layer cast to float32,
    its channel axis turned to axis 1, pooled by its rule, flattened to (n, D) and cast to the stored type. onnxruntime runs it right
    after the model, on the same device, so only the pooled rows reach the host."""

    def __init__(self, layers: Sequence[FeatureSpec], dtype: str) -> None:
        stored = helper.np_dtype_to_tensor_dtype(feature_dtype(dtype))
        graph, inputs, outputs = HeadGraph(), [], []
        for k, layer in enumerate(layers):
            element = helper.np_dtype_to_tensor_dtype(np.dtype(layer.layer_dtype))
            x, axis, shape = f"layer{k}", layer.channel_axis, layer.layer_shape
            inputs.append(helper.make_tensor_value_info(x, element, ["n", *shape[1:axis], shape[0], *shape[axis:]]))
            if element != TensorProto.FLOAT:
                x = graph.node("Cast", [x], f"{x}/float", to=TensorProto.FLOAT)
            if axis != 1:  # channels first, as pooling and rows have them
                x = graph.node("Transpose", [x], f"{x}/channels_first", perm=[0, axis, *(a for a in range(1, len(shape) + 1) if a != axis)])
            pooling = Pooling.parse(layer.pooling)
            x = POOLS[pooling.kind](graph, x, layer.layer_shape, pooling.grid)
            x = graph.node("Flatten", [x], f"{x}/rows", axis=1)
            graph.node("Cast", [x], f"rows{k}", to=stored)
            outputs.append(helper.make_tensor_value_info(f"rows{k}", stored, ["n", layer.size]))
        model = helper.make_model(
            helper.make_graph(graph.nodes, "feature_head", inputs, outputs, graph.constants),
            opset_imports=[helper.make_opsetid("", OPSET)],
        )
        model.ir_version = IR_VERSION
        self.names = [layer.name for layer in layers]
        self.session = runtime.session(model.SerializeToString(), threads=1)

    def __call__(self, values: dict) -> list[np.ndarray]:
        """Rows (n, D) per layer from the forward pass's ``values`` by tensor name (numpy arrays, or
        device tensors left by :func:`zfnet.server.runtime.run`)."""
        feeds = {f"layer{k}": values[name] for k, name in enumerate(self.names)}
        rows = runtime.run(self.session, [f"rows{k}" for k in range(len(self.names))], feeds)
        return [rows[f"rows{k}"] for k in range(len(self.names))]


@functools.lru_cache(maxsize=16)
def head(layers: tuple[FeatureSpec, ...], dtype: str) -> Head:
    """The head of a job's layers, built once: a job and the blocks of a Ray job share it."""
    return Head(layers, dtype)


def feature_dtype(dtype: str) -> np.dtype:
    """The stored type of feature rows: ``float32`` or ``float16``."""
    if dtype not in DTYPES:
        raise InvalidArgument(f"unknown feature dtype {dtype!r}; use {' or '.join(DTYPES)}")
    return DTYPES[dtype]


def extract(model: LoadedModel, layers: Sequence[FeatureSpec], inputs: np.ndarray, dtype: str = "float32") -> list[np.ndarray]:
    """Rows (n, D) of each layer for a batch of model inputs (n, C, H, W), from one forward pass and
    the layers' head; computed in float32, stored as ``dtype``. The forward values stay on the
    device when there is one."""
    names = forward_names(layers)
    values = runtime.run(model.fetching(names, exact=False), names, {model.input_name: inputs}, host=()) if names else {}
    values[PIXELS] = inputs
    return head(tuple(layers), dtype)(values)


def forward_names(layers: Sequence[FeatureSpec]) -> list[str]:
    """The tensors a features job's forward pass computes (pixels are its input)."""
    return [layer.name for layer in layers if layer.name != PIXELS]


def run(model: LoadedModel, layers: Sequence[FeatureSpec], source: Source, dtype: str = "float32") -> Iterator[tuple[Batch, list[np.ndarray]]]:
    """Every batch of ``source`` in data-set order with its rows per layer; a batch whose images
    were all skipped comes with empty arrays."""
    stored = feature_dtype(dtype)
    for batch in source.batches(model.framing):
        if len(batch.indices):
            rows = extract(model, layers, batch.inputs, dtype)
        else:
            rows = [np.zeros((0, layer.size), stored) for layer in layers]
        yield batch, rows


def batch_cost(model: LoadedModel, layers: Sequence[FeatureSpec], source: Source, dtype: str) -> Cost:
    """What a features job holds: per image of a batch its input (and the next batch's, decoded
    ahead), a forward pass and the feature rows (computed and sent); the build of its forward session
    when it is not built, the images being decoded and,
    when its client streams them, the images received and not yet decoded."""
    footprint = model.footprint
    rows = sum(layer.size for layer in layers) * feature_dtype(dtype).itemsize
    return Cost(
        f"Features of {len(layers)} layer(s), {{n}} images per batch",
        {"input batch": 2 * footprint.input, "forward pass": FORWARD_FACTOR * footprint.forward, "feature rows": 2 * rows},
        {
            "session build": model.fetching_build(forward_names(layers), exact=False), "image decoding": source.decoding,
            "streamed images": streamed_room(model.budget) if isinstance(source, StreamedSource) else 0,
        },
    )


def job(model: LoadedModel, layers: Sequence[FeatureSpec], source: Source, dtype: str = "float32") -> tuple[Source, Iterator[tuple[Batch, list[np.ndarray]]]]:
    """The source with its batch lowered to fit a share of the budget (when the one asked for does
    not), and its batches with their rows (:func:`run`), all inside one reservation of the budget
    for the job (:func:`batch_cost`); a cancelled call stops before its next batch."""
    cost = batch_cost(model, layers, source, dtype)
    fitted = source.fitted(cost.fit(source.batch_size, model.room(NO_BUDGET)), cost.fixed["streamed images"])

    def batches() -> Iterator[tuple[Batch, list[np.ndarray]]]:
        items = run(model, layers, fitted, dtype)
        with model.reserve(cost.estimate(fitted.largest_batch), model.fetching_key(forward_names(layers), exact=False)), admission.covering(cost.fixed["streamed images"]):
            while True:
                next_batch()
                item = next(items, None)
                if item is None:
                    return
                yield item

    return fitted, batches()
