"""Start-up of zfclient: ``zfclient --help``, and what an in-process call costs before its first
reconstruction -- the model's preparation (expose pass, shape inference, layer table, projection
graph) with an empty cache against a warm one (``$XDG_CACHE_HOME/zfnet``), each in a fresh process.

    python bench/startup_bench.py [--model M] [--layer 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
ZFCLIENT = Path(sys.executable).parent / "zfclient"

# One in-process call, timed in steps: imports, server start, model upload and preparation, first deconv.
CALL = """
import json, sys, time
start = time.perf_counter()
from zfnet.client.api import Client
imported = time.perf_counter()
client = Client()
started = time.perf_counter()
info = client.model_info(sys.argv[1])
prepared = time.perf_counter()
client.deconv(sys.argv[1], [sys.argv[3]], sys.argv[2], top_k=9)
done = time.perf_counter()
client.close()
print(json.dumps({"imports": imported - start, "server": started - imported, "model": prepared - started, "first deconv": done - prepared}))
"""


def run_call(model: str, layer: str, image: str, cache: str) -> dict[str, float]:
    env = {**os.environ, "XDG_CACHE_HOME": cache}
    env.pop("ZFNET_SERVER", None)
    done = subprocess.run([sys.executable, "-c", CALL, model, layer, image], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def help_time() -> float:
    start = time.perf_counter()
    subprocess.run([str(ZFCLIENT), "--help"], capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "zfnet-cifar10.onnx"))
    parser.add_argument("--layer", default="4")
    parser.add_argument("--image", default=str(ROOT / "samples" / "cifar10" / "cat" / "0000.jpg"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    helps = [help_time() for _ in range(args.repeats)]
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(run_call(args.model, args.layer, args.image, cache))
            warm.append(run_call(args.model, args.layer, args.image, cache))
    best = {name: {step: min(r[step] for r in runs) for step in runs[0]} for name, runs in (("empty cache", cold), ("warm cache", warm))}
    table = Table("call", *best["empty cache"], "model + first deconv", title=f"zfclient start-up, best of {args.repeats} fresh processes (s)")
    for name, steps in best.items():
        table.add_row(name, *[f"{v:.3f}" for v in steps.values()], f"{steps['model'] + steps['first deconv']:.3f}")
    Console().print(table)
    Console().print(f"zfclient --help: best {min(helps):.3f} s, median {sorted(helps)[len(helps) // 2]:.3f} s")
    out = ROOT / "out" / "startup.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"help_s": helps, "steps_s": best, "model": args.model, "layer": args.layer, "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
