"""Reading Caffe weights: binary ``.caffemodel`` (a NetParameter) or HDF5 ``.caffemodel.h5`` snapshots.

Both become ``{layer name: [blob arrays]}``. Which format a file is comes from its first bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
from google.protobuf.message import DecodeError

from zfnet.converters.caffe import caffe_pb2
from zfnet.errors import InvalidArgument, NotFound

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

Weights = dict[str, list[np.ndarray]]


def load(path: str | Path) -> Weights:
    """The blobs of every layer that has any, by layer name."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(len(HDF5_SIGNATURE))
    except FileNotFoundError:
        raise NotFound(f"weights file {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidArgument(f"weights file {path} is a directory") from None
    weights = _load_hdf5(path) if head == HDF5_SIGNATURE else _load_binary(path)
    if not weights:
        raise InvalidArgument(f"{path} holds no layer weights; is it a .caffemodel or .caffemodel.h5 file?")
    return weights


def blob_array(blob: caffe_pb2.BlobProto, where: str) -> np.ndarray:
    """A BlobProto as an array: N-D ``shape``, else the legacy (num, channels, height, width)."""
    shape = tuple(blob.shape.dim) if blob.HasField("shape") else (blob.num, blob.channels, blob.height, blob.width)
    values = blob.double_data if len(blob.double_data) else blob.data
    if min(shape, default=0) < 0 or math.prod(shape) != len(values):
        raise InvalidArgument(f"{where}: shape {shape} but {len(values)} values; the file is damaged or truncated")
    return np.asarray(values, dtype=np.float32).reshape(shape)


def _load_binary(path: Path) -> Weights:
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(path.read_bytes())
    except DecodeError as err:
        raise InvalidArgument(f"{path} is not a readable .caffemodel ({err}); is it truncated, or not Caffe weights?") from None
    weights: Weights = {}
    for layer in [*net.layer, *net.layers]:
        if layer.blobs:
            if layer.name in weights:
                raise InvalidArgument(f"{path}: two layers named '{layer.name}' hold weights")
            weights[layer.name] = [blob_array(b, f"{path}: layer '{layer.name}' blob {i}") for i, b in enumerate(layer.blobs)]
    return weights


def _load_hdf5(path: Path) -> Weights:
    """``/data/<layer>/<blob index>``; layer names with ``/`` are nested groups, so the walk recurses."""
    weights: Weights = {}

    def walk(group: h5py.Group, prefix: str) -> None:
        blobs: dict[int, np.ndarray] = {}
        for key, item in group.items():
            name = f"{prefix}/{key}" if prefix else key
            if isinstance(item, h5py.Group):
                walk(item, name)
            elif key.isdigit() and item.dtype.kind in "fiu":
                blobs[int(key)] = np.asarray(item[()], dtype=np.float32)
            else:
                raise InvalidArgument(f"{path}: /data/{name} is not a numbered float blob of layer '{prefix}'")
        if blobs:
            if sorted(blobs) != list(range(len(blobs))):
                raise InvalidArgument(f"{path}: layer '{prefix}' has blobs {sorted(blobs)}, not 0..{len(blobs) - 1}")
            weights[prefix] = [blobs[i] for i in range(len(blobs))]

    try:
        with h5py.File(path, "r") as f:
            data = f.get("data")
            if not isinstance(data, h5py.Group):
                raise InvalidArgument(f"{path} has no /data group; it is an HDF5 file but not a Caffe .caffemodel.h5 snapshot")
            walk(data, "")
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as err:
        raise InvalidArgument(f"{path} is not a readable HDF5 snapshot ({err}); is it truncated?") from None
    return weights
