"""ImageNet replicas (zfnet.converters.pytorch.imagenet) against upstream torchvision and timm.

The reference is ``imagenet_upstream.json`` beside this test, recorded once by running torchvision 0.29.1 and
timm 1.0.31 themselves (its ``how`` says how): state_dict keys and shapes, module paths, parameter counts
(torchvision's published ``num_params``, which its model docs list), evaluation transforms, module output
shapes, and the logits upstream computes for weights and an input made by ``fill_weights``/``probe_input``.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

from zfnet.converters.pytorch import imagenet
from zfnet.converters.pytorch.imagenet import REGISTRY, Architecture

UPSTREAM = json.loads((Path(__file__).parent / "imagenet_upstream.json").read_text())["models"]
NAMES = list(UPSTREAM)
SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "cifar10"
REDUCED = 96  # a reduced input every architecture takes (Inception needs at least 75)


def fill_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every floating-point ``state_dict`` entry, in key order, from one seeded generator.

    Two networks with the same keys and shapes get the same weights. Scales keep activations finite
    through 100+ layers: matrices ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1), running variances in
    0.5..1.5, other vectors ~ N(0, 0.1).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in sorted(model.state_dict().items()):
            if not tensor.is_floating_point():
                continue
            leaf = key.rsplit(".", 1)[-1]
            if leaf == "running_var":
                value = 0.5 + torch.rand(tensor.shape, generator=gen)
            elif tensor.numel() == max(tensor.shape, default=1):  # a vector, whatever its layout
                value = torch.randn(tensor.shape, generator=gen) * 0.1 + (1.0 if leaf == "weight" else 0.0)
            else:
                value = torch.randn(tensor.shape, generator=gen) * (tensor.numel() / tensor.shape[0]) ** -0.5
            tensor.copy_(value)
    return model


def probe_input(size: tuple[int, int], batch: int = 1, seed: int = 1) -> torch.Tensor:
    """A seeded, ImageNet-normalised-looking input."""
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def real_images(arch: Architecture, count: int = 2, crop: int | None = None) -> torch.Tensor:
    """Bundled photos put through the architecture's published evaluation transform (resize, centre crop, mean/std),
    optionally scaled to a smaller ``crop``."""
    pre = arch.preprocessing
    crop = crop or pre.crop
    resize = round(pre.resize * crop / pre.crop)
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[pre.interpolation]
    pictures = []
    for path in sorted(SAMPLES.glob("*/0000.jpg"))[:count]:
        image = Image.open(path).convert("RGB").resize((resize, resize), resample)  # square photos: shorter side = resize
        left = (resize - crop) // 2
        image = image.crop((left, left, left + crop, left + crop))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pictures.append((pixels - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32))
    return torch.from_numpy(np.stack(pictures).transpose(0, 3, 1, 2).copy())


@pytest.fixture(scope="module")
def built() -> Iterator[Callable[[str], nn.Module]]:
    """``built(name)``: the replica with ``fill_weights`` applied, in eval mode, built once per module."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = fill_weights(REGISTRY[name]()).eval()
        return cache[name]

    yield get
    cache.clear()


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


# ---- the registry

def test_registry_names_every_architecture_by_bare_and_qualified_name() -> None:
    for name, record in UPSTREAM.items():
        assert REGISTRY[name] is REGISTRY[record["upstream"]]
        assert REGISTRY[name].upstream == record["upstream"]
    assert set(REGISTRY) == set(NAMES) | {r["upstream"] for r in UPSTREAM.values()}


@pytest.mark.parametrize("name", NAMES)
def test_preprocessing_is_upstreams_evaluation_transform(name: str) -> None:
    recorded = UPSTREAM[name]["preprocessing"]
    pre = REGISTRY[name].preprocessing
    assert (pre.resize, pre.crop, pre.interpolation) == (recorded["resize"], recorded["crop"], recorded["interpolation"])
    assert pre.mean == pytest.approx(recorded["mean"]) and pre.std == pytest.approx(recorded["std"])
    assert list(pre.input_size) == UPSTREAM[name]["input_size"]


