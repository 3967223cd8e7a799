"""The generated code is current with its .proto files and agrees with the installed runtimes: the
gRPC stubs (proto/zfnet/v1) and the Caffe message classes (converters/.../caffe.proto). Both are
generated at build time by hatch_build.py (an editable install included), never committed."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import google.protobuf
import grpc
import pytest

from zfnet.converters.caffe import caffe_pb2
from zfnet.v1 import zfnet_pb2, zfnet_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _file(module: ModuleType) -> Path:
    assert module.__file__ is not None, f"{module.__name__} is not a file"
    return Path(module.__file__)


def _build_hook():
    spec = importlib.util.spec_from_file_location("hatch_build_for_test", ROOT / "hatch_build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    pytest.importorskip("hatchling")
    spec.loader.exec_module(module)
    return module


def test_stubs_are_generated_from_the_current_proto(tmp_path: Path) -> None:
    """The build hook, run on a copy of the .proto files, writes what the package imports."""
    hook = _build_hook()
    for include, proto, out, _ in hook.PROTOS:
        (tmp_path / proto).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / proto).write_bytes((ROOT / proto).read_bytes())
        (tmp_path / out).mkdir(parents=True, exist_ok=True)
    hook.generate(tmp_path)
    for module in (zfnet_pb2, zfnet_pb2_grpc, caffe_pb2):
        installed = _file(module)
        fresh = tmp_path / installed.relative_to(ROOT)
        assert fresh.read_text() == installed.read_text(), f"{installed.name} is stale: reinstall (make install)"


def test_generated_code_and_runtimes_agree() -> None:
    for module in (zfnet_pb2, caffe_pb2):
        source = _file(module).read_text()
        gencode = next(line.split(":")[1].strip() for line in source.splitlines() if line.startswith("# Protobuf Python Version"))
        runtime = google.protobuf.__version__
        assert _major_minor(gencode)[0] == _major_minor(runtime)[0] and _major_minor(gencode) <= _major_minor(runtime)
    assert _major_minor(zfnet_pb2_grpc.GRPC_GENERATED_VERSION) <= _major_minor(grpc.__version__)
    assert zfnet_pb2.DESCRIPTOR.services_by_name["Zfnet"].full_name == "zfnet.v1.Zfnet"


def test_generated_code_is_not_committed() -> None:
    tracked = subprocess.run(["git", "ls-files", "*_pb2.py", "*_pb2_grpc.py", "*_pb2.pyi"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    assert tracked.stdout.split() == []
