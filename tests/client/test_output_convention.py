"""One output convention (issue 20): a second run into the same --out with another mode writes beside
the first, never over it; the same run again is refused before any work unless --force; defaults lie
under out/<command>/."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from cli_testing import invoke, ok

ROOT = Path(__file__).resolve().parents[2]
MODEL = "models/zfnet-cifar10.onnx"
SAMPLES = ROOT / "samples" / "cifar10"


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_deconv_modes_and_methods_write_beside_each_other(tmp_path: Path) -> None:
    images = sorted((SAMPLES / "cat").glob("*.jpg"))[:2]
    args = ["deconv", "--model", MODEL, "--layer", "2", "--top", "2", "--out", tmp_path, *[a for i in images for a in ("--image", i)]]
    ok(invoke(*args, "--mode", "max"))
    first = _digests(tmp_path)
    ok(invoke(*args, "--mode", "map"))
    ok(invoke(*args, "--mode", "max", "--method", "guided"))
    after = _digests(tmp_path)
    assert {k: after[k] for k in first} == first, "a later run changed an earlier run's files"
    grids = sorted(p.name for p in tmp_path.glob("*_grid.png"))
    assert len(grids) == 6 and all(":" not in g for g in grids), grids
    assert {g.rsplit("_", 3)[1:3] == ["deconvnet", "max"] for g in grids} == {True, False}
    assert len([g for g in grids if g.endswith("_map_grid.png")]) == 2


def test_the_same_run_again_is_refused_unless_forced(tmp_path: Path) -> None:
    image = sorted((SAMPLES / "dog").glob("*.jpg"))[0]
    args = ["deconv", "--model", MODEL, "--layer", "1", "--top", "1", "--image", image, "--out", tmp_path]
    ok(invoke(*args))
    before = _digests(tmp_path)
    again = invoke(*args)
    assert again.exit_code == 1 and "--force" in again.stderr and "_deconvnet_max.png exists (and 1 more)" in again.stderr, again.stderr
    assert _digests(tmp_path) == before
    ok(invoke(*args, "--force"))


@pytest.mark.parametrize("command,options,written", [
    ("occlusion", ["--size", "16", "--stride", "16"], "0000_occlusion.png"),
    ("gradcam", [], "0000_gradcam.png"),
    ("input-x-gradient", [], "0000_input-x-gradient.png"),
    ("invariance", ["--transform", "scale", "--scales", "1,1.2"], "invariance.json"),
    ("activations", ["--layer", "1"], "activations.npz"),
])
def test_each_command_refuses_to_overwrite_before_any_work(command: str, options: list[str], written: str, tmp_path: Path) -> None:
    image = sorted((SAMPLES / "cat").glob("*.jpg"))[0]
    (tmp_path / written).write_bytes(b"an earlier result")
    result = invoke(command, "--model", MODEL, "--image", image, *options, "--out", tmp_path)
    assert result.exit_code == 1 and f"{written} exists" in result.stderr and "--force" in result.stderr, result.stderr
    assert (tmp_path / written).read_bytes() == b"an earlier result"
    ok(invoke(command, "--model", MODEL, "--image", image, *options, "--out", tmp_path, "--force"))
    assert (tmp_path / written).read_bytes() != b"an earlier result"


def test_gradcam_plus_plus_writes_beside_gradcam(tmp_path: Path) -> None:
    image = sorted((SAMPLES / "cat").glob("*.jpg"))[0]
    ok(invoke("gradcam", "--model", MODEL, "--image", image, "--out", tmp_path))
    ok(invoke("gradcam", "--model", MODEL, "--image", image, "--out", tmp_path, "--plus-plus"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000_gradcam-plus-plus.npz", "0000_gradcam-plus-plus.png", "0000_gradcam.npz", "0000_gradcam.png"]


def test_filters_default_under_out_named_by_model_layer_and_scaling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(ROOT / MODEL, tmp_path / "zfnet-cifar10.onnx")
    monkeypatch.chdir(tmp_path)
    result = invoke("filters", "--model", "zfnet-cifar10.onnx", "--layer", "conv1")
    ok(result)
    picture = tmp_path / "out" / "filters" / "zfnet-cifar10_conv1_sheet.png"
    assert picture.is_file() and str(Path("out/filters/zfnet-cifar10_conv1_sheet.png")) in result.stdout
    ok(invoke("filters", "--model", "zfnet-cifar10.onnx", "--layer", "conv1", "--normalise", "filter"))
    assert (tmp_path / "out" / "filters" / "zfnet-cifar10_conv1_filter.png").is_file()
    assert invoke("filters", "--model", "zfnet-cifar10.onnx", "--layer", "conv1").exit_code == 1


def test_convert_refuses_to_replace_a_model_unless_forced(tmp_path: Path, shared) -> None:
    root = shared("models", "caffe", "cifar10_quick")
    target = tmp_path / "kept.onnx"
    target.write_bytes(b"an earlier model")
    args = ["convert", "caffe", root / "cifar10_quick.prototxt", root / "cifar10_quick_iter_4000.caffemodel", "-o", target, "--channel-order", "rgb"]
    refused = invoke(*args)
    assert refused.exit_code == 1 and "kept.onnx exists" in refused.stderr and target.read_bytes() == b"an earlier model"
    ok(invoke(*args, "--force"))
    assert target.stat().st_size > 10_000
