"""Issue 6, one test (or more) per defect, each reproducing the defect first where that is safe:
files read through external data (1), small requests taking huge memory (3), nothing evicted (4),
first-come names and forged log lines (5), wrong codes (7). Transport (2) is in test_transport.py,
the clients (6) in tests/client/test_hardening_cli.py, the budget itself in test_admission.py.

Hostile requests are crafted small (``hostile.py``): what is tested is the refusal, never the
allocation."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

import hostile
from zfnet.server.app import create_server
from zfnet.server.images import ImageInput
from zfnet.server.runtime import FixedBatchSession
from zfnet.tensors import CHANNEL_OPTIONS, from_proto, to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

TIMEOUT = 60
Code = grpc.StatusCode
SECRET = b"TOPSECRET-README-" * 8


def expect_error(call, request, code: grpc.StatusCode, *words: str) -> str:
    """The call fails with ``code`` and a message naming every one of ``words``."""
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT)
    details = info.value.details() or ""
    assert info.value.code() == code, f"{info.value.code()}: {details}"
    for word in words:
        assert word.lower() in details.lower(), f"{word!r} not in {details!r}"
    return details


def upload_parts(data: bytes, name: str = "m", size: int | None = None) -> Iterator[pb.UploadModelRequest]:
    yield pb.UploadModelRequest(header=pb.UploadHeader(sha256=hashlib.sha256(data).hexdigest(), size=len(data) if size is None else size, name=name))
    for start in range(0, len(data), 1 << 20):
        yield pb.UploadModelRequest(chunk=data[start : start + (1 << 20)])


def upload(stub, model: onnx.ModelProto | bytes, name: str = "m") -> pb.ModelInfo:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return stub.UploadModel(upload_parts(data, name), timeout=TIMEOUT)


def image(path: Path) -> pb.Image:
    return pb.Image(encoded=path.read_bytes(), label=path.name)


class Server:
    """A real server on an ephemeral port and a raw stub to it."""

    def __init__(self, **options) -> None:
        self.grpc, port, self.engine = create_server("127.0.0.1:0", **options)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
        self.stub = zfnet_pb2_grpc.ZfnetStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.grpc.stop(grace=None)

    def still_serves(self, sample: Path, ref: pb.ModelRef | None = None) -> None:
        """A good request is answered after a bad one."""
        ref = ref or pb.ModelRef(sha256=upload(self.stub, hostile.conv_model(), "probe").sha256)
        reply = self.stub.Predict(pb.PredictRequest(model=ref, images=[image(sample)]), timeout=TIMEOUT)
        assert from_proto(reply.probabilities).shape[0] == 1


def settled(budget, wait_s: float = 10.0) -> dict[str, int]:
    """The budget's status once no request runs: a call's reservation ends when its reply has gone
    out, just after the client has it."""
    end = time.monotonic() + wait_s
    while budget.status()["running"] and time.monotonic() < end:
        time.sleep(0.01)
    return budget.status()


@pytest.fixture()
def srv() -> Iterator[Server]:
    server = Server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture()
def bundled(srv: Server, reference_onnx: Path) -> pb.ModelRef:
    return pb.ModelRef(sha256=upload(srv.stub, reference_onnx.read_bytes(), "zfnet-cifar10").sha256)


# ---- 1. models never name files -----------------------------------------------------------

LOCATIONS = ["README.md", "./README.md", "sub/../README.md"]


@pytest.fixture()
def secret_cwd(tmp_path: Path, monkeypatch) -> Path:
    """The server's working directory holds README.md with a secret (and a sub/ folder)."""
    (tmp_path / "README.md").write_bytes(SECRET)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("location", LOCATIONS)
