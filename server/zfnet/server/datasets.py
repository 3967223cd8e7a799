"""Data sets for jobs over many images (top-k per channel, features, ...).

Images come from a named folder under the server's ``--data-dir`` or are streamed by the client;
both become the same :class:`Batch` es of model input, in data-set order, decoded by the same code,
so both give identical results. A data set is read as a range ``[start, stop)`` of its indices:
that is how a job is split across processes or machines, and how an interrupted job resumes.

A folder's files are read only when they resolve (symbolic links followed) inside ``--data-dir``,
are regular files (no devices, pipes or sockets) and are no larger than an image of the server's
pixel bound can be (:func:`~zfnet.server.images.max_encoded_bytes`); any other is skipped, saying
why. A data set that is a link to a folder outside the root is not served. Streamed images count
against the memory budget until they are decoded (:func:`zfnet.server.admission.consumed`).
"""

from __future__ import annotations

import functools
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from zfnet import imagefolder
from zfnet.errors import InvalidArgument, NotFound, ZfnetError
from zfnet.preprocessing import Framing
from zfnet.server import admission
from zfnet.server.images import MAX_IMAGE_PIXELS, DecodeGate, ImageInput, max_encoded_bytes, pixels, stack
from zfnet.wire.common import Skipped

log = logging.getLogger("zfnet.server")
T = TypeVar("T")

DEFAULT_BATCH = 64
MAX_BATCH = 1024
DECODE_WORKERS = 4
PIECE_BYTES = 256 << 10  # encoded bytes per decoding task (see _pieces)
MAX_DEPTH = 3  # how deep under --data-dir a data set may sit (``group/name/<class>/<image>``)


@dataclass(frozen=True)
class Batch:
    """Consecutive data-set images as model input; skipped images are left out of every array."""

    indices: np.ndarray  # (n,) int64 data-set indices
    labels: np.ndarray  # (n,) int64 class index, -1 where unknown
    paths: list[str]  # as shown in results: relative to the data set, or the client's own path
    inputs: np.ndarray  # (n, C, H, W) float32 model input
    skipped: list[Skipped] = field(default_factory=list)
    read: int = 0  # images consumed from the data set, skipped ones included


@dataclass(frozen=True)
class Source:
    """Which images a job reads: ``size`` images in all, of which indices ``[start, stop)``."""

    size: int
    classes: list[str]
    start: int
    stop: int
    batch_size: int
    max_pixels: int = MAX_IMAGE_PIXELS  # the server's bound on one image, checked before it is decoded
    gate: DecodeGate | None = None  # the server's bound on bytes being decoded at once, across its jobs

    @property
    def count(self) -> int:
        return self.stop - self.start

    @property
    def largest_batch(self) -> int:
        """The most images one batch holds: ``batch_size``, or the whole range when it is smaller
        (what a job's reservation is estimated for)."""
        return max(1, min(self.batch_size, self.count))

    @property
    def decoding(self) -> int:
        """The most bytes this source's images take being decoded at once (the server's gate)."""
        return self.gate.limit if self.gate is not None else 0

    def fitted(self, batch_size: int, streamed_bytes: int) -> Source:
        """This source read ``batch_size`` images at a time; a job holds ``streamed_bytes`` for the
        images a client streams (see :class:`StreamedSource`)."""
        return replace(self, batch_size=batch_size)

    def batches(self, framing: Framing) -> Iterator[Batch]:  # pragma: no cover - interface
        raise NotImplementedError

    def take(self, indices: Sequence[int] | np.ndarray, framing: Framing) -> Iterator[Batch]:  # pragma: no cover - interface
        """Only the images at ``indices`` (ascending; a job's second pass), in batches of ``batch_size``."""
        raise NotImplementedError


def _range(size: int, start: int, stop: int, batch_size: int) -> tuple[int, int, int]:
    """Check a requested range and batch size against a data set of ``size`` images."""
    stop = stop or size
    if not 0 <= start <= stop <= size:
        raise InvalidArgument(f"data range [{start}, {stop}) is outside the data set's {size} images (DataSource.start/stop)", reason="VALUE_OUT_OF_RANGE")
    batch_size = batch_size or DEFAULT_BATCH
    if not 0 < batch_size <= MAX_BATCH:
        raise InvalidArgument(f"DataSource.batch_size must be 1..{MAX_BATCH}, got {batch_size}", reason="VALUE_OUT_OF_RANGE")
    return start, stop, batch_size


