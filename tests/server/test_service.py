"""The zfnet gRPC service over a real port: raw stubs and the Python client against bare onnxruntime.

Nothing here depends on the bundled model's weights (they are random until training replaces
them): results are compared with onnxruntime on the same file, with each other, or with
properties every model has.
"""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import cast

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image
from service_testing import CIFAR10, TIMEOUT, Conn, encoded, erf_model, health, large_model, still_serves, upload_parts

from zfnet.client.api import Client
from zfnet.tensors import CHANNEL_OPTIONS
from zfnet.server import engine as engine_module
from zfnet.server.app import create_server
from zfnet.server import deconv as deconv_module
from zfnet.server.deconv import CHUNK_ROWS
from zfnet.tensors import from_proto, to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

Code = grpc.StatusCode


# ---- helpers ---------------------------------------------------------------------------


def rgb_of(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, decoded with PIL."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def nchw(paths: list[Path]) -> np.ndarray:
    """Images as the model's float32 (N, 3, H, W) input in 0..255."""
    return np.stack([rgb_of(p).astype(np.float32).transpose(2, 0, 1) for p in paths])


def bare_run(path: Path, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs ``names`` of a plain onnxruntime session on the model at ``path`` (the reference)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(names, feeds)]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def model_inputs(batch: np.ndarray) -> list[pb.Image]:
    return [pb.Image(model_input=to_proto(x.astype(np.float32))) for x in batch]


def expect_error(call, request, code: grpc.StatusCode, *words: str) -> str:
    """The call fails with ``code`` and a message naming every one of ``words``."""
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT)
    details = info.value.details() or ""
    assert info.value.code() == code, f"{info.value.code()}: {details}"
    for word in words:
        assert word.lower() in details.lower(), f"{word!r} not in {details!r}"
    return details


# ---- health and reflection -------------------------------------------------------------


