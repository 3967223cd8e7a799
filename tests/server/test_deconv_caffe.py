"""Deconv on the converted Caffe cifar10_quick agrees with Captum on a PyTorch twin built from the
same weights (read independently with h5py), through its overlapping ceil-mode MAX pooling and its
AVE pooling; relative L2 below 1e-4, all three methods."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from captum.attr import NeuronDeconvolution, NeuronGradient, NeuronGuidedBackprop
from torch import nn

from zfnet import imagefolder
from zfnet.converters import caffe
from zfnet.server.engine import Engine
from zfnet.server.images import ImageInput
from zfnet.server.models import ModelStore, load

MEAN = (125.3, 122.9, 113.9)
CAPTUM = {"deconvnet": NeuronDeconvolution, "guided": NeuronGuidedBackprop, "backprop": NeuronGradient}


class Cifar10Quick(nn.Module):
    """BVLC cifar10_quick in PyTorch: Caffe's ceil-mode pooling, ReLU after pool1, AVE pools."""

    mean: torch.Tensor  # a buffer, (1, 3, 1, 1)

    def __init__(self, blobs: dict[str, list[np.ndarray]]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.conv1, self.pool1, self.relu1 = nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU()
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True)
        self.conv3, self.relu3, self.pool3 = nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True)
        self.ip1, self.ip2 = nn.Linear(64 * 16, 64), nn.Linear(64, 10)
        for name in ("conv1", "conv2", "conv3", "ip1", "ip2"):
            layer = getattr(self, name)
            layer.weight.data = torch.from_numpy(blobs[name][0]).reshape(layer.weight.shape)
            layer.bias.data = torch.from_numpy(blobs[name][1]).reshape(layer.bias.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.pool1(self.conv1(x - self.mean)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.pool3(self.relu3(self.conv3(x)))
        return self.ip2(self.ip1(x.flatten(1)))


def _blob(f: h5py.File, path: str) -> np.ndarray:
    """A weight blob of Caffe's HDF5 snapshot, as float32."""
    dataset = f[path]
    assert isinstance(dataset, h5py.Dataset), f"{path} is not a data set"
    return np.asarray(dataset, np.float32)


@pytest.fixture(scope="module")
def converted(shared, tmp_path_factory):
    root = shared("models", "caffe", "cifar10_quick")
    weights = root / "cifar10_quick_iter_5000.caffemodel.h5"
    with h5py.File(weights, "r") as f:
        blobs = {name: [_blob(f, f"data/{name}/{i}") for i in range(2)] for name in ("conv1", "conv2", "conv3", "ip1", "ip2")}
    model = caffe.convert(root / "cifar10_quick.prototxt", weights, mean_value=list(MEAN), channel_order="rgb")
    return Cifar10Quick(blobs).eval(), load(model.SerializeToString(), "cifar10_quick")


def test_twin_reproduces_the_converted_logits(converted, sample_images) -> None:
    twin, model = converted
    batch = np.stack([imagefolder.read_rgb(p) for p in sample_images[:8]]).astype(np.float32).transpose(0, 3, 1, 2)
    ours = model.session.run(["ip2"], {model.input_name: batch})[0]
    with torch.no_grad():
        np.testing.assert_allclose(ours, twin(torch.from_numpy(batch)).numpy(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("method", ["deconvnet", "backprop", "guided"])
@pytest.mark.parametrize("layer", ["relu1", "pool2", "relu3", "pool3"])
def test_deconv_matches_captum_on_the_twin(converted, sample_images, layer, method) -> None:
    twin, model = converted
    chosen = sample_images[:2]
    batch = np.stack([imagefolder.read_rgb(p) for p in chosen]).astype(np.float32).transpose(0, 3, 1, 2)
    _, results = Engine(ModelStore()).deconv(model, [ImageInput(encoded=p.read_bytes()) for p in chosen], layer, None, 3, "max", method)
    for r in results:
        x = torch.from_numpy(batch[r.image : r.image + 1]).requires_grad_()
        reference = CAPTUM[method](twin, getattr(twin, layer)).attribute(x, neuron_selector=(r.channel, *r.location)).detach().numpy()[0] * r.activation
        error = np.linalg.norm(r.pixels - reference) / max(np.linalg.norm(reference), 1e-12)
        assert error < 1e-4, f"{layer} ch {r.channel} {method}: relative L2 {error:.2e}"
