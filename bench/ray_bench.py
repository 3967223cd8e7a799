"""Top-9 over a data set on Ray: 1 and 2 local workers against the single-process job, in one run.

Work: top-9 images of every channel of one layer (default: layer 5, pool5, 64 channels) of the
bundled model over the first ``--images`` CIFAR-10 test images (../shared; the bundled 200 samples
when it is absent), then the deconvnet reconstruction of every winner.

- single process: ``zfclient top --data DIR`` as it runs without ``--server``: the in-process
  server, the client streaming the folder;
- Ray, 1 and 2 workers: ``zfclient top --data DIR --ray`` (``zfnet.client.ray_jobs.top``) on a
  local Ray with as many logical CPUs as the machine has cores; each actor holds one engine.
  Ray's start-up (``ray.init``) is timed apart; the job's time includes starting the actors and
  loading the model in each (what a user waits for).

Every Ray result is checked against the single-process state (exactly equal). Figures land in
``out/ray_bench.json``.

    python bench/ray_bench.py [--images 10000] [--layer 5] [--batch 64] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT.parent / "shared" / "data" / "cifar10" / "test"
SAMPLES = ROOT / "samples" / "cifar10"
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"


def subset(count: int, into: Path) -> Path:
    """A folder of symbolic links to the first ``count`` test images (classes interleaved as sorted)."""
    source = TEST if TEST.is_dir() else SAMPLES
    files = sorted(source.glob("*/*.jpg"), key=lambda p: (p.name, p.parent.name))[:count]
    for f in files:
        (into / f.parent.name).mkdir(exist_ok=True)
        (into / f.parent.name / f.name).symlink_to(f.resolve())
    return into


def single(folder: Path, layer: int, batch: int):
    from zfnet.client.api import Client

    with Client() as client:
        client.ensure_model(MODEL)
        dataset = client.dataset(folder, batch_size=batch)
        began = time.perf_counter()
        state = client.top_scan(MODEL, dataset, [layer], k=9)
        scanned = time.perf_counter()
        result = client.top_reconstruct(MODEL, dataset, state)
        return time.perf_counter() - began, scanned - began, result


def on_ray(folder: Path, layer: int, batch: int, workers: int):
    from zfnet.client import ray_jobs
    from zfnet.wire.top import TopResult

    began = time.perf_counter()
    marks: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        marks.setdefault(stage, time.perf_counter())

    result = ray_jobs.top(MODEL, folder, [layer], k=9, batch_size=batch, cluster=ray_jobs.Cluster(workers=workers), on_progress=progress)
    assert isinstance(result, TopResult)  # not scan_only
    return time.perf_counter() - began, marks["reconstructions"] - began, result


def same(a, b) -> bool:
    return a.covered == b.covered and all(
        np.array_equal(getattr(t, w), getattr(b.layers[n], w)) for n, t in a.layers.items() for w in ("values", "indices", "locations")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--layer", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "ray_bench.json")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from zfnet.client import ray_jobs

    with tempfile.TemporaryDirectory() as tmp:
        folder = subset(args.images, Path(tmp))
        n = len(list(folder.glob("*/*.jpg")))
        rows = {}
        seconds, scan, reference = min((single(folder, args.layer, args.batch) for _ in range(args.repeats)), key=lambda r: r[0])
        rows["single process"] = {
            "seconds": seconds, "scan_s": scan, "images_per_s": n / seconds, "scan_images_per_s": n / scan,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        began = time.perf_counter()
        ray_jobs.connect(ray_jobs.Cluster(num_cpus=os.cpu_count()))
        started = time.perf_counter() - began
        for workers in (1, 2):
            seconds, scan, result = min((on_ray(folder, args.layer, args.batch, workers) for _ in range(args.repeats)), key=lambda r: r[0])
            rows[f"ray, {workers} worker(s)"] = {
                "seconds": seconds, "scan_s": scan, "images_per_s": n / seconds, "scan_images_per_s": n / scan, "exact": same(result.state, reference.state),
            }
        ray.shutdown()
    entries = sum(len(e) for per in reference.entries.values() for e in per.values())
    report = {
        "images": n, "layer": args.layer, "batch": args.batch, "reconstructions": entries, "ray_init_s": started,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "ray": ray.__version__, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"top-9 of layer {args.layer} over {n} images, {entries} reconstructions, batch {args.batch}; ray.init {started:.1f} s; {report['machine']}")
    base = rows["single process"]["seconds"]
    for name, row in rows.items():
        extra = f"  exact: {row['exact']}" if "exact" in row else ""
        print(
            f"  {name:18s} {row['seconds']:7.1f} s  {row['images_per_s']:7.1f} images/s  {base / row['seconds']:.2f}x"
            f"  (scan {row['scan_s']:.1f} s, {row['scan_images_per_s']:.1f} images/s){extra}"
        )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
