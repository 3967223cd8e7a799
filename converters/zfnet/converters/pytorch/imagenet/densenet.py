"""DenseNet (Huang et al., 2017) as ``torchvision.models.densenet``.

A dense layer sees the concatenation of every earlier output in its block. torchvision's published
checkpoints (``densenet121-a639ec97.pth``) spell some keys the pre-0.3 way (``denselayer1.norm.1.weight``);
they load here as they do through torchvision, renamed to ``denselayer1.norm1.weight``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 (bottleneck to ``bn_size * growth_rate``), BN-ReLU-3x3 to ``growth_rate`` new channels."""

    def __init__(self, cin: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class DenseBlock(nn.ModuleDict):
    """``denselayer1..N``; the output concatenates the input and every layer's new channels."""

    def __init__(self, layers: int, cin: int, growth_rate: int, bn_size: int) -> None:
        super().__init__({f"denselayer{i + 1}": DenseLayer(cin + i * growth_rate, growth_rate, bn_size) for i in range(layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN, ReLU, 1x1 convolution halving the channels, 2x2 average pool."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(OrderedDict(norm=nn.BatchNorm2d(cin), relu=nn.ReLU(), conv=nn.Conv2d(cin, cout, 1, bias=False), pool=nn.AvgPool2d(2, 2)))


class DenseNet(nn.Module):
    """``features`` (stem ``conv0..pool0``, ``denseblock1..4`` with ``transition1..3``, ``norm5``), ReLU, pool, ``classifier``."""

    def __init__(self, growth_rate: int = 32, blocks: tuple[int, ...] = (6, 12, 24, 16), init_features: int = 64, bn_size: int = 4, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            conv0=nn.Conv2d(3, init_features, 7, 2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(init_features),
            relu0=nn.ReLU(),
            pool0=nn.MaxPool2d(3, 2, padding=1),
        ))
        channels = init_features
        for i, layers in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(layers, channels, growth_rate, bn_size))
            channels += layers * growth_rate
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(F.relu(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(out, 1))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            if match := _LEGACY_KEY.match(key):
                state_dict[match.group(1) + match.group(2)] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def densenet121(*, num_classes: int = 1000) -> DenseNet:
    """DenseNet-121: growth rate 32, blocks of 6, 12, 24 and 16 layers, 64 stem channels."""
    return DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes)
