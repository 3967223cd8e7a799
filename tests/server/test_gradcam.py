"""Grad-CAM through the real server equals Captum's ``LayerGradCam`` (``relu_attributions=True``,
upsampled by ``LayerAttribution.interpolate(..., "bilinear")``) on the bundled model's PyTorch twin,
at several layers, for the top-1 class, a named class and a unit of an inner layer (relative L2 <
1e-4); Grad-CAM++ equals its formula written in torch over autograd's gradients; the projection
stopped at an inner tensor is autograd's gradient there; bad requests are refused by field."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from perturb_testing import CIFAR10, TIMEOUT, Conn, encoded, nchw, relative_l2, still_serves, tensor
from test_error_details import check, details

from zfnet.server import gradcam, projection
from zfnet.server.models import load
from zfnet.tensors import from_proto
from zfnet.v1 import zfnet_pb2 as pb

Code = grpc.StatusCode
TOLERANCE = 1e-4  # relative L2, float32 end to end


def inner_output(net: torch.nn.Module, name: str):
    """A forward function returning the output of module ``name`` (still connected to the input)."""
    module = dict(net.named_modules())[name]

    def forward(x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda m, i, o: captured.append(tensor(o)))
        net(x)
        handle.remove()
        out = captured[0]
        return out.sum(dim=tuple(range(2, out.dim()))) if out.dim() > 2 else out

    return forward


@pytest.mark.parametrize(
    ("layer", "target", "units"),
    [
        (None, None, []),  # defaults: the last convolutional layer (pool5), the top-1 class
        (pb.LayerRef(name="pool2"), None, ["cat", "7"]),  # a class by name and by index, one per image
        (pb.LayerRef(number=3), pb.LayerRef(name="relu6"), ["17"]),  # a unit of a fully connected layer
        (pb.LayerRef(name="relu2"), pb.LayerRef(name="relu4"), []),  # the strongest channel of a convolutional layer
    ],
)
def test_grad_cam_equals_captum(conn: Conn, reference_module, sample_images, layer, target, units) -> None:
    paths = sample_images[2:4]
    request = pb.GradCamRequest(model=conn.ref, images=encoded(paths), target=pb.Target(units=units))
    if layer is not None:
        request.layer.CopyFrom(layer)
    if target is not None:
        request.target.layer.CopyFrom(target)
    reply = conn.stub.GradCam(request, timeout=TIMEOUT)
    assert reply.layer == ("pool5" if layer is None else layer.name or "relu3") and reply.layout == "channels"
    assert reply.target_layer == ("fc8" if target is None else target.name) and reply.variant == pb.GRAD_CAM
    x = torch.from_numpy(nchw(paths))
    forward = reference_module if target is None else inner_output(reference_module, target.name)
    with torch.no_grad():
        scores = forward(x).numpy()
    for i, item in enumerate(reply.images):
        unit = units[0] if len(units) == 1 else units[i] if units else ""
        expected = int(np.argmax(scores[i])) if not unit else CIFAR10.index(unit) if unit in CIFAR10 else int(unit)
        assert item.target.index == expected and item.target.chosen == (not units) and item.label == paths[i].name
        np.testing.assert_allclose(item.target.value, scores[i, expected], rtol=1e-4)
        if target is None:
            assert item.target.label == CIFAR10[expected]
        captum = LayerGradCam(forward, dict(reference_module.named_modules())[reply.layer])
        cam = captum.attribute(x[i : i + 1], target=expected, relu_attributions=True)
        heatmap = LayerAttribution.interpolate(tensor(cam), (32, 32), "bilinear")
        assert relative_l2(from_proto(item.map), tensor(cam).detach().numpy()[0, 0]) < TOLERANCE
        assert relative_l2(from_proto(item.heatmap), heatmap.detach().numpy()[0, 0]) < TOLERANCE
        assert from_proto(item.heatmap).shape == (32, 32) and from_proto(item.weights).ndim == 1


def test_grad_cam_plus_plus_equals_its_formula_over_autograd(conn: Conn, reference_module, sample_images) -> None:
    paths = sample_images[5:8]
    request = pb.GradCamRequest(model=conn.ref, images=encoded(paths), layer=pb.LayerRef(name="relu4"), variant=pb.GRAD_CAM_PLUS_PLUS)
    reply = conn.stub.GradCam(request, timeout=TIMEOUT)
    captured: list[torch.Tensor] = []
    handle = reference_module.relu4.register_forward_hook(lambda m, i, o: captured.append(o))
    logits = reference_module(torch.from_numpy(nchw(paths)))
    handle.remove()
    activation = captured[0]
    classes = [item.target.index for item in reply.images]
    grads = torch.autograd.grad(logits[range(len(paths)), classes].sum(), activation)[0].double()
    maps = activation.detach().double()
    alpha = grads**2 / (2 * grads**2 + maps.sum(dim=(2, 3), keepdim=True) * grads**3 + 1e-6)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * torch.relu(grads)).sum(dim=(2, 3))
    cams = torch.relu((weights[:, :, None, None] * maps).sum(dim=1, keepdim=True))
    heatmaps = torch.nn.functional.interpolate(cams, (32, 32), mode="bilinear")
    for i, item in enumerate(reply.images):
        assert relative_l2(from_proto(item.weights), weights[i].numpy()) < TOLERANCE
        assert relative_l2(from_proto(item.heatmap), heatmaps[i, 0].numpy()) < TOLERANCE


def test_a_projection_stopped_at_an_inner_tensor_is_the_gradient_there(reference_onnx, reference_module, sample_images) -> None:
    model = load(reference_onnx.read_bytes(), "m")
    graph = projection.build(model.index or model.model, "relu6", "backprop", stop="pool2")
    assert graph.stop == "pool2"
    assert model.index is not None
    assert not set(graph.forward_tensors) & {"conv1", "relu1", "bn2", "relu2", model.input_name}, "nothing below the stop is read"
    images = nchw(sample_images[:2])
    names = [n for n in graph.forward_tensors]
    values = dict(zip(names, (np.asarray(v) for v in model.session.run(names, {model.input_name: images})))) if names else {}
    signal = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    import onnxruntime as ort

    session = ort.InferenceSession(graph.model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {projection.SIGNAL: signal, projection.IMAGE_INDEX: np.arange(2, dtype=np.int64), **{projection.FORWARD_PREFIX + n: v for n, v in values.items()}}
    ours = np.asarray(session.run([projection.RECONSTRUCTION], feeds)[0])
    captured: dict[str, torch.Tensor] = {}
    hooks = [getattr(reference_module, n).register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, o)) for n in ("pool2", "relu6")]
    reference_module(torch.from_numpy(images))
    for h in hooks:
        h.remove()
    reference = torch.autograd.grad((captured["relu6"] * torch.from_numpy(signal)).sum(), captured["pool2"])[0].numpy()
    assert ours.shape == reference.shape == (2, 64, 8, 8)
    assert relative_l2(ours, reference) < 1e-5


def test_upsampling_is_torchs_bilinear_with_half_pixel_centres() -> None:
    maps = np.random.default_rng(1).random((2, 3, 5)).astype(np.float32)
    for size in ((32, 32), (7, 11), (3, 5), (2, 2)):
        reference = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size, mode="bilinear")[:, 0].numpy()
        np.testing.assert_allclose(gradcam.upsample(maps, size), reference, rtol=1e-5, atol=1e-6)


def test_tokens_are_read_as_maps_on_the_input_grid() -> None:
    tokens = np.arange(2 * 17 * 4, dtype=np.float32).reshape(2, 17, 4)  # a class token, then 4 x 4 patches, 4 dims
    maps, layout = gradcam.as_maps(tokens, "t", (16, 16))
    assert layout == "tokens" and maps.shape == (2, 4, 4, 4)
    np.testing.assert_array_equal(maps[1, :, 2, 3], tokens[1, 1 + 2 * 4 + 3])
    wide, _ = gradcam.as_maps(np.zeros((1, 8, 3), np.float32), "t", (16, 32))  # no class token, 2 x 4 on a 1:2 input
    assert wide.shape == (1, 3, 2, 4)


@pytest.mark.parametrize(
    ("change", "code", "reason", "field", "words"),
    [
        (lambda r: r.layer.CopyFrom(pb.LayerRef(name="relu6")), Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "layer", ("relu6", "maps")),
        (lambda r: r.target.layer.CopyFrom(pb.LayerRef(name="relu1")), Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "target.layer", ("relu1", "before")),
        (lambda r: r.target.units.append("unicorn"), Code.INVALID_ARGUMENT, "VALUE_OUT_OF_RANGE", "target.units[0]", ("unicorn", "airplane")),
        (lambda r: r.target.units.extend(["1", "2", "3"]), Code.INVALID_ARGUMENT, "VALUE_OUT_OF_RANGE", "target.units", ("3 target units", "2 images")),
        (lambda r: r.target.layer.CopyFrom(pb.LayerRef(name="relu9")), Code.NOT_FOUND, "LAYER_NOT_FOUND", "target.layer.name", ("relu9",)),
        (lambda r: setattr(r, "variant", 7), Code.INVALID_ARGUMENT, "UNKNOWN_ENUM_VALUE", "variant", ("variant 7", "GRAD_CAM_PLUS_PLUS")),
    ],
)
def test_bad_requests_are_refused_by_field_and_the_server_keeps_serving(conn: Conn, sample_images, change, code, reason, field, words) -> None:
    request = pb.GradCamRequest(model=conn.ref, images=encoded(sample_images[:2]))
    change(request)
    d = details(conn.stub.GradCam, request)
    check(d, code, reason, field, resource=("layer", "relu9") if code == Code.NOT_FOUND else None, words=words)
    still_serves(conn, sample_images[0])
