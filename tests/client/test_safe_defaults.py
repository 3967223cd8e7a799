"""Safe defaults (issue 20): nothing bundled is overwritten, guessed preprocessing is said aloud,
empty classes stay out of tables, errors speak of what the user did, help shows no raw markup."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
import typer
from cli_testing import invoke, ok

from zfnet.client.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
MODEL = "models/zfnet-cifar10.onnx"
SAMPLES = ROOT / "samples" / "cifar10"


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tree(root: Path, per_class: int) -> Path:
    for split in ("train", "test"):
        for folder in sorted(SAMPLES.iterdir()):
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.glob("*.jpg"))[:per_class]:
                shutil.copy(image, root / split / folder.name / image.name)
    return root


@pytest.mark.slow
def test_train_without_checkpoint_writes_under_out_and_leaves_models_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _tree(tmp_path / "data", 1)
    work = tmp_path / "checkout"
    shutil.copytree(ROOT / "models", work / "models")
    before = _digests(work / "models")
    monkeypatch.chdir(work)
    result = invoke("train", "--data", data, "--epochs", "1", "--batch-size", "10")
    ok(result)
    assert _digests(work / "models") == before, "train wrote into models/"
    assert (work / "out" / "train" / "zfnet-cifar10.pt").is_file()
    again = invoke("train", "--data", data, "--epochs", "1", "--batch-size", "10")
    assert again.exit_code == 1 and "--force" in again.stderr and "zfnet-cifar10.pt" in again.stderr


def test_train_refuses_an_existing_checkpoint_before_training(tmp_path: Path) -> None:
    (tmp_path / "kept.pt").write_bytes(b"earlier run")
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()  # empty: training would fail on them, so the refusal comes first
    result = invoke("train", "--data", tmp_path, "--checkpoint", tmp_path / "kept.pt")
    assert result.exit_code == 1 and "kept.pt exists" in result.stderr and "--force" in result.stderr
    assert (tmp_path / "kept.pt").read_bytes() == b"earlier run"


def test_convert_caffe_warns_when_it_guesses_the_preprocessing(tmp_path: Path, shared) -> None:
    root = shared("models", "caffe", "cifar10_quick")
    net, weights = root / "cifar10_quick.prototxt", root / "cifar10_quick_iter_4000.caffemodel"
    guessed = invoke("convert", "caffe", net, weights, "-o", tmp_path / "guessed.onnx")
    ok(guessed)
    warning = [line for line in guessed.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1, guessed.stderr
    for words in ("BGR channel order", "no mean subtraction", "zfclient evaluate", "guessed.onnx", "--channel-order"):
        assert words in warning[0], f"{words!r} not in {warning[0]!r}"
    told = invoke("convert", "caffe", net, weights, "-o", tmp_path / "told.onnx", "--channel-order", "rgb", "--mean-value", "125,123,114")
    ok(told)
    assert "warning" not in told.stderr
    half = invoke("convert", "caffe", net, weights, "-o", tmp_path / "half.onnx", "--channel-order", "bgr")
    assert "no mean subtraction" in half.stderr and "channel order" not in half.stderr


def test_evaluate_leaves_out_empty_classes(tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for src in sorted((SAMPLES / name).glob("*.jpg"))[:2]:
            shutil.copy(src, tmp_path / name / src.name)
    result = invoke("evaluate", "--model", MODEL, "--data", tmp_path)
    ok(result)
    assert "nan" not in result.stdout.lower()
    rows = {line.split("│")[1].strip() for line in result.stdout.splitlines() if line.count("│") >= 4}
    assert {"cat", "dog", "all"} <= rows and not rows & {"airplane", "truck"}, rows


def test_a_checkpoint_given_as_model_points_to_convert_torch(tmp_path: Path) -> None:
    image = sorted((SAMPLES / "cat").glob("*.jpg"))[0]
    result = invoke("predict", "--model", "models/zfnet-cifar10.pt", "--image", image)
    assert result.exit_code == 1
    assert "zfclient convert torch" in result.stderr and "zfnet-cifar10.pt" in result.stderr and "Traceback" not in result.output


def test_an_unknown_layer_name_speaks_of_the_cli_not_of_rpcs(tmp_path: Path) -> None:
    image = sorted((SAMPLES / "cat").glob("*.jpg"))[0]
    result = invoke("deconv", "--model", MODEL, "--layer", "conv77", "--image", image, "--out", tmp_path)
    assert result.exit_code == 1 and "zfclient layers" in result.stderr
    assert not re.search(r"\b(Get|List|Has|Upload)[A-Z]\w+", result.stderr), result.stderr


def _commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [(*prefix, c.name) for c in group.registered_commands if c.name]
    for sub in group.registered_groups:
        assert sub.typer_instance is not None and sub.name
        found += _commands(sub.typer_instance, (*prefix, sub.name))
    return found


@pytest.mark.parametrize("command", [" ".join(c) for c in _commands(app) if c != ("serve",)])
def test_help_shows_no_raw_markup(command: str) -> None:
    result = invoke(*command.split(), "--help")
    ok(result)
    assert "``" not in result.stdout and ":func:" not in result.stdout and ":class:" not in result.stdout, result.stdout
