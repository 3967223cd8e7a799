"""Several replicas behind one client channel: round_robin over a static list, models uploaded to
each replica, NOT_FOUND re-upload per replica, per-replica metrics, and a replica killed mid-run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from zfnet.client import replicas
from zfnet.client.api import Client
from zfnet.errors import InvalidArgument

TIMEOUT = 120


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def calls(text: str, method: str, code: str = "OK") -> float:
    """The ``zfnet_requests_total`` of one method and code in a Prometheus text page (0 when absent)."""
    found = re.search(rf'^zfnet_requests_total\{{code="{code}",method="{method}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_list_becomes_a_static_target_with_round_robin_health_and_retries() -> None:
    assert replicas.channel_target("localhost:5001, 127.0.0.1:5002") == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    assert replicas.channel_target("[::1]:5001,[::1]:5002") == "ipv6:[::1]:5001,[::1]:5002"
    assert "127.0.0.1:7" in replicas.addresses("dns:///127.0.0.1:7")
    config = json.loads(replicas.service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"]["serviceName"] == "zfnet.v1.Zfnet"
    names = {n["method"] for n in config["methodConfig"][0]["name"]}
    assert "Deconv" in names and "UploadModel" not in names and "DeleteModel" not in names
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert replicas.is_replicated("dns:///zfnet:50051") and replicas.is_replicated("a:1,b:2") and not replicas.is_replicated("a:1")
    with pytest.raises(InvalidArgument, match="not host:port"):
        replicas.channel_target("127.0.0.1:1,nonsense")
    with pytest.raises(InvalidArgument, match="mix IPv4 and IPv6"):
        replicas.channel_target("127.0.0.1:1,[::1]:2")


@pytest.fixture()
def two_servers() -> Iterator[list]:
    from zfnet.server.app import start

    running = [start("127.0.0.1:0", metrics_port=0) for _ in range(2)]
    try:
        yield running
    finally:
        for r in running:
            r.server.stop(grace=None)
            r.metrics.close()


def test_each_replica_gets_the_model_and_a_lost_one_is_uploaded_again_to_it(two_servers, reference_onnx: Path, sample_images) -> None:
    target = ",".join(f"127.0.0.1:{r.port}" for r in two_servers)
    with Client(target) as client:
        sha = client.ensure_model(reference_onnx)
        assert all(r.engine.store.is_loaded(sha) or r.engine.store.lookup(sha) for r in two_servers)
        expected = client.deconv(reference_onnx, sample_images[:1], 1, channels=[0]).reconstructions[0].pixels
        two_servers[1].engine.store.delete(sha)  # this replica loses it (evicted, restarted)
        assert two_servers[1].engine.store.lookup(sha) is None
        for _ in range(6):
            got = client.deconv(reference_onnx, sample_images[:1], 1, channels=[0]).reconstructions[0].pixels
            np.testing.assert_array_equal(got, expected)
    assert two_servers[1].engine.store.lookup(sha) == sha  # uploaded again, to the replica that lacked it
    pages = [scrape(r.metrics_port) for r in two_servers]
    assert all(calls(page, "Deconv") >= 2 for page in pages), "round_robin spread the calls over both replicas"
    assert calls(pages[1], "Deconv", "NOT_FOUND") >= 1
    assert calls(pages[1], "UploadModel") == 2
    assert re.search(r'^zfnet_memory_bytes\{part="rss"\} [1-9]', pages[0], re.M)
    assert re.search(r"^zfnet_models_loaded 1\.0$", pages[0], re.M)
    assert re.search(r'^zfnet_request_seconds_count\{method="Deconv"\} [1-9]', pages[0], re.M)


class Zfserver:
    """``zfserver --port 0 --metrics-port 0`` in a subprocess; both ports read from its log."""

    def __init__(self) -> None:
        script = Path(sys.executable).parent / "zfserver"
        self.process = subprocess.Popen([str(script), "--port", "0", "--metrics-port", "0"], stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None  # stderr=PIPE
        self.log = self.process.stderr

    def wait_ready(self) -> None:
        log = []
        for line in self.log:
            log.append(line)
            if found := re.search(r"serving on 127\.0\.0\.1:(\d+)", line):
                self.target = f"127.0.0.1:{found.group(1)}"
            if found := re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line):
                self.metrics_port = int(found.group(1))
                break
        else:
            raise AssertionError("zfserver did not start:\n" + "".join(log))
        threading.Thread(target=self.log.read, daemon=True).start()  # keep its pipe drained

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(TIMEOUT)


@pytest.mark.slow
def test_300_deconvs_over_3_replicas_one_killed_mid_run_none_fail(reference_onnx: Path, sample_images) -> None:
    servers = [Zfserver() for _ in range(3)]
    try:
        for s in servers:
            s.wait_ready()
        images = sample_images[:10]
        with Client(",".join(s.target for s in servers)) as client:
            expected = [client.deconv(reference_onnx, [image], 2, channels=[3]).reconstructions[0].pixels for image in images]
            done = threading.Semaphore(0)
            before_kill: list[float] = []

            def one(i: int) -> np.ndarray:
                try:
                    return client.deconv(reference_onnx, [images[i % 10]], 2, channels=[3]).reconstructions[0].pixels
                finally:
                    done.release()

            with ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(one, i) for i in range(300)]
                for _ in range(100):
                    done.acquire()
                before_kill.append(calls(scrape(servers[2].metrics_port), "Deconv"))
                servers[2].process.kill()  # SIGKILL mid-run: calls in flight there fail over by the retry policy
                results = [f.result(timeout=TIMEOUT) for f in futures]  # any failed request raises here
        for i, got in enumerate(results):
            np.testing.assert_array_equal(got, expected[i % 10])
        served = [calls(scrape(s.metrics_port), "Deconv") for s in servers[:2]] + before_kill
        assert all(n > 0 for n in served), f"Deconv calls per replica: {served}"
    finally:
        for s in servers:
            s.stop()


def test_a_replica_reporting_not_serving_leaves_the_rotation(two_servers, reference_onnx: Path, sample_images) -> None:
    from grpc_health.v1 import health_pb2

    target = ",".join(f"127.0.0.1:{r.port}" for r in two_servers)
    with Client(target) as client:
        client.ensure_model(reference_onnx)
        two_servers[1].health.set("zfnet.v1.Zfnet", health_pb2.HealthCheckResponse.NOT_SERVING)  # draining
        before = [r.metrics.count("Predict") for r in two_servers]
        for _ in range(8):
            client.predict(reference_onnx, sample_images[:1])
        after = [r.metrics.count("Predict") for r in two_servers]
    assert after[1] == before[1], "a NOT_SERVING replica still got calls: health checking is off"
    assert after[0] - before[0] == 8


def test_tls_to_one_replica_by_ip_checks_the_service_name() -> None:
    assert replicas.name_override("dns:///zfnet.default.svc:50051") == [("grpc.ssl_target_name_override", "zfnet.default.svc")]
    assert replicas.name_override("10.0.0.1:1,10.0.0.2:1") == []