def test_bare_onnxruntime_reads_the_file_a_model_names(secret_cwd: Path, location: str) -> None:
    """The defect: onnxruntime, given the model's bytes, reads a relative external-data location
    from the working directory, and the file comes back as activations."""
    model = hostile.file_reading_model(location, 16)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    leak = np.asarray(session.run(["leak"], {"image": np.zeros((1, 3, 8, 8), np.float32)})[0])
    assert bytes(leak.astype(np.uint8)[0]) == SECRET[:16]


@pytest.mark.parametrize("where", ["initializer", "constant"])
@pytest.mark.parametrize("location", [*LOCATIONS, "../README.md", "ABSOLUTE"])
def test_uploaded_model_naming_a_file_is_refused_and_never_read(srv: Server, secret_cwd: Path, sample_images, location: str, where: str) -> None:
    location = str(secret_cwd / "README.md") if location == "ABSOLUTE" else location
    data = hostile.file_reading_model(location, 16, where).SerializeToString()
    sha = hashlib.sha256(data).hexdigest()
    expect_error(srv.stub.UploadModel, upload_parts(data, "reader"), Code.INVALID_ARGUMENT, "'secret'", "external data", location)
    assert not srv.stub.HasModel(pb.ModelRef(sha256=sha), timeout=TIMEOUT).present
    request = pb.ActivationsRequest(model=pb.ModelRef(sha256=sha), images=[image(sample_images[0])], layers=[pb.LayerRef(name="leak")])
    details = expect_error(srv.stub.GetActivations, request, Code.NOT_FOUND)
    assert "TOPSECRET" not in details
    srv.still_serves(sample_images[0])


def external_model_dir(tmp_path: Path, location: str, data_file: Path | None) -> Path:
    """A --model-dir with ``reader.onnx`` keeping its tensor ``secret`` at ``location``."""
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    if data_file is not None:
        data_file.parent.mkdir(parents=True, exist_ok=True)
        data_file.write_bytes(SECRET)
    (folder / "reader.onnx").write_bytes(hostile.file_reading_model(location, 16).SerializeToString())
    return folder


def test_model_dir_external_data_inside_the_directory_is_read(tmp_path: Path, sample_images) -> None:
    folder = external_model_dir(tmp_path, "weights/reader.onnx.data", tmp_path / "models" / "weights" / "reader.onnx.data")
    server = Server(model_dir=folder)
    try:
        request = pb.ActivationsRequest(model=pb.ModelRef(name="reader"), images=[image(sample_images[0])], layers=[pb.LayerRef(name="leak")])
        leak = from_proto(server.stub.GetActivations(request, timeout=TIMEOUT).activations["leak"])
        np.testing.assert_array_equal(leak[0], np.frombuffer(SECRET[:16], np.uint8).astype(np.float32))
    finally:
        server.close()


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink", "missing"])
def test_model_dir_external_data_outside_the_directory_is_refused(tmp_path: Path, sample_images, how: str) -> None:
    outside = tmp_path / "secret.bin"
    location = {"parent": "../secret.bin", "absolute": str(outside), "symlink": "link.bin", "missing": "nothing.bin"}[how]
    folder = external_model_dir(tmp_path, location, outside)
    if how == "symlink":
        (folder / "link.bin").symlink_to(outside)
    server = Server(model_dir=folder)
    try:
        request = pb.ActivationsRequest(model=pb.ModelRef(name="reader"), images=[image(sample_images[0])], layers=[pb.LayerRef(name="leak")])
        details = expect_error(server.stub.GetActivations, request, Code.FAILED_PRECONDITION, "'secret'", "inside")
        assert "TOPSECRET" not in details
    finally:
        server.close()


# ---- 3. small requests, huge memory -----------------------------------------------------------


def test_model_declaring_a_huge_input_is_refused_at_upload(srv: Server, sample_images) -> None:
    data = hostile.huge_input_model().SerializeToString()
    assert len(data) < 5000, "the attack is a few KB"
    expect_error(srv.stub.UploadModel, upload_parts(data, "huge"), Code.RESOURCE_EXHAUSTED, "3x16000x16000", "--max-input-pixels")
    assert not srv.stub.HasModel(pb.ModelRef(sha256=hashlib.sha256(data).hexdigest()), timeout=TIMEOUT).present
    srv.still_serves(sample_images[0])


