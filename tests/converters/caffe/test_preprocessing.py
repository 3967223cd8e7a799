"""Means (compute, binaryproto I/O) and the preprocessing carried into the converted graph."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from caffe_testing import assert_close, deploy, run, write_weights
from PIL import Image

from zfnet.converters.caffe import caffe_pb2, convert
from zfnet.converters.caffe.mean import compute_mean, read_binaryproto, write_binaryproto
from zfnet.converters.graph import CLASSES_KEY, PREPROCESSING_KEY, Preprocessing, get_metadata
from zfnet.errors import InvalidArgument, NotFound

IDENTITY = 'layer { name: "out" type: "Power" bottom: "data" top: "out" }'


@pytest.fixture()
def images(tmp_path, rng):
    """Six lossless 4x5 RGB images in two class folders, and their stack (n, H, W, 3)."""
    pixels = rng.integers(0, 256, size=(6, 4, 5, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        folder = tmp_path / "train" / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    return tmp_path / "train", pixels


def recorded(model: onnx.ModelProto) -> Preprocessing:
    """The preprocessing a converted model records (it must record one)."""
    text = get_metadata(model, PREPROCESSING_KEY)
    assert text is not None, "no preprocessing recorded"
    return Preprocessing.from_json(text)


def test_compute_mean_is_the_per_pixel_mean_in_the_requested_order(images):
    root, pixels = images
    want = pixels.mean(axis=0).transpose(2, 0, 1)
    rgb, unreadable, _ = compute_mean(root, chunk=4)  # chunks of 4 and 2: the sum crosses a chunk boundary
    assert rgb.dtype == np.float32 and rgb.shape == (3, 4, 5) and unreadable == []
    assert_close(rgb, want)
    assert_close(compute_mean(root, channel_order="bgr")[0], want[::-1])


def test_compute_mean_leaves_out_an_image_that_does_not_decode_and_names_it(images):
    root, pixels = images
    bad = root / "dog" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    mean, unreadable, _ = compute_mean(root, chunk=4)
    assert [u.path for u in unreadable] == [bad.absolute()]
    assert_close(mean, pixels.mean(axis=0).transpose(2, 0, 1))  # the mean of the images that decode
    with pytest.raises(InvalidArgument, match=f"cannot decode image {bad.absolute()}"):
        compute_mean(root, strict=True)


def test_compute_mean_refuses_images_of_different_sizes(images):
    root, _ = images
    Image.new("RGB", (7, 7)).save(root / "dog" / "odd.png")
    with pytest.raises(InvalidArgument, match="differ in size"):
        compute_mean(root)


def test_binaryproto_round_trip_is_a_legacy_4d_blobproto(tmp_path, rng):
    mean = rng.uniform(0, 255, size=(3, 4, 5)).astype(np.float32)
    path = tmp_path / "mean.binaryproto"
    write_binaryproto(mean, path)
    blob = caffe_pb2.BlobProto.FromString(path.read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 5) and not blob.HasField("shape")
    np.testing.assert_array_equal(read_binaryproto(path), mean)


def test_read_binaryproto_errors(tmp_path):
    with pytest.raises(NotFound, match="missing.binaryproto"):
        read_binaryproto(tmp_path / "missing.binaryproto")
    short = tmp_path / "short.binaryproto"
    short.write_bytes(caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2, data=[1.0] * 5).SerializeToString())
    with pytest.raises(InvalidArgument, match=r"short.binaryproto.*5 values"):
        read_binaryproto(short)


def test_channel_order_mean_values_and_scale_are_prepended(convert_net, rng):
    model = convert_net(deploy((1, 3, 2, 2), IDENTITY), {}, channel_order="bgr", mean_value=[10, 20, 30], scale=0.5)
    x = rng.uniform(0, 255, size=(2, 3, 2, 2))
    assert_close(run(model, x)["out"], (x[:, ::-1] - np.array([10, 20, 30])[:, None, None]) * 0.5)
    assert recorded(model) == Preprocessing("bgr", [10.0, 20.0, 30.0], None, [0.5], (2, 2))


def test_one_mean_value_applies_to_every_channel(convert_net, rng):
    model = convert_net(deploy((1, 3, 2, 2), IDENTITY), {}, mean_value=[7])
    x = rng.uniform(0, 255, size=(1, 3, 2, 2))
    assert_close(run(model, x)["out"], x - 7)


def test_larger_mean_file_is_centre_cropped(convert_net, tmp_path, rng):
    mean = rng.uniform(0, 255, size=(3, 8, 7)).astype(np.float32)
    write_binaryproto(mean, tmp_path / "mean.binaryproto")
    model = convert_net(deploy((1, 3, 4, 4), IDENTITY), {}, mean_file=tmp_path / "mean.binaryproto")
    x = rng.uniform(0, 255, size=(2, 3, 4, 4))
    assert_close(run(model, x)["out"], x - mean[:, 2:6, 1:5])
    assert recorded(model).mean_source == "mean.binaryproto (per pixel, 3x4x4, centre crop of 3x8x7)"


TRAIN_TEST = """name: "tt"
layer {{ name: "cifar" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
        transform_param {{ {transform} }} data_param {{ source: "test_lmdb" batch_size: 100 backend: LMDB }} }}
