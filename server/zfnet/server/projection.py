"""Build the projection graph that carries a signal from one layer back to the input pixels.

The projection graph is an ONNX model of its own, run on onnxruntime (so on the GPU when there is
one, and in batches). Its inputs are

- ``signal`` (M, *layer shape): what is sent down, one row per (image, channel) reconstruction;
- ``image_index`` (M,) int64: which image of the forward batch each row belongs to;
- ``fwd/<tensor>`` (N, ...): the forward values the rules need (ReLU inputs, max-pool switches),
  taken from the one forward pass that served every channel of the batch;

and its output is ``reconstruction`` (M, *input shape). Each op on the path passes the signal back
by its vector-Jacobian product (the ``backward`` of its entry in :mod:`zfnet.server.rules`); ReLU's
rule is the method. Signals are float32 whatever the model's float type; a signal keeps its forward
tensor's layout, with the M rows on that tensor's batch axis (which transposes may move).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import logging
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

from zfnet.converters import expose
from zfnet.converters.graph import IR_VERSION, OPSET
from zfnet.converters.index import GraphIndex, Node
from zfnet.errors import FailedPrecondition, InvalidArgument
from zfnet.server import runtime
from zfnet.server.rules import FLOAT_TYPES, batch_axes, lookup_node, supported
from zfnet.server.rules.emitter import Emitter

log = logging.getLogger("zfnet.server")

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
    per_image: bool = False  # run one row at a time on one image's forward values (see :func:`build`)
    stop: str = ""  # the tensor whose signal is the output ("": the image input)


def one_image(index: GraphIndex) -> GraphIndex | None:
    """The index of the model specialised to one image (its batch dimension 1, shape arithmetic folded
    again), so that every shape is static; None when the model takes a fixed batch of several images."""
    if "one_image" not in index.memo:
        image = index.image
        if image is None:
            raise InvalidArgument(f"the model has {len(index.inputs)} inputs; a projection needs one, the image batch")
        dims = index.infos[image].type.tensor_type.shape.dim
        if dims[0].HasField("dim_value") and dims[0].dim_value != 1:
            index.memo["one_image"] = None
        elif dims[0].HasField("dim_value"):
            index.memo["one_image"] = index
        else:
            model = onnx.ModelProto()
            model.CopyFrom(index.model)
            batch = next(v for v in model.graph.input if v.name == image).type.tensor_type.shape.dim[0]
            batch.Clear()
            batch.dim_value = 1
            del model.graph.value_info[:]
            for output in model.graph.output:  # inferred again, from the one image
                output.type.tensor_type.ClearField("shape")
            one = expose.expose_indexed(model)[1]
            one.stored = index.stored  # the same initializers, left where the model's are
            index.memo["one_image"] = one
    return index.memo["one_image"]


def index_for(index: GraphIndex, layer: str) -> tuple[GraphIndex, bool]:
    """The index to project ``layer`` with, and whether it runs one image at a time: the model's own
    when every tensor on the way keeps the batch on an axis of its own, else the one-image one."""
    axes = batch_axes(index)
    if axes.get(layer) == 0 and all(axes.get(n) is not None for node in index.ancestors(layer) for n in node.output if n in index.live):
        return index, False
    one = one_image(index)
    if one is None or layer not in one.live or (one.shape(layer) or [None])[0] != 1:
        raise InvalidArgument(f"tensor {layer!r} does not keep the images of a batch on its first axis; choose another layer")
    return one, True


class Builder(Emitter):
    """Accumulates the nodes of one projection graph; the API the backward rules are written in."""

    def __init__(self, index: GraphIndex, method: str, per_image: bool = False) -> None:
        if method not in METHODS:
            raise InvalidArgument(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        super().__init__()
        self.method = method
        self.index = index
        self._gathered: dict[str, str] = {}
        self._copied: dict[str, str] = {}
        self._batch = batch_axes(index)
        self.per_image = per_image  # shapes are the forward pass's own (batch 1), one row per run
        self.node: Node | None = None  # the forward node whose rule is running
        self.reach: set[str] | None = None  # the tensors a signal may reach (None: every one that depends on the image)

    @property
    def forward_tensors(self) -> list[str]:
        """The forward tensors the rules asked for, fed as ``fwd/<name>``."""
        return list(self._gathered)

    # -- what the rules read -------------------------------------------------------------------
    def batch_axis(self, name: str) -> int | None:
        """The batch axis of a forward tensor that depends on the image (None for constants, and for
        every tensor when the projection runs one image at a time)."""
        return self._batch.get(name) if name in self.index.live and not self.per_image else None

    def shape(self, name: str) -> list[int]:
        """Static shape of a forward tensor, its batch dimension as -1; an error if any other is unknown."""
        dims = self.index.shape(name)
        value = self.index.constant(name) if dims is None and name not in self.index.live else None
        if value is not None:
            dims = list(value.shape)
        if dims is None:
            raise FailedPrecondition(f"the shape of tensor {name!r} is unknown: shape inference could not fix it (export the model with static input dimensions)")
        batch = self.batch_axis(name)
        if name in self.index.live and batch is None and not self.per_image:
            raise self.refuse(f"tensor {name!r} no longer has a batch axis (an op merged it with another); "
                              "projections keep the images of a batch apart")
        shape = [-1 if axis == batch else d for axis, d in enumerate(dims)]
        static = [d for d in shape if isinstance(d, int)]
        if len(static) < len(shape) or any(d <= 0 and axis != batch for axis, d in enumerate(static)):
            raise InvalidArgument(f"tensor {name!r} has a dynamic shape {dims}; only the batch dimension may vary")
        return static

    def needs(self, name: str) -> bool:
        """Whether a forward tensor depends on the input, so a signal must reach it."""
        return bool(name) and name in self.index.live and (self.reach is None or name in self.reach)

    def constant_value(self, name: str) -> np.ndarray | None:
        """The value of a forward initializer or Constant output, else None."""
        return self.index.constant(name) if name else None

    def forward(self, name: str) -> str:
        """A forward value in the projection graph, as float32 if it is a float: copied if constant,
        else gathered per signal row (along its batch axis) through ``image_index``."""
        if name not in self.index.live:
            if name not in self._copied:
                value = self.index.constant(name)
                if value is None:
                    raise self.refuse(f"the value of {name!r} is not known before the image is")
                if value.dtype in (np.float16, np.float64):
                    value = value.astype(np.float32)
                self._copied[name] = self.const(value, value.dtype)
            return self._copied[name]
        if name not in self._gathered:
            axis = self.batch_axis(name)
            if self.per_image:
                value = FORWARD_PREFIX + name
            elif axis is None:
                raise self.refuse(f"tensor {name!r} has no batch axis; projections keep the images of a batch apart")
            else:
                value = self.op("Gather", [FORWARD_PREFIX + name, IMAGE_INDEX], axis=axis)
            if self.index.elem_type(name) in FLOAT_TYPES - {TensorProto.FLOAT}:
                value = self.op("Cast", [value], to=TensorProto.FLOAT)
            self._gathered[name] = value
        return self._gathered[name]

    def refuse(self, message: str) -> InvalidArgument:
        """An error naming the node whose rule is running; ``raise b.refuse(...)``."""
        where = f"{self.node.label}: " if self.node is not None else ""
        return InvalidArgument(where + message)

    def check_batch(self, name: str, axes: list[int], what: str) -> None:
        """Refuse when ``axes`` (of forward tensor ``name``) hold its batch axis: the op would mix images."""
        batch = self.batch_axis(name)
        rank = len(self.shape(name))
        if batch is not None and batch in [a % rank for a in axes]:
            raise self.refuse(f"{what} along the batch axis mixes the images of a batch; this is not supported")

    # -- what the rules write (and, from the Emitter: const, op, reshape, fit_spatial) ------------
    def stem(self) -> str:
        return (self.node.output[0] if self.node is not None else "proj").replace("/", ".")

    def fastest(self, key: Hashable, forms: dict[str, Callable[[Emitter, str], str]], signal: str, shape: list[int]) -> str:
        """Emit the fastest of ``forms``, exact alternatives that take ``signal`` (rows of ``shape``)
        to the same result, as timed on this machine once per ``key`` (see :func:`fastest`)."""
        return forms[fastest(key, forms, shape)](self, signal)

    def zeros(self, name: str) -> str:
        """Zeros shaped like forward tensor ``name``, with the M rows on its batch axis."""
        return self._zeros(self.shape(name))

    def zeros_rows(self, tail: list[int]) -> str:
        """Zeros of shape (M, *tail)."""
        return self._zeros([-1, *tail])

    def _zeros(self, shape: list[int]) -> str:
        if -1 not in shape:
            return self.op("ConstantOfShape", [self.const(shape, np.int64)], value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
        batch = shape.index(-1)
        rows = self.op("Shape", [IMAGE_INDEX])
        parts = [self.const(shape[:batch], np.int64), rows, self.const(shape[batch + 1 :], np.int64)]
        full = self.op("Concat", parts, axis=0)
        return self.op("ConstantOfShape", [full], value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))

    def batch_first(self, name: str) -> None:
        """Refuse unless forward tensor ``name`` holds the images of the batch on its first axis
        (convolution, pooling and normalisation read their input as (N, C, ...))."""
        if self.needs(name) and not self.per_image and self.batch_axis(name) != 0:
            raise self.refuse(f"its input {name!r} does not hold the batch on its first axis")


def model_of(emitter: Emitter, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    """The nodes and initializers of ``emitter`` as a model at zfnet's opset and IR version."""
    graph = helper.make_graph(emitter.nodes, name, inputs, outputs, initializer=emitter.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="zfnet")
    model.ir_version = IR_VERSION
    return model


