"""Data-set jobs on Ray: the top-k pass over a local image folder, spread over a pool of actors.

The folder's file list becomes a Ray Data dataset (one row per image: its data-set index);
``map_batches`` sends blocks of rows to a pool of actors, each holding one zfnet engine in-process
(:class:`zfnet.server.engine.Engine`, no gRPC; CPU, or one GPU each). A scan actor returns the
partial :class:`~zfnet.topk.TopK` of its rows; the driver merges them with :meth:`TopK.merge`, the
same associative merge that joins shards, so the result equals the single-process job's exactly.
The winners' reconstructions run on actors too. A worker that dies is restarted by Ray and its
block runs again; a block's partial state covers only its own rows, so nothing counts twice.

Ray is an optional extra (``pip install zfnet[ray]``), imported only here. Another data-set job
(streamed features, for one) plugs in as one more :class:`EngineWorker` subclass whose output rows
carry their data-set indices, which the driver writes in place as blocks arrive (:func:`run` yields
them in any order).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from zfnet import imagefolder
from zfnet.client.api import TopEntry, TopImage, TopResult, model_bytes
from zfnet.errors import FailedPrecondition, InvalidArgument
from zfnet.topk import EMPTY, TopK

STREAMED = "streamed"  # how a state names a local folder's data set, as the single-process job does (topk_proto.data_name)
BLOCKS_PER_TASK = 4  # forward batches per Ray task: fewer, larger tasks; a retried task redoes at most this many
OnProgress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class Cluster:
    """Where and how wide a Ray job runs."""

    address: str | None = None  # a Ray cluster ("auto", "ray://host:10001"); None or "local": start a local one
    workers: int = 2  # actors in the pool
    gpus_per_worker: float = 0.0  # 1: each actor holds one GPU (onnxruntime's CUDA provider)
    cpus_per_worker: float | None = None  # None: a share of the cluster's CPUs that leaves one for Ray Data's own tasks, at most 1
    num_cpus: int | None = None  # logical CPUs of a local cluster (None: the machine's)


def _ray():
    try:
        import ray  # noqa: PLC0415  (an optional extra, only for --ray)
    except ImportError:
        raise InvalidArgument("--ray needs Ray: pip install 'zfnet[ray]'") from None
    return ray


def connect(cluster: Cluster):
    """Join ``cluster.address``, or start a local Ray (progress bars off: the caller shows its own)."""
    ray = _ray()
    if not ray.is_initialized():
        if cluster.address in (None, "", "local"):
            ray.init(num_cpus=cluster.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    from ray.data import DataContext  # noqa: PLC0415

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines would break the progress bar
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray


def file_list_source(folder: imagefolder.ImageFolder, shown: str, start: int, stop: int, batch_size: int):
    """A folder's images as the engine reads them, each named as the client names the images it
    streams (the path under the folder as the user gave it), so results match the single-process
    job's field for field."""
    from zfnet.server.datasets import FolderSource  # noqa: PLC0415

    class FileListSource(FolderSource):
        def path(self, index: int) -> str:
            return str(Path(shown) / self.folder.files[index].relative_to(self.folder.root))

    return FileListSource(len(folder), list(folder.classes), start, stop, batch_size, folder=folder)


