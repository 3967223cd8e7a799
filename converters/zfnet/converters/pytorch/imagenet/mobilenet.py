"""MobileNetV3-Large (Howard et al., 2019) as ``torchvision.models.mobilenetv3``."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from zfnet.converters.pytorch.imagenet._layers import SqueezeExcitation, conv_norm_act, init_he, make_divisible

_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class Bneck(NamedTuple):
    """One inverted residual: input, kernel, expanded and output channels, squeeze-excitation, hard-swish, stride."""

    cin: int
    kernel: int
    expanded: int
    cout: int
    se: bool
    hardswish: bool
    stride: int


MOBILENET_V3_LARGE = [
    Bneck(16, 3, 16, 16, False, False, 1), Bneck(16, 3, 64, 24, False, False, 2), Bneck(24, 3, 72, 24, False, False, 1),
    Bneck(24, 5, 72, 40, True, False, 2), Bneck(40, 5, 120, 40, True, False, 1), Bneck(40, 5, 120, 40, True, False, 1),
    Bneck(40, 3, 240, 80, False, True, 2), Bneck(80, 3, 200, 80, False, True, 1), Bneck(80, 3, 184, 80, False, True, 1),
    Bneck(80, 3, 184, 80, False, True, 1), Bneck(80, 3, 480, 112, True, True, 1), Bneck(112, 3, 672, 112, True, True, 1),
    Bneck(112, 5, 672, 160, True, True, 2), Bneck(160, 5, 960, 160, True, True, 1), Bneck(160, 5, 960, 160, True, True, 1),
]


class InvertedResidual(nn.Module):
    """``block``: 1x1 expansion (unless the width is unchanged), depthwise KxK, squeeze-excitation, 1x1 projection; a shortcut when shapes allow."""

    def __init__(self, cnf: Bneck) -> None:
        super().__init__()
        act = nn.Hardswish if cnf.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded != cnf.cin:
            layers.append(conv_norm_act(cnf.cin, cnf.expanded, 1, norm=_norm, act=act))
        layers.append(conv_norm_act(cnf.expanded, cnf.expanded, cnf.kernel, cnf.stride, groups=cnf.expanded, norm=_norm, act=act))
        if cnf.se:
            layers.append(SqueezeExcitation(cnf.expanded, make_divisible(cnf.expanded // 4, 8), gate=nn.Hardsigmoid))
        layers.append(conv_norm_act(cnf.expanded, cnf.cout, 1, norm=_norm, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = cnf.stride == 1 and cnf.cin == cnf.cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(nn.Module):
    """``features`` (stem, inverted residuals, 1x1 to 6x width), average pool, ``classifier`` (two fully connected layers)."""

    def __init__(self, setting: list[Bneck], last_channel: int, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        last_conv = 6 * setting[-1].cout
        self.features = nn.Sequential(
            conv_norm_act(3, setting[0].cin, 3, 2, norm=_norm, act=nn.Hardswish),
            *(InvertedResidual(cnf) for cnf in setting),
            conv_norm_act(setting[-1].cout, last_conv, 1, norm=_norm, act=nn.Hardswish),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_conv, last_channel), nn.Hardswish(), nn.Dropout(dropout), nn.Linear(last_channel, num_classes))
        init_he(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v3_large(*, num_classes: int = 1000, dropout: float = 0.2) -> MobileNetV3:
    """MobileNetV3-Large at width 1.0 (960 -> 1280 -> classes)."""
    return MobileNetV3(MOBILENET_V3_LARGE, 1280, num_classes, dropout)
