"""``zfclient deconv`` over a folder of CIFAR-10 images, the whole process (start, model upload,
requests, every picture drawn and written), against the engine's time for the same reconstructions
(``Engine.deconv`` in-process on the same files, in batches of 64), side by side in one run: the
contenders run interleaved (:mod:`sidebyside`), so the ratio holds under a changing load. Issue 20's
budget: the whole command takes at most 2x the engine's time. Also ``--no-grid`` (arrays only).

    python bench/deconv_cli_bench.py [--images 1000] [--rounds 1] [--data ../shared/data/cifar10/test]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from itertools import count
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sidebyside import cpu, interleaved, machine, mib
from zfnet.server.engine import Engine
from zfnet.server.images import ImageInput
from zfnet.server.models import ModelStore, load

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
LAYER, TOP, BATCH = "relu4", 9, 64  # the paper's layer 4, its top-9 channels per image


def chosen(data: Path, n: int, folder: Path) -> list[Path]:
    """The first ``n`` images of a class-folder tree, taken from the classes in turn, linked into ``folder``."""
    classes = sorted(p for p in data.iterdir() if p.is_dir())
    files = [sorted(c.iterdir()) for c in classes]
    picked = [f[k] for k in range(max(map(len, files))) for f in files if k < len(f)][:n]
    for path in picked:
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / path.parent.name / path.name).symlink_to(path.resolve())
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10" / "test")
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "deconv_cli_bench.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="deconv-cli-bench-") as tmp:
        folder = Path(tmp) / "images"
        files = chosen(args.data, args.images, folder)
        inputs = [ImageInput(encoded=p.read_bytes()) for p in files]
        engine = Engine(ModelStore())
        model = load(MODEL.read_bytes(), MODEL.stem)
        runs = count()

        def engine_run() -> None:
            for start in range(0, len(inputs), BATCH):
                engine.deconv(model, inputs[start : start + BATCH], LAYER, None, TOP, "max", "deconvnet")

        def command(*extra: str):
            def run() -> None:
                out = Path(tmp) / f"out{next(runs)}"
                zfclient = [str(Path(sys.executable).parent / "zfclient"), "deconv"]  # the installed script, as a user runs it
                subprocess.run([*zfclient, "--model", str(MODEL), "--layer", LAYER, "--top", str(TOP), "--image", str(folder), "--out", str(out), *extra],
                               check=True, capture_output=True)
            return run

        timings, (load_before, load_after) = interleaved(
            {"engine": engine_run, "zfclient deconv": command(), "zfclient deconv --no-grid": command("--no-grid")}, args.rounds,
        )
    engine_s = timings["engine"].best
    rows = {name: {"best_s": t.best, "median_s": t.median, "vs_engine": t.best / engine_s, "peak_bytes": t.peak} for name, t in timings.items()}
    report = {"machine": cpu(), "images": len(files), "layer": LAYER, "top": TOP, "rounds": args.rounds, "load": [round(load_before, 2), round(load_after, 2)], "rows": rows}
    table = Table("contender", "best s", "images/s", "vs engine", "peak (engine only)",
                  title=f"deconv of {len(files)} CIFAR-10 images, {LAYER}, top-{TOP}, mode max; {machine()}; load {load_before:.1f}-{load_after:.1f}")
    for name, row in rows.items():
        table.add_row(name, f"{row['best_s']:.1f}", f"{len(files) / row['best_s']:.1f}", f"{row['vs_engine']:.2f}x", mib(row["peak_bytes"]) if name == "engine" else "")
    Console(width=160).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
