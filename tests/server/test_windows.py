"""Reconstructions on the receptive-field window (:mod:`zfnet.server.windows`): a top-k job's
reconstructions of units in the corners, on the borders and in the middle of a layer, computed on
their windows, equal the whole image's (the same job with windows turned off, on a model loaded
afresh) to 1e-5 of the largest pixel, for deconvnet, guided and backprop, on a ResNet-like and a
VGG-like torch model at 96 px (strided convolutions with padding, max-pool switches, BatchNorm,
residual sums, per-channel normalisation) and on the converted Caffe cifar10_quick (ceil-mode
pooling); the window is used (the whole-image projection is never built, the projection's pixels
are the window's); a squeeze-and-excitation gate or a mean image subtracted as a full-size
constant falls back to the whole image, and says so."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from zfnet.converters import caffe
from zfnet.converters.pytorch import export
from zfnet.server import runtime, top, windows
from zfnet.server.datasets import DatasetStore
from zfnet.server.models import LoadedModel, load
from zfnet.topk import TopK
from zfnet.wire.top import Checkpoint, Entry

METHODS = ["deconvnet", "guided", "backprop"]
TOLERANCE = 1e-5  # of the largest pixel of the whole image's reconstructions
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


class Block(nn.Module):
    """A residual block: two 3x3 convolutions (the first strided, with padding), BatchNorm, a 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class Gate(nn.Module):
    """Squeeze and excitation: channels scaled by a function of their global average (not local)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))


class ResNetLike(nn.Module):
    """ResNet's stem (7x7/2 convolution, 3x3/2 max pool with padding) and two stages, ImageNet
    normalisation inside; ``gate`` puts squeeze and excitation after layer1, ``mean_image``
    subtracts a full-size mean image first."""

    pixel_mean: torch.Tensor  # a buffer: (1, 3, 1, 1), or (1, 3, 96, 96) with ``mean_image``

    def __init__(self, gate: bool = False, mean_image: bool = False) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.rand(1, 3, 96, 96) * 255 if mean_image else torch.tensor([124.0, 116.0, 104.0]).view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.layer1 = nn.Sequential(Block(8, 8, 1), *([Gate(8)] if gate else []))
        self.layer2 = Block(8, 16, 2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer2(self.layer1(self.stem((x - self.pixel_mean) / 58.0))))


class VGGLike(nn.Module):
    """Two VGG stages: 3x3 convolutions with padding and ReLU, 2x2 max pools."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x / 255.0))


def exported(make: Callable[[], nn.Module]) -> Callable[[], LoadedModel]:
    """A loader of the net ``make()`` builds (seeded random weights, BatchNorm statistics away from the
    identity) at 96 px. Seeded before it is built: unseeded weights left every corner unit of a
    channel dead now and then, and nothing to compare."""
    torch.manual_seed(0)
    net = make().eval()
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    data = export.export(net, (96, 96)).SerializeToString()
    return lambda: load(data, type(net).__name__)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> DatasetStore:
    """The bundled ImageNet (64-px Tiny ImageNet pictures, brought to each model's input) and CIFAR-10 samples."""
    root = tmp_path_factory.mktemp("data")
    for name in ("imagenet", "cifar10"):
        shutil.copytree(SAMPLES / name, root / name, ignore=shutil.ignore_patterns("*.md"))
    return DatasetStore(root)