@pytest.mark.parametrize("service", ["", "zfnet.v1.Zfnet"])
def test_health_check_reports_serving(server, service: str) -> None:
    target, _ = server
    with grpc.insecure_channel(target) as channel:
        reply = health(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_of_unknown_service_is_not_found(server) -> None:
    target, _ = server
    with grpc.insecure_channel(target) as channel:
        expect_error(health(channel).Check, health_pb2.HealthCheckRequest(service="no.such.Service"), Code.NOT_FOUND)


def test_reflection_lists_services_and_describes_zfnet(server) -> None:
    target, _ = server
    with grpc.insecure_channel(target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"zfnet.v1.Zfnet", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        proto = db.FindFileContainingSymbol("zfnet.v1.Zfnet")
        methods = {m.name for s in proto.service for m in s.method}
    assert {"HasModel", "UploadModel", "ListModels", "GetModelInfo", "Predict", "GetActivations", "Deconv"} <= methods


# ---- models: upload once, limits, corrupt uploads ----------------------------------------


@pytest.mark.fresh_server  # counts uploads and lists what the server holds
def test_upload_happens_once_per_server(server, reference_onnx: Path, monkeypatch) -> None:
    target, engine = server
    sha = hashlib.sha256(reference_onnx.read_bytes()).hexdigest()
    adds: list[str] = []
    real_receive = engine.store.receive
    monkeypatch.setattr(engine.store, "receive", lambda chunks, name, size, sha256="": adds.append(name) or real_receive(chunks, name, size, sha256))
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = zfnet_pb2_grpc.ZfnetStub(channel)
        assert not stub.HasModel(pb.ModelRef(sha256=sha), timeout=TIMEOUT).present
        with Client(target) as first:
            assert first.ensure_model(reference_onnx) == sha
        assert adds == [reference_onnx.stem]
        reply = stub.HasModel(pb.ModelRef(sha256=sha), timeout=TIMEOUT)
        assert reply.present and reply.sha256 == sha
        assert not stub.HasModel(pb.ModelRef(name=reference_onnx.stem), timeout=TIMEOUT).present, "an upload name resolved"
        with Client(target) as second:
            assert second.ensure_model(reference_onnx) == sha
            assert second.model_info(reference_onnx).sha256 == sha
        assert adds == [reference_onnx.stem], "a second client uploaded a model the server already held"
        listed = stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
    assert [(m.sha256, m.name, m.size, list(m.upload_names), m.in_model_dir) for m in listed] == [
        (sha, reference_onnx.stem, reference_onnx.stat().st_size, [reference_onnx.stem], False)
    ]


def test_upload_over_4mib_then_predict_and_deconv(server, tmp_path: Path, sample_images) -> None:
    target, _ = server
    path = large_model(tmp_path / "large.onnx")
    assert path.stat().st_size > 4 << 20
    images = sample_images[:3]
    with Client(target) as client:
        info = client.model_info(path)
        assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        probs = client.probabilities(path, images)
        expected = softmax(bare_run(path, ["12"], {"image": nchw(images)})[0])
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        result = client.deconv(path, images[:1], 2, channels=[0, 7])
        assert [r.channel for r in result.reconstructions] == [0, 7]
        for r in result.reconstructions:
            assert r.location == () and r.receptive_field == (0, 0, 32, 32)
            assert r.pixels.shape == (3, 32, 32) and np.abs(r.pixels).max() > 0


@pytest.mark.fresh_server  # asserts the server does not hold the model
def test_upload_with_wrong_sha256_is_invalid_argument(conn: Conn, tmp_path: Path, sample_images) -> None:
    data = erf_model(tmp_path / "erf.onnx").read_bytes()
    wrong = hashlib.sha256(b"something else").hexdigest()
    expect_error(conn.stub.UploadModel, upload_parts(data, wrong), Code.INVALID_ARGUMENT, "sha-256", wrong)
    assert not conn.stub.HasModel(pb.ModelRef(sha256=hashlib.sha256(data).hexdigest()), timeout=TIMEOUT).present
    still_serves(conn, sample_images[0])


@pytest.mark.parametrize("data", [b"this is not an onnx model\n" * 40, bytes(range(256)) * 8], ids=["text", "binary"])
def test_upload_of_non_onnx_bytes_is_invalid_argument(conn: Conn, data: bytes, sample_images) -> None:
    expect_error(conn.stub.UploadModel, upload_parts(data, hashlib.sha256(data).hexdigest()), Code.INVALID_ARGUMENT, "onnx")
    still_serves(conn, sample_images[0])


def test_upload_chunk_before_header_is_invalid_argument(conn: Conn, sample_images) -> None:
    data = conn.path.read_bytes()
    parts = [pb.UploadModelRequest(chunk=data[:1000]), pb.UploadModelRequest(header=pb.UploadHeader(sha256=conn.sha, size=len(data)))]
    expect_error(conn.stub.UploadModel, iter(parts), Code.INVALID_ARGUMENT, "header")
    still_serves(conn, sample_images[0])


def test_upload_shorter_than_header_size_is_invalid_argument(conn: Conn, tmp_path: Path) -> None:
    data = erf_model(tmp_path / "erf.onnx").read_bytes()
    expect_error(conn.stub.UploadModel, upload_parts(data, hashlib.sha256(data).hexdigest(), size=len(data) + 10), Code.INVALID_ARGUMENT, str(len(data)))


def test_upload_over_max_model_mb_is_resource_exhausted(reference_onnx: Path, tmp_path: Path) -> None:
    data = reference_onnx.read_bytes()
    assert len(data) > 1 << 20
    srv, port, _ = create_server("127.0.0.1:0", max_model_mb=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            stub = zfnet_pb2_grpc.ZfnetStub(channel)
            sha = hashlib.sha256(data).hexdigest()
            expect_error(stub.UploadModel, upload_parts(data, sha, "big"), Code.RESOURCE_EXHAUSTED, "limit")
            # a header that understates the size does not get around the limit
            expect_error(stub.UploadModel, upload_parts(data, sha, "big", size=10), Code.RESOURCE_EXHAUSTED)
            assert not stub.HasModel(pb.ModelRef(sha256=sha), timeout=TIMEOUT).present
            small = erf_model(tmp_path / "erf.onnx").read_bytes()  # under the limit: accepted
            info = stub.UploadModel(upload_parts(small, hashlib.sha256(small).hexdigest(), "small"), timeout=TIMEOUT)
            assert info.input_shape == [-1, 3, 8, 8]
    finally:
        srv.stop(grace=None)


# ---- model info --------------------------------------------------------------------------


def test_model_info_of_bundled_model(conn: Conn) -> None:
    info = conn.stub.GetModelInfo(conn.ref, timeout=TIMEOUT)
    assert info.sha256 == conn.sha
    assert list(info.input_shape) == [-1, 3, 32, 32]
    assert list(info.classes) == CIFAR10
    assert info.output_name == "fc8" and info.input_name == "image"
    assert info.provider.endswith("ExecutionProvider")
    names = [layer.name for layer in info.layers]
    for name in ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]:
        assert name in names
    assert not any(n.endswith(".switches") for n in names)
    assert [layer.index for layer in info.layers] == list(range(len(info.layers)))
    numbered = {layer.number: layer for layer in info.layers if layer.number}
    assert sorted(numbered) == list(range(1, 9))
    assert [layer.number for layer in info.layers if layer.number] == list(range(1, 9)), "numbers follow graph order"
    assert numbered[8].name == "fc8" and list(numbered[8].shape) == [-1, 10]
    for layer in info.layers:
        assert layer.shape[0] == -1 and all(d > 0 for d in layer.shape[1:])
        assert layer.op


# ---- predict -----------------------------------------------------------------------------


def test_predict_matches_bare_onnxruntime(conn: Conn, sample_images) -> None:
    images = sample_images[:10]
    reply = conn.stub.Predict(pb.PredictRequest(model=conn.ref, images=encoded(images), top_k=3), timeout=TIMEOUT)
    probs = from_proto(reply.probabilities)
    assert probs.shape == (10, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    logits = bare_run(conn.path, ["fc8"], {"image": nchw(images)})[0]
    np.testing.assert_allclose(probs, softmax(logits), atol=1e-5)
    assert reply.softmax_applied
    assert len(reply.predictions) == 10
    for row, prediction in zip(probs, reply.predictions):
        assert len(prediction.top) == 3
        assert [s.index for s in prediction.top] == list(np.argsort(-row, kind="stable")[:3])
        assert [s.label for s in prediction.top] == [CIFAR10[s.index] for s in prediction.top]
        assert [s.probability for s in prediction.top] == pytest.approx([row[s.index] for s in prediction.top])


def test_predict_gives_the_same_for_every_image_form(conn: Conn, sample_images) -> None:
    images = sample_images[:4]
    rgb = [rgb_of(p) for p in images]
    forms = {
        "encoded": encoded(images),
        "rgb_uint8": [pb.Image(rgb=to_proto(x)) for x in rgb],
        "rgb_float32": [pb.Image(rgb=to_proto(x.astype(np.float32))) for x in rgb],
        "model_input": model_inputs(nchw(images)),
    }
    results = {k: from_proto(conn.stub.Predict(pb.PredictRequest(model=conn.ref, images=v), timeout=TIMEOUT).probabilities) for k, v in forms.items()}
    for name, probs in results.items():
        np.testing.assert_allclose(probs, results["encoded"], atol=1e-6, err_msg=name)
    mixed = [forms["encoded"][0], forms["rgb_uint8"][1], forms["model_input"][2], forms["rgb_float32"][3]]
    np.testing.assert_allclose(from_proto(conn.stub.Predict(pb.PredictRequest(model=conn.ref, images=mixed), timeout=TIMEOUT).probabilities), results["encoded"], atol=1e-6)


def test_predict_resizes_other_sizes(conn: Conn) -> None:
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # H=48, W=64
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    images = [pb.Image(encoded=buffer.getvalue()), pb.Image(rgb=to_proto(picture))]
    probs = from_proto(conn.stub.Predict(pb.PredictRequest(model=conn.ref, images=images), timeout=TIMEOUT).probabilities)
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)
    # the model saw a 32x32 version of the picture, not a crop of it
    resized = np.asarray(Image.fromarray(picture).resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32).transpose(2, 0, 1)[None]
    expected = softmax(bare_run(conn.path, ["fc8"], {"image": resized})[0])
    np.testing.assert_allclose(probs[0], expected[0], atol=1e-4)


def test_python_client_without_target_runs_in_process(reference_onnx: Path, sample_images) -> None:
    with Client() as client:
        probs = client.probabilities(reference_onnx, sample_images[:2])
        assert client.target.startswith("unix:"), "the in-process server listens on a private Unix socket"
    np.testing.assert_allclose(probs, softmax(bare_run(reference_onnx, ["fc8"], {"image": nchw(sample_images[:2])})[0]), atol=1e-5)


# ---- activations -------------------------------------------------------------------------


def test_activations_by_number_and_name_match_bare_onnxruntime(conn: Conn, sample_images) -> None:
    images = sample_images[:3]
    table = {layer.name: layer for layer in conn.stub.GetModelInfo(conn.ref, timeout=TIMEOUT).layers}
    by_number = {layer.number: layer.name for layer in table.values() if layer.number}
    refs = [pb.LayerRef(number=1), pb.LayerRef(number=3), pb.LayerRef(number=6), pb.LayerRef(name="conv2"), pb.LayerRef(name="bn4"), pb.LayerRef(name="fc8")]
    reply = conn.stub.GetActivations(pb.ActivationsRequest(model=conn.ref, images=encoded(images), layers=refs), timeout=TIMEOUT)
    names = [by_number[1], by_number[3], by_number[6], "conv2", "bn4", "fc8"]
    assert sorted(reply.activations) == sorted(names)
    bare = dict(zip(names, bare_run(conn.path, names, {"image": nchw(images)})))
    for name in names:
        value = from_proto(reply.activations[name])
        assert value.dtype == np.float32
        assert list(value.shape) == [3, *table[name].shape[1:]], name
        np.testing.assert_allclose(value, bare[name], atol=1e-5, rtol=1e-5, err_msg=name)
    # the Python client gives the same, by number given as int or digit string
    values = conn.client.activations(conn.path, images, [1, "conv2"])
    np.testing.assert_allclose(values[by_number[1]], bare[by_number[1]], atol=1e-5)
    np.testing.assert_allclose(values["conv2"], bare["conv2"], atol=1e-5)


# ---- deconv ------------------------------------------------------------------------------


def deconv(c: Conn, images: list[pb.Image], layer: pb.LayerRef, channels: list[int] | None = None, top_k: int = 0,
           mode=pb.DECONV_MODE_UNSPECIFIED, method=pb.DECONV_METHOD_UNSPECIFIED) -> pb.DeconvResponse:
    request = pb.DeconvRequest(model=c.ref, images=images, layer=layer, channels=pb.ChannelSelection(channels=channels or [], top_k=top_k), mode=mode, method=method)
    return c.stub.Deconv(request, timeout=TIMEOUT)


def test_deconv_top9_sorted_located_and_bounded(conn: Conn, sample_images) -> None:
    images = sample_images[:2]
    reply = deconv(conn, encoded(images), pb.LayerRef(number=2), top_k=9)
    table = {layer.name: layer for layer in conn.stub.GetModelInfo(conn.ref, timeout=TIMEOUT).layers}
    layer = table[reply.layer]
    assert layer.number == 2
    assert reply.mode == pb.MAX and reply.method == pb.DECONVNET
    acts = from_proto(conn.stub.GetActivations(pb.ActivationsRequest(model=conn.ref, images=encoded(images), layers=[pb.LayerRef(name=reply.layer)]), timeout=TIMEOUT).activations[reply.layer])
    spatial = list(layer.shape[2:])
    assert [r.label for r in reply.images] == [p.name for p in images]
    for i, per_image in enumerate(reply.images):
        recs = per_image.reconstructions
        assert len(recs) == 9
        values = [r.activation for r in recs]
        assert values == sorted(values, reverse=True)
        strength = acts[i].reshape(acts.shape[1], -1).max(axis=1)
        assert sorted(r.channel for r in recs) == sorted(np.argsort(-strength, kind="stable")[:9].tolist())
        for r in recs:
            pixels = from_proto(r.pixels)
            assert pixels.shape == (3, 32, 32) and pixels.dtype == np.float32 and np.all(np.isfinite(pixels))
            assert len(r.location) == 2 and all(0 <= p < s for p, s in zip(r.location, spatial))
            assert r.activation == pytest.approx(float(strength[r.channel]), abs=1e-5)
            assert acts[i, r.channel][tuple(r.location)] == pytest.approx(r.activation, abs=1e-5)
            box = r.receptive_field
            assert 0 <= box.top < box.bottom <= 32 and 0 <= box.left < box.right <= 32
            assert (box.bottom - box.top, box.right - box.left) != (32, 32) or spatial == [1, 1]
            if r.activation > 0:
                assert np.abs(pixels).max() > 0
            # one activation can only reach pixels inside its receptive field
            outside = pixels.copy()
            outside[:, box.top : box.bottom, box.left : box.right] = 0
            assert np.abs(outside).max() == 0, f"channel {r.channel}: signal outside {box}"


def test_deconv_explicit_channels_in_order(conn: Conn, sample_images) -> None:
    reply = deconv(conn, encoded(sample_images[:2]), pb.LayerRef(name="conv3"), channels=[3, 17, 5])
    assert reply.layer == "conv3"
    for per_image in reply.images:
        assert [r.channel for r in per_image.reconstructions] == [3, 17, 5]


def test_deconv_fully_connected_layer(conn: Conn, sample_images) -> None:
    reply = deconv(conn, encoded(sample_images[:1]), pb.LayerRef(number=8), top_k=3)
    assert reply.layer == "fc8"
    recs = reply.images[0].reconstructions
    assert len(recs) == 3
    for r in recs:
        assert list(r.location) == []
        assert (r.receptive_field.top, r.receptive_field.left, r.receptive_field.bottom, r.receptive_field.right) == (0, 0, 32, 32)
        assert from_proto(r.pixels).shape == (3, 32, 32)


@pytest.mark.parametrize("mode", [pb.MAX, pb.MAP])
def test_deconv_all_methods_work(conn: Conn, sample_images, mode) -> None:
    images = encoded(sample_images[:2])
    out, chosen = {}, {}
    for method in (pb.DECONVNET, pb.BACKPROP, pb.GUIDED):
        reply = deconv(conn, images, pb.LayerRef(number=3), top_k=2, mode=mode, method=method)
        assert reply.mode == mode and reply.method == method
        recs = [r for img in reply.images for r in img.reconstructions]
        assert len(recs) == 4
        for r in recs:
            pixels = from_proto(r.pixels)
            assert pixels.shape == (3, 32, 32) and np.all(np.isfinite(pixels))
            assert np.abs(pixels).max() > 0, f"method {method}, mode {mode}: all-zero reconstruction of a positive activation"
            if mode == pb.MAP:
                assert (r.receptive_field.top, r.receptive_field.left, r.receptive_field.bottom, r.receptive_field.right) == (0, 0, 32, 32)
        out[method] = np.stack([from_proto(r.pixels) for r in recs])
        chosen[method] = [(r.channel, r.activation) for r in recs]
    # the same channels are chosen by every method (selection depends on the forward pass only)
    assert chosen[pb.DECONVNET] == chosen[pb.BACKPROP] == chosen[pb.GUIDED]
    assert not np.allclose(out[pb.DECONVNET], out[pb.BACKPROP]), "deconvnet and backprop agree exactly through three ReLUs"


@pytest.mark.parametrize("method", [pb.DECONVNET, pb.BACKPROP, pb.GUIDED])
def test_deconv_map_equals_max_on_fully_connected_layer(conn: Conn, sample_images, method) -> None:
    """A unit of a fully connected layer is a single value: its whole map is its maximum, so MAP
    and MAX send the same signal down and must give the same reconstruction."""
    images = encoded(sample_images[:2])
    peak = deconv(conn, images, pb.LayerRef(number=7), top_k=3, mode=pb.MAX, method=method)
    whole = deconv(conn, images, pb.LayerRef(number=7), top_k=3, mode=pb.MAP, method=method)
    for a_img, b_img in zip(peak.images, whole.images):
        for a, b in zip(a_img.reconstructions, b_img.reconstructions, strict=True):
            assert a.channel == b.channel and a.activation == b.activation
            np.testing.assert_allclose(from_proto(a.pixels), from_proto(b.pixels), atol=1e-6)


def test_deconv_backprop_rows_do_not_mix(conn: Conn, sample_images) -> None:
    """A channel's reconstruction is the same alone, among other channels, among other images, and
    across the server's projection chunks (``CHUNK_ROWS`` rows, whatever its value)."""
    images = sample_images[:3]
    layer = pb.LayerRef(number=2)
    alone = deconv(conn, encoded(images[1:2]), layer, channels=[17], method=pb.BACKPROP).images[0].reconstructions[0]
    among = deconv(conn, encoded(images), layer, channels=[3, 17, 40], method=pb.BACKPROP)
    with_others = [r for r in among.images[1].reconstructions if r.channel == 17][0]
    np.testing.assert_allclose(from_proto(with_others.pixels), from_proto(alone.pixels), atol=1e-6, rtol=1e-5)
    assert with_others.activation == alone.activation and list(with_others.location) == list(alone.location)
    # every channel of enough images that the rows fill more than one chunk
    channels = next(row.shape[1] for row in conn.stub.GetModelInfo(conn.ref, timeout=TIMEOUT).layers if row.number == 2)
    images = sample_images[: -(-(CHUNK_ROWS + 1) // channels)]
    assert len(images) * channels > CHUNK_ROWS
    batched = deconv(conn, encoded(images), layer, top_k=channels, method=pb.BACKPROP)
    for i, image in enumerate(images):
        single = deconv(conn, encoded([image]), layer, top_k=channels, method=pb.BACKPROP).images[0].reconstructions
        rows = batched.images[i].reconstructions
        assert [r.channel for r in rows] == [r.channel for r in single]
        for a, b in zip(rows, single):
            np.testing.assert_allclose(from_proto(a.pixels), from_proto(b.pixels), atol=1e-6, rtol=1e-5, err_msg=f"image {i} channel {a.channel}")


def test_deconv_of_a_large_model_projects_a_few_rows_at_a_time(conn: Conn, sample_images, monkeypatch) -> None:
    """Where CHUNK_ROWS rows would hold more than ``RUN_BYTES`` (VGG16 at 224 px), the projection runs
    fewer rows at a time: one here, with the limit at one byte; the reconstructions are the same."""
    images, layer = encoded(sample_images[:2]), pb.LayerRef(number=4)
    whole = deconv(conn, images, layer, top_k=3)
    runs: list[int] = []
    run = deconv_module.runtime.run

    def counted(session, names, feeds, **kwargs):
        if names == [deconv_module.projection.RECONSTRUCTION]:
            runs.append(len(feeds[deconv_module.projection.SIGNAL]))
        return run(session, names, feeds, **kwargs)

    monkeypatch.setattr(deconv_module, "RUN_BYTES", 1)
    monkeypatch.setattr(deconv_module.runtime, "run", counted)
    few = deconv(conn, images, layer, top_k=3)
    assert runs == [1] * 6
    for a_img, b_img in zip(few.images, whole.images, strict=True):
        for a, b in zip(a_img.reconstructions, b_img.reconstructions, strict=True):
            assert a.channel == b.channel and a.activation == b.activation
            np.testing.assert_allclose(from_proto(a.pixels), from_proto(b.pixels), atol=1e-6, rtol=1e-5)


def test_deconv_python_client_matches_raw_stub(conn: Conn, sample_images) -> None:
    images = sample_images[:2]
    result = conn.client.deconv(conn.path, images, 4, top_k=4, method="guided")
    reply = deconv(conn, encoded(images), pb.LayerRef(number=4), top_k=4, method=pb.GUIDED)
    assert result.layer == reply.layer and result.method == "guided" and result.mode == "max"
    raw = [(i, r) for i, img in enumerate(reply.images) for r in img.reconstructions]
    assert len(result.reconstructions) == len(raw) == 8
    for ours, (i, r) in zip(result.reconstructions, raw):
        assert (ours.image, ours.label, ours.channel, ours.location) == (i, images[i].name, r.channel, tuple(r.location))
        np.testing.assert_array_equal(ours.pixels, from_proto(r.pixels))


# ---- errors: status code, message, and the server keeps serving --------------------------


def test_unknown_model_sha_is_not_found(conn: Conn, sample_images) -> None:
    sha = "ab" * 32
    request = pb.PredictRequest(model=pb.ModelRef(sha256=sha), images=encoded(sample_images[:1]))
    expect_error(conn.stub.Predict, request, Code.NOT_FOUND, sha, "upload")
    expect_error(conn.stub.GetModelInfo, pb.ModelRef(name="no-such-model"), Code.NOT_FOUND, "no-such-model")
    assert not conn.stub.HasModel(pb.ModelRef(sha256=sha), timeout=TIMEOUT).present
    still_serves(conn, sample_images[0])


def test_missing_model_ref_is_invalid_argument(conn: Conn, sample_images) -> None:
    expect_error(conn.stub.Predict, pb.PredictRequest(images=encoded(sample_images[:1])), Code.INVALID_ARGUMENT, "model")
    still_serves(conn, sample_images[0])


def test_unknown_layer_name_is_not_found(conn: Conn, sample_images) -> None:
    request = pb.DeconvRequest(model=conn.ref, images=encoded(sample_images[:1]), layer=pb.LayerRef(name="conv99"))
    expect_error(conn.stub.Deconv, request, Code.NOT_FOUND, "conv99")
    request = pb.ActivationsRequest(model=conn.ref, images=encoded(sample_images[:1]), layers=[pb.LayerRef(name="nope")])
    expect_error(conn.stub.GetActivations, request, Code.NOT_FOUND, "nope")
    still_serves(conn, sample_images[0])


@pytest.mark.parametrize("number", [0, 99, -1])
def test_layer_number_out_of_range_is_not_found(conn: Conn, sample_images, number: int) -> None:
    request = pb.DeconvRequest(model=conn.ref, images=encoded(sample_images[:1]), layer=pb.LayerRef(number=number))
    expect_error(conn.stub.Deconv, request, Code.NOT_FOUND, str(number), "1..8")
    request = pb.ActivationsRequest(model=conn.ref, images=encoded(sample_images[:1]), layers=[pb.LayerRef(number=number)])
    expect_error(conn.stub.GetActivations, request, Code.NOT_FOUND, "1..8")
    still_serves(conn, sample_images[0])


def test_missing_layer_is_invalid_argument(conn: Conn, sample_images) -> None:
    request = pb.DeconvRequest(model=conn.ref, images=encoded(sample_images[:1]))
    expect_error(conn.stub.Deconv, request, Code.INVALID_ARGUMENT, "layer")
    request = pb.ActivationsRequest(model=conn.ref, images=encoded(sample_images[:1]))
    expect_error(conn.stub.GetActivations, request, Code.INVALID_ARGUMENT, "layer")
    still_serves(conn, sample_images[0])


@pytest.mark.parametrize("channel", [64, 999, -1])
def test_channel_out_of_range_is_invalid_argument(conn: Conn, sample_images, channel: int) -> None:
    request = pb.DeconvRequest(model=conn.ref, images=encoded(sample_images[:1]), layer=pb.LayerRef(number=2), channels=pb.ChannelSelection(channels=[1, channel]))
    details = expect_error(conn.stub.Deconv, request, Code.INVALID_ARGUMENT, str(channel), "64")
    assert "[1," not in details, "the message should name only the bad channel"
    still_serves(conn, sample_images[0])


def test_negative_top_k_is_invalid_argument(conn: Conn, sample_images) -> None:
    request = pb.DeconvRequest(model=conn.ref, images=encoded(sample_images[:1]), layer=pb.LayerRef(number=2), channels=pb.ChannelSelection(top_k=-3))
    expect_error(conn.stub.Deconv, request, Code.INVALID_ARGUMENT, "top_k")
    still_serves(conn, sample_images[0])


def test_unknown_mode_or_method_is_invalid_argument(conn: Conn, sample_images) -> None:
    # numbers the enums do not define: proto3 enums are open, so they reach the server
    request = pb.DeconvRequest(model=conn.ref, images=encoded(sample_images[:1]), layer=pb.LayerRef(number=2), method=cast(pb.DeconvMethod, 7))
    expect_error(conn.stub.Deconv, request, Code.INVALID_ARGUMENT, "method")
    request = pb.DeconvRequest(model=conn.ref, images=encoded(sample_images[:1]), layer=pb.LayerRef(number=2), mode=cast(pb.DeconvMode, 9))
    expect_error(conn.stub.Deconv, request, Code.INVALID_ARGUMENT, "mode")
    still_serves(conn, sample_images[0])


def test_undecodable_image_is_invalid_argument(conn: Conn, sample_images) -> None:
    images = [*encoded(sample_images[:1]), pb.Image(encoded=b"\xff\xd8\xff garbage, not a JPEG", label="broken.jpg")]
    expect_error(conn.stub.Predict, pb.PredictRequest(model=conn.ref, images=images), Code.INVALID_ARGUMENT, "image 1", "broken.jpg", "decode")
    request = pb.DeconvRequest(model=conn.ref, images=images, layer=pb.LayerRef(number=1))
    expect_error(conn.stub.Deconv, request, Code.INVALID_ARGUMENT, "broken.jpg")
    still_serves(conn, sample_images[0])


def test_image_without_data_is_invalid_argument(conn: Conn, sample_images) -> None:
    images = [*encoded(sample_images[:1]), pb.Image(label="empty")]
    expect_error(conn.stub.Predict, pb.PredictRequest(model=conn.ref, images=images), Code.INVALID_ARGUMENT, "image 1")
    still_serves(conn, sample_images[0])


@pytest.mark.parametrize("rpc", ["Predict", "GetActivations", "Deconv"])
def test_empty_image_list_is_invalid_argument(conn: Conn, sample_images, rpc: str) -> None:
    request = {
        "Predict": pb.PredictRequest(model=conn.ref),
        "GetActivations": pb.ActivationsRequest(model=conn.ref, layers=[pb.LayerRef(number=1)]),
        "Deconv": pb.DeconvRequest(model=conn.ref, layer=pb.LayerRef(number=1)),
    }[rpc]
    expect_error(getattr(conn.stub, rpc), request, Code.INVALID_ARGUMENT, "no images")
    still_serves(conn, sample_images[0])


@pytest.mark.parametrize(
    "image, words",
    [
        (pb.Image(model_input=pb.Tensor(dtype=pb.FLOAT32, shape=[3, 32, 32], data=b"\0" * 100)), ["100 bytes", "[3, 32, 32]"]),
        (pb.Image(rgb=pb.Tensor(dtype=pb.UINT8, shape=[32, 32, 3], data=b"\0" * (32 * 32 * 3 - 1))), ["3071 bytes"]),
        (pb.Image(model_input=pb.Tensor(dtype=pb.FLOAT32, shape=[3, 16, 16], data=b"\0" * (3 * 16 * 16 * 4))), ["[3, 32, 32]", "[3, 16, 16]"]),
        (pb.Image(rgb=pb.Tensor(dtype=pb.UINT8, shape=[32, 32, 4], data=b"\0" * (32 * 32 * 4))), ["(H, W, 3)"]),
        (pb.Image(rgb=pb.Tensor(dtype=pb.INT32, shape=[32, 32, 3], data=b"\0" * (32 * 32 * 3 * 4))), ["uint8 or float32"]),
        (pb.Image(rgb=pb.Tensor(dtype=pb.DATA_TYPE_UNSPECIFIED, shape=[32, 32, 3], data=b"\0" * (32 * 32 * 3))), ["dtype"]),
    ],
    ids=["model_input_bytes", "rgb_bytes", "model_input_shape", "rgb_channels", "rgb_dtype", "no_dtype"],
)
def test_bad_tensor_is_invalid_argument(conn: Conn, sample_images, image: pb.Image, words: list[str]) -> None:
    images = [*encoded(sample_images[:1]), image]
    expect_error(conn.stub.Predict, pb.PredictRequest(model=conn.ref, images=images), Code.INVALID_ARGUMENT, "image 1", *words)
    still_serves(conn, sample_images[0])


def test_too_many_images_is_resource_exhausted(conn: Conn, sample_images, monkeypatch) -> None:
    monkeypatch.setattr(engine_module, "MAX_IMAGES", 2)
    request = pb.PredictRequest(model=conn.ref, images=encoded(sample_images[:3]))
    expect_error(conn.stub.Predict, request, Code.RESOURCE_EXHAUSTED, "3 images", "at most 2")
    request = pb.DeconvRequest(model=conn.ref, images=encoded(sample_images[:3]), layer=pb.LayerRef(number=1))
    expect_error(conn.stub.Deconv, request, Code.RESOURCE_EXHAUSTED, "at most 2")
    reply = conn.stub.Predict(pb.PredictRequest(model=conn.ref, images=encoded(sample_images[:2])), timeout=TIMEOUT)
    assert from_proto(reply.probabilities).shape == (2, 10)


def test_op_without_backward_rule_is_invalid_argument(conn: Conn, tmp_path: Path, sample_images) -> None:
    path = erf_model(tmp_path / "erf.onnx")
    sha = conn.client.ensure_model(path)
    ref = pb.ModelRef(sha256=sha)
    info = conn.stub.GetModelInfo(ref, timeout=TIMEOUT)
    assert list(info.input_shape) == [-1, 3, 8, 8]
    assert sorted(layer.number for layer in info.layers if layer.number) == [1, 2]
    images = [pb.Image(rgb=to_proto(rgb_of(sample_images[0])))]  # 32x32, resized to 8x8
    below = conn.stub.Deconv(pb.DeconvRequest(model=ref, images=images, layer=pb.LayerRef(number=1), channels=pb.ChannelSelection(top_k=2)), timeout=TIMEOUT)
    assert len(below.images[0].reconstructions) == 2
    for r in below.images[0].reconstructions:
        pixels = from_proto(r.pixels)
        assert pixels.shape == (3, 8, 8)
        box = r.receptive_field  # one 3x3 convolution with padding 1: at most 3x3 pixels
        assert 0 < box.bottom - box.top <= 3 and 0 < box.right - box.left <= 3
        assert box.top <= r.location[0] < box.bottom and box.left <= r.location[1] < box.right
        outside = pixels.copy()
        outside[:, box.top : box.bottom, box.left : box.right] = 0
        assert np.abs(outside).max() == 0
    for method in (pb.DECONVNET, pb.BACKPROP):
        request = pb.DeconvRequest(model=ref, images=images, layer=pb.LayerRef(number=2), method=method)
        expect_error(conn.stub.Deconv, request, Code.INVALID_ARGUMENT, "Sin")
    # forward analyses through Sin still work
    reply = conn.stub.GetActivations(pb.ActivationsRequest(model=ref, images=images, layers=[pb.LayerRef(number=2)]), timeout=TIMEOUT)
    assert [list(from_proto(t).shape) for t in reply.activations.values()] == [[1, 5, 8, 8]]
    still_serves(conn, sample_images[0])


# ---- message limits and concurrency ------------------------------------------------------


def test_messages_over_4mib_both_ways(conn: Conn, sample_images) -> None:
    rng = np.random.default_rng(5)
    batch = rng.uniform(0, 255, (400, 3, 32, 32)).astype(np.float32)
    request = pb.PredictRequest(model=conn.ref, images=model_inputs(batch))
    assert request.ByteSize() > 4 << 20
    probs = from_proto(conn.stub.Predict(request, timeout=TIMEOUT).probabilities)
    assert probs.shape == (400, 10)
    np.testing.assert_allclose(probs[:5], softmax(bare_run(conn.path, ["fc8"], {"image": batch[:5]})[0]), atol=1e-5)
    # a reply over 4 MiB: conv1 of 40 images is 40 * 32 * 32 * 32 floats
    reply = conn.stub.GetActivations(pb.ActivationsRequest(model=conn.ref, images=model_inputs(batch[:40]), layers=[pb.LayerRef(name="conv1")]), timeout=TIMEOUT)
    assert reply.ByteSize() > 4 << 20
    assert from_proto(reply.activations["conv1"]).shape == (40, 32, 32, 32)
    # and through the Python client
    assert conn.client.probabilities(conn.path, list(batch)).shape == (400, 10)


def test_concurrent_deconv_requests_agree(conn: Conn, sample_images) -> None:
    images = encoded(sample_images[:2])
    expected = deconv(conn, images, pb.LayerRef(number=2), top_k=4)
    errors: list[BaseException] = []
    replies: list[pb.DeconvResponse] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            for _ in range(3):
                reply = deconv(conn, images, pb.LayerRef(number=2), top_k=4)
                with lock:
                    replies.append(reply)
        except BaseException as err:  # noqa: BLE001 - reported below
            with lock:
                errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "deconv requests hung"
    assert not errors, errors[0]
    assert len(replies) == 24
    # identical requests, identical answers (within float tolerance: GPU kernels may reorder sums)
    for reply in replies:
        assert reply.layer == expected.layer
        for got, want in zip(reply.images, expected.images, strict=True):
            assert [(r.channel, list(r.location)) for r in got.reconstructions] == [(r.channel, list(r.location)) for r in want.reconstructions]
            for a, b in zip(got.reconstructions, want.reconstructions):
                assert a.activation == pytest.approx(b.activation, rel=1e-5, abs=1e-6)
                np.testing.assert_allclose(from_proto(a.pixels), from_proto(b.pixels), atol=1e-6, rtol=1e-5)
