"""ConvNeXt-T (Liu et al., 2022) as ``torchvision.models.convnext``.

Inside each block the MLP runs channels-last: ``block.1`` permutes NCHW to NHWC, ``block.2`` (LayerNorm),
``block.3``, ``block.4`` (GELU) and ``block.5`` are (N, H, W, C), and ``block.6`` permutes back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zfnet.converters.pytorch.imagenet._layers import Permute, StochasticDepth, init_truncated


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """Depthwise 7x7, LayerNorm, 4x MLP with GELU, per-channel ``layer_scale``, plus the input."""

    def __init__(self, dim: int, layer_scale: float, drop: float) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]), nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stochastic_depth(self.layer_scale * self.block(x)) + x


class ConvNeXt(nn.Module):
    """``features``: 4x4/4 stem, then stages (even indices) and downsampling layers (odd); pool; ``classifier``."""

    def __init__(self, dims: list[int], depths: list[int], stochastic_depth_prob: float = 0.1, layer_scale: float = 1e-6, num_classes: int = 1000) -> None:
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
        layers: list[nn.Module] = [stem]
        total, index = sum(depths), 0
        for stage, (dim, depth) in enumerate(zip(dims, depths)):
            blocks = []
            for _ in range(depth):
                blocks.append(CNBlock(dim, layer_scale, stochastic_depth_prob * index / (total - 1.0)))
                index += 1
            layers.append(nn.Sequential(*blocks))
            if stage + 1 < len(dims):
                layers.append(nn.Sequential(LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, dims[stage + 1], 2, 2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(1), nn.Linear(dims[-1], num_classes))
        init_truncated(self, convolutions=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def convnext_tiny(*, num_classes: int = 1000, stochastic_depth_prob: float = 0.1, layer_scale: float = 1e-6) -> ConvNeXt:
    """ConvNeXt-T: widths 96, 192, 384, 768 with 3, 3, 9, 3 blocks."""
    return ConvNeXt([96, 192, 384, 768], [3, 3, 9, 3], stochastic_depth_prob, layer_scale, num_classes)
