"""Fully connected layers and products against autograd."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from rule_testing import Case, T, check, i64, make_model, node, weights
from zfnet.converters.index import GraphIndex
from zfnet.server.rules import Role, Weights, lookup_node, weights_of


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


def _attention(x, relu):
    """softmax(q k^T / 2) v with q, k, v three slices of the tokens: both factors of each MatMul depend on the image."""
    q, k, v = x[:, :, :2], x[:, :, 2:4], x[:, :, 4:]
    return torch.softmax(q @ k.transpose(-1, -2) / 2, -1) @ v


def _slices(start: int, stop: int, name: str):
    return node("Slice", ["x", f"s{start}", f"s{stop}", "axis2"], name)


ATTENTION = [
    _slices(0, 2, "q"), _slices(2, 4, "k"), _slices(4, 6, "v"),
    node("Transpose", ["k"], "kt", perm=[0, 2, 1]), node("MatMul", ["q", "kt"], "qk"), node("Div", ["qk", "two"], "scaled"),
    node("Softmax", ["scaled"], "a", axis=-1), node("MatMul", ["a", "v"]),
]
ATTENTION_INITS = {"s0": i64([0]), "s2": i64([2]), "s4": i64([4]), "s6": i64([6]), "axis2": i64([2]), "two": np.array(2.0, np.float32)}


def test_matmul_of_two_activations_attention():
    check(Case(make_model(ATTENTION, (5, 6), ATTENTION_INITS), (5, 6), _attention), "attention")


def test_matmul_broadcasts_a_shared_factor():
    """(N, H, T, D) @ (N, 1, D, T): the second factor's signal sums over the heads it was shared by."""
    nodes = [node("Relu", ["x"], "r"), node("ReduceMean", ["x", "ax"], "m", keepdims=1), node("Transpose", ["m"], "mt", perm=[0, 1, 3, 2]),
             node("MatMul", ["r", "mt"])]
    check(Case(make_model(nodes, (2, 3, 4), {"ax": i64([1])}), (2, 3, 4), lambda x, relu: relu(x) @ x.mean(1, keepdim=True).transpose(-1, -2)),
          "matmul-broadcast")


def test_matmul_constant_on_the_left():
    w = weights(4, 2, 3)
    model = make_model([node("MatMul", ["w", "x"])], (3, 5), {"w": w})
    check(Case(model, (3, 5), lambda x, relu: T(w) @ x, affine=True), "matmul-left")


EINSUM_CASES = {
    "nchw,oc->nohw": ((3, 4, 5), weights(6, 2, 3), lambda x, w: torch.einsum("nchw,oc->nohw", x, w)),
    "nij,jk->nik": ((3, 4), weights(7, 4, 2), lambda x, w: torch.einsum("nij,jk->nik", x, w)),
    "implicit bij,kj": ((3, 4), weights(8, 5, 4), lambda x, w: torch.einsum("bij,kj->bik", x, w)),  # output: sorted letters
}


@pytest.mark.parametrize("equation", EINSUM_CASES)
def test_einsum_with_constant(equation):
    shape, w, ref = EINSUM_CASES[equation]
    spec = equation.replace("implicit ", "")
    model = make_model([node("Einsum", ["x", "w"], equation=spec)], shape, {"w": w})
    check(Case(model, shape, lambda x, relu: ref(x, T(w)), affine=True), f"einsum-{equation}")


def test_einsum_of_two_activations():
    nodes = [node("Relu", ["x"], "r"), node("Einsum", ["x", "r"], equation="nij,nkj->nik")]
    check(Case(make_model(nodes, (3, 4), {}), (3, 4), lambda x, relu: torch.einsum("nij,nkj->nik", x, relu(x))), "einsum-two")


# -- filters: a learned layer's weights laid out (out, in) --------------------------------------------
# name: (nodes, input shape, initializers, the layer's output from x and its (out, in) filters, as textbooks write it)
FILTER_CASES = {
    "MatMul x W": ([node("MatMul", ["x", "w"])], (5,), {"w": weights(20, 5, 4)}, lambda x, f: x @ f.T),
    "MatMul W x": ([node("MatMul", ["w", "x"])], (3, 5), {"w": weights(21, 2, 3)}, lambda x, f: f @ x),
    "Gemm": ([node("Gemm", ["x", "w", "c"])], (6,), {"w": weights(22, 6, 4), "c": weights(23, 4)}, lambda x, f: x @ f.T + weights(23, 4)),
    "Gemm transB": ([node("Gemm", ["x", "w"], transB=1)], (6,), {"w": weights(24, 4, 6)}, lambda x, f: x @ f.T),
    "Gemm constant A transA": ([node("Gemm", ["w", "x"], transA=1)], (5,), {"w": weights(25, 3, 2)}, lambda x, f: f @ x),
    "Einsum nchw,oc": ([node("Einsum", ["x", "w"], equation="nchw,oc->nohw")], (3, 2, 2), {"w": weights(26, 4, 3)},
                       lambda x, f: np.einsum("nchw,oc->nohw", x, f)),
    "Einsum kj,nk (weights first)": ([node("Einsum", ["w", "x"], equation="kj,nk->nj")], (5,), {"w": weights(27, 5, 3)}, lambda x, f: x @ f.T),
    "Einsum nk,kij (two output indices)": ([node("Einsum", ["x", "w"], equation="nk,kij->nij")], (4,), {"w": weights(28, 4, 2, 3)},
                                           lambda x, f: (x @ f.T).reshape(-1, 2, 3)),
}


def _laid_out(index: GraphIndex, found: Weights | None) -> np.ndarray:
    stored = index.constant(found.tensor) if found is not None else None
    assert found is not None and stored is not None
    return found.layout(stored)


@pytest.mark.parametrize("name", FILTER_CASES)
def test_filters_are_laid_out_out_by_in(name):
    """The entry's ``weights`` make the node a learned layer, and its filters, laid out (out, in), give
    the layer's output by the textbook formula (compared with onnxruntime's)."""
    nodes, shape, inits, ref = FILTER_CASES[name]
    model = make_model(nodes, shape, inits)
    index = GraphIndex(model)
    layer = index.node(0)
    entry, found = lookup_node(index, layer), weights_of(index, layer)
    assert entry is not None and entry.role_of(index, layer) is Role.LEARNED
    filters = _laid_out(index, found)
    x = weights(29, 3, *shape)
    expected = np.asarray(ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])
    np.testing.assert_allclose(ref(x, filters), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nodes, inits, refusal", [
    ([node("MatMul", ["x", "w"])], {"w": weights(30, 2, 5, 4)}, "not one matrix"),
    ([node("Einsum", ["x", "w"], equation="nhk,hjk->nhj")], {"w": weights(31, 3, 4, 5)}, "kept in the output or contracted"),
])
def test_weights_that_are_not_a_filter_bank_are_refused(nodes, inits, refusal):
    index = GraphIndex(make_model(nodes, (3, 5), inits))
    with pytest.raises(ValueError, match=refusal):
        _laid_out(index, weights_of(index, index.node(0)))


def test_a_product_of_two_activations_has_no_filters():
    index = GraphIndex(make_model(ATTENTION, (5, 6), ATTENTION_INITS))
    products = [index.node(i) for i, n in enumerate(index.nodes) if n.op_type == "MatMul"]
    assert len(products) == 2 and all(weights_of(index, p) is None for p in products)