def test_model_whose_one_image_cannot_fit_the_budget_is_refused_at_upload(srv: Server, sample_images) -> None:
    data = hostile.conv_model(2048, 2048, channels=64).SerializeToString()  # 1 GiB of activations per image
    srv.engine.budget.limit = 256 << 20
    expect_error(srv.stub.UploadModel, upload_parts(data, "wide"), Code.RESOURCE_EXHAUSTED, "per image", "budget")


def test_pixel_bombs_are_refused_from_their_headers(srv: Server, bundled: pb.ModelRef, sample_images) -> None:
    bomb = hostile.png(13000, 13000)
    assert len(bomb) < 40_000
    with pytest.warns(Image.DecompressionBombWarning), Image.open(io.BytesIO(bomb)) as img:
        assert img.size == (13000, 13000) and img.mode == "1", "20 KB declaring 169 million pixels: the amplification"
    request = pb.PredictRequest(model=bundled, images=[image(sample_images[0]), pb.Image(encoded=bomb, label="bomb.png")])
    expect_error(srv.stub.Predict, request, Code.RESOURCE_EXHAUSTED, "image 1", "bomb.png", "13000x13000", "169,000,000")
    huge = hostile.png(20000, 20000, rows=False)  # Pillow itself refuses this one: it was INTERNAL
    request = pb.DeconvRequest(model=bundled, images=[pb.Image(encoded=huge)], layer=pb.LayerRef(number=1))
    expect_error(srv.stub.Deconv, request, Code.RESOURCE_EXHAUSTED, "image 0", "400000000 pixels", "at most 67,108,864")
    srv.still_serves(sample_images[0], bundled)


def test_pillow_decompression_bomb_error_is_resource_exhausted(srv: Server, bundled: pb.ModelRef, sample_images) -> None:
    srv.engine.max_image_pixels = 1 << 40  # past our own check, Pillow's DecompressionBombError must still map
    request = pb.PredictRequest(model=bundled, images=[pb.Image(encoded=hostile.png(20000, 20000, rows=False), label="huge.png")])
    expect_error(srv.stub.Predict, request, Code.RESOURCE_EXHAUSTED, "huge.png", "decompression bomb")


class RunSpy:
    """Stands in for a model's onnxruntime session and counts runs (the real one does the work)."""

    def __init__(self, session: ort.InferenceSession | FixedBatchSession) -> None:
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)


def test_activations_reply_over_the_message_limit_is_refused_before_any_work(srv: Server, bundled: pb.ModelRef, sample_images, monkeypatch) -> None:
    model = srv.engine.store.get(bundled.sha256)
    exposed, fetching, spies = RunSpy(model.session), model.fetching, []
    monkeypatch.setattr(model, "session", exposed)
    monkeypatch.setattr(model, "fetching", lambda names, exact: spies.append(RunSpy(fetching(names, exact=exact))) or spies[-1])  # the session to the layers asked for
    layers = [pb.LayerRef(name=layer.name) for layer in model.layers]
    request = pb.ActivationsRequest(model=bundled, images=[pb.Image(encoded=hostile.tiny_png())] * 1024, layers=layers)
    assert request.ByteSize() < 200_000 and len(layers) >= 20
    expect_error(srv.stub.GetActivations, request, Code.RESOURCE_EXHAUSTED, "reply would be 900.0 MiB", "248.3 MiB", "fewer images or layers")
    assert not spies and exposed.runs == 0, "the reply was computed (or its session built) before it was refused"
    small = pb.ActivationsRequest(model=bundled, images=[pb.Image(encoded=hostile.tiny_png())] * 2, layers=layers)
    assert len(srv.stub.GetActivations(small, timeout=TIMEOUT).activations) == len(layers)
    assert [spy.runs for spy in spies] == [1] and exposed.runs == 0


