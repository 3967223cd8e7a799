"""GPU benchmark, one run: zfnet on onnxruntime's CUDA provider against PyTorch eager and Captum on
the same device, on the bundled model (``bench/gpu.sh`` runs it after the GPU tests).

- deconv: the top-9 channels of layer 4 (relu4) of a batch, each projected from its strongest
  activation (mode max, deconvnet): zfnet's in-process engine; Captum's ``NeuronDeconvolution`` on
  the PyTorch twin (one call per channel rank over the whole batch, as bench/deconv_bench.py); and
  the twin's bare eager forward pass as a floor. Images per second, best of ``--repeats``.
- top-9 over ``--images`` images (the CIFAR-10 test set from ../shared, else the bundled 200 samples
  repeated): zfnet's whole job (decode, scan of layer 5 = pool5, 64 channels, then the 576
  reconstructions) against PyTorch eager (the same decoding, eager forward on the device, a running
  ``torch.topk`` per channel) followed by Captum reconstructing the same number of winners.

Where no GPU is found everything runs on the CPU and says so. Writes one JSON (``--out``).

    python bench/gpu_bench.py [--small] [--images 10000] [--batch 256] [--out out/gpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
CHECKPOINT = ROOT / "models" / "zfnet-cifar10.pt"
SHARED_TEST = ROOT.parent / "shared" / "data" / "cifar10" / "test"
SAMPLES = ROOT / "samples" / "cifar10"
DECONV_LAYER, SCAN_LAYER, TOP = "relu4", "pool5", 9


def best_of(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def image_files(count: int) -> tuple[list[Path], str]:
    """``count`` JPEGs: the CIFAR-10 test set's first, else the bundled samples repeated."""
    if SHARED_TEST.is_dir():
        files = sorted(SHARED_TEST.glob("*/*.jpg"))
        if len(files) >= count:
            return files[:count], f"CIFAR-10 test set ({SHARED_TEST})"
    files = sorted(SAMPLES.glob("*/*.jpg"))
    return (files * (count // len(files) + 1))[:count], f"bundled samples ({len(files)} images) repeated"


def link_folder(files: list[Path], root: Path) -> Path:
    """A one-folder-per-class tree of links to ``files`` (a repeated file gets its own name)."""
    data = root / "data"
    for i, f in enumerate(files):
        (data / f.parent.name).mkdir(parents=True, exist_ok=True)
        (data / f.parent.name / f"{i:06d}-{f.name}").symlink_to(f.resolve())
    return root


def tests_summary(junit: Path | None, rc: int | None) -> dict:
    if junit is None or not junit.is_file():
        return {"ran": False, "exit_code": rc}
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {"ran": False, "exit_code": rc}
    cases = [{"name": c.get("name"), "outcome": next((x.tag for x in c if x.tag in ("failure", "error", "skipped")), "passed"),
              "message": next((x.get("message", "") for x in c if x.tag in ("failure", "error", "skipped")), "")} for c in suite.iter("testcase")]
    return {"ran": True, "exit_code": rc, "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--small", action="store_true", help="A quick run (256 images, batch 16, one repeat): checks the script, measures little.")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "gpu.json")
    parser.add_argument("--card", default="", help="nvidia-smi's name of the card ('' when none).")
    parser.add_argument("--junit", type=Path, default=None, help="The GPU tests' JUnit XML, summarised into the JSON.")
    parser.add_argument("--tests-rc", type=int, default=None)
    args = parser.parse_args()
    if args.small:
        args.images, args.batch, args.repeats = 256, 16, 1
    began = time.perf_counter()

    import onnxruntime as ort
    import torch

    from zfnet import imagefolder
    from zfnet.converters.pytorch import export, zoo
    from zfnet.server import runtime
    from zfnet.server.datasets import DatasetStore
    from zfnet.server.engine import Engine
    from zfnet.server.images import ImageInput
    from zfnet.server.models import ModelStore

    provider = runtime.providers()[0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    on_gpu = provider == runtime.CUDA and device.type == "cuda"
    if not on_gpu:
        print(f"gpu_bench: no GPU in use (onnxruntime: {provider}, torch: {device.type}); the figures below are CPU figures")
    try:
        from captum.attr import NeuronDeconvolution
    except ImportError:
        NeuronDeconvolution = None
        print("gpu_bench: captum is not installed; its rows are left out")

    net = export.load_weights(zoo.build("zfnet-cifar10"), CHECKPOINT).eval().to(device)
    engine = Engine(ModelStore())
    model = engine.store.add(MODEL.read_bytes(), MODEL.stem)
    files, data_note = image_files(args.images)
    report: dict = {
        "card": args.card or None, "gpu_used": on_gpu, "onnxruntime": ort.__version__, "onnxruntime_provider": provider,
        "torch": torch.__version__, "torch_device": str(device), "cuda_runtime": torch.version.cuda,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "data": data_note,
        "small": args.small, "model": MODEL.name,
    }

    # -- deconv images/s --------------------------------------------------------------------------
    chosen = files[: args.batch]
    inputs = [ImageInput(encoded=p.read_bytes()) for p in chosen]
    pixels = torch.from_numpy(np.stack([imagefolder.read_rgb(p) for p in chosen]).astype(np.float32).transpose(0, 3, 1, 2)).to(device)
    _, picked = engine.deconv(model, inputs, DECONV_LAYER, None, TOP, "max", "deconvnet")
    ranks = [[r for r in picked if r.image == i] for i in range(len(chosen))]
    deconv = {"batch": len(chosen), "layer": DECONV_LAYER, "reconstructions_per_image": TOP}
    deconv["zfnet_images_per_s"] = len(chosen) / best_of(lambda: engine.deconv(model, inputs, DECONV_LAYER, None, TOP, "max", "deconvnet"), args.repeats, sync)
    with torch.no_grad():
        deconv["torch_forward_images_per_s"] = len(chosen) / best_of(lambda: net(pixels), args.repeats, sync)
    if NeuronDeconvolution is not None:
        def captum_deconv() -> None:
            attribution = NeuronDeconvolution(net, getattr(net, DECONV_LAYER))
            for k in range(TOP):
                sel = [ranks[i][k] for i in range(len(chosen))]
                index = tuple(torch.tensor(v, device=device) for v in (range(len(sel)), [r.channel for r in sel], [r.location[0] for r in sel], [r.location[1] for r in sel]))
                result = attribution.attribute(pixels, neuron_selector=lambda out, index=index: cast(torch.Tensor, out)[index])
                (result * torch.tensor([r.activation for r in sel], device=device).view(-1, 1, 1, 1)).cpu()

        deconv["captum_images_per_s"] = len(chosen) / best_of(captum_deconv, args.repeats, sync)
        deconv["zfnet_vs_captum"] = deconv["zfnet_images_per_s"] / deconv["captum_images_per_s"]
    report["deconv"] = deconv

    # -- top-9 over the data set -----------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        root = link_folder(files, Path(tmp))
        engine.datasets = DatasetStore(root)
        start = time.perf_counter()
        parts = list(engine.top(model, engine.datasets.source("data", 0, 0, args.batch), data="dataset:data", layers=[5], channels=None,
                                k=TOP, by="max", method="deconvnet", stage="all", state=None))
        zfnet_s = time.perf_counter() - start
        state = next(p.state for p in parts if getattr(p, "final", False))
        entries = sum(type(p).__name__ == "Entry" for p in parts)
        top = {"images": len(files), "batch": args.batch, "layer": f"5 ({next(iter(state.layers))})", "k": TOP, "reconstructions": entries,
               "zfnet_s": zfnet_s, "zfnet_images_per_s": len(files) / zfnet_s}

        folder = imagefolder.scan(root / "data")
        start = time.perf_counter()
        captured: dict = {}
        hook = getattr(net, SCAN_LAYER).register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
        best: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (values, image indices, locations), each (C, k)
        with ThreadPoolExecutor(4) as pool, torch.no_grad():
            for b in range(0, len(folder), args.batch):
                batch = np.stack(list(pool.map(imagefolder.read_rgb, folder.files[b : b + args.batch]))).astype(np.float32).transpose(0, 3, 1, 2)
                net(torch.from_numpy(batch).to(device, non_blocking=True))
                out = captured["out"]  # (n, C, h, w)
                flat = out.flatten(2)
                value, where = flat.max(dim=2)  # (n, C)
                index = torch.arange(b, b + len(batch), device=device).unsqueeze(1).expand_as(value)
                cand_v, cand_i, cand_l = value.T, index.T, where.T  # (C, n)
                if best is not None:
                    cand_v, cand_i, cand_l = (torch.cat([kept, new], 1) for kept, new in zip(best, (cand_v, cand_i, cand_l)))
                keep = torch.topk(cand_v, min(TOP, cand_v.shape[1]), dim=1).indices
                best = (torch.gather(cand_v, 1, keep), torch.gather(cand_i, 1, keep), torch.gather(cand_l, 1, keep))
        hook.remove()
        assert best is not None, "no images"
        best_v, best_i, best_loc = best
        sync()
        top["torch_scan_s"] = time.perf_counter() - start
        width = out.shape[3]
        same = float(np.mean(np.sort(best_i.cpu().numpy(), 1) == np.sort(state.layers[next(iter(state.layers))].indices, 1)))
        top["torch_vs_zfnet_same_winners"] = same
        if NeuronDeconvolution is not None:
            start = time.perf_counter()
            attribution = NeuronDeconvolution(net, getattr(net, SCAN_LAYER))
            rows = [(int(best_i[c, r]), c, int(best_loc[c, r]) // width, int(best_loc[c, r]) % width, float(best_v[c, r]))
                    for c in range(best_i.shape[0]) for r in range(best_i.shape[1])]
            for s in range(0, len(rows), args.batch):
                images_of, channels, ys, xs, values = zip(*rows[s : s + args.batch])
                winners = np.stack([imagefolder.read_rgb(folder.files[i]) for i in images_of]).astype(np.float32).transpose(0, 3, 1, 2)
                index = tuple(torch.tensor(v, device=device) for v in (range(len(images_of)), channels, ys, xs))
                result = attribution.attribute(torch.from_numpy(winners).to(device), neuron_selector=lambda out, index=index: cast(torch.Tensor, out)[index])
                (result * torch.tensor(values, device=device).view(-1, 1, 1, 1)).cpu()
            sync()
            top["captum_reconstruct_s"] = time.perf_counter() - start
            top["torch_captum_s"] = top["torch_scan_s"] + top["captum_reconstruct_s"]
            top["torch_captum_images_per_s"] = len(files) / top["torch_captum_s"]
            top["zfnet_vs_torch_captum"] = top["torch_captum_s"] / zfnet_s
        report["top"] = top

    report["tests"] = tests_summary(args.junit, args.tests_rc)
    report["seconds"] = time.perf_counter() - began
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    where = args.card or "no GPU"
    print(f"{where}: onnxruntime {ort.__version__} ({provider}), torch {torch.__version__} ({device}); {data_note}")
    line = f"  deconv, batch {deconv['batch']}, {DECONV_LAYER} top-{TOP}: zfnet {deconv['zfnet_images_per_s']:.0f} images/s"
    if "captum_images_per_s" in deconv:
        line += f", Captum {deconv['captum_images_per_s']:.0f} ({deconv['zfnet_vs_captum']:.1f}x)"
    print(line + f", torch forward alone {deconv['torch_forward_images_per_s']:.0f}")
    line = f"  top-9 over {top['images']:,} images (batch {top['batch']}): zfnet {top['zfnet_s']:.1f} s ({top['zfnet_images_per_s']:.0f} images/s)"
    if "torch_captum_s" in top:
        line += f", torch eager + Captum {top['torch_captum_s']:.1f} s ({top['zfnet_vs_torch_captum']:.1f}x)"
    print(line + f"; same winners {top['torch_vs_zfnet_same_winners']:.1%}")
    print(f"  -> {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