TIMED_ELEMENTS = 1 << 19  # a timed signal holds about this many values (rows of the signal's shape, 1 to 64)
TIMED_ROUNDS = 5
# The first form is kept unless another takes less than this share of its time: timed on one thread,
# forms that parallelise better (a Conv over onnxruntime's blocked layout) lose less than they gain on
# the cores of a real run (2-core AMD EPYC: polyphase 0.72-1.11x ConvTranspose's time on one thread,
# 0.48-0.72x on two).
KEEP_FIRST_WITHIN = 0.9
_fastest: dict[Hashable, str] = {}


def fastest(key: Hashable, forms: dict[str, Callable[[Emitter, str], str]], shape: list[int]) -> str:
    """The name of the fastest of ``forms`` (exact alternatives from a signal of rows of ``shape`` to
    one result, the preferred first), timed once per ``key`` and process: each form alone in a
    session, on the same random rows, interleaved over a few rounds, the best time of each. On the
    CPU the sessions run on the calling thread and the time is that thread's CPU time, which the
    other processes of a busy machine do not inflate (wall times of two-thread runs on a loaded
    2-core machine varied 3x between builds); on a device it is the wall time."""
    if len(forms) == 1:
        return next(iter(forms))
    if key not in _fastest:
        rows = min(64, max(1, TIMED_ELEMENTS // max(1, int(np.prod(shape)))))
        signal = np.random.default_rng(0).standard_normal((rows, *shape)).astype(np.float32)
        on_cpu = runtime.device() is None
        sessions = {}
        for name, form in forms.items():
            emitter = Emitter()
            out = form(emitter, SIGNAL)
            emitter.nodes.append(helper.make_node("Identity", [out], [RECONSTRUCTION]))
            model = model_of(emitter, name, [helper.make_tensor_value_info(SIGNAL, TensorProto.FLOAT, ["M", *shape])],
                             [helper.make_tensor_value_info(RECONSTRUCTION, TensorProto.FLOAT, None)])
            sessions[name] = runtime.session(model.SerializeToString(), threads=1 if on_cpu else 0)
        clock = time.thread_time if on_cpu else time.perf_counter
        best = dict.fromkeys(forms, float("inf"))
        for round_ in range(TIMED_ROUNDS + 1):
            for name, session in sessions.items():
                start = clock()
                session.run([RECONSTRUCTION], {SIGNAL: signal})
                if round_:  # the first round warms up
                    best[name] = min(best[name], clock() - start)
        first = next(iter(forms))
        other = min(best, key=best.__getitem__)
        _fastest[key] = other if best[other] < KEEP_FIRST_WITHIN * best[first] else first
        log.debug("form of %s: %s (%s)", key, _fastest[key], ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in best.items()))
    return _fastest[key]


def downstream(index: GraphIndex, tensor: str) -> set[str]:
    """``tensor`` and every tensor whose value depends on it."""
    reach, pending = {tensor}, [tensor]
    while pending:
        for i in index.consumers.get(pending.pop(), []):
            for name in index.nodes[i].output:
                if name in index.live and name not in reach:
                    reach.add(name)
                    pending.append(name)
    return reach


def build(model: onnx.ModelProto | GraphIndex, layer: str, method: str, stop: str = "") -> Projection:
    """Build the projection graph from tensor ``layer`` of an exposed model to its image input, or to
    the inner tensor ``stop`` (its output then the signal there: with ``backprop``, the gradient of
    the signal's dot product with ``layer`` with respect to ``stop``; what Grad-CAM needs).

    The rows of a batch are projected together when every tensor on the way keeps the batch on an
    axis of its own. Where the graph merges that axis away (an exporter's reshape to ``(C,)`` and back
    in a model exported for one image, or its ``as_strided`` index arithmetic), the projection is
    built for the model specialised to one image and runs one image's rows at a time (``per_image``).
    """
    index = model if isinstance(model, GraphIndex) else GraphIndex(model)
    image = index.image
    if image is None:
        raise InvalidArgument(f"deconv needs a model with one image input; this one has {index.inputs}")
    if layer not in index.live:
        raise InvalidArgument(f"tensor {layer!r} does not depend on the input {image!r}")
    index, per_image = index_for(index, layer)
    builder = Builder(index, method, per_image)
    if stop:
        builder.reach = downstream(index, stop)
        if layer not in builder.reach:
            raise InvalidArgument(f"tensor {layer!r} does not depend on tensor {stop!r}; choose a layer before it")
    target = stop or image
    signals: dict[str, str] = {layer: SIGNAL}
    for node in index.ancestors(layer):
        outgoing = [signals.get(name) for name in node.output]
        if all(s is None for s in outgoing) or not any(builder.needs(name) for name in node.input):
            continue
        rule = lookup_node(index, node)
        if rule is None:
            where = f"op {node.op_type!r}" + (f" of domain {node.domain!r}" if node.domain else "") + f" at opset {node.opset}"
            raise InvalidArgument(
                f"no backward rule for {where} (node {node.proto.name or node.output[0]!r}, between layer {layer!r} "
                f"and the input); rules exist for {supported()}",
                reason="UNSUPPORTED_OP", metadata={"op": node.op_type, "node": node.proto.name or node.output[0]},
            )
        builder.node = node
        incoming = rule.backward(builder, node, outgoing)
        builder.node = None
        for name, signal in zip(node.input, incoming):
            if signal is None or not builder.needs(name):
                continue
            signals[name] = builder.op("Add", [signals[name], signal]) if name in signals else signal
    if target not in signals:
        raise InvalidArgument(f"no signal reaches {'tensor ' + repr(stop) if stop else 'the input'} from layer {layer!r}")
    builder.nodes.append(helper.make_node("Identity", [signals[target]], [RECONSTRUCTION], name=RECONSTRUCTION))
    layer_shape, image_shape = builder.shape(layer), builder.shape(target)
    rows = 1 if per_image else "M"
    forward_tensors = builder.forward_tensors
    proj_inputs = [
        helper.make_tensor_value_info(SIGNAL, TensorProto.FLOAT, [rows, *layer_shape[1:]]),
        helper.make_tensor_value_info(IMAGE_INDEX, TensorProto.INT64, [rows]),
    ] + [
        helper.make_tensor_value_info(
            FORWARD_PREFIX + name, index.elem_type(name) or TensorProto.FLOAT, ["N" if d == -1 else d for d in builder.shape(name)],
        )
        for name in forward_tensors
    ]
    proj = model_of(builder, f"projection_{method}_{layer}", proj_inputs,
                    [helper.make_tensor_value_info(RECONSTRUCTION, TensorProto.FLOAT, [rows, *image_shape[1:]])])
    onnx.checker.check_model(proj)
    return Projection(proj, layer, method, forward_tensors, per_image, stop)