class EngineWorker:
    """A Ray actor's state: one engine holding the model, and the data set's file list. The actor
    reads both from the paths the driver read (a shared file system), so that its constructor's
    arguments stay small (a restarted actor needs nothing from the object store), and checks they
    are what the driver saw."""

    def __init__(self, model: str, sha256: str, folder: str, shown: str, size: int, batch_size: int) -> None:
        from zfnet.server.admission import MemoryBudget  # noqa: PLC0415  (onnxruntime loads in the actor only)
        from zfnet.server.engine import Engine  # noqa: PLC0415
        from zfnet.server.models import ModelStore  # noqa: PLC0415

        data = model_bytes(Path(model))
        if hashlib.sha256(data).hexdigest() != sha256:
            raise FailedPrecondition(f"model {model} changed while the Ray job ran (or differs on this node)")
        self.folder = imagefolder.scan(folder)
        if len(self.folder) != size:
            raise FailedPrecondition(f"{folder} holds {len(self.folder)} images on this node; the job started with {size}")
        self.engine = Engine(ModelStore(None, len(data) + 1, MemoryBudget.for_process()))
        self.model = self.engine.store.add(data, Path(model).stem)
        self.batch_size, self.shown = batch_size, shown

    def source(self, start: int, stop: int):
        return file_list_source(self.folder, self.shown, start, stop, self.batch_size)

    def runs(self, indices: np.ndarray) -> Iterator[tuple[int, int]]:
        """Ascending ``indices`` as consecutive runs, cut at multiples of the batch size, so that every
        forward pass holds the images the single-process job's pass at that position holds."""
        begin = None
        for i in (int(x) for x in np.sort(indices)):
            if begin is not None and i == end and i % self.batch_size:
                end += 1
                continue
            if begin is not None:
                yield begin, end
            begin, end = i, i + 1
        if begin is not None:
            yield begin, end


class ScanWorker(EngineWorker):
    """Scans its rows' images; returns one partial top-k state per block."""

    def __init__(self, model: str, sha256: str, folder: str, shown: str, size: int, batch_size: int, job: dict) -> None:
        super().__init__(model, sha256, folder, shown, size, batch_size)
        self.job = job

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = None
        for start, stop in self.runs(batch["index"]):
            parts = self.engine.top(self.model, self.source(start, stop), stage="scan", state=None, method=None, **self.job)
            final = [p for p in parts if getattr(p, "final", False)][-1].state
            state = final if state is None else state.merge(final)
        return {"state": np.array([pickle.dumps(state)], dtype=object), "images": np.array([len(batch["index"])])}


class ReconstructWorker(EngineWorker):
    """Reconstructs the winners among its rows' images: their images and entries, pickled."""

    def __init__(self, model: str, sha256: str, folder: str, shown: str, size: int, batch_size: int, state: TopK, method: str) -> None:
        super().__init__(model, sha256, folder, shown, size, batch_size)
        self.state, self.method = state, method

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mine = only_winners(self.state, batch["index"])
        source = self.source(0, len(self.folder))
        parts = list(self.engine.top(self.model, source, data=self.state.data, layers=[], channels=None, k=self.state.k, by=self.state.by,
                                     method=self.method, stage="reconstruct", state=mine))
        kept = [p for p in parts if type(p).__name__ in ("WinnerImage", "Entry")]
        return {"parts": np.array([pickle.dumps(kept)], dtype=object), "images": np.array([len(batch["index"])])}


def only_winners(state: TopK, indices: np.ndarray) -> TopK:
    """``state`` with every winner whose image is not among ``indices`` emptied (ranks kept)."""
    mine = state.copy()
    for top in mine.layers.values():
        top.indices[~np.isin(top.indices, indices)] = EMPTY
    return mine


