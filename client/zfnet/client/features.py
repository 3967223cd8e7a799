"""Feature folders: what ``zfclient features`` writes and ``zfnet.client.probe`` reads.

A folder holds ``index.json`` and, in the default ``npy`` format, one ``<layer>.npy`` per layer
(rows x D in the job's float type) and ``labels.npy`` (int64, -1 where unknown). ``index.json``
describes the job and lists every row's image path once the job is finished; while it runs, the
paths of finished rows are appended to ``paths.jsonl``. Row ``r`` is image
``start + r`` of the data set, in data-set order. An image that cannot be read keeps its row: its
values are NaN, its label -1, and ``index.json``'s ``skipped`` list names it with the reason, so
rows, labels and ``paths`` always line up.

Rows are written in place as batches arrive (the files are created at their final size by
``numpy.lib.format.open_memmap``, then filled with positioned writes, so memory stays bounded
whatever the data set size), and ``index.json`` records how many rows are finished. A run that is
interrupted resumes where it stopped, at a batch boundary, so every image is computed in the same
batch as in an uninterrupted run and the files come out byte-identical. ``npz`` and ``parquet``
are packed from the same files at the end. A finished folder is never overwritten by a job with
other settings unless the caller forces it.

Free of gRPC: :class:`FeatureWriter` takes a :class:`~zfnet.wire.features.FeatureHeader` and
:class:`~zfnet.wire.features.FeatureBatch` es from any source (the client's stream, Ray actors).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zfnet.client.names import safe_name
from zfnet.errors import FailedPrecondition, InvalidArgument, NotFound
from zfnet.version import __version__
from zfnet.wire.features import PIXELS, FeatureBatch, FeatureHeader

INDEX = "index.json"
LABELS = "labels"
PATHS = "paths.jsonl"  # while a job runs: the finished rows' paths, one JSON string a line (index.json gets them at the end)
NPZ = "features.npz"
PARQUET = "features.parquet"
FORMATS = ("npy", "npz", "parquet")
COMMIT_SECONDS = 2.0  # how often index.json records the finished rows while a job runs
PARQUET_ROWS = 4096  # rows per parquet row group
# what must match for a run to continue (or to count as done) in an existing folder
JOB_KEYS = ("model_sha256", "data", "classes", "start", "stop", "asked", "dtype", "format", "batch_size", "zfnet_version")


def file_stems(names: Sequence[str]) -> list[str]:
    """A file-name-safe, unique stem per layer name (``labels`` stays reserved)."""
    stems: list[str] = []
    for name in names:
        stem = safe_name(name)
        base, k = stem, 1
        while stem in stems or stem == LABELS:
            k += 1
            stem = f"{base}-{k}"
        stems.append(stem)
    return stems


def _write_json(path: Path, data: dict) -> None:
    """Replace ``path`` atomically: a reader sees the old index or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_index(folder: Path) -> dict:
    """A folder's index.json, or a clear error."""
    path = Path(folder) / INDEX
    if not path.is_file():
        raise NotFound(f"{folder} is not a features folder: it has no {INDEX} (write one with `zfclient features`)")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"{path} is not valid JSON ({err}); re-extract the features") from None
    missing = [k for k in (*JOB_KEYS, "layers", "rows", "done", "complete") if k not in index]
    if missing:
        raise InvalidArgument(f"{path} lacks {', '.join(missing)}: it was not written by `zfclient features`")
    return index


