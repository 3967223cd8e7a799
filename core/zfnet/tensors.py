"""What travels over the wire: numpy <-> ``zfnet.v1.Tensor`` (raw little-endian bytes with dtype
and shape), and the message limits both sides use."""

from __future__ import annotations

import math

import numpy as np

from zfnet.errors import InvalidArgument
from zfnet.v1 import zfnet_pb2 as pb

MAX_MESSAGE_BYTES = 256 << 20  # both sides raise gRPC's 4 MiB default; see proto/zfnet/v1/zfnet.proto
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

_TO_NUMPY = {
    pb.FLOAT32: np.dtype("<f4"), pb.FLOAT16: np.dtype("<f2"), pb.FLOAT64: np.dtype("<f8"),
    pb.UINT8: np.dtype("u1"), pb.INT32: np.dtype("<i4"), pb.INT64: np.dtype("<i8"),
}
_TO_PROTO = {dtype.newbyteorder("<"): code for code, dtype in _TO_NUMPY.items()}


def to_proto(array: np.ndarray) -> pb.Tensor:
    """Encode an array (its dtype must be one of DataType's)."""
    dtype = array.dtype.newbyteorder("<")
    if dtype not in _TO_PROTO:
        raise InvalidArgument(f"dtype {array.dtype} cannot travel as a Tensor; use float32, float16, float64, uint8, int32 or int64")
    return pb.Tensor(dtype=_TO_PROTO[dtype], shape=list(array.shape), data=np.ascontiguousarray(array, dtype=dtype).tobytes())


def _sub(field: str | None, name: str) -> str | None:
    return f"{field}.{name}" if field else None


def from_proto(tensor: pb.Tensor, what: str = "tensor", field: str | None = None) -> np.ndarray:
    """Decode a Tensor, checking that its bytes fit its dtype and shape; ``field`` is where the
    tensor sits in the request (``images[2].rgb``), named by the error."""
    if tensor.dtype == pb.DATA_TYPE_UNSPECIFIED:
        raise InvalidArgument(f"{what}: no dtype (DATA_TYPE_UNSPECIFIED); set Tensor.dtype", field=_sub(field, "dtype"), reason="FIELD_REQUIRED")
    if tensor.dtype not in _TO_NUMPY:
        raise InvalidArgument(
            f"{what}: unknown dtype {tensor.dtype}", field=_sub(field, "dtype"), reason="UNKNOWN_ENUM_VALUE",
            metadata={"enum": "zfnet.v1.DataType", "value": tensor.dtype},
        )
    dtype = _TO_NUMPY[tensor.dtype]
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{what}: negative dimension in shape {shape}", field=_sub(field, "shape"), reason="BAD_TENSOR")
    if any(d > MAX_MESSAGE_BYTES for d in shape):
        raise InvalidArgument(f"{what}: shape {shape} has a dimension no message can carry (at most {MAX_MESSAGE_BYTES} bytes)", field=_sub(field, "shape"), reason="BAD_TENSOR")
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidArgument(
            f"{what}: {len(tensor.data)} bytes do not fit dtype {dtype.name} and shape {shape} ({expected} bytes)",
            field=_sub(field, "data"), reason="BAD_TENSOR", metadata={"bytes": len(tensor.data), "expected": expected},
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