# ---- structure: what a weight file and a module path see

# Parameter counts as upstream publishes them: torchvision's model docs (meta["num_params"] of the
# IMAGENET1K_V1 weights, also recorded in imagenet_upstream.json); timm's results tables (22.05 M for vit_small_patch16_224).
PUBLISHED = {
    "resnet18": 11_689_512, "resnet50": 25_557_032, "vgg16": 138_357_544, "inception_v3": 27_161_264,
    "densenet121": 7_978_856, "mobilenet_v3_large": 5_483_032, "efficientnet_b0": 5_288_548, "convnext_tiny": 28_589_128,
    "swin_t": 28_288_354, "regnet_y_400mf": 4_344_144, "vit_small_patch16_224": 22_050_664,
}


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_the_published_one(name: str, built) -> None:
    record = UPSTREAM[name]
    count = sum(p.numel() for p in built(name).parameters())
    assert count == PUBLISHED[name] == record["parameters"]  # what upstream's code builds
    assert record["published_parameters"] in (None, count)  # torchvision's weights metadata; timm records none


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_shapes_are_upstreams(name: str, built) -> None:
    ours = {key: list(value.shape) for key, value in built(name).state_dict().items()}
    assert list(ours) == list(UPSTREAM[name]["state_dict"])  # same keys in the same order
    assert ours == UPSTREAM[name]["state_dict"]


@pytest.mark.parametrize("name", NAMES)
def test_module_paths_are_upstreams(name: str, built) -> None:
    modules = dict(built(name).named_modules())
    leaves = {path: type(m).__name__ for path, m in modules.items() if path and not list(m.children())}
    containers = [path for path, m in modules.items() if path and list(m.children())]
    assert leaves == UPSTREAM[name]["modules"]
    assert containers == UPSTREAM[name]["containers"]


def test_a_saved_state_dict_loads_unchanged(built, tmp_path) -> None:
    """The user's path: ``torch.save`` a state_dict, ``torch.load`` it, ``load_state_dict`` (strict) into a fresh replica."""
    path = tmp_path / "resnet50.pth"
    torch.save(built("resnet50").state_dict(), path)
    fresh = REGISTRY["torchvision.resnet50"]().eval()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    x = probe_input((64, 64))
    with torch.no_grad():
        assert torch.equal(fresh(x), built("resnet50")(x))


def test_densenet_loads_torchvisions_legacy_key_spelling(built) -> None:
    """torchvision's published DenseNet files spell ``denselayer1.norm.1.weight``; they load as through torchvision."""
    legacy = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.(weight|bias|running_mean|running_var)$")
    state = {legacy.sub(r"\1.\2.\3", k): v for k, v in built("densenet121").state_dict().items() if "denselayer" not in k or not k.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in state and "features.denseblock4.denselayer16.conv.2.weight" in state
    fresh = REGISTRY["densenet121"]().eval()
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), built("densenet121").state_dict().values()))


# ---- numbers: the replicas compute what upstream computes

