"""Video-3D LLM / 3DRS's pixel rules for LLaVA-OneVision-style towers, as pure tensor math.

What their code does (Video-3D LLM `llava/video_utils.py` and `llava/model/llava_arch.py`, which 3DRS keeps):
- every depth pixel is unprojected with the depth intrinsics and the aligned camera-to-world pose; a pixel
  without depth (0) is NOT masked: with z = 0 it lands on the camera centre;
- the world map [Hd, Wd, 3] is resized to the vision input, side x side (384 x 384), with nearest neighbour
  (OpenCV INTER_NEAREST: the source pixel of output pixel x is floor(x * Wd / side)); the whole frame is squashed,
  as the colour frame is;
- pooled token (i, j) of the g x g grid (14 x 14) owns the b x b block of pixels [i b, (i + 1) b) x [j b, (j + 1) b)
  with b = n p // g (27 for n = 27 patches of p = 14 pixels); the last side - g b rows and columns (6 of 384) belong
  to no token. Its 3D position is the mean over its block (`block_points`, invalid pixels included);
- vision patch (i, j) of the n x n grid owns the p x p pixels [i p, (i + 1) p) (`cell_counts` with cell = p).
A box "contains" a pixel when lo <= point <= hi on every axis (inclusive, `cell_counts`).

Shapes: S frames, `side` pixels per side; points in metres, float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from threedrs.geometry import transform_points, unproject_depth


@dataclass(frozen=True)
class PixelGrid:
    """The pixel layout of a vision input: `side` pixels per side, `patch`-pixel patches, a `grid` x `grid` token
    grid after pooling (384, 14, 14 for LLaVA-Video-7B-Qwen2's SigLIP)."""

    side: int
    patch: int
    grid: int

    def __post_init__(self) -> None:
        if not (1 <= self.patch <= self.side and 1 <= self.grid <= self.side // self.patch):
            raise ValueError(f"pixel grid: need 1 <= patch <= side and 1 <= grid <= side // patch, got side "
                             f"{self.side}, patch {self.patch}, grid {self.grid}")

    @property
    def patches(self) -> int:
        """Vision patches per side (27)."""
        return self.side // self.patch

    @property
    def block(self) -> int:
        """Pixels per side of a pooled token's block (27 = 27 * 14 // 14)."""
        return self.patches * self.patch // self.grid


def pixel_world(depth: Tensor, K: Tensor, cam_to_world: Tensor, side: int) -> Tensor:
    """World point of every pixel of the vision input, their way.

    depth: [S, Hd, Wd] metres (0 = no depth); K: [3, 3] or [S, 3, 3] depth intrinsics; cam_to_world: [S, 4, 4]
    aligned poses. Returns [S, side, side, 3] (dtype of depth and K promoted): pixel (y, x) is the world point of
    depth pixel (floor(y Hd / side), floor(x Wd / side)); a pixel without depth holds its camera centre.
    """
    if depth.ndim != 3:
        raise ValueError(f"depth: expected [S, Hd, Wd], got {list(depth.shape)}")
    frames, height, width = depth.shape
    rows = torch.div(torch.arange(side, device=depth.device) * height, side, rounding_mode="floor")
    cols = torch.div(torch.arange(side, device=depth.device) * width, side, rounding_mode="floor")
    z = torch.where(torch.isfinite(depth), depth, torch.zeros_like(depth))
    K = K if K.ndim == 3 else K.expand(frames, 3, 3)
    world = transform_points(cam_to_world, unproject_depth(z, K))  # [S, Hd, Wd, 3]
    return world[:, rows][:, :, cols]


def block_points(pixels: Tensor, grid: PixelGrid) -> Tensor:
    """Mean world point of each pooled token's pixel block: pixels [S, side, side, 3] -> [S, g, g, 3]."""
    b, g = grid.block, grid.grid
    covered = pixels[:, :g * b, :g * b]
    frames = pixels.shape[0]
    return covered.reshape(frames, g, b, g, b, 3).mean(dim=(2, 4))


def box_mask(pixels: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Which pixels [S, H, W, 3] lie in the box with corners lo, hi [3] (inclusive): [S, H, W] bool."""
    return ((pixels >= lo) & (pixels <= hi)).all(-1)


def cell_counts(pixels: Tensor, boxes: Tensor, cell: int, cells: int) -> Tensor:
    """How many pixels of each `cell` x `cell` cell of a `cells` x `cells` grid lie in each box.

    pixels: [S, side, side, 3] metres; boxes: [P, 6] `[cx, cy, cz, dx, dy, dz]` (inclusive bounds).
    Returns [P, S, cells, cells] int64 counts (cells start at pixel 0; pixels beyond cells * cell are ignored).
    """
    return cell_counts_per_grid(pixels, boxes, [(cell, cells)])[0]


def cell_counts_per_grid(pixels: Tensor, boxes: Tensor, grids: Sequence[tuple[int, int]]) -> list[Tensor]:
    """`cell_counts` for several (cell, cells) grids of the same pixels at once: each box's pixel mask
    [S, span, span] (`box_mask`, span the largest cell * cells) is built once and counted for every grid.
    Returns one [P, S, cells, cells] int64 tensor per grid, in the order of `grids`."""
    span = max(cell * cells for cell, cells in grids)
    covered = pixels[:, :span, :span]
    frames = covered.shape[0]
    lo = (boxes[:, :3] - boxes[:, 3:] / 2).to(covered.dtype)
    hi = (boxes[:, :3] + boxes[:, 3:] / 2).to(covered.dtype)
    counts: list[list[Tensor]] = [[] for _ in grids]
    for p in range(boxes.shape[0]):  # one box at a time keeps memory at one [S, span, span] mask
        inside = box_mask(covered, lo[p], hi[p])
        for out, (cell, cells) in zip(counts, grids):
            size = cell * cells
            out.append(inside[:, :size, :size].reshape(frames, cells, cell, cells, cell).sum(dim=(2, 4)))
    return [torch.stack(out) if out else torch.zeros(0, frames, cells, cells, dtype=torch.int64, device=pixels.device)
            for out, (_, cells) in zip(counts, grids)]
