"""``zfclient occlusion``, ``invariance`` and ``correspondence`` through Typer's CliRunner: the files
they write hold what the Python client returns for the same call; bad input is one line, exit 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_testing import invoke, ok
from PIL import Image

from zfnet.client.api import Client

ROOT = Path(__file__).resolve().parents[2]
MODEL = "models/zfnet-cifar10.onnx"
DOGS = "samples/cifar10/dog"
PARTS = "samples/parts/dogs.json"


def fails_with_one_line(result, *words: str) -> None:
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
    assert "Traceback" not in result.output


# ---- occlusion -----------------------------------------------------------------------------


@pytest.mark.slow
def test_occlusion_writes_sheets_and_maps(tmp_path: Path, server) -> None:
    target, _ = server
    outside = tmp_path / "elsewhere" / "0007.jpg"  # not in a class folder: the top-1 class is followed
    outside.parent.mkdir()
    shutil.copy(ROOT / "samples/cifar10/ship/0007.jpg", outside)
    images = [ROOT / "samples/cifar10/cat/0003.jpg", outside]
    result = invoke("occlusion", "--model", MODEL, "--image", images[0], "--image", images[1], "--size", 8, "--stride", 8,
                    "--fill", "grey", "--layer", 4, "--out", tmp_path / "o", "--server", target)
    ok(result)
    assert "top-1" in result.stdout and "cat" in result.stdout
    with Client(target) as client:
        expected = client.occlusion(MODEL, images, 8, 8, "grey", 4, ["cat", ""])
    for path, maps in zip(images, expected.images):
        assert (tmp_path / "o" / f"{path.stem}_occlusion.png").stat().st_size > 10_000
        saved = np.load(tmp_path / "o" / f"{path.stem}_occlusion.npz")
        for key in ("layer_total", "true_class_map", "top_class_map"):
            np.testing.assert_array_equal(saved[key], getattr(maps, key))
        assert maps.projection is not None
        np.testing.assert_array_equal(saved["projection"], maps.projection.pixels)
        assert saved["layer"] == "relu4" and int(saved["channel"]) == maps.channel and int(saved["true_class"]) == maps.true_class.index
        np.testing.assert_array_equal(saved["fill"], [127.5] * 3)
        assert list(saved["tops"]) == [0, 8, 16, 24]
    assert str(np.load(tmp_path / "o" / "0003_occlusion.npz")["true_class_source"]) == "folder name"
    assert str(np.load(tmp_path / "o" / "0007_occlusion.npz")["true_class_source"]).startswith("top-1")


@pytest.mark.slow
def test_occlusion_label_and_all_classes(tmp_path: Path) -> None:
    ok(invoke("occlusion", "--model", MODEL, "--image", f"{DOGS}/0001.jpg", "--size", 16, "--stride", 16, "--label", "horse",
              "--all-classes", "--out", tmp_path))
    saved = np.load(tmp_path / "0001_occlusion.npz")
    assert saved["probabilities"].shape == (2, 2, 10)
    np.testing.assert_array_equal(saved["true_class_map"], saved["probabilities"][..., 7])
    assert str(saved["true_class_source"]) == "--label"


# ---- invariance ----------------------------------------------------------------------------


@pytest.mark.slow
def test_invariance_writes_grid_and_json(tmp_path: Path, server) -> None:
    target, _ = server
    images = [ROOT / "samples/cifar10/cat/0000.jpg", ROOT / "samples/cifar10/dog/0000.jpg"]
    result = invoke("invariance", "--model", MODEL, "--image", images[0], "--image", images[1], "--transform", "translate,rotate",
                    "--shifts", "-4:4:4", "--angles", "0,90,360", "--layers", "1,6", "--border", "constant", "--fill", "0",
                    "--out", tmp_path, "--server", target)
    ok(result)
    assert (tmp_path / "invariance.png").stat().st_size > 20_000
    saved = json.loads((tmp_path / "invariance.json").read_text())
    with Client(target) as client:
        expected = client.invariance(MODEL, images, [("translate", [-4, 0, 4]), ("rotate", [0, 90, 360])], [1, 6], "constant", "zero", ["cat", "dog"])
    assert saved["layers"] == expected.layers == ["pool1", "relu6"] and saved["border"] == "constant"
    assert [i["true_class"] for i in saved["images"]] == ["cat", "dog"]  # from the folder names
    for sweep, want in zip(saved["sweeps"], expected.sweeps):
        assert sweep["transform"] == want.transform and sweep["values"] == want.values.tolist()
        for k, layer in enumerate(expected.layers):
            np.testing.assert_allclose(sweep["distances"][layer], want.distances[:, k], rtol=1e-6)
        np.testing.assert_allclose(sweep["true_class_probability"], want.true_class_probability, rtol=1e-6)
    assert saved["sweeps"][1]["distances"]["pool1"][0][0] == 0 == saved["sweeps"][1]["distances"]["pool1"][0][2]


# ---- correspondence ------------------------------------------------------------------------


@pytest.mark.slow
def test_correspondence_table_json_and_plots(tmp_path: Path, server) -> None:
    target, _ = server
    result = invoke("correspondence", "--model", MODEL, "--images", DOGS, "--parts", PARTS, "--random", 2, "--seed", 3,
                    "--out", tmp_path, "--server", target)
    ok(result)
    for row in ("left eye", "right eye", "nose", "random, nose-sized"):
        assert row in result.stdout
    saved = json.loads((tmp_path / "correspondence.json").read_text())
    annotation = json.loads((ROOT / PARTS).read_text())
    files = [ROOT / DOGS / name for name in annotation["images"]]
    boxes = [[tuple(annotation["images"][f.name][p]) for p in annotation["parts"]] for f in files]
    with Client(target) as client:
        expected = client.correspondence(MODEL, files, annotation["parts"], boxes, 2, 3)
    assert [(s["part"], s["random"], s["layer"], s["delta"], s["mean"]) for s in saved["scores"]] == [
        (s.part, s.random, s.layer, s.delta, s.mean) for s in expected.scores
    ]
    assert (tmp_path / "correspondence.png").stat().st_size > 20_000 and (tmp_path / "correspondence_parts.png").is_file()
    printed = invoke("correspondence", "--model", MODEL, "--images", DOGS, "--parts", PARTS, "--random", 2, "--seed", 3,
                     "--out", tmp_path / "again", "--json", "--server", target)
    ok(printed)
    assert json.loads(printed.stdout)["scores"] == saved["scores"]


def test_correspondence_boxes_follow_the_image_size(tmp_path: Path) -> None:
    """Boxes are in each file's own pixels; the client maps them to the model's input."""
    folder = tmp_path / "big"
    folder.mkdir()
    annotation = json.loads((ROOT / PARTS).read_text())
    doubled = {}
    for name in list(annotation["images"])[:3]:
        with Image.open(ROOT / DOGS / name) as img:
            img.resize((64, 64), Image.Resampling.NEAREST).save(folder / name.replace(".jpg", ".png"))
        doubled[name.replace(".jpg", ".png")] = {part: [2 * v for v in box] for part, box in annotation["images"][name].items()}
    parts = tmp_path / "parts.json"
    parts.write_text(json.dumps({"parts": annotation["parts"], "images": doubled}))
    ok(invoke("correspondence", "--model", MODEL, "--images", folder, "--parts", parts, "--random", 0, "--out", tmp_path / "o"))
    saved = json.loads((tmp_path / "o" / "correspondence.json").read_text())
    originals = list(annotation["images"].values())[:3]
    assert [image["boxes"] for image in saved["images"]] == originals


# ---- errors --------------------------------------------------------------------------------


def parts_file(tmp_path: Path, images: dict, parts: list[str] | None = None) -> Path:
    path = tmp_path / "parts.json"
    path.write_text(json.dumps({"parts": parts or ["eye"], "images": images}))
    return path


CASES = {
    "stride_zero": (lambda t: ["occlusion", "--model", MODEL, "--image", f"{DOGS}/0001.jpg", "--stride", 0, "--out", t], ["stride", "at least 1"]),
    "occluder_too_large": (lambda t: ["occlusion", "--model", MODEL, "--image", f"{DOGS}/0001.jpg", "--size", 40, "--out", t], ["size 40", "larger", "32x32"]),
    "unknown_label": (lambda t: ["occlusion", "--model", MODEL, "--image", f"{DOGS}/0001.jpg", "--label", "kat", "--out", t], ["'kat'", "unknown"]),
    "labels_do_not_match_images": (lambda t: ["occlusion", "--model", MODEL, "--image", f"{DOGS}/0001.jpg", "--label", "cat", "--label", "dog", "--label", "cat", "--image", f"{DOGS}/0002.jpg", "--out", t], ["3 --label values", "2 images"]),
    "unknown_fill": (lambda t: ["occlusion", "--model", MODEL, "--image", f"{DOGS}/0001.jpg", "--fill", "pink", "--out", t], ["fill 'pink'"]),
    "unknown_transform": (lambda t: ["invariance", "--model", MODEL, "--image", f"{DOGS}/0001.jpg", "--transform", "shear", "--out", t], ["'shear'", "translate, scale, rotate"]),
    "unknown_border": (lambda t: ["invariance", "--model", MODEL, "--image", f"{DOGS}/0001.jpg", "--border", "wrap", "--out", t], ["border 'wrap'"]),
    "scale_zero": (lambda t: ["invariance", "--model", MODEL, "--image", f"{DOGS}/0001.jpg", "--transform", "scale", "--scales", "0,1", "--out", t], ["scale values [0.0]"]),
    "bad_range": (lambda t: ["invariance", "--model", MODEL, "--image", f"{DOGS}/0001.jpg", "--transform", "rotate", "--angles", "0:x:5", "--out", t], ["--angles", "0:x:5"]),
    "box_outside_image": (lambda t: ["correspondence", "--model", MODEL, "--images", DOGS, "--parts", parts_file(t, {"0001.jpg": {"eye": [1, 1, 4, 4]}, "0005.jpg": {"eye": [30, 30, 33, 33]}}), "--out", t], ["0005.jpg", "'eye'", "outside the 32x32 image"]),
    "one_image": (lambda t: ["correspondence", "--model", MODEL, "--images", DOGS, "--parts", parts_file(t, {"0001.jpg": {"eye": [1, 1, 4, 4]}}), "--out", t], ["at least 2 images", "got 1"]),
    "missing_part": (lambda t: ["correspondence", "--model", MODEL, "--images", DOGS, "--parts", parts_file(t, {"0001.jpg": {"eye": [1, 1, 4, 4]}, "0005.jpg": {"nose": [1, 1, 4, 4]}}), "--out", t], ["0005.jpg", "no box", "'eye'"]),
    "missing_image": (lambda t: ["correspondence", "--model", MODEL, "--images", DOGS, "--parts", parts_file(t, {"9999.jpg": {"eye": [1, 1, 4, 4]}}), "--out", t], ["9999.jpg", "does not exist"]),
    "parts_not_json": (lambda t: ["correspondence", "--model", MODEL, "--images", DOGS, "--parts", ROOT / "README.md", "--out", t], ["README.md", "not JSON"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_errors_are_one_line(case: str, tmp_path: Path) -> None:
    make_args, words = CASES[case]
    fails_with_one_line(invoke(*make_args(tmp_path)), *words)
