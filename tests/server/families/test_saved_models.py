"""Models as people save them: the legacy exporter's opsets (their opset-dependent op forms),
opsets 7 to current, float16 weights, external data files, names given at export, and models too
large for one protobuf message."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

import family_models
from test_families import INNER, Client, check_family, export, images
from zfnet import errors
from zfnet.client.models import model_bytes
from zfnet.converters.graph import IR_VERSION

# (family, opset): the forms that change with the opset -- Clip's bounds as attributes (before 11) or
# inputs, ReduceMean's axes attribute, Split's sizes as attribute (before 13) or input, Squeeze and
# Unsqueeze axes likewise, Softmax over the flattened trailing axes (before 13) or one axis,
# LayerNormalization (17) or its decomposition, GELU as Erf arithmetic, HardSwish as HardSigmoid * x
# (before 14), BatchNormalization kept (before 9), chunk sizes computed from Shape
LEGACY = [
    ("alexnet_vgg", 8), ("mobilenet_v2", 7), ("mobilenet_v2", 9), ("mobilenet_v2", 11), ("mobilenet_v2", 13), ("mobilenet_v2", 17),
    ("shufflenet", 9), ("shufflenet", 11), ("shufflenet", 13), ("googlenet", 9), ("googlenet", 13),
    ("vit", 11), ("vit", 13), ("vit", 17), ("mobilenet_v3", 9), ("mobilenet_v3", 17), ("convnext", 13), ("efficientnet", 11), ("densenet", 9),
]


@pytest.mark.slow
@pytest.mark.parametrize("family, opset", LEGACY, ids=[f"{f}-opset{o}" for f, o in LEGACY])
def test_legacy_exporter_opsets_match_captum(family: str, opset: int, server, sample_images, tmp_path: Path) -> None:
    net = family_models.build(family)
    size = family_models.INPUT_SIZE.get(family, 32)
    path = export(net, tmp_path / f"{family}-{opset}.onnx", size, dynamo=False, opset_version=opset)
    assert onnx.load(path, load_external_data=False).opset_import[0].version == opset
    with Client(server[0]) as client:
        check_family(client, net, path, images(sample_images, size), [None, INNER[family][0]])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["convnext", "vit", "shufflenet"])
def test_dynamic_batch_exports_match_captum(family: str, server, sample_images, tmp_path: Path) -> None:
    """Exported with a dynamic batch (``dynamic_shapes``): the batch axis moves through attention's
    transposes (ViT), and ConvNeXt's head flattens it away and gathers it back by index arithmetic
    (``as_strided``), which is projected for one image at a time."""
    net = family_models.build(family)
    size = family_models.INPUT_SIZE.get(family, 32)
    path = tmp_path / f"{family}-dynamic.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, 3, size, size) * 255,), str(path), dynamic_shapes=({0: torch.export.Dim("N")},))
    assert onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0].dim_param
    with Client(server[0]) as client:
        check_family(client, net, path, images(sample_images, size), [None, INNER[family][1]])


@pytest.mark.slow
def test_opsets_7_to_current_load_and_predict(server, sample_images, tmp_path: Path) -> None:
    """Every opset the pinned torch exports, legacy (7..21) and dynamo (18..24): the model loads and
    predicts what torch computes; deconv works, or (before opset 8, where MaxPool has no switches
    output) refuses naming MaxPool and the opset."""
    net = family_models.build("alexnet_vgg")
    pictures = images(sample_images, 32)
    batch = torch.from_numpy(np.stack(pictures).astype(np.float32).transpose(0, 3, 1, 2))
    with torch.no_grad():
        expected = torch.softmax(net(batch), 1).numpy()
    exports = [(opset, False) for opset in range(7, 22)] + [(opset, True) for opset in (18, 22, 24)]
    with Client(server[0]) as client:
        for opset, dynamo in exports:
            path = export(net, tmp_path / f"alexnet-{opset}-{dynamo}.onnx", 32, dynamo=dynamo, opset_version=opset)
            np.testing.assert_allclose(client.probabilities(path, pictures), expected, atol=1e-5, err_msg=f"opset {opset}")
            if opset < 8:
                with pytest.raises(errors.InvalidArgument, match="MaxPool.*opset 8"):
                    client.deconv(path, pictures, 2, top_k=1)
            else:
                assert client.deconv(path, pictures, 2, top_k=1).reconstructions


@pytest.mark.slow
@pytest.mark.parametrize("family", ["resnet", "mobilenet_v3"])
def test_float16_model_projects_in_float32(family: str, server, sample_images, tmp_path: Path) -> None:
    """A model exported in half precision runs in half precision; its projection runs in float32 and
    equals Captum on the float32 copy of its weights up to float16's rounding of the forward values."""
    half = family_models.build(family).half()
    net = family_models.build(family)
    net.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    path = export(half, tmp_path / f"{family}16.onnx", 32, torch.float16)
    assert onnx.load(path).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    with Client(server[0]) as client:
        check_family(client, net, path, images(sample_images, 32), [None, INNER[family][0]], tolerance=5e-2)


