"""Building blocks shared by the torchvision replicas (``torchvision.ops.misc`` and ``stochastic_depth``).

Upstream computes activations and residual sums in place (``nn.ReLU(inplace=True)``, ``out += identity``);
every replica computes them out of place. The numbers are the same, but a forward hook on a module sees
that module's output (upstream's hook on VGG's ``features.28`` convolution sees the ReLU of ``features.29``
written over it), and full backward hooks (Captum) work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]
Activation = Callable[[], nn.Module]


def make_divisible(value: float, divisor: int) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% below ``value`` (torchvision's ``_make_divisible``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_norm_act(
    cin: int,
    cout: int,
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    norm: NormLayer = nn.BatchNorm2d,
    act: Activation | None = nn.ReLU,
) -> nn.Sequential:
    """Convolution without bias (``0``, "same" padding), normalisation (``1``), activation (``2``), as ``Conv2dNormActivation``."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), norm(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gating: ``x * gate(fc2(act(fc1(avgpool(x)))))`` with 1x1 convolutions (Hu et al., 2018)."""

    def __init__(self, channels: int, squeeze: int, act: Activation = nn.ReLU, gate: Activation = nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = act()
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class Permute(nn.Module):
    """``x.permute(dims)``: moves channels last (``[0, 2, 3, 1]``) or back (``[0, 3, 1, 2]``)."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)


class StochasticDepth(nn.Module):
    """Drops a residual branch per sample with probability ``p`` in training (Huang et al., 2016); identity in eval."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty([x.shape[0]] + [1] * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep if keep > 0.0 else x * mask



def init_he(model: nn.Module, linear_std: float | None = 0.01) -> None:
    """torchvision's usual initialisation: He-normal (fan-out) convolutions, N(0, ``linear_std``) linear layers
    (left as built when None), zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def init_truncated(model: nn.Module, convolutions: bool = False, std: float = 0.02) -> None:
    """The transformers' initialisation: linear (and optionally convolution) weights from a normal truncated at +-2, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Linear) or (convolutions and isinstance(m, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
