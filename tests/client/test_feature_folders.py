"""Feature folders written by the client: formats, resume, refusals, and the `zfclient features` command."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from zfnet.client import features
from zfnet.client.api import Client
from zfnet.client.cli.main import app
from zfnet.errors import FailedPrecondition, InvalidArgument, NotFound

LAYERS = ["2", "relu7"]


@pytest.fixture()
def data(tmp_path: Path, sample_images: list[Path]) -> Path:
    """3 classes x 6 images, one of them unreadable."""
    root = tmp_path / "images"
    for path in sample_images:
        if path.parent.name in ("cat", "dog", "ship") and int(path.stem) < 6:
            (root / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / path.parent.name / path.name)
    (root / "dog" / "0003.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    return root


@pytest.fixture()
def client(server):
    target, _ = server
    with Client(target) as c:
        yield c


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_rows_line_up_with_paths_and_skipped_images_keep_nan_rows(client: Client, data: Path, reference_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats"
    result = features.save(client, reference_onnx, data, LAYERS, out, "grid:2", batch_size=4)
    index = json.loads((out / "index.json").read_text())
    assert result.rows == 18 and result.skipped == 1 and index["complete"] and index["done"] == 18
    assert [layer["name"] for layer in index["layers"]] == ["pool2", "relu7", "pixels"]
    assert index["paths"] == [str(p) for p in sorted(data.glob("*/*.jpg"))]
    assert index["skipped"] == [{"row": 9, "index": 9, "path": str(data / "dog" / "0003.jpg"), "reason": index["skipped"][0]["reason"]}]
    assert "cannot decode" in index["skipped"][0]["reason"]
    labels = np.load(out / "labels.npy")
    assert labels.tolist() == [0] * 6 + [1] * 3 + [-1] + [1] * 2 + [2] * 6
    pool2 = np.load(out / "pool2.npy")
    assert pool2.shape == (18, 64 * 2 * 2) and pool2.dtype == np.float32
    assert np.isnan(pool2[9]).all() and not np.isnan(np.delete(pool2, 9, axis=0)).any()
    with Client(client.target) as again:  # the same numbers as the client's own stream of the same images
        batches = list(again.features(reference_onnx, data, LAYERS + ["pixels"], "grid:2", batch_size=4))
    np.testing.assert_array_equal(np.concatenate([b.features[0] for b in batches]), np.delete(pool2, 9, axis=0))


def test_npy_npz_and_parquet_hold_the_same_numbers(client: Client, data: Path, reference_onnx: Path, tmp_path: Path) -> None:
    for fmt in features.FORMATS:
        features.save(client, reference_onnx, data, LAYERS, tmp_path / fmt, "avg", dtype="float16", fmt=fmt, batch_size=5)
    assert sorted(p.name for p in (tmp_path / "npz").iterdir()) == ["features.npz", "index.json"]
    assert sorted(p.name for p in (tmp_path / "parquet").iterdir()) == ["features.parquet", "index.json"]
    npz = np.load(tmp_path / "npz" / "features.npz")
    table = pq.read_table(tmp_path / "parquet" / "features.parquet")
    index = json.loads((tmp_path / "npy" / "index.json").read_text())
    npz_layers = json.loads((tmp_path / "npz" / "index.json").read_text())["layers"]
    parquet_layers = json.loads((tmp_path / "parquet" / "index.json").read_text())["layers"]
    for layer, in_npz, in_parquet in zip(index["layers"], npz_layers, parquet_layers):
        values = np.load(tmp_path / "npy" / layer["file"])
        assert values.dtype == np.float16 and values.shape == (18, layer["size"])
        assert (in_npz["file"], in_npz["key"], in_parquet["file"], in_parquet["column"]) == (
            "features.npz", Path(layer["file"]).stem, "features.parquet", layer["name"],
        )
        np.testing.assert_array_equal(npz[in_npz["key"]], values)
        column = table.column(in_parquet["column"]).combine_chunks()
        np.testing.assert_array_equal(np.asarray(column.flatten()).reshape(18, -1), values)
    labels = np.load(tmp_path / "npy" / "labels.npy")
    np.testing.assert_array_equal(npz["labels"], labels)
    assert table.column("label").to_pylist() == labels.tolist() and table.column("path").to_pylist() == index["paths"]
    assert table.column("index").to_pylist() == list(range(18))
    loaded = [features.load(tmp_path / fmt) for fmt in features.FORMATS]
    for name in loaded[0].arrays:
        for other in loaded[1:]:
            np.testing.assert_array_equal(other.arrays[name], loaded[0].arrays[name])


def test_an_interrupted_job_resumes_to_byte_identical_files(client: Client, reference_onnx: Path, sample_images: list[Path], tmp_path: Path) -> None:
    data = sample_images[0].parents[1]
    save = functools.partial(features.save, client, reference_onnx, data, ["1", "4", "6"], pool="grid:2", layer_pool={"1": "max"}, dtype="float16", stop=72, batch_size=16)
    save(tmp_path / "whole")

    def stop_after_two_batches(done: int, total: int) -> None:
        if done >= 32:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save(tmp_path / "cut", on_progress=stop_after_two_batches)
    index = json.loads((tmp_path / "cut" / "index.json").read_text())
    assert index["done"] == 32 and not index["complete"] and "paths" not in index
    assert len((tmp_path / "cut" / "paths.jsonl").read_text().splitlines()) == 32
    with pytest.raises(FailedPrecondition, match="partial job .32 of 72 rows"):
        features.load(tmp_path / "cut")
    # a crash between two records of index.json: rows and paths past `done` are there already, and are written again
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "cut", crashed)
    (crashed / "index.json").write_text(json.dumps({**index, "done": 16}))
    result = save(tmp_path / "cut")
    assert result.resumed_from == 32
    assert digest(tmp_path / "cut") == digest(tmp_path / "whole")
    assert save(crashed).resumed_from == 16
    assert digest(crashed) == digest(tmp_path / "whole")
    again = save(crashed)
    assert again.complete_before and digest(crashed) == digest(tmp_path / "whole")
    assert "paths.jsonl" not in digest(crashed) and len(json.loads((crashed / "index.json").read_text())["paths"]) == 72


def test_index_records_only_durable_whole_batches_while_the_job_runs(
    client: Client, reference_onnx: Path, sample_images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """index.json is recorded on the writer's own thread as batches arrive (every batch here): what it
    says is finished is whole batches whose rows already hold their final values, and the files end
    byte-identical to a job that records every two seconds."""
    data = sample_images[0].parents[1]
    save = functools.partial(features.save, client, reference_onnx, data, ["3"], pool="avg", dtype="float32", stop=96, batch_size=8)
    save(tmp_path / "whole")
    final = np.load(tmp_path / "whole" / "relu3.npy")
    monkeypatch.setattr(features, "COMMIT_SECONDS", 0.0)
    seen: list[int] = []

    def check(done: int, total: int) -> None:
        index = json.loads((tmp_path / "often" / "index.json").read_text())
        seen.append(index["done"])
        assert index["done"] % 8 == 0 and index["done"] <= done
        rows = np.load(tmp_path / "often" / "relu3.npy", mmap_mode="r")[: index["done"]]
        np.testing.assert_array_equal(rows, final[: index["done"]])

    save(tmp_path / "often", on_progress=check)
    assert seen == sorted(seen) and len(set(seen)) > 2, seen  # recorded while the job ran, never backwards
    assert digest(tmp_path / "often") == digest(tmp_path / "whole")


def other_model(reference_onnx: Path, path: Path) -> Path:
    """The bundled model with its first convolution's filters doubled: another model, same layers."""
    model = onnx.load(reference_onnx)
    weight = next(i for i in model.graph.initializer if len(i.dims) == 4)
    values = onnx.numpy_helper.to_array(weight) * 2
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(model, path)
    return path


