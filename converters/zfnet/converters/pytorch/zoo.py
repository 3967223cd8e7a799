"""Built-in architectures, by name.

``zfnet-cifar10`` is the reference model: Zeiler & Fergus's ZFNet (2013, Fig. 3) scaled to 32x32
CIFAR-10 images. Five convolutional layers and three fully connected ones, ReLU after each,
overlapping 3x3/2 max pooling after conv1, conv2 and conv5 (so a deconvnet must route through
overlapping switches). BatchNorm after each convolution stands in for the paper's contrast
normalisation. Preprocessing is the first module, so the network takes RGB images in 0..255.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from zfnet.errors import NotFound

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN = (125.3, 123.0, 113.9)  # per-channel RGB mean of the training set, 0..255
CIFAR10_STD = (63.0, 62.1, 66.7)


class Preprocess(nn.Module):
    """``(x - mean) / std`` per channel, on RGB input in 0..255; exported as Sub and Div at the graph's input."""

    mean: torch.Tensor  # buffers, (1, C, 1, 1)
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_block(n: int, cin: int, cout: int, kernel: int, pool: bool) -> list[tuple[str, nn.Module]]:
    block = [
        (f"conv{n}", nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)),
        (f"bn{n}", nn.BatchNorm2d(cout)),
        (f"relu{n}", nn.ReLU()),
    ]
    if pool:
        block.append((f"pool{n}", nn.MaxPool2d(3, stride=2, padding=1)))
    return block


class ZFNetCifar(nn.Module):
    """ZFNet for 32x32 inputs: conv1..conv5, fc6..fc8; layers are attributes named as in the paper."""

    classes = CIFAR10_CLASSES

    def __init__(self, num_classes: int = 10, width: int = 1) -> None:
        super().__init__()
        c1, c2, c3, c4, c5, f = 32 * width, 64 * width, 128 * width, 128 * width, 64 * width, 256 * width
        self.preprocess = Preprocess(CIFAR10_MEAN, CIFAR10_STD)
        layers = (
            _conv_block(1, 3, c1, 5, pool=True)  # 32 -> 16
            + _conv_block(2, c1, c2, 3, pool=True)  # 16 -> 8
            + _conv_block(3, c2, c3, 3, pool=False)
            + _conv_block(4, c3, c4, 3, pool=False)
            + _conv_block(5, c4, c5, 3, pool=True)  # 8 -> 4
        )
        for name, module in layers:
            self.add_module(name, module)
        self.flatten = nn.Flatten()
        self.fc6, self.relu6, self.drop6 = nn.Linear(c5 * 16, f), nn.ReLU(), nn.Dropout(0.3)
        self.fc7, self.relu7, self.drop7 = nn.Linear(f, f), nn.ReLU(), nn.Dropout(0.3)
        self.fc8 = nn.Linear(f, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {"zfnet-cifar10": ZFNetCifar}


def build(name: str) -> nn.Module:
    """Instantiate a built-in architecture."""
    try:
        return ARCHITECTURES[name]()
    except KeyError:
        raise NotFound(f"unknown architecture {name!r}; built in: {', '.join(ARCHITECTURES)}, or give package.module:ClassName") from None
