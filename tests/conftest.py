"""Shared fixtures: real files, a real server on an ephemeral port, real models, TLS certificates."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from zfnet.server.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLES = ROOT / "samples" / "cifar10"
BUNDLED_MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
BUNDLED_CHECKPOINT = ROOT / "models" / "zfnet-cifar10.pt"


@pytest.fixture(scope="session", autouse=True)
def cache_home(tmp_path_factory) -> Iterator[Path]:
    """Every test (and every process it starts) caches prepared models in a temporary folder,
    never in the user's cache directory."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield Path(os.environ["XDG_CACHE_HOME"])
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is only beside a developer or CI checkout)")
    return path


@pytest.fixture(scope="session")
def shared():
    """``shared(*parts)``: a path under ../shared, or skip the test with the reason."""
    return shared_path


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    """The bundled CIFAR-10 test images, first of each class first."""
    files = sorted(SAMPLES.glob("*/*.jpg"))
    assert len(files) >= 10, f"bundled samples missing under {SAMPLES}"
    return sorted(files, key=lambda p: (p.name, p.parent.name))


@pytest.fixture(scope="session")
def reference_module() -> torch.nn.Module:
    """The reference ZFNet-CIFAR in eval mode: the bundled trained weights."""
    from zfnet.converters.pytorch import export, zoo

    return export.load_weights(zoo.build("zfnet-cifar10"), BUNDLED_CHECKPOINT).eval()


@pytest.fixture(scope="session")
def reference_onnx() -> Path:
    """The bundled exported reference model."""
    assert BUNDLED_MODEL.is_file(), f"{BUNDLED_MODEL} missing; run `make train`"
    return BUNDLED_MODEL


@pytest.fixture(scope="session")
def reference_model(reference_onnx: Path) -> onnx.ModelProto:
    return onnx.load(reference_onnx)


@contextmanager
def serving() -> Iterator[tuple[str, Engine]]:
    """A real zfnet server on 127.0.0.1 with an ephemeral port, stopped on exit: (target, engine)."""
    from zfnet.server.app import create_server

    srv, port, engine = create_server("127.0.0.1:0")
    try:
        yield f"127.0.0.1:{port}", engine
    finally:
        srv.stop(grace=None)


@pytest.fixture(scope="module")
def module_server() -> Iterator[tuple[str, Engine]]:
    """One server for the tests of a module that only read from it (see ``server``)."""
    with serving() as running:
        yield running


@pytest.fixture()
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, Engine]]:
    """A real zfnet server on 127.0.0.1 with an ephemeral port: yields (target, engine).

    The tests of a module share one; a test marked ``fresh_server`` (it counts uploads, deletes a
    model, asserts what the server does not hold, or changes its budget) gets its own."""
    if request.node.get_closest_marker("fresh_server") is None:
        yield request.getfixturevalue("module_server")
        return
    with serving() as running:
        yield running


def compile_protos(*files: str):
    """A FileDescriptorSet of ``files`` (paths under proto/) and their imports, compiled by protoc
    from the sources in proto/ -- independent of any generated stub."""
    import importlib.resources
    import tempfile

    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.bin"
        args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}", f"--descriptor_set_out={out}", "--include_imports", *files]
        assert protoc.main(args) == 0, f"protoc failed on {files}"
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@pytest.fixture(scope="session")
def protos():
    """``protos(*files)``: a FileDescriptorSet compiled from proto/ (see ``compile_protos``)."""
    return compile_protos


# ---- TLS: certificates made at test time -----------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for localhost/127.0.0.1 it signed, a client certificate it signed,
    and a stranger's self-signed client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _certificate(subject: str, key, issuer: str, issuer_key, ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """Certificates made here with ``cryptography`` (EC P-256, valid one day)."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, server_key, client_key, stranger_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    files = {
        "ca": _certificate("zfnet test CA", ca_key, "zfnet test CA", ca_key, ca=True),
        "server": _certificate("localhost", server_key, "zfnet test CA", ca_key, server=True),
        "client": _certificate("team-a", client_key, "zfnet test CA", ca_key),
        "stranger": _certificate("stranger", stranger_key, "stranger", stranger_key),
    }
    for name, cert in files.items():
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for name, key in (("server", server_key), ("client", client_key), ("stranger", stranger_key)):
        (folder / f"{name}.key").write_bytes(_key_pem(key))
    return Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "client.pem", folder / "client.key", folder / "stranger.pem", folder / "stranger.key")
