"""Soak a real ``zfserver`` on loopback: well-formed load, hostile requests and model uploads at once.

16 clients send 200 one-image deconv requests each (layer 4, top 9) while, concurrently, one
client keeps sending the memory-amplification and file-reading requests of issue 6 and another
uploads 30 distinct models (and runs one Predict on each). The server's RSS is sampled from
/proc every 50 ms. Passes when every well-formed request succeeds, every hostile one is refused
with its expected code, the RSS never reaches --max-memory, and once the uploads are deleted the
RSS settles within 20% of its idle figure (measured after a warm-up). Bounded: 16 x 200 requests,
30 uploads, and --deadline seconds in all. Writes out/soak.json and prints a summary.

    .venv/bin/python bench/soak.py [--clients 16] [--requests 200] [--uploads 30] [--max-memory 1G]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import grpc
import onnx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "server"))
import hostile  # noqa: E402  (the crafted requests the tests send too)

from zfnet.server.admission import parse_bytes, rss_bytes  # noqa: E402
from zfnet.tensors import CHANNEL_OPTIONS  # noqa: E402
from zfnet.v1 import zfnet_pb2 as pb  # noqa: E402
from zfnet.v1 import zfnet_pb2_grpc  # noqa: E402

MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
SAMPLES = sorted((ROOT / "samples" / "cifar10").glob("*/*.jpg"))
TIMEOUT = 300
Code = grpc.StatusCode
console = Console(stderr=True)


class Sampler(threading.Thread):
    """RSS of a process every ``every`` seconds, until stopped."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            rss = rss_bytes(self.pid)
            if rss:
                self.samples.append((time.monotonic(), rss))
            self.halt.wait(self.every)

    def since(self, start: float) -> list[int]:
        return [r for t, r in self.samples if t >= start]