@pytest.mark.slow
def test_names_given_at_export_are_aliases(server, sample_images, tmp_path: Path) -> None:
    """``output_names=["logits"]``: the expose pass renames the output after its module, and the given
    name still selects it; the layer table lists both; an unknown name suggests the nearest."""
    net = family_models.build("resnet")
    path = export(net, tmp_path / "named.onnx", 32, input_names=["image"], output_names=["logits"])
    pictures = images(sample_images, 32)
    with Client(server[0]) as client:
        info = client.model_info(path)
        row = next(r for r in info.layers if "logits" in r.aliases)
        assert row.name == info.output_name == "fc"
        by_alias = client.deconv(path, pictures, "logits", top_k=2)
        by_name = client.deconv(path, pictures, "fc", top_k=2)
        assert by_alias.layer == by_name.layer == "fc"
        for a, b in zip(by_alias.reconstructions, by_name.reconstructions, strict=True):
            np.testing.assert_array_equal(a.pixels, b.pixels)
        assert set(client.activations(path, pictures, ["logits"])) == {"fc"}
        with pytest.raises(errors.NotFound, match="did you mean.*logits"):
            client.deconv(path, pictures, "logit")


def _model_with_external_weights(folder: Path, length: int | None = None) -> Path:
    """A one-Conv model whose filters live in ``weights.bin`` beside it."""
    weights = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    (folder / "weights.bin").write_bytes(weights.tobytes())
    tensor = numpy_helper.from_array(weights, "w")
    set_external_data(tensor, "weights.bin", offset=0, length=length if length is not None else weights.nbytes)
    tensor.ClearField("raw_data")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    path = folder / "external.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_is_inlined_before_upload(server, tmp_path: Path) -> None:
    path = _model_with_external_weights(tmp_path)
    inlined = onnx.ModelProto.FromString(model_bytes(path))
    assert not inlined.graph.initializer[0].external_data and len(inlined.graph.initializer[0].raw_data) == 4 * 3 * 3 * 3 * 4
    with Client(server[0]) as client:
        x = np.random.default_rng(1).standard_normal((3, 8, 8)).astype(np.float32)
        y = client.activations(path, [x], ["y"])["y"]
        w = torch.from_numpy(np.frombuffer((tmp_path / "weights.bin").read_bytes(), np.float32).reshape(4, 3, 3, 3).copy())
        np.testing.assert_allclose(y, torch.conv2d(torch.from_numpy(x[None]), w, padding=1).numpy(), atol=1e-5)


def test_missing_external_data_file_is_named(tmp_path: Path) -> None:
    path = _model_with_external_weights(tmp_path)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(errors.ZfnetError, match="weights.bin"):
        model_bytes(path)


def test_model_over_two_gib_is_refused_before_reading(tmp_path: Path) -> None:
    path = _model_with_external_weights(tmp_path, length=3 << 30)
    with pytest.raises(errors.ResourceExhausted, match=r"3\.0 GiB.*at most 2 GiB"):
        model_bytes(path)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["alexnet_vgg", "vit"])
def test_fixed_batch_exports_freed_match_captum(family: str, server, sample_images, tmp_path: Path) -> None:
    """Exported at a fixed batch of 32 (legacy exporter, no dynamic axes): the batch is made dynamic at
    load (a ``Reshape`` to ``[32, -1]``, ViT's class token expanded to 32 rows) and deconv by every
    method still equals Captum."""
    net = family_models.build(family)
    size = family_models.INPUT_SIZE.get(family, 32)
    path = tmp_path / f"{family}-batch32.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(32, 3, size, size) * 255,), str(path), dynamo=False, opset_version=17)
    with Client(server[0]) as client:
        check_family(client, net, path, images(sample_images, size), [None, INNER[family][0]])
        loaded = server[1].store.get(client.ensure_model(path))
    assert loaded.input_shape[0] == -1 and loaded.session.get_inputs()[0].shape[0] == "N"
