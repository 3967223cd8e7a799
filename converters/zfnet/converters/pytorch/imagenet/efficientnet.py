"""EfficientNet-B0 (Tan & Le, 2019) as ``torchvision.models.efficientnet``."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from zfnet.converters.pytorch.imagenet._layers import SqueezeExcitation, StochasticDepth, conv_norm_act, init_he


class Stage(NamedTuple):
    """One stage of MBConv blocks: expansion ratio, kernel, stride of the first block, channels in and out, blocks."""

    expand_ratio: int
    kernel: int
    stride: int
    cin: int
    cout: int
    blocks: int


EFFICIENTNET_B0 = [
    Stage(1, 3, 1, 32, 16, 1), Stage(6, 3, 2, 16, 24, 2), Stage(6, 5, 2, 24, 40, 2), Stage(6, 3, 2, 40, 80, 3),
    Stage(6, 5, 1, 80, 112, 3), Stage(6, 5, 2, 112, 192, 4), Stage(6, 3, 1, 192, 320, 1),
]


class MBConv(nn.Module):
    """``block``: 1x1 expansion (when the ratio is above 1), depthwise KxK, squeeze-excitation, 1x1 projection; SiLU throughout."""

    def __init__(self, expand_ratio: int, kernel: int, stride: int, cin: int, cout: int, drop: float) -> None:
        super().__init__()
        expanded = cin * expand_ratio
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_norm_act(cin, expanded, 1, act=nn.SiLU))
        layers.append(conv_norm_act(expanded, expanded, kernel, stride, groups=expanded, act=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4), act=nn.SiLU))
        layers.append(conv_norm_act(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return self.stochastic_depth(out) + x if self.use_res_connect else out


class EfficientNet(nn.Module):
    """``features`` (stem, one ``nn.Sequential`` of MBConv per stage, 1x1 to 4x width), average pool, ``classifier``."""

    def __init__(self, stages: list[Stage], dropout: float, stochastic_depth_prob: float = 0.2, num_classes: int = 1000) -> None:
        super().__init__()
        total = sum(stage.blocks for stage in stages)
        layers: list[nn.Module] = [conv_norm_act(3, stages[0].cin, 3, 2, act=nn.SiLU)]
        index = 0
        for stage in stages:
            blocks = []
            for i in range(stage.blocks):
                cin, stride = (stage.cin, stage.stride) if i == 0 else (stage.cout, 1)
                blocks.append(MBConv(stage.expand_ratio, stage.kernel, stride, cin, stage.cout, stochastic_depth_prob * index / total))
                index += 1
            layers.append(nn.Sequential(*blocks))
        last_conv = 4 * stages[-1].cout
        layers.append(conv_norm_act(stages[-1].cout, last_conv, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        linear = nn.Linear(last_conv, num_classes)
        self.classifier = nn.Sequential(nn.Dropout(dropout), linear)
        init_he(self, linear_std=None)
        bound = num_classes**-0.5
        nn.init.uniform_(linear.weight, -bound, bound)
        nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def efficientnet_b0(*, num_classes: int = 1000, dropout: float = 0.2, stochastic_depth_prob: float = 0.2) -> EfficientNet:
    """EfficientNet-B0: width and depth multipliers 1.0."""
    return EfficientNet(EFFICIENTNET_B0, dropout, stochastic_depth_prob, num_classes)
