"""The harness of the rule tests: every backward rule against autograd, on one- or two-node ONNX models.

Each case is a tiny opset-18 model (input ``x`` of shape ("N", ...)), exposed and projected like the
engine does it, and run on onnxruntime in float32. The reference is PyTorch autograd in float64 on
functional ops with the same semantics as the ONNX op; that they are the same is checked first, by
comparing the forward outputs. For affine ops the exact Jacobian of the onnxruntime forward model
(unit basis inputs) is a second reference that needs no PyTorch at all.

Only ReLU's rule depends on the method, so the torch references take the ReLU to use: plain
``torch.relu`` for backprop, and ReLUs with the deconvnet / guided-backprop backward for the others.
Every case runs every method on rows drawn from two images (``image_index`` = [1, 0, 1]).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from zfnet.converters import expose
from zfnet.server import projection

METHODS = projection.METHODS
N_IMAGES = 2
IMAGE_INDEX = np.array([1, 0, 1], np.int64)
TOLERANCE = 1e-5  # max abs error, relative to max(1, max |expected|)


# -- running a projection --------------------------------------------------------------------------
def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def make_model(nodes: list[onnx.NodeProto], shape: tuple[int, ...], inits: dict[str, np.ndarray] | None = None, output: str = "y",
               opset: int = 18) -> onnx.ModelProto:
    """A model (opset 18 unless told) with input ``x`` (N, *shape); the output is declared without a shape."""
    graph = helper.make_graph(
        nodes, "rule_test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


class Projector:
    """An exposed model, its forward session, and one projection graph per method for ``layer``."""

    def __init__(self, model: onnx.ModelProto, layer: str = "y") -> None:
        self.layer = layer
        self.exposed = expose.expose(model)
        self.forward_session = _session(self.exposed)
        self.projections = {m: projection.build(self.exposed, layer, m) for m in METHODS}
        self.sessions = {m: _session(p.model) for m, p in self.projections.items()}

    def forward(self, x: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
        return [np.asarray(out) for out in self.forward_session.run(names or [self.layer], {"x": x})]

    def project(self, method: str, x: np.ndarray, g: np.ndarray, image_index: np.ndarray) -> np.ndarray:
        proj = self.projections[method]
        computed = [n for n in proj.forward_tensors if n != "x"]  # the image input is fed, like the engine does
        values = {"x": x, **dict(zip(computed, self.forward(x, [self.layer, *computed])[1:]))}
        feeds = {"signal": g, "image_index": image_index, **{"fwd/" + n: values[n] for n in proj.forward_tensors}}
        return np.asarray(self.sessions[method].run(["reconstruction"], feeds)[0])


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    error = float(np.abs(actual.astype(np.float64) - expected).max(initial=0.0))
    assert error <= TOLERANCE * scale, f"{what}: max abs error {error:.3g} (scale {scale:.3g})"


# -- references ------------------------------------------------------------------------------------
class _DeconvRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0)


class _GuidedRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g.clamp(min=0) * (x > 0)


RELU = {"backprop": torch.relu, "deconvnet": _DeconvRelu.apply, "guided": _GuidedRelu.apply}
Reference = Callable[[torch.Tensor, Callable], torch.Tensor]  # (x float64, relu) -> y


def torch_vjp(fn: Reference, x: np.ndarray, g: np.ndarray, relu: Callable) -> tuple[np.ndarray, np.ndarray]:
    """(y, g^T dy/dx) of ``fn`` at the rows ``x`` (M, ...), in float64."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = fn(xt, relu)
    (grad,) = torch.autograd.grad(y, xt, torch.tensor(g, dtype=torch.float64))
    return y.detach().numpy(), grad.numpy()


def ort_affine_vjp(projector: Projector, shape: tuple[int, ...], g: np.ndarray) -> np.ndarray:
    """g^T J with J the exact Jacobian of the onnxruntime forward model, which must be affine in x."""
    size = math.prod(shape)
    basis = np.concatenate([np.zeros((1, size)), np.eye(size)]).astype(np.float32).reshape(-1, *shape)
    out = projector.forward(basis)[0].astype(np.float64).reshape(size + 1, -1)
    jacobian_t = out[1:] - out[:1]  # (inputs, outputs)
    return (g.reshape(len(g), -1).astype(np.float64) @ jacobian_t.T).reshape(len(g), *shape)


def T(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, np.float64))


def weights(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@dataclass
class Case:
    model: onnx.ModelProto
    shape: tuple[int, ...]  # input shape without the batch dimension
    ref: Reference | None  # torch semantics of the model; None where torch has no equivalent
    affine: bool = False  # also compare with the onnxruntime Jacobian
    layer: str = "y"
    make_x: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray] | None = None


def check(case: Case, seed_text: str, methods=METHODS) -> None:
    rng = np.random.default_rng(zlib.crc32(seed_text.encode()))
    full = (N_IMAGES, *case.shape)
    x = case.make_x(rng, full) if case.make_x else rng.standard_normal(full)
    x = np.asarray(x, np.float32)
    projector = Projector(case.model, case.layer)
    y = projector.forward(x)[0]
    g = rng.standard_normal((len(IMAGE_INDEX), *y.shape[1:])).astype(np.float32)
    rows = x[IMAGE_INDEX]
    if case.ref is not None:
        y_ref, _ = torch_vjp(case.ref, rows, g, torch.relu)
        assert_close(y[IMAGE_INDEX], y_ref, "forward: torch reference vs onnxruntime")
    affine = ort_affine_vjp(projector, case.shape, g) if case.affine else None
    for method in methods:
        rec = projector.project(method, x, g, IMAGE_INDEX)
        if case.ref is not None:
            assert_close(rec, torch_vjp(case.ref, rows, g, RELU[method])[1], f"{method} vs autograd")
        if affine is not None:
            assert_close(rec, affine, f"{method} vs the onnxruntime Jacobian")


def node(op: str, inputs: list[str], output: str = "y", /, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], **attrs)


def torch_pads(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, .., e1, e2, ..] to F.pad's (last axis first) order."""
    rank = len(pads) // 2
    return [p for axis in reversed(range(rank)) for p in (pads[axis], pads[axis + rank])]


def same_pads(sizes, kernel, strides, dilations, upper: bool) -> list[int]:
    """auto_pad SAME_*: output ceil(size / stride); the odd pixel of padding at the end (UPPER) or begin (LOWER)."""
    begin, end = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if upper else big)
        end.append(big if upper else small)
    return begin + end


def positive(rng, shape):
    return rng.uniform(0.3, 2.0, shape)


def i64(values) -> np.ndarray:
    return np.array(values, np.int64)

