"""Invariance through the real server: transformations against independent references (numpy
rotations and padding, a bilinear loop), distances against numpy on bare onnxruntime activations."""

from __future__ import annotations

from typing import cast

import grpc
import numpy as np
import pytest
from PIL import Image
from perturb_testing import CIFAR10, Bare, Conn, encoded, expect_stream_error, nchw, softmax, still_serves, stream

from zfnet.server import invariance
from zfnet.tensors import from_proto
from zfnet.v1 import zfnet_pb2 as pb

Code = grpc.StatusCode
FILL = np.array([10.0, 128.0, 250.0], np.float32)


@pytest.fixture(scope="module")
def image(sample_images) -> np.ndarray:
    return nchw(sample_images[:1])[0]


def bilinear_reference(image: np.ndarray, source_rows: np.ndarray, source_cols: np.ndarray, border: str, fill: np.ndarray) -> np.ndarray:
    """Sample ``image`` at fractional source coordinates, one pixel at a time, from the image padded
    wide by mirroring (edge pixel repeated: d c b a | a b c d) or by the fill."""
    channels, height, width = image.shape
    margin = max(height, width)
    if border == "reflect":
        padded = np.pad(image.astype(np.float64), ((0, 0), (margin, margin), (margin, margin)), mode="symmetric")
    else:
        padded = np.stack([np.pad(image[c].astype(np.float64), margin, constant_values=fill[c]) for c in range(channels)])
    out = np.zeros(image.shape)
    for r in range(height):
        for c in range(width):
            y, x = source_rows[r, c] + margin, source_cols[r, c] + margin
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            dy, dx = y - y0, x - x0
            out[:, r, c] = ((1 - dy) * (1 - dx) * padded[:, y0, x0] + (1 - dy) * dx * padded[:, y0, x0 + 1]
                            + dy * (1 - dx) * padded[:, y0 + 1, x0] + dy * dx * padded[:, y0 + 1, x0 + 1])
    return out


