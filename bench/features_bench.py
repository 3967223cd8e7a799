"""Feature extraction: zfnet's `zfclient features` path against bare onnxruntime, side by side in one run.

zfnet: ``zfnet.client.features.save`` with an in-process server, the client streaming a local image
folder over gRPC, the server decoding, running the forward pass and pooling, the client writing the
rows to ``.npy`` files. Bare onnxruntime: the same images read and decoded with PIL (the same 4
decoding threads), batched, and one ``session.run`` per batch fetching the same layers from the
bundled model (every layer is an output of it), nothing pooled or written. Both on the same
images, layers, batch size and machine; best of ``--repeats``.

Peak memory (max RSS of a process running the whole job, client and in-process server) is measured
for several data-set sizes, each in a fresh process; it must not grow with the number of images.

    python bench/features_bench.py [--images 10000] [--memory 10000 50000] [--batch 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from zfnet import imagefolder

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
DATA = ROOT.parent / "shared" / "data" / "cifar10" / "train"
LAYERS = ["all"]  # every numbered layer, and the raw pixels
POOL, LAYER_POOL, DTYPE = "grid:4", {"1": "grid:8"}, "float16"  # as in the transfer table (docs/guides/transfer.md)
NAMES = ["pool1", "pool2", "relu3", "relu4", "pool5", "relu6", "relu7", "fc8"]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, onnxruntime {ort.__version__} (CPUExecutionProvider)"


def data_folder(images: int, scratch: Path) -> Path:
    """CIFAR-10's training images when ../shared has them (50,000), else a tree of links to the
    bundled samples, repeated up to ``images``."""
    if DATA.is_dir():
        return DATA
    samples = sorted((ROOT / "samples" / "cifar10").glob("*/*.jpg"))
    tree = scratch / "images"
    for i in range(images):
        source = samples[i % len(samples)]
        target = tree / source.parent.name / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    return tree


def bare_onnxruntime(data: Path, images: int, batch: int) -> float:
    """Seconds to decode ``images`` files and run the forward pass of the same layers."""
    files = imagefolder.scan(data).files[:images]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        for begin in range(0, len(files), batch):
            rgb = list(pool.map(lambda p: imagefolder.read_rgb(p, (32, 32)), files[begin : begin + batch]))
            session.run(NAMES, {name: np.stack(rgb).astype(np.float32).transpose(0, 3, 1, 2)})
    return time.perf_counter() - start


def zfnet_child(data: Path, images: int, batch: int, out: Path) -> dict:
    """One features job in a fresh process: its seconds and peak memory."""
    command = [sys.executable, __file__, "--child", str(data), str(images), str(batch), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def child(data: Path, images: int, batch: int, out: Path) -> None:
    from zfnet.client import features
    from zfnet.client.api import Client

    shutil.rmtree(out, ignore_errors=True)
    with Client() as client:
        client.ensure_model(MODEL)
        start = time.perf_counter()
        features.save(client, MODEL, data, LAYERS, out, POOL, LAYER_POOL, DTYPE, stop=images, batch_size=batch)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"images": images, "seconds": seconds, "peak_rss_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--memory", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "bench-features.json")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]), int(args.child[2]), Path(args.child[3]))
        return

    with tempfile.TemporaryDirectory(prefix="zfnet-bench-") as scratch:
        scratch = Path(scratch)
        data = data_folder(max([args.images, *args.memory]), scratch)
        available = len(imagefolder.scan(data))
        runs: dict[str, list[float]] = {"bare": [], "zfnet": []}
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            runs["bare"].append(bare_onnxruntime(data, args.images, args.batch))
            runs["zfnet"].append(zfnet_child(data, args.images, args.batch, scratch / "feats")["seconds"])
        memory = [zfnet_child(data, min(n, available), args.batch, scratch / "feats") for n in args.memory]
        shutil.rmtree(scratch / "feats", ignore_errors=True)
    bare, ours = args.images / min(runs["bare"]), args.images / min(runs["zfnet"])
    report = {
        "machine": machine(), "data": str(data), "images": args.images, "batch": args.batch,
        "layers": "every numbered layer of the bundled model and the raw pixels", "pool": POOL, "layer_pool": LAYER_POOL, "dtype": DTYPE,
        "bare_images_per_s": bare, "zfnet_images_per_s": ours, "zfnet_vs_bare": ours / bare, "runs_s": runs, "memory": memory,
    }
    console = Console()
    table = Table("", "images/s", title=f"feature extraction, {args.images} images, batch {args.batch} ({machine()})")
    table.add_row("bare onnxruntime (decode + forward)", f"{bare:.0f}")
    table.add_row("zfnet features (gRPC, pooled, written)", f"{ours:.0f}")
    table.add_row("zfnet / bare", f"{ours / bare:.0%}", style="bold")
    console.print(table)
    peaks = Table("images", "seconds", "peak RSS (MiB)", title="zfnet features: peak memory of the whole job (fresh process each)")
    for m in memory:
        peaks.add_row(str(m["images"]), f"{m['seconds']:.0f}", f"{m['peak_rss_mib']:.0f}")
    console.print(peaks)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
