"""Building blocks shared by the torchvision replicas (``torchvision.ops.misc`` and ``stochastic_depth``).

Upstream writes several of these as in-place operations (``nn.ReLU(inplace=True)``, ``out += identity``);
here they are out of place, which computes the same numbers and lets backward hooks (Captum, the
deconvnet's reference) see every module's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]
Activation = Callable[[], nn.Module]


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% below ``value`` (torchvision's ``_make_divisible``)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_norm_act(
    cin: int,
    cout: int,
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    norm: NormLayer | None = nn.BatchNorm2d,
    act: Activation | None = nn.ReLU,
    padding: int | None = None,
    bias: bool | None = None,
) -> nn.Sequential:
    """Convolution (``0``), normalisation (``1``) and activation (``2``), as ``Conv2dNormActivation``.

    Padding defaults to "same" for odd kernels; the convolution has a bias only without a normalisation.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2 if padding is None else padding, groups=groups, bias=norm is None if bias is None else bias)
    ]
    if norm is not None:
        layers.append(norm(cout))
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