def run(ray, rows: Sequence[int], worker: type, arguments: dict, cluster: Cluster, batch_rows: int,
        stage: str, on_progress: OnProgress | None) -> Iterator[dict]:
    """Send ``rows`` (data-set indices) through a pool of ``cluster.workers`` actors of class ``worker``
    in blocks of ``batch_rows``; yields each block's output row as it arrives (in any order)."""
    from ray.data import ActorPoolStrategy  # noqa: PLC0415

    total, done = len(rows), 0
    if on_progress is not None:
        on_progress(stage, 0, total)
    if not total:
        return
    dataset = ray.data.from_items([{"index": int(i)} for i in rows], override_num_blocks=max(1, -(-total // batch_rows)))
    # Actors that take every logical CPU starve Ray Data's own tasks and the job hangs (../shared/notes/ray.md):
    # each asks for a share that leaves one CPU free. onnxruntime's threads use the cores regardless.
    cpus = cluster.cpus_per_worker or max(0.05, min(1.0, (ray.cluster_resources().get("CPU", 1.0) - 1) / cluster.workers))
    resources = {"num_cpus": cpus, **({"num_gpus": cluster.gpus_per_worker} if cluster.gpus_per_worker else {})}
    mapped = dataset.map_batches(
        worker, fn_constructor_kwargs=arguments, batch_size=batch_rows, batch_format="numpy",
        compute=ActorPoolStrategy(size=cluster.workers), **resources,  # Ray Data restarts a dead actor and retries its block
    )
    for out in mapped.iter_rows():
        done += int(out["images"])
        if on_progress is not None:
            on_progress(stage, done, total)
        yield out


def top(
    model: str | Path, data: str | Path, layers: Sequence[str | int], k: int = 9, by: str = "max", channels: Sequence[int] | None = None,
    method: str = "deconvnet", batch_size: int = 64, cluster: Cluster | None = None, state: TopK | None = None,
    scan_only: bool = False, on_progress: OnProgress | None = None, start: int = 0, stop: int = 0,
    scan_worker: type[ScanWorker] = ScanWorker, on_checkpoint: Callable[[TopK], None] | None = None, checkpoint_every: int = 1024,
) -> TopResult | TopK:
    """Top-``k`` images per channel of ``layers`` over the local folder ``data`` (indices ``[start,
    stop)``, 0: to the end) on Ray, with their reconstructions: the same result as
    :meth:`zfnet.client.api.Client.top` on that folder. With ``state`` (a checkpoint or merged shards)
    only what it has not read is scanned; ``scan_only`` returns the merged state. ``on_checkpoint``
    gets the state merged so far every ``checkpoint_every`` images (blocks finish in any order: its
    covered ranges may have gaps, which a resumed job reads)."""
    cluster = cluster or Cluster()
    folder_path = Path(data)
    if not folder_path.is_dir():
        raise InvalidArgument(f"--ray reads a local image folder (DIR/<class>/<image>); {data} is not one")
    path = Path(model)
    if not path.is_file():
        raise InvalidArgument(f"--ray runs a local .onnx model; {model} is not a file")
    if cluster.workers < 1:
        raise InvalidArgument(f"Ray workers must be at least 1, got {cluster.workers}")
    folder = imagefolder.scan(folder_path.resolve())
    if not 0 <= start <= (stop or len(folder)) <= len(folder):
        raise InvalidArgument(f"range [{start}, {stop}) is outside the data set's {len(folder)} images")
    sha = hashlib.sha256(model_bytes(path)).hexdigest()
    ray = connect(cluster)
    shared = {
        "model": str(path.resolve()), "sha256": sha, "folder": str(folder_path.resolve()), "shown": str(data), "size": len(folder), "batch_size": batch_size,
    }
    job = {"data": STREAMED, "layers": list(layers), "channels": list(channels) if channels else None, "k": k, "by": by}
    todo = [i for s, e in (state.remaining(start, stop) if state is not None else [(start, stop or len(folder))]) for i in range(s, e)]
    merged, since = state, 0
    for out in run(ray, todo, scan_worker, {**shared, "job": job}, cluster, batch_size * BLOCKS_PER_TASK, "scan", on_progress):
        part = pickle.loads(out["state"])
        merged = part if merged is None else merged.merge(part)
        since += int(out["images"])
        if on_checkpoint is not None and since >= checkpoint_every and merged.images_read < len(todo) + (state.images_read if state else 0):
            on_checkpoint(merged)
            since = 0
    if merged is None:
        raise InvalidArgument(f"{data} holds no images")
    if scan_only:
        return merged
    return reconstruct(ray, merged, folder, shared, method, cluster, batch_size, on_progress)


def reconstruct(ray, state: TopK, folder: imagefolder.ImageFolder, shared: dict, method: str, cluster: Cluster, batch_size: int,
                on_progress: OnProgress | None) -> TopResult:
    """The winners of ``state`` reconstructed on the actors, gathered as :meth:`Client.top_reconstruct` gathers them."""
    images: dict[int, TopImage] = {}
    entries = {layer: {int(c): [] for c in top.channels} for layer, top in state.layers.items()}
    winners = state.winner_indices()
    for out in run(ray, winners, ReconstructWorker, {**shared, "state": state, "method": method}, cluster, batch_size,
                   "reconstructions", on_progress):
        for part in pickle.loads(out["parts"]):
            if type(part).__name__ == "WinnerImage":
                label = folder.classes[part.label] if 0 <= part.label < len(folder.classes) else ""
                images[part.index] = TopImage(part.index, part.path, label, part.pixels)
            else:
                entries[part.layer][part.channel].append(TopEntry(
                    part.layer, part.channel, part.rank, part.index, part.value, part.activation, part.location,
                    part.receptive_field, part.patch, part.reconstruction,
                ))
    missing = len(winners) - len(images)
    if missing:
        raise FailedPrecondition(f"{missing} winner image(s) came back from no Ray worker")
    for per_channel in entries.values():
        for ranked in per_channel.values():
            ranked.sort(key=lambda entry: entry.rank)
    return TopResult(state, method, list(folder.classes), images, entries)


def shutdown() -> None:
    """Stop the Ray this process joined or started (a no-op when none runs)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


# -- features ------------------------------------------------------------------------------------------
class FeaturesWorker(EngineWorker):
    """Computes the feature rows of its rows' images (:func:`zfnet.server.features.run` through the
    engine); returns them as :class:`zfnet.client.features.FeatureBatch` es, pickled."""

    def __init__(self, model: str, sha256: str, folder: str, shown: str, size: int, batch_size: int,
                 asked: list[tuple[str, str | None]], default: str, dtype: str) -> None:
        super().__init__(model, sha256, folder, shown, size, batch_size)
        self.layers, self.dtype = plan_features(self.engine, self.model, asked, default), dtype

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from zfnet.client.features import FeatureBatch, Skipped  # noqa: PLC0415

        parts = [
            FeatureBatch(part.indices, part.labels, list(part.paths), rows, [Skipped(s.index, s.path, s.reason) for s in part.skipped])
            for start, stop in self.runs(batch["index"])
            for part, rows in self.engine.features(self.model, self.layers, self.source(start, stop), self.dtype)
        ]
        return {"parts": np.array([pickle.dumps(parts)], dtype=object), "images": np.array([len(batch["index"])])}


def plan_features(engine, model, asked: list[tuple[str, str | None]], default: str) -> list:
    """The engine's plan of a features job: ``asked`` = (layer as given, its own pooling or None)."""
    from zfnet.server import features as server_features  # noqa: PLC0415

    layers = [(int(x) if str(x).isascii() and str(x).isdigit() else str(x), server_features.Pooling.parse(p) if p else None) for x, p in asked]
    return engine.feature_layers(model, layers, server_features.Pooling.parse(default))


class RayFeatures:
    """What :func:`zfnet.client.features.save` asks of a client, answered on Ray: ``save(RayFeatures(cluster), ...)``
    writes the same files as ``save(Client(), ...)``, the rows computed by a pool of actors and written
    in place as their blocks arrive (the writer keeps the finished prefix for a resumed run)."""

    def __init__(self, cluster: Cluster | None = None) -> None:
        self.cluster = cluster or Cluster()
        self._models: dict[Path, tuple[str, object, object]] = {}  # path -> (sha256, engine, loaded model) on the driver

    def _model(self, model: str | Path):
        path = Path(model).resolve()
        if not path.is_file():
            raise InvalidArgument(f"--ray runs a local .onnx model; {model} is not a file")
        if path not in self._models:
            from zfnet.server.engine import Engine  # noqa: PLC0415
            from zfnet.server.models import ModelStore  # noqa: PLC0415

            data = model_bytes(path)
            engine = Engine(ModelStore(None, len(data) + 1))
            self._models[path] = (hashlib.sha256(data).hexdigest(), engine, engine.store.add(data, path.stem))
        return self._models[path]

    def close(self) -> None:
        """Stop the Ray this process joined or started."""
        shutdown()

    def dataset(self, data: str | Path, start: int = 0, stop: int = 0, batch_size: int = 0):
        from zfnet.client.api import Dataset  # noqa: PLC0415
        from zfnet.v1 import zfnet_pb2 as pb  # noqa: PLC0415

        path = Path(data)
        if not path.is_dir():
            raise InvalidArgument(f"--ray reads a local image folder (DIR/<class>/<image>); {data} is not one")
        folder = imagefolder.scan(path)
        source = pb.DataSource(streamed=pb.StreamedImages(size=len(folder), classes=folder.classes), start=start, stop=stop, batch_size=batch_size)
        dataset = Dataset(source, len(folder), list(folder.classes), folder)
        if not 0 <= start <= dataset.stop <= dataset.size:
            raise InvalidArgument(f"range [{start}, {stop}) is outside the data set's {dataset.size} images")
        return dataset

    def model_ref(self, model: str | Path):
        from zfnet.v1 import zfnet_pb2 as pb  # noqa: PLC0415

        return pb.ModelRef(sha256=self._model(model)[0])

    def model_info(self, model: str | Path):
        from zfnet.v1 import zfnet_pb2 as pb  # noqa: PLC0415

        sha, _, loaded = self._model(model)
        return pb.ModelInfo(sha256=sha, layers=[pb.Layer(name=r.name, number=r.number or 0) for r in loaded.layers])

    def features(self, model: str | Path, dataset, layers: Sequence[str | int], pool: str = "none",
                 layer_pool: dict[str, str] | None = None, dtype: str = "float32") -> RayFeatureStream:
        from zfnet.client.features import FeatureHeader, FeatureSpec  # noqa: PLC0415

        sha, engine, loaded = self._model(model)
        layer_pool = {str(k): v for k, v in (layer_pool or {}).items()}
        asked = [(str(x), layer_pool.get(str(x))) for x in layers]
        planned = plan_features(engine, loaded, asked, pool)
        batch_size = dataset.source.batch_size or 64
        header = FeatureHeader(
            sha, [FeatureSpec(f.name, f.number, str(f.pooling), tuple(f.layer_shape), tuple(f.shape)) for f in planned],
            dtype, dataset.size, list(dataset.classes), dataset.start, dataset.stop, batch_size,
        )
        root = Path(dataset.folder.root)
        arguments = {
            "model": str(Path(model).resolve()), "sha256": sha, "folder": str(root.resolve()), "shown": str(root), "size": dataset.size,
            "batch_size": batch_size, "asked": asked, "default": pool, "dtype": dtype,
        }
        return RayFeatureStream(self.cluster, header, list(range(dataset.start, dataset.stop)), arguments)


class RayFeatureStream:
    """A features job on Ray, as :class:`zfnet.client.api.FeatureStream` presents one: ``header``, then
    the batches (in the order blocks finish; each knows its data-set indices)."""

    def __init__(self, cluster: Cluster, header, rows: list[int], arguments: dict) -> None:
        self.cluster, self.header, self.rows, self.arguments = cluster, header, rows, arguments

    def __iter__(self) -> Iterator:
        ray = connect(self.cluster)
        done = 0
        for out in run(ray, self.rows, FeaturesWorker, self.arguments, self.cluster, self.header.batch_size * BLOCKS_PER_TASK, "features", None):
            for part in pickle.loads(out["parts"]):
                done += len(part.indices) + len(part.skipped)
                yield replace(part, done=done, total=len(self.rows))

    def close(self) -> None:
        """Nothing to cancel: the pool ends with the iteration."""
