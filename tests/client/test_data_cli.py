"""``zfclient data cifar10`` on a small archive in the official format (pickled batches in
``cifar-10-batches-py/`` of a .tar.gz), made here: every image lands in its class folder, pixel for pixel."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cli_testing import invoke, ok
from PIL import Image

from zfnet.client import cifar10
from zfnet.errors import FailedPrecondition

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _archive(path: Path, per_batch: int = 4, seed: int = 0, extra: object = None) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A cifar-10-python.tar.gz of 5 training batches and a test batch of ``per_batch`` random images;
    returns each batch's (rows of 3072 values, labels)."""
    rng = np.random.default_rng(seed)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, content: dict) -> None:
            data = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("batches.meta", {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072, b"num_cases_per_batch": per_batch})
        for name in [*cifar10.SPLITS["train"], *cifar10.SPLITS["test"]]:
            rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, per_batch).tolist()
            batches[name] = (rows, labels)
            content = {b"batch_label": name.encode(), b"labels": labels, b"data": rows, b"filenames": [f"{k}.png".encode() for k in range(per_batch)]}
            if extra is not None:
                content[b"extra"] = extra
            add(name, content)
    return batches


def test_the_archive_becomes_class_folders_pixel_for_pixel(tmp_path: Path) -> None:
    batches = _archive(tmp_path / "small.tar.gz")
    result = invoke("data", "cifar10", "--archive", tmp_path / "small.tar.gz", "--out", tmp_path / "cifar")
    ok(result)
    assert "wrote 24 images" in result.stdout and "train: 20 images" in result.stdout and "test: 4 images" in result.stdout
    for split, names in cifar10.SPLITS.items():
        rows = np.concatenate([batches[n][0] for n in names])
        labels = [label for n in names for label in batches[n][1]]
        for index, (row, label) in enumerate(zip(rows, labels)):
            picture = np.asarray(Image.open(tmp_path / "cifar" / split / CLASSES[label] / f"{index:05d}.png"))
            np.testing.assert_array_equal(picture, row.reshape(3, 32, 32).transpose(1, 2, 0))  # CIFAR's rows: R plane, G plane, B plane
    assert sum(1 for _ in (tmp_path / "cifar").rglob("*.png")) == 24
    again = invoke("data", "cifar10", "--archive", tmp_path / "small.tar.gz", "--out", tmp_path / "cifar")
    assert again.exit_code == 1 and "--force" in again.stderr
    jpeg = invoke("data", "cifar10", "--archive", tmp_path / "small.tar.gz", "--out", tmp_path / "jpeg", "--format", "jpeg")
    ok(jpeg)
    assert sum(1 for _ in (tmp_path / "jpeg").rglob("*.jpg")) == 24


def test_the_download_is_checked_against_the_md5(tmp_path: Path) -> None:
    """The download path over a file:// URL: kept when the MD5 matches, refused (nothing kept) when not."""
    _archive(tmp_path / "small.tar.gz")
    url = (tmp_path / "small.tar.gz").as_uri()
    md5 = hashlib.md5((tmp_path / "small.tar.gz").read_bytes()).hexdigest()
    seen: list[tuple[int, int]] = []
    kept = cifar10.download(tmp_path / "got" / "a.tar.gz", lambda done, total: seen.append((done, total)), url, md5)
    assert kept.read_bytes() == (tmp_path / "small.tar.gz").read_bytes() and seen[-1][0] == kept.stat().st_size
    with pytest.raises(FailedPrecondition, match="MD5"):
        cifar10.download(tmp_path / "bad" / "a.tar.gz", lambda done, total: None, url, "0" * 32)
    assert not list((tmp_path / "bad").iterdir())


def test_an_archive_that_is_not_cifar_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    result = invoke("data", "cifar10", "--archive", tmp_path / "junk.tar.gz", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "not the CIFAR-10 python archive" in result.stderr and "Traceback" not in result.output
    _archive(tmp_path / "evil.tar.gz", extra=Path("x"))  # a pickled object of another class: never unpickled
    result = invoke("data", "cifar10", "--archive", tmp_path / "evil.tar.gz", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "hold a pathlib" in result.stderr, result.stderr
