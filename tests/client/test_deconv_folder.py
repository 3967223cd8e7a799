"""``zfclient deconv`` over a folder: --no-grid writes the reconstructions as arrays only, equal to the
Python client's; the Pillow grid holds the input picture pixel for pixel and one labelled pair per channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cli_testing import invoke, ok
from PIL import Image

from zfnet import imagefolder
from zfnet.client import render
from zfnet.client.api import Client

ROOT = Path(__file__).resolve().parents[2]
MODEL = "models/zfnet-cifar10.onnx"
SAMPLES = ROOT / "samples" / "cifar10"


def test_no_grid_writes_arrays_equal_to_the_clients(tmp_path: Path) -> None:
    images = sorted((SAMPLES / "ship").glob("*.jpg"))[:3]
    result = invoke("deconv", "--model", MODEL, "--layer", "3", "--top", "4", "--no-grid", "--out", tmp_path, *[a for i in images for a in ("--image", i)])
    ok(result)
    assert not list(tmp_path.rglob("*.png")), "--no-grid drew pictures"
    with Client() as client:
        expected = client.deconv(MODEL, images, 3, top_k=4)
    for index, image in enumerate(images):
        for item in (r for r in expected.reconstructions if r.image == index):
            saved = np.load(tmp_path / image.stem / f"{expected.layer}_ch{item.channel:04d}_deconvnet_max.npy")
            np.testing.assert_allclose(saved, item.pixels, rtol=1e-6, atol=1e-6)
    assert len(list(tmp_path.rglob("*.npy"))) == 12 and "12 .npy arrays" in result.stdout


def test_the_grid_holds_the_input_and_a_labelled_pair_per_channel(tmp_path: Path) -> None:
    image = sorted((SAMPLES / "cat").glob("*.jpg"))[0]
    with Client() as client:
        result = client.deconv(MODEL, [image], 4, top_k=5)
    picture = imagefolder.read_rgb(image)
    path = render.deconv_grid(picture, "a title", [r for r in result.reconstructions], tmp_path / "grid.png")
    grid = np.asarray(Image.open(path))
    cell, text, pad = render.GRID_CELL, render.GRID_TEXT, render.GRID_PAD
    rows = 2  # 5 pairs in 3 columns
    assert grid.shape[0] == 2 * text + pad + rows * (text + cell + pad) + pad
    top = 2 * text + pad + text
    shown = grid[top : top + 2 * cell, pad : pad + 2 * cell]
    np.testing.assert_array_equal(shown, np.asarray(Image.fromarray(picture).resize((2 * cell, 2 * cell), Image.Resampling.NEAREST)))
    for k, item in enumerate(result.reconstructions):  # each reconstruction's top-left pixel where the layout puts it
        r, c = divmod(k, 3)
        x, y = pad + 2 * cell + pad + c * (2 * cell + 2 * pad) + cell + pad // 2, 2 * text + pad + r * (text + cell + pad) + text
        recon = render.crop(render.for_display(item.pixels), item.receptive_field)
        np.testing.assert_array_equal(grid[y, x], recon[0, 0])