def test_request_over_the_memory_budget_is_refused_with_the_numbers(srv: Server, bundled: pb.ModelRef, sample_images) -> None:
    srv.engine.budget.limit = 64 << 20
    request = pb.PredictRequest(model=bundled, images=[image(sample_images[0])] * 100)
    expect_error(srv.stub.Predict, request, Code.RESOURCE_EXHAUSTED, "Predict on 100 image(s)", "forward pass", "MiB", "budget is 64.0 MiB")
    request = pb.DeconvRequest(model=bundled, images=[image(sample_images[0])] * 200, layer=pb.LayerRef(number=4))
    expect_error(srv.stub.Deconv, request, Code.RESOURCE_EXHAUSTED, "Deconv of 200 image(s) x 9 channel(s)", "budget")
    srv.still_serves(sample_images[0], bundled)
    assert settled(srv.engine.budget)["requests"] == 0, "a refused request kept its reservation"


def test_onnxruntime_allocation_failure_is_resource_exhausted(srv: Server, sample_images) -> None:
    ref = pb.ModelRef(sha256=upload(srv.stub, hostile.allocation_bomb_model(), "bomb").sha256)
    expect_error(srv.stub.Predict, pb.PredictRequest(model=ref, images=[image(sample_images[0])]), Code.RESOURCE_EXHAUSTED, "allocate")
    srv.still_serves(sample_images[0])


# ---- 4. eviction, DeleteModel ---------------------------------------------------------------


def small_models(count: int) -> list[bytes]:
    return [hostile.conv_model(seed=k, name=f"m{k}").SerializeToString() for k in range(count)]


def test_models_are_evicted_least_recently_used_under_the_budget(srv: Server, sample_images) -> None:
    """Before: every model stayed loaded forever. Now three small models fit, the fourth evicts
    the one used least recently, and a used one stays."""
    datas = small_models(4)
    resident = 3 * len(datas[0]) + (8 << 20)
    srv.engine.budget.limit = 3 * resident + (6 << 20)  # three held models, and room for small requests, not a fourth
    refs = [pb.ModelRef(sha256=upload(srv.stub, d, f"m{k}").sha256) for k, d in enumerate(datas[:3])]
    assert all(srv.stub.HasModel(r, timeout=TIMEOUT).present for r in refs)
    srv.stub.Predict(pb.PredictRequest(model=refs[0], images=[image(sample_images[0])]), timeout=TIMEOUT)  # m0 used: m1 is now the oldest
    refs.append(pb.ModelRef(sha256=upload(srv.stub, datas[3], "m3").sha256))
    present = [srv.stub.HasModel(r, timeout=TIMEOUT).present for r in refs]
    assert present == [True, False, True, True]
    expect_error(srv.stub.Predict, pb.PredictRequest(model=refs[1], images=[image(sample_images[0])]), Code.NOT_FOUND, "upload it (again)")
    status = settled(srv.engine.budget)
    assert status["resident"] <= status["limit"] and status["requests"] == 0


