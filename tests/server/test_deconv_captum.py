"""The deconv engine equals Captum on a PyTorch twin (relative L2 < 1e-4), for several layers,
channels, images, both modes and all three methods, on the reference model and a second
architecture (residual sum, non-overlapping max pooling, padded ceil-mode average pooling,
global average pooling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import NeuronDeconvolution, NeuronGradient, NeuronGuidedBackprop
from torch import nn

from zfnet import imagefolder
from zfnet.converters.pytorch import export
from zfnet.server.engine import Engine
from zfnet.server.images import ImageInput
from zfnet.server.models import ModelStore, load

TOLERANCE = 1e-4  # relative L2, float32 end to end
CAPTUM = {"deconvnet": NeuronDeconvolution, "guided": NeuronGuidedBackprop, "backprop": NeuronGradient}


class ResidualNet(nn.Module):
    """A second architecture with ops the reference model lacks."""

    classes = [str(i) for i in range(7)]

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)  # 32 -> 16, non-overlapping
        self.conv2a, self.bn2a, self.relu2a = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        self.conv2b, self.bn2b = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=True)  # 16 -> 9 (Caffe-style)
        self.conv3, self.relu3 = nn.Conv2d(16, 24, 3, stride=2, dilation=1), nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(24, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x / 255.0)))
        x = self.relu2(x + self.bn2b(self.conv2b(self.relu2a(self.bn2a(self.conv2a(x))))))
        x = self.relu3(self.conv3(self.pool2(x)))
        return self.fc(self.flatten(self.gap(x)))


@pytest.fixture(scope="module")
def residual_twin(tmp_path_factory) -> tuple[nn.Module, Path]:
    torch.manual_seed(3)
    net = ResidualNet().eval()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None, "BatchNorm tracks running statistics"
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("residual") / "residual.onnx"
    path.write_bytes(export.export(net).SerializeToString())
    return net, path


def _images(sample_images: list[Path], count: int) -> tuple[np.ndarray, list[ImageInput]]:
    chosen = sample_images[:count]
    rgb = [imagefolder.read_rgb(p, (32, 32)) for p in chosen]
    batch = np.stack(rgb).astype(np.float32).transpose(0, 3, 1, 2)
    return batch, [ImageInput(encoded=p.read_bytes(), label=p.name) for p in chosen]


def _relative_l2(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / max(np.linalg.norm(reference), 1e-12))


def _compare(net: nn.Module, onnx_path: Path, sample_images: list[Path], layer: str, method: str, mode: str, channels: list[int] | None) -> None:
    engine = Engine(ModelStore())
    model = load(onnx_path.read_bytes(), onnx_path.stem)
    batch, inputs = _images(sample_images, 3)
    _, results = engine.deconv(model, inputs, layer, channels, 3, mode, method)
    assert results, "no reconstructions"
    module = dict(net.named_modules())[layer]
    checked = 0
    for r in results:
        x = torch.from_numpy(batch[r.image : r.image + 1]).requires_grad_()
        algorithm = CAPTUM[method](net, module)
        if mode == "max":
            reference = algorithm.attribute(x, neuron_selector=(r.channel, *r.location)).detach().numpy()[0] * r.activation
        else:
            c = r.channel
            reference = algorithm.attribute(x, neuron_selector=lambda out: (out[:, c] * out[:, c].detach()).sum()).detach().numpy()[0]
        if r.activation == 0:  # a silent channel sends nothing down
            assert not np.any(r.pixels) and not np.any(reference)
            continue
        error = _relative_l2(r.pixels, reference)
        assert error < TOLERANCE, f"{layer} ch {r.channel} image {r.image} {method}/{mode}: relative L2 {error:.2e}"
        checked += 1
    assert checked == len(results)


@pytest.mark.parametrize("method", ["deconvnet", "backprop", "guided"])
@pytest.mark.parametrize("layer", ["relu1", "pool1", "pool2", "relu4", "pool5", "relu6"])
def test_reference_model_max_mode_matches_captum(reference_module, reference_onnx, sample_images, layer, method) -> None:
    _compare(reference_module, reference_onnx, sample_images, layer, method, "max", None)


@pytest.mark.parametrize("method", ["deconvnet", "backprop", "guided"])
@pytest.mark.parametrize("layer", ["pool2", "relu4"])
def test_reference_model_map_mode_matches_captum(reference_module, reference_onnx, sample_images, layer, method) -> None:
    _compare(reference_module, reference_onnx, sample_images, layer, method, "map", None)


def test_reference_model_explicit_channels(reference_module, reference_onnx, sample_images) -> None:
    _compare(reference_module, reference_onnx, sample_images, "relu3", "deconvnet", "max", [0, 5, 77])


@pytest.mark.parametrize("method", ["deconvnet", "backprop", "guided"])
@pytest.mark.parametrize("layer", ["relu2", "pool2", "relu3"])
@pytest.mark.parametrize("mode", ["max", "map"])
def test_second_architecture_matches_captum(residual_twin, sample_images, layer, method, mode) -> None:
    net, path = residual_twin
    _compare(net, path, sample_images, layer, method, mode, None)
