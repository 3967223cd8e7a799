"""Data-set jobs on Ray: top-k and features over a local image folder, spread over a pool of actors.

The folder's file list becomes a Ray Data dataset (one row per image: its data-set index);
``map_batches`` sends blocks of rows to a pool of actors (CPU, or one GPU each). Each actor holds a
:class:`~zfnet.client.api.Client` with its own in-process server, and runs its rows as the
single-process client runs a job: it streams the images over the same gRPC calls, so the engine is
reached one way only. A scan actor returns the partial :class:`~zfnet.topk.TopK` of its rows; the
driver merges them with :meth:`TopK.merge`, the same associative merge that joins shards, so the
result equals the single-process job's exactly. The winners' reconstructions run on actors too. A
worker that dies is restarted by Ray and its block runs again; a block's partial state covers only
its own rows, so nothing counts twice.

Ray is an optional extra (``pip install zfnet[ray]``), imported only here. Another data-set job
(streamed features, for one) plugs in as one more :class:`ClientWorker` subclass whose output rows
carry their data-set indices, which the driver writes in place as blocks arrive (:func:`run` yields
them in any order).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.client.facades.datasets import Dataset, local_dataset, runs
from zfnet.client.models import model_bytes
from zfnet.errors import FailedPrecondition, InvalidArgument
from zfnet.topk import EMPTY, TopK
from zfnet.wire.features import FeatureHeader
from zfnet.wire.models import ModelInfo
from zfnet.wire.top import Collector, TopResult

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


class ClientWorker:
    """A Ray actor's state: a client with its own in-process server, the model, and the data set's file
    list. The actor reads both from the paths the driver read (a shared file system), so that its
    constructor's arguments stay small (a restarted actor needs nothing from the object store), and
    checks they are what the driver saw. Images are named as the driver names them (``shown``: the
    folder as the user gave it), so results match the single-process job's field for field."""

    def __init__(self, model: str, sha256: str, folder: str, shown: str, size: int, batch_size: int) -> None:
        self.client = Client()
        atexit.register(self.client.close)
        self.model = Path(model)
        if self.client.ensure_model(self.model) != sha256:
            raise FailedPrecondition(f"model {model} changed while the Ray job ran (or differs on this node)")
        self.dataset = local_dataset(Path(folder), batch_size=batch_size, shown=shown)
        if self.dataset.size != size:
            raise FailedPrecondition(f"{folder} holds {self.dataset.size} images on this node; the job started with {size}")
        self.batch_size = batch_size

    def runs(self, indices: np.ndarray) -> Iterator[tuple[int, int]]:
        """Ascending ``indices`` as consecutive runs, cut at multiples of the batch size, so that every
        forward pass holds the images the single-process job's pass at that position holds."""
        return runs(np.sort(indices), lambda begin, i: i % self.batch_size == 0)


class ScanWorker(ClientWorker):
    """Scans its rows' images; returns one partial top-k state per block."""

    def __init__(self, model: str, sha256: str, folder: str, shown: str, size: int, batch_size: int, job: dict) -> None:
        super().__init__(model, sha256, folder, shown, size, batch_size)
        self.job = job  # top_scan's layers, k, by, channels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = None
        for start, stop in self.runs(batch["index"]):
            part = self.client.top_scan(self.model, self.dataset.part(start, stop), **self.job)
            state = part if state is None else state.merge(part)
        return {"state": np.array([pickle.dumps(state)], dtype=object), "images": np.array([len(batch["index"])])}


class ReconstructWorker(ClientWorker):
    """Reconstructs the winners among its rows' images: a partial :class:`TopResult`, pickled."""

    def __init__(self, model: str, sha256: str, folder: str, shown: str, size: int, batch_size: int, state: TopK, method: str) -> None:
        super().__init__(model, sha256, folder, shown, size, batch_size)
        self.state, self.method = state, method

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        part = self.client.top_reconstruct(self.model, self.dataset, only_winners(self.state, batch["index"]), self.method)
        return {"parts": np.array([pickle.dumps(part)], dtype=object), "images": np.array([len(batch["index"])])}


def only_winners(state: TopK, indices: np.ndarray) -> TopK:
    """``state`` with every winner whose image is not among ``indices`` emptied (ranks kept)."""
    mine = state.copy()
    for top in mine.layers.values():
        top.indices[~np.isin(top.indices, indices)] = EMPTY
    return mine


