"""Building blocks of the VGGT aggregator: transformer blocks, 2D rotary embeddings, the DINOv2 patch encoder.

Attribute names mirror the official VGGT release (facebookresearch/vggt) so that its checkpoint loads by name:
a block holds ``norm1, attn.{qkv, q_norm, k_norm, proj}, ls1.gamma, norm2, mlp.{fc1, fc2}, ls2.gamma``; the
DINOv2 encoder holds ``patch_embed.proj, cls_token, pos_embed, register_tokens, blocks.{i}, norm``.
Tokens are [N, L, C] (N sequences of L tokens with C channels) throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Block", "DinoV2Encoder", "RotaryTables"]


class RotaryTables:
    """2D rotary position embedding (RoPE) angles for a sequence of tokens with (y, x) grid positions.

    The head dimension D is split in two halves: the first is rotated by the token's row y, the second by
    its column x. Within a half of size D/2, channel i and channel i + D/4 form a rotation pair with angle
    ``position * frequency ** (-2 (i mod D/4) / (D/2))`` (the "rotate half" convention).

    Args:
        positions: [L, 2] integer (y, x) position of each token.
        head_dim: D, the per-head channel count (a multiple of 4).
        frequency: RoPE base frequency (100 in VGGT).
    """

    def __init__(self, positions: Tensor, head_dim: int, frequency: float) -> None:
        half = head_dim // 2
        inv_freq = 1.0 / (frequency ** (torch.arange(0, half, 2, device=positions.device).float() / half))
        y_angles = positions[:, 0].float()[:, None] * inv_freq  # [L, D/4]
        x_angles = positions[:, 1].float()[:, None] * inv_freq
        self.angles = torch.cat([y_angles, y_angles, x_angles, x_angles], dim=-1)  # [L, D] float32
        self._cos_sin: dict[torch.dtype, tuple[Tensor, Tensor]] = {}

    def rotate(self, x: Tensor) -> Tensor:
        """Apply the rotation to queries or keys x [N, heads, L, D]; the angles are rounded to x's dtype first."""
        if x.dtype not in self._cos_sin:
            angles = self.angles.to(x.dtype)
            self._cos_sin[x.dtype] = (angles.cos(), angles.sin())
        cos, sin = self._cos_sin[x.dtype]
        pairs = x.unflatten(-1, (2, 2, x.shape[-1] // 4))  # [..., (y, x) half, first/second quarter, D/4]
        rotated = torch.stack([-pairs[..., 1, :], pairs[..., 0, :]], dim=-2).flatten(-3)
        return x * cos + rotated * sin


class LayerScale(nn.Module):
    """Per-channel scaling of a residual branch: x * gamma, gamma [C]."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Linear(C -> hidden), exact GELU, Linear(hidden -> C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with optional per-head LayerNorm on q and k and optional 2D RoPE.

    Uses ``F.scaled_dot_product_attention`` (fused flash / memory-efficient kernels on GPU).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm: nn.Module = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: RotaryTables | None = None) -> Tensor:
        """x [N, L, C] -> [N, L, C]; ``rope`` holds the angles of the L tokens."""
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [N, heads, L, D]
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope.rotate(q), rope.rotate(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale: x + ls1(attn(norm1 x)), then + ls2(mlp(norm2 x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qk_norm: bool,
        init_value: float,
        norm_eps: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm)
        self.ls1 = LayerScale(dim, init_value)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_value)

    def forward(self, x: Tensor, rope: RotaryTables | None = None) -> Tensor:
        """x [N, L, C] -> [N, L, C]."""
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchProjection(nn.Module):
    """Non-overlapping patches to tokens: [N, 3, H, W] -> [N, (H/p) * (W/p), C], row-major over the grid."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class DinoV2Encoder(nn.Module):
    """DINOv2 ViT with register tokens, used by VGGT as its patch embedding.

    Token layout inside: [cls, registers..., patches...]; the learned position embedding (cls + a square
    grid of ``img_size / patch_size`` patches) is resized bicubically (antialiased) to the input's grid and
    added to cls and patch tokens, not to the registers. Blocks use LayerNorm eps 1e-6 and no q/k norm.

    Args:
        img_size: side of the square image the position embedding was trained for, in pixels.
        patch_size: patch side in pixels.
        dim, depth, num_heads, mlp_ratio: transformer sizes.
        num_register_tokens: number of register tokens.
        init_value: LayerScale initial value (only matters for random initialisation).
    """

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        num_register_tokens: int,
        init_value: float,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.pos_grid = img_size // patch_size
        self.patch_embed = PatchProjection(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid**2, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, dim))
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qk_norm=False, init_value=init_value, norm_eps=1e-6)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def position_embedding(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> Tensor:
        """[1, 1 + grid_h * grid_w, C]: cls position plus the patch positions resized to the grid."""
        if (grid_h, grid_w) == (self.pos_grid, self.pos_grid):
            return self.pos_embed.to(dtype)
        table = self.pos_embed.float()
        dim = table.shape[-1]
        patch = table[:, 1:].reshape(1, self.pos_grid, self.pos_grid, dim).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(grid_h, grid_w), mode="bicubic", antialias=True, align_corners=False)
        patch = patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat([table[:, :1], patch], dim=1).to(dtype)

    def forward(self, images: Tensor) -> Tensor:
        """Normalised images [N, 3, H, W] (H, W multiples of the patch size) -> patch tokens [N, h * w, C]."""
        grid_h, grid_w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        patches = self.patch_embed(images)
        n = patches.shape[0]
        x = torch.cat([self.cls_token.expand(n, -1, -1), patches], dim=1)
        x = x + self.position_embedding(grid_h, grid_w, x.dtype)
        x = torch.cat([x[:, :1], self.register_tokens.expand(n, -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.register_tokens.shape[1] :]
