"""Sessions that share a model's weights (:class:`zfnet.server.runtime.Weights`): the same outputs as a
plain onnxruntime session of the model, one copy of the weights for every session, and no copy of the
model's bytes kept by a session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from zfnet.converters.graph import IR_VERSION
from zfnet.server import runtime
from zfnet.server.admission import keep_freed_memory_until_idle, release_memory, rss_bytes

WIDE = 4096  # a 4096x4096 float32 weight: 64 MiB


def _wide_model() -> onnx.ModelProto:
    """x (N, WIDE) -> MatMul(W) -> Relu -> + b, with W of 64 MiB and a small b (which stays in the graph)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((WIDE, WIDE)).astype(np.float32) / 64, "W")
    bias = numpy_helper.from_array(rng.standard_normal(WIDE // 512).astype(np.float32).repeat(512)[:8], "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Slice", ["r", "start", "end", "axis"], ["s"]), helper.make_node("Add", ["s", "b"], ["y"])],
        "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        initializer=[weight, bias, *(numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("start", 0), ("end", 8), ("axis", 1)))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = IR_VERSION
    return model


def test_a_session_over_shared_weights_computes_what_the_model_does(reference_onnx: Path) -> None:
    model = onnx.load(reference_onnx)
    weights = runtime.Weights(model)
    data, shared = weights.referenced(model)
    assert shared and len(data) < model.ByteSize() - weights.nbytes + 4096  # the graph names its weights, holds none of them
    x = np.random.default_rng(1).random((4, 3, 32, 32), np.float32)
    plain = ort.InferenceSession(reference_onnx.read_bytes(), providers=["CPUExecutionProvider"])
    (expected,) = runtime.tensors(plain, [plain.get_outputs()[0].name], {plain.get_inputs()[0].name: x})
    (got,) = runtime.tensors(runtime.session(data, weights=shared), [plain.get_outputs()[0].name], {plain.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_sessions_of_a_model_hold_one_copy_of_its_weights() -> None:
    model = _wide_model()
    weights = runtime.Weights(model)
    assert set(weights.arrays) == {"W"}  # b and the slice bounds are small: they stay in the graph
    x = np.random.default_rng(2).standard_normal((3, WIDE)).astype(np.float32)
    (expected,) = runtime.tensors(ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), ["y"], {"x": x})
    keep_freed_memory_until_idle()  # as a server runs (the heap keeps what building a session frees until release_memory)
    sessions, growth = [], []
    for _ in range(3):
        release_memory()
        before = rss_bytes()
        sessions.append(runtime.session(*_args(weights, model)))
        release_memory()
        growth.append(rss_bytes() - before)
        np.testing.assert_allclose(runtime.tensors(sessions[-1], ["y"], {"x": x})[0], expected, rtol=1e-4, atol=1e-4)
    size = weights.arrays["W"].nbytes
    assert max(growth) < size // 4, f"a session over shared weights grew RSS by {growth} bytes; the weight is {size}"


def test_a_session_keeps_no_copy_of_the_model_bytes() -> None:
    model = _wide_model()
    keep_freed_memory_until_idle()
    release_memory()
    before = rss_bytes()
    data = model.SerializeToString()
    session = runtime.session(data)
    del data
    release_memory()
    held = rss_bytes() - before
    size = WIDE * WIDE * 4
    assert runtime.tensors(session, ["y"], {"x": np.zeros((1, WIDE), np.float32)})[0].shape == (1, 8)
    assert held < 1.6 * size, f"a session of a {size}-byte model holds {held} bytes: the model's bytes are kept beside its weights"


def _args(weights: runtime.Weights, model: onnx.ModelProto) -> tuple:
    data, shared = weights.referenced(model)
    return data, 0, shared


def test_an_initializer_onnxruntime_cannot_view_stays_in_the_graph() -> None:
    """A large string initializer (class names kept in a graph) is not shared; the session still runs."""
    names = numpy_helper.from_array(np.array(["cat"] * 2000, dtype=object), "names")
    weight = numpy_helper.from_array(np.eye(64, dtype=np.float32) * 2, "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Identity", ["names"], ["n"])], "labelled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64]), helper.make_tensor_value_info("n", TensorProto.STRING, [2000])],
        initializer=[names, weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = IR_VERSION
    weights = runtime.Weights(model)
    assert set(weights.arrays) == {"W"}
    x = np.arange(64, dtype=np.float32)[None]
    np.testing.assert_array_equal(runtime.tensors(runtime.session(*_args(weights, model)), ["y"], {"x": x})[0], 2 * x)
