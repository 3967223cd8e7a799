"""A module's name selects the module's output, as a forward hook on the module sees it, never a
same-shaped tensor inside it: ImageNet replicas (torchvision/timm module paths) at reduced input
sizes, exported as users do (the default exporter and the legacy one at opset 17),
served by a real server. ``logits`` selects the graph's output of a dynamo export, and a miss
suggests the nearest names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from test_families import export, images
from zfnet.client.api import Client
from zfnet.converters.pytorch.imagenet import REGISTRY
from zfnet.errors import NotFound

# (architecture, factory arguments, input size, module, export options)
CASES = {
    "inception_v3-dynamo": ("inception_v3", {}, 75, "Mixed_6e", {}),
    "inception_v3-legacy": ("inception_v3", {}, 75, "Mixed_6e", {"dynamo": False, "opset_version": 17}),
    "vit-dynamo": ("vit_small_patch16_224", {"img_size": 32}, 32, "blocks.7", {}),
    "vit-legacy": ("vit_small_patch16_224", {"img_size": 32}, 32, "blocks.7", {"dynamo": False, "opset_version": 17}),
    "resnet50-dynamo": ("resnet50", {}, 64, "layer3.5", {}),
    "resnet50-legacy": ("resnet50", {}, 64, "layer3.5", {"dynamo": False, "opset_version": 17}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_module_name_selects_the_module_output(case: str, server, sample_images, tmp_path: Path) -> None:
    arch, arguments, size, layer, options = CASES[case]
    torch.manual_seed(0)
    net = REGISTRY[arch](**arguments).eval()
    path = export(net, tmp_path / f"{case}.onnx", size, **options)
    pictures = images(sample_images, size)
    batch = torch.from_numpy(np.stack(pictures).astype(np.float32).transpose(0, 3, 1, 2))
    captured = []
    handle = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    with torch.no_grad():
        logits = net(batch).numpy()
    handle.remove()
    hook = captured[-1].numpy()
    target, _ = server
    with Client(target) as client:
        info = client.model_info(path)
        row = next(r for r in info.layers if layer == r.name or layer in r.modules)
        assert not row.internal and row.shape[1:] == hook.shape[1:]
        inside = [r for r in info.layers if r.internal and r.name.startswith(f"{layer}.")]
        assert inside, f"{case}: the tensors inside {layer} are listed as internal"
        (ours,) = client.activations(path, pictures, [layer]).values()
        np.testing.assert_allclose(ours, hook, rtol=1e-3, atol=1e-3 * float(np.abs(hook).max()), err_msg=f"{case}: {layer} is not the module's output")
        if not options:
            (out,) = client.activations(path, pictures, ["logits"]).values()
            np.testing.assert_allclose(out, logits, rtol=1e-3, atol=1e-3 * float(np.abs(logits).max()))
        with pytest.raises(NotFound, match=rf"did you mean .*{layer.replace('.', '[.]')}"):
            client.activations(path, pictures, [layer + "x"])