def test_projection_sessions_are_evicted_and_rebuilt(srv: Server, bundled: pb.ModelRef, sample_images) -> None:
    model = srv.engine.store.get(bundled.sha256)
    budget = srv.engine.budget
    requests = [pb.DeconvRequest(model=bundled, images=[image(sample_images[0])], layer=pb.LayerRef(number=n), channels=pb.ChannelSelection(top_k=2)) for n in (1, 2)]
    first, second = (srv.stub.Deconv(r, timeout=TIMEOUT) for r in requests)
    keys = [model.projection_key(reply.layer, "deconvnet") for reply in (first, second)]
    assert all(budget.held(k) for k in keys) and model.has_projection(first.layer, "deconvnet")
    predict = pb.PredictRequest(model=bundled, images=[image(sample_images[0])])
    need = srv.engine.estimate(model, [ImageInput(encoded=sample_images[0].read_bytes())], "Predict").total
    budget.limit = settled(budget)["resident"] + need - 1  # a Predict fits only once something goes
    srv.stub.Predict(predict, timeout=TIMEOUT)
    assert not budget.held(keys[0]) and not model.has_projection(first.layer, "deconvnet"), "the least recently used projection stayed"
    assert budget.held(keys[1]) and budget.held(model.key), "more was evicted than needed, or the model in use"
    budget.limit = 1 << 40
    again = srv.stub.Deconv(requests[0], timeout=TIMEOUT)  # rebuilt on demand, same result
    assert budget.held(keys[0])
    np.testing.assert_array_equal(from_proto(again.images[0].reconstructions[0].pixels), from_proto(first.images[0].reconstructions[0].pixels))


def test_forward_sessions_are_held_evicted_and_rebuilt_like_projections(srv: Server, bundled: pb.ModelRef, sample_images) -> None:
    """The session a Deconv's forward pass runs on (the graph up to what its projection reads) is held
    in the budget under its own key, evicted least recently used after the projection built before
    it, admitted again (its build in the next request's estimate) and rebuilt on demand."""
    model = srv.engine.store.get(bundled.sha256)
    budget = srv.engine.budget
    requests = [pb.DeconvRequest(model=bundled, images=[image(sample_images[0])], layer=pb.LayerRef(number=n), channels=pb.ChannelSelection(top_k=2)) for n in (1, 2)]
    first, second = (srv.stub.Deconv(r, timeout=TIMEOUT) for r in requests)
    built = [model.built_projection(reply.layer, "deconvnet") for reply in (first, second)]
    assert all(b is not None for b in built), "each Deconv built its projection"
    fetched = [model.fetched(b, reply.layer) for b, reply in zip(built, (first, second)) if b is not None]
    keys = [model.fetching_key(names, exact=True) for names in fetched]
    assert all(budget.held(k) for k in keys) and model.projection_build(first.layer, "deconvnet") == 0
    predict = pb.PredictRequest(model=bundled, images=[image(sample_images[0])])
    need = srv.engine.estimate(model, [ImageInput(encoded=sample_images[0].read_bytes())], "Predict").total
    for evicted in (model.projection_key(first.layer, "deconvnet"), keys[0]):  # least recently used first: the projection, then its forward session
        budget.limit = settled(budget)["resident"] + need - 1  # a Predict fits only once one resident goes
        srv.stub.Predict(predict, timeout=TIMEOUT)
        assert not budget.held(evicted)
    assert not model.has_fetching(fetched[0], exact=True) and budget.held(keys[1]) and model.has_fetching(fetched[1], exact=True)
    assert model.projection_build(second.layer, "deconvnet") == 0 and model.fetching_build(fetched[0], exact=True) > 0  # the next Deconv of layer 1 admits the build
    budget.limit = 1 << 40
    again = srv.stub.Deconv(requests[0], timeout=TIMEOUT)
    assert budget.held(keys[0]) and model.has_fetching(fetched[0], exact=True)
    np.testing.assert_array_equal(from_proto(again.images[0].reconstructions[0].pixels), from_proto(first.images[0].reconstructions[0].pixels))


def test_evicted_model_dir_model_loads_again(tmp_path: Path, sample_images) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    for k, data in enumerate(small_models(2)):
        (folder / f"m{k}.onnx").write_bytes(data)
    server = Server(model_dir=folder)
    try:
        server.engine.budget.limit = (3 * (folder / "m0.onnx").stat().st_size + (8 << 20)) + (4 << 20)  # one model at a time
        outputs = {}
        for name in ("m0", "m1", "m0", "m1"):
            reply = server.stub.Predict(pb.PredictRequest(model=pb.ModelRef(name=name), images=[image(sample_images[0])]), timeout=TIMEOUT)
            probabilities = from_proto(reply.probabilities)
            np.testing.assert_array_equal(outputs.setdefault(name, probabilities), probabilities)
            assert [m.loaded for m in server.stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models] == [name == "m0", name == "m1"]
    finally:
        server.close()