def corners_and_borders(model: LoadedModel, store: DatasetStore, data: str, layer: str, channels: list[int]) -> TopK:
    """A top-k state of ``layer`` (k=3 for ``channels``) whose winners are units in the corners, on
    the borders and in the middle of the map, with their activations as the model computes them."""
    source = store.source(data, batch_size=64)
    events = list(top.job(model, source, data=f"dataset:{data}", layers=[layer], channels=channels, k=3, by="max", method=None, stage="scan", state=None))
    state = next(e.state for e in events if isinstance(e, Checkpoint) and e.final)
    images = next(iter(source.batches(model.framing))).inputs
    activation = runtime.tensors(model.fetching([layer], exact=True), [layer], {model.input_name: images})[0]
    rows, cols = activation.shape[2:]
    units = [(0, 0), (0, cols // 2), (rows - 1, cols - 1), (rows // 2, cols // 2), (rows - 1, 0), (1, cols - 2), (rows // 2, 0), (rows - 2, 1)]
    found = state.layers[layer]
    for c, channel in enumerate(found.channels):
        for rank in range(state.k):
            image, (y, x) = (3 * c + rank) % len(images), units[(3 * c + rank) % len(units)]
            found.indices[c, rank], found.locations[c, rank] = image, (y, x)
            found.activations[c, rank] = found.values[c, rank] = activation[image, channel, y, x]
    return state


def reconstructions(model: LoadedModel, store: DatasetStore, data: str, state: TopK, method: str) -> dict[tuple[int, int], np.ndarray]:
    """(channel, rank) -> reconstruction, from the job's second pass on ``state``."""
    events = top.job(model, store.source(data, batch_size=64), data=f"dataset:{data}", layers=[], channels=None, k=state.k, by="max",
                     method=method, stage="reconstruct", state=state)
    return {(e.channel, e.rank): e.reconstruction for e in events if isinstance(e, Entry)}


def assert_windowed_equals_whole(loader: Callable[[], LoadedModel], store: DatasetStore, data: str, layer: str, monkeypatch) -> None:
    windowed = loader()
    window = windowed.window(layer)
    assert window is not None
    state = corners_and_borders(windowed, store, data, layer, [0, 1, 2])
    with monkeypatch.context() as off:
        off.setattr(windows, "PAYS", 0.0)  # a model loaded afresh, windows off: the whole image
        whole = loader()
        assert whole.window(layer) is None
    for method in METHODS:
        ours, reference = reconstructions(windowed, store, data, state, method), reconstructions(whole, store, data, state, method)
        assert sorted(ours) == sorted(reference) and len(ours) == 9
        scale = max(float(np.abs(r).max()) for r in reference.values())
        assert scale > 0
        for key, expected in reference.items():
            np.testing.assert_allclose(ours[key], expected, rtol=0, atol=TOLERANCE * scale, err_msg=f"{layer} {method} channel/rank {key}")
        # the window was used: the whole image's projection never built, the projection's pixels the window's
        assert windowed.has_window_sessions(layer, method) and not windowed.has_projection(layer, method)
        assert whole.has_projection(layer, method) and not whole.has_window_sessions(layer, method)
        out = windowed.window_sessions(layer, method).projection.model.graph.output[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in out[2:]] == list(window.size)
    assert window.size[0] * window.size[1] <= windows.PAYS * window.image[0] * window.image[1]


@pytest.fixture(scope="module")
def resnet_like() -> Callable[[], LoadedModel]:
    return exported(ResNetLike)


@pytest.mark.parametrize("layer", ["stem", "layer1", "layer2"])
def test_resnet_like_windows_equal_the_whole_image(resnet_like, store, layer, monkeypatch) -> None:
    assert_windowed_equals_whole(resnet_like, store, "imagenet", layer, monkeypatch)


def test_window_geometry_of_a_resnet_stage(resnet_like) -> None:
    """layer1 sees 27x27 pixels (7x7/2 conv, 3x3/2 pool, two 3x3 convs) at stride 4, its field of
    location (0, 0) starting at -13: a 32-px window (3 + 27, leaving a multiple of 4 to 96), its
    origin the field's start rounded down to 4 and moved inside the image."""
    window = resnet_like().window("layer1")
    assert window == windows.FieldWindow((32, 32), (4, 4), (-13, -13), (96, 96))
    origins = window.origins(np.array([[0, 0], [10, 5], [23, 23]]))
    assert origins.tolist() == [[0, 0], [24, 4], [64, 64]]
    for (y, x), (oy, ox) in zip([[0, 0], [10, 5], [23, 23]], origins):
        assert oy % 4 == 0 and ox % 4 == 0
        top_, left = -13 + 4 * y, -13 + 4 * x
        assert oy <= max(top_, 0) and min(top_ + 27, 96) <= oy + 32 and ox <= max(left, 0) and min(left + 27, 96) <= ox + 32


@pytest.mark.parametrize("layer", ["features.3", "features.8"])
def test_vgg_like_windows_equal_the_whole_image(store, layer, monkeypatch) -> None:
    assert_windowed_equals_whole(exported(VGGLike), store, "imagenet", layer, monkeypatch)


@pytest.mark.parametrize(("options", "node"), [({"gate": True}, "ReduceMean"), ({"mean_image": True}, "Sub")])
def test_a_non_local_op_falls_back_to_the_whole_image(store, options, node, monkeypatch, caplog) -> None:
    """A squeeze-and-excitation gate (a global mean) before the layer, or a mean image subtracted as
    a full-size constant: no window, a log line naming the op, and the job's reconstructions those
    of the whole image (equal to a whole-image run with windows turned off)."""
    caplog.set_level(logging.INFO, logger="zfnet.server")
    loader = exported(lambda: ResNetLike(**options))
    model = loader()
    assert model.window("layer2") is None
    assert any("layer2: reconstructions on the whole image" in r.message and node in r.message for r in caplog.records)
    state = corners_and_borders(model, store, "imagenet", "layer2", [0, 1, 2])
    ours = reconstructions(model, store, "imagenet", state, "guided")
    assert model.has_projection("layer2", "guided") and not model.has_window_sessions("layer2", "guided")
    monkeypatch.setattr(windows, "PAYS", 0.0)
    reference = reconstructions(loader(), store, "imagenet", state, "guided")
    for key, expected in reference.items():
        np.testing.assert_array_equal(ours[key], expected)


def test_a_window_that_does_not_pay_is_not_used(resnet_like, monkeypatch, caplog) -> None:
    """layer2 sees 51x51 pixels at stride 8: a 64-px window, 44% of the 96-px image, used at the default share, not at a tenth."""
    caplog.set_level(logging.INFO, logger="zfnet.server")
    assert resnet_like().window("layer2") == windows.FieldWindow((64, 64), (8, 8), (-25, -25), (96, 96))
    monkeypatch.setattr(windows, "PAYS", 0.1)
    assert resnet_like().window("layer2") is None
    assert any("a 64x64 window would not pay on a 96x96 image" in r.message for r in caplog.records)


def test_caffe_cifar10_quick_windows_equal_the_whole_image(shared, store, monkeypatch) -> None:
    """The converted Caffe cifar10_quick (per-channel mean, ceil-mode MAX and AVE pooling) up to pool2."""
    root = shared("models", "caffe", "cifar10_quick")
    data = caffe.convert(root / "cifar10_quick.prototxt", root / "cifar10_quick_iter_5000.caffemodel.h5", mean_value=[125.3, 122.9, 113.9],
                         channel_order="rgb").SerializeToString()
    loader = lambda: load(data, "cifar10_quick")  # noqa: E731
    model = loader()
    local = [layer for layer in ("conv1", "pool1", "conv2", "pool2") if model.window(layer) is not None]
    if not local:
        pytest.skip("no layer of cifar10_quick has a window")
    assert_windowed_equals_whole(loader, store, "cifar10", local[-1], monkeypatch)
