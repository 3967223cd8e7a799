"""One input convention (issue 20): every command that reads images takes files and folders (searched
recursively, flat or class folders), skips an image that does not decode and names it by its full path
in one summary at the end (the count read is the count decoded), lists non-image files as ignored,
and with --strict stops at the first bad image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_testing import invoke, left_out, messy_folder, ok

from zfnet import imagefolder
from zfnet.errors import InvalidArgument, NotFound

MODEL = "models/zfnet-cifar10.onnx"

COMMANDS = {  # each image-reading --image command, with options that keep it small
    "predict": [],
    "deconv": ["--layer", "1", "--top", "1"],
    "activations": ["--layer", "1"],
    "occlusion": ["--size", "16", "--stride", "16"],
    "invariance": ["--transform", "scale", "--scales", "1,1.2"],
    "gradcam": [],
    "integrated-gradients": ["--steps", "2"],
    "smoothgrad": ["--samples", "2"],
    "input-x-gradient": [],
}
WRITES = {"predict"}  # commands without --out


def _messy(folder: Path, labelled: bool = False) -> Path:
    """Two good images, a corrupt JPEG and a text file: flat, or in a class folder ``cat/``."""
    return messy_folder(folder / "cat" if labelled else folder)


def _summary(stderr: str, folder: Path) -> None:
    left_out(stderr, folder, 2)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_flat_folder_with_a_corrupt_jpeg_and_a_text_file(command: str, tmp_path: Path) -> None:
    folder = _messy(tmp_path / "in")
    out = [] if command in WRITES else ["--out", tmp_path / "out"]
    result = invoke(command, "--model", MODEL, "--image", folder, *COMMANDS[command], *out)
    ok(result)
    _summary(result.stderr, folder)
    assert "Traceback" not in result.output
    strict = invoke(command, "--model", MODEL, "--image", folder, *COMMANDS[command], *out, "--strict")
    assert strict.exit_code == 1, strict.output
    errors = [line for line in strict.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str((folder / "broken.jpg").absolute()) in errors[0] and "--strict" in errors[0], strict.stderr


def test_deconv_reads_class_folders_and_flat_folders_alike(tmp_path: Path) -> None:
    flat, tree = _messy(tmp_path / "flat"), _messy(tmp_path / "tree", labelled=True)
    result = invoke("deconv", "--model", MODEL, "--layer", "1", "--top", "1", "--image", flat, "--image", tmp_path / "tree", "--out", tmp_path / "out")
    ok(result)
    assert "read 4 of 6 images" in result.stderr and str(tree / "broken.jpg") in result.stderr
    assert len(list((tmp_path / "out").rglob("*_grid.png"))) == 4


def test_evaluate_counts_the_images_it_decoded(tmp_path: Path) -> None:
    _messy(tmp_path / "data", labelled=True)
    result = invoke("evaluate", "--model", MODEL, "--data", tmp_path / "data", "--json")
    ok(result)
    assert json.loads(result.stdout)["n"] == 2
    assert "read 2 of 3 images" in result.stderr
    strict = invoke("evaluate", "--model", MODEL, "--data", tmp_path / "data", "--strict")
    assert strict.exit_code == 1 and "broken.jpg" in strict.stderr


def test_a_flat_folder_given_where_a_labelled_tree_is_needed_says_so(tmp_path: Path) -> None:
    folder = _messy(tmp_path / "flat")
    result = invoke("evaluate", "--model", MODEL, "--data", folder)
    assert result.exit_code == 1 and "no class folders" in result.stderr and "<class>" in result.stderr


def test_gather_keeps_order_drops_repeats_and_refuses_what_is_not_there(tmp_path: Path) -> None:
    folder = _messy(tmp_path / "in")
    first = sorted(folder.glob("0*.jpg"))[0]
    found = imagefolder.gather([first, folder])
    assert found.files == sorted(folder.glob("0*.jpg")), "the file given first, then the folder's others, none twice"
    assert [u.path for u in found.unreadable] == [(folder / "broken.jpg").absolute()] and found.ignored == [(folder / "notes.txt").absolute()]
    with pytest.raises(NotFound, match="nope.jpg"):
        imagefolder.gather([tmp_path / "nope.jpg"])
    with pytest.raises(InvalidArgument, match="no image could be decoded"):
        imagefolder.gather([folder / "broken.jpg"])