layer {{ name: "out" type: "Power" bottom: "data" top: "out" }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "out" bottom: "label" top: "loss" }}
"""


def test_train_test_mean_file_next_to_the_prototxt_gives_the_input_size(convert_net, tmp_path, rng):
    mean = rng.uniform(0, 255, size=(3, 5, 6)).astype(np.float32)
    write_binaryproto(mean, tmp_path / "mean.binaryproto")
    model = convert_net(TRAIN_TEST.format(transform='mean_file: "mean.binaryproto" scale: 2'), {})
    x = rng.uniform(0, 255, size=(2, 3, 5, 6))
    assert_close(run(model, x)["out"], (x - mean) * 2)


def test_options_override_the_data_layers_transform(convert_net, rng):
    model = convert_net(TRAIN_TEST.format(transform='mean_file: "/nowhere/mean.binaryproto" scale: 2'), {}, mean_value=[1, 2, 3], scale=1.0, input_size=(3, 3))
    x = rng.uniform(0, 255, size=(1, 3, 3, 3))
    assert_close(run(model, x)["out"], x - np.array([1, 2, 3])[:, None, None])


def test_classes_are_recorded(tmp_path, rng):
    net = tmp_path / "net.prototxt"
    net.write_text(deploy((1, 3, 2, 2), 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }'))
    weights = write_weights(tmp_path, {"ip": [rng.normal(size=(2, 12)), rng.normal(size=2)]})["caffemodel"]
    classes = get_metadata(convert(net, weights, classes=["cat", "dog"]), CLASSES_KEY)
    assert classes is not None and json.loads(classes) == ["cat", "dog"]
    assert get_metadata(convert(net, weights), CLASSES_KEY) is None
    with pytest.raises(InvalidArgument, match="3 class names for output 'ip' with 2 channels"):
        convert(net, weights, classes=["a", "b", "c"])


def test_channel_order_defaults_to_bgr_for_three_channels_only(tmp_path):
    weights = write_weights(tmp_path, {"unused": [np.zeros(1)]})["h5"]
    for channels, order in ((3, "bgr"), (1, "rgb")):
        net = tmp_path / f"net{channels}.prototxt"
        net.write_text(deploy((1, channels, 2, 2), IDENTITY))
        assert recorded(convert(net, weights)).channel_order == order
    with pytest.raises(InvalidArgument, match="channel order bgr needs 3 channels; the input has 1"):
        convert(tmp_path / "net1.prototxt", weights, channel_order="bgr")