def test_delete_model(srv: Server, tmp_path: Path, sample_images) -> None:
    ref = pb.ModelRef(sha256=upload(srv.stub, small_models(1)[0], "gone").sha256)
    held = srv.engine.budget.status()["resident"]
    reply = srv.stub.DeleteModel(ref, timeout=TIMEOUT)
    assert reply.removed and reply.sha256 == ref.sha256
    assert srv.engine.budget.status()["resident"] < held
    assert not srv.stub.HasModel(ref, timeout=TIMEOUT).present
    assert srv.stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models == []
    expect_error(srv.stub.DeleteModel, ref, Code.NOT_FOUND, ref.sha256)
    expect_error(srv.stub.DeleteModel, pb.ModelRef(name="nothing"), Code.NOT_FOUND, "nothing")


def test_delete_model_dir_model_unloads_it(tmp_path: Path, sample_images) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "kept.onnx").write_bytes(small_models(1)[0])
    server = Server(model_dir=folder)
    try:
        ref = pb.ModelRef(name="kept")
        server.stub.Predict(pb.PredictRequest(model=ref, images=[image(sample_images[0])]), timeout=TIMEOUT)
        assert server.stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models[0].loaded
        reply = server.stub.DeleteModel(ref, timeout=TIMEOUT)
        assert not reply.removed
        listed = server.stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
        assert [(m.name, m.in_model_dir, m.loaded) for m in listed] == [("kept", True, False)]
        server.stub.Predict(pb.PredictRequest(model=ref, images=[image(sample_images[0])]), timeout=TIMEOUT)  # loads again
    finally:
        server.close()


# ---- 5. names, log lines ------------------------------------------------------------------------


def test_an_upload_cannot_take_a_model_dir_name(tmp_path: Path, sample_images) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    real = small_models(1)[0]
    (folder / "zfnet-cifar10.onnx").write_bytes(real)
    server = Server(model_dir=folder)
    try:
        squatter = upload(server.stub, hostile.conv_model(seed=99, name="squatter"), "zfnet-cifar10")
        assert squatter.sha256 != hashlib.sha256(real).hexdigest()
        served = server.stub.GetModelInfo(pb.ModelRef(name="zfnet-cifar10"), timeout=TIMEOUT)
        assert served.sha256 == hashlib.sha256(real).hexdigest(), "the uploaded model answered to the operator's name"
        assert server.stub.HasModel(pb.ModelRef(name="zfnet-cifar10"), timeout=TIMEOUT).sha256 == served.sha256
        expect_error(server.stub.GetModelInfo, pb.ModelRef(name="squatter"), Code.NOT_FOUND, "--model-dir")
    finally:
        server.close()


def test_upload_names_never_resolve(srv: Server) -> None:
    info = upload(srv.stub, small_models(1)[0], "mine")
    assert info.name == "mine"
    assert not srv.stub.HasModel(pb.ModelRef(name="mine"), timeout=TIMEOUT).present
    expect_error(srv.stub.GetModelInfo, pb.ModelRef(name="mine"), Code.NOT_FOUND, "mine", "SHA-256")


def test_concurrent_uploads_of_the_same_bytes_keep_every_name(srv: Server) -> None:
    data = small_models(1)[0]
    names = [f"team-{k}" for k in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(names))

    def send(name: str) -> None:
        try:
            start.wait()
            upload(srv.stub, data, name)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=send, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors, errors[0]
    (listed,) = srv.stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
    assert sorted(listed.upload_names) == names and listed.sha256 == hashlib.sha256(data).hexdigest()


