"""docs/imagenet.md, the worked example at 224 px: every ``zfclient`` command of the page runs, as
written, on a ResNet-50 of the replica's shape with random weights (standing in for the user's file)
over the twenty photos of ``samples/imagenet``, and writes what the page says it writes."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_testing import invoke, ok
from PIL import Image
from test_preprocessing_cli import torchvision_eval

from zfnet.converters.pytorch import export
from zfnet.preprocessing import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "imagenet.md"
PHOTOS = sorted((ROOT / "samples" / "imagenet").glob("*/*.jpg"))


def page_commands() -> list[list[str]]:
    """The ``$ zfclient ...`` lines of the page's console blocks, in order, as argument lists."""
    blocks = re.findall(r"```console\n(.*?)```", PAGE.read_text(), flags=re.S)
    return [shlex.split(line[len("$ zfclient ") :]) for block in blocks for line in block.splitlines() if line.startswith("$ zfclient ")]


def test_the_page_shows_each_command_of_the_example_once() -> None:
    assert [c[0] for c in page_commands()] == ["convert", "layers", "deconv", "top", "occlusion", "features"]
    sizes = set()
    for path in PHOTOS:
        with Image.open(path) as img:
            sizes.add(img.size)
    assert len(PHOTOS) == 20 and sizes == {(224, 224)}


@pytest.mark.slow
def test_every_command_of_the_page_runs_on_a_resnet50(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = export.load_module("resnet50").eval()
    torch.save(net.state_dict(), tmp_path / "resnet50.pt")  # the user's file
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    monkeypatch.chdir(tmp_path)
    outputs = {}
    for args in page_commands():
        result = invoke(*args)
        ok(result)
        assert "records no input normalisation" not in result.output, args  # the preprocessing went with the model
        outputs[args[0]] = result.output
    assert "layer3" in outputs["layers"] and "1024" in outputs["layers"].replace(",", "")
    assert len(list((tmp_path / "out/imagenet/deconv").glob("*.png"))) >= 1
    manifest = json.loads((tmp_path / "out/imagenet/top/manifest.json").read_text())
    (layer,) = manifest["layers"].values()
    assert sorted(int(c) for c in layer["channels"]) == list(range(16))
    assert all(len(info["top"]) == 9 for info in layer["channels"].values())
    assert (tmp_path / "out/imagenet/top/index.html").is_file()
    assert list((tmp_path / "out/imagenet/occlusion").glob("*.png"))
    stages = ("layer1", "layer2", "layer3", "layer4")
    index = json.loads((tmp_path / "out/imagenet/features/index.json").read_text())
    photos = [ROOT / "samples" / "imagenet" / Path(p).parent.name / Path(p).name for p in index["paths"]]  # rows in data-set order
    features = {name: np.load(tmp_path / "out/imagenet/features" / f"{name}.npy") for name in stages}
    # reference: the torch network itself on torchvision's evaluation transform, its stages' outputs averaged
    pooled: dict[str, torch.Tensor] = {}
    hooks = [getattr(net, name).register_forward_hook(lambda _m, _i, out, name=name: pooled.__setitem__(name, out.mean(dim=(2, 3)))) for name in stages]
    with torch.no_grad():
        net(torch.cat([torchvision_eval(p, 256, 224, IMAGENET_MEAN, IMAGENET_STD) for p in photos]))
    for hook in hooks:
        hook.remove()
    for name in stages:
        np.testing.assert_allclose(features[name], pooled[name].numpy(), rtol=1e-3, atol=1e-3 * float(pooled[name].abs().max()), err_msg=name)
