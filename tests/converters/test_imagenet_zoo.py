"""ImageNet replicas (zfnet.converters.pytorch.imagenet) against upstream torchvision/timm, recorded in upstream.json."""

from __future__ import annotations

import torch
from torch import nn


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
