"""On CUDA (onnxruntime's CUDA provider, IO binding between the forward and projection sessions):
deconv equals the CPU result to 1e-4 relative L2, and the top-9 job picks the same images.

Runs where onnxruntime loads its CUDA provider on an NVIDIA device (``bash bench/gpu.sh``); skips
elsewhere with the reason. The CPU reference is computed in a child process with ZFNET_PROVIDER=cpu.

    python tests/server/test_gpu.py OUT.npz   # the results of this process's provider, as the test compares them
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
SAMPLES = ROOT / "samples"  # holds the data set cifar10 (200 images)
DECONV_IMAGES, DECONV_LAYER = 32, 4
TOP_LAYERS, TOP_K = [2, 5], 9
RELATIVE_L2 = 1e-4


def results() -> dict[str, np.ndarray]:
    """Deconv of the top-9 channels of layer 4 on 32 images, and the top-9 job over the 200 bundled images."""
    from zfnet.server import runtime
    from zfnet.server.datasets import DatasetStore
    from zfnet.server.engine import Engine
    from zfnet.server.images import ImageInput
    from zfnet.server.models import ModelStore

    engine = Engine(ModelStore(), DatasetStore(SAMPLES))
    model = engine.store.add(MODEL.read_bytes(), MODEL.stem)
    files = sorted((SAMPLES / "cifar10").glob("*/*.jpg"))[:DECONV_IMAGES]
    _, recs = engine.deconv(model, [ImageInput(encoded=f.read_bytes()) for f in files], DECONV_LAYER, None, 9, "max", "deconvnet")
    out = {
        "provider": np.asarray(runtime.providers()[0]),
        "deconv_keys": np.asarray([(r.image, r.channel, *r.location) for r in recs]), "deconv_pixels": np.stack([r.pixels for r in recs]),
    }
    source = engine.datasets.source("cifar10", 0, 0, 64)
    parts = list(engine.top(model, source, data="dataset:cifar10", layers=TOP_LAYERS, channels=None, k=TOP_K, by="max", method="deconvnet", stage="all", state=None))
    state = next(p.state for p in parts if getattr(p, "final", False))
    for name, top in state.layers.items():
        out[f"top_{name}_indices"], out[f"top_{name}_values"] = top.indices, top.values
    entries = sorted((p for p in parts if type(p).__name__ == "Entry"), key=lambda e: (e.layer, e.channel, e.rank))
    out["top_keys"] = np.asarray([(e.channel, e.rank, e.index, *e.location) for e in entries])
    out["top_pixels"] = np.stack([e.reconstruction for e in entries])
    return out


def _no_cuda() -> str | None:
    """Why the GPU tests cannot run here, or None."""
    import onnxruntime as ort

    from zfnet.server import runtime

    if os.environ.get(runtime.PROVIDER_ENV, "").lower() == "cpu":
        return f"{runtime.PROVIDER_ENV}=cpu"
    if runtime.CUDA not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDA provider (install onnxruntime-gpu)"
    if runtime.providers()[0] != runtime.CUDA:
        return "onnxruntime's CUDA provider did not load: no NVIDIA device, or the CUDA/cuDNN libraries are missing"
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_no_cuda() is not None, reason=f"no GPU: {_no_cuda()}")]


@pytest.fixture(scope="module")
def cpu(tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("cpu") / "cpu.npz"
    subprocess.run([sys.executable, __file__, str(out)], env={**os.environ, "ZFNET_PROVIDER": "cpu"}, check=True, timeout=600)
    with np.load(out) as data:
        return dict(data)


@pytest.fixture(scope="module")
def cuda() -> dict[str, np.ndarray]:
    return results()


def relative_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: ||a - b|| / ||b||."""
    diff = np.linalg.norm((a - b).reshape(len(a), -1), axis=1)
    return diff / np.maximum(np.linalg.norm(b.reshape(len(b), -1), axis=1), 1e-12)


def test_deconv_on_cuda_equals_cpu(cuda, cpu) -> None:
    assert str(cuda["provider"]) == "CUDAExecutionProvider" and str(cpu["provider"]) == "CPUExecutionProvider"
    np.testing.assert_array_equal(cuda["deconv_keys"], cpu["deconv_keys"])  # same channels and locations
    error = relative_l2(cuda["deconv_pixels"], cpu["deconv_pixels"])
    assert error.max() <= RELATIVE_L2, f"worst relative L2 {error.max():.2e} (row {error.argmax()})"


def test_top9_on_cuda_is_identical_to_cpu(cuda, cpu) -> None:
    for key in (k for k in cpu if k.startswith("top_") and k.endswith("_indices")):
        np.testing.assert_array_equal(cuda[key], cpu[key], err_msg=key)
        values = key.replace("_indices", "_values")
        np.testing.assert_allclose(cuda[values], cpu[values], rtol=1e-4, atol=1e-5, err_msg=values)
    np.testing.assert_array_equal(cuda["top_keys"], cpu["top_keys"])
    error = relative_l2(cuda["top_pixels"], cpu["top_pixels"])
    assert error.max() <= RELATIVE_L2, f"worst relative L2 {error.max():.2e}"


if __name__ == "__main__":
    np.savez(sys.argv[1], allow_pickle=False, **results())
