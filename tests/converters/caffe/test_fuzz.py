"""Mutated prototxt text and mutated or truncated caffemodel bytes: only ZfnetError escapes, nothing hangs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from caffe_testing import deploy, write_weights
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zfnet.converters.caffe import convert
from zfnet.errors import ZfnetError

NET = deploy((1, 3, 9, 9), """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 } }
layer { name: "split" type: "Split" bottom: "norm1" top: "a" top: "b" }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" eltwise_param { coeff: 1 coeff: -0.5 } }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "pool1" top: "cat" }
layer { name: "slice" type: "Slice" bottom: "cat" top: "s1" top: "s2" slice_param { slice_point: 3 } }
layer { name: "reshape" type: "Reshape" bottom: "s1" top: "r" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "r" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
layer { name: "quiet" type: "Silence" bottom: "s2" }
""")

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    blobs = {
        "conv1": [rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)],
        "bn1": [rng.normal(size=4), rng.uniform(1, 2, size=4), np.ones(1)],
        "scale1": [rng.normal(size=4), rng.normal(size=4)],
        "ip": [rng.normal(size=(5, 75)), rng.normal(size=5)],
    }
    (directory / "net.prototxt").write_text(NET)
    return {"dir": directory, "net": directory / "net.prototxt", **write_weights(directory, blobs)}


def test_the_fuzzed_net_converts(files):
    convert(files["net"], files["caffemodel"])
    convert(files["net"], files["h5"])


TOKENS = ["{", "}", ":", '"', "-1", "0", "99999", "4294967295", "1e9", "nan", "layer", "top", "bottom", "axis", "#", "\n", "\x00", "é"]


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    text = NET
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["delete", "insert", "replace_number"]))
        if kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        elif kind == "insert":
            text = text[:at] + draw(st.sampled_from(TOKENS) | st.text(max_size=3)) + text[at:]
        elif digits := [i for i, c in enumerate(text) if c.isdigit()]:
            i = digits[at % len(digits)]
            text = text[:i] + str(draw(st.integers(-5, 2**33))) + text[i + 1 :]
    return text


@FUZZ
@given(text=mutated_text())
def test_mutated_prototxt_raises_only_zfnet_errors(files, text):
    path = files["dir"] / "mutated.prototxt"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        convert(path, files["caffemodel"])
    except ZfnetError:
        pass


@FUZZ
@given(data=st.data())
def test_mutated_caffemodel_raises_only_zfnet_errors(files, data):
    raw = bytearray(files["caffemodel"].read_bytes())
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    if kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    else:
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    path = files["dir"] / "mutated.caffemodel"
    path.write_bytes(bytes(raw))
    try:
        convert(files["net"], path)
    except ZfnetError:
        pass
