"""``zfclient models`` and ``zfclient datasets`` against a real server with a model folder and a data folder."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from cli_testing import invoke, ok

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
SAMPLES = ROOT / "samples" / "cifar10"


@pytest.fixture()
def holding(tmp_path: Path) -> Iterator[str]:
    """A server with one --model-dir model and one data set of two classes (3 cat and 2 dog images)."""
    from zfnet.server.app import create_server

    (tmp_path / "models").mkdir()
    shutil.copy(MODEL, tmp_path / "models" / "mine.onnx")
    for name, count in (("cat", 3), ("dog", 2)):
        (tmp_path / "data" / "pets" / name).mkdir(parents=True)
        for image in sorted((SAMPLES / name).glob("*.jpg"))[:count]:
            shutil.copy(image, tmp_path / "data" / "pets" / name / image.name)
    srv, port, _ = create_server("127.0.0.1:0", model_dir=tmp_path / "models", data_dir=tmp_path / "data")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        srv.stop(grace=None)


def test_models_lists_the_model_dir_and_uploads(holding: str, tmp_path: Path) -> None:
    other = onnx.load(MODEL)
    other.doc_string = "other bytes"
    onnx.save(other, tmp_path / "other.onnx")
    ok(invoke("layers", "--model", tmp_path / "other.onnx", "--server", holding))  # an upload beside the --model-dir file
    result = invoke("models", "--server", holding, "--json")
    ok(result)
    listed = {m["name"]: m for m in json.loads(result.stdout)}
    sha = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert set(listed) == {"mine", "other"}, listed
    assert listed["mine"]["sha256"] == sha and listed["mine"]["in_model_dir"] and listed["mine"]["size"] == MODEL.stat().st_size
    uploaded = listed["other"]
    assert not uploaded["in_model_dir"] and uploaded["loaded"] and uploaded["upload_names"] == ["other"]
    assert uploaded["sha256"] == hashlib.sha256((tmp_path / "other.onnx").read_bytes()).hexdigest()
    table = invoke("models", "--server", holding)
    ok(table)
    assert "mine" in table.stdout and "--model-dir" in table.stdout and sha[:12] in table.stdout


def test_datasets_lists_names_sizes_and_classes(holding: str) -> None:
    result = invoke("datasets", "--server", holding, "--json")
    ok(result)
    assert json.loads(result.stdout) == [{"name": "pets", "size": 5, "classes": ["cat", "dog"]}]
    table = invoke("datasets", "--server", holding)
    ok(table)
    assert "pets" in table.stdout and "cat, dog" in table.stdout and "5" in table.stdout


def test_an_unreachable_server_is_one_line() -> None:
    result = invoke("models", "--server", "127.0.0.1:1")
    assert result.exit_code == 1 and "127.0.0.1:1" in result.stderr and "Traceback" not in result.output
