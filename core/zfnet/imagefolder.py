"""Finding and reading images: the one input convention of every command that reads images
(:func:`gather`: files, folders searched recursively, class-folder trees and flat folders alike;
images that do not decode skipped and listed, non-image files listed as ignored), and the one rule
by which a folder is a data set (:func:`scan`): a **flat** folder (images directly inside it) is a data
set without labels, every image under it included; otherwise a **class tree**, each sub-folder a class
(``root/<class>/<image>``, images under a class folder found recursively)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from zfnet.errors import InvalidArgument, NotFound
from zfnet.preprocessing import Framing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


@dataclass(frozen=True)
class ImageFolder:
    """The image files of a data-set folder, with their class indices (a flat folder: no classes, every label -1)."""

    root: Path
    classes: list[str]
    files: list[Path]
    labels: np.ndarray  # (n,) int64, index into ``classes``; -1 in a flat folder
    ignored: list[Path] = field(default_factory=list)  # non-image files under the root (absolute)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labelled(self) -> bool:
        """Whether the folder is a class tree (its images carry labels)."""
        return bool(self.classes)

    def require_labels(self, needed_by: str) -> ImageFolder:
        """This folder when it is a class tree; for a flat folder, an error saying what ``needed_by`` needs."""
        if not self.labelled:
            raise InvalidArgument(f"{needed_by} needs labelled images: {self.root} holds images but no class folders; a labelled image tree is {self.root}/<class>/<image>")
        return self


@dataclass(frozen=True)
class Unreadable:
    """An image file that does not decode, and why."""

    path: Path  # absolute
    reason: str


@dataclass(frozen=True)
class Gathered:
    """The images under the paths given: those that decode (in order), those that do not, and the
    non-image files found in the folders (ignored)."""

    files: list[Path]
    unreadable: list[Unreadable]
    ignored: list[Path]

    def summary(self) -> list[str]:
        """One line per kind of file left out, each naming every file by its full path ([] when none)."""
        return summary(len(self.files), self.unreadable, self.ignored)


def summary(decoded: int, unreadable: Sequence[Unreadable], ignored: Sequence[Path], undecoded: int | None = None) -> list[str]:
    """What a command left out, one line per kind, every file named by its full path ([] when none):
    the images that do not decode (``decoded`` images were read; ``undecoded`` of them in all when a
    job's state named only the first of them), and the non-image files ignored."""
    lines = []
    count = max(len(unreadable), undecoded or 0)
    if count:
        listed = "; ".join(f"{u.path} ({u.reason})" for u in unreadable)
        named = f" (the first {len(unreadable)} named)" if count > len(unreadable) else ""
        lines.append(f"read {decoded} of {decoded + count} images; skipped {count} that do not decode{named}: {listed}")
    if ignored:
        lines.append(f"ignored {len(ignored)} non-image file(s): {'; '.join(map(str, ignored))}")
    return lines


def gather(paths: Sequence[str | Path], strict: bool = False, workers: int = 4) -> Gathered:
    """Files as given; folders replaced by the image files under them (recursively, sorted: class
    trees and flat folders alike; hidden files and folders left alone), other files there listed as
    ignored; the same file given twice kept
    once. Every image is decoded once: one that does not decode is skipped and listed (with
    ``strict``, the first is an error). Refused when no image is left."""
    candidates: list[Path] = []
    ignored: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            images, others = _listing(path)
            if not images:
                raise InvalidArgument(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            candidates += [path / n for n in images]
            ignored += [(path / n).absolute() for n in others]
        elif path.is_file():
            candidates.append(path)
        else:
            raise NotFound(f"image {path} does not exist")
    seen: set[Path] = set()
    unique = [f for f in candidates if not (f.resolve() in seen or seen.add(f.resolve()))]
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(_decode_error, unique))
    files, unreadable = [], []
    for path, reason in zip(unique, reasons):
        if reason is None:
            files.append(path)
            continue
        if strict:
            raise _strict_error(path, reason)
        unreadable.append(Unreadable(path.absolute(), reason))
    if not files:
        raise InvalidArgument(f"no image could be decoded: {'; '.join(f'{u.path} ({u.reason})' for u in unreadable)}")
    return Gathered(files, unreadable, ignored)


def _decode_error(path: Path) -> str | None:
    """None when the file decodes as an image, else why not (one line)."""
    try:
        with Image.open(path) as img:
            img.load()
        return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__


def scan(root: str | Path, classes: Sequence[str] | None = None, within: Path | None = None) -> ImageFolder:
    """The data set a folder holds, by the one rule (hidden files and folders left alone): images
    directly inside ``root`` make it **flat**, every image under it (recursively) one unlabelled data
    set; otherwise it is a **class tree**, each sub-folder a class and the images under it (recursively)
    labelled with it. ``classes`` fixes a tree's class order (default: sorted folder names); a tree may
    hold a subset of the classes; a folder that is not a class is an error. Files in sorted order.
    ``within``: linked folders are followed only where they resolve inside it (a server's data root)."""
    root = Path(root)
    if not root.is_dir():
        raise NotFound(f"image folder {root} does not exist")
    images, others = _listing(root, within)
    ignored = [(root / n).absolute() for n in others]
    if not images:
        raise InvalidArgument(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if any(os.sep not in n for n in images):  # an image directly inside: flat
        return ImageFolder(root, [], [root / n for n in images], np.full(len(images), -1, np.int64), ignored)
    tops = [n.split(os.sep, 1)[0] for n in images]  # each image's class folder
    folders = sorted(set(tops))
    order = list(classes) if classes is not None else folders
    unknown = [f for f in folders if f not in order]
    if unknown:
        raise InvalidArgument(f"{root} has folder(s) {', '.join(unknown)} that are not among the classes {', '.join(order)}")
    index = {name: i for i, name in enumerate(order)}
    labels = np.asarray([index[t] for t in tops], dtype=np.int64)
    by_class = np.argsort(labels, kind="stable")  # sorted within a class
    return ImageFolder(root, order, [root / images[i] for i in by_class], labels[by_class], ignored)


def holds_images(folder: Path, looked_at: int = 50) -> bool:
    """Whether ``folder`` directly holds an image file (a quick look: its first ``looked_at`` entries)."""
    with os.scandir(folder) as entries:
        for k, entry in enumerate(entries):
            if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and not entry.name.startswith(".") and entry.is_file():
                return True
            if k >= looked_at:
                break
    return False


def _listing(root: Path, within: Path | None = None) -> tuple[list[str], list[str]]:
    """The files under ``root``, recursively, as paths relative to it, sorted by their parts (hidden
    files and folders left alone; linked folders followed, only inside ``within`` when given, and not
    into a folder the path already passed through, so a loop ends while two links to one folder are
    both read): the image files, and the others."""
    names: list[str] = []
    passed = {str(root): frozenset({os.path.realpath(root)})}  # each folder walked: the real folders on its path
    inside_of = None if within is None else os.path.realpath(within)

    def allowed(real: str) -> bool:
        return inside_of is None or real == inside_of or real.startswith(inside_of + os.sep)

    for folder, subfolders, files in os.walk(root, followlinks=True):  # names as strings: sorting 50,000 Paths took 10x longer
        path = passed.pop(folder)
        real = [(d, os.path.realpath(os.path.join(folder, d))) for d in subfolders if not d.startswith(".")]
        subfolders[:] = [d for d, r in real if allowed(r) and r not in path]
        passed.update((os.path.join(folder, d), path | {r}) for d, r in real if d in subfolders)
        inside = os.path.relpath(folder, root)
        prefix = "" if inside == os.curdir else inside + os.sep
        names.extend(prefix + f for f in files if not f.startswith("."))
    names.sort(key=lambda n: n.split(os.sep))
    images = [n for n in names if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES]
    return images, [n for n in names if os.path.splitext(n)[1].lower() not in IMAGE_SUFFIXES]


def read_rgb(path: str | Path | BinaryIO, size: tuple[int, int] | Framing | None = None) -> np.ndarray:
    """Decode an image file (or an open binary file) to an (H, W, 3) uint8 RGB array: as it is, resized
    to ``size`` = (H, W), or framed as a model takes it (a :class:`~zfnet.preprocessing.Framing`: the
    picture the model sees)."""
    framing = Framing(*size) if isinstance(size, tuple) else size
    try:
        with Image.open(path) as img:
            return framing.picture(img) if framing is not None else np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise NotFound(f"image {path} does not exist") from None
    except (OSError, Image.DecompressionBombError) as err:
        raise InvalidArgument(f"cannot read image {path}: {err}") from None


def decoded(path: Path, size: tuple[int, int] | None = None, strict: bool = False) -> np.ndarray | Unreadable:
    """An image file as :func:`read_rgb` decodes it, or, when it does not decode, why (``strict``: an
    error naming it, for ``--strict``)."""
    try:
        return read_rgb(path, size)
    except InvalidArgument:
        reason = _decode_error(path) or "does not decode"
        if strict:
            raise _strict_error(path, reason) from None
        return Unreadable(path.absolute(), reason)


def _strict_error(path: Path, reason: str) -> InvalidArgument:
    return InvalidArgument(f"cannot decode image {path.absolute()} ({reason}); without --strict it would be skipped")


@dataclass(frozen=True)
class Loaded:
    """The images of a folder that decode, (n, H, W, 3) uint8, with their labels; and those that do not."""

    images: np.ndarray
    labels: np.ndarray
    unreadable: list[Unreadable]


def load(folder: ImageFolder, size: tuple[int, int] | None = None, workers: int = 4, strict: bool = False) -> Loaded:
    """Decode the images of ``folder`` into one array; one that does not decode is left out and
    listed (``strict``: an error)."""
    with ThreadPoolExecutor(workers) as pool:
        found = list(pool.map(lambda p: decoded(p, size, strict), folder.files))
    kept = [i for i, image in enumerate(found) if isinstance(image, np.ndarray)]
    unreadable = [image for image in found if isinstance(image, Unreadable)]
    if not kept:
        raise InvalidArgument(f"no image under {folder.root} could be decoded: {'; '.join(f'{u.path} ({u.reason})' for u in unreadable)}")
    return Loaded(np.stack([image for image in found if isinstance(image, np.ndarray)]), folder.labels[kept], unreadable)
