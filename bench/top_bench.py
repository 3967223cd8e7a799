"""Top-9 per feature map over CIFAR-10: zfnet's whole job against its floor and against Captum, in one run.

Work: top-9 images for every channel of one layer (default: layer 5, pool5, 64 channels) of the
bundled model over the 10,000 test images, then the deconvnet reconstruction of each winner
(576 of them), through the gRPC service with the images read by the server (``--data-dir``).

- floor: one bare onnxruntime forward pass of the original model plus JPEG decoding (PIL, the same
  4 decoding threads as the server) over the same images, same batch size;
- Captum, "one image and one channel at a time": ``NeuronDeconvolution`` on the PyTorch model, one
  call per (image, channel) for the channel's strongest activation (a forward and a backward pass
  each; torch on one thread, its fastest for one image), timed on a sample of images and
  extrapolated to the data set (the calls are independent and cost the same: linear);
- peak memory (resident set) of the whole job, server included, for the 10,000 test images and for
  the 50,000 training images: it must not grow with the data set;
- the second pass of each of layers 1-5 alone, after one scan of all five: its share of the job bounds
  what computing reconstructions on the receptive-field window alone could save.

Each measurement runs in its own process (so that its peak memory is its own).

    python bench/top_bench.py [--layer 5] [--batch 64] [--captum-images 8] [--repeats 2] [--no-train]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
CHECKPOINT = ROOT / "models" / "zfnet-cifar10.pt"


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_floor(split: str, batch: int) -> dict:
    """Decode every JPEG and run the model's plain forward pass, in batches."""
    import numpy as np
    import onnxruntime as ort

    from zfnet import imagefolder
    from zfnet.server import runtime

    folder = imagefolder.scan(DATA / "cifar10" / split)
    session = ort.InferenceSession(MODEL.read_bytes(), providers=list(runtime.providers()))
    name = session.get_inputs()[0].name
    began = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        for b in range(0, len(folder), batch):
            images = list(pool.map(imagefolder.read_rgb, folder.files[b : b + batch]))
            session.run(None, {name: np.stack(images).astype(np.float32).transpose(0, 3, 1, 2)})
    return {"seconds": time.perf_counter() - began, "images": len(folder), "peak_mib": peak_mib()}


def child_top(split: str, batch: int, layer: str) -> dict:
    """The whole top-9 job through a real server reading the images itself."""
    from zfnet.client.api import Client
    from zfnet.server.app import create_server

    server, port, _ = create_server("127.0.0.1:0", data_dir=DATA)
    try:
        with Client(f"127.0.0.1:{port}") as client:
            client.ensure_model(MODEL)
            dataset = client.dataset(f"cifar10/{split}", batch_size=batch)
            began = time.perf_counter()
            state = client.top_scan(MODEL, dataset, [layer], k=9)
            scanned = time.perf_counter()
            result = client.top_reconstruct(MODEL, dataset, state)
            done = time.perf_counter()
    finally:
        server.stop(grace=None)
    entries = sum(len(e) for per in result.entries.values() for e in per.values())
    return {"seconds": done - began, "scan_seconds": scanned - began, "reconstruct_seconds": done - scanned,
            "images": state.images_read, "reconstructions": entries, "peak_mib": peak_mib()}


def child_layers(batch: int) -> dict:
    """Does computing a reconstruction on its receptive-field window alone pay? One scan of layers 1-5
    over the test set, then each layer's second pass timed alone: the share it takes of the job bounds
    what any cheaper second pass could save."""
    from dataclasses import replace

    from zfnet.client.api import Client
    from zfnet.server.app import create_server

    server, port, _ = create_server("127.0.0.1:0", data_dir=DATA)
    try:
        with Client(f"127.0.0.1:{port}") as client:
            client.ensure_model(MODEL)
            dataset = client.dataset("cifar10/test", batch_size=batch)
            began = time.perf_counter()
            state = client.top_scan(MODEL, dataset, [1, 2, 3, 4, 5], k=9)
            out = {"scan_seconds": time.perf_counter() - began, "layers": {}}
            for name, top in state.layers.items():
                began = time.perf_counter()
                result = client.top_reconstruct(MODEL, dataset, replace(state, layers={name: top}))
                entry = next(e[0] for e in result.entries[name].values() if e)
                height, width = entry.patch[2] - entry.patch[0], entry.patch[3] - entry.patch[1]
                out["layers"][name] = {"reconstructions": int((top.indices >= 0).sum()), "seconds": time.perf_counter() - began,
                                       "field": [height, width], "field_area_share": min(1.0, height * width / 32 / 32)}
    finally:
        server.stop(grace=None)
    return out


