"""Fully connected layers and products of activations: the signal goes back through the transposed
weights; where both factors depend on the image (attention's Q K^T and A V) through both."""

from __future__ import annotations

import numpy as np

from zfnet.server.rules.arithmetic import unbroadcast
from zfnet.server.rules.registry import POINTWISE, Span, Weights, broadcast_span, op, optional_input, union


def _constant_factor(index, node) -> int | None:
    """Which of the two factors holds the weights: activations times constant weights are a layer; a
    product of two activations (attention) is not."""
    live = [name in index.live for name in node.input[:2]]
    return live.index(False) if sum(live) == 1 else None


def _rows_out(weights: np.ndarray) -> np.ndarray:
    """A weight matrix stored (out, in): the left factor, or a right one used transposed."""
    if weights.ndim != 2:
        raise ValueError(f"weights of shape {list(weights.shape)} are not one matrix")
    return weights


def _columns_out(weights: np.ndarray) -> np.ndarray:
    """A weight matrix stored (in, out): the right factor, or a left one used transposed."""
    return _rows_out(weights).T


def _matmul_weights(index, node) -> Weights | None:
    """x W (W is (in, out)): features on the output's last axis; or W x (W is (out, in)): on its second last."""
    factor = _constant_factor(index, node)
    return None if factor is None else Weights(node.input[factor], _columns_out if factor == 1 else _rows_out, axis=-1 if factor == 1 else -2)


def _gemm_weights(index, node) -> Weights | None:
    """Y = op(A) op(B) + C: a constant B holds (in, out) as op(B), a constant A (out, in) as op(A)."""
    factor = _constant_factor(index, node)
    if factor is None:
        return None
    rows_out = bool(node.attrs["transB"]) if factor == 1 else not node.attrs["transA"]
    return Weights(node.input[factor], _rows_out if rows_out else _columns_out, optional_input(node, 2), axis=-1 if factor == 1 else -2)


def _gemm_field(index, node, spans, i) -> Span:
    """Row r of Gemm's output reads row r of A (all of it); C broadcasts."""
    if i == 2:
        return POINTWISE(index, node, spans, i)
    out = union(spans)
    return (out[0], None) if i == 0 else (None, None)


@op({"Gemm": (1, 6, 7, 9, 11, 13)}, field=_gemm_field, weights=_gemm_weights)
def gemm(b, node, signals):
    weight = b.constant_value(node.input[1])
    if weight is None or node.attrs["transA"] or not b.needs(node.input[0]):
        raise b.refuse("only activations times constant weights (transA=0) are supported")
    b.batch_first(node.input[0])
    transposed = weight if node.attrs["transB"] else weight.T  # (B')^T with B' = op(B)
    back = b.const(node.attrs["alpha"] * transposed.astype(np.float32))
    grads: list[str | None] = [b.op("MatMul", [signals[0], back]), None]
    if len(node.input) > 2 and node.input[2]:
        grads.append(unbroadcast(b, b.op("Mul", [signals[0], b.const(node.attrs["beta"])]), node, 2) if b.needs(node.input[2]) else None)
    return grads


def _matmul_field(index, node, spans, i) -> Span:
    """Y[..., n, m] = sum_k A[..., n, k] B[..., k, m]: A's rows and B's columns follow Y's; the
    contracted axis is read whole; the leading axes broadcast."""
    out = union(spans)
    in_shape, out_shape = index.shape(node.input[i]) or [], index.shape(node.output[0]) or []
    lead = list(broadcast_span(in_shape[:-2], out_shape[:-2], out[:-2]))
    return tuple(lead + ([out[-2], None] if i == 0 else [None, out[-1]]))


def _swap_last(b, name: str) -> str:
    """A forward factor with its last two axes swapped."""
    value = b.constant_value(name)
    if value is not None:
        return b.const(np.ascontiguousarray(np.swapaxes(value, -1, -2)).astype(np.float32))
    rank = len(b.shape(name))
    return b.op("Transpose", [b.forward(name)], perm=[*range(rank - 2), rank - 1, rank - 2])


def _matmul_grad(b, node, product: str, i: int) -> str:
    """Sum a factor's signal (computed at the broadcast leading shape) down to the factor's shape."""
    out, shape = b.shape(node.output[0]), b.shape(node.input[i])
    full = out[:-2] + shape[-2:]
    if full == shape:
        return product
    padded = [1] * (len(full) - len(shape)) + shape
    axes = [a for a, (f, s) in enumerate(zip(full, padded)) if s == 1 and f != 1]
    if axes:
        product = b.op("ReduceSum", [product, b.const(axes, np.int64)], keepdims=1)
    return b.reshape(product, shape) if len(padded) != len(shape) else product


