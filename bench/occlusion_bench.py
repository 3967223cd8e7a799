"""Occlusion: zfnet's whole sheet (maps b to e, the paper's Fig. 7) of one image against Captum's
``Occlusion`` computing only map (d), side by side in one run, on the same model, image, window,
stride and baseline.

zfnet runs in-process (the engine) and over gRPC (client and server on one machine); Captum runs
on the PyTorch twin of the bundled model (same weights), its forward returning the class
probabilities, at each ``perturbations_per_eval`` in a list, the best one reported. Each method runs
in its own process so its peak memory (VmHWM above the resident size after warm-up) is its own.
Captum's attribution is recomputed from zfnet's map (d) (the probability drop averaged over the
windows covering each pixel) to show both did the same work.

    python bench/occlusion_bench.py [--strides 2 1] [--size 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
CHECKPOINT = ROOT / "models" / "zfnet-cifar10.pt"
IMAGE = ROOT / "samples" / "cifar10" / "cat" / "0000.jpg"
PER_EVAL = [1, 16, 64, 256]  # and all positions at once


def best_of(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` runs after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def _status(key: str) -> int:
    """A /proc/self/status figure in bytes."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key))
    return int(line.split()[1]) * 1024


def measured(fn, repeats: int) -> dict:
    """Time (best of ``repeats``) and peak memory above the warmed-up resident size."""
    fn()
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    seconds, result = best_of(fn, repeats)
    return {"seconds": seconds, "peak_mb": (_status("VmHWM") - before) / 2**20, "result": result}


def run_zfnet(kind: str, size: int, stride: int, repeats: int) -> dict:
    from zfnet.server import occlusion, perturbation
    from zfnet.server.images import ImageInput, to_batch
    from zfnet.server.models import load

    if kind == "engine":
        model = load(MODEL.read_bytes(), MODEL.stem)
        batch = to_batch([ImageInput(encoded=IMAGE.read_bytes())], model.framing)
        out = measured(lambda: perturbation.complete(occlusion.run(model, batch, 5, size, stride, "mean")), repeats)
        sheet, out["batch"] = out["result"].sheets[0], out["result"].batch
    else:
        from zfnet.client.api import Client

        with Client() as client:
            client.ensure_model(MODEL)
            out = measured(lambda: client.occlusion(MODEL, [IMAGE], size, stride, "mean", 5), repeats)
            sheet, out["batch"] = out["result"].images[0], out["result"].batch
    out["result"] = {"true_class_map": sheet.true_class_map, "true_class": sheet.true_class.index, "probability": sheet.true_class_probability}
    return out


def run_captum(size: int, stride: int, repeats: int, per_eval: int, true_class: int) -> dict:
    import torch
    from captum.attr import Occlusion

    from zfnet import imagefolder
    from zfnet.converters.pytorch import export, zoo

    net = export.load_weights(zoo.build("zfnet-cifar10"), CHECKPOINT).eval()
    pixels = torch.from_numpy(imagefolder.read_rgb(IMAGE).astype(np.float32).transpose(2, 0, 1)[None])
    mean = torch.tensor(zoo.CIFAR10_MEAN, dtype=torch.float32).view(1, 3, 1, 1).expand_as(pixels).contiguous()
    occlusion = Occlusion(lambda x: torch.softmax(net(x), dim=1))

    def attribute() -> np.ndarray:
        with torch.no_grad():
            return occlusion.attribute(pixels, sliding_window_shapes=(3, size, size), strides=(3, stride, stride), baselines=mean,
                                       target=true_class, perturbations_per_eval=per_eval).numpy()[0]

    out = measured(attribute, repeats)
    out["batch"] = per_eval
    return out


def _child(queue, fn, args) -> None:
    queue.put(fn(*args))


def in_process(fn, *args) -> dict:
    """``fn(*args)`` in a fresh process, so its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, fn, args))
    process.start()
    result = queue.get()
    process.join()
    return result


def captum_from_map(true_class_map: np.ndarray, probability: float, size: int, stride: int, height: int, width: int) -> np.ndarray:
    """Captum's attribution from zfnet's map (d): per pixel, the mean drop over the windows covering it."""
    total, count = np.zeros((height, width)), np.zeros((height, width))
    for r, top in enumerate(range(0, height - size + 1, stride)):
        for c, left in enumerate(range(0, width - size + 1, stride)):
            total[top : top + size, left : left + size] += probability - true_class_map[r, c]
            count[top : top + size, left : left + size] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def machine() -> str:
    import torch

    from zfnet.server import runtime

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime provider {runtime.providers()[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--strides", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "occlusion_bench.json")
    args = parser.parse_args()

    rows = []
    for stride in args.strides:
        positions = ((32 - args.size) // stride + 1) ** 2
        engine = in_process(run_zfnet, "engine", args.size, stride, args.repeats)
        grpc = in_process(run_zfnet, "grpc", args.size, stride, args.repeats)
        truth, sheet = engine["result"]["true_class"], engine["result"]
        captum = {per: in_process(run_captum, args.size, stride, args.repeats, per, truth) for per in sorted({*(p for p in PER_EVAL if p < positions), positions})}
        best = min(captum.values(), key=lambda r: r["seconds"])
        expected = captum_from_map(sheet["true_class_map"], sheet["probability"], args.size, stride, 32, 32)
        agreement = max(float(np.abs(r["result"].transpose(1, 2, 0) - expected[..., None]).max()) for r in captum.values())
        rows.append({
            "size": args.size, "stride": stride, "positions": positions,
            "engine_s": engine["seconds"], "engine_peak_mb": engine["peak_mb"], "engine_batch": engine["batch"],
            "grpc_s": grpc["seconds"], "grpc_peak_mb": grpc["peak_mb"],
            "captum_s": best["seconds"], "captum_peak_mb": best["peak_mb"], "captum_per_eval": best["batch"],
            "captum_all": {str(per): {"seconds": r["seconds"], "peak_mb": r["peak_mb"]} for per, r in captum.items()},
            "engine_vs_captum": best["seconds"] / engine["seconds"], "grpc_vs_captum": best["seconds"] / grpc["seconds"],
            "max_abs_difference_of_map_d": agreement,
        })
    table = Table("window, stride (positions)", "method", "computes", "copies per pass", "time (ms)", "peak (MB)", "speed-up",
                  title=f"occlusion of one image ({machine()})")
    for r in rows:
        setting = f"{r['size']}x{r['size']}, {r['stride']} ({r['positions']})"
        table.add_row(setting, "zfnet engine", "maps b-e", str(r["engine_batch"]), f"{r['engine_s'] * 1e3:.0f}", f"{r['engine_peak_mb']:.0f}", f"{r['engine_vs_captum']:.2f}x")
        table.add_row("", "zfnet gRPC", "maps b-e", str(r["engine_batch"]), f"{r['grpc_s'] * 1e3:.0f}", f"{r['grpc_peak_mb']:.0f}", f"{r['grpc_vs_captum']:.2f}x")
        table.add_row("", "Captum Occlusion", "map d", str(r["captum_per_eval"]), f"{r['captum_s'] * 1e3:.0f}", f"{r['captum_peak_mb']:.0f}", "1.00x",
                      end_section=True)
    Console().print(table)
    print("Captum at its best perturbations_per_eval; largest |Captum - map d averaged over its windows|: "
          + ", ".join(f"{r['max_abs_difference_of_map_d']:.1e}" for r in rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "image": str(IMAGE.relative_to(ROOT)), "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
