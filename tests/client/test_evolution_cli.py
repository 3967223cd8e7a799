"""``zfclient evolution`` end to end: a glob of snapshots in the order of their numbers, the sheet, the
plot and the numbers written; clear one-line errors; the two Caffe cifar10_quick snapshots converted
and compared (skipped without ../shared)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from snapshot_testing import MODEL, perturbed
from typer.testing import CliRunner

from zfnet.client.api import Client
from zfnet.client.cli.main import app

MEAN = "125.3,122.9,113.9"  # cifar10_quick's mean (shared/notes/caffe.md), RGB


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_images) -> Path:
    """Two bundled images per class as ``<class>/*.jpg``."""
    root = tmp_path_factory.mktemp("evo-data")
    for path in sorted(sample_images):
        target = root / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if len(list(target.parent.iterdir())) < 2:
            shutil.copy(path, target)
    return root


def run(*args: str):
    return CliRunner().invoke(app, ["evolution", *args])


@pytest.mark.slow
def test_glob_of_snapshots_gives_a_labelled_sheet_and_numbers_in_training_order(tmp_path, data) -> None:
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    for seed, n in enumerate((10000, 500, 5000)):
        perturbed(snaps / f"net_iter_{n}.onnx", seed)
    out = tmp_path / "evo"
    result = run("--models", str(snaps / "*.onnx"), "--layer", "1", "--layer", "relu4", "--data", str(data), "--channels", "0-2,7", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "pool1: 4 channels x 3 snapshots (12 reconstructions)" in result.output
    numbers = json.loads((out / "evolution.json").read_text())
    assert [s["label"] for s in numbers["snapshots"]] == ["iter 500", "iter 5000", "iter 10000"]
    assert [Path(s["model"]).name for s in numbers["snapshots"]] == ["net_iter_500.onnx", "net_iter_5000.onnx", "net_iter_10000.onnx"]
    assert list(numbers["layers"]) == ["pool1", "relu4"] and list(numbers["layers"]["relu4"]["channels"]) == ["0", "1", "2", "7"]
    cells = numbers["layers"]["relu4"]["channels"].values()
    settled = [sum(row[c]["index"] == row[-1]["index"] for row in cells) / 4 for c in range(3)]
    assert numbers["layers"]["relu4"]["same_image_as_last"] == pytest.approx(settled) and settled[-1] == 1
    packed = np.load(out / "evolution.npz")
    assert packed["labels"].tolist() == ["iter 500", "iter 5000", "iter 10000"] and packed["layers"].tolist() == ["pool1", "relu4"]
    assert packed["layer1.channels"].tolist() == [0, 1, 2, 7]
    assert packed["layer1.activations"].shape == (4, 3) and packed["layer1.reconstructions"].shape == (4, 3, 3, 32, 32)
    for c in range(3):  # json and npz say the same; the iter-5000 column is net_iter_5000's own top-1
        cell = numbers["layers"]["relu4"]["channels"]["7"][c]
        assert packed["layer1.indices"][3, c] == cell["index"] and np.float32(cell["activation"]) == packed["layer1.activations"][3, c]
    with Client() as client:
        alone = client.top(snaps / "net_iter_5000.onnx", client.dataset(data), ["relu4"], k=1, channels=[7])
    entry = alone.entries["relu4"][7][0]
    assert packed["layer1.indices"][3, 1] == entry.index
    np.testing.assert_array_equal(packed["layer1.reconstructions"][3, 1], entry.reconstruction)
    sheet = Image.open(out / "evolution.png")
    assert sheet.width > 400 and sheet.height > 300


def test_bad_invocations_fail_with_one_line(tmp_path, data) -> None:
    perturbed(tmp_path / "epoch_1.onnx", 0)
    shutil.copy(MODEL, tmp_path / "final.onnx")
    cases = [
        (["--model", str(MODEL), "--models", str(tmp_path / "*.onnx"), "--layer", "1", "--data", str(data)], "not both"),
        (["--models", str(tmp_path / "nothing*.onnx"), "--layer", "1", "--data", str(data)], "no snapshot matches"),
        (["--models", str(tmp_path / "*.onnx"), "--layer", "1", "--data", str(data)], "final.onnx"),
        (["--model", str(tmp_path / "epoch_1.onnx"), "--data", str(data)], "--layer is required"),
        (["--model", str(tmp_path / "epoch_1.onnx"), "--layer", "1", "--data", str(data), "--method", "magic"], "unknown method 'magic'"),
        (["--model", str(tmp_path / "epoch_1.onnx"), "--layer", "1", "--data", str(data), "--channels", "40"], "out of range"),
    ]
    for args, words in cases:
        result = run(*args, "--out", str(tmp_path / "out"))
        assert result.exit_code == 1 and words in result.stderr and "Traceback" not in result.output + result.stderr, (args, result.output, result.stderr)


@pytest.mark.slow
def test_caffe_cifar10_quick_snapshots_converted_and_compared(shared, tmp_path, data) -> None:
    root = shared("models", "caffe", "cifar10_quick")
    snaps = tmp_path / "caffe"
    for weights, name in (("cifar10_quick_iter_5000.caffemodel.h5", "cifar10_quick_iter_5000.onnx"), ("cifar10_quick_iter_4000.caffemodel", "cifar10_quick_iter_4000.onnx")):
        converted = CliRunner().invoke(app, ["convert", "caffe", str(root / "cifar10_quick.prototxt"), str(root / weights), "-o", str(snaps / name), "--mean-value", MEAN, "--channel-order", "rgb"])
        assert converted.exit_code == 0, converted.output
    out = tmp_path / "evo"
    result = run("--models", str(snaps / "*.onnx"), "--layer", "1", "--layer", "2", "--layer", "3", "--data", str(data), "--channels", "0-7", "--out", str(out))
    assert result.exit_code == 0, result.output
    numbers = json.loads((out / "evolution.json").read_text())
    assert [s["label"] for s in numbers["snapshots"]] == ["iter 4000", "iter 5000"] and len(numbers["layers"]) == 3
    packed = np.load(out / "evolution.npz")
    assert np.isfinite(packed["layer0.activations"]).all() and packed["layer0.activations"].shape == (8, 2)
    assert not np.array_equal(packed["layer2.reconstructions"][:, 0], packed["layer2.reconstructions"][:, 1])
    with Client() as client:  # each column is that snapshot's own top-1
        for c, name in enumerate(("cifar10_quick_iter_4000.onnx", "cifar10_quick_iter_5000.onnx")):
            alone = client.top(snaps / name, client.dataset(data), [3], k=1, channels=list(range(8)))
            (layer, per_channel), = alone.entries.items()
            assert [per_channel[ch][0].index for ch in range(8)] == packed["layer2.indices"][:, c].tolist()
    mixed = run("--model", str(snaps / "cifar10_quick_iter_4000.onnx"), "--model", str(MODEL), "--layer", "1", "--data", str(data), "--out", str(tmp_path / "mixed"))
    assert mixed.exit_code == 1 and "differs from 'iter 4000'" in mixed.stderr and "zfnet-cifar10" in mixed.stderr


@pytest.mark.slow
def test_snapshots_of_a_short_training_run(tmp_path, data) -> None:
    """The bundled architecture trained for two epochs on a tiny tree, a snapshot after each: the
    evolution of its layers, each column that snapshot's own top-1."""
    for split in ("train", "test"):
        shutil.copytree(data, tmp_path / "tree" / split)
    trained = CliRunner().invoke(app, [
        "train", "--data", str(tmp_path / "tree"), "--checkpoint", str(tmp_path / "final.pt"), "--epochs", "2", "--batch-size", "5",
        "--snapshots", "1,2", "--snapshot-dir", str(tmp_path / "snaps"),
    ])
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "evo"
    result = run("--models", str(tmp_path / "snaps" / "*.onnx"), "--layer", "1", "--layer", "3", "--layer", "5", "--data", str(data), "--channels", "0-3", "--out", str(out))
    assert result.exit_code == 0, result.output
    packed = np.load(out / "evolution.npz")
    assert packed["labels"].tolist() == ["epoch 1", "epoch 2"] and packed["layers"].tolist() == ["pool1", "relu3", "pool5"]
    with Client() as client:
        for c in range(2):
            alone = client.top(tmp_path / "snaps" / f"epoch_{c + 1}.onnx", client.dataset(data), [5], k=1, channels=[0, 1, 2, 3])
            assert [alone.entries["pool5"][ch][0].index for ch in range(4)] == packed["layer2.indices"][:, c].tolist()
            np.testing.assert_allclose([alone.entries["pool5"][ch][0].activation for ch in range(4)], packed["layer2.activations"][:, c], rtol=1e-6)