class RowFile:
    """One ``.npy`` file of ``rows`` x ``width`` values, created at full size, filled by row ranges."""

    def __init__(self, path: Path, rows: int, width: int | None, dtype: np.dtype, create: bool) -> None:
        self.path, self.dtype = path, np.dtype(dtype)
        shape = (rows,) if width is None else (rows, width)
        self.row_bytes = self.dtype.itemsize * (1 if width is None else width)
        if create:
            array = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=shape)
            self.offset = array.offset
            del array
        else:
            self.offset = check_npy(path, shape, self.dtype)
        self._file = open(path, "r+b")

    def write(self, row: int, values: np.ndarray) -> None:
        os.pwrite(self._file.fileno(), np.ascontiguousarray(values, self.dtype).data.cast("B"), self.offset + row * self.row_bytes)

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class PathLog:
    """The paths of finished rows, appended as rows finish, so that neither memory nor the cost of
    recording progress grows with the data set; continuing keeps the first ``keep`` lines."""

    def __init__(self, path: Path, keep: int) -> None:
        self.path = path
        if keep and not path.is_file():
            raise InvalidArgument(f"{path} is missing: the folder's paths of its {keep} finished rows are lost; use --force to start over")
        if keep:
            offset = 0
            with open(path, "rb") as f:
                for _ in range(keep):
                    line = f.readline()
                    if not line.endswith(b"\n"):
                        raise InvalidArgument(f"{path} lists fewer paths than the {keep} finished rows; use --force to start over")
                    offset += len(line)
            self._file = open(path, "r+b")
            self._file.truncate(offset)
            self._file.seek(offset)
        else:
            self._file = open(path, "wb")
        self.count = keep

    def append(self, path: str) -> None:
        self._file.write(json.dumps(path).encode() + b"\n")
        self.count += 1

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def lines(path: Path) -> Iterator[str]:
        """The logged paths, each still a JSON string."""
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\n")


def check_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """The data offset of an ``.npy`` file, after checking its header and its length."""
    if not path.is_file():
        raise NotFound(f"{path} is missing from the features folder")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            found_shape, fortran, found_dtype = read_header(f)
            offset = f.tell()
    except ValueError as err:
        raise InvalidArgument(f"{path} is not a valid .npy file ({err})") from None
    if tuple(found_shape) != tuple(shape) or found_dtype != dtype or fortran:
        raise InvalidArgument(
            f"{path} holds {found_dtype} {list(found_shape)}, but {INDEX} says {np.dtype(dtype)} {list(shape)}: "
            "the file is from another job"
        )
    expected = offset + math.prod(shape) * np.dtype(dtype).itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise InvalidArgument(f"{path} is truncated or damaged: {actual} bytes, expected {expected}")
    return offset


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


