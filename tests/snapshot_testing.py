"""Training snapshots for the evolution tests without a training run: the bundled model with its weights
moved by a seeded noise (the same architecture, other weights). Real training runs are in slow tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MODEL = Path(__file__).resolve().parents[1] / "models" / "zfnet-cifar10.onnx"


def perturbed(path: Path, seed: int, scale: float = 0.3) -> Path:
    """Write the bundled model to ``path`` with every weight tensor multiplied by ``1 + scale * N(0, 1)``."""
    model = onnx.load(MODEL)
    rng = np.random.default_rng(seed)
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32 and array.ndim >= 2:
            tensor.CopyFrom(numpy_helper.from_array((array * (1 + scale * rng.standard_normal(array.shape))).astype(np.float32), tensor.name))
    onnx.save(model, path)
    return path
