"""Fixtures for the Caffe converter tests; the plain helpers are in caffe_testing.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from caffe_testing import WEIGHT_FORMATS, write_weights

from zfnet.converters.caffe import convert


@pytest.fixture(params=WEIGHT_FORMATS)
def weight_format(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture()
def convert_net(tmp_path: Path, weight_format: str) -> Callable[..., onnx.ModelProto]:
    """``convert_net(prototxt, blobs, v1=False, **options)``: write both files, convert with the weights in this test's format.

    Options default to ``channel_order="rgb"`` and no mean, so the graph computes the bare net.
    """

    def convert_net(prototxt: str, blobs: dict[str, list[np.ndarray]], v1: bool = False, **options) -> onnx.ModelProto:
        net = tmp_path / "net.prototxt"
        net.write_text(prototxt)
        weights = write_weights(tmp_path, blobs or {"unused": [np.zeros(1)]}, v1)[weight_format]
        return convert(net, weights, **{"channel_order": "rgb", **options})

    return convert_net


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
