"""The pictures fixed by issue 20, checked against independent arithmetic: filter sheets indexed and
filling the canvas; invariance distances relative to the original's feature norm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from cli_testing import invoke, ok
from PIL import Image

from zfnet.client import render

ROOT = Path(__file__).resolve().parents[2]
MODEL = "models/zfnet-cifar10.onnx"
SAMPLES = ROOT / "samples" / "cifar10"


def test_the_filter_sheet_fills_its_canvas_with_every_filter_enlarged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(10, 3, 5, 5)).astype(np.float32)
    tiles, _ = render.filter_tiles(weights)
    path = render.filters_figure(tiles, render.filter_labels(weights, 1024), (5, 5), "ten filters", tmp_path / "f.png")
    sheet = np.asarray(Image.open(path))
    side = 4  # ceil(sqrt(10)) filters per row
    scale = min(24, render.FILTER_CANVAS // (side * 5))  # at most 24 screen pixels per weight
    gap, label = 4, render.GRID_TEXT - 4
    assert side * 5 * scale / sheet.shape[1] > 0.9, "the filters fill the canvas's width"
    head = sheet.shape[0] - 3 * (5 * scale + label) - gap  # 3 rows of filters under the title
    low, high = weights.min(), weights.max()
    for k in (0, 5, 9):
        r, c = divmod(k, side)
        x, y = gap + c * (5 * scale + gap), head + r * (5 * scale + label) + label
        expected = np.round((weights[k].transpose(1, 2, 0) - low) / (high - low) * 255).astype(np.uint8)
        drawn = sheet[y : y + 5 * scale : scale, x : x + 5 * scale : scale]
        np.testing.assert_array_equal(drawn, expected)


def test_invariance_distances_are_relative_to_the_originals_norm(tmp_path: Path) -> None:
    image = sorted((SAMPLES / "dog").glob("*.jpg"))[0]
    ok(invoke("invariance", "--model", MODEL, "--image", image, "--transform", "scale", "--scales", "0.8,1,1.25", "--out", tmp_path))
    assert Image.open(tmp_path / "invariance.png").size[1] > 400, "the copies' row above the curves"
    saved = json.loads((tmp_path / "invariance.json").read_text())
    sweep = saved["sweeps"][0]
    for layer, norm in saved["images"][0]["feature_norms"].items():
        raw, relative = np.asarray(sweep["distances"][layer][0]), np.asarray(sweep["relative_distances"][layer][0])
        np.testing.assert_allclose(relative, raw / norm, rtol=1e-5)
        assert relative[1] == 0 and (relative[[0, 2]] > 0).all()
