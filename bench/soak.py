"""Soak a real ``zfserver`` on loopback: well-formed load, hostile requests and model uploads at once.

Phase 1: 16 clients send 200 one-image deconv requests each (layer 4, top 9) while, concurrently,
one client keeps sending the memory-amplification and file-reading requests of issue 6 and another
uploads 30 distinct models (and runs one Predict on each).

Phase 2 (issue 18, every analysis at once): 8 clients x 100 deconvs while other clients run
stride-1 occlusions of 4096x4096 JPEGs, invariance sweeps of 1,024 angles (well-formed) and of
5,000 (refused), k and channel bombs (refused), streamed Features jobs of 700x700 noise PNGs, and
keep 8 stalled uploads and 8 idle streams open (the server cancels them after
--stream-idle-timeout); a prober checks health every 100 ms.

The server's RSS is sampled from /proc every 50 ms. Passes when every well-formed request
succeeds, every hostile one ends with its expected code, health is answered within 1 s
throughout phase 2, the RSS never reaches --max-memory, and after each phase the RSS settles
within 20% of its idle figure (measured after a warm-up). Bounded in count and by --deadline
seconds in all. Writes out/soak.json and prints a summary.

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
import numpy as np
import onnx
from grpc_health.v1 import health_pb2
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "server"))
import hostile  # noqa: E402  (the crafted requests the tests send too)
from service_testing import health  # noqa: E402  (a typed health stub)

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


IDLE_TIMEOUT_S = 5  # the server's --stream-idle-timeout in the soak


def start_server(max_memory: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    script = Path(sys.executable).parent / "zfserver"
    log = log_path.open("w")
    process = subprocess.Popen(
        [str(script), "--port", "0", "--host", "127.0.0.1", "--max-memory", max_memory, "--stream-idle-timeout", str(IDLE_TIMEOUT_S),
         "--max-calls-per-client", "64"],  # every soak client shares one address stderr=subprocess.PIPE, text=True,
    )
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


def call_code(call: Callable[[], object]) -> Code:
    """The status code of a call (a stream is read to its end)."""
    try:
        result = call()
        if hasattr(result, "__next__"):
            for _ in result:  # type: ignore[attr-defined]
                pass
        return Code.OK
    except grpc.RpcError as err:
        return err.code()


def streamed_features(ref: pb.ModelRef, image: pb.Image, count: int, per_message: int):
    job = pb.FeaturesJob(model=ref, layers=[pb.FeatureLayer(layer=pb.LayerRef(number=5))], default_pooling=pb.Pooling(kind=pb.POOL_AVG),
                         data=pb.DataSource(streamed=pb.StreamedImages(size=count)))
    yield pb.FeaturesRequest(job=job)
    for start in range(0, count, per_message):
        yield pb.FeaturesRequest(batch=pb.ImageBatch(start=start, images=[image] * min(per_message, count - start)))


def analysis_cases(stub, ref: pb.ModelRef) -> dict[str, tuple[Callable[[], object], Code]]:
    """Phase 2: name -> (call, expected code); the well-formed ones expect OK."""
    big = pb.Image(encoded=hostile.flat_jpeg(4096, 4096), label="4096.jpg")
    noise = pb.Image(encoded=hostile.noise_png(700, 700), label="noise.png")
    sample = pb.Image(encoded=SAMPLES[1].read_bytes())
    one = pb.DataSource(streamed=pb.StreamedImages(size=1))

    def top(job: pb.TopJob):
        return lambda: stub.TopActivations(iter([pb.TopRequest(job=job), pb.TopRequest(batch=pb.ImageBatch(start=0, images=[sample]))]), timeout=TIMEOUT)

    def sweep(angles: int):
        request = pb.InvarianceRequest(model=ref, images=[sample], sweeps=[pb.Sweep(transform=pb.ROTATE, values=list(np.linspace(0, 360, angles)))])
        return lambda: stub.Invariance(request, timeout=TIMEOUT)

    return {
        "occlusion, stride 1, 4096x4096 JPEG": (lambda: stub.Occlusion(pb.OcclusionRequest(model=ref, images=[big], size=1, stride=1), timeout=TIMEOUT), Code.OK),
        "invariance, 1,024 angles": (sweep(1024), Code.OK),
        "invariance, 5,000 angles": (sweep(5000), Code.RESOURCE_EXHAUSTED),
        "TopActivations k=3,000,000": (top(pb.TopJob(model=ref, layers=[pb.LayerRef(number=1)], k=3_000_000, data=one, stage=pb.TOP_SCAN)), Code.RESOURCE_EXHAUSTED),
        "TopActivations 8,000,000 channels": (top(pb.TopJob(model=ref, layers=[pb.LayerRef(number=1)], k=9, channels=[0] * 8_000_000, data=one, stage=pb.TOP_SCAN)), Code.RESOURCE_EXHAUSTED),
        "Features, 96 streamed 700x700 PNGs": (lambda: stub.Features(streamed_features(ref, noise, 96, 3), timeout=TIMEOUT), Code.OK),
    }


class Stalled:
    """A request stream that sends ``first`` and then nothing until released."""

    def __init__(self, first: list) -> None:
        self.first, self.release = first, threading.Event()

    def __iter__(self):
        yield from self.first
        self.release.wait(TIMEOUT)


def slow_clients(ref: pb.ModelRef, count: int) -> list[tuple[str, Callable[[zfnet_pb2_grpc.ZfnetStub, Stalled], object], list]]:
    """(name, call, first messages): ``count`` stalled uploads (a header declaring 97 MiB, 1 MiB
    sent) and ``count`` idle streams (a job sent and no images, or nothing at all)."""
    job = pb.TopJob(model=ref, layers=[pb.LayerRef(number=1)], data=pb.DataSource(streamed=pb.StreamedImages(size=8)), stage=pb.TOP_SCAN)
    upload = [pb.UploadModelRequest(header=pb.UploadHeader(size=97 << 20, name="stalled")), pb.UploadModelRequest(chunk=b"\0" * (1 << 20))]
    stalled: tuple[str, Callable[[zfnet_pb2_grpc.ZfnetStub, Stalled], object], list] = ("stalled UploadModel", lambda stub, s: stub.UploadModel(iter(s), timeout=TIMEOUT), upload)
    idle: list[tuple[str, Callable[[zfnet_pb2_grpc.ZfnetStub, Stalled], object], list]] = [
        ("idle TopActivations", lambda stub, s: stub.TopActivations(iter(s), timeout=TIMEOUT), [pb.TopRequest(job=job)]),
        ("idle Features", lambda stub, s: stub.Features(iter(s), timeout=TIMEOUT), []),
    ]
    return [stalled] * count + [idle[k % 2] for k in range(count)]


def run_load(load: list[threading.Thread], side: list[threading.Thread], done: threading.Event, deadline: float) -> None:
    """Start ``load`` and ``side``; once the load has finished (or the deadline passed), set ``done``
    and wait for ``side`` to end."""
    for t in load + side:
        t.start()
    for t in load:
        t.join(max(1.0, deadline - time.monotonic()))
    done.set()
    for t in side:
        t.join(max(1.0, deadline - time.monotonic()))


def hostile_phase(target: str, ref: pb.ModelRef, clients: int, requests: int, deadline: float) -> dict:
    """Phase 2 (see the module doc): the figures, and what went wrong."""
    latencies: list[float] = []
    failures: list[str] = []
    codes: dict[str, Counter] = defaultdict(Counter)
    health_s: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def deconvs(index: int) -> None:
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as own:
            own_stub = zfnet_pb2_grpc.ZfnetStub(own)
            for k in range(requests):
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                try:
                    assert len(own_stub.Deconv(deconv_request(ref, index * requests + k), timeout=TIMEOUT).images[0].reconstructions) == 9
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                except (grpc.RpcError, AssertionError) as err:
                    with lock:
                        failures.append(f"deconv: {getattr(err, 'code', lambda: err)()}: {getattr(err, 'details', lambda: '')()}")

    def analyses(name: str) -> None:
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as own:
            call, _ = analysis_cases(zfnet_pb2_grpc.ZfnetStub(own), ref)[name]
            while not done.is_set() and time.monotonic() < deadline:
                code = call_code(call)
                with lock:
                    codes[name][code.name] += 1

    def slow(name: str, opener: Callable[[zfnet_pb2_grpc.ZfnetStub, Stalled], object], first: list) -> None:
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as own:
            own_stub = zfnet_pb2_grpc.ZfnetStub(own)
            while not done.is_set() and time.monotonic() < deadline:
                stalled = Stalled(first)
                code = call_code(lambda: opener(own_stub, stalled))
                stalled.release.set()
                with lock:
                    codes[name][code.name] += 1

    def prober() -> None:
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as own:
            check = health(own).Check
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                    with lock:
                        health_s.append(time.perf_counter() - t0)
                except grpc.RpcError as err:
                    with lock:
                        failures.append(f"health: {err.code().name}")
                done.wait(0.1)

    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as setup:
        expected = {name: code.name for name, (_, code) in analysis_cases(zfnet_pb2_grpc.ZfnetStub(setup), ref).items()}
    openers = slow_clients(ref, 8)
    loads = [threading.Thread(target=deconvs, args=(i,)) for i in range(clients)]
    side = [threading.Thread(target=analyses, args=(name,)) for name in expected]
    side += [threading.Thread(target=slow, args=(name, opener, first)) for name, opener, first in openers]
    side.append(threading.Thread(target=prober))
    run_load(loads, side, done, deadline)
    expected |= {name: Code.CANCELLED.name for name, _, _ in openers}
    wrong = {name: dict(found) for name, found in codes.items() if set(found) != {expected[name]}}
    return {
        "clients": clients, "requests_per_client": requests, "deconv_ok": len(latencies), "failures": failures[:20], "errors": len(failures),
        "analyses": {name: dict(found) for name, found in codes.items()}, "expected": expected, "wrong": wrong,
        "health_checks": len(health_s), "health_max_ms": 1000 * max(health_s, default=float("nan")),
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
    parser.add_argument("--hostile-clients", type=int, default=8, help="phase 2: deconv clients")
    parser.add_argument("--hostile-requests", type=int, default=100, help="phase 2: deconv requests per client")
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
        run_load(threads, side, load_done, deadline)
        elapsed = time.monotonic() - started
        peak = max(sampler.since(started))

        held = stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
        for model in held:  # the uploads still held go (others were evicted); what stays is what was there at idle
            if model.sha256 != ref.sha256:
                stub.DeleteModel(pb.ModelRef(sha256=model.sha256), timeout=TIMEOUT)
        stub.Deconv(deconv_request(ref, 0), timeout=TIMEOUT)  # one more request: the budget hands memory back when idle
        after = settle(sampler, 60)

        console.print("phase 2: every analysis at once, slow clients, health probed")
        second = time.monotonic()
        phase2 = hostile_phase(target, ref, args.hostile_clients, args.hostile_requests, deadline)
        phase2_peak = max(sampler.since(second))
        stub.Deconv(deconv_request(ref, 0), timeout=TIMEOUT)
        phase2_after = settle(sampler, 60)
        phase2 |= {"peak_rss_bytes": phase2_peak, "settled_rss_bytes": phase2_after, "settled_over_idle": phase2_after / idle, "seconds": time.monotonic() - second}
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
        "hostile_phase": phase2,
    }
    passed = (
        not failures and len(latencies) == args.clients * args.requests and len(uploads_ok) == args.uploads and not wrong and self_cases
        and peak < limit and after <= 1.2 * idle and exit_code == 0
        and not phase2["errors"] and phase2["deconv_ok"] == args.hostile_clients * args.hostile_requests and not phase2["wrong"]
        and phase2["health_max_ms"] < 1000 and phase2_peak < limit and phase2_after <= 1.2 * idle
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
    table.add_row("phase 2: deconv ok / errors", f"{phase2['deconv_ok']} / {phase2['errors']}")
    for name, codes in sorted(phase2["analyses"].items()):
        table.add_row(f"phase 2: {name}", ", ".join(f"{c} x{n}" for c, n in codes.items()) + ("" if name not in phase2["wrong"] else "  WRONG"))
    table.add_row("phase 2: health checks / max latency", f"{phase2['health_checks']} / {phase2['health_max_ms']:.0f} ms")
    table.add_row("phase 2: RSS peak / settled", f"{phase2_peak / 2**20:.0f} / {phase2_after / 2**20:.0f} MiB (limit {limit / 2**20:.0f} MiB; settled / idle {phase2_after / idle:.2f})")
    table.add_row("result", "PASS" if passed else "FAIL")
    Console().print(table)
    console.print(f"wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
