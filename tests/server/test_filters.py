"""Filters over gRPC equal the weights read independently (PyTorch module, raw .caffemodel protobuf), and
``zfclient filters`` tiles them as the classic Caffe ``show_feature`` snippet does, on the seed's own
example: cifar10_quick's 4,000-iteration snapshot, conv1 (RGB), conv2 and conv3 (first 1,024 pairs)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from zfnet.client import render
from zfnet.client.api import Client
from zfnet.client.cli.main import app
from zfnet.converters import caffe
from zfnet.converters.caffe import caffe_pb2
from zfnet.errors import InvalidArgument, NotFound

MEAN = [125.3, 122.9, 113.9]


def tiled_by_hand(tiles: np.ndarray, per_tile: bool = False) -> np.ndarray:
    """Reference tiling, one tile at a time: [0, 1] scaling, a ceil(sqrt(n)) square grid, 1 pixel of 0 after each tile."""
    tiles = tiles.astype(np.float64)
    if per_tile:
        tiles = np.stack([(t - t.min()) / (t.max() - t.min()) for t in tiles])
    else:
        tiles = (tiles - tiles.min()) / (tiles - tiles.min()).max()
    n = math.ceil(math.sqrt(len(tiles)))
    h, w = tiles.shape[1:3]
    out = np.zeros((n * (h + 1), n * (w + 1), *tiles.shape[3:]))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, n)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tile
    return out


@pytest.fixture(scope="module")
def quick(shared, tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """cifar10_quick (train/test net, 4,000-iteration .caffemodel) converted, and its weights read from the raw protobuf."""
    root = shared("models", "caffe", "cifar10_quick")
    weights = root / "cifar10_quick_iter_4000.caffemodel"
    path = tmp_path_factory.mktemp("quick") / "cifar10_quick_4000.onnx"
    path.write_bytes(caffe.convert(root / "cifar10_quick_train_test.prototxt", weights, mean_value=MEAN, channel_order="rgb", input_size=(32, 32)).SerializeToString())
    net = caffe_pb2.NetParameter.FromString(weights.read_bytes())
    blobs = {layer.name: np.asarray(layer.blobs[0].data, np.float32).reshape(list(layer.blobs[0].shape.dim)) for layer in net.layer if layer.blobs}
    return path, blobs


def test_filters_of_the_bundled_model_are_its_pytorch_weights(reference_module, reference_onnx) -> None:
    with Client() as client:
        conv = client.filters(reference_onnx, 1)  # layer 1 is pool1: its block's convolution is conv1
        fc = client.filters(reference_onnx, "relu6")
        with pytest.raises(NotFound, match="no layer named 'nope'"):
            client.filters(reference_onnx, "nope")
        with pytest.raises(InvalidArgument, match="no convolutional or fully connected layer before it"):
            client.filters(reference_onnx, "preprocess")
    assert (conv.layer, conv.op, conv.channel_order) == ("conv1", "Conv", "rgb")
    assert conv.bias is None or not conv.bias.any()  # bias=False in PyTorch; the exporter may add zeros
    np.testing.assert_array_equal(conv.weights, reference_module.conv1.weight.detach().numpy())
    assert (fc.layer, fc.op) == ("fc6", "Gemm")
    np.testing.assert_array_equal(fc.weights, reference_module.fc6.weight.detach().numpy())
    np.testing.assert_array_equal(fc.bias, reference_module.fc6.bias.detach().numpy())


def test_filters_of_an_einsum_layer_are_its_own(tmp_path, sample_images) -> None:
    """Conv -> Relu -> Reshape -> Einsum(constant W): the layer table numbers the Einsum as layer 2, and
    its filters are W laid out (out, in), not conv1's: the layer's output is its input times their transpose."""
    rng = np.random.default_rng(2)
    conv_w, fc_w = rng.normal(size=(2, 3, 3, 3)).astype(np.float32), rng.normal(size=(32, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["conv1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Reshape", ["relu1", "shape"], ["flat"], name="flat"),
        helper.make_node("Einsum", ["flat", "fc_w"], ["fc"], name="fc", equation="nk,kj->nj"),
    ]
    inits = [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(fc_w, "fc_w"), numpy_helper.from_array(np.array([-1, 32], np.int64), "shape")]
    graph = helper.make_graph(nodes, "conv-einsum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("fc", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path = tmp_path / "conv-einsum.onnx"
    path.write_bytes(model.SerializeToString())
    with Client() as client:
        numbered = {layer.number: layer.name for layer in client.model_info(path).layers if layer.number}
        conv, fc = client.filters(path, 1), client.filters(path, 2)
        acts = client.activations(path, sample_images[:3], ["flat", "fc"])
    assert numbered == {1: "relu1", 2: "fc"}
    assert (conv.layer, conv.op, conv.bias) == ("conv1", "Conv", None)
    np.testing.assert_array_equal(conv.weights, conv_w)
    assert (fc.layer, fc.op, fc.weights.shape, fc.bias) == ("fc", "Einsum", (5, 32), None)
    np.testing.assert_array_equal(fc.weights, fc_w.T)
    np.testing.assert_allclose(acts["fc"], acts["flat"] @ fc.weights.T, rtol=1e-5, atol=1e-4)


def test_tiles_match_a_tile_by_tile_reference() -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(7, 3, 4, 2)).astype(np.float32)
    rgb, shown = render.filter_tiles(weights)
    np.testing.assert_allclose(rgb, tiled_by_hand(weights.transpose(0, 2, 3, 1)))
    assert rgb.shape == (3 * 5, 3 * 3, 3) and shown == "7 of 7 4x2 RGB filters"
    bgr, _ = render.filter_tiles(weights, bgr=True)
    np.testing.assert_allclose(bgr, rgb[..., ::-1])
    deeper = rng.normal(size=(5, 4, 3, 3)).astype(np.float32)
    grey, shown = render.filter_tiles(deeper, limit=11, normalise="filter")
    np.testing.assert_allclose(grey, tiled_by_hand(deeper.reshape(20, 3, 3)[:11], per_tile=True))
    assert shown == "first 11 of 20 (output, input) 3x3 filters, labelled output,input"
    labels = render.filter_labels(deeper, 11)  # tile k shows deeper[o, i] (the reference's order): labelled "o,i"
    assert labels == ["0,0", "0,1", "0,2", "0,3", "1,0", "1,1", "1,2", "1,3", "2,0", "2,1", "2,2"]
    assert all(np.array_equal(deeper.reshape(20, 3, 3)[k], deeper[int(o), int(i)]) for k, (o, i) in enumerate(x.split(",") for x in labels))
    assert render.filter_labels(weights, 1024) == [str(o) for o in range(7)]
    with pytest.raises(InvalidArgument, match="a fully connected layer"):
        render.filter_tiles(deeper[:, :, 0, 0])
    with pytest.raises(InvalidArgument, match="limit must be positive"):
        render.filter_tiles(deeper, limit=0)


@pytest.mark.slow
def test_the_seeds_cifar10_quick_example(quick, tmp_path, monkeypatch) -> None:
    path, blobs = quick
    with Client() as client:
        got = {name: client.filters(path, name) for name in ("conv1", "conv2", "conv3")}
    for name, found in got.items():
        np.testing.assert_array_equal(found.weights, blobs[name])
        assert found.op == "Conv" and found.bias is not None and found.bias.shape == (blobs[name].shape[0],)
    # show_feature(weight.transpose(0, 2, 3, 1)); show_feature(weight.reshape(32**2, 5, 5)); show_feature(weight.reshape(64*32, 5, 5)[:1024])
    references = {
        "conv1": tiled_by_hand(blobs["conv1"].transpose(0, 2, 3, 1)),
        "conv2": tiled_by_hand(blobs["conv2"].reshape(32**2, 5, 5)),
        "conv3": tiled_by_hand(blobs["conv3"].reshape(64 * 32, 5, 5)[:1024]),
    }
    for name, reference in references.items():
        tiles, _ = render.filter_tiles(got[name].weights, limit=1024)
        np.testing.assert_allclose(tiles, reference, atol=1e-12)
    assert references["conv1"].shape == (36, 36, 3) and references["conv3"].shape == (192, 192)
    monkeypatch.delenv("ZFNET_SERVER", raising=False)
    for name, expected in (("conv1", "32 of 32 5x5 RGB filters"), ("conv3", "first 1,024 of 2,048 (output, input) 5x5 filters, labelled output,input")):
        out = tmp_path / f"{name}.png"
        result = CliRunner().invoke(app, ["filters", "--model", str(path), "--layer", name, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert expected in result.stdout and Image.open(out).size[0] > 300
    result = CliRunner().invoke(app, ["filters", "--model", str(path), "--layer", "ip1", "--out", str(tmp_path / "ip1.png")])
    assert result.exit_code == 1 and "a fully connected layer" in result.stderr and not (tmp_path / "ip1.png").exists()
