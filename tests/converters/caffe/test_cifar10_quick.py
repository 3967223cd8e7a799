"""The real Caffe-trained cifar10_quick (../shared): both snapshots, from both prototxts, scored on the test set."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from zfnet import imagefolder
from zfnet.converters.caffe import convert
from zfnet.converters.caffe.mean import compute_mean, read_binaryproto, write_binaryproto

ROOT = Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared"
MODEL_DIR = SHARED / "models" / "caffe" / "cifar10_quick"
DATA_DIR = SHARED / "data" / "cifar10"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SNAPSHOTS = {"cifar10_quick_iter_4000.caffemodel": 0.695, "cifar10_quick_iter_5000.caffemodel.h5": 0.730}
NETS = ["cifar10_quick.prototxt", "cifar10_quick_train_test.prototxt"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODEL_DIR.is_dir() and DATA_DIR.is_dir()), reason=f"{SHARED} is absent (it sits beside developer and CI checkouts only)"),
]


@pytest.fixture(scope="session")
def training_mean(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The per-pixel RGB mean of the training images as mean.binaryproto, cached by data path across
    sessions (in pytest's cache; in a temporary folder when the cache plugin is off)."""
    train = (DATA_DIR / "train").resolve()
    key = hashlib.sha1(str(train).encode()).hexdigest()[:16]
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("zfnet-caffe-mean") if cache is not None else tmp_path_factory.mktemp("zfnet-caffe-mean")
    path = folder / f"{key}.binaryproto"
    if not path.is_file():
        write_binaryproto(compute_mean(train)[0], path)
    return path


@pytest.fixture(scope="session")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test images as float32 (N, 3, 32, 32) RGB 0..255, and their labels."""
    folder = imagefolder.scan(DATA_DIR / "test", CLASSES)
    loaded = imagefolder.load(folder)
    return loaded.images.transpose(0, 3, 1, 2).astype(np.float32), loaded.labels


def test_training_mean_is_the_known_one(training_mean):
    mean = read_binaryproto(training_mean)
    assert mean.shape == (3, 32, 32)
    np.testing.assert_allclose(mean.mean(axis=(1, 2)), [125.3, 122.9, 113.9], atol=0.15)  # ../shared/data/README.md


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("snapshot", list(SNAPSHOTS))
def test_accuracy_matches_caffe(training_mean, test_set, net, snapshot):
    model = convert(MODEL_DIR / net, MODEL_DIR / snapshot, mean_file=training_mean, channel_order="rgb", classes=CLASSES)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim[1:]] for v in model.graph.value_info}
    assert [shapes[name] for name in ("pool1", "pool2", "pool3")] == [[32, 16, 16], [32, 8, 8], [64, 4, 4]]  # Caffe's ceil rounding
    assert {"conv1", "pool1", "relu1", "conv2", "relu2", "ip1"} <= set(shapes)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images, labels = test_set
    output = model.graph.output[-1].name  # prob in the deploy net, ip2 in the train/test net (its loss is dropped)
    scores = np.concatenate([np.asarray(session.run([output], {"data": images[i : i + 500]})[0]) for i in range(0, len(images), 500)])
    accuracy = float((scores.argmax(axis=1) == labels).mean())
    print(f"{net} + {snapshot}: top-1 {accuracy:.2%} on {len(labels)} test images")
    assert accuracy >= SNAPSHOTS[snapshot]
    onnx.checker.check_model(model, full_check=True)
