"""``zfclient gradcam``, ``integrated-gradients``, ``smoothgrad``, ``input-x-gradient`` and
``visualise`` through Typer's CliRunner against a real server: the .npz files they write hold what
the Python client returns for the same call, the sheets are drawn; bad input is one line, exit 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_testing import invoke, ok
from test_perturbation_cli import fails_with_one_line

from zfnet.client.api import Client

MODEL = "models/zfnet-cifar10.onnx"
CAT, SHIP = "samples/cifar10/cat/0003.jpg", "samples/cifar10/ship/0007.jpg"


def sheet_drawn(path: Path) -> None:
    assert path.stat().st_size > 10_000, f"{path} is too small to be a drawn sheet"


def test_gradcam_writes_sheets_and_maps(tmp_path: Path, server) -> None:
    target, _ = server
    result = invoke("gradcam", "--model", MODEL, "--image", CAT, "--image", SHIP, "--layer", "relu4", "--unit", "cat", "--plus-plus",
                    "--out", tmp_path, "--server", target)
    ok(result)
    assert "grad-cam-plus-plus of relu4" in result.stdout and "cat" in result.stdout
    with Client(target) as client:
        expected = client.grad_cam(MODEL, [CAT, SHIP], "relu4", None, ["cat"], "grad_cam_plus_plus")
    for stem, item in zip(("0003", "0007"), expected.images):
        sheet_drawn(tmp_path / f"{stem}_gradcam.png")
        saved = np.load(tmp_path / f"{stem}_gradcam.npz")
        for key in ("heatmap", "map", "weights"):
            np.testing.assert_array_equal(saved[key], getattr(item, key))
        assert str(saved["layer"]) == "relu4" and str(saved["variant"]) == "grad_cam_plus_plus" and int(saved["target"]) == 3
        assert str(saved["target_label"]) == "cat"


@pytest.mark.parametrize(
    ("command", "options", "call", "method"),
    [
        ("integrated-gradients", ["--baseline", "mean", "--steps", 8, "--method", "riemann_trapezoid"],
         lambda c: c.integrated_gradients(MODEL, [CAT, SHIP], baseline="mean", steps=8, method="riemann_trapezoid"), "integrated-gradients"),
        ("smoothgrad", ["--squared", "--over", "guided", "--samples", 6, "--noise", 0.2, "--seed", 3],
         lambda c: c.smoothgrad(MODEL, [CAT, SHIP], type="smoothgrad_squared", method="guided", samples=6, noise_level=0.2, seed=3), "smoothgrad-squared"),
        ("input-x-gradient", ["--target-layer", "relu5", "--unit", "7"],
         lambda c: c.input_x_gradient(MODEL, [CAT, SHIP], "relu5", ["7"]), "input-x-gradient"),
    ],
)
def test_attributions_write_sheets_and_arrays(tmp_path: Path, server, command, options, call, method) -> None:
    target, _ = server
    ok(invoke(command, "--model", MODEL, "--image", CAT, "--image", SHIP, *options, "--out", tmp_path, "--server", target))
    with Client(target) as client:
        expected = call(client)
    for stem, item in zip(("0003", "0007"), expected.images):
        sheet_drawn(tmp_path / f"{stem}_{method}.png")
        saved = np.load(tmp_path / f"{stem}_{method}.npz")
        np.testing.assert_array_equal(saved["attribution"], item.pixels)
        assert str(saved["method"]) == method and int(saved["target"]) == item.target.index
        if method == "integrated-gradients":
            assert item.baseline is not None
            np.testing.assert_array_equal(saved["baseline"], item.baseline)
            assert float(saved["delta"]) == pytest.approx(item.delta)
        if method == "input-x-gradient":
            assert str(saved["target_layer"]) == "relu5" and int(saved["target"]) == 7


def test_visualise_writes_a_sheet_images_and_arrays(tmp_path: Path, server) -> None:
    target, _ = server
    result = invoke("visualise", "--model", MODEL, "--layer", 5, "--unit", "0-1", "--steps", 6, "--seed", 4, "--out", tmp_path, "--server", target)
    ok(result)
    with Client(target) as client:
        expected = client.visualise(MODEL, ["0", "1"], 5, steps=6, seed=4)
    sheet_drawn(tmp_path / "pool5_visualisation.png")
    saved = np.load(tmp_path / "pool5_visualisation.npz")
    np.testing.assert_array_equal(saved["images"], np.stack([u.images for u in expected.units]))
    assert list(saved["units"]) == [0, 1] and str(saved["layer"]) == "pool5" and int(saved["steps"]) == 6
    for unit in (0, 1):
        assert (tmp_path / f"pool5_unit{unit:04d}_0.png").is_file()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["gradcam", "--layer", "relu6"], ("relu6", "maps")),
        (["integrated-gradients", "--baseline", "white"], ("baseline", "white")),
        (["smoothgrad", "--over", "deconvnet"], ("deconvnet",)),
        (["input-x-gradient", "--unit", "unicorn"], ("unicorn",)),
    ],
)
def test_bad_input_is_one_line(server, args, words) -> None:
    target, _ = server
    fails_with_one_line(invoke(*args, "--model", MODEL, "--image", CAT, "--server", target), *words)


def test_visualise_bad_unit_is_one_line(server) -> None:
    target, _ = server
    fails_with_one_line(invoke("visualise", "--model", MODEL, "--layer", 5, "--unit", "64", "--steps", 2, "--server", target), "64", "0..63")
