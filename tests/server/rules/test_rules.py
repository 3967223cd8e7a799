"""Every backward rule against autograd, on one- or two-node ONNX models.

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
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from zfnet.converters import expose
from zfnet.errors import FailedPrecondition, InvalidArgument
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


def make_model(nodes: list[onnx.NodeProto], shape: tuple[int, ...], inits: dict[str, np.ndarray] | None = None, output: str = "y") -> onnx.ModelProto:
    """An opset-18 model with input ``x`` (N, *shape); the output is declared without a shape."""
    graph = helper.make_graph(
        nodes, "rule_test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
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
        return self.forward_session.run(names or [self.layer], {"x": x})

    def project(self, method: str, x: np.ndarray, g: np.ndarray, image_index: np.ndarray) -> np.ndarray:
        proj = self.projections[method]
        computed = [n for n in proj.forward_tensors if n != "x"]  # the image input is fed, like the engine does
        values = {"x": x, **dict(zip(computed, self.forward(x, [self.layer, *computed])[1:]))}
        feeds = {"signal": g, "image_index": image_index, **{"fwd/" + n: values[n] for n in proj.forward_tensors}}
        return self.sessions[method].run(["reconstruction"], feeds)[0]


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


def node(op: str, inputs: list[str], output: str = "y", **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], **attrs)


# -- Conv, ConvTranspose ---------------------------------------------------------------------------
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


def conv_case(cin=3, cout=4, k=3, size=(7, 7), stride=1, pads=None, dilation=1, group=1, auto_pad=None, bias=True, seed=0) -> Case:
    rank = len(size)
    kernel = [k] * rank if isinstance(k, int) else list(k)
    strides = [stride] * rank if isinstance(stride, int) else list(stride)
    dilations = [dilation] * rank
    w = weights(seed, cout, cin // group, *kernel, scale=0.5)
    b = weights(seed + 1, cout)
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dilations, group=group)
    if auto_pad:
        attrs["auto_pad"] = auto_pad
        pads = [0] * 2 * rank if auto_pad == "VALID" else same_pads(size, kernel, strides, dilations, auto_pad == "SAME_UPPER")
    else:
        pads = pads if pads is not None else [0] * 2 * rank
        attrs["pads"] = pads
    inits = {"w": w, "b": b} if bias else {"w": w}
    model = make_model([node("Conv", ["x", *inits], **attrs)], (cin, *size), inits)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]

    def ref(x, relu):
        return conv(F.pad(x, torch_pads(pads)), T(w), T(b) if bias else None, strides, 0, dilations, group)

    return Case(model, (cin, *size), ref, affine=True)


CONV_CASES = {
    "k3-s1-p1": dict(k=3, pads=[1, 1, 1, 1]),
    "k5-s1-p2": dict(k=5, pads=[2, 2, 2, 2]),
    "k3-s2-p1-even": dict(k=3, stride=2, pads=[1, 1, 1, 1], size=(8, 8)),  # (8 + 2 - 3) % 2 = 1: last row unused
    "k5-s2-p1-odd": dict(k=5, stride=2, pads=[1, 1, 1, 1], size=(10, 9)),  # (10 + 2 - 5) % 2 = 1
    "k3-s2-nopad": dict(k=3, stride=2, size=(8, 9)),
    "k5-s2-p2": dict(k=5, stride=2, pads=[2, 2, 2, 2], size=(9, 9)),
    "stride-2x1": dict(k=3, stride=(2, 1), pads=[1, 0, 1, 0], size=(8, 7)),
    "asymmetric-pads": dict(k=3, pads=[0, 1, 2, 0], size=(7, 6)),
    "asymmetric-pads-s2": dict(k=3, stride=2, pads=[2, 0, 0, 1], size=(8, 7)),
    "dilation2": dict(k=3, dilation=2, pads=[2, 2, 2, 2], size=(9, 9)),
    "dilation2-s2": dict(k=3, dilation=2, stride=2, pads=[1, 1, 1, 1], size=(10, 9)),
    "group2": dict(cin=4, cout=6, group=2, pads=[1, 1, 1, 1]),
    "depthwise": dict(cin=3, cout=3, group=3, pads=[1, 1, 1, 1]),
    "depthwise-x2": dict(cin=3, cout=6, group=3, stride=2, pads=[1, 1, 1, 1], size=(8, 8)),
    "no-bias": dict(bias=False, pads=[1, 1, 1, 1]),
    "1x1": dict(k=1),
    "same-upper-s1": dict(k=4, auto_pad="SAME_UPPER", size=(7, 7)),
    "same-lower-s1": dict(k=4, auto_pad="SAME_LOWER", size=(7, 7)),
    "same-upper-s2": dict(k=3, stride=2, auto_pad="SAME_UPPER", size=(8, 7)),
    "same-lower-s2": dict(k=3, stride=2, auto_pad="SAME_LOWER", size=(8, 7)),
    "same-upper-k5-s2": dict(k=5, stride=2, auto_pad="SAME_UPPER", size=(10, 9)),
    "valid-s2": dict(k=3, stride=2, auto_pad="VALID", size=(8, 9)),
    "conv1d": dict(k=3, stride=2, pads=[1, 2], size=(11,)),
    "conv1d-dilated-group": dict(cin=4, cout=4, k=3, dilation=2, group=2, pads=[2, 2], size=(9,)),
    "conv3d": dict(cin=2, cout=2, k=3, stride=2, pads=[1, 0, 1, 1, 1, 0], size=(4, 5, 5)),
}


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv(name):
    check(conv_case(**CONV_CASES[name]), f"conv-{name}")


def test_conv_with_constant_node_weights():
    w = weights(5, 2, 3, 3, 3)
    model = make_model(
        [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w")), node("Conv", ["x", "w"], pads=[1, 1, 1, 1])],
        (3, 6, 6),
    )
    check(Case(model, (3, 6, 6), lambda x, relu: F.conv2d(x, T(w), padding=1), affine=True), "conv-constant-node")


def conv_transpose_case(cin=4, cout=3, k=3, size=(5, 5), stride=2, pad=0, output_padding=0, group=1, dilation=1, pads=None, seed=0) -> Case:
    rank = len(size)
    w = weights(seed, cin, cout // group, *[k] * rank, scale=0.5)
    b = weights(seed + 1, cout)
    attrs = dict(strides=[stride] * rank, group=group, dilations=[dilation] * rank, pads=pads or [pad] * 2 * rank)
    if output_padding:
        attrs["output_padding"] = [output_padding] * rank
    model = make_model([node("ConvTranspose", ["x", "w", "b"], **attrs)], (cin, *size), {"w": w, "b": b})
    transpose = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[rank]
    ref = None
    if pads is None:  # torch pads symmetrically only

        def ref(x, relu):
            return transpose(x, T(w), T(b), stride, pad, output_padding, group, dilation)

    return Case(model, (cin, *size), ref, affine=True)


CONV_TRANSPOSE_CASES = {
    "s2": dict(),
    "s2-p1": dict(pad=1),
    "s2-p1-outpad1": dict(pad=1, output_padding=1),
    "s3-k3-outpad2": dict(stride=3, output_padding=2, size=(4, 4)),
    "group2-k4-s2-p1": dict(cin=4, cout=6, k=4, pad=1, group=2),
    "dilation2": dict(dilation=2, pad=1, output_padding=1),
    "s1-p1": dict(stride=1, pad=1),
    "asymmetric-pads": dict(pads=[0, 1, 2, 1], output_padding=1),
    "1d": dict(size=(6,), pad=1, output_padding=1),
}


@pytest.mark.parametrize("name", CONV_TRANSPOSE_CASES)
def test_conv_transpose(name):
    check(conv_transpose_case(**CONV_TRANSPOSE_CASES[name]), f"convT-{name}")


# -- pooling ---------------------------------------------------------------------------------------
def pool_case(op: str, k=3, stride=2, pads=None, size=(8, 8), ceil_mode=0, channels=2, dilation=None, count_include_pad=None, before=None,
              auto_pad=None) -> Case:
    """MaxPool / AveragePool on ``x`` (or on Relu(x) when ``before`` == "Relu")."""
    rank = len(size)
    pads = pads if pads is not None else [0] * 2 * rank
    attrs = dict(kernel_shape=[k] * rank, strides=[stride] * rank, pads=pads, ceil_mode=ceil_mode)
    if auto_pad:
        del attrs["pads"]
        attrs["auto_pad"] = auto_pad
        pads = same_pads(size, [k] * rank, [stride] * rank, [dilation or 1] * rank, auto_pad == "SAME_UPPER")
    if dilation:
        attrs["dilations"] = [dilation] * rank
    if count_include_pad is not None:
        attrs["count_include_pad"] = count_include_pad
    nodes = [node(op, ["r" if before else "x"], **attrs)]
    if before:
        nodes.insert(0, node(before, ["x"], "r"))
    model = make_model(nodes, (channels, *size))
    symmetric = pads[:rank] == pads[rank:]
    ref = None
    if op == "MaxPool":
        pool = {1: F.max_pool1d, 2: F.max_pool2d}[rank]

        def ref(x, relu):
            x = relu(x) if before else x
            if not symmetric:
                x = F.pad(x, torch_pads(pads), value=-math.inf)
            return pool(x, k, stride, pads[:rank] if symmetric else 0, dilation or 1, bool(ceil_mode))

    elif symmetric and pads[0] * 2 <= k and not auto_pad:  # torch: pad at most half the kernel
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d}[rank]

        def ref(x, relu):
            return pool(x, k, stride, pads[:rank], bool(ceil_mode), bool(count_include_pad))

    return Case(model, (channels, *size), ref, affine=op == "AveragePool")


MAX_POOL_CASES = {
    "3x3s2-p1": dict(pads=[1, 1, 1, 1]),
    "3x3s2-p1-ceil": dict(pads=[1, 1, 1, 1], ceil_mode=1),
    "3x3s2-p1-odd": dict(pads=[1, 1, 1, 1], size=(7, 9)),
    "3x3s2-p1-odd-ceil": dict(pads=[1, 1, 1, 1], size=(7, 9), ceil_mode=1),
    "3x3s2-ceil": dict(size=(8, 8), ceil_mode=1),  # (8 - 3) / 2 = 2.5: a clipped last window
    "3x3s2-odd": dict(size=(9, 7)),
    "3x3s1-p1": dict(stride=1, pads=[1, 1, 1, 1]),  # heavy overlap: a local max wins up to 9 windows
    "2x2s2": dict(k=2, stride=2),
    "2x2s2-odd": dict(k=2, stride=2, size=(7, 7)),
    "2x2s2-odd-ceil": dict(k=2, stride=2, size=(7, 7), ceil_mode=1),
    "2x2s2-p1-ceil-drops-last": dict(k=2, stride=2, pads=[1, 1, 1, 1], size=(7, 7), ceil_mode=1),  # last window would start in the padding
    "3x3s3-p1-ceil-drops-last": dict(k=3, stride=3, pads=[1, 1, 1, 1], size=(8, 8), ceil_mode=1),
    "3x3s2-asymmetric-pads": dict(pads=[0, 1, 1, 0], size=(8, 7)),
    "3x3s2-dilation2": dict(dilation=2, pads=[1, 1, 1, 1], size=(9, 10)),
    "1d-3s2-p1": dict(pads=[1, 1], size=(9,)),
    "same-upper": dict(k=3, stride=2, size=(8, 7), auto_pad="SAME_UPPER"),
    "same-lower-k2": dict(k=2, stride=2, size=(7, 7), auto_pad="SAME_LOWER"),
    "after-relu": dict(pads=[1, 1, 1, 1], before="Relu"),  # ties among the zeros
}


@pytest.mark.parametrize("name", MAX_POOL_CASES)
def test_max_pool(name):
    check(pool_case("MaxPool", **MAX_POOL_CASES[name]), f"maxpool-{name}")


def _switches_and_signal(model, x, layer="y"):
    projector = Projector(model, layer)
    y, switches = projector.forward(x, [layer, layer + ".switches"])
    return projector, y, switches


@pytest.mark.parametrize("k, stride, pads", [(2, 2, [0, 0, 0, 0]), (3, 2, [1, 1, 1, 1]), (3, 1, [1, 1, 1, 1])])
def test_max_pool_ties_pick_the_first_max_like_torch(k, stride, pads):
    """An input of equal values: onnxruntime's switches are torch's indices (the first max in the window,
    in row-major order, padding never chosen), and every method puts each window's signal there, summed."""
    model = make_model([node("MaxPool", ["x"], kernel_shape=[k, k], strides=[stride, stride], pads=pads)], (1, 6, 6))
    x = np.full((N_IMAGES, 1, 6, 6), 0.5, np.float32)
    projector, y, switches = _switches_and_signal(model, x)
    _, indices = F.max_pool2d(torch.tensor(x), k, stride, pads[0], return_indices=True)
    plane = 36
    np.testing.assert_array_equal(switches % plane, indices.numpy())
    np.testing.assert_array_equal(switches // plane, np.broadcast_to(np.arange(N_IMAGES).reshape(-1, 1, 1, 1), switches.shape))  # flat over N*C*H*W
    g = np.random.default_rng(1).standard_normal((len(IMAGE_INDEX), *y.shape[1:])).astype(np.float32)
    for method in METHODS:
        rec = projector.project(method, x, g, IMAGE_INDEX)
        expected = torch_vjp(lambda t, relu: F.max_pool2d(t, k, stride, pads[0]), x[IMAGE_INDEX], g, None)[1]
        assert_close(rec, expected, method)


def test_max_pool_ties_after_relu_all_methods():
    """Relu then MaxPool on a mostly negative input: windows of zeros tie; the switch is the first zero.
    Deconvnet's signal goes there whatever the ReLU did (it is rectified, not masked)."""
    model = make_model([node("Relu", ["x"], "r"), node("MaxPool", ["r"], kernel_shape=[2, 2], strides=[2, 2])], (2, 6, 6))
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((N_IMAGES, 2, 6, 6)) - 1.5).astype(np.float32)
    x[0, 0] = -1.0  # a whole channel of ties
    projector = Projector(model)
    g = rng.standard_normal((len(IMAGE_INDEX), 2, 3, 3)).astype(np.float32)
    for method in METHODS:
        rec = projector.project(method, x, g, IMAGE_INDEX)
        expected = torch_vjp(lambda t, relu: F.max_pool2d(relu(t), 2, 2), x[IMAGE_INDEX], g, RELU[method])[1]
        assert_close(rec, expected, method)
    rec = projector.project("deconvnet", x, g, np.zeros(3, np.int64))  # every row from image 0
    corners = rec[:, 0, ::2, ::2]  # the first element of each 2x2 window
    assert_close(corners, np.maximum(g[:, 0], 0).astype(np.float64), "deconvnet on the tied channel")


