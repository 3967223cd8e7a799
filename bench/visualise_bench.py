"""Feature visualisation, the issue's bar on all 10,000 CIFAR-10 test images: for 16 channels of
layer 5 of the bundled model, the optimised image (defaults: 512 steps, seed 0, 32 x 32) against the
channel's strongest natural image (largest channel mean over ``../shared/data/cifar10/test``), the
rank of its own channel among the layer's on its image, and the seconds per channel on this machine.

    python bench/visualise_bench.py [--channels 16] [--data ../shared/data/cifar10/test] [--json out/visualise_bench.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from zfnet import imagefolder
from zfnet.server import perturbation, visualise
from zfnet.server.layers import resolve
from zfnet.server.models import load
from zfnet.wire.visualise import VisualiseRequest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
LAYER = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10" / "test")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    model = load(MODEL.read_bytes(), MODEL.stem)
    layer = resolve(model.layers, LAYER)
    start = time.perf_counter()
    result = perturbation.complete(visualise.run(model, layer, VisualiseRequest([str(c) for c in range(args.channels)], LAYER)))
    per_channel = (time.perf_counter() - start) / args.channels

    paths = sorted(p for p in args.data.glob("*/*") if p.suffix.lower() in imagefolder.IMAGE_SUFFIXES)
    natural = np.full(layer.shape[1], -np.inf)  # type: ignore[arg-type]
    for chunk in range(0, len(paths), 500):
        images = np.stack([imagefolder.read_rgb(p, (32, 32)) for p in paths[chunk : chunk + 500]]).astype(np.float32).transpose(0, 3, 1, 2)
        activation = perturbation.forward(model, images, [layer.name], 250, exact=True)[layer.name]
        natural = np.maximum(natural, activation.reshape(len(images), activation.shape[1], -1).mean(axis=2).max(axis=0))

    table = Table("channel", "optimised", "natural max", "ratio", "own rank", title=f"{layer.name}: {len(paths)} natural images; {per_channel:.1f} s per channel")
    rows = []
    for unit in result.units:
        ratio, rank = float(unit.objective[0] / natural[unit.unit]), int(unit.rank()[0]) + 1
        rows.append({"channel": unit.unit, "optimised": float(unit.objective[0]), "natural": float(natural[unit.unit]), "ratio": ratio, "rank": rank})
        table.add_row(str(unit.unit), f"{unit.objective[0]:.3g}", f"{natural[unit.unit]:.3g}", f"{ratio:.2f}", str(rank))
    Console(width=120).print(table)
    ratios = [r["ratio"] for r in rows]
    print(f"ratio >= 2: {sum(r >= 2 for r in ratios)} of {len(rows)} (min {min(ratios):.2f}); own channel first: {sum(r['rank'] == 1 for r in rows)} of {len(rows)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"layer": layer.name, "natural_images": len(paths), "seconds_per_channel": per_channel, "channels": rows}, indent=2))


if __name__ == "__main__":
    main()
