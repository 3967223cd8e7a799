"""The training command: runs end to end on a small tree, prints accuracy per epoch, is seeded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_train_keeps_snapshots_and_exports_each(tmp_path: Path) -> None:
    """Snapshots after the chosen epochs: each checkpoint equals a run stopped there, each ONNX export
    gives that checkpoint's logits."""
    import numpy as np
    import onnxruntime as ort

    data = _tree(tmp_path / "data", 2)
    args = ["train", "--data", str(data), "--checkpoint", str(tmp_path / "final.pt"), "--epochs", "3", "--batch-size", "20"]
    result = CliRunner().invoke(app, [*args, "--snapshots", "1", "--snapshot-every", "2", "--snapshot-dir", str(tmp_path / "snaps")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["epoch_1.onnx", "epoch_1.pt", "epoch_2.onnx", "epoch_2.pt"]
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    second = torch.load(tmp_path / "snaps" / "epoch_2.pt", weights_only=True)
    assert any(not torch.equal(final[k], second[k]) for k in final), "the epoch-2 snapshot must differ from the final weights"
    module = export.load_weights(zoo.build("zfnet-cifar10"), tmp_path / "snaps" / "epoch_2.pt").eval()
    x = torch.rand(4, 3, 32, 32) * 255
    session = ort.InferenceSession(str(tmp_path / "snaps" / "epoch_2.onnx"), providers=["CPUExecutionProvider"])
    logits = np.asarray(session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: x.numpy()})[0])
    np.testing.assert_allclose(logits, module(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    bad = CliRunner().invoke(app, [*args, "--snapshots", "4"])
    assert bad.exit_code == 1 and "--snapshots" in bad.stderr


@pytest.mark.parametrize("steps", range(1, 13))
def test_the_one_cycle_schedule_runs_for_any_number_of_steps(steps: int) -> None:
    """torch's OneCycleLR divides by zero when warm-up and annealing boundaries meet (20 images, batch
    10, 2 epochs); every short run steps through its schedule and never exceeds the peak rate."""
    from zfnet.converters.pytorch.train import one_cycle

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    schedule = one_cycle(optimizer, 0.1, steps)
    rates = []
    for _ in range(steps):
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert all(0 < r <= 0.1 + 1e-12 for r in rates)
