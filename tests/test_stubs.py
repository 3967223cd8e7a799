"""The generated gRPC stubs are current with proto/ and agree with the installed runtimes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import google.protobuf
import grpc

from zfnet.v1 import zfnet_pb2, zfnet_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def test_stubs_are_generated_from_the_current_proto(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
         str(ROOT / "proto" / "zfnet" / "v1" / "zfnet.proto")],
        check=True,
    )
    for name in ("zfnet_pb2.py", "zfnet_pb2_grpc.py"):
        assert (tmp_path / "zfnet" / "v1" / name).read_text() == (ROOT / "zfnet" / "v1" / name).read_text(), f"{name} is stale: run make"


def test_generated_code_and_runtimes_agree() -> None:
    source = Path(zfnet_pb2.__file__).read_text()
    gencode = next(line.split(":")[1].strip() for line in source.splitlines() if line.startswith("# Protobuf Python Version"))
    runtime = google.protobuf.__version__
    assert _major_minor(gencode)[0] == _major_minor(runtime)[0] and _major_minor(gencode) <= _major_minor(runtime)
    assert _major_minor(zfnet_pb2_grpc.GRPC_GENERATED_VERSION) <= _major_minor(grpc.__version__)
    assert zfnet_pb2.DESCRIPTOR.services_by_name["Zfnet"].full_name == "zfnet.v1.Zfnet"
