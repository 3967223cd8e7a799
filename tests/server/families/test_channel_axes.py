"""Channels are features, on each layer's own axis: ViT's (N, tokens, features) blocks, Swin's (N, H, W, C)
stages and ConvNeXt's channels-last MLP layers, in plain torch, exported with the default
``torch.onnx.export`` and served by a real server. The layer table names the axis; the top-k of every
feature equals a brute-force ranking of the torch model's activations over the other axes; and the
deconv of a feature equals Captum's ``NeuronDeconvolution`` of that feature (relative L2 < 1e-4)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import family_models
from test_families import TOLERANCE, Probe, captum_reference, export, neuron, relative_l2
from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.converters.pytorch.imagenet.swin import SwinTransformer

IMAGES = 24  # the data set of the top-k scan
K = 4


def small_swin() -> nn.Module:
    """torchvision's Swin (the replica) at a tenth of Swin-T: patch 4, width 16, two stages, window 4 (shifted windows and their masks)."""
    torch.manual_seed(0)
    net = SwinTransformer(4, 16, [2, 2], [2, 4], 4, 0.0, 10)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return net.eval()


# model -> (the network, its input size, a module path, the channel axis of that module's output)
CASES = {
    "vit": (lambda: family_models.build("vit"), 16, "layers.1", 2),
    "swin": (small_swin, 32, "features.1", 3),
    "convnext": (lambda: family_models.build("convnext"), 32, "features.3.block.3", 3),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_images) -> Path:
    """The first images of the bundled CIFAR-10 sample as a one-class image folder."""
    root = tmp_path_factory.mktemp("axes") / "data"
    (root / "pictures").mkdir(parents=True)
    for i, path in enumerate(sample_images[:IMAGES]):
        shutil.copy(path, root / "pictures" / f"{i:03d}.jpg")
    return root


def hooked(net: nn.Module, module: nn.Module, batch: np.ndarray) -> np.ndarray:
    """The module's output for a batch, by a forward hook on the torch model."""
    captured = []
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    with torch.no_grad():
        net(torch.from_numpy(batch))
    handle.remove()
    return captured[-1].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_channels_are_features_on_the_layers_axis(case: str, server, data: Path, tmp_path: Path) -> None:
    build, size, layer, axis = CASES[case]
    net = build()
    path = export(net, tmp_path / f"{case}.onnx", size)
    files = imagefolder.scan(data).files
    batch = np.stack([imagefolder.read_rgb(p, (size, size)) for p in files]).astype(np.float32).transpose(0, 3, 1, 2)
    module = dict(net.named_modules())[layer]
    reference = hooked(net, module, batch)
    target, _ = server
    with Client(target) as client:
        info = client.model_info(path)
        row = next(r for r in info.layers if layer in r.modules)
        assert row.channel_axis == axis and row.shape[axis] == reference.shape[axis], f"{case} {layer}: {row}"

        # top-k: per feature, the images whose strongest activation over the other axes is largest
        state = client.top_scan(path, client.dataset(data, batch_size=10), [layer], k=K)
        top = state.layers[row.name]
        features = np.moveaxis(reference, axis, 1).reshape(len(files), reference.shape[axis], -1)
        peaks = features.max(axis=2)  # (images, features)
        assert top.channels.tolist() == list(range(reference.shape[axis]))
        for c in top.channels:
            best = np.sort(peaks[:, c])[::-1][:K]
            np.testing.assert_allclose(top.values[c], best, rtol=1e-4, atol=1e-4 * float(np.abs(best).max()), err_msg=f"{case} feature {c}")
            np.testing.assert_allclose(peaks[top.indices[c], c], top.values[c], rtol=1e-4, atol=1e-4 * float(np.abs(best).max()))
            for index, location, value in zip(top.indices[c], top.locations[c], top.activations[c]):
                at = neuron_at(int(c), tuple(int(p) for p in location), reference.ndim, axis)
                assert reference[index][at] == pytest.approx(value, rel=1e-4, abs=1e-5), f"{case} feature {c} image {index} at {tuple(location)}"

        # deconv of chosen features equals Captum's deconvolution of that feature
        probe = Probe(net).eval()
        pictures = [imagefolder.read_rgb(files[0], (size, size))]
        channels = [0, int(reference.shape[axis]) - 1]
        result = client.deconv(path, pictures, layer, channels, method="deconvnet")
        assert [r.channel for r in result.reconstructions] == channels
        for r in result.reconstructions:
            assert len(r.location) == reference.ndim - 2
            assert r.activation == pytest.approx(float(reference[0][neuron(r, reference.ndim, axis)[1:]]), rel=1e-4, abs=1e-5)
            error = relative_l2(r.pixels, captum_reference(probe, module, batch[:1], r, "deconvnet", axis))
            assert error < TOLERANCE, f"{case} {layer} feature {r.channel}: relative L2 {error:.2e}"


def neuron_at(channel: int, location: tuple[int, ...], rank: int, axis: int) -> tuple[int, ...]:
    """The index in one image's activation (without the batch axis) of a feature at a location on the other axes."""
    rest = iter(location)
    return tuple(channel if a == axis else next(rest) for a in range(1, rank))
