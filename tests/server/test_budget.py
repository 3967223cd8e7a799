"""Issue 18, one test (or more) per numbered defect, against a real ``zfserver`` process with a small
``--max-memory`` whose RSS is sampled every 20 ms: analyses outside the budget (1, 2), streamed
images not counted (3), slow clients holding the server (4), data sets read whole (6) and the
smaller items (7). Each asserts the status code and that the server's RSS stayed under
``--max-memory`` (the budget, what the process held at start and its 10% margin together). The
cache (5) is tested in test_cache.py, and in-process details of 4 and 7 in test_calls.py.

Reproducing a defect takes memory: the server is killed past twice ``--max-memory`` (the test then
fails), so a defect never takes the machine."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from service_testing import health

import hostile
from zfnet.tensors import CHANNEL_OPTIONS, from_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

MIB = 1 << 20
MAX_MEMORY = 640 * MIB
TIMEOUT = 120
Code = grpc.StatusCode
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


class Served:
    """A zfserver process (restarted when a defect killed it), a stub, and the bundled model's ref."""

    def __init__(self, folder: Path, model: Path, *options: str) -> None:
        self.folder, self.model, self.options = folder, model, options
        self.server: hostile.Zfserver | None = None
        self.start()

    def start(self) -> None:
        self.log = self.folder / f"zfserver-{time.monotonic_ns()}.log"
        self.server = hostile.Zfserver(
            "--max-memory", str(MAX_MEMORY), "--data-dir", str(self.folder / "data"), "--metrics-port", "0", *self.options,
            log=self.log, kill_at=2 * MAX_MEMORY,
        )
        self.channel = grpc.insecure_channel(self.server.target, options=CHANNEL_OPTIONS)
        self.stub = zfnet_pb2_grpc.ZfnetStub(self.channel)
        self.ref = pb.ModelRef(sha256=self.stub.UploadModel(upload_parts(self.model.read_bytes(), "zfnet-cifar10"), timeout=TIMEOUT).sha256)

    @property
    def proc(self) -> hostile.Zfserver:
        assert self.server is not None
        return self.server

    def alive(self) -> Served:
        if self.proc.process.poll() is not None:
            self.channel.close()
            self.start()
        return self

    def stub_for(self) -> tuple[grpc.Channel, zfnet_pb2_grpc.ZfnetStub]:
        channel = grpc.insecure_channel(self.proc.target, options=CHANNEL_OPTIONS)
        return channel, zfnet_pb2_grpc.ZfnetStub(channel)

    def metrics(self) -> dict[str, float]:
        """The budget's parts from /metrics: limit, requests, resident."""
        port = metrics_port(self.log)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT).read().decode()
        parts = {}
        for line in text.splitlines():
            if line.startswith('zfnet_memory_bytes{part="'):
                name = line.split('"')[1]
                parts[name] = float(line.rsplit(" ", 1)[1])
        return parts

    def under_budget(self, since: float) -> int:
        """The peak RSS since ``since``, asserted under --max-memory, the server alive and serving."""
        peak = self.proc.rss.peak(since)
        assert not self.proc.rss.killed, f"the server was killed at {peak / MIB:.0f} MiB RSS (twice --max-memory)"
        assert peak < MAX_MEMORY, f"RSS peaked at {peak / MIB:.0f} MiB, over --max-memory {MAX_MEMORY / MIB:.0f} MiB"
        reply = self.stub.Predict(pb.PredictRequest(model=self.ref, images=[sample(0)]), timeout=TIMEOUT)
        assert from_proto(reply.probabilities).shape == (1, 10)
        return peak

    def close(self) -> None:
        self.channel.close()
        self.proc.close()


def metrics_port(log: Path, wait_s: float = 30) -> str:
    """The /metrics port a zfserver logged (just after "serving on": waited for, bounded)."""
    end = time.monotonic() + wait_s
    while True:
        found = [line.rsplit(":", 1)[1].split("/")[0] for line in log.read_text().splitlines() if "metrics on http" in line]
        if found or time.monotonic() > end:
            return found[0]
        time.sleep(0.05)


