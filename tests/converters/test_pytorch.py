"""PyTorch -> ONNX: logits equal PyTorch's, every module exposed, switches present."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from zfnet import imagefolder
from zfnet.converters import expose
from zfnet.converters.pytorch import export, zoo
from zfnet.errors import InvalidArgument, NotFound
from zfnet.server.layers import layer_table, resolve

MODULES = [f"{kind}{i}" for i in range(1, 6) for kind in ("conv", "bn", "relu")] + ["pool1", "pool2", "pool5"] + [
    "fc6", "relu6", "fc7", "relu7", "fc8",
]


def _run(model: onnx.ModelProto | str, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs ``names`` of a plain onnxruntime session on ``model`` (a path or a model)."""
    data = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(names, feeds)]


def _cifar_batch(root, count_per_class: int) -> np.ndarray:
    folder = imagefolder.scan(root, zoo.CIFAR10_CLASSES)
    picked = [f for i, f in enumerate(folder.files) if int(f.stem) < count_per_class]
    return np.stack([imagefolder.read_rgb(p) for p in picked]).astype(np.float32).transpose(0, 3, 1, 2)


def test_logits_equal_pytorch_on_real_cifar10(reference_module, reference_onnx, shared) -> None:
    batch = _cifar_batch(shared("data", "cifar10", "test"), 20)  # 200 real test images
    ours = _run(str(reference_onnx), ["fc8"], {"image": batch})[0]
    with torch.no_grad():
        theirs = reference_module(torch.from_numpy(batch)).numpy()
    assert ours.shape == (200, 10)
    assert np.abs(ours - theirs).max() < 1e-5


def test_fresh_export_matches_bundled_model(reference_module, reference_onnx, sample_images) -> None:
    model = export.export(reference_module)
    onnx.checker.check_model(model, full_check=True)
    batch = np.stack([imagefolder.read_rgb(p) for p in sample_images[:16]]).astype(np.float32).transpose(0, 3, 1, 2)
    fresh = _run(model, ["fc8"], {"image": batch})[0]
    bundled = _run(str(reference_onnx), ["fc8"], {"image": batch})[0]
    np.testing.assert_allclose(fresh, bundled, atol=1e-5)


def test_every_module_is_a_typed_graph_output(reference_model) -> None:
    outputs = {o.name: o for o in reference_model.graph.output}
    for name in MODULES:
        assert name in outputs, f"{name} not exposed"
        assert outputs[name].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert len(outputs[name].type.tensor_type.shape.dim) >= 2
    for pool in ("pool1", "pool2", "pool5"):
        assert outputs[f"{pool}.switches"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert expose.tensor_shape(outputs["relu4"]) == ["N", 128, 8, 8]
    onnx.checker.check_model(reference_model, full_check=True)


def test_layer_numbers_follow_the_paper(reference_model) -> None:
    numbered = {row.number: row.name for row in layer_table(reference_model) if row.number}
    assert numbered == {1: "pool1", 2: "pool2", 3: "relu3", 4: "relu4", 5: "pool5", 6: "relu6", 7: "relu7", 8: "fc8"}


def test_switches_are_the_argmax_of_each_window(reference_model, sample_images) -> None:
    batch = np.stack([imagefolder.read_rgb(p) for p in sample_images[:4]]).astype(np.float32).transpose(0, 3, 1, 2)
    relu, pooled, switches = _run(reference_model, ["relu1", "pool1", "pool1.switches"], {"image": batch})
    plane = relu.shape[2] * relu.shape[3]
    flat = relu.reshape(relu.shape[0], relu.shape[1], plane)
    picked = np.take_along_axis(flat, (switches % plane).reshape(*switches.shape[:2], -1), axis=2)
    np.testing.assert_array_equal(picked.reshape(pooled.shape), pooled)
    _, torch_switches = torch.nn.functional.max_pool2d(torch.from_numpy(relu), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(switches % plane, torch_switches.numpy())


def _foreign_model() -> onnx.ModelProto:
    """A hand-written ONNX model with meaningless tensor names, as other tools write them."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.normal(size=(5, 64)).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("Conv", ["input.1", "W1"], ["11"], name="/features/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["11"], ["12"], name="/features/relu/Relu"),
        helper.make_node("MaxPool", ["12"], ["13"], name="/features/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["13"], ["/Flatten_output_0"], name="/Flatten"),
        helper.make_node("Gemm", ["/Flatten_output_0", "W2"], ["logits"], name="/classifier/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "foreign", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_expose_pass_on_a_foreign_model() -> None:
    foreign = _foreign_model()
    exposed = expose.expose(foreign)
    outputs = {o.name: expose.tensor_shape(o) for o in exposed.graph.output}
    assert outputs["features.conv"] == ["batch", 4, 8, 8]  # named after the module its node name's scopes give
    assert outputs["features.relu"] == ["batch", 4, 8, 8]
    assert outputs["features"] == ["batch", 4, 4, 4]  # the pool's output is that of features too: the outermost names it
    assert "features.switches" in outputs
    assert outputs["Flatten"] == ["batch", 64]
    assert "logits" in outputs  # a meaningful name is kept
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    before = _run(foreign, ["logits"], {"input.1": x})[0]
    after = _run(exposed, ["logits", "features.relu"], {"input.1": x})
    np.testing.assert_allclose(after[0], before, atol=1e-6)
    np.testing.assert_array_equal(after[1], np.maximum(after[1], 0))
    again = expose.expose(exposed)
    assert [o.name for o in again.graph.output] == [o.name for o in exposed.graph.output]
    numbered = {row.number: row.name for row in layer_table(exposed) if row.number}
    assert numbered == {1: "features", 2: "logits"}
    rows = {row.name: row for row in layer_table(exposed)}
    assert rows["features.relu"].aliases == ("12",)  # the name it had
    assert rows["features"].modules == ("features", "features.pool") and rows["logits"].modules == ("classifier",)
    assert resolve(layer_table(exposed), "features.pool").name == "features" and not any(row.internal for row in rows.values())


def test_load_weights_errors(tmp_path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        export.load_weights(zoo.build("zfnet-cifar10"), tmp_path / "missing.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(InvalidArgument, match="does not fit"):
        export.load_weights(zoo.build("zfnet-cifar10"), wrong)
    with pytest.raises(NotFound, match="unknown architecture"):
        export.load_module("alexnet-9000")
    with pytest.raises(NotFound, match="cannot import"):
        export.load_module("no_such_package.module:Net")
