"""ViT-S/16 (Dosovitskiy et al., 2021) as timm's ``vision_transformer.VisionTransformer``.

Names follow timm: ``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm``, ``head``. timm's identity placeholders (``ls1``, ``drop_path1``, ``norm_pre``, ``fc_norm``, ...) compute
nothing and are left out; every layer is (N, tokens, features), token 0 the class token.
"""

from __future__ import annotations

import torch
from torch import nn

from zfnet.converters.pytorch.imagenet._layers import init_truncated


class PatchEmbed(nn.Module):
    """``proj``: a PxP/P convolution, flattened to (N, patches, features)."""

    def __init__(self, img_size: int, patch: int, dim: int) -> None:
        super().__init__()
        self.num_patches = (img_size // patch) ** 2
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention over all tokens: ``qkv``, scaled dot product, softmax, ``proj``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop((q * self.scale).matmul(k.transpose(-2, -1)).softmax(dim=-1))
        return self.proj_drop(self.proj(attn.matmul(v).transpose(1, 2).reshape(n, tokens, dim)))


class Mlp(nn.Module):
    """``fc1`` to 4x the width, GELU, ``fc2`` back."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(0.0)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding, class token, learned positions (class token included), ``blocks``, ``norm``, ``head`` on the class token."""

    def __init__(self, img_size: int = 224, patch: int = 16, dim: int = 768, depth: int = 12, num_heads: int = 12, num_classes: int = 1000) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.Sequential(*(Block(dim, num_heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_drop = nn.Dropout(0.0)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        init_truncated(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(self.pos_drop(x)))
        return self.head(self.head_drop(x[:, 0]))


def vit_small_patch16_224(*, num_classes: int = 1000, img_size: int = 224) -> VisionTransformer:
    """ViT-S/16: width 384, 12 blocks of 6 heads; ``img_size`` sets the number of positions (224: 196 patches + class token)."""
    return VisionTransformer(img_size, 16, 384, 12, 6, num_classes)
