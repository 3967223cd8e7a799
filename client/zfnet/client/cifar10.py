"""CIFAR-10 as image folders: the official ``cifar-10-python.tar.gz`` (Krizhevsky, 2009; pickled
batches of 10,000 images of 32x32 RGB each) read, or downloaded and checked against its published
MD5, and written as ``OUT/train/<class>/<index>.png`` and ``OUT/test/<class>/<index>.png`` (the
one-folder-per-class trees `zfclient train`, `evaluate`, `top` and `features` read)."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from zfnet.errors import FailedPrecondition, InvalidArgument, Unavailable

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"  # published on https://www.cs.toronto.edu/~kriz/cifar.html
FOLDER = "cifar-10-batches-py"
SPLITS = {"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]}
FORMATS = {"png": ".png", "jpeg": ".jpg"}
CHUNK = 1 << 20  # bytes read per step of the download


@dataclass(frozen=True)
class Split:
    """One split: (n, 32, 32, 3) uint8 images and their class indices."""

    name: str
    images: np.ndarray
    labels: np.ndarray


class _Batches(pickle.Unpickler):
    """Unpickles CIFAR's batches only: dicts, lists, bytes and numpy arrays; any other class is refused,
    so that an archive cannot run code."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # bytes, as protocol 2 writes them from Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise InvalidArgument(f"the archive's batches hold a {module}.{name}; a CIFAR-10 batch holds only arrays, lists and bytes")
        return super().find_class(module, name)


def download(target: Path, on_progress: Callable[[int, int], None], url: str = URL, md5: str = MD5) -> Path:
    """Fetch the archive to ``target`` (through a ``.part`` file), calling ``on_progress(done, total)``;
    refused, and nothing kept, when its MD5 is not the published one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as sink:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(CHUNK):
                sink.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                on_progress(done, total)
    except OSError as err:
        part.unlink(missing_ok=True)
        raise Unavailable(f"cannot download {url}: {getattr(err, 'reason', err)}; download it yourself and pass --archive") from None
    if digest.hexdigest() != md5:
        part.unlink()
        raise FailedPrecondition(f"{url} downloaded with MD5 {digest.hexdigest()}, not the published {md5}; nothing was written")
    part.replace(target)
    return target


def read(archive: Path) -> tuple[list[str], list[Split]]:
    """The class names and the train and test splits of a ``cifar-10-python.tar.gz``."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            meta = _member(tar, "batches.meta")
            classes = [name.decode() if isinstance(name, bytes) else str(name) for name in meta[b"label_names"]]
            splits = []
            for split, members in SPLITS.items():
                batches = [_member(tar, m) for m in members]
                images = np.concatenate([np.asarray(b[b"data"], np.uint8).reshape(-1, 3, 32, 32) for b in batches]).transpose(0, 2, 3, 1)
                labels = np.concatenate([np.asarray(b[b"labels"], np.int64) for b in batches])
                if len(images) != len(labels) or labels.min() < 0 or labels.max() >= len(classes):
                    raise InvalidArgument(f"{archive}: the {split} batches hold {len(images)} images but labels {labels.min()}..{labels.max()} for {len(labels)}")
                splits.append(Split(split, images, labels))
    except (tarfile.TarError, EOFError, OSError, KeyError, ValueError, pickle.UnpicklingError) as err:
        raise InvalidArgument(f"{archive} is not the CIFAR-10 python archive (cifar-10-python.tar.gz): {err}") from None
    return classes, splits


def _member(tar: tarfile.TarFile, name: str) -> dict:
    """One pickled batch of the archive's ``cifar-10-batches-py/`` folder."""
    member = tar.extractfile(f"{FOLDER}/{name}")
    if member is None:
        raise InvalidArgument(f"{tar.name}: {FOLDER}/{name} is not a file")
    return _Batches(io.BytesIO(member.read()), encoding="bytes").load()


def paths(out: Path, classes: list[str], split: Split, suffix: str) -> Iterator[Path]:
    """Where each image of a split goes: ``OUT/<split>/<class>/<index in the split>``."""
    for index, label in enumerate(split.labels):
        yield out / split.name / classes[label] / f"{index:05d}{suffix}"


def write(out: Path, classes: list[str], splits: list[Split], image_format: str, on_written: Callable[[int], None], workers: int = 4) -> list[Path]:
    """Write every image (PNG lossless; JPEG at quality 95); ``on_written(n)`` after each image."""
    suffix = FORMATS[image_format]
    for split in splits:
        for name in classes:
            (out / split.name / name).mkdir(parents=True, exist_ok=True)

    def save(item: tuple[np.ndarray, Path]) -> Path:
        Image.fromarray(item[0]).save(item[1], quality=95) if suffix == ".jpg" else Image.fromarray(item[0]).save(item[1])
        on_written(1)
        return item[1]

    with ThreadPoolExecutor(workers) as pool:
        return [path for split in splits for path in pool.map(save, zip(split.images, paths(out, classes, split, suffix)))]
