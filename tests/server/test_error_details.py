"""Error details on the wire: every status code the server sends carries a ``google.rpc.Status``
with an ErrorInfo (a stable reason in domain zfnet.dev), a BadRequest naming the request field, a
ResourceInfo for what does not exist; the Python client reads them back onto its errors.

Details are decoded here straight from the ``grpc-status-details-bin`` trailer with the
``google.rpc`` classes, not through zfnet's own decoder, which is tested against them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
import numpy as np
import onnx
import pytest
from google.rpc import error_details_pb2, status_pb2
from onnx import TensorProto, helper, numpy_helper

from service_testing import TIMEOUT, Conn, encoded, erf_model, health, large_model, still_serves, upload_parts
from zfnet import errors
from zfnet.client.api import Client
from zfnet.server import deconv as deconv_module
from zfnet.server import engine as engine_module
from zfnet.server import models as models_module
from zfnet.server.app import create_server
from zfnet.server.datasets import DatasetStore
from zfnet.status import MAX_MESSAGE
from zfnet.tensors import CHANNEL_OPTIONS, to_proto
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

Code = grpc.StatusCode
DETAILS_KEY = "grpc-status-details-bin"


@dataclass
class Details:
    """What a failed call carried, decoded with the google.rpc classes."""

    code: grpc.StatusCode
    message: str
    status: status_pb2.Status
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[error_details_pb2.BadRequest.FieldViolation] = field(default_factory=list)
    resource: error_details_pb2.ResourceInfo | None = None


def details(call: Callable, request, timeout: float = TIMEOUT) -> Details:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=timeout)
    err = caught.value
    trailer = [m.value for m in err.trailing_metadata() or () if m.key == DETAILS_KEY]
    assert len(trailer) == 1, f"no {DETAILS_KEY} trailer on {err.code()}: {err.details()}"
    status = status_pb2.Status.FromString(trailer[0])
    out = Details(err.code(), err.details() or "", status)
    for any_ in status.details:
        info, resource, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.ResourceInfo(), error_details_pb2.BadRequest()
        if any_.Unpack(info):
            out.info = info
        elif any_.Unpack(resource):
            out.resource = resource
        elif any_.Unpack(bad_request):
            out.violations = list(bad_request.field_violations)
    return out


def check(d: Details, code: grpc.StatusCode, reason: str, field: str | None = None, resource: tuple[str, str] | None = None,
          metadata: dict[str, str] | None = None, words: tuple[str, ...] = ()) -> None:
    """The status, its ErrorInfo, BadRequest and ResourceInfo say what they should, consistently."""
    assert d.code == code, f"{d.code}: {d.message}"
    assert d.status.code == code.value[0] and d.status.message == d.message
    assert d.info is not None and d.info.domain == "zfnet.dev"
    assert d.info.reason == reason, f"{d.info.reason} != {reason}: {d.message}"
    assert reason in pb.ErrorReason.keys()
    assert d.info.metadata == {**d.info.metadata, **(metadata or {})}, dict(d.info.metadata)
    if field is None:
        assert not d.violations, d.violations
    else:
        assert [v.field for v in d.violations] == [field]
        assert d.violations[0].description == d.message
    if resource is None:
        assert d.resource is None
    else:
        assert d.resource is not None
        assert (d.resource.resource_type, d.resource.resource_name) == resource
        assert d.resource.description == d.message
    for word in words:
        assert word.lower() in d.message.lower(), f"{word!r} not in {d.message!r}"


def one(c: Conn, sample_images) -> list[pb.Image]:
    return encoded(sample_images[:1])


# ---- INVALID_ARGUMENT --------------------------------------------------------------------


def deconv_request(c: Conn, images, **kw) -> pb.DeconvRequest:
    return pb.DeconvRequest(model=c.ref, images=images, **{"layer": pb.LayerRef(number=2), **kw})


INVALID = {
    # id: (rpc, request(conn, images), reason, field, metadata)
    "mode": ("Deconv", lambda c, im: deconv_request(c, im, mode=7), "UNKNOWN_ENUM_VALUE", "mode", {"enum": "zfnet.v1.DeconvMode", "value": "7"}),
    "method": ("Deconv", lambda c, im: deconv_request(c, im, method=9), "UNKNOWN_ENUM_VALUE", "method", {"enum": "zfnet.v1.DeconvMethod", "value": "9"}),
    "channel": ("Deconv", lambda c, im: deconv_request(c, im, channels=pb.ChannelSelection(channels=[1, 3, 999])), "VALUE_OUT_OF_RANGE", "channels.channels[2]", {}),
    "deconv_top_k": ("Deconv", lambda c, im: deconv_request(c, im, channels=pb.ChannelSelection(top_k=-3)), "VALUE_OUT_OF_RANGE", "channels.top_k", {}),
    "predict_top_k": ("Predict", lambda c, im: pb.PredictRequest(model=c.ref, images=im, top_k=-1), "VALUE_OUT_OF_RANGE", "top_k", {}),
    "no_layer": ("Deconv", lambda c, im: pb.DeconvRequest(model=c.ref, images=im), "FIELD_REQUIRED", "layer", {}),
    "no_layers": ("GetActivations", lambda c, im: pb.ActivationsRequest(model=c.ref, images=im), "FIELD_REQUIRED", "layers", {}),
    "no_model": ("Predict", lambda c, im: pb.PredictRequest(images=im), "FIELD_REQUIRED", "model", {}),
    "no_model_ref": ("GetModelInfo", lambda c, im: pb.ModelRef(), "FIELD_REQUIRED", "ref", {}),
    "has_model_no_ref": ("HasModel", lambda c, im: pb.ModelRef(), "FIELD_REQUIRED", "ref", {}),
    "no_images": ("Predict", lambda c, im: pb.PredictRequest(model=c.ref), "FIELD_REQUIRED", "images", {}),
    "image_without_data": ("Predict", lambda c, im: pb.PredictRequest(model=c.ref, images=[*im, pb.Image(label="x")]), "FIELD_REQUIRED", "images[1]", {}),
    "undecodable": (
        "Predict", lambda c, im: pb.PredictRequest(model=c.ref, images=[*im, pb.Image(encoded=b"\xff\xd8\xff not a JPEG")]),
        "BAD_IMAGE", "images[1].encoded", {},
    ),
    "rgb_no_dtype": (
        "Predict", lambda c, im: pb.PredictRequest(model=c.ref, images=[*im, pb.Image(rgb=pb.Tensor(shape=[2, 2, 3], data=bytes(12)))]),
        "FIELD_REQUIRED", "images[1].rgb.dtype", {},
    ),
    "rgb_unknown_dtype": (
        "Predict", lambda c, im: pb.PredictRequest(model=c.ref, images=[*im, pb.Image(rgb=pb.Tensor(dtype=cast(pb.DataType, 42), shape=[2, 2, 3], data=bytes(12)))]),
        "UNKNOWN_ENUM_VALUE", "images[1].rgb.dtype", {"enum": "zfnet.v1.DataType", "value": "42"},
    ),
    "rgb_channels": (
        "Predict", lambda c, im: pb.PredictRequest(model=c.ref, images=[*im, pb.Image(rgb=to_proto(np.zeros((4, 4, 4), np.uint8)))]),
        "BAD_TENSOR", "images[1].rgb.shape", {},
    ),
    "model_input_bytes": (
        "Predict", lambda c, im: pb.PredictRequest(model=c.ref, images=[pb.Image(model_input=pb.Tensor(dtype=pb.FLOAT32, shape=[3, 32, 32], data=bytes(100)))]),
        "BAD_TENSOR", "images[0].model_input.data", {"bytes": "100", "expected": str(3 * 32 * 32 * 4)},
    ),
    "model_input_shape": (
        "Predict", lambda c, im: pb.PredictRequest(model=c.ref, images=[*im, pb.Image(model_input=to_proto(np.zeros((3, 16, 16), np.float32)))]),
        "BAD_TENSOR", "images[1].model_input.shape", {},
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_argument_details(conn: Conn, sample_images, case: str) -> None:
    rpc, request, reason, field, metadata = INVALID[case]
    d = details(getattr(conn.stub, rpc), request(conn, one(conn, sample_images)))
    check(d, Code.INVALID_ARGUMENT, reason, field, metadata=metadata)


def test_unknown_enum_message_names_the_field_and_its_values(conn: Conn, sample_images) -> None:
    d = details(conn.stub.Deconv, deconv_request(conn, one(conn, sample_images), method=9))
    check(d, Code.INVALID_ARGUMENT, "UNKNOWN_ENUM_VALUE", "method", words=("method 9", "DECONVNET (1)", "BACKPROP (2)", "GUIDED (3)", "unset"))
    still_serves(conn, sample_images[0])


@pytest.mark.parametrize("mode, method", [(pb.DECONV_MODE_UNSPECIFIED, pb.DECONV_METHOD_UNSPECIFIED), (pb.MAP, pb.GUIDED)])
def test_unspecified_enums_run_as_documented_defaults_and_are_echoed(conn: Conn, sample_images, mode: int, method: int) -> None:
    images = one(conn, sample_images)
    reply = conn.stub.Deconv(deconv_request(conn, images, mode=mode, method=method, channels=pb.ChannelSelection(channels=[3])), timeout=TIMEOUT)
    assert (reply.mode, reply.method) == (mode or pb.MAX, method or pb.DECONVNET)
    explicit = conn.stub.Deconv(deconv_request(conn, images, mode=reply.mode, method=reply.method, channels=pb.ChannelSelection(channels=[3])), timeout=TIMEOUT)
    assert reply.images[0].reconstructions[0].pixels.data == explicit.images[0].reconstructions[0].pixels.data


def test_channel_count_in_metadata_matches_the_layer_table(conn: Conn, sample_images) -> None:
    info = conn.stub.GetModelInfo(conn.ref, timeout=TIMEOUT)
    count = next(layer.shape[1] for layer in info.layers if layer.number == 2)
    d = details(conn.stub.Deconv, deconv_request(conn, one(conn, sample_images), channels=pb.ChannelSelection(channels=[count])))
    check(d, Code.INVALID_ARGUMENT, "VALUE_OUT_OF_RANGE", "channels.channels[0]", metadata={"channels": str(count)}, words=(str(count),))


def test_op_without_backward_rule_details(conn: Conn, tmp_path: Path, sample_images) -> None:
    ref = pb.ModelRef(sha256=conn.client.ensure_model(erf_model(tmp_path / "erf.onnx")))
    images = [pb.Image(model_input=to_proto(np.zeros((3, 8, 8), np.float32)))]
    d = details(conn.stub.Deconv, pb.DeconvRequest(model=ref, images=images, layer=pb.LayerRef(number=2)))
    check(d, Code.INVALID_ARGUMENT, "UNSUPPORTED_OP", metadata={"op": "Sin", "node": "erf1"}, words=("Sin",))


def test_upload_error_details(conn: Conn, tmp_path: Path, sample_images) -> None:
    data = erf_model(tmp_path / "erf.onnx").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    wrong = hashlib.sha256(b"other").hexdigest()
    check(details(conn.stub.UploadModel, upload_parts(data, wrong)), Code.INVALID_ARGUMENT, "UPLOAD_MISMATCH", "header.sha256", words=(wrong,))
    check(details(conn.stub.UploadModel, upload_parts(data, sha, size=len(data) + 1)), Code.INVALID_ARGUMENT, "UPLOAD_MISMATCH", "header.size",
          metadata={"received": str(len(data)), "header": str(len(data) + 1)})
    parts = iter([pb.UploadModelRequest(chunk=data[:10]), pb.UploadModelRequest(header=pb.UploadHeader(sha256=sha))])
    check(details(conn.stub.UploadModel, parts), Code.INVALID_ARGUMENT, "STREAM_OUT_OF_ORDER", "chunk")
    check(details(conn.stub.UploadModel, iter([])), Code.INVALID_ARGUMENT, "FIELD_REQUIRED", "header")
    junk = b"not a model" * 50
    check(details(conn.stub.UploadModel, upload_parts(junk, hashlib.sha256(junk).hexdigest())), Code.INVALID_ARGUMENT, "BAD_MODEL", words=("onnx",))
    still_serves(conn, sample_images[0])


def test_long_messages_are_clipped_and_details_still_arrive(conn: Conn, sample_images) -> None:
    """A client-chosen name goes into the message; the trailer stays far below gRPC's 8 KiB metadata cap."""
    data = b"x" * 1000
    name = "n" * 20000
    d = details(conn.stub.UploadModel, upload_parts(data, hashlib.sha256(b"y").hexdigest(), name=name))
    check(d, Code.INVALID_ARGUMENT, "UPLOAD_MISMATCH", "header.sha256")
    assert len(d.message) == MAX_MESSAGE and d.message.endswith("…")
    assert len(d.status.SerializeToString()) < 4 << 10
    still_serves(conn, sample_images[0])


