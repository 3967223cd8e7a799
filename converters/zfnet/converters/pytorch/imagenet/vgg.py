"""VGG (Simonyan & Zisserman, 2015) as ``torchvision.models.vgg``: ``features.N`` numbers every convolution, ReLU and pool."""

from __future__ import annotations

import torch
from torch import nn

from zfnet.converters.pytorch.imagenet._layers import init_he

# configuration "D": output channels of each 3x3 convolution, "M" a 2x2/2 max pool
VGG16_LAYERS: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """``features`` (convolutions), a 7x7 adaptive average pool, ``classifier`` (three fully connected layers)."""

    def __init__(self, layers: list[int | str], num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        cin = 3
        for spec in layers:
            if spec == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(cin, int(spec), 3, padding=1), nn.ReLU()]
                cin = int(spec)
        self.features = nn.Sequential(*modules)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        init_he(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16(*, num_classes: int = 1000, dropout: float = 0.5) -> VGG:
    """VGG-16 without batch normalisation: 13 convolutions, 3 fully connected layers."""
    return VGG(VGG16_LAYERS, num_classes, dropout)