def start_server(max_memory: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    script = Path(sys.executable).parent / "zfserver"
    log = log_path.open("w")
    process = subprocess.Popen([str(script), "--port", "0", "--host", "127.0.0.1", "--max-memory", max_memory], stderr=subprocess.PIPE, text=True)
    stderr = process.stderr
    assert stderr is not None  # stderr=PIPE
    for line in stderr:
        log.write(line)
        found = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
        if found:
            threading.Thread(target=lambda: [log.write(x) for x in stderr], daemon=True).start()
            return process, f"127.0.0.1:{found.group(1)}"
    raise SystemExit(f"zfserver did not start; see {log_path}")


def upload_parts(data: bytes, name: str):
    yield pb.UploadModelRequest(header=pb.UploadHeader(sha256=hashlib.sha256(data).hexdigest(), size=len(data), name=name))
    for start in range(0, len(data), 1 << 20):
        yield pb.UploadModelRequest(chunk=data[start : start + (1 << 20)])


def deconv_request(ref: pb.ModelRef, k: int) -> pb.DeconvRequest:
    path = SAMPLES[k % len(SAMPLES)]
    return pb.DeconvRequest(model=ref, images=[pb.Image(encoded=path.read_bytes(), label=path.name)], layer=pb.LayerRef(number=4), channels=pb.ChannelSelection(top_k=9))


def hostile_cases(stub, ref: pb.ModelRef, layers: list[str]) -> dict[str, tuple[Callable, Callable, Code]]:
    """name -> (call, request factory, expected code)."""
    sample = pb.Image(encoded=SAMPLES[0].read_bytes())
    tiny = pb.Image(encoded=hostile.tiny_png())
    bomb_ref = pb.ModelRef(sha256=stub.UploadModel(upload_parts(hostile.allocation_bomb_model().SerializeToString(), "bomb"), timeout=TIMEOUT).sha256)
    return {
        "model declaring 3x16000x16000 input": (stub.UploadModel, lambda: upload_parts(hostile.huge_input_model().SerializeToString(), "huge"), Code.RESOURCE_EXHAUSTED),
        "13000x13000 1-bit PNG": (stub.Predict, lambda: pb.PredictRequest(model=ref, images=[sample, pb.Image(encoded=BOMB_13K)]), Code.RESOURCE_EXHAUSTED),
        "20000x20000 PNG": (stub.Deconv, lambda: pb.DeconvRequest(model=ref, images=[pb.Image(encoded=BOMB_20K)], layer=pb.LayerRef(number=4)), Code.RESOURCE_EXHAUSTED),
        "GetActivations 1024 tiny images x all layers": (
            stub.GetActivations, lambda: pb.ActivationsRequest(model=ref, images=[tiny] * 1024, layers=[pb.LayerRef(name=n) for n in layers]), Code.RESOURCE_EXHAUSTED,
        ),
        "model reading README.md": (stub.UploadModel, lambda: upload_parts(hostile.file_reading_model("README.md").SerializeToString(), "reader"), Code.INVALID_ARGUMENT),
        "RGB tensor [0, 2^62, 3]": (stub.Predict, lambda: pb.PredictRequest(model=ref, images=[pb.Image(rgb=pb.Tensor(dtype=pb.UINT8, shape=[0, 1 << 62, 3]))]), Code.INVALID_ARGUMENT),
        "layer named '²'": (stub.Deconv, lambda: pb.DeconvRequest(model=ref, images=[sample], layer=pb.LayerRef(name="²")), Code.NOT_FOUND),
        "onnxruntime allocation of 2^63 bytes": (stub.Predict, lambda: pb.PredictRequest(model=bomb_ref, images=[sample]), Code.RESOURCE_EXHAUSTED),
    }


BOMB_13K = hostile.png(13000, 13000)
BOMB_20K = hostile.png(20000, 20000, rows=False)


def settle(sampler: Sampler, wait_s: float, window: float = 3.0) -> int:
    """RSS once it stops falling: the median of the last ``window`` seconds, after at most ``wait_s``."""
    end = time.monotonic() + wait_s
    last = None
    while time.monotonic() < end:
        time.sleep(window)
        now = statistics.median(sampler.since(time.monotonic() - window))
        if last is not None and now >= last * 0.99:
            return int(now)
        last = now
    return int(statistics.median(sampler.since(time.monotonic() - window)))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200, help="deconv requests per client")
    parser.add_argument("--uploads", type=int, default=30)
    parser.add_argument("--max-memory", default="1G")
    parser.add_argument("--deadline", type=float, default=1200, help="seconds for the whole run")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "soak.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    limit = parse_bytes(args.max_memory)
    deadline = time.monotonic() + args.deadline

    process, target = start_server(args.max_memory, args.out.with_suffix(".server.log"))
    sampler = Sampler(process.pid)
    sampler.start()
    channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    stub = zfnet_pb2_grpc.ZfnetStub(channel)
    try:
        console.print(f"zfserver pid {process.pid} on {target}, --max-memory {args.max_memory}")
        info = stub.UploadModel(upload_parts(MODEL.read_bytes(), MODEL.stem), timeout=TIMEOUT)
        ref = pb.ModelRef(sha256=info.sha256)
        for k in range(3):  # warm-up: the model, its relu4 projection, a predict
            stub.Deconv(deconv_request(ref, k), timeout=TIMEOUT)
            stub.Predict(pb.PredictRequest(model=ref, images=[pb.Image(encoded=SAMPLES[k].read_bytes())]), timeout=TIMEOUT)
        idle = settle(sampler, 30)
        console.print(f"idle RSS after warm-up: {idle / 2**20:.0f} MiB")

        latencies: list[float] = []
        failures: list[str] = []
        hostile_codes: dict[str, Counter] = defaultdict(Counter)
        uploads_ok: list[str] = []
        lock = threading.Lock()
        load_done = threading.Event()
        started = time.monotonic()

        def client(index: int) -> None:
            with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as own:
                own_stub = zfnet_pb2_grpc.ZfnetStub(own)
                for k in range(args.requests):
                    if time.monotonic() > deadline:
                        with lock:
                            failures.append("deadline reached")
                        return
                    t0 = time.perf_counter()
                    try:
                        reply = own_stub.Deconv(deconv_request(ref, index * args.requests + k), timeout=TIMEOUT)
                        assert len(reply.images[0].reconstructions) == 9
                        with lock:
                            latencies.append(time.perf_counter() - t0)
                    except (grpc.RpcError, AssertionError) as err:
                        with lock:
                            failures.append(f"deconv: {getattr(err, 'code', lambda: err)()}: {getattr(err, 'details', lambda: '')()}")

        def attacker() -> None:
            with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as own:
                own_stub = zfnet_pb2_grpc.ZfnetStub(own)
                cases = hostile_cases(own_stub, ref, [layer.name for layer in info.layers])
                while not load_done.is_set() and time.monotonic() < deadline:
                    for name, (call, make, _) in cases.items():
                        try:
                            call(make(), timeout=TIMEOUT)
                            code = Code.OK
                        except grpc.RpcError as err:
                            code = err.code()
                        with lock:
                            hostile_codes[name][code.name] += 1
                self_cases.update({name: expected.name for name, (_, _, expected) in cases.items()})

        def uploader() -> None:
            base = onnx.load(MODEL)
            with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as own:
                own_stub = zfnet_pb2_grpc.ZfnetStub(own)
                for k in range(args.uploads):
                    base.doc_string = f"soak variant {k}"
                    data = base.SerializeToString()
                    try:
                        sha = own_stub.UploadModel(upload_parts(data, f"variant-{k}"), timeout=TIMEOUT).sha256
                        own_stub.Predict(pb.PredictRequest(model=pb.ModelRef(sha256=sha), images=[pb.Image(encoded=SAMPLES[k].read_bytes())]), timeout=TIMEOUT)
                        with lock:
                            uploads_ok.append(sha)
                    except grpc.RpcError as err:
                        with lock:
                            failures.append(f"upload {k}: {err.code().name}: {err.details()}")

        self_cases: dict[str, str] = {}
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        side = [threading.Thread(target=attacker), threading.Thread(target=uploader)]
        for t in threads + side:
            t.start()
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic()))
        load_done.set()
        for t in side:
            t.join(max(1.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - started
        peak = max(sampler.since(started))

        held = stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
        for model in held:  # the uploads still held go (others were evicted); what stays is what was there at idle
            if model.sha256 != ref.sha256:
                stub.DeleteModel(pb.ModelRef(sha256=model.sha256), timeout=TIMEOUT)
        stub.Deconv(deconv_request(ref, 0), timeout=TIMEOUT)  # one more request: the budget hands memory back when idle
        after = settle(sampler, 60)
    finally:
        channel.close()
        process.terminate()
        exit_code = process.wait(60)
        sampler.halt.set()

    evictions = sum(" evicted" in line for line in args.out.with_suffix(".server.log").read_text().splitlines())
    wrong = {name: dict(codes) for name, codes in hostile_codes.items() if set(codes) != {self_cases.get(name)}}
    ordered = sorted(latencies)
    result = {
        "clients": args.clients, "requests_per_client": args.requests, "deconv_ok": len(latencies), "deconv_errors": len([f for f in failures if f.startswith("deconv")]),
        "failures": failures[:20], "p50_ms": 1000 * ordered[len(ordered) // 2] if ordered else None,
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else None,
        "uploads_ok": len(uploads_ok), "uploads": args.uploads, "held_after": len(held), "evictions": evictions,
        "hostile": {name: dict(codes) for name, codes in hostile_codes.items()}, "hostile_expected": self_cases, "hostile_wrong": wrong,
        "max_memory_bytes": limit, "idle_rss_bytes": idle, "peak_rss_bytes": peak, "settled_rss_bytes": after,
        "settled_over_idle": after / idle, "seconds": elapsed, "server_exit_code": exit_code, "rss_samples": len(sampler.samples),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
    }
    passed = (
        not failures and len(latencies) == args.clients * args.requests and len(uploads_ok) == args.uploads and not wrong and self_cases
        and peak < limit and after <= 1.2 * idle and exit_code == 0
    )
    result["passed"] = bool(passed)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    table = Table("", "figure", title=f"soak: {args.clients} clients x {args.requests} deconv + hostile + {args.uploads} uploads")
    table.add_row("deconv ok / errors", f"{len(latencies)} / {result['deconv_errors']}")
    table.add_row("latency p50 / p99", f"{result['p50_ms']:.0f} ms / {result['p99_ms']:.0f} ms" if ordered else "-")
    table.add_row("uploads ok", f"{len(uploads_ok)} / {args.uploads} ({len(held) - 1} still held at the end, {evictions} evictions logged)")
    for name, codes in sorted(hostile_codes.items()):
        table.add_row(f"hostile: {name}", ", ".join(f"{c} x{n}" for c, n in codes.items()) + ("" if name not in wrong else "  WRONG"))
    table.add_row("RSS idle / peak / settled", f"{idle / 2**20:.0f} / {peak / 2**20:.0f} / {after / 2**20:.0f} MiB (limit {limit / 2**20:.0f} MiB)")
    table.add_row("settled / idle", f"{after / idle:.2f}")
    table.add_row("wall time", f"{elapsed:.0f} s; server exit code {exit_code}")
    table.add_row("result", "PASS" if passed else "FAIL")
    Console().print(table)
    console.print(f"wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
