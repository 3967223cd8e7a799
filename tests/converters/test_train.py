"""The training command: runs end to end on a small tree, prints accuracy per epoch, is seeded."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from typer.testing import CliRunner

from zfnet.client.cli.main import app
from zfnet.converters.pytorch import export, zoo

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "cifar10"


def _tree(root: Path, per_class: int) -> Path:
    for split in ("train", "test"):
        for folder in SAMPLES.iterdir():
            target = root / split / folder.name
            target.mkdir(parents=True)
            for image in sorted(folder.glob("*.jpg"))[:per_class]:
                shutil.copy(image, target / image.name)
    return root


def test_train_command_is_seeded_and_saves_a_loadable_checkpoint(tmp_path: Path) -> None:
    data = _tree(tmp_path / "data", 4)
    runs = []
    for name in ("a.pt", "b.pt"):
        result = CliRunner().invoke(app, ["train", "--data", str(data), "--checkpoint", str(tmp_path / name), "--epochs", "1", "--batch-size", "20"])
        assert result.exit_code == 0, result.output
        assert "epoch  1/1" in result.output and "test top-1" in result.output
        runs.append(torch.load(tmp_path / name, weights_only=True))
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), f"{key} differs between two runs with the same seed"
    export.load_weights(zoo.build("zfnet-cifar10"), tmp_path / "a.pt")  # fits the architecture


def test_train_command_needs_both_splits(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--checkpoint", str(tmp_path / "x.pt")])
    assert result.exit_code == 1 and "test" in result.stderr and not (tmp_path / "x.pt").exists()
