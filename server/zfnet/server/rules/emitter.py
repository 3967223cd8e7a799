"""An ONNX graph being written, node by node: what the projection builder's rules write with, and
what a kernel form is timed in (:mod:`zfnet.server.rules.transposed`), free of any forward model."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from numpy.typing import DTypeLike
from onnx import TensorProto, helper, numpy_helper


class Emitter:
    """Accumulates nodes and initializers; node outputs are named ``<stem>/<op><n>``."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._counter = itertools.count()

    def stem(self) -> str:
        """The prefix of the next node's output names."""
        return "proj"

    def const(self, value: np.ndarray | list | float, dtype: DTypeLike = np.float32) -> str:
        """A new initializer holding ``value``."""
        name = f"c{next(self._counter)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str:
        """Append one node; returns its (first) output name."""
        stem = self.stem()
        outputs = [f"{stem}/{op_type}{next(self._counter)}" for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=outputs[0], **attrs))
        return outputs[0]

    def reshape(self, signal: str, shape: list[int]) -> str:
        """Reshape to a static shape with one -1 (the rows)."""
        return self.op("Reshape", [signal, self.const(shape, np.int64)])

    def fit_spatial(self, signal: str, begin: list[int], length: list[int], have: list[int]) -> str:
        """Crop/zero-pad spatial axes 2.. of ``signal`` (sizes ``have``) to ``[begin, begin + length)``."""
        rank = 2 + len(begin)
        stop = [min(b + n, h) for b, n, h in zip(begin, length, have)]
        if any(b > 0 for b in begin) or stop != have:
            axes = list(range(2, rank))
            signal = self.op("Slice", [signal, self.const(begin, np.int64), self.const(stop, np.int64), self.const(axes, np.int64)])
        short = [n - max(0, s - b) for b, n, s in zip(begin, length, stop)]
        if any(s > 0 for s in short):
            pads = [0] * rank + [0, 0] + short
            signal = self.op("Pad", [signal, self.const(pads, np.int64)])
        return signal