def _encoded_size(image: ImageInput) -> int:
    """Bytes of an image as sent; decoded arrays count as large."""
    return len(image.encoded) if image.encoded is not None else PIECE_BYTES


def _sent_bytes(image: ImageInput) -> int:
    """Bytes an image took in its request message."""
    if image.encoded is not None:
        return len(image.encoded)
    values = image.rgb if image.rgb is not None else image.model_input
    return values.nbytes if values is not None else 0


def read_file(path: Path, root: Path | None, limit: int) -> bytes | str:
    """The bytes of a data set's file, or why it is not read: it resolves outside ``root`` (the
    data directory, resolved), is not a regular file, or is larger than ``limit`` bytes."""
    real = Path(os.path.realpath(path))
    if root is not None and not real.is_relative_to(root):
        return "the file resolves outside the data directory; it is not read"
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as err:
        return f"cannot read the file: {err.strerror or err}"
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file; it is not read"
        if info.st_size > limit:
            return f"the file is {info.st_size:,} bytes, more than an image this server decodes can be ({limit:,} bytes for its pixel bound); it is not read"
        try:
            data = f.read(limit + 1)
        except OSError as err:
            return f"cannot read the file: {err.strerror or err}"
    return data if len(data) <= limit else f"the file grew past {limit:,} bytes while it was read; it is not read"


def _decode(image: ImageInput, framing: Framing, max_pixels: int, gate: DecodeGate | None) -> np.ndarray | str:
    """One image's :func:`~zfnet.server.images.pixels`, or the reason it cannot be read."""
    try:
        return pixels(image, 0, framing, max_pixels, gate)
    except ZfnetError as err:
        return str(err)


def _assemble(indices: list[int], labels: list[int], paths: list[str], decoded: list[np.ndarray | str], read: int) -> Batch:
    kept = [(i, d) for i, d in enumerate(decoded) if not isinstance(d, str)]
    keep = [i for i, _ in kept]
    skipped = [Skipped(indices[i], paths[i], d) for i, d in enumerate(decoded) if isinstance(d, str)]
    for s in skipped:
        log.warning("skipped image %d (%r): %s", s.index, s.path, s.reason)
    return Batch(
        np.asarray([indices[i] for i in keep], np.int64), np.asarray([labels[i] for i in keep], np.int64),
        [paths[i] for i in keep], stack([d for _, d in kept]) if kept else np.zeros((0,), np.float32),
        skipped, read,
    )


Decode = Callable[[], "np.ndarray | str"]  # one image's decoding: its pixels, or why it cannot be read


