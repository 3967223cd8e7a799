"""Helpers for the Caffe converter tests: prototxt nets, weights in both formats, running on onnxruntime.

A module with a unique name (not conftest) so test modules can import it; the fixtures are in conftest.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import ArrayLike
from onnx import TensorProto, helper

from zfnet.converters.caffe import caffe_pb2

WEIGHT_FORMATS = ("caffemodel", "h5")


def deploy(shape: Sequence[int], body: str) -> str:
    """A deploy prototxt: an Input layer named ``data`` of ``shape``, then ``body``."""
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'name: "test"\nlayer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n{body}'


def write_weights(directory: Path, blobs: dict[str, list[np.ndarray]], v1: bool = False) -> dict[str, Path]:
    """Write ``blobs`` as a binary ``.caffemodel`` (V1 ``layers`` with legacy 4-D shapes if ``v1``) and a ``.caffemodel.h5``."""
    net = caffe_pb2.NetParameter(name="weights")
    for name, arrays in blobs.items():
        layer = net.layers.add(name=name) if v1 else net.layer.add(name=name)
        for array in arrays:
            blob = layer.blobs.add()
            if v1:
                blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
            else:
                blob.shape.dim.extend(array.shape)
            blob.data.extend(np.asarray(array, np.float32).ravel().tolist())
    paths = {"caffemodel": directory / "net.caffemodel", "h5": directory / "net.caffemodel.h5"}
    paths["caffemodel"].write_bytes(net.SerializeToString())
    with h5py.File(paths["h5"], "w") as f:
        for name, arrays in blobs.items():
            group = f.require_group(f"data/{name}")
            for i, array in enumerate(arrays):
                group.create_dataset(str(i), data=np.asarray(array, np.float32))
    return paths


def run(model: onnx.ModelProto, x: np.ndarray, names: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Run on onnxruntime (CPU); ``names`` are intermediate tensors to read besides the graph outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    return dict(zip(outputs, map(np.asarray, session.run(None, {"data": np.asarray(x, np.float32)}))))


def assert_close(actual: np.ndarray, expected: ArrayLike, tol: float = 1e-5) -> None:
    """Max-abs error within ``tol``, relative to the magnitude where values exceed 1."""
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    error = np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))
    assert error.max() <= tol, f"max error {error.max():.3g} > {tol}"