def test_global_max_pool_ties_pick_the_first_like_torch():
    """A channel of zeros after a ReLU: every method sends the signal to its first position (deconvnet
    rectified, the others masked to zero by the ReLU)."""
    model = make_model([node("Relu", ["x"], "r"), node("GlobalMaxPool", ["r"])], (2, 3, 4))
    rng = np.random.default_rng(8)
    x = rng.standard_normal((N_IMAGES, 2, 3, 4)).astype(np.float32)
    x[:, 1] = -1.0
    projector = Projector(model)
    g = rng.standard_normal((len(IMAGE_INDEX), 2, 1, 1)).astype(np.float32)
    for method in METHODS:
        rec = projector.project(method, x, g, IMAGE_INDEX)
        expected = torch_vjp(lambda t, relu: F.adaptive_max_pool2d(relu(t), 1), x[IMAGE_INDEX], g, RELU[method])[1]
        assert_close(rec, expected, method)
        if method == "deconvnet":
            assert_close(rec[:, 1, 0, 0], np.maximum(g[:, 1, 0, 0], 0).astype(np.float64), "first position")


def test_max_pool_overlapping_windows_add():
    """One dominant pixel chosen by all nine 3x3/1 windows around it receives the sum of their signals."""
    model = make_model([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])], (1, 5, 5))
    x = np.random.default_rng(3).uniform(-1, 0, (N_IMAGES, 1, 5, 5)).astype(np.float32)
    x[:, 0, 2, 2] = 10.0
    projector = Projector(model)
    g = np.random.default_rng(4).standard_normal((len(IMAGE_INDEX), 1, 5, 5)).astype(np.float32)
    for method in METHODS:
        rec = projector.project(method, x, g, IMAGE_INDEX)
        np.testing.assert_allclose(rec[:, 0, 2, 2], g[:, 0, 1:4, 1:4].sum(axis=(1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_ceil_mode_shapes_are_onnxruntime_s(op):
    """ONNX's opset-18 shape inference keeps a ceil-mode window that starts in the end padding; onnxruntime
    drops it (2x2/2, pad 1, on 7: 4 not 5). The exposed model declares onnxruntime's sizes, downstream too."""
    w = weights(1, 2, 2, 3, 3)
    attrs = dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
    nodes = [node(op, ["x"], "p1", **attrs), node(op, ["p1"], "p2", **attrs), node("Conv", ["p2", "w"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, (2, 13, 7), {"w": w})
    projector = Projector(model)
    names = [o.name for o in projector.exposed.graph.output]
    values = projector.forward(np.zeros((1, 2, 13, 7), np.float32), names)
    declared = {o.name: expose.tensor_shape(o)[1:] for o in projector.exposed.graph.output}
    assert {n: list(v.shape[1:]) for n, v in zip(names, values)} == declared
    assert declared["y"] == [2, 4, 3]  # 13 -> 7 -> 4, 7 -> 4 -> 3 (ONNX's inference: 13 -> 8 -> 5, 7 -> 5 -> 4)


AVERAGE_POOL_CASES = {
    f"{geometry}-cip{cip}-ceil{ceil}": dict(**kw, count_include_pad=cip, ceil_mode=ceil)
    for geometry, kw in {
        "3x3s2-p1": dict(pads=[1, 1, 1, 1]),
        "3x3s2-p1-odd": dict(pads=[1, 1, 1, 1], size=(7, 9)),
        "3x3s2-even-nopad": dict(size=(8, 8)),
        "2x2s2-p1-odd": dict(k=2, stride=2, pads=[1, 1, 1, 1], size=(7, 7)),  # ceil: the last window would start in the padding
        "3x3s3-p1": dict(k=3, stride=3, pads=[1, 1, 1, 1], size=(8, 8)),  # ceil: likewise
        "asymmetric-pads": dict(pads=[0, 1, 2, 0], size=(7, 8)),  # no torch equivalent: onnxruntime's Jacobian
        "1d-3s2-p1": dict(pads=[1, 1], size=(8,)),
        "same-upper": dict(k=3, stride=2, size=(8, 7), auto_pad="SAME_UPPER"),  # onnxruntime's Jacobian only
        "same-lower": dict(k=2, stride=2, size=(7, 7), auto_pad="SAME_LOWER"),
    }.items()
    for cip in (0, 1)
    for ceil in (0, 1)
}


@pytest.mark.parametrize("name", AVERAGE_POOL_CASES)
def test_average_pool(name):
    check(pool_case("AveragePool", **AVERAGE_POOL_CASES[name]), f"avgpool-{name}")


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("size", [(5, 6), (7,)])
def test_global_pool(op, size):
    model = make_model([node(op, ["x"])], (3, *size))
    axes = tuple(range(2, 2 + len(size)))
    if op == "GlobalAveragePool":
        def ref(x, relu):
            return x.mean(axes, keepdim=True)
    else:
        def ref(x, relu):
            return F.adaptive_max_pool2d(x, 1) if len(size) == 2 else F.adaptive_max_pool1d(x, 1)
    check(Case(model, (3, *size), ref, affine=op == "GlobalAveragePool"), f"{op}-{size}")


# -- fully connected -------------------------------------------------------------------------------
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha, beta, bias", [(1.0, 1.0, True), (0.7, 0.3, True), (1.5, 1.0, False)])
def test_gemm(trans_b, alpha, beta, bias):
    w = weights(1, *((4, 6) if trans_b else (6, 4)))
    c = weights(2, 4)
    inits = {"w": w, "c": c} if bias else {"w": w}
    model = make_model([node("Gemm", ["x", *inits], alpha=alpha, beta=beta, transB=trans_b)], (6,), inits)

    def ref(x, relu):
        y = alpha * x @ (T(w).T if trans_b else T(w))
        return y + beta * T(c) if bias else y

    check(Case(model, (6,), ref, affine=True), f"gemm-{trans_b}-{alpha}-{bias}")


@pytest.mark.parametrize("shape", [(5,), (3, 5)])
def test_matmul_constant(shape):
    w = weights(3, 5, 4)
    model = make_model([node("MatMul", ["x", "w"])], shape, {"w": w})
    check(Case(model, shape, lambda x, relu: x @ T(w), affine=True), f"matmul-{shape}")


# -- activations -----------------------------------------------------------------------------------
def test_relu_rules_explicit():
    """deconvnet = relu(g) whatever x; guided = relu(g) * (x > 0); backprop = g * (x > 0)."""
    model = make_model([node("Relu", ["x"])], (3, 4, 4))
    rng = np.random.default_rng(11)
    x = rng.standard_normal((N_IMAGES, 3, 4, 4)).astype(np.float32)
    x[0, 0, 0, :2] = 0.0  # the kink: not positive
    g = rng.standard_normal((len(IMAGE_INDEX), 3, 4, 4)).astype(np.float32)
    positive = (x[IMAGE_INDEX] > 0).astype(np.float32)
    expected = {"deconvnet": np.maximum(g, 0), "guided": np.maximum(g, 0) * positive, "backprop": g * positive}
    projector = Projector(model)
    for method in METHODS:
        np.testing.assert_array_equal(projector.project(method, x, g, IMAGE_INDEX), expected[method], err_msg=method)
    assert projector.projections["deconvnet"].forward_tensors == []  # deconvnet needs no forward values at all


def _positive(rng, shape):
    return rng.uniform(0.3, 2.0, shape)


ACTIVATION_CASES = {
    "Relu": ([node("Relu", ["x"])], {}, lambda x, relu: relu(x)),
    "LeakyRelu": ([node("LeakyRelu", ["x"], alpha=0.2)], {}, lambda x, relu: F.leaky_relu(x, 0.2)),
    "LeakyRelu-default": ([node("LeakyRelu", ["x"])], {}, lambda x, relu: F.leaky_relu(x, 0.01)),
    "PRelu": ([node("PRelu", ["x", "slope"])], {"slope": np.array([0.1, -0.5, 2.0], np.float32).reshape(3, 1, 1)},
              lambda x, relu: F.prelu(x, T([0.1, -0.5, 2.0]))),
    "Sigmoid": ([node("Sigmoid", ["x"])], {}, lambda x, relu: torch.sigmoid(x)),
    "Tanh": ([node("Tanh", ["x"])], {}, lambda x, relu: torch.tanh(x)),
    "Elu": ([node("Elu", ["x"], alpha=0.5)], {}, lambda x, relu: F.elu(x, 0.5)),
    "Elu-default": ([node("Elu", ["x"])], {}, lambda x, relu: F.elu(x)),
    "Abs": ([node("Abs", ["x"])], {}, lambda x, relu: x.abs()),
    "Softmax-axis1": ([node("Softmax", ["x"], axis=1)], {}, lambda x, relu: torch.softmax(x, 1)),
    "Softmax-default-axis": ([node("Softmax", ["x"])], {}, lambda x, relu: torch.softmax(x, -1)),
    "Softmax-axis2": ([node("Softmax", ["x"], axis=2)], {}, lambda x, relu: torch.softmax(x, 2)),
}


@pytest.mark.parametrize("name", ACTIVATION_CASES)
def test_activation(name):
    nodes, inits, ref = ACTIVATION_CASES[name]
    check(Case(make_model(nodes, (3, 4, 5), inits), (3, 4, 5), ref), f"act-{name}")


def test_softmax_on_logits():
    model = make_model([node("Softmax", ["x"], axis=1)], (7,))
    check(Case(model, (7,), lambda x, relu: torch.softmax(x, 1), make_x=lambda rng, shape: rng.standard_normal(shape) * 3), "softmax-2d")


# -- normalisation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 3, 5), (4,), (4, 6)])
def test_batch_norm(shape):
    rng = np.random.default_rng(5)
    scale, bias = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    mean, var = rng.standard_normal(4).astype(np.float32), rng.uniform(0.2, 2.0, 4).astype(np.float32)
    inits = {"scale": scale, "bias": bias, "mean": mean, "var": var}
    model = make_model([node("BatchNormalization", ["x", *inits], epsilon=1e-3)], shape, inits)

    def ref(x, relu):
        return F.batch_norm(x, T(mean), T(var), T(scale), T(bias), training=False, eps=1e-3)

    check(Case(model, shape, ref, affine=True), f"bn-{shape}")


@pytest.mark.parametrize("size, alpha, beta, bias", [(3, 0.5, 0.75, 2.0), (5, 1e-2, 0.75, 1.0), (5, 2.0, 0.5, 1.5), (3, 1e-4, 0.75, 1.0)])
def test_lrn(size, alpha, beta, bias):
    """torch's local_response_norm divides alpha by size, like ONNX (checked by the forward comparison).
    Odd sizes only: onnxruntime refuses an even one (where torch's window would differ from ONNX's)."""
    model = make_model([node("LRN", ["x"], size=size, alpha=alpha, beta=beta, bias=bias)], (7, 3, 4))

    def ref(x, relu):
        return F.local_response_norm(x, size, alpha, beta, bias)

    check(Case(model, (7, 3, 4), ref, make_x=lambda rng, shape: rng.standard_normal(shape) * 1.5), f"lrn-{size}-{alpha}")


# -- arithmetic ------------------------------------------------------------------------------------
CONSTANT = np.array([0.5, -1.5, 2.0], np.float32).reshape(1, 3, 1, 1)
ARITH = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}


@pytest.mark.parametrize("op", list(ARITH))
@pytest.mark.parametrize("constant_first", [False, True])
@pytest.mark.parametrize("constant", [CONSTANT, CONSTANT.reshape(3, 1, 1), np.array(1.7, np.float32)], ids=["1C11", "C11", "scalar"])
def test_arithmetic_with_constant(op, constant_first, constant):
    inputs = ["c", "x"] if constant_first else ["x", "c"]
    model = make_model([node(op, inputs)], (3, 4, 5), {"c": constant})
    make_x = _positive if op == "Div" and constant_first else None

    def ref(x, relu):
        a, b = (T(constant), x) if constant_first else (x, T(constant))
        return ARITH[op](a, b)

    check(Case(model, (3, 4, 5), ref, affine=op != "Div" or not constant_first, make_x=make_x), f"{op}-{constant_first}-{constant.shape}")


def _relu_minus_itself(x, relu):
    r = relu(x)  # one ReLU, two consumers: their signals add before its rule
    return r - r


TWO_INPUT_CASES = {
    # x op f(x): both inputs carry the signal, which adds at x
    "Add-x-relu": ([node("Relu", ["x"], "r"), node("Add", ["x", "r"])], lambda x, relu: x + relu(x)),
    "Sub-relu-x": ([node("Relu", ["x"], "r"), node("Sub", ["r", "x"])], lambda x, relu: relu(x) - x),
    "Mul-x-relu": ([node("Relu", ["x"], "r"), node("Mul", ["x", "r"])], lambda x, relu: x * relu(x)),
    "Mul-x-tanh": ([node("Tanh", ["x"], "t"), node("Mul", ["x", "t"])], lambda x, relu: x * torch.tanh(x)),
    "Div-x-sigmoid": ([node("Sigmoid", ["x"], "s"), node("Div", ["x", "s"])], lambda x, relu: x / torch.sigmoid(x)),
    "Div-relu-sigmoid": ([node("Relu", ["x"], "r"), node("Sigmoid", ["x"], "s"), node("Div", ["r", "s"])], lambda x, relu: relu(x) / torch.sigmoid(x)),
    "Add-x-x": ([node("Add", ["x", "x"])], lambda x, relu: x + x),
    "Mul-x-x": ([node("Mul", ["x", "x"])], lambda x, relu: x * x),
    "Sub-r-r": ([node("Relu", ["x"], "r"), node("Sub", ["r", "r"])], _relu_minus_itself),
    # broadcasting between two activations (squeeze-and-excitation): the pooled branch sums back
    "Mul-x-gap": ([node("GlobalAveragePool", ["x"], "p"), node("Mul", ["x", "p"])], lambda x, relu: x * x.mean((2, 3), keepdim=True)),
    "Div-x-gap-sigmoid": ([node("GlobalAveragePool", ["x"], "p"), node("Sigmoid", ["p"], "s"), node("Div", ["x", "s"])],
                          lambda x, relu: x / torch.sigmoid(x.mean((2, 3), keepdim=True))),
    "Sub-gap-x": ([node("GlobalMaxPool", ["x"], "p"), node("Sub", ["p", "x"])], lambda x, relu: F.adaptive_max_pool2d(x, 1) - x),
}


@pytest.mark.parametrize("name", TWO_INPUT_CASES)
def test_arithmetic_two_activations(name):
    nodes, ref = TWO_INPUT_CASES[name]
    check(Case(make_model(nodes, (3, 4, 5)), (3, 4, 5), ref), f"two-{name}")


@pytest.mark.parametrize(
    "exponent", [np.array(2.0, np.float32), np.array(3.0, np.float32), np.array(0.5, np.float32), np.array(-1.5, np.float32),
                 np.array([1.0, 2.0, 0.5], np.float32).reshape(1, 3, 1, 1), np.array(2, np.int64), np.array(3, np.int32)],
    ids=["2", "3", "0.5", "-1.5", "per-channel", "int64-2", "int32-3"],
)
def test_pow_constant_exponent(exponent):
    model = make_model([node("Pow", ["x", "e"])], (3, 4, 5), {"e": exponent})
    check(Case(model, (3, 4, 5), lambda x, relu: x ** T(exponent), make_x=_positive), f"pow-{exponent.tolist()}")


def test_pow_of_an_activation_exponent():
    """x ** Sigmoid(x): the exponent carries signal too."""
    model = make_model([node("Sigmoid", ["x"], "s"), node("Pow", ["x", "s"])], (3, 4, 5))
    check(Case(model, (3, 4, 5), lambda x, relu: x ** torch.sigmoid(x), make_x=_positive), "pow-activation-exponent")


# -- moving values ---------------------------------------------------------------------------------
def _i64(values) -> np.ndarray:
    return np.array(values, np.int64)


SHAPE_CASES = {
    "Reshape": ((2, 3, 4), [node("Reshape", ["x", "s"])], {"s": _i64([-1, 6, 4])}, lambda x, relu: x.reshape(-1, 6, 4)),
    "Reshape-zero": ((2, 3, 4), [node("Reshape", ["x", "s"])], {"s": _i64([0, 3, 8])}, lambda x, relu: x.reshape(-1, 3, 8)),
    "Flatten": ((2, 3, 4), [node("Flatten", ["x"], axis=1)], {}, lambda x, relu: x.flatten(1)),
    "Squeeze": ((1, 3, 4), [node("Squeeze", ["x", "a"])], {"a": _i64([1])}, lambda x, relu: x.squeeze(1)),
    "Unsqueeze": ((3, 4), [node("Unsqueeze", ["x", "a"])], {"a": _i64([2, -1])}, lambda x, relu: x.unsqueeze(2).unsqueeze(-1)),
    "Transpose": ((2, 3, 4), [node("Transpose", ["x"], perm=[0, 2, 3, 1])], {}, lambda x, relu: x.permute(0, 2, 3, 1)),
    "Transpose-3cycle": ((2, 3, 4), [node("Transpose", ["x"], perm=[0, 3, 1, 2])], {}, lambda x, relu: x.permute(0, 3, 1, 2)),
    "Concat-branches": ((2, 3, 4), [node("Relu", ["x"], "r"), node("Tanh", ["x"], "t"), node("Concat", ["r", "t", "x"], axis=1)], {},
                        lambda x, relu: torch.cat([relu(x), torch.tanh(x), x], 1)),
    "Concat-negative-axis": ((2, 3, 4), [node("Sigmoid", ["x"], "s"), node("Concat", ["x", "s"], axis=-1)], {},
                             lambda x, relu: torch.cat([x, torch.sigmoid(x)], -1)),
    "Split-use-second": ((4, 3, 2), [helper.make_node("Split", ["x", "s"], ["a", "y"], axis=1)], {"s": _i64([1, 3])},
                         lambda x, relu: x[:, 1:]),
    "Split-swap": ((4, 3, 2), [helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2), node("Concat", ["b", "a"], axis=1)], {},
                   lambda x, relu: torch.cat([x[:, 2:], x[:, :2]], 1)),
    "Split-three-use-two": ((2, 6, 2), [helper.make_node("Split", ["x"], ["a", "b", "c"], axis=2, num_outputs=3), node("Mul", ["a", "c"])], {},
                            lambda x, relu: x[:, :, :2] * x[:, :, 4:]),
    "Gather-channels": ((3, 4, 5), [node("Gather", ["x", "i"], axis=1)], {"i": _i64([2, 1, 0])}, lambda x, relu: x[:, [2, 1, 0]]),
    "Gather-negative-axis": ((3, 4, 5), [node("Gather", ["x", "i"], axis=-3)], {"i": _i64([2, 0, 1])}, lambda x, relu: x[:, [2, 0, 1]]),
    "Gather-cycle": ((3, 4, 5), [node("Gather", ["x", "i"], axis=1)], {"i": _i64([1, 2, 0])}, lambda x, relu: x[:, [1, 2, 0]]),
    "Pad": ((2, 3, 4), [node("Pad", ["x", "p", "v"])], {"p": _i64([0, 0, 1, 2, 0, 1, 0, 3]), "v": np.array(0.5, np.float32)},
            lambda x, relu: F.pad(x, (2, 3, 1, 0, 0, 1), value=0.5)),
    "Pad-negative": ((2, 5, 6), [node("Pad", ["x", "p"])], {"p": _i64([0, 0, -1, 2, 0, 1, 1, -2])},
                     lambda x, relu: F.pad(x, (2, -2, -1, 1, 0, 1))),
    "Pad-axes": ((2, 3, 4), [node("Pad", ["x", "p", "", "a"])], {"p": _i64([1, 0, 2, 1]), "a": _i64([-1, 2])},
                 lambda x, relu: F.pad(x, (1, 2, 0, 1))),
    "Pad-zero": ((2, 3, 4), [node("Pad", ["x", "p"])], {"p": _i64([0, 0, 1, 1, 0, 0, 1, 1])}, lambda x, relu: F.pad(x, (1, 1, 1, 1))),
    "Identity": ((2, 3, 4), [node("Identity", ["x"])], {}, lambda x, relu: x),
    "Dropout": ((2, 3, 4), [helper.make_node("Dropout", ["x"], ["y", "mask"])], {}, lambda x, relu: x),
    "Dropout-ratio": ((2, 3, 4), [node("Dropout", ["x", "r"])], {"r": np.array(0.3, np.float32)}, lambda x, relu: x),
}


@pytest.mark.parametrize("name", SHAPE_CASES)
def test_shape_op(name):
    shape, nodes, inits, ref = SHAPE_CASES[name]
    affine = not any(n.op_type in ("Relu", "Tanh", "Sigmoid", "Mul") for n in nodes)
    check(Case(make_model(nodes, shape, inits), shape, ref, affine=affine), f"shape-{name}")


# -- chains ----------------------------------------------------------------------------------------
def chain_model() -> tuple[onnx.ModelProto, Reference]:
    """Conv -> Relu -> MaxPool -> Conv -> Relu -> Flatten -> Gemm."""
    w1, b1 = weights(21, 4, 3, 3, 3, scale=0.5), weights(22, 4)
    w2, b2 = weights(23, 5, 4, 3, 3, scale=0.5), weights(24, 5)
    fc, fb = weights(25, 6, 5 * 3 * 3, scale=0.3), weights(26, 6)
    nodes = [
        node("Conv", ["x", "w1", "b1"], "conv1", pads=[1, 1, 1, 1]),
        node("Relu", ["conv1"], "relu1"),
        node("MaxPool", ["relu1"], "pool1", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        node("Conv", ["pool1", "w2", "b2"], "conv2"),
        node("Relu", ["conv2"], "relu2"),
        node("Flatten", ["relu2"], "flat"),
        node("Gemm", ["flat", "fc", "fb"], "y", transB=1),
    ]
    model = make_model(nodes, (3, 9, 9), dict(w1=w1, b1=b1, w2=w2, b2=b2, fc=fc, fb=fb))

    def ref(x, relu):
        x = relu(F.conv2d(x, T(w1), T(b1), padding=1))
        x = F.max_pool2d(x, 3, 2, 1)
        x = relu(F.conv2d(x, T(w2), T(b2)))
        return x.flatten(1) @ T(fc).T + T(fb)

    return model, ref


def test_chain_all_methods():
    model, ref = chain_model()
    check(Case(model, (3, 9, 9), ref), "chain")


@pytest.mark.parametrize("layer", ["relu1", "pool1", "conv2", "relu2"])
def test_chain_intermediate_layers(layer):
    model, _ = chain_model()

    def partial(x, relu):  # the reference up to ``layer``
        w = {i.name: T(numpy_helper.to_array(i)) for i in model.graph.initializer}
        x = F.conv2d(x, w["w1"], w["b1"], padding=1)
        x = relu(x)
        if layer == "relu1":
            return x
        x = F.max_pool2d(x, 3, 2, 1)
        if layer == "pool1":
            return x
        x = F.conv2d(x, w["w2"], w["b2"])
        return x if layer == "conv2" else relu(x)

    check(Case(model, (3, 9, 9), partial, layer=layer), f"chain-{layer}")


def test_chain_matches_captum():
    """The torch references' ReLUs are Captum's: Deconvolution, GuidedBackprop and the plain gradient
    of an nn.Module twin of the chain agree with the projections."""
    captum = pytest.importorskip("captum.attr")
    model, _ = chain_model()
    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.relu1, self.relu2 = torch.nn.ReLU(), torch.nn.ReLU()

        def forward(self, x):
            x = F.max_pool2d(self.relu1(F.conv2d(x, w["w1"], w["b1"], padding=1)), 3, 2, 1)
            x = self.relu2(F.conv2d(x, w["w2"], w["b2"]))
            return x.flatten(1) @ w["fc"].T + w["fb"]

    twin = Twin().eval()
    x = np.random.default_rng(31).standard_normal((N_IMAGES, 3, 9, 9)).astype(np.float32)
    projector = Projector(model)
    target = 2
    g = np.zeros((N_IMAGES, 6), np.float32)
    g[:, target] = 1.0
    attributions = {
        "deconvnet": captum.Deconvolution(twin), "guided": captum.GuidedBackprop(twin), "backprop": captum.Saliency(twin),
    }
    for method, attribution in attributions.items():
        kwargs = {"abs": False} if method == "backprop" else {}
        expected = attribution.attribute(torch.tensor(x, requires_grad=True), target=target, **kwargs).detach().numpy()
        rec = projector.project(method, x, g, np.arange(N_IMAGES))
        assert_close(rec, expected.astype(np.float64), f"{method} vs captum")


def test_rows_do_not_mix():
    """M rows from N images: each row's reconstruction is the one-row projection of its own image."""
    model, _ = chain_model()
    projector = Projector(model, "relu2")
    rng = np.random.default_rng(41)
    x = rng.standard_normal((3, 3, 9, 9)).astype(np.float32)
    image_index = np.array([0, 0, 1, 2, 2], np.int64)
    g = rng.standard_normal((5, 5, 3, 3)).astype(np.float32)
    for method in METHODS:
        together = projector.project(method, x, g, image_index)
        for row, image in enumerate(image_index):
            alone = projector.project(method, x[image:image + 1], g[row:row + 1], np.array([0], np.int64))
            np.testing.assert_allclose(together[row], alone[0], rtol=1e-6, atol=1e-6, err_msg=f"{method} row {row}")
        if method != "deconvnet":  # the same signal on another image gives another reconstruction
            other = projector.project(method, x, g[:1], np.array([1], np.int64))
            assert not np.allclose(other[0], together[0])


# -- errors ----------------------------------------------------------------------------------------
def test_op_without_rule_is_named():
    model = make_model([node("Sin", ["x"], "e"), node("Relu", ["e"])], (3, 4))
    exposed = expose.expose(model)
    with pytest.raises(InvalidArgument, match="Sin"):
        projection.build(exposed, "y", "backprop")


def test_max_pool_without_switches_is_a_clear_error():
    model = make_model([node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], (1, 4, 4))
    with pytest.raises(FailedPrecondition, match="switches.*expose"):
        projection.build(onnx.shape_inference.infer_shapes(model), "y", "deconvnet")


def test_unknown_method_and_layer():
    model = expose.expose(make_model([node("Relu", ["x"])], (3, 4)))
    with pytest.raises(InvalidArgument, match="method"):
        projection.build(model, "y", "lrp")
    with pytest.raises(InvalidArgument):
        projection.build(model, "no-such-tensor", "backprop")