def _assert_logits_are_upstreams(model: nn.Module, recorded: dict) -> None:
    """Row 0 of a batch of two is probe_input's first image, whose logits upstream recorded."""
    with torch.no_grad():
        logits = model(probe_input(tuple(recorded["input_size"]), batch=2))
    assert logits.shape == (2, 1000)
    assert _relative_error(logits[0, :16].numpy(), np.array(recorded["logits"])) < 1e-4
    assert float(logits[0].norm()) == pytest.approx(recorded["logits_norm"], rel=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_upstreams_at_a_reduced_input(name: str, built) -> None:
    """fill_weights gives upstream and the replica the same weights (same keys, shapes, order); the logits must agree."""
    recorded = UPSTREAM[name]["reduced"]
    model = fill_weights(REGISTRY[name](img_size=recorded["input_size"][0])).eval() if name.startswith("vit") else built(name)
    _assert_logits_are_upstreams(model, recorded)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_upstreams_at_full_size(name: str, built) -> None:
    _assert_logits_are_upstreams(built(name), UPSTREAM[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_module_outputs_have_upstreams_shapes(name: str, built) -> None:
    record = UPSTREAM[name]
    model = built(name)
    shapes: dict[str, list[int]] = {}
    hooks = [model.get_submodule(path).register_forward_hook(lambda m, i, o, path=path: shapes.__setitem__(path, list(o.shape))) for path in record["outputs"]]
    try:
        with torch.no_grad():
            logits = model(probe_input(tuple(record["input_size"]), batch=2))
    finally:
        for hook in hooks:
            hook.remove()
    assert logits.shape == (2, 1000)
    assert shapes == {path: [2] + shape[1:] for path, shape in record["outputs"].items()}


def test_num_classes_sets_the_classifier() -> None:
    for name in ("resnet18", "efficientnet_b0"):
        model = REGISTRY[name](num_classes=10).eval()
        with torch.no_grad():
            assert model(probe_input(REGISTRY[name].preprocessing.input_size)).shape == (1, 10)


# ---- Inception's upstream switches

@pytest.mark.slow
def test_inception_returns_aux_logits_only_in_training(built) -> None:
    model = built("inception_v3")
    x = probe_input((299, 299), batch=2)
    model.train()
    try:
        with torch.no_grad():
            logits, aux = model(x)
    finally:
        model.eval()
    assert logits.shape == aux.shape == (2, 1000)
    without = REGISTRY["inception_v3"](aux_logits=False, transform_input=True)
    assert without.AuxLogits is None and without.transform_input
    assert sum(p.numel() for p in without.parameters()) == PUBLISHED["inception_v3"] - sum(p.numel() for p in model.AuxLogits.parameters())


def test_inception_transform_input_maps_imagenet_normalisation_to_its_own(built) -> None:
    """With ``transform_input`` the network takes ImageNet-normalised input and sees ``(x - 0.5) / 0.5`` (its weights' own)."""
    pixels = torch.rand(2, 3, REDUCED, REDUCED, generator=torch.Generator().manual_seed(2))
    mean, std = torch.tensor(imagenet.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(imagenet.IMAGENET_STD).view(1, 3, 1, 1)
    model = built("inception_v3")
    assert not model.transform_input
    with torch.no_grad():
        expected = model((pixels - 0.5) / 0.5)
        model.transform_input = True  # upstream's switch is this attribute
        try:
            got = model((pixels - mean) / std)
        finally:
            model.transform_input = False
    assert _relative_error(got.numpy(), expected.numpy()) < 1e-4


# ---- ONNX: both exporters, onnxruntime equals torch

def _export(model: nn.Module, x: torch.Tensor, dynamo: bool, path: Path) -> Path:
    """``torch.onnx.export`` to a file as a user calls it, at opset 17 (the default exporter writes its weights beside, ``.onnx.data``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            torch.onnx.export(model, (x,), str(path), input_names=["image"], opset_version=17, dynamo=dynamo)
        finally:
            logging.disable(logging.NOTSET)
    return path


def _check_export(model: nn.Module, x: torch.Tensor, dynamo: bool, path: Path) -> None:
    with torch.no_grad():
        expected = model(x).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(_export(model, x, dynamo, path)), options, providers=["CPUExecutionProvider"])
    got = np.asarray(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert got.shape == expected.shape
    assert _relative_error(got, expected) < 1e-4


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_reduced_input_exports_and_onnxruntime_agrees(dynamo: bool, built, tmp_path) -> None:
    _check_export(built("resnet18"), real_images(REGISTRY["resnet18"], crop=REDUCED), dynamo, tmp_path / "resnet18.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", NAMES)
def test_exports_at_full_size_and_onnxruntime_agrees(name: str, dynamo: bool, built, tmp_path) -> None:
    _check_export(built(name), real_images(REGISTRY[name]), dynamo, tmp_path / f"{name}.onnx")
