"""Grad-CAM, integrated gradients, SmoothGrad and input x gradient equal Captum (relative L2 < 1e-4)
on three more families than the bundled model's, exported with the default ``torch.onnx.export`` and
uploaded by the Python client to a real server: residual (ResNet), depthwise (MobileNet V2) and a
transformer (ViT). Grad-CAM: ``LayerGradCam(relu_attributions=True)`` upsampled by
``LayerAttribution.interpolate(..., "bilinear")`` at a convolutional layer; on the ViT's tokens
(class token left out, 4 x 4 patches on a 16 px input) the same formula over autograd's gradients.
Integrated gradients: ``IntegratedGradients`` with the server's baseline, the same steps and method,
its delta the same. SmoothGrad: ``NoiseTunnel`` over ``Saliency``/``GuidedBackprop`` given the
server's noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import GuidedBackprop, InputXGradient, IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency
from captum.attr._core import noise_tunnel
from perturb_testing import relative_l2, same_noise, tensor
from test_families import export, images

import family_models
from zfnet.client.api import Client

TOLERANCE = 1e-4  # relative L2, float32 end to end
# per family: the layer Grad-CAM weighs (as the expose pass names it) and the torch module whose output it is
GRAD_CAM_LAYER = {"resnet": ("layer2", "layer2"), "mobilenet_v2": ("features.3", "features.3"), "vit": ("conv_proj", "conv_proj")}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path, int]]:
    folder = tmp_path_factory.mktemp("families")
    out = {}
    for family in GRAD_CAM_LAYER:
        net, size = family_models.build(family), family_models.INPUT_SIZE.get(family, 32)
        out[family] = (net, export(net, folder / f"{family}.onnx", size), size)
    return out


def batch_of(pictures: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(pictures).astype(np.float32).transpose(0, 3, 1, 2))


@pytest.mark.parametrize("family", list(GRAD_CAM_LAYER))
def test_grad_cam_equals_captum(family: str, exported, server, sample_images) -> None:
    net, path, size = exported[family]
    layer, module = GRAD_CAM_LAYER[family]
    pictures = images(sample_images, size)
    x = batch_of(pictures)
    with Client(server[0]) as client:
        result = client.grad_cam(path, pictures, layer)
    assert result.layer == layer and result.layout == "channels"
    for i, item in enumerate(result.images):
        cam = LayerGradCam(net, dict(net.named_modules())[module]).attribute(x[i : i + 1], target=item.target.index, relu_attributions=True)
        cam = tensor(cam)
        heatmap = LayerAttribution.interpolate(cam, (size, size), "bilinear")
        assert relative_l2(item.map, cam.detach().numpy()[0, 0]) < TOLERANCE
        assert relative_l2(item.heatmap, heatmap.detach().numpy()[0, 0]) < TOLERANCE


def test_grad_cam_on_a_transformers_tokens_is_the_formula_over_autograd(exported, server, sample_images) -> None:
    net, path, size = exported["vit"]
    pictures = images(sample_images, size)
    with Client(server[0]) as client:
        result = client.grad_cam(path, pictures, "layers.1")
    assert result.layout == "tokens"
    captured: list[torch.Tensor] = []
    handle = net.layers[1].register_forward_hook(lambda m, i, o: captured.append(o))
    logits = net(batch_of(pictures))
    handle.remove()
    classes = [item.target.index for item in result.images]
    grads = torch.autograd.grad(logits[range(len(classes)), classes].sum(), captured[0])[0]
    as_grid = lambda t: t[:, 1:].reshape(len(t), 4, 4, -1).permute(0, 3, 1, 2)  # noqa: E731  (tokens after the class token, row-major)
    maps = as_grid(captured[0].detach())
    cams = torch.relu((as_grid(grads).mean(dim=(2, 3), keepdim=True) * maps).sum(dim=1, keepdim=True))
    heatmaps = torch.nn.functional.interpolate(cams, (size, size), mode="bilinear")
    for i, item in enumerate(result.images):
        assert relative_l2(item.heatmap, heatmaps[i, 0].numpy()) < TOLERANCE


@pytest.mark.parametrize("family", list(GRAD_CAM_LAYER))
def test_integrated_gradients_smoothgrad_and_input_x_gradient_equal_captum(family: str, exported, server, sample_images, monkeypatch) -> None:
    net, path, size = exported[family]
    pictures = images(sample_images, size)
    x = batch_of(pictures)
    with Client(server[0]) as client:
        integrated = client.integrated_gradients(path, pictures, baseline="blurred", steps=24, method="riemann_trapezoid")
        smooth = {over: client.smoothgrad(path, pictures, method=over, samples=8, noise_level=0.1, seed=5) for over in ("backprop", "guided")}
        product = client.input_x_gradient(path, pictures)
    classes = [item.target.index for item in integrated.images]
    baselines = torch.from_numpy(np.stack([item.baseline for item in integrated.images if item.baseline is not None]))
    reference, delta = IntegratedGradients(net).attribute(x, baselines, target=classes, n_steps=24, method="riemann_trapezoid", return_convergence_delta=True)
    for i, item in enumerate(integrated.images):
        assert relative_l2(item.pixels, reference[i].detach().numpy()) < TOLERANCE, f"{family} integrated gradients image {i}"
        assert item.delta == pytest.approx(float(delta[i]), abs=1e-4 * max(1.0, abs(item.target.value)))
    for over, result in smooth.items():
        for i, item in enumerate(result.images):
            monkeypatch.setattr(noise_tunnel.NoiseTunnel, "_add_noise_to_input", same_noise(8, 5, i, item.sigma, tuple(x.shape[1:])))
            tunnel, options = (NoiseTunnel(GuidedBackprop(net)), {}) if over == "guided" else (NoiseTunnel(Saliency(net)), {"abs": False})
            expected = tunnel.attribute(x[i : i + 1], nt_type="smoothgrad", nt_samples=8, stdevs=float(item.sigma), target=item.target.index, **options)
            assert relative_l2(item.pixels, tensor(expected).detach().numpy()[0]) < TOLERANCE, f"{family} smoothgrad over {over} image {i}"
    expected = InputXGradient(net).attribute(x, target=[item.target.index for item in product.images]).detach().numpy()
    for i, item in enumerate(product.images):
        assert relative_l2(item.pixels, expected[i]) < TOLERANCE, f"{family} input x gradient image {i}"
