"""The appearance teacher: a weight-free 2D baseline that sees only each patch's pixels.

For every token (a ``patch_size`` x ``patch_size`` px patch of the frame, grid ``(H // p, W // p)``):
- the patch's colours average-pooled to a 4 x 4 grid of sub-cells (48 values), minus 0.5;
- its mean colour minus 0.5 (3 values) and the standard deviation of each colour channel (3 values);
these 54 values are mapped to ``channels`` features by a fixed seeded Gaussian projection (scaled by
1/sqrt(54)). Patch bins follow ``adaptive_avg_pool2d`` over the whole frame.

It needs no download and no geometry: it is what a purely 2D appearance model sees, so its multi-view
correspondence score is what 3D-awareness must beat (the geometry oracle sits at the other end).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from threedrs.data.scene import FrameBatch
from threedrs.teachers.base import PatchTeacher, register_teacher

__all__ = ["AppearanceTeacher", "patch_statistics"]

SUB_CELLS = 4  # sub-cells per patch side


def patch_statistics(images: Tensor, grid: tuple[int, int]) -> Tensor:
    """The 54 appearance values of each token: [S, 3, H, W] in [0, 1] -> [S, h, w, 54] float32.

    Order: 4 x 4 sub-cell colours (row-major cells, RGB per cell) minus 0.5, mean RGB minus 0.5, std RGB.
    """
    rows, cols = grid
    frames = images.shape[0]
    x = images.float()
    cells = F.adaptive_avg_pool2d(x, (rows * SUB_CELLS, cols * SUB_CELLS))
    cells = cells.reshape(frames, 3, rows, SUB_CELLS, cols, SUB_CELLS).permute(0, 2, 4, 3, 5, 1)
    cells = cells.reshape(frames, rows, cols, 3 * SUB_CELLS * SUB_CELLS)
    mean = F.adaptive_avg_pool2d(x, (rows, cols))
    var = (F.adaptive_avg_pool2d(x.square(), (rows, cols)) - mean.square()).clamp(min=0.0)
    return torch.cat([cells - 0.5, mean.permute(0, 2, 3, 1) - 0.5, var.sqrt().permute(0, 2, 3, 1)], dim=-1)


@register_teacher("appearance")
class AppearanceTeacher(PatchTeacher):
    """Weight-free 2D appearance baseline: a fixed random projection of patch colours and colour statistics.

    Args:
        channels: C, features per token. patch_size: token side on the input frame, pixels.
        seed: fixes the projection.
    """


    def __init__(self, channels: int = 256, patch_size: int = 14, seed: int = 0) -> None:
        super().__init__()
        if channels < 1 or patch_size < 1:
            raise ValueError(f"AppearanceTeacher: channels and patch_size must be >= 1, got {channels}, {patch_size}")
        self._channels, self._patch, self.seed = int(channels), int(patch_size), int(seed)
        size = 3 * SUB_CELLS * SUB_CELLS + 6
        gen = torch.Generator().manual_seed(self.seed)
        self.register_buffer("projection", torch.randn(size, self._channels, generator=gen) / math.sqrt(size))
        self.freeze()

    def describe(self) -> str:
        """One line for reports."""
        return (f"appearance: weight-free 2D baseline, fixed random projection (seed {self.seed}) of each "
                f"{self._patch}-px patch's 4x4 sub-cell colours and colour mean/std -> {self._channels} channels")

    def _encode(self, images: Tensor, frames: FrameBatch | None = None) -> Tensor:
        """Tokens [S, h, w, C] float32 of images [S, 3, H, W] in [0, 1]; ``frames`` is unused, all tokens valid."""
        grid = self.grid_for(images.shape[-2], images.shape[-1])
        stats = patch_statistics(images.to(self.projection.device), grid)
        return stats @ self.projection
