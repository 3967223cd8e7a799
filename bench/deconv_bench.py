"""Deconv throughput: zfnet (in-process engine and over gRPC) against Captum's NeuronDeconvolution,
side by side in one run, on the same model, images, layer and (image, channel, location) selection.

Two models:

- ``cifar``: the bundled reference model, layer 4 (relu4), the top-9 channels of every image, each
  projected from its strongest activation (mode max, method deconvnet), at batches 1, 16 and 64;
- ``resnet50``: ResNet-50 in plain torch (torchvision's module names, random weights, exported at
  224 px), the output of ``layer2``, 9 channels per image, at batches 1 and 4.

Captum is used at its best: one call per channel rank over the whole batch, a neuron selector
picking each image's own (channel, location), the result times the activation as in zfnet. The
three contenders run interleaved (:mod:`sidebyside`), so the ratios hold under a changing load;
each row gives the best and the median of the rounds, the load average and each one's peak memory.

    python bench/deconv_bench.py [--models cifar resnet50] [--batch 1 16 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import onnx
import torch
from captum.attr import NeuronDeconvolution
from rich.console import Console
from rich.table import Table

from sidebyside import cpu, interleaved, machine, mib
from zfnet.client.api import Client
from zfnet.converters.pytorch import export, zoo
from zfnet.converters.pytorch.imagenet import REGISTRY
from zfnet.server import runtime
from zfnet.server.engine import Engine
from zfnet.server.images import ImageInput
from zfnet.server.models import ModelStore, load

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "cifar10"
TOP = 9


@dataclass
class Subject:
    """A model to deconv: its ONNX file, the PyTorch twin Captum runs, the layer (tensor and module)."""

    name: str
    path: Path
    net: torch.nn.Module
    tensor: str  # the exposed tensor zfnet projects from
    module: str  # the module whose output it is, for Captum
    batches: list[int]


def cifar(batches: list[int], out: Path) -> Subject:
    net = export.load_weights(zoo.build("zfnet-cifar10"), ROOT / "models" / "zfnet-cifar10.pt").eval()
    return Subject("zfnet-cifar10, layer 4 (relu4)", ROOT / "models" / "zfnet-cifar10.onnx", net, "relu4", "relu4", batches)


def resnet50(batches: list[int], out: Path) -> Subject:
    torch.manual_seed(0)
    net = REGISTRY["resnet50"]().eval()
    path = out / "resnet50-224.onnx"
    if not path.exists():  # the seeded factory gives the same weights every time
        out.mkdir(parents=True, exist_ok=True)
        onnx.save(export.export(net, (224, 224)), path)
    return Subject("ResNet-50 (random weights) at 224 px, layer2", path, net, "layer2.3.relu:3", "layer2", batches)


SUBJECTS: dict[str, tuple[Callable[[list[int], Path], Subject], list[int]]] = {"cifar": (cifar, [1, 16, 64]), "resnet50": (resnet50, [1, 4])}


def rows_for(subject: Subject, client: Client, engine: Engine, batch_size: int, rounds: int) -> dict:
    files = sorted(SAMPLES.glob("*/*.jpg"))
    chosen = (files * (batch_size // len(files) + 1))[:batch_size]
    inputs = [ImageInput(encoded=p.read_bytes()) for p in chosen]
    model = load(subject.path.read_bytes(), subject.path.stem)
    pixels = torch.from_numpy(engine.batch(model, inputs))
    _, picked = engine.deconv(model, inputs, subject.tensor, None, TOP, "max", "deconvnet")
    ranks = [[r for r in picked if r.image == i] for i in range(batch_size)]  # Captum's work: per rank, every image's pick
    deconv = NeuronDeconvolution(subject.net, subject.net.get_submodule(subject.module))

    def captum_run() -> None:
        for k in range(TOP):
            sel = [ranks[i][k] for i in range(batch_size)]
            index = (torch.arange(batch_size), torch.tensor([r.channel for r in sel]), *[torch.tensor([r.location[a] for r in sel]) for a in range(2)])
            result = deconv.attribute(pixels, neuron_selector=lambda out, index=index: cast(torch.Tensor, out)[index])
            (result * torch.tensor([r.activation for r in sel]).view(-1, 1, 1, 1)).numpy()

    timings, (load_before, load_after) = interleaved({
        "engine": lambda: engine.deconv(model, inputs, subject.tensor, None, TOP, "max", "deconvnet"),
        "gRPC": lambda: client.deconv(subject.path, chosen, subject.tensor, None, TOP, "max", "deconvnet"),
        "Captum": captum_run,
    }, rounds)
    row: dict = {"batch": batch_size, "reconstructions": batch_size * TOP, "load": [round(load_before, 2), round(load_after, 2)]}
    for name, t in timings.items():
        row[name] = {"images_per_s": batch_size / t.best, "median_images_per_s": batch_size / t.median, "peak_bytes": t.peak}
    captum = timings["Captum"]
    row["engine_vs_captum"] = captum.best / timings["engine"].best
    row["grpc_vs_captum"] = captum.best / timings["gRPC"].best
    row["grpc_vs_captum_median"] = captum.median / timings["gRPC"].median
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(SUBJECTS), default=list(SUBJECTS))
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes (default: per model)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "bench.json")
    args = parser.parse_args()

    host = {**cpu(), "torch": f"{torch.__version__} ({torch.get_num_threads()} threads)", "onnxruntime": runtime.providers()[0]}
    engine = Engine(ModelStore())
    report = {"machine": host, "top": TOP, "rounds": args.rounds, "models": []}
    console = Console(width=200)
    with Client() as client:
        for key in args.models:
            make, batches = SUBJECTS[key]
            subject = make(args.batch or batches, args.json.parent)
            client.ensure_model(subject.path)
            rows = [rows_for(subject, client, engine, b, args.rounds) for b in subject.batches]
            report["models"].append({"model": subject.name, "layer": subject.tensor, "rows": rows})
            table = Table("batch", "engine img/s", "gRPC img/s", "Captum img/s", "engine / Captum", "gRPC / Captum (best, median)",
                          "peak MiB (engine, gRPC, Captum)", "load",
                          title=f"deconv of {subject.name}, top-{TOP}, mode max\n{machine()}")
            for r in rows:
                table.add_row(
                    str(r["batch"]), *(f"{r[n]['images_per_s']:.3g}" for n in ("engine", "gRPC", "Captum")),
                    f"{r['engine_vs_captum']:.2f}x", f"{r['grpc_vs_captum']:.2f}x, {r['grpc_vs_captum_median']:.2f}x",
                    ", ".join(mib(r[n]["peak_bytes"]).removesuffix(" MiB") for n in ("engine", "gRPC", "Captum")), "-".join(str(x) for x in r["load"]),
                )
            console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
