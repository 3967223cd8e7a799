"""Swin-T (Liu et al., 2021) as ``torchvision.models.swin_transformer`` (version 1).

Every layer after the patch embedding is channels-last, (N, H, W, C); attention runs inside 7x7
windows, shifted by half a window in every second block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zfnet.converters.pytorch.imagenet._layers import Permute, StochasticDepth, init_truncated


class PatchMerging(nn.Module):
    """Halves the resolution: concatenates each 2x2 neighbourhood (4C), LayerNorm, ``reduction`` to 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-3], x.shape[-2]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)
        return self.reduction(self.norm(x))


def _relative_position_index(window: int) -> torch.Tensor:
    """For each pair of positions in a window, the row of their relative offset in the bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return (relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]).flatten()


def _shift_mask(height: int, width: int, window: int, shift: tuple[int, int]) -> torch.Tensor:
    """-100 where two positions of a shifted window come from different regions of the image, else 0."""
    regions = torch.zeros(height, width)
    rows = ((0, -window), (-window, -shift[0]), (-shift[0], None))
    cols = ((0, -window), (-window, -shift[1]), (-shift[1], None))
    for i, (h0, h1) in enumerate(rows):
        for j, (w0, w1) in enumerate(cols):
            regions[h0:h1, w0:w1] = 3 * i + j
    regions = regions.view(height // window, window, width // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    differ = regions.unsqueeze(1) - regions.unsqueeze(2)
    return torch.where(differ != 0, -100.0, 0.0)


class ShiftedWindowAttention(nn.Module):
    """Multi-head self-attention within (shifted) windows, with a learned relative position bias."""

    relative_position_index: torch.Tensor

    def __init__(self, dim: int, window: int, shift: int, num_heads: int) -> None:
        super().__init__()
        self.window_size = [window, window]
        self.shift_size = [shift, shift]
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", _relative_position_index(window))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        win = self.window_size[0]
        heads, tokens = self.num_heads, win * win
        x = F.pad(x, (0, 0, 0, (win - w % win) % win, 0, (win - h % win) % win))
        ph, pw = x.shape[1], x.shape[2]
        shift = (0 if win >= ph else self.shift_size[0], 0 if win >= pw else self.shift_size[1])  # no shift where one window covers an axis
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = (ph // win) * (pw // win)
        x = x.view(n, ph // win, win, pw // win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(n * windows, tokens, c)
        q, k, v = self.qkv(x).reshape(n * windows, tokens, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = (q * (c // heads) ** -0.5).matmul(k.transpose(-2, -1))
        bias = self.relative_position_bias_table[self.relative_position_index].view(tokens, tokens, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if any(shift):
            mask = _shift_mask(ph, pw, win, shift).to(attn)
            attn = (attn.view(n, windows, heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, tokens, tokens)
        x = attn.softmax(dim=-1).matmul(v).transpose(1, 2).reshape(n * windows, tokens, c)
        x = self.proj(x).view(n, ph // win, pw // win, win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(n, ph, pw, c)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :h, :w, :].contiguous()


class MLP(nn.Sequential):
    """``0`` Linear to 4C, ``1`` GELU, ``2`` Dropout, ``3`` Linear back to C, ``4`` Dropout (``torchvision.ops.MLP``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0))


class SwinTransformerBlock(nn.Module):
    """Pre-norm residual block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, drop: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention(dim, window, shift, num_heads)
        self.stochastic_depth = StochasticDepth(drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))


class SwinTransformer(nn.Module):
    """``features``: patch embedding (``0``), stages (even indices) and patch merging (odd); ``norm``, pool, ``head``."""

    def __init__(self, patch: int, embed_dim: int, depths: list[int], num_heads: list[int], window: int, stochastic_depth_prob: float = 0.2, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, embed_dim, patch, patch), Permute([0, 2, 3, 1]), nn.LayerNorm(embed_dim))]
        total, index = sum(depths), 0
        for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2**stage
            blocks = []
            for i in range(depth):
                blocks.append(SwinTransformerBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, stochastic_depth_prob * index / (total - 1)))
                index += 1
            layers.append(nn.Sequential(*blocks))
            if stage + 1 < len(depths):
                layers.append(PatchMerging(dim))
        self.features = nn.Sequential(*layers)
        features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(features)
        self.permute = Permute([0, 3, 1, 2])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(features, num_classes)
        init_truncated(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.avgpool(self.permute(self.norm(self.features(x))))))


def swin_t(*, num_classes: int = 1000, stochastic_depth_prob: float = 0.2) -> SwinTransformer:
    """Swin-T: patch 4, embedding 96, depths 2-2-6-2, heads 3-6-12-24, window 7."""
    return SwinTransformer(4, 96, [2, 2, 6, 2], [3, 6, 12, 24], 7, stochastic_depth_prob, num_classes)
