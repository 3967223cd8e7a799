"""The Node.js example (examples/node) against a real ``zfserver``: it uploads the bundled model,
predicts and deconvolves real images, and gets the same classes, probabilities and
reconstructions (to 1e-6) as the Python client asking the same server the same thing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from zfnet.client import render
from zfnet.client.api import Client
from zfnet.v1 import zfnet_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "node"
IMAGES = 40  # 40 images x 9 reconstructions x 12 KiB: a Deconv reply over grpc-js's 4 MiB default
LAYER, TOP_K = 4, 9


def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("Node.js is not installed (the example needs node >= 18)")
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        why = "npm is not installed" if shutil.which("npm") is None else "run `make node-deps` (npm ci in examples/node)"
        pytest.skip(f"the Node.js example's packages are not installed: {why}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def zfserver(tmp_path: Path) -> Iterator[str]:
    """``zfserver`` as a separate process on a free port, serving once healthy."""
    port = free_port()
    log = (tmp_path / "zfserver.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("zfserver")), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            stub, deadline = health_pb2_grpc.HealthStub(channel), time.monotonic() + 120
            while True:
                assert proc.poll() is None, f"zfserver exited: {(tmp_path / 'zfserver.log').read_text()}"
                try:
                    # typeshed's grpc_health stub gives HealthStub no methods; grpc sets Check on it in __init__
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:  # pyright: ignore[reportAttributeAccessIssue]
                        break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "zfserver did not start serving in 120 s"
                    time.sleep(0.5)
        yield target
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_node_client_agrees_with_python_client(zfserver: str, sample_images, reference_onnx: Path, tmp_path: Path) -> None:
    node_bin = node()
    images = sample_images[:IMAGES]
    out, summary = tmp_path / "node", tmp_path / "node.json"
    run = subprocess.run(
        [node_bin, str(EXAMPLE / "client.js"), "--server", zfserver, "--model", str(reference_onnx), "--layer", str(LAYER),
         "--top-k", str(TOP_K), "--out", str(out), "--json", str(summary), *map(str, images)],
        capture_output=True, text=True, timeout=600, cwd=EXAMPLE,
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(summary.read_text())

    assert got["health"] == "SERVING"
    assert {"zfnet.v1.Zfnet", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= set(got["services"])
    assert got["model"]["uploaded"] is True and got["model"]["input_shape"] == [-1, 3, 32, 32]

    with Client(zfserver) as client:
        assert client.ensure_model(reference_onnx) == got["model"]["sha256"]  # the Node upload is the model the server holds
        assert [m.sha256 for m in client._call(client.stub.ListModels, pb.ListModelsRequest()).models] == [got["model"]["sha256"]]
        predicted = client.predict(reference_onnx, images, top_k=3)
        result = client.deconv(reference_onnx, images, LAYER, top_k=TOP_K)

    # Predict: same classes, same probabilities
    probabilities = predicted.probabilities  # Client.predict returns zfnet.wire.predict.PredictResult
    assert got["probabilities"]["shape"] == list(probabilities.shape) == [IMAGES, 10]
    np.testing.assert_allclose(np.asarray(got["probabilities"]["data"]).reshape(probabilities.shape), probabilities, rtol=0, atol=1e-6)
    python_top = [[(s.index, s.label) for s in p.top] for p in predicted.predictions]
    assert [[(s["index"], s["label"]) for s in p] for p in got["predictions"]] == python_top
    np.testing.assert_allclose([[s["probability"] for s in p] for p in got["predictions"]],
                               [[s.probability for s in p.top] for p in predicted.predictions], rtol=0, atol=1e-6)

    # Deconv: same reconstructions, in the same order, to 1e-6
    deconv = got["deconv"]
    assert (deconv["layer"], deconv["mode"], deconv["method"]) == (result.layer, "MAX", "DECONVNET")
    rows = deconv["reconstructions"]
    assert len(rows) == len(result.reconstructions) == IMAGES * TOP_K
    for row, r in zip(rows, result.reconstructions):
        assert (row["image"], row["label"], row["channel"], tuple(row["location"]), tuple(row["receptive_field"])) == \
               (r.image, r.label, r.channel, r.location, r.receptive_field)
        assert row["activation"] == pytest.approx(r.activation, rel=0, abs=1e-6)
    raw_file = out / deconv["raw"]["file"]
    assert raw_file.stat().st_size > 4 << 20, "the reply should exceed grpc-js's 4 MiB default receive limit"
    node_pixels = np.fromfile(raw_file, dtype="<f4").reshape(deconv["raw"]["shape"])
    python_pixels = np.stack([r.pixels for r in result.reconstructions])
    assert node_pixels.shape == python_pixels.shape == (IMAGES * TOP_K, 3, 32, 32)
    np.testing.assert_allclose(node_pixels, python_pixels, rtol=0, atol=1e-6)

    # the PNG is the first reconstruction as zfclient shows it (4x), within rounding
    with Image.open(out / "reconstruction.png") as png:
        shown = np.asarray(png.convert("RGB")).astype(int)
    expected = render.for_display(python_pixels[0]).repeat(4, axis=0).repeat(4, axis=1).astype(int)
    assert shown.shape == expected.shape == (128, 128, 3)
    assert np.abs(shown - expected).max() <= 1

    # the error on purpose, read with its google.rpc details
    error = got["error"]
    assert (error["code"], error["reason"], error["domain"]) == ("NOT_FOUND", "LAYER_NOT_FOUND", "zfnet.dev")
    assert error["field_violations"] == ["layer.name"] and error["resource"] == {"type": "layer", "name": "no-such-layer"}


def test_node_client_refuses_an_unknown_enum_name_before_calling() -> None:
    """protobuf.js would drop 'map' (not 'MAP') and the server would run the default: the example refuses it."""
    node_bin = node()
    run = subprocess.run([node_bin, str(EXAMPLE / "client.js"), "--server", "127.0.0.1:1", "--mode", "map", "x.jpg"],
                         capture_output=True, text=True, timeout=120, cwd=EXAMPLE, env={**os.environ, "ZFNET_SERVER": ""})
    assert run.returncode == 1
    assert run.stderr.strip() == "error: unknown DeconvMode 'map': use MAX, MAP"
