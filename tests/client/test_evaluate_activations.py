"""``zfclient evaluate`` and ``zfclient activations`` against bare onnxruntime on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from typer.testing import CliRunner

from zfnet import imagefolder
from zfnet.client.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
SAMPLES = ROOT / "samples" / "cifar10"


def _bare(names: list[str], batch: np.ndarray) -> list[np.ndarray]:
    """The tensors ``names`` for an NCHW batch, from bare onnxruntime (dense, as arrays)."""
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(names, {"image": batch})]


def _bare_predictions(files: list[Path]) -> np.ndarray:
    batch = np.stack([imagefolder.read_rgb(p) for p in files]).astype(np.float32).transpose(0, 3, 1, 2)
    return _bare(["fc8"], batch)[0].argmax(axis=1)


def test_evaluate_json_equals_bare_onnxruntime() -> None:
    result = CliRunner().invoke(app, ["evaluate", "--model", str(MODEL), "--data", str(SAMPLES), "--json", "--batch-size", "64"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    folder = imagefolder.scan(SAMPLES, json.loads(_classes()))
    correct = _bare_predictions(folder.files) == folder.labels
    assert report["n"] == len(folder) == 200
    assert abs(report["top1"] - correct.mean()) < 1e-9
    for index, name in enumerate(folder.classes):
        assert abs(report["per_class"][name] - correct[folder.labels == index].mean()) < 1e-9


def test_evaluate_table_and_class_override(tmp_path: Path) -> None:
    for name in ("cat", "dog"):  # a two-class tree, in the model's order given by --classes
        (tmp_path / name).mkdir()
        for src in sorted((SAMPLES / name).glob("*.jpg"))[:3]:
            (tmp_path / name / src.name).write_bytes(src.read_bytes())
    result = CliRunner().invoke(app, ["evaluate", "--model", str(MODEL), "--data", str(tmp_path), "--classes", ",".join(_model_classes())])
    assert result.exit_code == 0, result.stderr
    assert "cat" in result.stdout and "all" in result.stdout and "6" in result.stdout
    subset = CliRunner().invoke(app, ["evaluate", "--model", str(MODEL), "--data", str(tmp_path), "--json"])
    assert subset.exit_code == 0 and json.loads(subset.stdout)["n"] == 6  # a tree may hold a subset of the classes
    bad = CliRunner().invoke(app, ["evaluate", "--model", str(MODEL), "--data", str(tmp_path), "--classes", "cat,zebra"])
    assert bad.exit_code == 1 and "dog" in bad.stderr and "Traceback" not in bad.output


def test_activations_npz_and_pictures(tmp_path: Path) -> None:
    image = sorted(SAMPLES.glob("ship/*.jpg"))[0]
    result = CliRunner().invoke(app, ["activations", "--model", str(MODEL), "--layer", "2", "--layer", "fc8", "--image", str(image), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    saved = np.load(tmp_path / "activations.npz")
    batch = imagefolder.read_rgb(image).astype(np.float32).transpose(2, 0, 1)[None]
    pool2, fc8 = _bare(["pool2", "fc8"], batch)
    np.testing.assert_allclose(saved["pool2"], pool2, atol=1e-5)
    np.testing.assert_allclose(saved["fc8"], fc8, atol=1e-5)
    picture = Image.open(tmp_path / f"{image.stem}_pool2_maps.png")
    assert picture.width > 300 and picture.height > 100


def _model_classes() -> list[str]:
    return json.loads(_classes())


def _classes() -> str:
    import onnx

    model = onnx.load(str(MODEL), load_external_data=False)
    return next(p.value for p in model.metadata_props if p.key == "zfnet.classes")
