"""Sessions made by :func:`zfnet.server.runtime.session` keep no copy of their model's bytes
(onnxruntime's Python wrapper does, for the session's life, unless told not to)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zfnet.converters.graph import IR_VERSION
from zfnet.server import runtime
from zfnet.server.admission import keep_freed_memory_until_idle, release_memory, rss_bytes

WIDE = 4096  # a 4096x4096 float32 weight: 64 MiB


def _wide_model() -> onnx.ModelProto:
    """x (N, WIDE) -> MatMul(W) with W of 64 MiB."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((WIDE, WIDE)).astype(np.float32) / 64, "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDE])], initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = IR_VERSION
    return model


def test_a_session_keeps_no_copy_of_the_model_bytes() -> None:
    model = _wide_model()
    keep_freed_memory_until_idle()  # as a server runs: the heap keeps freed blocks until release_memory
    release_memory()
    before = rss_bytes()
    data = model.SerializeToString()
    session = runtime.session(data)
    del data
    release_memory()
    held = rss_bytes() - before
    size = WIDE * WIDE * 4
    x = np.eye(1, WIDE, dtype=np.float32)
    np.testing.assert_allclose(runtime.tensors(session, ["y"], {"x": x})[0], numpy_helper.to_array(model.graph.initializer[0])[:1], rtol=1e-6)
    assert held < 1.6 * size, f"a session of a {size}-byte model holds {held} bytes: the model's bytes are kept beside its weights"
