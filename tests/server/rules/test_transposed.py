"""The exact forms of a convolution's backward (rules/transposed.py) against autograd.

Every form, alone in a graph as the builder times it, takes a random signal over the forward
output to the forward input's signal; the reference is the gradient of ``torch`` convolution with
respect to its (explicitly padded) input, in float64. Cases: a hand-picked list of the awkward
geometries, then a seeded grid over strides 1-4, dilations 1-3, groups, asymmetric and oversized
pads, 1-3 spatial axes and inputs whose last positions no window reads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from zfnet.server import projection, runtime
from zfnet.server.rules.emitter import Emitter
from zfnet.server.rules.geometry import Window
from zfnet.server.rules.transposed import Backward, forms

ROWS = 3
TOLERANCE = 1e-5  # max abs error, relative to max(1, max |expected|)


def backward_of(cin: int, cout: int, kernel: list[int], strides: list[int], dilations: list[int], pads: list[int], size: list[int],
                group: int, seed: int) -> Backward:
    win = Window(tuple(kernel), tuple(strides), tuple(dilations), tuple(pads))
    weight = np.random.default_rng(seed).standard_normal((cout, cin // group, *kernel)).astype(np.float32)
    return Backward(weight, group, win, tuple(size), tuple(win.output_size(size)))


def reference(conv: Backward, signal: np.ndarray) -> np.ndarray:
    """d(sum(conv(x) * signal)) / dx by autograd, the input padded as the window pads it."""
    rank, win = conv.window.rank, conv.window
    cin = conv.weight.shape[1] * conv.group
    x = torch.zeros((signal.shape[0], cin, *conv.in_spatial), dtype=torch.float64, requires_grad=True)
    torch_pads = [p for a in reversed(range(rank)) for p in (win.begin[a], win.end[a])]
    conv_nd = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    y = conv_nd(F.pad(x, torch_pads), torch.from_numpy(conv.weight).double(), None, win.strides, 0, win.dilations, conv.group)
    assert tuple(y.shape[2:]) == conv.out_spatial, "the window's output size is not torch's"
    y.backward(torch.from_numpy(signal).double())
    assert x.grad is not None
    return x.grad.numpy()


def run_form(form, conv: Backward, signal: np.ndarray) -> np.ndarray:
    emitter = Emitter()
    out = form(emitter, projection.SIGNAL)
    emitter.nodes.append(helper.make_node("Identity", [out], [projection.RECONSTRUCTION]))
    model = projection.model_of(
        emitter, "form", [helper.make_tensor_value_info(projection.SIGNAL, TensorProto.FLOAT, ["M", *signal.shape[1:]])],
        [helper.make_tensor_value_info(projection.RECONSTRUCTION, TensorProto.FLOAT, None)],
    )
    return runtime.tensors(runtime.session(model.SerializeToString(), threads=1), [projection.RECONSTRUCTION], {projection.SIGNAL: signal})[0]


HAND_PICKED = {
    # name: (cin, cout, kernel, strides, dilations, pads, size, group)
    "s1-k3-p1": (3, 5, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [7, 7], 1),
    "s1-k3-nopad": (3, 5, [3, 3], [1, 1], [1, 1], [0, 0, 0, 0], [7, 6], 1),
    "s1-pad-beyond-kernel": (2, 3, [3, 3], [1, 1], [1, 1], [4, 0, 0, 5], [5, 5], 1),
    "s2-k3-unread-last-row": (3, 4, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], [8, 8], 1),
    "s2-k2-no-overlap": (3, 4, [2, 2], [2, 2], [1, 1], [0, 0, 0, 0], [8, 9], 1),
    "s3-k2-gaps": (2, 3, [2, 2], [3, 3], [1, 1], [0, 0, 0, 0], [10, 11], 1),  # positions no window reads
    "s4-k11-p2-conv1-like": (3, 8, [11, 11], [4, 4], [1, 1], [2, 2, 2, 2], [35, 35], 1),
    "s2x1": (3, 4, [3, 3], [2, 1], [1, 1], [1, 0, 1, 0], [8, 7], 1),
    "s1-dilation2": (3, 4, [3, 3], [1, 1], [2, 2], [2, 2, 2, 2], [9, 9], 1),
    "s2-dilation2-phase0": (3, 4, [3, 3], [2, 2], [2, 2], [2, 2, 2, 2], [10, 9], 1),  # the stride divides the dilation
    "s2-dilation3": (3, 4, [3, 3], [2, 2], [3, 3], [1, 2, 3, 0], [12, 11], 1),
    "s3-dilation2": (2, 3, [3, 2], [3, 3], [2, 2], [0, 1, 2, 1], [13, 12], 1),
    "1x1-s2": (4, 6, [1, 1], [2, 2], [1, 1], [0, 0, 0, 0], [7, 8], 1),
    "group2-s2": (4, 6, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], [8, 8], 2),
    "depthwise-s1": (4, 4, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [6, 6], 4),
    "depthwise-x2-s2": (3, 6, [3, 3], [2, 2], [1, 1], [0, 1, 1, 0], [9, 8], 3),
    "conv1d-s3": (2, 3, [4], [3], [1], [2, 1], [13], 1),
    "conv3d-s2": (2, 3, [3, 3, 3], [2, 1, 2], [1, 1, 1], [1, 0, 1, 0, 1, 1], [5, 4, 6], 1),
}


def grid(n: int, seed: int = 23) -> dict[str, tuple]:
    """``n`` random geometries (strides 1-4, dilations 1-3, groups, asymmetric pads), the same every run."""
    rng = np.random.default_rng(seed)
    cases: dict[str, tuple] = {}
    while len(cases) < n:
        rank = int(rng.choice([1, 2, 2, 2, 3]))
        group = int(rng.choice([1, 1, 2, 3]))
        cin, cout = group * int(rng.integers(1, 4)), group * int(rng.integers(1, 4))
        kernel = [int(k) for k in rng.integers(1, 6, rank)]
        strides = [int(s) for s in rng.integers(1, 5, rank)]
        dilations = [int(d) for d in rng.integers(1, 4, rank)]
        pads = [int(p) for p in rng.integers(0, 4, 2 * rank)]
        extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        size = [max(1, e - pads[a] - pads[a + rank] + int(rng.integers(0, 9))) for a, e in enumerate(extent)]
        if any(s + pads[a] + pads[a + rank] < e for a, (s, e) in enumerate(zip(size, extent))):
            continue
        cases[f"grid{len(cases)}-k{kernel}-s{strides}-d{dilations}-p{pads}-g{group}-n{size}"] = (cin, cout, kernel, strides, dilations, pads, size, group)
    return cases


CASES = {**HAND_PICKED, **grid(48)}


@pytest.mark.parametrize("name", CASES)
def test_every_form_equals_autograd(name):
    cin, cout, kernel, strides, dilations, pads, size, group = CASES[name]
    conv = backward_of(cin, cout, kernel, strides, dilations, pads, size, group, seed=len(name))
    signal = np.random.default_rng(1).standard_normal((ROWS, cout, *conv.out_spatial)).astype(np.float32)
    expected = reference(conv, signal)
    for form_name, form in forms(conv).items():
        got = run_form(form, conv, signal)
        assert got.shape == expected.shape, form_name
        error = float(np.abs(got - expected).max()) / max(1.0, float(np.abs(expected).max()))
        assert error < TOLERANCE, f"{form_name}: {error:.2e}"


def test_polyphase_runs_no_transposed_convolution_at_stride_1():
    """At stride 1 the polyphase form is a single Conv (its pads crop), the weights prepacked once as an initializer."""
    conv = backward_of(3, 5, [3, 3], [1, 1], [1, 1], [1, 0, 2, 1], [7, 7], 1, seed=0)
    emitter = Emitter()
    forms(conv)["polyphase"](emitter, projection.SIGNAL)
    assert [n.op_type for n in emitter.nodes] == ["Conv"]
    assert emitter.nodes[0].input[1] in {i.name for i in emitter.initializers}


def test_the_choice_is_made_once_per_shape():
    """The builder times the forms once per key; a single form is taken without timing."""
    conv = backward_of(2, 3, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], [8, 8], 1, seed=0)
    key = ("test", conv.key)
    chosen = projection.fastest(key, forms(conv), [3, *conv.out_spatial])
    assert chosen in forms(conv)
    assert projection.fastest(key, {}, []) == chosen  # cached: the (empty) forms are not looked at again
    only = {"transposed": forms(conv)["transposed"]}
    assert projection.fastest(("test-one", conv.key), only, [3, *conv.out_spatial]) == "transposed"