def test_finished_features_are_never_overwritten_by_another_job(client: Client, data: Path, reference_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats"
    features.save(client, reference_onnx, data, LAYERS, out, "avg")
    before = digest(out)
    other = other_model(reference_onnx, tmp_path / "other.onnx")
    with pytest.raises(FailedPrecondition, match="holds finished features of another job .model_sha256.*--force"):
        features.save(client, other, data, LAYERS, out, "avg")
    with pytest.raises(FailedPrecondition, match="another job .asked"):
        features.save(client, reference_onnx, data, LAYERS, out, "max")
    with pytest.raises(FailedPrecondition, match="another job .dtype"):
        features.save(client, reference_onnx, data, LAYERS, out, "avg", dtype="float16")
    assert digest(out) == before
    features.save(client, other, data, LAYERS, out, "avg", force=True)
    assert json.loads((out / "index.json").read_text())["model_sha256"] == hashlib.sha256(other.read_bytes()).hexdigest()
    stray = tmp_path / "stray"
    stray.mkdir()
    np.save(stray / "mine.npy", np.zeros(3))
    with pytest.raises(FailedPrecondition, match="already holds mine.npy without an index.json"):
        features.save(client, reference_onnx, data, LAYERS, stray, "avg")


def interrupt(done: int, total: int) -> None:
    raise KeyboardInterrupt


def test_damaged_folders_are_refused_with_the_file_named(client: Client, data: Path, reference_onnx: Path, tmp_path: Path) -> None:
    features.save(client, reference_onnx, data, LAYERS, tmp_path / "a", "avg")
    features.save(client, other_model(reference_onnx, tmp_path / "other.onnx"), data, LAYERS, tmp_path / "b", "avg")
    swapped = tmp_path / "swapped"
    shutil.copytree(tmp_path / "a", swapped)
    shutil.copy(tmp_path / "b" / "pool2.npy", swapped / "pool2.npy")  # the same shape, from another model
    with pytest.raises(InvalidArgument, match="pool2.npy does not match index.json .SHA-256 differs.: it was written by another job or model"):
        features.load(swapped)
    truncated = tmp_path / "truncated"
    shutil.copytree(tmp_path / "a", truncated)
    with open(truncated / "relu7.npy", "r+b") as f:
        f.truncate(200)
    with pytest.raises(InvalidArgument, match="relu7.npy is truncated or replaced: 200 bytes"):
        features.load(truncated)
    with pytest.raises(NotFound, match="has no index.json"):
        features.load(tmp_path)

    # a partial job with a truncated file: refused, not continued over
    save = functools.partial(features.save, client, reference_onnx, data, LAYERS, tmp_path / "partial", pool="avg", batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        save(on_progress=interrupt)
    with open(tmp_path / "partial" / "pool2.npy", "r+b") as f:
        f.truncate(300)
    with pytest.raises(InvalidArgument, match="pool2.npy is truncated or damaged: 300 bytes"):
        save()


def test_file_stems_are_safe_and_unique() -> None:
    assert features.file_stems(["/features/conv1/Conv_output_0", "labels", "a:b", "a/b", "..", "pixels"]) == [
        "features_conv1_Conv_output_0", "labels-2", "a_b", "a_b-2", "layer", "pixels",
    ]


def test_features_command(server, data: Path, reference_onnx: Path, tmp_path: Path) -> None:
    target, _ = server
    runner = CliRunner()
    out = tmp_path / "feats"
    base = ["features", "--server", target, "--model", str(reference_onnx), "--data", str(data), "--out", str(out)]
    result = runner.invoke(app, [*base, "--layer", "all", "--pool", "grid:2", "--pool", "1=max", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "wrote 18 rows of pool1 32 (max), pool2 256 (grid:2)" in result.output and "1 unreadable image(s)" in result.output
    index = features.read_index(out)
    assert [x["name"] for x in index["layers"]] == ["pool1", "pool2", "relu3", "relu4", "pool5", "relu6", "relu7", "fc8", "pixels"]
    result = runner.invoke(app, [*base, "--layer", "all", "--pool", "grid:2", "--pool", "1=max", "--batch-size", "8"])
    assert result.exit_code == 0 and "already holds these features" in result.output
    result = runner.invoke(app, [*base, "--layer", "all", "--pool", "avg", "--batch-size", "8"])
    assert result.exit_code == 1 and result.output.strip().startswith("error: ") and "another job (asked:" in result.output
    for bad, message in (
        (["--layer", "7", "--pool", "7=avg"], "layer relu7 has no spatial axes"),
        (["--layer", "12"], "layer 12 is out of range"),
        (["--layer", "1", "--pool", "grid:0"], "grid size S"),
        (["--layer", "1", "--format", "csv"], "unknown format 'csv'"),
        (["--layer", "1", "--pool", "=avg"], "give LAYER=SPEC"),
    ):
        result = runner.invoke(app, [*base[:-1], str(tmp_path / "bad"), *bad])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
