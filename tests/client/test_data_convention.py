"""One input convention for data sets (issue 20): every ``--data`` command, and ``zfserver --data-dir``,
takes a class tree (``DIR/<class>/<image>``) or a flat folder (a data set without labels) by the one
rule of :func:`zfnet.imagefolder.scan`; the images that do not decode are skipped and named by full
path in one summary at the end (the count read is the count decoded), non-image files are listed as
ignored; what needs labels refuses a flat folder with one line naming the layout it needs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_testing import invoke, left_out, messy_folder, ok

from zfnet import imagefolder, topk
from zfnet.client.api import Client
from zfnet.server.app import create_server

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"


def _messy(target: Path) -> Path:
    """A flat folder: three good images (one in a sub-folder), a corrupt JPEG and a text file."""
    return messy_folder(target, nested=True)


def _summary(stderr: str, folder: Path) -> None:
    """One note names the corrupt JPEG by full path (3 of 4 read), one the text file."""
    left_out(stderr, folder, 3)


def test_the_rule_flat_folders_class_trees_and_both(tmp_path: Path) -> None:
    flat = imagefolder.scan(_messy(tmp_path / "flat"))
    assert flat.classes == [] and not flat.labelled and flat.labels.tolist() == [-1] * 4
    assert [p.relative_to(tmp_path / "flat").as_posix() for p in flat.files] == ["0000.jpg", "0001.jpg", "broken.jpg", "more/0002.jpg"]
    assert flat.ignored == [(tmp_path / "flat" / "notes.txt").absolute()]
    tree = tmp_path / "tree"
    for name in ("dog", "cat"):
        _messy(tree / name)
    (tree / ".hidden").mkdir()
    shutil.copy(tree / "cat" / "0000.jpg", tree / ".hidden" / "x.jpg")
    labelled = imagefolder.scan(tree)
    assert labelled.classes == ["cat", "dog"] and labelled.labels.tolist() == [0] * 4 + [1] * 4
    assert labelled.files[3] == tree / "cat" / "more" / "0002.jpg", "images under a class folder are found recursively"
    assert imagefolder.scan(tree, ["dog", "cat"]).labels.tolist() == [0] * 4 + [1] * 4
    shutil.copy(tree / "cat" / "0000.jpg", tree / "stray.jpg")  # an image directly inside: the whole folder is flat
    mixed = imagefolder.scan(tree)
    assert not mixed.labelled and len(mixed) == 9 and (tree / "stray.jpg") in mixed.files
    (tree / "dog" / "loop").symlink_to(tree, target_is_directory=True)  # a link back up the path is not followed: no loop
    assert len(imagefolder.scan(tree)) == 9


def test_two_links_to_one_folder_are_two_classes(tmp_path: Path) -> None:
    shared = _messy(tmp_path / "photos")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("kitten", "cat"):
        (tree / name).symlink_to(shared, target_is_directory=True)
    (tree / "cat" / "more" / "up").symlink_to(tree, target_is_directory=True)  # a loop through a linked folder ends
    labelled = imagefolder.scan(tree)
    assert labelled.classes == ["cat", "kitten"] and labelled.labels.tolist() == [0] * 4 + [1] * 4
    assert [p.relative_to(tree).as_posix() for p in labelled.files[4:]] == ["kitten/0000.jpg", "kitten/0001.jpg", "kitten/broken.jpg", "kitten/more/0002.jpg"]


def test_top_over_a_flat_folder_reports_without_classes(tmp_path: Path) -> None:
    folder = _messy(tmp_path / "in")
    result = invoke("top", "--model", MODEL, "--layer", "1", "--k", "2", "--channels", "0-1", "--data", folder, "--out", tmp_path / "out")
    ok(result)
    _summary(result.stderr, folder)
    assert "over 3 images" in result.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entries = [e for channel in manifest["layers"]["pool1"]["channels"].values() for e in channel["top"]]
    assert len(entries) == 4 and all(e["class"] == "" for e in entries)
    assert "<b>" not in (tmp_path / "out" / "layer-pool1.html").read_text(), "no class names to show"


def test_top_counts_every_skipped_image_when_its_state_names_only_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _messy(tmp_path / "in")
    (folder / "worse.jpg").write_bytes(b"not a jpeg either")
    monkeypatch.setattr(topk, "MAX_SKIPPED_NAMED", 1)  # as a job over more than 1,000 broken images
    result = invoke("top", "--model", MODEL, "--layer", "1", "--k", "1", "--channels", "0", "--scan-only", "--data", folder, "--out", tmp_path / "out")
    ok(result)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert "read 3 of 5 images; skipped 2 that do not decode (the first 1 named)" in notes[0], notes
    assert str((folder / "broken.jpg").absolute()) in notes[0] and "worse.jpg" not in notes[0], notes


def test_features_over_a_flat_folder_has_no_labels(tmp_path: Path) -> None:
    folder = _messy(tmp_path / "in")
    result = invoke("features", "--model", MODEL, "--layer", "1", "--pool", "avg", "--data", folder, "--out", tmp_path / "out")
    ok(result)
    _summary(result.stderr, folder)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["classes"] == [] and index["rows"] == 4
    assert np.load(tmp_path / "out" / "labels.npy").tolist() == [-1] * 4
    assert [s["path"] for s in index["skipped"]] == [str(folder / "broken.jpg")]
    probe = invoke("probe", "--features", tmp_path / "out")
    assert probe.exit_code == 1 and "Traceback" not in probe.output
    errors = [line for line in probe.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "flat folder" in errors[0] and "<class>" in errors[0], probe.stderr


def test_evolution_over_a_flat_folder(tmp_path: Path) -> None:
    folder = _messy(tmp_path / "in")
    for n in (1, 2):
        shutil.copy(MODEL, tmp_path / f"net_iter_{n}.onnx")
    result = invoke(
        "evolution", "--models", tmp_path / "net_iter_*.onnx", "--layer", "1", "--channels", "0-1", "--data", folder, "--out", tmp_path / "out",
    )
    ok(result)
    _summary(result.stderr, folder)
    assert "pool1: 2 channels x 2 snapshots (4 reconstructions)" in result.stdout


def test_evaluate_refuses_a_flat_folder_naming_the_layout(tmp_path: Path) -> None:
    folder = _messy(tmp_path / "in")
    result = invoke("evaluate", "--model", MODEL, "--data", folder)
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "evaluate needs labelled images" in errors[0] and f"{folder}/<class>/<image>" in errors[0], result.stderr


def test_evaluate_lists_the_non_image_files_of_a_class_tree(tmp_path: Path) -> None:
    folder = _messy(tmp_path / "data" / "cat")
    result = invoke("evaluate", "--model", MODEL, "--data", tmp_path / "data", "--json")
    ok(result)
    assert json.loads(result.stdout)["n"] == 3
    _summary(result.stderr, folder)


def test_a_flat_folder_under_data_dir_is_a_data_set_without_labels(tmp_path: Path) -> None:
    _messy(tmp_path / "data" / "flat")
    _messy(tmp_path / "data" / "group" / "tree" / "cat")
    server, port, _ = create_server("127.0.0.1:0", data_dir=tmp_path / "data")
    try:
        with Client(f"127.0.0.1:{port}") as client:
            listed = {d.name: (d.size, list(d.classes)) for d in client.list_datasets()}
            assert listed == {"flat": (4, []), "group/tree": (4, ["cat"])}
        result = invoke("top", "--model", MODEL, "--layer", "1", "--k", "1", "--channels", "0", "--data", "flat", "--out", tmp_path / "out",
                        "--server", f"127.0.0.1:{port}")
        ok(result)
        notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
        assert len(notes) == 1 and "read 3 of 4 images" in notes[0] and "flat/broken.jpg" in notes[0] and str(tmp_path) not in notes[0], result.stderr
        assert "over 3 images" in result.stdout
    finally:
        server.stop(None)


def test_mean_leaves_out_what_does_not_decode_and_lists_it(tmp_path: Path) -> None:
    folder = _messy(tmp_path / "in")
    result = invoke("mean", "--data", folder, "-o", tmp_path / "mean.binaryproto")
    ok(result)
    _summary(result.stderr, folder)
    strict = invoke("mean", "--data", folder, "-o", tmp_path / "strict.binaryproto", "--strict")
    assert strict.exit_code == 1 and "Traceback" not in strict.output and str(folder / "broken.jpg") in strict.stderr
    assert not (tmp_path / "strict.binaryproto").exists()


def test_train_leaves_out_what_does_not_decode_and_lists_it(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            _messy(tmp_path / "data" / split / name)
    result = invoke("train", "--data", tmp_path / "data", "--epochs", "1", "--batch-size", "4", "--checkpoint", tmp_path / "net.pt")
    ok(result)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: read")]
    assert len(notes) == 2 and all("read 6 of 8 images" in n for n in notes), result.stderr
    assert str(tmp_path / "data" / "train" / "cat" / "broken.jpg") in notes[0] and (tmp_path / "net.pt").is_file()
