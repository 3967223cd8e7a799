"""Preprocessing as part of the model, through ``zfclient`` and a real server: a model that records no
input normalisation is warned about once per command; ``attach-preprocessing`` and ``convert torch
--preprocess`` put the normalisation in the graph and record the resize and centre crop, which the
server applies to an image of any size (logits equal the torch model fed torchvision's evaluation
transform of the same image); file names never hold a ``:``; ``predict --image`` takes folders."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cli_testing import invoke, ok
from zfnet.client.api import Client
from zfnet.converters.graph import PREPROCESSING_KEY, get_metadata
from zfnet.converters.pytorch.imagenet import IMAGENET_MEAN, IMAGENET_STD, REGISTRY

WARNING = "records no input normalisation"


class Twice(nn.Module):
    """A convolution and one ReLU module called twice (its second call is the layer ``relu:2``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.relu(self.conv(x)) - 1.0)
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def raw_model(tmp_path_factory) -> tuple[Path, nn.Module]:
    """A model exported as users do, with no preprocessing: it takes whatever pixels come."""
    torch.manual_seed(0)
    net = Twice().eval()
    path = tmp_path_factory.mktemp("raw") / "raw.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 3, 32, 32) * 255,), str(path), dynamo=True)
    return path, net


def torchvision_eval(path: Path, resize: int, crop: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """torchvision's ``Resize(resize)``, ``CenterCrop(crop)``, ``ToTensor``, ``Normalize(mean, std)`` on a
    PIL image, written out: the shorter side to ``resize`` and the longer one ``int(resize * long / short)``,
    the crop's corner at ``int(round((size - crop) / 2))``."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        width, height = img.size
        size = (resize, int(resize * height / width)) if width <= height else (int(resize * width / height), resize)
        pixels = np.asarray(img.resize(size, Image.Resampling.BILINEAR), np.float32) / 255.0
    top, left = int(round((pixels.shape[0] - crop) / 2.0)), int(round((pixels.shape[1] - crop) / 2.0))
    x = torch.from_numpy(np.ascontiguousarray(pixels[top : top + crop, left : left + crop].transpose(2, 0, 1)))[None]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def odd_sized(sample: Path, out: Path, width: int, height: int) -> Path:
    """A sample picture at another size than any model's input (PNG: the server decodes what was saved)."""
    with Image.open(sample) as img:
        img.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(out)
    return out


def test_a_model_without_normalisation_is_warned_about_once_per_command(raw_model, sample_images, tmp_path: Path) -> None:
    path, _ = raw_model
    for command in (
        ["predict", "--model", path, "--image", sample_images[0], "--image", sample_images[1]],
        ["layers", "--model", path],
        ["deconv", "--model", path, "--layer", "conv", "--image", sample_images[0], "--top", "2", "--out", tmp_path / "d"],
    ):
        result = invoke(*command)
        ok(result)
        lines = [line for line in result.stderr.splitlines() if WARNING in line]
        assert len(lines) == 1 and lines[0].startswith("warning: ") and "attach-preprocessing" in lines[0], result.stderr
    reference = invoke("predict", "--model", "models/zfnet-cifar10.onnx", "--image", sample_images[0])
    ok(reference)
    assert WARNING not in reference.stderr


def test_attach_preprocessing_normalises_in_the_graph(raw_model, sample_images, tmp_path: Path, server) -> None:
    path, net = raw_model
    attached = tmp_path / "attached.onnx"
    ok(invoke("attach-preprocessing", path, "--mean", "10,20,30", "--std", "2,4,8", "--resize", "40", "-o", attached))
    recorded = json.loads(get_metadata(__import__("onnx").load(attached), PREPROCESSING_KEY) or "{}")
    assert recorded["mean"] == [10.0, 20.0, 30.0] and recorded["resize"] == 40 and recorded["input_size"] == [32, 32]
    result = invoke("predict", "--model", attached, "--image", sample_images[0])
    ok(result)
    assert WARNING not in result.stderr
    again = invoke("attach-preprocessing", attached, "--preprocess", "imagenet", "-o", tmp_path / "twice.onnx")
    assert again.exit_code == 1 and "already records" in again.stderr and "Traceback" not in again.stderr
    nothing = invoke("attach-preprocessing", path, "-o", tmp_path / "none.onnx")
    assert nothing.exit_code == 1 and "--preprocess imagenet" in nothing.stderr
    image = odd_sized(sample_images[0], tmp_path / "wide.png", 60, 45)
    x = torchvision_eval(image, 40, 32, (10 / 255, 20 / 255, 30 / 255), (2 / 255, 4 / 255, 8 / 255)) * 1.0
    with torch.no_grad():
        expected = net(x).numpy()
    target, _ = server
    with Client(target) as client:
        (logits,) = client.activations(attached, [image], ["logits"]).values()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


def test_file_names_never_hold_a_colon_and_predict_takes_folders(raw_model, sample_images, tmp_path: Path) -> None:
    path, _ = raw_model
    out = tmp_path / "deconv"
    ok(invoke("deconv", "--model", path, "--layer", "relu:2", "--image", sample_images[0], "--top", "2", "--out", out))
    written = [p.name for p in out.rglob("*")]
    assert written and not any(":" in name for name in written) and any("relu_2" in name for name in written), written
    folder = sample_images[0].parent
    result = invoke("predict", "--model", "models/zfnet-cifar10.onnx", "--image", folder, "--top", "1")
    ok(result)
    assert all(p.name in result.stdout for p in sorted(folder.glob("*.jpg"))[:3])


@pytest.mark.slow
def test_convert_torch_resnet50_with_imagenet_preprocessing_equals_torchvision_eval(sample_images, tmp_path: Path, server) -> None:
    """The paper's scale: ResNet-50 at 224 px by name, the user's weights, ``--preprocess imagenet``: an
    image of another size gives the logits of the torch model fed Resize(256), CenterCrop(224), Normalize."""
    torch.manual_seed(0)
    net = REGISTRY["resnet50"]().eval()
    weights = tmp_path / "resnet50.pt"
    torch.save(net.state_dict(), weights)
    path = tmp_path / "resnet50.onnx"
    ok(invoke("convert", "torch", "resnet50", "--weights", weights, "--preprocess", "imagenet", "-o", path))
    recorded = json.loads(get_metadata(__import__("onnx").load(path), PREPROCESSING_KEY) or "{}")
    assert (recorded["resize"], recorded["input_size"], recorded["interpolation"]) == (256, [224, 224], "bilinear")
    image = odd_sized(sample_images[3], tmp_path / "tall.png", 250, 341)
    with torch.no_grad():
        expected = net(torchvision_eval(image, 256, 224, IMAGENET_MEAN, IMAGENET_STD)).numpy()
    target, _ = server
    with Client(target) as client:
        (logits,) = client.activations(path, [image], ["logits"]).values()
        layers = {row.name for row in client.model_info(path).layers if not row.internal}
    assert {"layer3", "layer4", "fc"} <= layers
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
