"""Axis-aligned 3D boxes as pure tensor math: the IoU of the grounding metrics and the box of a point set.

Boxes are `[cx, cy, cz, dx, dy, dz]` (centre and size, metres), as everywhere in the benchmarks (FORMATS §4.1).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["box_iou_3d", "boxes_from_points"]


def box_iou_3d(a: Tensor, b: Tensor) -> Tensor:
    """IoU of axis-aligned 3D boxes (FORMATS §4.1), all pairs, with the official scripts' arithmetic.

    Computed as Video-3D LLM's `box3d_iou` does, operation for operation, so that in float64 it gives the same
    bits: corners lo = c + (-s/2), hi = c + s/2; inter = max(dx, 0) * max(dy, 0) * max(dz, 0) from the corner
    overlaps; each volume is the product of its corner differences (not of the sizes);
    IoU = inter / (vol_a + vol_b - inter + 1e-8).

    Args:
        a: [..., N, 6] float [cx, cy, cz, dx, dy, dz], metres, sizes >= 0.
        b: [..., M, 6] float, same layout; leading dims broadcast.
    Returns:
        [..., N, M] IoU in the promoted dtype of a and b.
    """
    for name, box in (("a", a), ("b", b)):
        if box.ndim < 2 or box.shape[-1] != 6:
            raise ValueError(f"{name}: expected shape [..., N, 6], got {list(box.shape)}")
        if not box.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got {box.dtype}")
        if bool((box[..., 3:] < 0).any()):
            raise ValueError(f"{name}: negative box size")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    lo_a = (a[..., :3] + -(a[..., 3:] / 2))[..., :, None, :]
    hi_a = (a[..., :3] + a[..., 3:] / 2)[..., :, None, :]
    lo_b = (b[..., :3] + -(b[..., 3:] / 2))[..., None, :, :]
    hi_b = (b[..., :3] + b[..., 3:] / 2)[..., None, :, :]
    overlap = (torch.minimum(hi_a, hi_b) - torch.maximum(lo_a, lo_b)).clamp(min=0)
    inter = overlap[..., 0] * overlap[..., 1] * overlap[..., 2]
    side_a, side_b = hi_a - lo_a, hi_b - lo_b
    vol_a = side_a[..., 0] * side_a[..., 1] * side_a[..., 2]
    vol_b = side_b[..., 0] * side_b[..., 1] * side_b[..., 2]
    return inter / (vol_a + vol_b - inter + 1e-8)


def boxes_from_points(points: Tensor) -> Tensor:
    """Axis-aligned bounding box of a point set.

    Args:
        points: [..., N, 3] float, metres, N >= 1.
    Returns:
        [..., 6] [cx, cy, cz, dx, dy, dz] of the min/max box.
    """
    if not points.is_floating_point() or points.shape[-1:] != (3,):
        raise ValueError(f"points: expected a float tensor [..., N, 3], got {points.dtype} {list(points.shape)}")
    if points.ndim < 2 or points.shape[-2] == 0:
        raise ValueError(f"points: expected shape [..., N, 3] with N >= 1, got {list(points.shape)}")
    lo = points.amin(dim=-2)
    hi = points.amax(dim=-2)
    return torch.cat([(lo + hi) / 2, hi - lo], dim=-1)
