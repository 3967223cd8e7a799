"""Today's classifier families, as people export and save them: a small plain-torch model per family
(family_models.py), exported with the pinned torch's default ``torch.onnx.export`` (weights in the
``.onnx.data`` file beside it), uploaded by the Python client to a real server. Deconv at the logits
and at two inner layers equals Captum on the same torch model (``NeuronDeconvolution``,
``NeuronGuidedBackprop``, ``NeuronGradient``; relative L2 < 1e-4) for all three methods, and every
reconstruction lies inside its receptive-field box."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import NeuronDeconvolution, NeuronGradient, NeuronGuidedBackprop
from torch import nn

import family_models
from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.wire.deconv import Reconstruction

TOLERANCE = 1e-4  # relative L2, float32 end to end
CAPTUM = {"deconvnet": NeuronDeconvolution, "guided": NeuronGuidedBackprop, "backprop": NeuronGradient}
IMAGES = 2
# two inner layers per family, named as the expose pass names them: the torch module whose output they are
INNER = {
    "alexnet_vgg": ["features.4", "avgpool"],
    "resnet": ["maxpool", "layer1.bn2"],
    "squeezenet": ["features.3", "classifier.2"],
    "googlenet": ["inception3a", "maxpool3"],
    "densenet": ["features.4", "features.5.3"],
    "mobilenet_v2": ["features.1", "features.2.conv.1.2"],
    "mobilenet_v3": ["features.1.block.2", "features.2.block.1.2"],
    "shufflenet": ["stage2.0", "stage2.1"],
    "efficientnet": ["features.1", "features.2.block.2"],
    "regnet": ["trunk_output.0.activation", "trunk_output.1.f.2"],
    "convnext": ["features.1", "features.3.block.4"],
    "vit": ["conv_proj", "layers.1.self_attention.proj"],
}


class Probe(nn.Module):
    """The family's model with an identity at its output, so that Captum's neuron methods can attribute the logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.logits = net, nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.net(x))


def export(net: nn.Module, path: Path, size: int, dtype: torch.dtype = torch.float32, **options) -> Path:
    """``torch.onnx.export`` as a user calls it, on one example image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, ((torch.rand(1, 3, size, size) * 255).to(dtype),), str(path), **options)
    return path


def images(sample_images: list[Path], size: int) -> list[np.ndarray]:
    return [imagefolder.read_rgb(p, (size, size)) for p in sample_images[:IMAGES]]


def relative_l2(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / max(np.linalg.norm(reference), 1e-12))


def neuron(r: Reconstruction, rank: int, channel_axis: int) -> tuple:
    """The index of the activation a reconstruction sent down: its channel on the layer's channel
    axis, its location on the other axes but the batch's."""
    location = iter(r.location)
    return tuple(slice(None) if axis == 0 else r.channel if axis == channel_axis else next(location) for axis in range(rank))


def captum_reference(probe: Probe, module: nn.Module, batch: np.ndarray, r: Reconstruction, method: str, channel_axis: int = 1) -> np.ndarray:
    """Captum's attribution of the neuron zfnet sent down, with zfnet's signal (the activation) as
    the gradient at that neuron."""
    x = torch.from_numpy(batch[r.image : r.image + 1]).requires_grad_()
    index = neuron(r, len(r.location) + 2, channel_axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = CAPTUM[method](probe, module).attribute(x, neuron_selector=lambda y: (y[index] * r.activation).sum())
    return out.detach().numpy()[0]


def assert_inside_box(r: Reconstruction, what: str) -> None:
    top, left, bottom, right = r.receptive_field
    rows, cols = np.nonzero(np.abs(r.pixels).sum(axis=0))
    if rows.size:
        assert top <= rows.min() and rows.max() < bottom and left <= cols.min() and cols.max() < right, (
            f"{what}: nonzero pixels rows {rows.min()}..{rows.max()} cols {cols.min()}..{cols.max()} outside box {r.receptive_field}"
        )


def check_family(client: Client, net: nn.Module, path: Path, pictures: list[np.ndarray], layers: list[str | None],
                 methods=tuple(CAPTUM), tolerance: float = TOLERANCE) -> None:
    """Deconv of each layer (None: the logits) by every method equals Captum's and stays in its box."""
    probe = Probe(net).eval()
    modules = dict(net.named_modules())
    batch = np.stack(pictures).astype(np.float32).transpose(0, 3, 1, 2)
    info = client.model_info(path)
    for layer in layers:
        name = layer or info.output_name
        module = probe.logits if layer is None else modules[layer]
        captured = []
        handle = module.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
        with torch.no_grad():
            probe(torch.from_numpy(batch))
        handle.remove()
        (ours,) = client.activations(path, pictures, [name]).values()  # by the tensor's name: the outermost module whose output it is
        np.testing.assert_allclose(ours, captured[-1].numpy(), rtol=1e-3, atol=1e-3 * float(np.abs(ours).max()), err_msg=f"{name}: forward")
        for method in methods:
            result = client.deconv(path, pictures, name, top_k=2, method=method)
            axis = next(row.channel_axis for row in info.layers if row.name == result.layer)
            assert len(result.reconstructions) == 2 * len(pictures)
            for r in result.reconstructions:
                what = f"{path.name} {name} channel {r.channel} image {r.image} {method}"
                reference = captum_reference(probe, module, batch, r, method, axis)
                if r.activation == 0:  # a silent neuron sends nothing down
                    assert not np.any(r.pixels) and not np.any(reference), what
                else:
                    error = relative_l2(r.pixels, reference)
                    assert error < tolerance, f"{what}: relative L2 {error:.2e}"
                assert_inside_box(r, what)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(family_models.FAMILIES))
def test_family_deconv_matches_captum(family: str, server, sample_images, tmp_path: Path) -> None:
    net = family_models.build(family)
    size = family_models.INPUT_SIZE.get(family, 32)
    path = export(net, tmp_path / f"{family}.onnx", size)
    assert (tmp_path / f"{family}.onnx.data").is_file(), "the default exporter keeps the weights beside the model"
    target, _ = server
    with Client(target) as client:
        check_family(client, net, path, images(sample_images, size), [None, *INNER[family]])
