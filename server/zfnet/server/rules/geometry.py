"""Convolution and pooling geometry, in one place: the windows of Conv, ConvTranspose, MaxPool,
AveragePool and LpPool (kernel, strides, dilations, pads with ``auto_pad`` resolved), their output
sizes as onnxruntime computes them, average-pooling divisors, and the input span a window of
outputs reads (receptive fields)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """A sliding window over the spatial axes (2..) of an (N, C, *spatial) tensor."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # [begin_1, .., begin_r, end_1, .., end_r], auto_pad resolved
    ceil_mode: bool = False

    @property
    def rank(self) -> int:
        return len(self.kernel)

    @property
    def begin(self) -> tuple[int, ...]:
        return self.pads[: self.rank]

    @property
    def end(self) -> tuple[int, ...]:
        return self.pads[self.rank :]

    def extent(self, axis: int) -> int:
        """How many input positions one window spans along ``axis``."""
        return (self.kernel[axis] - 1) * self.dilations[axis] + 1

    def output_size(self, in_spatial: Sequence[int], keep_padding_window: bool = False) -> list[int]:
        """Output sizes as onnxruntime (and PyTorch) compute them: in ceil mode a last window that
        would start in the end padding is dropped. ``keep_padding_window``: the size ONNX's shape
        inference gives before opset 22, which keeps it."""
        sizes = []
        for axis, size in enumerate(in_spatial):
            span = size + self.begin[axis] + self.end[axis] - self.extent(axis)
            out = (-(-span // self.strides[axis]) if self.ceil_mode else span // self.strides[axis]) + 1
            if self.ceil_mode and not keep_padding_window and (out - 1) * self.strides[axis] >= size + self.begin[axis]:
                out -= 1
            sizes.append(out)
        return sizes

    def input_span(self, axis: int, lo: int, hi: int) -> tuple[int, int]:
        """The input positions (inclusive, before clipping to the input) that outputs lo..hi read."""
        start = self.strides[axis] * lo - self.begin[axis]
        return start, self.strides[axis] * hi - self.begin[axis] + self.extent(axis) - 1

    def covered(self, out_spatial: Sequence[int]) -> list[int]:
        """The length of input (padding included) that ``out_spatial`` windows cover along each axis."""
        return [(o - 1) * s + self.extent(a) for a, (o, s) in enumerate(zip(out_spatial, self.strides))]


def window(attrs: dict, in_spatial: Sequence[int], kernel: Sequence[int] | None = None) -> Window:
    """The window of a Conv/pooling node from its bound attributes (``kernel`` from the filters for Conv)."""
    kernel = list(kernel if kernel is not None else attrs["kernel_shape"])
    rank = len(kernel)
    strides = list(attrs.get("strides") or [1] * rank)
    dilations = list(attrs.get("dilations") or [1] * rank)
    pads = explicit_pads(attrs.get("auto_pad", "NOTSET"), attrs.get("pads"), in_spatial, kernel, strides, dilations)
    return Window(tuple(kernel), tuple(strides), tuple(dilations), tuple(pads), bool(attrs.get("ceil_mode", 0)))


def explicit_pads(auto_pad, pads, in_spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """Begin/end pads with ``auto_pad`` (NOTSET, VALID, SAME_UPPER, SAME_LOWER) resolved."""
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
    rank = len(kernel)
    if auto_pad == "NOTSET":
        return list(pads) if pads else [0] * 2 * rank
    if auto_pad == "VALID":
        return [0] * 2 * rank
    begin, end = [], []
    for size, k, s, d in zip(in_spatial, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def avg_pool_divisors(in_spatial: Sequence[int], out_spatial: Sequence[int], win: Window, count_include_pad: bool) -> np.ndarray:
    """The divisor of each output position, as onnxruntime (and Caffe, and PyTorch) compute it:
    the window clipped to the padded input (``count_include_pad``) or to the input itself."""
    per_axis = []
    for axis in range(win.rank):
        start = np.arange(out_spatial[axis]) * win.strides[axis] - win.begin[axis]
        stop = np.minimum(start + win.kernel[axis], in_spatial[axis] + win.end[axis])
        if not count_include_pad:
            start, stop = np.maximum(start, 0), np.minimum(stop, in_spatial[axis])
        per_axis.append((stop - start).astype(np.float32))
    divisors = per_axis[0]
    for extra in per_axis[1:]:
        divisors = np.multiply.outer(divisors, extra)
    return divisors