class FeatureWriter:
    """Writes one features job into ``out``, resumably.

    ``job`` holds the settings that identify the job (:data:`JOB_KEYS`, except the version, which is
    added). Opening a folder that holds the same job continues it (``done`` rows are finished);
    another job's finished or partial files are refused unless ``force``, which deletes them.
    """

    def __init__(self, out: Path, job: dict, force: bool = False) -> None:
        self.out = Path(out)
        self.job = {"zfnet_version": __version__, **job}
        if self.job["format"] not in FORMATS:
            raise InvalidArgument(f"unknown format {self.job['format']!r}; use {', '.join(FORMATS)}")
        self.index: dict | None = None
        self.done = 0
        if (self.out / INDEX).is_file():
            old = read_index(self.out)
            differs = [k for k in JOB_KEYS if old.get(k) != self.job[k]]
            if differs and not force:
                key = differs[0]
                state = "finished" if old["complete"] else f"partial ({old['done']} of {old['rows']} rows)"
                more = f", and {', '.join(differs[1:])} differ" if len(differs) > 1 else ""
                raise FailedPrecondition(
                    f"{self.out} holds {state} features of another job ({key}: {_short(old.get(key))} there, "
                    f"{_short(self.job[key])} now{more}); choose another --out, or --force to replace them"
                )
            if differs:
                self._delete(old)
            else:
                self.index = old
                self.done = old["done"]
        elif self.out.is_dir() and not force:
            clash = [p.name for p in self.out.iterdir() if p.suffix == ".npy" or p.name in (NPZ, PARQUET)]
            if clash:
                raise FailedPrecondition(f"{self.out} already holds {', '.join(sorted(clash))} without an {INDEX}; choose another --out, or --force")
        self._files: list[RowFile] = []
        self._labels: RowFile | None = None
        self._paths: PathLog | None = None
        self._batch_size = self.job["batch_size"]
        self._ahead: dict[int, str] = {}  # rows filled beyond the finished prefix -> path
        self._last_commit = 0.0
        self._recorder = ThreadPoolExecutor(1, thread_name_prefix="zfnet-features-index")
        self._recording: Future | None = None

    @property
    def complete(self) -> bool:
        return bool(self.index and self.index["complete"])

    @property
    def rows(self) -> int:
        return self.job["stop"] - self.job["start"]

    @property
    def skipped(self) -> list[dict]:
        """The skipped images recorded (none before a job begins)."""
        return self.index["skipped"] if self.index is not None else []

    def resume_start(self) -> int:
        """The data-set index the job continues from."""
        return self.job["start"] + self.done

    def _delete(self, old: dict) -> None:
        for name in [layer["file"] for layer in old["layers"]] + [LABELS + ".npy", NPZ, PARQUET, PATHS, INDEX]:
            (self.out / name).unlink(missing_ok=True)

    def begin(self, header: FeatureHeader) -> None:
        """Open the files for the job's header: create them, or check the existing ones to continue."""
        if header.start != self.resume_start() or header.stop != self.job["stop"]:
            raise InvalidArgument(f"the job reads [{header.start}, {header.stop}); the folder needs [{self.resume_start()}, {self.job['stop']})")
        layers = [
            {"name": s.name, "number": s.number, "pooling": s.pooling, "layer_shape": list(s.layer_shape), "shape": list(s.shape), "size": s.size, "file": f"{stem}.npy"}
            for s, stem in zip(header.layers, file_stems([s.name for s in header.layers]))
        ]
        create = self.index is None
        if self.index is None:
            self.out.mkdir(parents=True, exist_ok=True)
            self.index = {
                **self.job, "model_name": self.job.get("model_name", ""), "layers": layers, "rows": self.rows,
                "row_index": "row r holds image start + r of the data set; skipped images keep their row (NaN values, label -1)",
                "done": 0, "complete": False, "skipped": [], "files": {},
            }
        elif self.index["layers"] != layers:
            raise FailedPrecondition(f"the server resolved the layers differently from {self.out / INDEX}; use --force to start over")
        if self.complete:
            return
        self._batch_size = header.batch_size or self.job["batch_size"]  # as the server runs it
        dtype = np.dtype(header.dtype)
        self._files = [RowFile(self.out / layer["file"], self.rows, layer["size"], dtype, create) for layer in layers]
        self._labels = RowFile(self.out / f"{LABELS}.npy", self.rows, None, np.dtype("<i8"), create)
        self._paths = PathLog(self.out / PATHS, 0 if create else self.done)
        self.index["skipped"] = [s for s in self.index["skipped"] if s["row"] < self.done]
        self._commit()

    def write(self, batch: FeatureBatch) -> None:
        """Write a batch's rows (and NaN rows for its skipped images) in place."""
        index, labels, paths = self._open()
        start = self.job["start"]
        rows = batch.indices - start
        for begin, end in _runs(rows):
            k = np.searchsorted(rows, begin)
            for file, values in zip(self._files, batch.features):
                file.write(int(begin), values[k : k + end - begin])
            labels.write(int(begin), batch.labels[k : k + end - begin])
        for row, path in zip(rows.tolist(), batch.paths):
            self._ahead[row] = path
        for s in batch.skipped:
            row = s.index - start
            for file in self._files:
                file.write(row, np.full((1, file.row_bytes // file.dtype.itemsize), np.nan))
            labels.write(row, np.asarray([-1]))
            self._ahead[row] = s.path
            index["skipped"].append({"row": row, "index": s.index, "path": s.path, "reason": s.reason})
        while paths.count in self._ahead:
            paths.append(self._ahead.pop(paths.count))
        if time.monotonic() - self._last_commit > COMMIT_SECONDS and (self._recording is None or self._recording.done()):
            self._wait()
            self._recording = self._recorder.submit(self._record, self._snapshot())
            self._last_commit = time.monotonic()

    def _snapshot(self) -> dict:
        """index.json as it will record the finished rows: whole batches only, so that a resumed job
        reads every image in the same batch as an uninterrupted one."""
        index, _, paths = self._open()
        filled = paths.count
        batch = self._batch_size
        done = filled if filled == self.rows else filled // batch * batch
        index["done"] = done
        return {**index, "skipped": [s for s in index["skipped"] if s["row"] < done]}

    def _open(self) -> tuple[dict, RowFile, PathLog]:
        """The index, label file and path log of the job :meth:`begin` opened and :meth:`close` has not closed."""
        if self.index is None or self._labels is None or self._paths is None:
            raise FailedPrecondition(f"no features job is open on {self.out}: begin() opens one, close() ends it")
        return self.index, self._labels, self._paths

    def _record(self, index: dict) -> None:
        """Make the rows durable (fsync), then say in index.json that they are finished. Runs on the
        writer's own thread while the job goes on: syncing 10 files took 5% of a job's time."""
        for file in [*self._files, self._labels, self._paths]:
            file.sync()
        _write_json(self.out / INDEX, index)
        self.done = index["done"]

    def _wait(self) -> None:
        """Wait for the recording in flight, and raise what it raised."""
        recording, self._recording = self._recording, None
        if recording is not None:
            recording.result()

    def _commit(self) -> None:
        """Record the finished rows now."""
        self._wait()
        self._record(self._snapshot())
        self._last_commit = time.monotonic()

    def close(self) -> None:
        """Record what is finished and close the files (also after an interruption)."""
        if self._labels is None:
            return
        try:
            self._commit()
        finally:
            self._recorder.shutdown(wait=True)
            for file in [*self._files, self._labels, self._paths]:
                file.close()
            self._files, self._labels, self._paths = [], None, None

    def finish(self) -> None:
        """After the last batch: check every row is there, pack npz/parquet, record checksums."""
        self.close()
        if self.complete:
            return
        if self.index is None or self.done != self.rows:  # no index: the job never began
            raise FailedPrecondition(f"the job ended after {self.done} of {self.rows} rows; run it again to finish")
        names = [layer["file"] for layer in self.index["layers"]] + [f"{LABELS}.npy"]
        fmt = self.job["format"]
        if fmt == "npz":
            _pack_npz(self.out, self.index)
        elif fmt == "parquet":
            _pack_parquet(self.out, self.index)
        if fmt != "npy":
            for name in names:
                (self.out / name).unlink()
            packed = NPZ if fmt == "npz" else PARQUET
            for layer in self.index["layers"]:  # where each layer's rows are now: an array of the npz, a column of the parquet file
                layer.update({"file": packed, "key": Path(layer["file"]).stem} if fmt == "npz" else {"file": packed, "column": layer["name"]})
            names = [packed]
        self.index["files"] = {name: {"bytes": (self.out / name).stat().st_size, "sha256": _sha256(self.out / name)} for name in names}
        self.index["complete"] = True
        _write_final_index(self.out, self.index)
        (self.out / PATHS).unlink()


def _write_final_index(out: Path, index: dict) -> None:
    """index.json with ``paths`` (last), copied line by line from the path log: never all in memory."""
    head, tail = json.dumps({**index, "paths": None}, indent=1).rsplit('"paths": null', 1)
    tmp = out / (INDEX + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(head + '"paths": [')
        for k, line in enumerate(PathLog.lines(out / PATHS)):
            f.write(("," if k else "") + "\n  " + line)
        f.write("\n ]" + tail)
    os.replace(tmp, out / INDEX)


def _runs(rows: np.ndarray) -> Iterable[tuple[int, int]]:
    """Maximal runs of consecutive values in an increasing array, as [begin, end)."""
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    return [(int(rows[s]), int(rows[e - 1]) + 1) for s, e in zip(starts, ends)]


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _open_layers(out: Path, index: dict) -> tuple[list[np.ndarray], np.ndarray]:
    dtype, rows = np.dtype(index["dtype"]), index["rows"]
    for layer in index["layers"]:
        check_npy(out / layer["file"], (rows, layer["size"]), dtype)
    check_npy(out / f"{LABELS}.npy", (rows,), np.dtype("<i8"))
    arrays = [np.load(out / layer["file"], mmap_mode="r") for layer in index["layers"]]
    return arrays, np.load(out / f"{LABELS}.npy", mmap_mode="r")


def _pack_npz(out: Path, index: dict) -> None:
    """One ``features.npz``: an array per layer (keyed by its file stem) and ``labels``."""
    arrays, labels = _open_layers(out, index)
    tmp = out / (NPZ + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, allow_pickle=True, **{Path(layer["file"]).stem: a for layer, a in zip(index["layers"], arrays)}, **{LABELS: labels})
    os.replace(tmp, out / NPZ)


def _pack_parquet(out: Path, index: dict) -> None:
    """One ``features.parquet``: columns ``row``, ``index``, ``path``, ``label``, then one fixed-size
    list column per layer (named by the layer), written in row groups of PARQUET_ROWS."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays, labels = _open_layers(out, index)
    names = [layer["name"] for layer in index["layers"]]
    clash = sorted(set(names) & {"row", "index", "path", "label"})
    if clash:
        raise InvalidArgument(f"layer name(s) {', '.join(clash)} clash with parquet's metadata columns; use --format npy")
    value_type = pa.from_numpy_dtype(np.dtype(index["dtype"]))
    schema = pa.schema(
        [("row", pa.int64()), ("index", pa.int64()), ("path", pa.string()), ("label", pa.int64())]
        + [(name, pa.list_(value_type, layer["size"])) for name, layer in zip(names, index["layers"])]
    )
    tmp = out / (PARQUET + ".tmp")
    paths = PathLog.lines(out / PATHS)
    with pq.ParquetWriter(tmp, schema) as writer:
        for begin in range(0, index["rows"], PARQUET_ROWS):
            end = min(begin + PARQUET_ROWS, index["rows"])
            columns = [
                pa.array(np.arange(begin, end, dtype=np.int64)), pa.array(np.arange(begin, end, dtype=np.int64) + index["start"]),
                pa.array([json.loads(next(paths)) for _ in range(begin, end)], pa.string()), pa.array(np.asarray(labels[begin:end])),
            ] + [pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(a[begin:end]).reshape(-1)), a.shape[1]) for a in arrays]
            writer.write_batch(pa.record_batch(columns, schema=schema))
    os.replace(tmp, out / PARQUET)


# -- reading -------------------------------------------------------------------------------------
@dataclass
class FeatureSet:
    """A finished features folder, checked against its index.json: arrays by layer name."""

    folder: Path
    index: dict
    arrays: dict[str, np.ndarray]  # layer name -> (rows, D); memory-mapped for npy
    labels: np.ndarray  # (rows,) int64

    @property
    def classes(self) -> list[str]:
        return list(self.index["classes"])

    @property
    def layers(self) -> list[dict]:
        return list(self.index["layers"])

    @property
    def skipped_rows(self) -> np.ndarray:
        return np.asarray(sorted(s["row"] for s in self.index["skipped"]), np.int64)


def load(folder: str | Path, verify: bool = True) -> FeatureSet:
    """Open a finished features folder (any format). Checks the files against index.json: present,
    of the recorded length and, with ``verify``, of the recorded SHA-256 (files from another job or
    model, or truncated ones, are refused with the file named)."""
    folder = Path(folder)
    index = read_index(folder)
    if not index["complete"]:
        raise FailedPrecondition(f"{folder} holds a partial job ({index['done']} of {index['rows']} rows); run the same `zfclient features` command again to finish it")
    for name, meta in index["files"].items():
        path = folder / name
        if not path.is_file():
            raise NotFound(f"{path} is missing (listed in {INDEX})")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise InvalidArgument(f"{path} is truncated or replaced: {size} bytes, {INDEX} says {meta['bytes']}")
        if verify and _sha256(path) != meta["sha256"]:
            raise InvalidArgument(f"{path} does not match {INDEX} (SHA-256 differs): it was written by another job or model; re-extract")
    rows, dtype = index["rows"], np.dtype(index["dtype"])
    fmt = index["format"]
    if fmt == "npy":
        arrays = {}
        for layer in index["layers"]:
            check_npy(folder / layer["file"], (rows, layer["size"]), dtype)
            arrays[layer["name"]] = np.load(folder / layer["file"], mmap_mode="r")
        check_npy(folder / f"{LABELS}.npy", (rows,), np.dtype("<i8"))
        labels = np.load(folder / f"{LABELS}.npy")
    elif fmt == "npz":
        with np.load(folder / NPZ) as data:
            arrays = {layer["name"]: data[layer["key"]] for layer in index["layers"]}
            labels = data[LABELS]
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(folder / PARQUET)
        arrays = {
            layer["name"]: table.column(layer["column"]).combine_chunks().flatten().to_numpy().reshape(rows, layer["size"])
            for layer in index["layers"]
        }
        labels = table.column("label").to_numpy()
    for layer in index["layers"]:
        if arrays[layer["name"]].shape != (rows, layer["size"]) or arrays[layer["name"]].dtype != dtype:
            raise InvalidArgument(f"{folder}: layer {layer['name']} is {arrays[layer['name']].shape}, {INDEX} says ({rows}, {layer['size']})")
    return FeatureSet(folder, index, arrays, np.asarray(labels, np.int64))


# -- the job ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SaveResult:
    folder: Path
    rows: int
    resumed_from: int  # rows already finished when this run began
    skipped: int
    complete_before: bool  # the folder already held this finished job


def save(
    client, model: str | Path, data: str | Path, layers: Sequence[str | int], out: str | Path, pool: str = "none",
    layer_pool: dict[str, str] | None = None, dtype: str = "float32", fmt: str = "npy", start: int = 0, stop: int = 0,
    batch_size: int = 64, force: bool = False, on_progress: Callable[[int, int], None] | None = None,
) -> SaveResult:
    """Extract ``layers`` (numbers, names, ``all`` for every numbered layer; ``pixels`` is always added) over a data set into ``out`` with ``client`` (a
    :class:`zfnet.client.api.Client`); continue an interrupted job. ``on_progress(done, total)`` is
    called after each batch with images done in the whole range."""
    layers = [str(x) for x in layers]
    if "all" in layers:
        numbered = [str(x.number) for x in client.model_info(model).layers if x.number]
        layers = [y for x in layers for y in (numbered if x == "all" else [x])]
    if PIXELS not in layers:
        layers.append(PIXELS)
    dataset = client.dataset(data, start, stop, batch_size)
    local = dataset.folder is not None
    sha = client.model_ref(model).sha256 or client.model_info(model).sha256
    job = {
        "model_sha256": sha, "model_name": Path(str(model)).name,
        "data": {"name": str(Path(data).resolve()) if local else str(data), "size": dataset.size, "streamed": local},
        "classes": dataset.classes, "start": dataset.start, "stop": dataset.stop, "dtype": dtype, "batch_size": batch_size,
        "format": fmt, "asked": {"layers": layers, "pool": pool, "layer_pool": dict(sorted((layer_pool or {}).items()))},
    }
    writer = FeatureWriter(Path(out), job, force)
    if writer.complete:
        return SaveResult(writer.out, writer.rows, writer.rows, len(writer.skipped), True)
    resumed = writer.done
    stream = client.features(
        model, client.dataset(data, writer.resume_start(), dataset.stop, batch_size) if resumed else dataset,
        layers, pool, layer_pool, dtype,
    )
    try:
        writer.begin(stream.header)
        for batch in stream:
            writer.write(batch)
            if on_progress:
                on_progress(resumed + batch.done, writer.rows)
    finally:
        stream.close()
        writer.close()
    writer.finish()
    return SaveResult(writer.out, writer.rows, resumed, len(writer.skipped), False)