def child_captum(images: int, layer: str) -> dict:
    """Captum NeuronDeconvolution, one call per (image, channel): the channel's strongest activation."""
    import numpy as np
    import torch
    from captum.attr import NeuronDeconvolution

    from zfnet import imagefolder
    from zfnet.converters.pytorch import export, zoo
    from zfnet.server.layers import resolve
    from zfnet.server.models import load

    torch.set_num_threads(1)  # one image per call: a second thread only spins (measured: 14x slower on the shared 2-core VM)
    row = resolve(load(MODEL.read_bytes(), MODEL.stem).layers, layer)
    channels = int(row.shape[1])
    net = export.load_weights(zoo.build("zfnet-cifar10"), CHECKPOINT).eval()
    deconv = NeuronDeconvolution(net, getattr(net, row.name))
    folder = imagefolder.scan(DATA / "cifar10" / "test")
    step = len(folder) // images
    pixels = [torch.from_numpy(imagefolder.read_rgb(folder.files[i * step]).astype(np.float32).transpose(2, 0, 1)[None]) for i in range(images)]
    deconv.attribute(pixels[0], neuron_selector=lambda o: cast(torch.Tensor, o)[:, 0].flatten(1).max(dim=1).values)  # warm-up
    began = time.perf_counter()
    for x in pixels:
        for c in range(channels):
            deconv.attribute(x, neuron_selector=lambda o, c=c: cast(torch.Tensor, o)[:, c].flatten(1).max(dim=1).values)
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "calls": images * channels, "channels": channels, "images": images, "torch_threads": torch.get_num_threads()}


def run_child(*args: str) -> dict:
    completed = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT)
    if completed.returncode:
        raise SystemExit(f"bench child {args} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--layer", default="5")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--captum-images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="runs of the floor and of zfnet, alternated; the best of each counts")
    parser.add_argument("--no-train", action="store_true", help="skip the 50,000-image memory run")
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "top_bench.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = {"floor": lambda: child_floor(rest[0], args.batch), "top": lambda: child_top(rest[0], args.batch, args.layer),
                  "captum": lambda: child_captum(int(rest[0]), args.layer), "layers": lambda: child_layers(args.batch)}[kind]()
        print(json.dumps(result))
        return
    if not (DATA / "cifar10" / "test").is_dir():
        raise SystemExit(f"{DATA / 'cifar10'} is absent: the benchmark reads the CIFAR-10 JPEGs of ../shared")

    from rich.console import Console
    from rich.table import Table

    sys.path.insert(0, str(ROOT / "bench"))
    from sidebyside import machine

    floors, jobs = [], []
    for _ in range(args.repeats):  # alternated, best of each: other jobs on the machine come and go
        floors.append(run_child("floor", "test"))
        jobs.append(run_child("top", "test"))
    floor, job = min(floors, key=lambda r: r["seconds"]), min(jobs, key=lambda r: r["seconds"])
    captum = run_child("captum", str(args.captum_images))
    captum_total = captum["seconds"] / captum["calls"] * job["images"] * captum["channels"]
    train = None if args.no_train else run_child("top", "train")
    layers = run_child("layers")
    rows = {
        "machine": machine(), "layer": args.layer, "batch": args.batch, "k": 9, "floor": floor, "top": job, "captum_sample": captum,
        "floor_runs": [r["seconds"] for r in floors], "top_runs": [r["seconds"] for r in jobs],
        "captum_extrapolated_seconds": captum_total, "top_vs_floor": job["seconds"] / floor["seconds"],
        "captum_vs_top": captum_total / job["seconds"], "reconstruct_share": job["reconstruct_seconds"] / job["seconds"], "train": train,
        "second_pass_by_layer": layers,
    }
    table = Table("what", "images", "seconds", "vs floor", "peak MiB", title=f"top-9 of every channel of layer {args.layer}, batch {args.batch} ({machine()})")
    table.add_row("floor: JPEG decoding + bare onnxruntime forward", f"{floor['images']:,}", f"{floor['seconds']:.1f}", "1.00x", f"{floor['peak_mib']:.0f}")
    table.add_row(f"zfnet top (scan {job['scan_seconds']:.1f} s + {job['reconstructions']} reconstructions {job['reconstruct_seconds']:.1f} s)",
                  f"{job['images']:,}", f"{job['seconds']:.1f}", f"{rows['top_vs_floor']:.2f}x", f"{job['peak_mib']:.0f}")
    table.add_row(f"Captum per (image, channel), extrapolated from {captum['calls']} calls", f"{job['images']:,}", f"{captum_total:.0f}",
                  f"{captum_total / floor['seconds']:.0f}x", "")
    if train:
        table.add_row("zfnet top on the 50,000 training images", f"{train['images']:,}", f"{train['seconds']:.1f}", "", f"{train['peak_mib']:.0f}")
    Console().print(table)
    passes = Table("layer", "receptive field", "reconstructions", "second pass s", "share of the job", "window area / image",
                   title=f"second pass per layer after one scan of layers 1-5 ({layers['scan_seconds']:.1f} s)")
    for name, info in layers["layers"].items():
        total = layers["scan_seconds"] + sum(i["seconds"] for i in layers["layers"].values())
        passes.add_row(name, "x".join(map(str, info["field"])), str(info["reconstructions"]), f"{info['seconds']:.1f}",
                       f"{info['seconds'] / total:.1%}", f"{info['field_area_share']:.0%}")
    Console().print(passes)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
