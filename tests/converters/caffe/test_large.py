"""A .caffemodel over old protobuf's 64 MB cap (100 MB of synthetic weights) reads, converts and runs."""

from __future__ import annotations

import numpy as np
import pytest
from caffe_testing import assert_close, deploy, run

from zfnet.converters.caffe import caffe_pb2, convert


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out) + bytes([value])


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (written by hand: filling a 25M-float repeated field from Python is slow)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@pytest.mark.slow
def test_100_mb_caffemodel(tmp_path):
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(2048, 3 * 64 * 64)).astype(np.float32), rng.normal(size=2048).astype(np.float32)
    blobs = [caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=a.shape)).SerializeToString() + _field(5, a.tobytes()) for a in (weight, bias)]
    layer = caffe_pb2.LayerParameter(name="ip", type="InnerProduct").SerializeToString() + b"".join(_field(7, b) for b in blobs)
    path = tmp_path / "big.caffemodel"
    path.write_bytes(_field(100, layer))
    assert path.stat().st_size > 100_000_000
    net = tmp_path / "net.prototxt"
    net.write_text(deploy((1, 3, 64, 64), 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2048 } }'))
    x = rng.uniform(0, 1, size=(2, 3, 64, 64))
    got = run(convert(net, path, channel_order="rgb"), x)["ip"]
    assert_close(got, x.reshape(2, -1) @ weight.T.astype(np.float64) + bias, tol=1e-4)