def test_both_members_of_a_oneof_arrive_as_the_last_written(conn: Conn) -> None:
    """As the contract says: protobuf keeps the last oneof member on the wire (protobuf.js writes
    ``name`` after ``sha256``); the error then names the member that arrived."""
    raw = conn.channel.unary_unary("/zfnet.v1.Zfnet/GetModelInfo", request_serializer=None, response_deserializer=pb.ModelInfo.FromString)
    sha_then_name = pb.ModelRef(sha256=conn.sha).SerializeToString() + pb.ModelRef(name="no-such-model").SerializeToString()
    check(details(raw, sha_then_name), Code.NOT_FOUND, "MODEL_NOT_FOUND", "name", resource=("model", "no-such-model"))
    name_then_sha = pb.ModelRef(name="no-such-model").SerializeToString() + pb.ModelRef(sha256=conn.sha).SerializeToString()
    assert raw(name_then_sha, timeout=TIMEOUT).sha256 == conn.sha


# ---- NOT_FOUND ---------------------------------------------------------------------------


def test_not_found_details(conn: Conn, sample_images) -> None:
    images = one(conn, sample_images)
    sha = "ab" * 32
    check(details(conn.stub.Predict, pb.PredictRequest(model=pb.ModelRef(sha256=sha), images=images)),
          Code.NOT_FOUND, "MODEL_NOT_FOUND", "model.sha256", resource=("model", sha), words=(sha,))
    check(details(conn.stub.GetModelInfo, pb.ModelRef(name="no-such-model")), Code.NOT_FOUND, "MODEL_NOT_FOUND", "name", resource=("model", "no-such-model"))
    check(details(conn.stub.Deconv, pb.DeconvRequest(model=conn.ref, images=images, layer=pb.LayerRef(name="conv99"))),
          Code.NOT_FOUND, "LAYER_NOT_FOUND", "layer.name", resource=("layer", "conv99"))
    check(details(conn.stub.Deconv, pb.DeconvRequest(model=conn.ref, images=images, layer=pb.LayerRef(number=99))),
          Code.NOT_FOUND, "LAYER_NOT_FOUND", "layer.number", resource=("layer", "99"), words=("1..8",))
    request = pb.ActivationsRequest(model=conn.ref, images=images, layers=[pb.LayerRef(number=1), pb.LayerRef(name="nope")])
    check(details(conn.stub.GetActivations, request), Code.NOT_FOUND, "LAYER_NOT_FOUND", "layers[1].name", resource=("layer", "nope"))
    request = pb.ActivationsRequest(model=conn.ref, images=images, layers=[pb.LayerRef(number=1), pb.LayerRef(number=2), pb.LayerRef()])
    check(details(conn.stub.GetActivations, request), Code.INVALID_ARGUMENT, "FIELD_REQUIRED", "layers[2]")
    still_serves(conn, sample_images[0])


