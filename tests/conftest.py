"""Shared fixtures: real files, a real server on an ephemeral port, real models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import torch

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


@pytest.fixture()
def server() -> Iterator[tuple[str, object]]:
    """A real zfnet server on 127.0.0.1 with an ephemeral port: yields (target, engine)."""
    from zfnet.server.app import create_server

    srv, port, engine = create_server("127.0.0.1:0")
    try:
        yield f"127.0.0.1:{port}", engine
    finally:
        srv.stop(grace=None)
