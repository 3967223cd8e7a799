"""Normalisation at inference: BatchNorm is a per-channel scale; LRN, LayerNorm and InstanceNorm by
their derivative (the statistics depend on the image, so the signal flows through them too)."""

from __future__ import annotations

import numpy as np

from zfnet.server.rules.registry import POINTWISE, Role, axes_field, op


@op({"BatchNormalization": (1, 6, 7, 9, 14, 15)}, field=POINTWISE, role=Role.BLOCK, local=True)
def batch_norm(b, node, signals):
    if node.attrs.get("training_mode", 0) or any(signals[1:]):
        raise b.refuse("training mode mixes the images of a batch; export the model in eval mode")
    if node.opset < 7 and not node.attrs.get("spatial", 1):
        raise b.refuse("per-activation statistics (spatial=0) are not supported")
    scale, variance = b.constant_value(node.input[1]), b.constant_value(node.input[4])
    if scale is None or variance is None:
        raise b.refuse("scale and variance must be constants")
    b.batch_first(node.input[0])
    factor = scale.astype(np.float64) / np.sqrt(variance.astype(np.float64) + node.attrs["epsilon"])
    rank = len(b.shape(node.input[0]))
    return [b.op("Mul", [signals[0], b.const(factor.reshape(1, -1, *[1] * (rank - 2)))]), None, None, None, None]


def _channel_window_sum(b, tensor: str, shape: list[int], before: int, after: int) -> str:
    """Sum over the channel window [c - before, c + after] of an (M, C, ...) tensor."""
    channels = shape[1]
    stacked = b.reshape(tensor, [-1, 1, channels, int(np.prod(shape[2:]))])
    window = b.const(np.ones((1, 1, before + after + 1, 1), np.float32))
    summed = b.op("Conv", [stacked, window], pads=[before, 0, after, 0])
    return b.reshape(summed, shape)


@op({"LRN": (1, 13)}, field=axes_field(lambda index, node: [1]), role=Role.BLOCK, local=True)
def lrn(b, node, signals):
    """y = x d^-beta, d = bias + alpha/n sum_window x^2; the window's transpose carries the cross term."""
    shape = b.shape(node.input[0])
    if len(shape) < 3:
        raise b.refuse("needs (N, C, spatial...) input")
    b.batch_first(node.input[0])
    size = node.attrs["size"]
    alpha, beta, bias = node.attrs["alpha"], node.attrs["beta"], node.attrs["bias"]
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    x = b.forward(node.input[0])
    d = b.op("Add", [b.const(bias), b.op("Mul", [b.const(alpha / size), _channel_window_sum(b, b.op("Mul", [x, x]), shape, before, after)])])
    g = signals[0]
    direct = b.op("Mul", [g, b.op("Pow", [d, b.const(-beta)])])
    inner = b.op("Mul", [b.op("Mul", [g, x]), b.op("Pow", [d, b.const(-beta - 1.0)])])
    cross = b.op("Mul", [b.op("Mul", [x, b.const(-2.0 * alpha * beta / size)]), _channel_window_sum(b, inner, shape, after, before)])
    return [b.op("Add", [direct, cross])]


def _normalized_backward(b, x_name: str, g: str, axes: list[int], epsilon: float) -> str:
    """The vector-Jacobian product of x -> (x - mean) / sqrt(var + eps) over ``axes``, for signal g:
    (g - mean(g) - xhat mean(g xhat)) / sqrt(var + eps)."""
    x, axes_c = b.forward(x_name), b.const(axes, np.int64)
    centred = b.op("Sub", [x, b.op("ReduceMean", [x, axes_c], keepdims=1)])
    variance = b.op("ReduceMean", [b.op("Mul", [centred, centred]), axes_c], keepdims=1)
    inv_std = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [variance, b.const(epsilon)])])])
    xhat = b.op("Mul", [centred, inv_std])
    g_mean = b.op("ReduceMean", [g, axes_c], keepdims=1)
    gx_mean = b.op("ReduceMean", [b.op("Mul", [g, xhat]), axes_c], keepdims=1)
    return b.op("Mul", [inv_std, b.op("Sub", [b.op("Sub", [g, g_mean]), b.op("Mul", [xhat, gx_mean])])])


def _layer_norm_axes(index, node) -> list[int]:
    rank = len(index.shape(node.input[0]) or [])
    return list(range(node.attrs["axis"] % rank, rank))


@op({"LayerNormalization": (17,)}, field=axes_field(_layer_norm_axes), role=Role.BLOCK)
def layer_norm(b, node, signals):
    if any(signals[1:]):
        raise b.refuse("its Mean and InvStdDev outputs cannot carry a signal")
    if any(b.needs(name) for name in node.input[1:] if name):
        raise b.refuse("only constant scale and bias are supported")
    axes = _layer_norm_axes(b.index, node)
    b.check_batch(node.input[0], axes, "LayerNormalization")
    scaled = b.op("Mul", [signals[0], b.forward(node.input[1])])
    return [_normalized_backward(b, node.input[0], scaled, axes, node.attrs["epsilon"])] + [None] * (len(node.input) - 1)


@op({"InstanceNormalization": (1, 6, 22)}, field=axes_field(lambda index, node: list(range(2, len(index.shape(node.input[0]) or [])))), role=Role.BLOCK)
def instance_norm(b, node, signals):
    if any(b.needs(name) for name in node.input[1:]):
        raise b.refuse("only constant scale and bias are supported")
    b.batch_first(node.input[0])
    rank = len(b.shape(node.input[0]))
    scale = b.constant_value(node.input[1]).astype(np.float32).reshape(1, -1, *[1] * (rank - 2))
    scaled = b.op("Mul", [signals[0], b.const(scale)])
    return [_normalized_backward(b, node.input[0], scaled, list(range(2, rank)), node.attrs["epsilon"]), None, None]