def test_upload_names_are_escaped_in_the_log(srv: Server, caplog) -> None:
    forged = "evil\n2026-01-01 00:00:00 zfnet.server INFO admin token accepted\x1b[2J\u202e"
    with caplog.at_level(logging.INFO, logger="zfnet.server"):
        info = upload(srv.stub, small_models(1)[0], forged)
    assert info.name == forged, "the name itself is kept as given"
    lines = [r.getMessage() for r in caplog.records if r.name == "zfnet.server"]
    assert any("evil\\n2026" in line for line in lines), lines
    for line in lines:
        assert "\n" not in line and "\x1b" not in line and "\u202e" not in line, repr(line)


# ---- 7. the right codes ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["²", "٣", "３"])
def test_non_ascii_digit_layer_names_are_not_found(srv: Server, bundled: pb.ModelRef, sample_images, name: str) -> None:
    for request, call in (
        (pb.DeconvRequest(model=bundled, images=[image(sample_images[0])], layer=pb.LayerRef(name=name)), srv.stub.Deconv),
        (pb.ActivationsRequest(model=bundled, images=[image(sample_images[0])], layers=[pb.LayerRef(name=name)]), srv.stub.GetActivations),
    ):
        expect_error(call, request, Code.NOT_FOUND, repr(name), "ASCII")
    srv.still_serves(sample_images[0], bundled)


def rgb(shape: list[int], data: bytes = b"", dtype: pb.DataType = pb.UINT8) -> pb.Image:
    return pb.Image(rgb=pb.Tensor(dtype=dtype, shape=shape, data=data))


@pytest.mark.parametrize(
    "bad, words",
    [
        (rgb([0, 1 << 62, 3]), ["[0, 4611686018427387904, 3]"]),
        (rgb([0, 0, 3]), ["no pixels"]),
        (rgb([5, 0, 3]), ["no pixels"]),
        (pb.Image(encoded=hostile.png(0, 0, rows=False), label="empty.png"), ["empty.png"]),
        (pb.Image(rgb=to_proto(np.full((4, 4, 3), np.nan, np.float32))), ["48 pixel value(s)", "NaN"]),
        (pb.Image(rgb=to_proto(np.where(np.eye(4)[..., None] > 0, np.inf, 1.0).repeat(3, axis=2).astype(np.float32))), ["12 pixel value(s)", "infinite"]),
        (pb.Image(model_input=to_proto(np.full((3, 32, 32), -np.inf, np.float32))), ["3072 pixel value(s)"]),
    ],
    ids=["zero_and_huge_dims", "zero_by_zero", "zero_width", "png_0x0", "nan_rgb", "inf_rgb", "inf_model_input"],
)
def test_degenerate_images_are_invalid_argument(srv: Server, bundled: pb.ModelRef, sample_images, bad: pb.Image, words: list[str]) -> None:
    request = pb.PredictRequest(model=bundled, images=[image(sample_images[0]), bad])
    expect_error(srv.stub.Predict, request, Code.INVALID_ARGUMENT, "image 1", *words)
    srv.still_serves(sample_images[0], bundled)


def test_predict_negative_top_k_is_invalid_argument(srv: Server, bundled: pb.ModelRef, sample_images) -> None:
    expect_error(srv.stub.Predict, pb.PredictRequest(model=bundled, images=[image(sample_images[0])], top_k=-3), Code.INVALID_ARGUMENT, "top_k", "-3")
    reply = srv.stub.Predict(pb.PredictRequest(model=bundled, images=[image(sample_images[0])], top_k=0), timeout=TIMEOUT)
    assert len(reply.predictions[0].top) == 5


def test_arena_is_off_so_memory_returns(srv: Server, bundled: pb.ModelRef) -> None:
    """onnxruntime's CPU arena kept every block it grew to; the sessions run without it."""
    model = srv.engine.store.get(bundled.sha256)
    assert model.session.get_session_options().enable_cpu_mem_arena is False