def run(ray, rows: Sequence[int] | np.ndarray, worker: type, arguments: dict, cluster: Cluster, batch_rows: int,
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
    scan_worker: type[ScanWorker] = ScanWorker, on_checkpoint: Callable[[TopK], object] | None = None, checkpoint_every: int = 1024,
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
        raise InvalidArgument(f"--ray reads a local image folder (a class tree DIR/<class>/<image> or a flat folder); {data} is not one")
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
    job = {"layers": list(layers), "channels": list(channels) if channels else None, "k": k, "by": by}
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
    collected = Collector(list(folder.classes), method, state)
    winners = state.winner_indices()
    for out in run(ray, winners, ReconstructWorker, {**shared, "state": state, "method": method}, cluster, batch_size,
                   "reconstructions", on_progress):
        part: TopResult = pickle.loads(out["parts"])
        for event in [*part.images.values(), *(e for per_channel in part.entries.values() for ranked in per_channel.values() for e in ranked)]:
            collected.take(event)
    result = collected.result()
    missing = len(winners) - len(result.images)
    if missing:
        raise FailedPrecondition(f"{missing} winner image(s) came back from no Ray worker")
    return result


def shutdown() -> None:
    """Stop the Ray this process joined or started (a no-op when none runs)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


# -- features ------------------------------------------------------------------------------------------
class FeaturesWorker(ClientWorker):
    """Computes the feature rows of its rows' images (a features job of its client per run); returns
    them as :class:`zfnet.wire.features.FeatureBatch` es, pickled."""

    def __init__(self, model: str, sha256: str, folder: str, shown: str, size: int, batch_size: int,
                 layers: list[str], pool: str, layer_pool: dict[str, str], dtype: str) -> None:
        super().__init__(model, sha256, folder, shown, size, batch_size)
        self.layers, self.pool, self.layer_pool, self.dtype = layers, pool, layer_pool, dtype

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = [
            part for start, stop in self.runs(batch["index"])
            for part in self.client.features(self.model, self.dataset.part(start, stop), self.layers, self.pool, self.layer_pool, self.dtype)
        ]
        return {"parts": np.array([pickle.dumps(parts)], dtype=object), "images": np.array([len(batch["index"])])}


class RayFeatures:
    """What :func:`zfnet.client.features.save` asks of a client, answered on Ray: ``save(RayFeatures(cluster), ...)``
    writes the same files as ``save(Client(), ...)``, the rows computed by a pool of actors and written
    in place as their blocks arrive (the writer keeps the finished prefix for a resumed run). The
    driver's own client (an in-process server) uploads the model and plans the layers."""

    def __init__(self, cluster: Cluster | None = None) -> None:
        self.cluster = cluster or Cluster()
        self.client = Client()

    def close(self) -> None:
        """Stop the driver's client and the Ray this process joined or started."""
        self.client.close()
        shutdown()

    def _local(self, model: str | Path) -> Path:
        path = Path(model)
        if not path.is_file():
            raise InvalidArgument(f"--ray runs a local .onnx model; {model} is not a file")
        return path

    def dataset(self, data: str | Path, start: int = 0, stop: int = 0, batch_size: int = 0) -> Dataset:
        if not Path(data).is_dir():
            raise InvalidArgument(f"--ray reads a local image folder (a class tree DIR/<class>/<image> or a flat folder); {data} is not one")
        return local_dataset(Path(data), start, stop, batch_size)

    def model_ref(self, model: str | Path):
        return self.client.model_ref(self._local(model))

    def model_info(self, model: str | Path) -> ModelInfo:
        return self.client.model_info(self._local(model))

    def features(self, model: str | Path, dataset: Dataset, layers: Sequence[str | int], pool: str = "none",
                 layer_pool: dict[str, str] | None = None, dtype: str = "float32") -> RayFeatureStream:
        layers = [str(x) for x in layers]
        layer_pool = {str(k): v for k, v in (layer_pool or {}).items()}
        planned = self.client.features(self._local(model), dataset.part(0, 1), layers, pool, layer_pool, dtype)  # the layers as the server plans them
        planned.close()
        batch_size = dataset.source.batch_size or 64
        header = FeatureHeader(
            self.model_ref(model).sha256, planned.header.layers, dtype, dataset.size, list(dataset.classes), dataset.start, dataset.stop, batch_size,
        )
        root = Path(dataset.local_folder().root)
        arguments = {
            "model": str(Path(model).resolve()), "sha256": header.model_sha256, "folder": str(root.resolve()), "shown": str(root),
            "size": dataset.size, "batch_size": batch_size, "layers": layers, "pool": pool, "layer_pool": layer_pool, "dtype": dtype,
        }
        return RayFeatureStream(self.cluster, header, list(range(dataset.start, dataset.stop)), arguments)


class RayFeatureStream:
    """A features job on Ray, as :class:`zfnet.client.facades.features.FeatureStream` presents one: ``header``,
    then the batches (in the order blocks finish; each knows its data-set indices)."""

    def __init__(self, cluster: Cluster, header: FeatureHeader, rows: list[int], arguments: dict) -> None:
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