def test_unknown_data_set_names_the_resource(tmp_path: Path) -> None:
    """No RPC of this branch takes a data-set name yet: the store's error carries what the server sends."""
    (tmp_path / "test" / "cat").mkdir(parents=True)
    with pytest.raises(errors.NotFound) as caught:
        DatasetStore(tmp_path).source("nope", 0, 0, 0)
    assert caught.value.reason == "DATASET_NOT_FOUND" and caught.value.resource == ("dataset", "nope", "")


# ---- FAILED_PRECONDITION -----------------------------------------------------------------


def unexposed_model(path: Path) -> Path:
    """image (N,3,8,8) -> Conv -> Relu -> MaxPool -> Conv -> Relu, one output."""
    rng = np.random.default_rng(2)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((5, 4, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
    ]
    graph = helper.make_graph(
        nodes, "pool", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("r2", TensorProto.FLOAT, ["N", 5, 4, 4])], initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def test_failed_precondition_details(tmp_path: Path, sample_images) -> None:
    """A --model-dir model whose external data lies outside that directory cannot be served:
    FAILED_PRECONDITION (the request is fine, the operator's model is not), with EXTERNAL_DATA."""
    from onnx.external_data_helper import set_external_data

    folder, outside = tmp_path / "models", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    model = onnx.load(unexposed_model(tmp_path / "pool.onnx"))
    weights = model.graph.initializer[0]
    (outside / "weights.bin").write_bytes(weights.raw_data)
    set_external_data(weights, "../elsewhere/weights.bin", offset=0, length=len(weights.raw_data))
    weights.ClearField("raw_data")
    weights.data_location = onnx.TensorProto.EXTERNAL
    (folder / "pool.onnx").write_bytes(model.SerializeToString())  # onnx.save refuses to write such a location
    srv, port, _ = create_server("127.0.0.1:0", model_dir=folder)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
        stub = zfnet_pb2_grpc.ZfnetStub(channel)
        d = details(stub.GetModelInfo, pb.ModelRef(name="pool"))
        check(d, Code.FAILED_PRECONDITION, "EXTERNAL_DATA", words=("../elsewhere/weights.bin", "inside"))
        channel.close()
    finally:
        srv.stop(grace=None)


# ---- RESOURCE_EXHAUSTED ------------------------------------------------------------------


def test_resource_exhausted_details(conn: Conn, sample_images, monkeypatch) -> None:
    monkeypatch.setattr(engine_module, "MAX_IMAGES", 2)
    d = details(conn.stub.Predict, pb.PredictRequest(model=conn.ref, images=encoded(sample_images[:3])))
    check(d, Code.RESOURCE_EXHAUSTED, "TOO_MANY_IMAGES", "images", metadata={"limit": "2", "requested": "3"})
    monkeypatch.setattr(deconv_module, "MAX_ROWS", 4)
    d = details(conn.stub.Deconv, deconv_request(conn, encoded(sample_images[:2]), channels=pb.ChannelSelection(top_k=3)))
    check(d, Code.RESOURCE_EXHAUSTED, "TOO_MANY_RECONSTRUCTIONS", metadata={"limit": "4", "requested": "6"})
    still_serves(conn, sample_images[0])


def test_model_too_large_details(tmp_path: Path) -> None:
    data = large_model(tmp_path / "large.onnx").read_bytes()
    srv, port, _ = create_server("127.0.0.1:0", max_model_mb=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            stub = zfnet_pb2_grpc.ZfnetStub(channel)
            d = details(stub.UploadModel, upload_parts(data, hashlib.sha256(data).hexdigest(), "big"))
    finally:
        srv.stop(grace=None)
    check(d, Code.RESOURCE_EXHAUSTED, "MODEL_TOO_LARGE", metadata={"limit": str(1 << 20)})
    assert d.info is not None and int(d.info.metadata["requested"]) > 1 << 20


def test_out_of_memory_details(conn: Conn, sample_images, monkeypatch) -> None:
    def exhausted(*args, **kwargs):
        raise MemoryError  # the fault injected: onnxruntime cannot allocate

    monkeypatch.setattr(conn.engine, "predict", exhausted)
    d = details(conn.stub.Predict, pb.PredictRequest(model=conn.ref, images=one(conn, sample_images)))
    check(d, Code.RESOURCE_EXHAUSTED, "OUT_OF_MEMORY", words=("fewer images",))


# ---- INTERNAL ----------------------------------------------------------------------------


def test_internal_details_name_the_call_not_the_fault(conn: Conn, sample_images, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals at /srv/zfnet")  # the fault injected

    monkeypatch.setattr(conn.engine, "predict", broken)
    d = details(conn.stub.Predict, pb.PredictRequest(model=conn.ref, images=one(conn, sample_images)))
    check(d, Code.INTERNAL, "INTERNAL", words=("Predict", "log"))
    assert "secret" not in d.message and "secret" not in str(d.status)
    monkeypatch.undo()
    still_serves(conn, sample_images[0])


# ---- the Python client reads the details back ----------------------------------------------


def test_python_client_errors_carry_the_details(conn: Conn, sample_images, monkeypatch) -> None:
    client, path = conn.client, conn.path
    with pytest.raises(errors.NotFound) as caught:
        client.deconv(path, sample_images[:1], "conv99")
    err = caught.value
    assert (err.code, err.reason, err.field, err.resource) == ("NOT_FOUND", "LAYER_NOT_FOUND", "layer.name", ("layer", "conv99", ""))
    with pytest.raises(errors.InvalidArgument) as caught:
        client.deconv(path, sample_images[:1], 2, channels=[0, 10_000])
    assert (caught.value.reason, caught.value.field) == ("VALUE_OUT_OF_RANGE", "channels.channels[1]")
    with pytest.raises(errors.NotFound) as caught:
        client.model_info("no-such-model")
    assert caught.value.resource == ("model", "no-such-model", "") and caught.value.field == "name"
    monkeypatch.setattr(engine_module, "MAX_IMAGES", 1)
    with pytest.raises(errors.ResourceExhausted) as caught:
        client.predict(path, sample_images[:2])
    assert caught.value.reason == "TOO_MANY_IMAGES" and caught.value.metadata == {"limit": "1", "requested": "2"}
    monkeypatch.setattr(conn.engine, "predict", lambda *a, **k: 1 / 0)
    with pytest.raises(errors.ZfnetError) as caught:
        client.predict(path, sample_images[:1])
    assert (caught.value.code, caught.value.reason) == ("INTERNAL", "INTERNAL")


def test_python_client_without_details_still_raises_by_code(server) -> None:
    """A status without zfnet details (the health service's NOT_FOUND) maps by code alone."""
    from grpc_health.v1 import health_pb2

    target, _ = server
    with Client(target) as client, grpc.insecure_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            health(channel).Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT)
        err = client._error(caught.value)
    assert isinstance(err, errors.NotFound) and err.reason == "NOT_FOUND" and err.field is None and err.resource is None


def test_unreachable_server_is_unavailable() -> None:
    with Client("127.0.0.1:1") as client, pytest.raises(errors.Unavailable) as caught:
        client._call(client.stub.ListModels, pb.ListModelsRequest(), timeout=5)
    assert caught.value.reason == "UNAVAILABLE" and "127.0.0.1:1" in str(caught.value)


def test_errors_keep_their_details_through_pickling() -> None:
    import pickle

    err = errors.NotFound("no layer", field="layer.name", reason="LAYER_NOT_FOUND", resource=("layer", "x"), metadata={"k": 1})
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is errors.NotFound and str(back) == "no layer"
    assert (back.field, back.reason, back.resource, back.metadata) == ("layer.name", "LAYER_NOT_FOUND", ("layer", "x", ""), {"k": "1"})
    plain = pickle.loads(pickle.dumps(errors.InvalidArgument("bad")))
    assert (plain.field, plain.reason, plain.resource, plain.metadata) == (None, "INVALID_ARGUMENT", None, {})


# ---- streaming replies go through the same mapping -----------------------------------------


def test_streaming_method_errors_carry_details_after_its_replies() -> None:
    """Data-set jobs stream their replies: an error raised mid-stream ends the call with its details."""
    from concurrent import futures

    from types import SimpleNamespace

    from zfnet.server.admission import MemoryBudget
    from zfnet.server.service import _status

    class Counter:
        engine = SimpleNamespace(budget=MemoryBudget(1 << 30, on_idle=None))  # what the servicer's handlers admit against

        @_status
        def Count(self, request, context):
            yield pb.JobProgress(stage="forward", done=1, total=3)
            yield pb.JobProgress(stage="forward", done=2, total=3)
            raise errors.InvalidArgument("image 2 is broken", field="images[2]", reason="BAD_IMAGE")

    handler = grpc.unary_stream_rpc_method_handler(
        Counter().Count, request_deserializer=pb.ListDatasetsRequest.FromString, response_serializer=pb.JobProgress.SerializeToString,
    )
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    srv.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Counter", {"Count": handler})])
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream("/test.Counter/Count", request_serializer=pb.ListDatasetsRequest.SerializeToString,
                                        response_deserializer=pb.JobProgress.FromString)
            replies = []

            def count(request, timeout):
                for reply in call(request, timeout=timeout):
                    replies.append(reply.done)

            d = details(count, pb.ListDatasetsRequest())
    finally:
        srv.stop(grace=None)
    assert replies == [1, 2]
    check(d, Code.INVALID_ARGUMENT, "BAD_IMAGE", "images[2]", words=("image 2",))