def _pieces(sizes: Sequence[int]) -> list[slice]:
    """A batch cut into 1..DECODE_WORKERS consecutive pieces, one decoding task each: one task per
    ``PIECE_BYTES`` of encoded images. Small images decode fastest on one thread (Pillow parses a
    header in Python, under the GIL, and more threads only fight over it); large ones, whose pixels
    libjpeg decodes without the GIL, on several."""
    count = max(1, min(DECODE_WORKERS, len(sizes), sum(sizes) // PIECE_BYTES))
    bounds = [round(k * len(sizes) / count) for k in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _decoded_ahead(chunks: Iterable[tuple[T, list[Decode], list[int]]]) -> Iterator[tuple[T, list[np.ndarray | str]]]:
    """Each chunk (its key, one decoding per image, the images' encoded sizes) with its decoded
    images, in order; the next chunk decodes on a thread pool while the consumer works on this one."""
    with ThreadPoolExecutor(DECODE_WORKERS) as pool:
        def submit(key: T, decodes: list[Decode], sizes: list[int]) -> tuple[T, list[Future]]:
            return key, [pool.submit(lambda part=decodes[piece]: [decode() for decode in part]) for piece in _pieces(sizes)]

        def collect(key: T, futures: list[Future]) -> tuple[T, list[np.ndarray | str]]:
            return key, [image for future in futures for image in future.result()]

        ahead = None
        for chunk in chunks:
            previous, ahead = ahead, submit(*chunk)
            if previous is not None:
                yield collect(*previous)
        if ahead is not None:
            yield collect(*ahead)


@dataclass(frozen=True)
class FolderSource(Source):
    """A data-set folder on the server's disk (a class tree, or a flat folder without labels), read file by file."""

    folder: imagefolder.ImageFolder = field(kw_only=True)
    root: Path | None = field(default=None, kw_only=True)  # the data directory, resolved: files must resolve inside it

    def _read(self, index: int, framing: Framing) -> np.ndarray | str:
        data = read_file(self.folder.files[index], self.root, max_encoded_bytes(self.max_pixels))
        if isinstance(data, str):
            return data
        return _decode(ImageInput(encoded=data, label=self.path(index)), framing, self.max_pixels, self.gate)

    def _size(self, index: int) -> int:
        try:
            return os.stat(self.folder.files[index]).st_size
        except OSError:
            return 0  # reading it will say why

    def path(self, index: int) -> str:
        """The image's path relative to the data set (never the server's own paths)."""
        return self.folder.files[index].relative_to(self.folder.root).as_posix()

    def batches(self, framing: Framing) -> Iterator[Batch]:
        return self.take(range(self.start, self.stop), framing)

    def take(self, indices: Sequence[int] | np.ndarray, framing: Framing) -> Iterator[Batch]:
        """The images at ``indices`` (ascending) in batches; decoded in a thread pool, one batch ahead of the consumer."""
        bad = [int(i) for i in ([indices[0], indices[-1]] if len(indices) else []) if not 0 <= i < self.size]
        if bad:
            raise InvalidArgument(f"image index {bad[0]} is outside the data set's {self.size} images")
        chunks = ([int(i) for i in indices[b : b + self.batch_size]] for b in range(0, len(indices), self.batch_size))
        jobs = ((chunk, [functools.partial(self._read, i, framing) for i in chunk], [self._size(i) for i in chunk]) for chunk in chunks)
        for chunk, decoded in _decoded_ahead(jobs):
            labels = [int(self.folder.labels[i]) for i in chunk]
            yield _assemble(chunk, labels, [self.path(i) for i in chunk], decoded, len(chunk))


@dataclass(frozen=True)
class StreamedSource(Source):
    """Images the client streams: (start index, images, labels) parts, consecutive from ``start``.
    A batch ends early when its images took ``chunk_bytes`` as sent (0: no bound), so that the
    images received and not yet decoded (two batches: one decoding ahead) fit what a job holds for them."""

    parts: Iterable[tuple[int, list[ImageInput], Sequence[int]]] = ()
    chunk_bytes: int = 0

    def fitted(self, batch_size: int, streamed_bytes: int) -> StreamedSource:
        return replace(self, batch_size=batch_size, chunk_bytes=streamed_bytes // 4)

    def batches(self, framing: Framing) -> Iterator[Batch]:
        return self.take(range(self.start, self.stop), framing)

    def take(self, indices: Sequence[int] | np.ndarray, framing: Framing) -> Iterator[Batch]:
        """The images at ``indices`` (ascending), as the client streams them: each ImageBatch holds the
        next wanted images, at consecutive data-set indices. Decoded in a thread pool, one batch ahead
        of the consumer."""
        jobs = (
            (items, [functools.partial(_decode, image, framing, self.max_pixels, self.gate) for _, image, _ in items], [_encoded_size(image) for _, image, _ in items])
            for items in self._chunks(indices)
        )
        for items, decoded in _decoded_ahead(jobs):
            admission.consumed(sum(_sent_bytes(image) for _, image, _ in items))  # decoded: the images sent no longer count
            yield _assemble([i for i, _, _ in items], [lab for _, _, lab in items], [img.label for _, img, _ in items], decoded, len(items))

    def _full(self, pending: list[tuple[int, ImageInput, int]]) -> bool:
        return bool(self.chunk_bytes) and sum(_sent_bytes(image) for _, image, _ in pending) >= self.chunk_bytes

    def _take(self, pending: list[tuple[int, ImageInput, int]]) -> int:
        """How many pending images make the next batch: ``batch_size``, or fewer that took ``chunk_bytes``."""
        total = 0
        for n, (_, image, _) in enumerate(pending[: self.batch_size], 1):
            total += _sent_bytes(image)
            if self.chunk_bytes and total >= self.chunk_bytes:
                return n
        return min(len(pending), self.batch_size)

    def _chunks(self, indices: Sequence[int] | np.ndarray) -> Iterator[list[tuple[int, ImageInput, int]]]:
        """The streamed images in batches of ``batch_size`` (data-set index, image, label), checked
        against the images asked for as they arrive."""
        position = 0  # how many of ``indices`` have arrived
        end = int(indices[-1]) + 1 if len(indices) else self.start
        pending: list[tuple[int, ImageInput, int]] = []
        for begin, images, labels in self.parts:
            expected = int(indices[position]) if position < len(indices) else end
            if begin != expected:
                raise InvalidArgument(f"ImageBatch.start is {begin}; the next image expected is {expected} (batches must be consecutive)", reason="STREAM_OUT_OF_ORDER")
            if labels and len(labels) != len(images):
                raise InvalidArgument(f"ImageBatch at {begin}: {len(labels)} labels for {len(images)} images")
            last = position + len(images) - 1
            if last >= len(indices):
                raise InvalidArgument(f"ImageBatch at {begin}: {len(images)} images run past the last image asked for ({end - 1})")
            if images and int(indices[last]) != begin + len(images) - 1:
                raise InvalidArgument(f"ImageBatch at {begin}: {len(images)} images, but image {begin + len(images) - 1} is not asked for (send only the images asked for)")
            labels = list(labels) or [-1] * len(images)
            if any(not -1 <= lab < len(self.classes) for lab in labels):
                raise InvalidArgument(f"ImageBatch at {begin}: labels must be -1 or 0..{len(self.classes) - 1} (StreamedImages.classes)", reason="VALUE_OUT_OF_RANGE")
            pending.extend((begin + i, image, lab) for i, (image, lab) in enumerate(zip(images, labels)))
            position += len(images)
            while pending and (len(pending) >= self.batch_size or self._full(pending)):
                n = self._take(pending)
                yield pending[:n]
                pending = pending[n:]
        if pending:
            yield pending
        if position != len(indices):
            raise InvalidArgument(f"the client streamed images up to index {indices[position]}; the images asked for end at {end}")


class DatasetStore:
    """The named data sets of a server's ``--data-dir``: every folder (up to ``MAX_DEPTH`` deep) that
    holds images directly (a flat folder: no labels) or in its sub-folders (a class tree), named by its
    path relative to the root (:func:`zfnet.imagefolder.scan` reads it); the highest such folder is the
    data set (``group/<name>/<image>`` makes ``group`` a class tree of classes ``<name>``). Names only: a request never
    gives a path, and every file read must resolve inside the root (see the module doc)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root.resolve() if root is not None else None
        self._folders: dict[str, Path] = {}
        self._scanned: dict[str, imagefolder.ImageFolder] = {}
        if self.root is not None:
            if not self.root.is_dir():
                raise NotFound(f"data directory {root} does not exist")
            self._discover(self.root, self.root, 0)
            log.info("serving %d data set(s) from %s: %s", len(self._folders), root, ", ".join(sorted(self._folders)) or "none")

    def _discover(self, root: Path, folder: Path, depth: int) -> None:
        subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.resolve().is_relative_to(root))
        if depth > 0 and (imagefolder.holds_images(folder) or any(imagefolder.holds_images(p) for p in subfolders)):
            self._folders[folder.relative_to(root).as_posix()] = folder
            return
        if depth < MAX_DEPTH:
            for sub in subfolders:
                self._discover(root, sub, depth + 1)

    def names(self) -> list[str]:
        return sorted(self._folders)

    def folder(self, name: str) -> imagefolder.ImageFolder:
        """The scanned file list of data set ``name`` (scanned once)."""
        if name not in self._folders:
            known = ", ".join(self.names()) or "none (this server was started without a data directory)"
            raise NotFound(f"no data set named {name!r} on this server; it has: {known}", reason="DATASET_NOT_FOUND", resource=("dataset", name))
        if name not in self._scanned:
            self._scanned[name] = imagefolder.scan(self._folders[name], within=self.root)
        return self._scanned[name]

    def source(
        self, name: str, start: int = 0, stop: int = 0, batch_size: int = 0, max_pixels: int = MAX_IMAGE_PIXELS, gate: DecodeGate | None = None,
    ) -> FolderSource:
        folder = self.folder(name)
        start, stop, batch_size = _range(len(folder), start, stop, batch_size)
        return FolderSource(len(folder), list(folder.classes), start, stop, batch_size, max_pixels, gate, folder=folder, root=self.root)


def streamed_source(
    size: int, classes: list[str], parts: Iterable[tuple[int, list[ImageInput], Sequence[int]]],
    start: int = 0, stop: int = 0, batch_size: int = 0, max_pixels: int = MAX_IMAGE_PIXELS, gate: DecodeGate | None = None,
) -> StreamedSource:
    """A source over images the client streams."""
    if size <= 0:
        raise InvalidArgument("StreamedImages.size must be the number of images in the data set (> 0)", reason="VALUE_OUT_OF_RANGE")
    start, stop, batch_size = _range(size, start, stop, batch_size)
    return StreamedSource(size, list(classes), start, stop, batch_size, max_pixels, gate, parts=parts)

