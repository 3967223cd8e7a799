"""Issue 18, in-process details of defects 5 and 7 on a real server: a cancelled unary Deconv stops
at its next part, a --model-dir model keeps its name when the same bytes are uploaded, and a
--model-dir file changed on disk is a new model (its SHA-256) on its next load."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

import grpc
import onnx
import pytest

from zfnet.server import admission, deconv
from zfnet.server.app import create_server
from zfnet.tensors import CHANNEL_OPTIONS
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

TIMEOUT = 60


@pytest.fixture()
def served(tmp_path: Path, reference_onnx: Path):
    """A server of its own over a --model-dir holding the bundled model as ``cifar.onnx``."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(reference_onnx, folder / "cifar.onnx")
    server, port, engine = create_server("127.0.0.1:0", model_dir=folder)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
    try:
        yield zfnet_pb2_grpc.ZfnetStub(channel), folder / "cifar.onnx", engine
    finally:
        channel.close()
        server.stop(None)


def test_a_cancelled_unary_deconv_stops_at_its_next_part(served, sample_images, monkeypatch) -> None:
    stub, _, engine = served
    images = [pb.Image(encoded=sample_images[k % len(sample_images)].read_bytes()) for k in range(960)]
    request = pb.DeconvRequest(model=pb.ModelRef(name="cifar"), images=images, layer=pb.LayerRef(number=1), channels=pb.ChannelSelection(top_k=4))
    parts = -(-960 // (deconv.CHUNK_ROWS // 4))
    started, cancelled, runs = threading.Event(), threading.Event(), []
    reconstruct = deconv.reconstruct

    def counted(*args, **kwargs):
        runs.append(1)
        if len(runs) == 1:  # hold the first part until the server has seen the client's cancel
            started.set()
            assert cancelled.wait(TIMEOUT)
            active = admission._active.get()
            end = time.monotonic() + TIMEOUT
            while active is not None and active() and time.monotonic() < end:
                time.sleep(0.01)
        return reconstruct(*args, **kwargs)

    monkeypatch.setattr(deconv, "reconstruct", counted)
    call = stub.Deconv.future(request, timeout=TIMEOUT)
    assert started.wait(TIMEOUT)
    call.cancel()
    cancelled.set()
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    end = time.monotonic() + TIMEOUT  # wait for the server to end the call: its reservation goes (synchronisation, not timing)
    while engine.budget.status()["running"] and time.monotonic() < end:
        time.sleep(0.05)
    assert parts == 15 and len(runs) == 1, f"{len(runs)} of {parts} parts ran after the cancel"


def test_uploading_a_model_dir_models_bytes_keeps_its_name(served) -> None:
    stub, path, _ = served
    data = path.read_bytes()
    uploaded = stub.UploadModel(iter([pb.UploadModelRequest(header=pb.UploadHeader(name="renamed", size=len(data))), pb.UploadModelRequest(chunk=data)]), timeout=TIMEOUT)
    assert uploaded.name == "cifar"
    assert stub.GetModelInfo(pb.ModelRef(name="cifar"), timeout=TIMEOUT).name == "cifar"
    assert stub.GetModelInfo(pb.ModelRef(sha256=uploaded.sha256), timeout=TIMEOUT).name == "cifar"


def test_a_model_dir_file_changed_on_disk_is_a_new_model_on_its_next_load(served) -> None:
    stub, path, _ = served
    before = stub.GetModelInfo(pb.ModelRef(name="cifar"), timeout=TIMEOUT)
    assert before.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    changed = onnx.load_model(path)
    changed.metadata_props.add(key="test.edited", value="1")
    path.write_bytes(changed.SerializeToString())
    stub.DeleteModel(pb.ModelRef(name="cifar"), timeout=TIMEOUT)  # unloaded: it loads again on its next use
    after = stub.GetModelInfo(pb.ModelRef(name="cifar"), timeout=TIMEOUT)
    assert after.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() != before.sha256
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelInfo(pb.ModelRef(sha256=before.sha256), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
