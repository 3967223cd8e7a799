"""Data sets for jobs over many images: a named data set on the server, or a local image folder the
client streams (bounded memory: read lazily, in ImageBatch messages)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from zfnet import errors, imagefolder
from zfnet.client.models import Models
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.wire.common import DataSource, ImageBatch, ImageInput, StreamedImages

STREAM_IMAGES = 128  # images per ImageBatch message when the client streams a data set, at most
STREAM_BYTES = 4 << 20  # and bytes of images per message, at most (one larger image travels alone): a server holds a bounded share of its memory for them


@dataclass(frozen=True)
class Dataset:
    """The images of a data-set job: a named data set on the server, or a local folder the client streams."""

    source: DataSource
    size: int
    classes: list[str]
    folder: imagefolder.ImageFolder | None  # the local folder when the client streams it
    shown: str = ""  # how results name the streamed images' folder (the path as given); "": its root

    @property
    def start(self) -> int:
        return self.source.start

    @property
    def stop(self) -> int:
        return self.source.stop or self.size

    def part(self, start: int, stop: int) -> Dataset:
        """The same data set, indices ``[start, stop)`` only (a shard, or what is left to read)."""
        return replace(self, source=replace(self.source, start=start, stop=stop))

    def local_folder(self) -> imagefolder.ImageFolder:
        """The local folder the client streams; a clear error for a data set on the server."""
        if self.folder is None:
            raise errors.InvalidArgument(f"data set {self.source.dataset!r} is on the server; only a local folder is streamed")
        return self.folder

    def full_path(self, index: int, path: str) -> Path:
        """Where image ``index`` (named ``path`` in results) is: its absolute path in a local folder;
        on the server, its path inside the named data set (the server's own paths are never shown)."""
        if self.folder is not None:
            return self.folder.files[index].absolute()
        return Path(str(self.source.dataset)) / path

    def path(self, index: int) -> str:
        """How results name a streamed image: its path, under ``shown`` when given."""
        folder = self.local_folder()
        return str(Path(self.shown) / folder.files[index].relative_to(folder.root)) if self.shown else str(folder.files[index])

    def batches(self, images_per_message: int = STREAM_IMAGES, indices: Iterable[int] | None = None) -> Iterator[pb.ImageBatch]:
        """The local folder's images ``[start, stop)``, or only those at ``indices`` (ascending), as
        ImageBatch messages of consecutive images, read lazily (bounded memory)."""
        folder = self.local_folder()
        wanted = range(self.start, self.stop) if indices is None else indices
        taken = [-1, 0]  # the message being filled: its first index, its bytes so far

        def cut(begin: int, i: int) -> bool:
            if taken[0] != begin:
                taken[:] = [begin, _size(folder.files[begin])]
            size = _size(folder.files[i])
            if i - begin >= images_per_message or taken[1] + size > STREAM_BYTES:
                return True
            taken[1] += size
            return False

        for begin, end in runs(wanted, cut):
            images = [ImageInput(encoded=_read_bytes(folder.files[i]), label=self.path(i)) for i in range(begin, end)]
            yield ImageBatch(begin, images, [int(x) for x in folder.labels[begin:end]]).to_proto()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # reading it will say why


def runs(indices: Iterable[int], cut: Callable[[int, int], bool]) -> Iterator[tuple[int, int]]:
    """Ascending ``indices`` as [begin, end) runs of consecutive numbers; ``cut(begin, i)`` starts a
    new run at ``i`` even where it follows on."""
    begin = end = -1
    for i in map(int, indices):
        if i == end and not cut(begin, i):
            end += 1
            continue
        if end >= 0:
            yield begin, end
        begin, end = i, i + 1
    if end >= 0:
        yield begin, end


def _read_bytes(path: Path) -> bytes:
    """A file's bytes; an unreadable file travels as no bytes, and the server skips it with the reason."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def local_dataset(path: Path, start: int = 0, stop: int = 0, batch_size: int = 0, classes: Sequence[str] | None = None, shown: str = "") -> Dataset:
    """A local image folder as a data set the client streams: a class tree (``path/<class>/<image>``),
    or a flat folder, without labels (:func:`zfnet.imagefolder.scan`'s rule)."""
    folder = imagefolder.scan(path, classes)
    streamed = StreamedImages(len(folder), tuple(folder.classes))
    return _checked(Dataset(DataSource(streamed=streamed, start=start, stop=stop, batch_size=batch_size), len(folder), list(folder.classes), folder, shown))


def _checked(dataset: Dataset) -> Dataset:
    if not 0 <= dataset.start <= dataset.stop <= dataset.size:
        raise errors.InvalidArgument(f"range [{dataset.start}, {dataset.source.stop}) is outside the data set's {dataset.size} images")
    return dataset


class DatasetsFacade(Models):
    """Data sets, and the jobs that read them (a job message, then the images when the client streams them)."""

    def dataset(self, data: str | Path, start: int = 0, stop: int = 0, batch_size: int = 0, classes: Sequence[str] | None = None) -> Dataset:
        """A local image folder (a class tree ``data/<class>/<image>`` or a flat folder, streamed by this client) or the name of a data
        set on the server; ``[start, stop)`` picks a range of its images (0 = to the end)."""
        path = Path(data)
        if path.is_dir():
            return local_dataset(path, start, stop, batch_size, classes)
        known = {d.name: d for d in self.list_datasets()}
        if str(data) not in known:
            raise errors.NotFound(
                f"{data} is neither a local image folder nor a data set on the server "
                f"(it has: {', '.join(sorted(known)) or 'none; start zfserver with --data-dir'})"
            )
        info = known[str(data)]
        return _checked(Dataset(DataSource(info.name, None, start, stop, batch_size), info.size, list(info.classes), None))

    def _job(self, method, job: object, dataset: Dataset, wrap: Callable[[pb.ImageBatch], object], indices: Iterable[int] | None = None) -> Iterator:
        """Run a data-set job: ``job`` (the first request), then, when the client streams the data,
        every ImageBatch (of the range, or of ``indices`` only) wrapped as a request; yields the replies as they come."""

        def requests():
            yield job
            if dataset.folder is not None:
                yield from (wrap(batch) for batch in dataset.batches(indices=indices))

        return self._stream(method, requests())
