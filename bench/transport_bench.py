"""Per-call cost of the in-process server's transport: one-image requests through the engine
directly, through gRPC on a private Unix socket (what ``Client()`` starts), and through gRPC on
loopback TCP (what it started before), measured side by side, interleaved, in one process.

    .venv/bin/python bench/transport_bench.py [--runs 40]

Writes out/transport_bench.json and prints medians and the ratios to the engine."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from zfnet.client.api import Client
from zfnet.server.app import create_server
from zfnet.server.engine import Engine
from zfnet.server.images import ImageInput
from zfnet.server.models import ModelStore

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
IMAGE = sorted((ROOT / "samples" / "cifar10").glob("*/*.jpg"))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "transport_bench.json")
    args = parser.parse_args()

    unix = Client()  # in-process, Unix socket
    tcp_server, port, _ = create_server("127.0.0.1:0")
    tcp = Client(f"127.0.0.1:{port}")
    sha = unix.ensure_model(MODEL)
    tcp.ensure_model(MODEL)
    engine = Engine(ModelStore())  # the engine alone, as the servers' own are
    model = engine.store.add(MODEL.read_bytes(), MODEL.stem)
    assert model.sha256 == sha
    data = IMAGE.read_bytes()

    calls = {
        "predict": {
            "engine": lambda: engine.predict(model, [ImageInput(encoded=data, label=IMAGE.name)]),
            "gRPC Unix socket": lambda: unix.predict(MODEL, [IMAGE]),
            "gRPC TCP loopback": lambda: tcp.predict(MODEL, [IMAGE]),
        },
        "deconv": {
            "engine": lambda: engine.deconv(model, [ImageInput(encoded=data, label=IMAGE.name)], 4),
            "gRPC Unix socket": lambda: unix.deconv(MODEL, [IMAGE], 4),
            "gRPC TCP loopback": lambda: tcp.deconv(MODEL, [IMAGE], 4),
        },
    }
    times: dict[str, dict[str, list[float]]] = {op: {way: [] for way in ways} for op, ways in calls.items()}
    for op, ways in calls.items():
        for fn in ways.values():  # warm-up: sessions, projection, connections
            fn()
        for _ in range(args.runs):
            for way, fn in ways.items():
                start = time.perf_counter()
                fn()
                times[op][way].append(time.perf_counter() - start)
    unix.close()
    tcp.close()
    tcp_server.stop(grace=None)

    result = {
        "runs": args.runs, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "median_ms": {op: {way: 1000 * statistics.median(v) for way, v in ways.items()} for op, ways in times.items()},
        "best_ms": {op: {way: 1000 * min(v) for way, v in ways.items()} for op, ways in times.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = Table("request (1 image)", "engine", "gRPC Unix socket", "gRPC TCP loopback", "Unix / engine", "TCP / engine", title=f"{args.runs} interleaved runs, ms")
    for stat in ("best", "median"):
        for op, ms in result[f"{stat}_ms"].items():
            e = ms["engine"]
            table.add_row(f"{op}, {stat}", f"{e:.1f}", f"{ms['gRPC Unix socket']:.1f}", f"{ms['gRPC TCP loopback']:.1f}", f"{ms['gRPC Unix socket'] / e:.2f}x", f"{ms['gRPC TCP loopback'] / e:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
