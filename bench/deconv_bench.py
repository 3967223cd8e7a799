"""Deconv throughput: zfnet (in-process engine and over gRPC) against Captum's NeuronDeconvolution,
side by side in one run, on the same model, images, layer and (image, channel, location) selection.

Work per image: the top-9 channels of layer 4 (relu4) of the bundled reference model, each
projected from its strongest activation (mode max, method deconvnet). Captum is used at its best:
one call per channel rank over the whole batch, a neuron selector picking each image's own
(channel, location), result times the activation as in zfnet.

    python bench/deconv_bench.py [--batch 1 16 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch
from captum.attr import NeuronDeconvolution
from rich.console import Console
from rich.table import Table

from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.converters.pytorch import export, zoo
from zfnet.server import runtime
from zfnet.server.engine import Engine
from zfnet.server.images import ImageInput
from zfnet.server.models import ModelStore, load

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
CHECKPOINT = ROOT / "models" / "zfnet-cifar10.pt"
LAYER, TOP = "relu4", 9


def best_of(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime provider {runtime.providers()[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "bench.json")
    args = parser.parse_args()

    files = sorted((ROOT / "samples" / "cifar10").glob("*/*.jpg"))
    net = export.load_weights(zoo.build("zfnet-cifar10"), CHECKPOINT).eval()
    engine = Engine(ModelStore())
    model = load(MODEL.read_bytes(), MODEL.stem)
    rows = []
    with Client() as client:
        client.ensure_model(MODEL)
        for batch_size in args.batch:
            chosen = (files * (batch_size // len(files) + 1))[:batch_size]
            inputs = [ImageInput(encoded=p.read_bytes()) for p in chosen]
            pixels = torch.from_numpy(np.stack([imagefolder.read_rgb(p) for p in chosen]).astype(np.float32).transpose(0, 3, 1, 2))
            _, picked = engine.deconv(model, inputs, LAYER, None, TOP, "max", "deconvnet")
            # Captum's work list: for each channel rank, every image's (channel, location, activation)
            ranks = [[r for r in picked if r.image == i] for i in range(batch_size)]

            def captum_run() -> None:
                deconv = NeuronDeconvolution(net, net.get_submodule("relu4"))
                for k in range(TOP):
                    sel = [ranks[i][k] for i in range(batch_size)]
                    index = (torch.arange(batch_size), torch.tensor([r.channel for r in sel]),
                             torch.tensor([r.location[0] for r in sel]), torch.tensor([r.location[1] for r in sel]))
                    result = deconv.attribute(pixels, neuron_selector=lambda out, index=index: cast(torch.Tensor, out)[index])
                    (result * torch.tensor([r.activation for r in sel]).view(-1, 1, 1, 1)).numpy()

            engine_s = best_of(lambda: engine.deconv(model, inputs, LAYER, None, TOP, "max", "deconvnet"), args.repeats)
            grpc_s = best_of(lambda: client.deconv(MODEL, chosen, LAYER, None, TOP, "max", "deconvnet"), args.repeats)
            captum_s = best_of(captum_run, args.repeats)
            rows.append({
                "batch": batch_size, "reconstructions": batch_size * TOP,
                "engine_images_per_s": batch_size / engine_s, "grpc_images_per_s": batch_size / grpc_s,
                "captum_images_per_s": batch_size / captum_s,
                "engine_vs_captum": captum_s / engine_s, "grpc_vs_captum": captum_s / grpc_s,
            })
    table = Table("batch", "zfnet engine img/s", "zfnet gRPC img/s", "Captum img/s", "engine / Captum", "gRPC / Captum",
                  title=f"deconv, {LAYER} top-{TOP}, mode max ({machine()})")
    for r in rows:
        table.add_row(str(r["batch"]), f"{r['engine_images_per_s']:.1f}", f"{r['grpc_images_per_s']:.1f}", f"{r['captum_images_per_s']:.1f}",
                      f"{r['engine_vs_captum']:.2f}x", f"{r['grpc_vs_captum']:.2f}x")
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "layer": LAYER, "top": TOP, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
