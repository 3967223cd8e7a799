"""SIGTERM on a real ``zfserver`` process: health turns NOT_SERVING, new calls are refused, a call
in flight finishes within the grace period (or is cut at its end), and the process exits 0."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from service_testing import health

from zfnet.tensors import CHANNEL_OPTIONS
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

TIMEOUT = 60
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

pytestmark = pytest.mark.slow


class Zfserver:
    """``zfserver --port 0`` in a subprocess; the port read from its first log lines."""

    def __init__(self, *args: str) -> None:
        script = Path(sys.executable).parent / "zfserver"
        self.process = subprocess.Popen([str(script), "--port", "0", *args], stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None, "stderr=PIPE gives a pipe"
        self.stderr = self.process.stderr
        self.log: list[str] = []
        for line in self.stderr:
            self.log.append(line)
            found = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
            if found:
                self.target = f"127.0.0.1:{found.group(1)}"
                break
        else:
            raise AssertionError("zfserver did not start:\n" + "".join(self.log))
        self.channel = grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self.stub = zfnet_pb2_grpc.ZfnetStub(self.channel)

    def finish(self) -> int:
        code = self.process.wait(TIMEOUT)
        self.log += self.stderr.readlines()
        self.channel.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(TIMEOUT)


class Watcher(threading.Thread):
    """A health Watch stream, its statuses collected."""

    def __init__(self, channel: grpc.Channel) -> None:
        super().__init__(daemon=True)
        self.stub = health(channel)
        self.statuses: list[int] = []
        self.first = threading.Event()

    def run(self) -> None:
        try:
            for reply in self.stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT):
                self.statuses.append(reply.status)
                self.first.set()
        except grpc.RpcError:
            pass


class HeldUpload(threading.Thread):
    """An UploadModel call kept in flight: the header and a first chunk go out, the rest waits for ``release``."""

    def __init__(self, stub, data: bytes) -> None:
        super().__init__(daemon=True)
        self.stub, self.data = stub, data
        self.started, self.release = threading.Event(), threading.Event()
        self.reply: pb.ModelInfo | None = None
        self.error: grpc.RpcError | None = None

    def parts(self) -> Iterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(header=pb.UploadHeader(sha256=hashlib.sha256(self.data).hexdigest(), size=len(self.data), name="late"))
        yield pb.UploadModelRequest(chunk=self.data[:1000])
        self.started.set()
        self.release.wait(TIMEOUT)
        yield pb.UploadModelRequest(chunk=self.data[1000:])

    def run(self) -> None:
        try:
            self.reply = self.stub.UploadModel(self.parts(), timeout=TIMEOUT)
        except grpc.RpcError as err:
            self.error = err


@pytest.fixture()
def zfserver(request) -> Iterator[Zfserver]:
    server = Zfserver(*getattr(request, "param", ()))
    try:
        yield server
    finally:
        server.kill()


def in_flight(server: Zfserver, data: bytes) -> HeldUpload:
    """Start an upload and make sure the server has it: a later call on the same connection is answered."""
    upload = HeldUpload(server.stub, data)
    upload.start()
    assert upload.started.wait(TIMEOUT)
    server.stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT)
    return upload


@pytest.mark.parametrize("zfserver", [("--grace", "30")], indirect=True)
def test_sigterm_drains_then_exits_zero(zfserver: Zfserver, reference_onnx: Path) -> None:
    watcher = Watcher(zfserver.channel)
    watcher.start()
    assert watcher.first.wait(TIMEOUT) and watcher.statuses == [SERVING]
    data = reference_onnx.read_bytes()
    upload = in_flight(zfserver, data)
    zfserver.process.send_signal(signal.SIGTERM)
    watcher.join(TIMEOUT)
    assert watcher.statuses == [SERVING, NOT_SERVING], "health did not turn NOT_SERVING (or its stream held the shutdown)"
    with grpc.insecure_channel(zfserver.target) as fresh:  # a new connection: nothing is accepted any more
        with pytest.raises(grpc.RpcError) as info:
            zfnet_pb2_grpc.ZfnetStub(fresh).ListModels(pb.ListModelsRequest(), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    upload.release.set()
    upload.join(TIMEOUT)
    assert upload.error is None, upload.error
    assert upload.reply is not None and upload.reply.sha256 == hashlib.sha256(data).hexdigest(), "the call in flight did not finish"
    assert zfserver.finish() == 0, "".join(zfserver.log)
    log = "".join(zfserver.log)
    assert "SIGTERM: health NOT_SERVING" in log and "stopped" in log and "Traceback" not in log


@pytest.mark.parametrize("zfserver", [("--grace", "1")], indirect=True)
def test_a_call_past_the_grace_period_is_cut_and_the_server_still_exits_zero(zfserver: Zfserver, reference_onnx: Path) -> None:
    upload = in_flight(zfserver, reference_onnx.read_bytes())
    zfserver.process.send_signal(signal.SIGTERM)
    assert zfserver.finish() == 0, "".join(zfserver.log)
    upload.release.set()
    upload.join(TIMEOUT)
    assert upload.reply is None and upload.error is not None
    assert upload.error.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), upload.error
