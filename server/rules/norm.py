"""Normalisation at inference: BatchNorm is a per-channel scale; LRN by its derivative."""

from __future__ import annotations

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.server.rules.registry import attribute, backward_rule


@backward_rule("BatchNormalization")
def batch_norm(b, node, signals):
    if attribute(node, "training_mode", 0):
        raise InvalidArgument(f"BatchNormalization {node.output[0]!r} is in training mode; export the model in eval mode")
    scale, variance = b.constant_value(node.input[1]), b.constant_value(node.input[4])
    if scale is None or variance is None:
        raise InvalidArgument(f"BatchNormalization {node.output[0]!r}: scale and variance must be constants")
    factor = scale / np.sqrt(variance + attribute(node, "epsilon", 1e-5))
    rank = len(b.shape(node.input[0]))
    return [b.op("Mul", [signals[0], b.const(factor.reshape(1, -1, *[1] * (rank - 2)))]), None, None, None, None]


def _channel_window_sum(b, tensor: str, shape: list[int], before: int, after: int) -> str:
    """Sum over the channel window [c - before, c + after] of an (M, C, ...) tensor."""
    channels = shape[1]
    stacked = b.reshape(tensor, [-1, 1, channels, int(np.prod(shape[2:]))])
    window = b.const(np.ones((1, 1, before + after + 1, 1), np.float32))
    summed = b.op("Conv", [stacked, window], pads=[before, 0, after, 0])
    return b.reshape(summed, shape)


@backward_rule("LRN")
def lrn(b, node, signals):
    """y = x d^-beta, d = bias + alpha/n sum_window x^2; the window's transpose carries the cross term."""
    shape = b.shape(node.input[0])
    if len(shape) < 3:
        raise InvalidArgument(f"LRN {node.output[0]!r}: needs (N, C, spatial...) input")
    size = attribute(node, "size")
    alpha, beta, bias = attribute(node, "alpha", 1e-4), attribute(node, "beta", 0.75), attribute(node, "bias", 1.0)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    x = b.forward(node.input[0])
    d = b.op("Add", [b.const(bias), b.op("Mul", [b.const(alpha / size), _channel_window_sum(b, b.op("Mul", [x, x]), shape, before, after)])])
    g = signals[0]
    direct = b.op("Mul", [g, b.op("Pow", [d, b.const(-beta)])])
    inner = b.op("Mul", [b.op("Mul", [g, x]), b.op("Pow", [d, b.const(-beta - 1.0)])])
    cross = b.op("Mul", [b.op("Mul", [x, b.const(-2.0 * alpha * beta / size)]), _channel_window_sum(b, inner, shape, after, before)])
    return [b.op("Add", [direct, cross])]