def _matmul_batch(index, node, axes) -> list[int | None]:
    """Batched factors keep their batch axis, aligned from the right; a vector factor drops its axis."""
    ranks = [len(index.shape(name) or []) for name in node.input]
    out_rank = len(index.shape(node.output[0]) or [])
    for i, axis in enumerate(axes):
        if axis is not None:
            if ranks[1 - i] == 1:  # numpy: a vector factor's axis is removed from the result
                dropped = ranks[i] - 1 if i == 0 else ranks[i] - 2
                return [None if axis == dropped else axis - (axis > dropped)]
            return [axis + out_rank - ranks[i] if axis + out_rank - ranks[i] >= 0 else None]
    return [None]


@op({"MatMul": (1, 9, 13)}, field=_matmul_field, batch=_matmul_batch, weights=_matmul_weights)
def matmul(b, node, signals):
    a, w = node.input
    if any(len(b.index.shape(name) or []) < 2 for name in (a, w)):
        raise b.refuse("vector (1-D) factors are not supported")
    if b.needs(a):
        b.check_batch(a, [-1], "MatMul contracting")
    if b.needs(w):
        b.check_batch(w, [-2], "MatMul contracting")
    g = signals[0]
    grads: list[str | None] = [None, None]
    if b.needs(a):
        grads[0] = _matmul_grad(b, node, b.op("MatMul", [g, _swap_last(b, w)]), 0)
    if b.needs(w):
        grads[1] = _matmul_grad(b, node, b.op("MatMul", [_swap_last(b, a), g]), 1)
    return grads


# -- Einsum --------------------------------------------------------------------------------------------
def _terms(node) -> tuple[list[str], str]:
    """The operand terms and the output term of an Einsum equation (implicit output made explicit)."""
    equation = node.attrs["equation"].replace(" ", "")
    left, _, right = equation.partition("->")
    terms = left.split(",")
    if "->" not in equation:
        letters = "".join(terms)
        right = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, right


def _einsum_field(index, node, spans, i) -> Span:
    terms, out_term = _terms(node)
    out = union(spans)
    return tuple(out[out_term.index(c)] if c in out_term and "." not in out_term else None for c in terms[i])


def _einsum_batch(index, node, axes) -> list[int | None]:
    terms, out_term = _terms(node)
    for term, axis in zip(terms, axes):
        if axis is not None and axis < len(term) and term[axis] in out_term:
            return [out_term.index(term[axis])]
    return [None]


def _einsum_layout(node, factor: int, weights: np.ndarray) -> np.ndarray:
    """The constant operand as (out, in): its indices kept in the output first, then those it
    contracts with the activation, each group flattened."""
    terms, out_term = _terms(node)
    equation = node.attrs["equation"]
    if len(terms) != 2 or "." in equation or len(set(terms[factor])) != len(terms[factor]):
        raise ValueError(f"equation {equation!r}: only two operands without ellipses or repeated indices have filters")
    term, other = terms[factor], terms[1 - factor]
    outs = [c for c in term if c in out_term and c not in other]
    ins = [c for c in term if c in other and c not in out_term]
    if not outs or not ins or len(outs) + len(ins) != len(term):
        raise ValueError(f"equation {equation!r}: each index of the weights must be either kept in the output or contracted with the activation")
    moved = np.transpose(weights, [term.index(c) for c in outs + ins])
    return moved.reshape(int(np.prod(moved.shape[: len(outs)])), -1)


def _einsum_weights(index, node) -> Weights | None:
    """The constant operand; the layer's features lie on the output axis of its first index kept in the output."""
    factor = _constant_factor(index, node)
    if factor is None:
        return None
    terms, out_term = _terms(node)
    kept = [c for c in terms[factor] if c in out_term and c not in terms[1 - factor]] if len(terms) == 2 else []
    return Weights(node.input[factor], lambda weights: _einsum_layout(node, factor, weights), axis=out_term.index(kept[0]) if kept else 1)


@op({"Einsum": (12, 28)}, field=_einsum_field, batch=_einsum_batch, weights=_einsum_weights)
def einsum(b, node, signals):
    """The signal of operand i is the einsum of the output's signal with the other operands."""
    terms, out_term = _terms(node)
    if "." in node.attrs["equation"] or any(len(set(t)) != len(t) for t in [*terms, out_term]):
        raise b.refuse(f"equation {node.attrs['equation']!r}: ellipses and repeated indices are not supported")
    grads: list[str | None] = []
    for i, (name, term) in enumerate(zip(node.input, terms)):
        if not b.needs(name):
            grads.append(None)
            continue
        batch = b.batch_axis(name)
        if term[batch] not in out_term:
            raise b.refuse(f"equation {node.attrs['equation']!r} sums over the batch axis; this mixes the images of a batch")
        others = [(t, n) for j, (t, n) in enumerate(zip(terms, node.input)) if j != i]
        reachable = set(out_term) | {c for t, _ in others for c in t}
        if not set(term) <= reachable:
            raise b.refuse(f"equation {node.attrs['equation']!r}: an index summed within one operand only is not supported")
        equation = ",".join([out_term, *[t for t, _ in others]]) + "->" + term
        grads.append(b.op("Einsum", [signals[0], *[b.forward(n) for _, n in others]], equation=equation))
    return grads