def upload_parts(data: bytes, name: str, size: int | None = None, chunk: int = 1 << 20) -> Iterator[pb.UploadModelRequest]:
    yield pb.UploadModelRequest(header=pb.UploadHeader(sha256=hashlib.sha256(data).hexdigest(), size=len(data) if size is None else size, name=name))
    for start in range(0, len(data), chunk):
        yield pb.UploadModelRequest(chunk=data[start : start + chunk])


def sample(k: int) -> pb.Image:
    path = sorted((SAMPLES / "cifar10").glob("*/*.jpg"))[k]
    return pb.Image(encoded=path.read_bytes(), label=path.name)


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status of a call (a stream is read to its end)."""
    try:
        result = call()
        if isinstance(result, Iterator):
            for _ in result:
                pass
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return Code.OK, ""


def concurrently(calls: list[Callable[[], object]]) -> list[tuple[grpc.StatusCode, str]]:
    results: list[tuple[grpc.StatusCode, str]] = [(Code.UNKNOWN, "not run")] * len(calls)

    def run(i: int) -> None:
        results[i] = code_of(calls[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 4)
    return results


def hostile_data(root: Path, outside: Path) -> None:
    """Under ``root`` (the --data-dir): data set ``hostile`` with a device, a sparse 1.5 GB file, an
    image linked from outside the root and one from inside it; and ``linked``, a link to a folder outside."""
    (outside / "cat").mkdir()
    (outside / "cat" / "secret.jpg").write_bytes((SAMPLES / "cifar10" / "cat" / "0000.jpg").read_bytes())
    folder = root / "hostile" / "cat"
    folder.mkdir(parents=True)
    (folder / "a-real.jpg").write_bytes((SAMPLES / "cifar10" / "cat" / "0001.jpg").read_bytes())
    (folder / "b-zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(folder / "f-fifo.jpg")
    with (folder / "c-sparse.jpg").open("wb") as f:
        f.truncate(1536 * MIB)
    (folder / "d-outside.jpg").symlink_to(outside / "cat" / "secret.jpg")
    (folder / "e-inside.jpg").symlink_to(root / "bundled" / "cat" / "0000.jpg")
    (root / "linked").symlink_to(outside)


@pytest.fixture(scope="module")
def served(tmp_path_factory, reference_onnx: Path) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("budget")
    (folder / "data").mkdir()
    for image in sorted((SAMPLES / "cifar10").glob("*/000[0-3].jpg")):
        target = folder / "data" / "bundled" / image.parent.name / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.read_bytes())
    hostile_data(folder / "data", tmp_path_factory.mktemp("outside"))
    running = Served(folder, reference_onnx, "--stream-idle-timeout", "3")
    yield running
    running.close()


@pytest.fixture()
def srv(served: Served) -> Served:
    return served.alive()


# ---- 1. TopActivations and Evolution: admission, bounds on k and channels ----------------------------------


def top_call(srv: Served, job: pb.TopJob, batches: Iterable[pb.ImageBatch] = ()) -> tuple[grpc.StatusCode, str]:
    requests = [pb.TopRequest(job=job), *(pb.TopRequest(batch=b) for b in batches)]
    return code_of(lambda: srv.stub.TopActivations(iter(requests), timeout=TIMEOUT))


def streamed(size: int) -> pb.DataSource:
    return pb.DataSource(streamed=pb.StreamedImages(size=size))


def test_1_a_k_bomb_is_refused_under_the_budget(srv: Served) -> None:
    since = time.monotonic()
    job = pb.TopJob(model=srv.ref, layers=[pb.LayerRef(number=1)], k=3_000_000, data=streamed(1), stage=pb.TOP_SCAN)
    code, details = top_call(srv, job, [pb.ImageBatch(start=0, images=[sample(0)])])
    assert code == Code.RESOURCE_EXHAUSTED and "job.k" in details and "1,024" in details, details
    srv.under_budget(since)


def test_1_a_channel_bomb_is_refused_in_top_and_evolution(srv: Served) -> None:
    since = time.monotonic()
    zeros = [0] * 8_000_000
    job = pb.TopJob(model=srv.ref, layers=[pb.LayerRef(number=1)], k=9, channels=zeros, data=streamed(1), stage=pb.TOP_SCAN)
    assert len(job.SerializeToString()) < 9 * MIB, "the attack is a few MB"
    code, details = top_call(srv, job, [pb.ImageBatch(start=0, images=[sample(0)])])
    assert code == Code.RESOURCE_EXHAUSTED and "job.channels" in details, details
    request = pb.EvolutionRequest(models=[srv.ref], layers=[pb.LayerRef(number=1)], channels=zeros, data=pb.DataSource(dataset="bundled"))
    code, details = code_of(lambda: srv.stub.Evolution(request, timeout=TIMEOUT))
    assert code == Code.RESOURCE_EXHAUSTED and "channels" in details, details
    srv.under_budget(since)


def test_1_a_top_state_that_cannot_fit_is_refused_at_once_with_the_numbers(srv: Served) -> None:
    since = time.monotonic()
    job = pb.TopJob(model=srv.ref, layers=[pb.LayerRef(number=1)], k=1024, channels=[0] * 65536, data=streamed(1), stage=pb.TOP_SCAN)
    code, details = top_call(srv, job, [pb.ImageBatch(start=0, images=[sample(0)])])
    assert code == Code.RESOURCE_EXHAUSTED and "top-k state" in details and "budget is" in details, details
    srv.under_budget(since)


def test_1_top_activations_of_a_large_model_runs_in_batches_that_fit(srv: Served) -> None:
    since = time.monotonic()
    data = hostile.conv_model(512, 512, channels=32, name="wide").SerializeToString()  # 64 MiB of activations per image
    ref = pb.ModelRef(sha256=srv.stub.UploadModel(upload_parts(data, "wide"), timeout=TIMEOUT).sha256)
    job = pb.TopJob(model=ref, layers=[pb.LayerRef(name="r1")], k=4, data=streamed(24), stage=pb.TOP_SCAN)
    replies = list(srv.stub.TopActivations(iter([pb.TopRequest(job=job), pb.TopRequest(batch=pb.ImageBatch(start=0, images=[pb.Image(encoded=hostile.tiny_png(k * 10)) for k in range(24)]))]), timeout=TIMEOUT))
    final = replies[-1]
    assert final.WhichOneof("part") == "state" and final.state.covered[0].stop == 24
    srv.stub.DeleteModel(ref, timeout=TIMEOUT)
    srv.under_budget(since)


# ---- 2. Occlusion, Invariance and Correspondence inside the budget -------------------------------------------


def test_2_concurrent_stride_1_occlusions_stay_under_the_budget_and_memory_comes_back(srv: Served) -> None:
    idle = srv.proc.rss.settle(20)
    since = time.monotonic()
    request = pb.OcclusionRequest(model=srv.ref, images=[sample(3)], size=1, stride=1)
    results = concurrently([lambda: srv.stub.Occlusion(request, timeout=TIMEOUT)] * 3)
    assert [code for code, _ in results] == [Code.OK] * 3, results
    srv.under_budget(since)
    after = srv.proc.rss.settle(30)
    assert after < idle + 64 * MIB, f"idle {idle / MIB:.0f} MiB before, {after / MIB:.0f} MiB after: memory was not handed back"


def test_2_occlusions_of_large_images_wait_for_room(srv: Served) -> None:
    since = time.monotonic()
    big = pb.Image(encoded=hostile.flat_jpeg(4096, 4096), label="4096.jpg")
    request = pb.OcclusionRequest(model=srv.ref, images=[big], size=8, stride=4)
    results = concurrently([lambda: srv.stub.Occlusion(request, timeout=TIMEOUT)] * 4)
    assert [code for code, _ in results] == [Code.OK] * 4, results
    srv.under_budget(since)


def test_2_invariance_with_thousands_of_angles_is_bounded(srv: Served) -> None:
    since = time.monotonic()
    bomb = pb.InvarianceRequest(model=srv.ref, images=[sample(1)], sweeps=[pb.Sweep(transform=pb.ROTATE, values=list(np.linspace(0, 360, 5000)))])
    code, details = code_of(lambda: srv.stub.Invariance(bomb, timeout=TIMEOUT))
    assert code == Code.RESOURCE_EXHAUSTED and "sweeps" in details and "1,024" in details, details
    most = pb.InvarianceRequest(model=srv.ref, images=[sample(1)], sweeps=[pb.Sweep(transform=pb.ROTATE, values=list(np.linspace(0, 360, 1024)))])
    replies = list(srv.stub.Invariance(most, timeout=TIMEOUT))
    assert replies[-1].result.sweeps[0].values[-1] == 360
    srv.under_budget(since)


def test_2_correspondence_is_bounded_and_admitted(srv: Served) -> None:
    since = time.monotonic()
    box = pb.Box(top=4, left=4, bottom=12, right=12)
    many = pb.CorrespondenceRequest(model=srv.ref, images=[sample(0), sample(1)], parts=[f"p{k}" for k in range(100)],
                                    boxes=[pb.PartBoxes(boxes=[box] * 100)] * 2, random_trials=0)
    code, details = code_of(lambda: srv.stub.Correspondence(many, timeout=TIMEOUT))
    assert code == Code.RESOURCE_EXHAUSTED and "parts" in details, details
    fine = pb.CorrespondenceRequest(model=srv.ref, images=[sample(0), sample(1)], parts=["eye"], boxes=[pb.PartBoxes(boxes=[box])] * 2, random_trials=1000)
    assert list(srv.stub.Correspondence(fine, timeout=TIMEOUT))[-1].result.random_trials == 1000
    srv.under_budget(since)


# ---- 3. streamed images count from the moment they arrive ----------------------------------------------------


def features_requests(ref: pb.ModelRef, images: list[pb.Image], per_message: int, batch_size: int) -> Iterator[pb.FeaturesRequest]:
    job = pb.FeaturesJob(model=ref, layers=[pb.FeatureLayer(layer=pb.LayerRef(number=5))], default_pooling=pb.Pooling(kind=pb.POOL_AVG),
                         data=pb.DataSource(streamed=pb.StreamedImages(size=len(images)), batch_size=batch_size))
    yield pb.FeaturesRequest(job=job)
    for start in range(0, len(images), per_message):
        yield pb.FeaturesRequest(batch=pb.ImageBatch(start=start, images=images[start : start + per_message]))


def rows_of(replies: Iterable[pb.FeaturesReply]) -> int:
    return sum(len(r.rows.indices) for r in replies if r.HasField("rows"))


@pytest.mark.slow
def test_3_streamed_large_images_are_counted_as_they_arrive(srv: Served) -> None:
    since = time.monotonic()
    image = pb.Image(encoded=hostile.noise_png(700, 700), label="noise.png")
    assert len(image.encoded) > MIB
    as_in_the_issue = srv.stub.Features(features_requests(srv.ref, [image] * 768, 96, 256), timeout=TIMEOUT * 4)
    code, details = code_of(lambda: as_in_the_issue)
    assert code == Code.RESOURCE_EXHAUSTED and "larger than max" in details, details  # 1/16 of the budget per message
    small_messages = srv.stub.Features(features_requests(srv.ref, [image] * 384, 2, 256), timeout=TIMEOUT * 4)
    assert rows_of(small_messages) == 384
    srv.under_budget(since)


@pytest.mark.slow
def test_3_concurrent_streamed_features_jobs_stay_under_the_budget(srv: Served) -> None:
    since = time.monotonic()
    image = pb.Image(encoded=hostile.noise_png(700, 700, seed=1), label="noise.png")
    calls = [lambda: srv.stub.Features(features_requests(srv.ref, [image] * 96, 3, 256), timeout=TIMEOUT * 4)] * 4
    assert [code for code, _ in concurrently(calls)] == [Code.OK] * 4
    srv.under_budget(since)


# ---- 4. slow clients --------------------------------------------------------------------------------------------


class Stalled:
    """A request stream that sends ``first`` messages and then waits until released (or the call ends)."""

    def __init__(self, first: list) -> None:
        self.first, self.release = first, threading.Event()

    def __iter__(self) -> Iterator:
        yield from self.first
        self.release.wait(TIMEOUT)


def test_4_a_stalled_upload_holds_only_what_it_sent_and_is_cancelled_when_idle(srv: Served, reference_onnx: Path) -> None:
    since = time.monotonic()
    limit, resident = srv.metrics()["limit"], srv.metrics()["resident"]
    declared = int((limit - resident) / 8) - 2 * MIB  # declared whole, its load estimate would take all the room left
    stalled = Stalled([pb.UploadModelRequest(header=pb.UploadHeader(size=declared, name="stalled")), pb.UploadModelRequest(chunk=b"\0" * MIB)])
    channel, stub = srv.stub_for()
    upload = stub.UploadModel.future(iter(stalled), timeout=TIMEOUT)
    try:
        deadline = time.monotonic() + 10
        while srv.metrics()["requests"] < MIB and time.monotonic() < deadline:
            time.sleep(0.05)
        held = srv.metrics()["requests"]
        assert held < 8 * MIB, f"the stalled upload holds {held / MIB:.0f} MiB of the budget for the 1 MiB it sent"
        deconv = pb.DeconvRequest(model=srv.ref, images=[sample(2)], layer=pb.LayerRef(number=4))
        assert len(srv.stub.Deconv(deconv, timeout=30).images[0].reconstructions) == 9
        with pytest.raises(grpc.RpcError) as info:
            upload.result(timeout=60)  # --stream-idle-timeout 3: the server ends it
        assert info.value.code() == Code.CANCELLED
        deadline = time.monotonic() + 10
        while srv.metrics()["requests"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.metrics()["requests"] == 0, "the cancelled upload kept its reservation"
    finally:
        stalled.release.set()
        channel.close()
    srv.under_budget(since)


def test_4_idle_streams_of_any_rpc_leave_health_and_small_calls_answered(tmp_path: Path, reference_onnx: Path) -> None:
    """Eight idle streams took all eight worker threads; now health and small unary calls are answered."""
    (tmp_path / "data").mkdir()
    served = Served(tmp_path, reference_onnx)
    channel, stub = served.stub_for()
    streams: list[Stalled] = []
    calls = []
    try:
        job = pb.TopJob(model=served.ref, layers=[pb.LayerRef(number=1)], data=streamed(1), stage=pb.TOP_SCAN)
        openers = [
            lambda s: stub.UploadModel.future(iter(s), timeout=TIMEOUT),
            lambda s: stub.Features(iter(s), timeout=TIMEOUT),
            lambda s: stub.TopActivations(iter(s), timeout=TIMEOUT),
            lambda s: channel.stream_unary("/zfnet.v1.Zfnet/Predict", request_serializer=pb.PredictRequest.SerializeToString,
                                           response_deserializer=pb.PredictResponse.FromString).future(iter(s), timeout=TIMEOUT),
        ]
        firsts: list[list] = [[pb.UploadModelRequest(header=pb.UploadHeader(size=1000))], [], [pb.TopRequest(job=job)], []]
        for k in range(8):
            stalled = Stalled(firsts[k % 4])
            streams.append(stalled)
            calls.append(openers[k % 4](stalled))
        time.sleep(1.0)  # let the server take them all
        with grpc.insecure_channel(served.proc.target, options=CHANNEL_OPTIONS) as other:
            reply = health(other).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            other_stub = zfnet_pb2_grpc.ZfnetStub(other)
            assert other_stub.ListModels(pb.ListModelsRequest(), timeout=10).models
            assert other_stub.Predict(pb.PredictRequest(model=served.ref, images=[sample(0)]), timeout=10).predictions
    finally:
        for stalled in streams:
            stalled.release.set()
        for call in calls:
            call.cancel()
        channel.close()
        served.close()


# ---- 6. data sets: regular files under their root --------------------------------------------------------------


def test_6_data_sets_read_only_regular_files_inside_their_root(srv: Served) -> None:
    since = time.monotonic()
    listed = {d.name for d in srv.stub.ListDatasets(pb.ListDatasetsRequest(), timeout=TIMEOUT).datasets}
    assert "hostile" in listed and "linked" not in listed, listed
    code, details = code_of(lambda: srv.stub.Features(iter([pb.FeaturesRequest(job=pb.FeaturesJob(
        model=srv.ref, layers=[pb.FeatureLayer(layer=pb.LayerRef(number=5))], data=pb.DataSource(dataset="linked")))]), timeout=TIMEOUT))
    assert code == Code.NOT_FOUND, details
    job = pb.TopJob(model=srv.ref, layers=[pb.LayerRef(number=1)], k=1, data=pb.DataSource(dataset="hostile"), stage=pb.TOP_SCAN)
    replies = list(srv.stub.TopActivations(iter([pb.TopRequest(job=job)]), timeout=TIMEOUT))
    state = replies[-1].state
    skipped = {s.path.split("/")[-1]: s.reason for s in state.skipped}
    assert set(skipped) == {"b-zero.jpg", "c-sparse.jpg", "d-outside.jpg", "f-fifo.jpg"}, skipped
    assert "outside the data directory" in skipped["b-zero.jpg"] and "outside the data directory" in skipped["d-outside.jpg"]
    assert "bytes" in skipped["c-sparse.jpg"] and "pixel" in skipped["c-sparse.jpg"]
    assert "not a regular file" in skipped["f-fifo.jpg"]
    assert state.skipped_count == 4
    srv.under_budget(since)


# ---- 7. smaller items --------------------------------------------------------------------------------------------


def test_7_an_upload_of_size_0_is_admitted_as_its_bytes_arrive(srv: Served) -> None:
    data = hostile.conv_model(seed=7, name="unsized").SerializeToString()
    info = srv.stub.UploadModel(upload_parts(data, "unsized", size=0), timeout=TIMEOUT)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    srv.stub.DeleteModel(pb.ModelRef(sha256=info.sha256), timeout=TIMEOUT)


def test_7_a_features_job_whose_batch_does_not_fit_lowers_it(srv: Served) -> None:
    since = time.monotonic()
    data = hostile.conv_model(512, 512, channels=64, name="wide-features").SerializeToString()
    ref = pb.ModelRef(sha256=srv.stub.UploadModel(upload_parts(data, "wide"), timeout=TIMEOUT).sha256)
    images = [pb.Image(encoded=hostile.tiny_png(k)) for k in range(6)]
    job = pb.FeaturesJob(model=ref, layers=[pb.FeatureLayer(layer=pb.LayerRef(name="r1"))], default_pooling=pb.Pooling(kind=pb.POOL_AVG),
                         data=pb.DataSource(streamed=pb.StreamedImages(size=6)))
    replies = list(srv.stub.Features(iter([pb.FeaturesRequest(job=job), pb.FeaturesRequest(batch=pb.ImageBatch(start=0, images=images))]), timeout=TIMEOUT))
    header = replies[0].header
    assert 0 < header.batch_size < 64, "the default batch of 64 images of 512x512x64 activations does not fit 640 MiB"
    rows = [r for r in replies if r.HasField("rows")]
    assert sum(len(r.rows.indices) for r in rows) == 6
    features = np.concatenate([from_proto(r.rows.features[0]) for r in rows])
    assert features.shape == (6, 64) and np.isfinite(features).all()
    srv.stub.DeleteModel(ref, timeout=TIMEOUT)
    srv.under_budget(since)


def test_7_metrics_need_the_token_when_the_server_has_tokens(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("team-a-5f1c9e7d2b\n")
    tokens.chmod(0o600)
    server = hostile.Zfserver("--token-file", str(tokens), "--metrics-port", "0", log=tmp_path / "zfserver.log")
    try:
        port = metrics_port(tmp_path / "zfserver.log")
        url = f"http://127.0.0.1:{port}/metrics"
        for header in (None, "Bearer wrong", "team-a-5f1c9e7d2b"):
            request = urllib.request.Request(url, headers={"Authorization": header} if header else {})
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(request, timeout=TIMEOUT)
            assert info.value.code == 401, header
        request = urllib.request.Request(url, headers={"Authorization": "Bearer team-a-5f1c9e7d2b"})
        assert b"zfnet_memory_bytes" in urllib.request.urlopen(request, timeout=TIMEOUT).read()
    finally:
        server.close()