def source_of(name: str, value: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel comes from, written out from the transformation's definition."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    if name == "translate":  # content moves down by value
        return rows - value, cols
    if name == "scale":  # content grows by value about the centre
        return cy + (rows - cy) / value, cx + (cols - cx) / value
    # rotate: content turns counter-clockwise on screen, i.e. with y up; the output samples the inverse turn
    t = -np.deg2rad(value)
    x, y = cols - cx, cy - rows
    sx, sy = np.cos(t) * x - np.sin(t) * y, np.sin(t) * x + np.cos(t) * y
    return cy - sy, cx + sx


# ---- the transformations ------------------------------------------------------------------------


@pytest.mark.parametrize("dy", [-8, -3, 1, 5])
@pytest.mark.parametrize("border", ["reflect", "constant"])
def test_integer_translation_equals_padding(image: np.ndarray, dy: int, border: str) -> None:
    p = abs(dy)
    if border == "reflect":
        padded = np.pad(image, ((0, 0), (p, p), (0, 0)), mode="symmetric")
    else:
        padded = np.stack([np.pad(image[c], ((p, p), (0, 0)), constant_values=FILL[c]) for c in range(3)])
    expected = padded[:, p - dy : p - dy + image.shape[1]]
    np.testing.assert_allclose(invariance.transform(image, "translate", dy, border, FILL), expected, atol=1e-4)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_quarter_turns_equal_numpy_rot90(image: np.ndarray, k: int) -> None:
    """Counter-clockwise, as np.rot90 turns an image shown with row 0 on top."""
    np.testing.assert_allclose(invariance.transform(image, "rotate", 90.0 * k), np.rot90(image, k, axes=(1, 2)), atol=1e-3)


@pytest.mark.parametrize(("name", "value"), [("scale", 1.3), ("scale", 0.7), ("rotate", 33.0), ("rotate", -120.0), ("translate", 2.5)])
@pytest.mark.parametrize("border", ["reflect", "constant"])
def test_transform_equals_a_bilinear_loop(image: np.ndarray, name: str, value: float, border: str) -> None:
    rows, cols = source_of(name, value, *image.shape[1:])
    expected = bilinear_reference(image, rows, cols, border, FILL)
    np.testing.assert_allclose(invariance.transform(image, name, value, border, FILL), expected, atol=2e-3)


@pytest.mark.parametrize(("name", "value"), [("translate", 0.0), ("scale", 1.0), ("rotate", 0.0), ("rotate", 360.0), ("rotate", -720.0)])
def test_identities_return_the_image_exactly(image: np.ndarray, name: str, value: float) -> None:
    np.testing.assert_array_equal(invariance.transform(image, name, value, "constant", FILL), image)


def test_rotation_is_periodic(image: np.ndarray) -> None:
    np.testing.assert_array_equal(invariance.transform(image, "rotate", 370.0), invariance.transform(image, "rotate", 10.0))


# ---- distances and probabilities through the server -------------------------------------------------


@pytest.mark.parametrize(("border", "fill"), [(pb.REFLECT, pb.FILL_MEAN), (pb.CONSTANT, pb.FILL_GREY)])
def test_distances_equal_numpy_on_bare_onnxruntime(conn: Conn, sample_images, border, fill) -> None:
    paths = sample_images[10:12]
    sweeps = [("translate", [-3.0, 0.0, 5.0]), ("scale", [0.8, 1.0, 1.25]), ("rotate", [0.0, 45.0, 360.0])]
    codes = {"translate": pb.TRANSLATE, "scale": pb.SCALE, "rotate": pb.ROTATE}
    request = pb.InvarianceRequest(
        model=conn.ref, images=encoded(paths), sweeps=[pb.Sweep(transform=codes[n], values=v) for n, v in sweeps],
        border=border, fill=fill, true_classes=["cat"], max_batch=4,
    )
    progress, result = stream(conn.stub.Invariance, request)
    assert list(result.layers) == ["pool1", "relu7"]  # the paper's layers 1 and 7
    assert progress[-1].done == progress[-1].total == 2 * 9
    assert len(progress) == 2 * 3  # 9 copies per image in batches of 4
    bare = Bare(conn.path)
    fill_rgb = {pb.FILL_MEAN: bare.mean, pb.FILL_GREY: np.full(3, 127.5, np.float32)}[fill]
    np.testing.assert_allclose(result.fill.values, fill_rgb, rtol=1e-6)
    border_name = {pb.REFLECT: "reflect", pb.CONSTANT: "constant"}[border]
    names = ["pool1", "relu7", bare.output]
    for i, original in enumerate(nchw(paths)):
        base = bare.run(names, original[None])
        assert result.true_classes[i].index == CIFAR10.index("cat")
        np.testing.assert_allclose(from_proto(result.feature_norms)[i], [np.linalg.norm(base[k].astype(np.float64)) for k in range(2)], rtol=1e-5)
        for (name, values), sweep in zip(sweeps, result.sweeps):
            assert sweep.transform == codes[name]
            np.testing.assert_allclose(sweep.values, values)
            copies = [invariance.transform(original, name, v, border_name, fill_rgb) for v in values]
            moved = bare.one_at_a_time(names, copies)
            for k in range(2):
                expected = np.linalg.norm((moved[k] - base[k]).reshape(len(values), -1).astype(np.float64), axis=1)
                np.testing.assert_allclose(from_proto(sweep.distances)[i, k], expected, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(from_proto(sweep.true_class_probability)[i], softmax(moved[2])[:, CIFAR10.index("cat")], atol=1e-5)
            assert list(sweep.thumbnail_values) == [0, 1, 2]  # three values: a thumbnail each
            for k, v in enumerate(values):  # the copies the server ran, as pictures: the bilinear reference, rounded (1 grey level)
                expected = np.clip(np.rint(bilinear_reference(original, *source_of(name, v, 32, 32), border_name, fill_rgb)), 0, 255)
                np.testing.assert_allclose(from_proto(sweep.thumbnails)[i, k], expected.transpose(1, 2, 0), atol=1)


def test_identities_give_distance_zero_and_360_degrees_equals_0(conn: Conn, sample_images) -> None:
    sweeps = [pb.Sweep(transform=pb.TRANSLATE, values=[0]), pb.Sweep(transform=pb.SCALE, values=[1]), pb.Sweep(transform=pb.ROTATE, values=[0, 90, 360])]
    _, result = stream(conn.stub.Invariance, pb.InvarianceRequest(model=conn.ref, images=encoded(sample_images[:3]), sweeps=sweeps))
    base = softmax(Bare(conn.path).run([Bare(conn.path).output], nchw(sample_images[:3]))[0])
    for sweep in result.sweeps:
        distances, probability = from_proto(sweep.distances), from_proto(sweep.true_class_probability)
        assert np.all(distances[:, :, 0] == 0), sweep.transform
        np.testing.assert_allclose(probability[:, 0], base.max(axis=1), atol=1e-6)
    rotate = from_proto(result.sweeps[2].distances)
    np.testing.assert_array_equal(rotate[:, :, 2], rotate[:, :, 0])
    assert np.all(rotate[:, :, 1] > 0)


def test_defaults_are_the_three_transformations_on_layers_1_and_7(conn: Conn, sample_images) -> None:
    _, result = stream(conn.stub.Invariance, pb.InvarianceRequest(model=conn.ref, images=encoded(sample_images[:1])))
    assert [s.transform for s in result.sweeps] == [pb.TRANSLATE, pb.SCALE, pb.ROTATE]
    assert list(result.sweeps[0].values) == list(range(-8, 9))
    np.testing.assert_allclose(result.sweeps[1].values, np.arange(0.6, 1.8001, 0.05), atol=1e-6)
    assert list(result.sweeps[2].values) == list(range(0, 361, 10))
    assert list(result.layers) == ["pool1", "relu7"] and result.border == pb.REFLECT
    assert result.true_classes[0].from_top1
    assert [s.unit for s in result.sweeps] == ["vertical shift (pixels, + down)", "scale factor", "rotation (degrees, counter-clockwise)"]
    assert [list(s.thumbnail_values) for s in result.sweeps] == [[0, 4, 8, 12, 16], [0, 6, 12, 18, 24], [0, 9, 18, 27, 36]]
    assert [from_proto(s.thumbnails).shape for s in result.sweeps] == [(1, 5, 32, 32, 3)] * 3
    np.testing.assert_array_equal(from_proto(result.sweeps[0].thumbnails)[0, 2], nchw(sample_images[:1])[0].transpose(1, 2, 0))  # shift 0: the image


def test_thumbnails_stay_bounded_and_are_counted() -> None:
    planned = invariance.plan(32, 32, [("rotate", list(np.linspace(0, 360, 1024)))])
    assert invariance.shown_values(1024).tolist() == [0, 256, 512, 767, 1023] and invariance.shown_values(2).tolist() == [0, 1]
    assert invariance.thumbnail_bytes(3, planned, 32, 32) == 3 * 5 * 32 * 32 * 3
    assert invariance.thumbnail_bytes(1, planned, 1000, 500) == 5 * 64 * 32 * 3
    copy = np.random.default_rng(0).uniform(-20, 280, (3, 200, 100)).astype(np.float32)
    small = invariance.thumbnail(copy)
    rgb = Image.fromarray(np.clip(np.rint(copy.transpose(1, 2, 0)), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(small, np.asarray(rgb.resize((32, 64), Image.Resampling.BILINEAR)))


def test_python_client_matches_raw_stub(conn: Conn, sample_images) -> None:
    paths = sample_images[:2]
    got = conn.client.invariance(conn.path, paths, [("rotate", [30, 60])], layers=[2, "relu6"], border="constant", fill="zero")
    _, raw = stream(conn.stub.Invariance, pb.InvarianceRequest(
        model=conn.ref, images=encoded(paths), sweeps=[pb.Sweep(transform=pb.ROTATE, values=[30, 60])],
        layers=[pb.LayerRef(number=2), pb.LayerRef(name="relu6")], border=pb.CONSTANT, fill=pb.FILL_ZERO,
    ))
    assert got.layers == ["pool2", "relu6"] and got.border == "constant" and got.fill.values == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(got.sweeps[0].distances, from_proto(raw.sweeps[0].distances))
    assert got.labels == [p.name for p in paths]


# ---- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"sweeps": [pb.Sweep(transform=cast(pb.Transform, 0))]}, Code.INVALID_ARGUMENT, ["sweeps[0].transform 0", "TRANSLATE"]),
        ({"sweeps": [pb.Sweep(transform=cast(pb.Transform, 7))]}, Code.INVALID_ARGUMENT, ["sweeps[0].transform 7", "ROTATE"]),
        ({"sweeps": [pb.Sweep(transform=pb.SCALE, values=[0.5, 0, -1])]}, Code.INVALID_ARGUMENT, ["scale values [0.0, -1.0]"]),
        ({"sweeps": [pb.Sweep(transform=pb.ROTATE, values=[float("nan")])]}, Code.INVALID_ARGUMENT, ["rotate values [nan]"]),
        ({"border": 4}, Code.INVALID_ARGUMENT, ["border 4", "REFLECT"]),
        ({"layers": [pb.LayerRef(number=9)]}, Code.NOT_FOUND, ["layer 9"]),
        ({"true_classes": ["unicorn"]}, Code.INVALID_ARGUMENT, ["'unicorn'"]),
    ],
)
def test_bad_requests_name_the_problem(conn: Conn, sample_images, fields: dict, code, words: list[str]) -> None:
    request = pb.InvarianceRequest(**{"model": conn.ref, "images": encoded(sample_images[:1]), **fields})
    expect_stream_error(conn.stub.Invariance, request, code, *words)
    still_serves(conn, sample_images[0])
