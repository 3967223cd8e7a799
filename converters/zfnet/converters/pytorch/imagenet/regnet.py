"""RegNetY-400MF (Radosavovic et al., 2020) as ``torchvision.models.regnet``.

The stage widths and depths are those torchvision derives from the design space parameters
(depth 16, w_0 48, w_a 27.89, w_m 2.09, group width 8, squeeze-excitation ratio 0.25).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from zfnet.converters.pytorch.imagenet._layers import SqueezeExcitation, conv_norm_act, init_he


class BottleneckTransform(nn.Sequential):
    """``a`` 1x1, ``b`` grouped 3x3 (strided), ``se`` squeeze-excitation, ``c`` 1x1 without activation."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int, se_ratio: float) -> None:
        super().__init__(OrderedDict(
            a=conv_norm_act(cin, cout, 1),
            b=conv_norm_act(cout, cout, 3, stride, groups=cout // group_width),
            se=SqueezeExcitation(cout, int(round(se_ratio * cin))),
            c=conv_norm_act(cout, cout, 1, act=None),
        ))


class ResBottleneckBlock(nn.Module):
    """``f`` plus a shortcut (``proj``, a 1x1 convolution and batch norm, where the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int, se_ratio: float) -> None:
        super().__init__()
        self.proj = conv_norm_act(cin, cout, 1, stride, act=None) if cin != cout or stride != 1 else None
        self.f = BottleneckTransform(cin, cout, stride, group_width, se_ratio)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


class RegNet(nn.Module):
    """``stem`` (3x3/2), ``trunk_output`` of stages ``block1..4`` (blocks ``block{stage}-{i}``), average pool, ``fc``."""

    def __init__(self, depths: list[int], widths: list[int], group_width: int, se_ratio: float, stem_width: int = 32, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = conv_norm_act(3, stem_width, 3, 2)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        cin = stem_width
        for s, (depth, width) in enumerate(zip(depths, widths), start=1):
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for i in range(depth):
                blocks[f"block{s}-{i}"] = ResBottleneckBlock(cin if i == 0 else width, width, 2 if i == 0 else 1, group_width, se_ratio)
            stages[f"block{s}"] = nn.Sequential(blocks)
            cin = width
        self.trunk_output = nn.Sequential(stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        init_he(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(self.trunk_output(self.stem(x))).flatten(1))


def regnet_y_400mf(*, num_classes: int = 1000) -> RegNet:
    """RegNetY-400MF: stages of 1, 3, 6, 6 blocks, 48, 104, 208, 440 channels, group width 8."""
    return RegNet([1, 3, 6, 6], [48, 104, 208, 440], group_width=8, se_ratio=0.25, num_classes=num_classes)
