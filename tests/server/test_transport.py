"""Issue 6, defect 2: TLS (certificates made here with ``cryptography``), mutual TLS, bearer tokens
(none, wrong, right) on every call but health, the refusal to expose a server off-host without
them, and the in-process server's private Unix socket."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_testing import health

from zfnet.client.api import Client
from zfnet.client.transport import Connection
from zfnet.errors import InvalidArgument, Unauthenticated, Unavailable
from zfnet.server.app import create_server
from zfnet.server.security import Tls, check_exposure, is_local
from zfnet.tensors import CHANNEL_OPTIONS
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc

TIMEOUT = 60
TOKENS = ("team-a-5f1c9e7d2b", "team-b-93aa04c1e8")


@pytest.fixture()
def secured(pki) -> Iterator[str]:
    """A server on 127.0.0.1 with TLS and bearer tokens; yields its target."""
    srv, port, _ = create_server("127.0.0.1:0", tls=Tls(pki.server_cert, pki.server_key), tokens=TOKENS)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        srv.stop(grace=None)


def tls_channel(target: str, pki, token: str | None = None) -> grpc.Channel:
    return Connection(token=token, tls_ca=pki.ca).channel(target)


def code_of(call, request) -> grpc.StatusCode:
    try:
        call(request, timeout=TIMEOUT)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_tls_and_tokens(secured: str, pki, reference_onnx: Path, sample_images) -> None:
    # no token, a wrong one: UNAUTHENTICATED, for the zfnet service and for reflection alike
    for token in (None, "team-c-guess", TOKENS[0] + "x", TOKENS[0][:-1]):
        with tls_channel(secured, pki, token) as channel:
            stub = zfnet_pb2_grpc.ZfnetStub(channel)
            assert code_of(stub.ListModels, pb.ListModelsRequest()) == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(stub.UploadModel, iter([pb.UploadModelRequest(header=pb.UploadHeader(size=4)), pb.UploadModelRequest(chunk=b"abcd")])) == grpc.StatusCode.UNAUTHENTICATED
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                # typeshed's grpcio-reflection stub types ServerReflectionInfo as binascii.Incomplete (an exception class)
                list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT))  # pyright: ignore[reportCallIssue]
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # health needs no token
            reply = health(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # the right token under another scheme, or none
    with tls_channel(secured, pki) as channel:
        stub = zfnet_pb2_grpc.ZfnetStub(channel)
        for header in (f"Basic {TOKENS[0]}", TOKENS[0], f"Bearer{TOKENS[0]}"):
            with pytest.raises(grpc.RpcError) as info:
                stub.ListModels(pb.ListModelsRequest(), metadata=[("authorization", header)], timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, header
        lenient = stub.ListModels(pb.ListModelsRequest(), metadata=[("authorization", f"bearer  {TOKENS[0]}")], timeout=TIMEOUT)
        assert lenient == stub.ListModels(pb.ListModelsRequest(), metadata=[("authorization", f"Bearer {TOKENS[0]}")], timeout=TIMEOUT)
    # either correct token works, through the raw stub and the Python client
    for token in TOKENS:
        with tls_channel(secured, pki, token) as channel:
            assert code_of(zfnet_pb2_grpc.ZfnetStub(channel).ListModels, pb.ListModelsRequest()) == grpc.StatusCode.OK
    with Client(secured, Connection(token=TOKENS[1], tls_ca=pki.ca)) as client:
        assert client.probabilities(reference_onnx, sample_images[:2]).shape == (2, 10)
    with Client(secured, Connection(token="wrong", tls_ca=pki.ca)) as client:
        with pytest.raises(Unauthenticated, match="not valid"):
            client.model_info(reference_onnx)
    with Client(secured, Connection(tls_ca=pki.ca)) as client:
        with pytest.raises(Unauthenticated, match="ZFNET_TOKEN"):
            client.model_info(reference_onnx)


def test_plaintext_and_untrusted_certificates_do_not_connect(secured: str, pki) -> None:
    with grpc.insecure_channel(secured, options=CHANNEL_OPTIONS) as channel:
        assert code_of(health(channel).Check, health_pb2.HealthCheckRequest()) == grpc.StatusCode.UNAVAILABLE
    with Connection(token=TOKENS[0], tls_ca=pki.stranger_cert).channel(secured) as channel:  # trusts someone else
        assert code_of(health(channel).Check, health_pb2.HealthCheckRequest()) == grpc.StatusCode.UNAVAILABLE
    with Client(secured, Connection(token=TOKENS[0])) as client:  # forgot --tls-ca
        with pytest.raises(Unavailable, match=secured):
            client.list_datasets()


def test_mutual_tls(pki) -> None:
    srv, port, _ = create_server("127.0.0.1:0", tls=Tls(pki.server_cert, pki.server_key, pki.ca))
    target = f"127.0.0.1:{port}"
    try:
        for connection in (Connection(tls_ca=pki.ca), Connection(tls_ca=pki.ca, tls_cert=pki.stranger_cert, tls_key=pki.stranger_key)):
            with connection.channel(target) as channel:
                assert code_of(zfnet_pb2_grpc.ZfnetStub(channel).ListModels, pb.ListModelsRequest()) == grpc.StatusCode.UNAVAILABLE
        with Connection(tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key).channel(target) as channel:
            assert code_of(zfnet_pb2_grpc.ZfnetStub(channel).ListModels, pb.ListModelsRequest()) == grpc.StatusCode.OK
    finally:
        srv.stop(grace=None)


@pytest.mark.parametrize("address, local", [
    ("127.0.0.1:50051", True), ("localhost:1", True), ("[::1]:50051", True), ("unix:/tmp/x.sock", True),
    ("0.0.0.0:50051", False), ("[::]:50051", False), (":50051", False), ("10.1.2.3:50051", False), ("zfnet.example.org:443", False),
])
def test_which_addresses_are_local(address: str, local: bool) -> None:
    assert is_local(address) is local


def test_off_host_needs_tls_and_identity_or_insecure(pki, caplog) -> None:
    tls = Tls(pki.server_cert, pki.server_key)
    with pytest.raises(InvalidArgument, match=r"without TLS .* and tokens .*--insecure"):
        check_exposure("0.0.0.0:50051", None, (), False)
    with pytest.raises(InvalidArgument, match=r"without tokens"):
        check_exposure("0.0.0.0:50051", tls, (), False)
    with pytest.raises(InvalidArgument, match=r"without TLS"):
        check_exposure("10.0.0.5:50051", None, TOKENS, False)
    check_exposure("0.0.0.0:50051", tls, TOKENS, False)
    check_exposure("0.0.0.0:50051", Tls(pki.server_cert, pki.server_key, pki.ca), (), False)  # client certificates are an identity
    with caplog.at_level("WARNING", logger="zfnet.server"):
        check_exposure("0.0.0.0:50051", None, (), True)
    assert any("--insecure" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_zfserver_refuses_an_open_bind_in_one_line(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "zfserver"
    done = subprocess.run([str(script), "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to serve 0.0.0.0:0") and "--insecure" in lines[0], done.stderr
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# comment only\n\n")
    done = subprocess.run([str(script), "--token-file", str(tokens), "--port", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "holds no tokens" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_bad_tls_files_are_one_line_errors(tmp_path: Path, pki) -> None:
    script = Path(sys.executable).parent / "zfserver"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for args, words in (
        (["--tls-cert", str(garbage), "--tls-key", str(pki.server_key)], "holds no PEM certificate"),
        (["--tls-cert", str(pki.server_cert), "--tls-key", str(garbage)], "no unencrypted PEM private key"),
        (["--tls-cert", str(pki.server_cert)], "go together"),
        (["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(pki.server_key)], "does not exist"),
    ):
        done = subprocess.run([str(script), "--port", "0", *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_in_process_server_listens_on_a_private_unix_socket(reference_onnx: Path, sample_images) -> None:
    with Client() as client:
        assert client.target.startswith("unix:")
        socket = Path(client.target.removeprefix("unix:"))
        folder = socket.parent
        assert stat.S_ISSOCK(socket.stat().st_mode)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()
        assert client.probabilities(reference_onnx, sample_images[:1]).shape == (1, 10)
    assert not folder.exists(), "the private directory was left behind"
