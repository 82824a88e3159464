"""The exact, linear-time sums behind the 3D-awareness score and its background (`threedrs.metrics.correspondence`).

The computation is exact and linear in the number of tokens; no pairwise similarity matrix is formed. With
unit features u_i (0 for a zero feature), sums S_v over a voxel, S_{v,s} over a voxel's tokens in frame s,
S_s over frame s and S over the sample, the sums of u_i . u_j over ordered pairs are:
- same voxel, different frames: |S_v|^2 - sum_s |S_{v,s}|^2 (same_frame: |S_v|^2 - sum_{i in v} |u_i|^2);
- any voxels, different frames: |S|^2 - sum_s |S_s|^2; the background is this minus the line above;
- i in voxel v, j in another voxel, different frames: S_v.S - sum_s S_{v,s}.S_s - |S_v|^2 + sum_s |S_{v,s}|^2
  (same_frame: S_v.S - |S_v|^2).
Pair counts follow from the token counts n_v, n_{v,s}, n_s, n the same way. All sums are accumulated in
float64. The "pairs" background needs only S and S_s, which the voxel pass collects on the way; the
"voxel_mean" background reads the features once more, before the voxel pass, for S and the per-token
products u_i.S_s (in the features' precision, float32 for half precision).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BLOCK_ELEMENTS", "NORM_EPS", "UnitSums", "VoxelCounts", "against_frames_sums", "background_of", "unit_sums"]

NORM_EPS = 1e-12  # as torch.nn.functional.normalize: a zero feature stays zero (cosine 0 with everything)
BLOCK_ELEMENTS = 1 << 19
"""float64 elements per block of tokens (4 MiB, cache-sized): a block holds max(1, BLOCK_ELEMENTS // C) tokens."""


@dataclass(frozen=True)
class VoxelCounts:
    """Token counts as float64: voxel [V] n_v; frame_sq [V] sum_s n_{v,s}^2; frame_dot [V] sum_s n_{v,s} n_s;
    frames [S] n_s; total n."""

    voxel: Tensor
    frame_sq: Tensor
    frame_dot: Tensor
    frames: Tensor
    total: float

    @classmethod
    def of(cls, voxel: Tensor, group: Tensor, group_voxel: Tensor, group_frame: Tensor, frame: Tensor,
           n_voxels: int, frames: int) -> VoxelCounts:
        f64 = torch.float64
        voxel_count = torch.bincount(voxel, minlength=n_voxels).to(f64)
        group_count = torch.bincount(group, minlength=group_voxel.numel()).to(f64)
        frame_count = torch.bincount(frame, minlength=frames).to(f64)
        frame_sq = torch.zeros_like(voxel_count).index_add_(0, group_voxel, group_count.square())
        frame_dot = torch.zeros_like(voxel_count).index_add_(0, group_voxel, group_count * frame_count[group_frame])
        return cls(voxel_count, frame_sq, frame_dot, frame_count, float(voxel.numel()))


def background_of(sums: UnitSums, counts: VoxelCounts, against_frames: Tensor | None, dot_sum: Tensor,
                ordered_pairs: Tensor, has_pair: Tensor, variant: str, same_frame: bool) -> dict:
    """Background (mean cosine over pairs of the frame rule in different voxels) and its unordered pair count.

    against_frames: for "voxel_mean", [V] sum_s S_{v,s}.S_s (`against_frames_sums`; S_v.S is in sums); dot_sum /
    ordered_pairs: [V] sums of cosines and counts over the ordered correspondence pairs of each voxel;
    has_pair: [V] voxels with a pair. Module docstring: the formulas.
    """
    whole = sums.frame_sum.sum(dim=0)
    n = counts.total
    if same_frame:
        all_dot = whole.square().sum() - sums.self_sq.sum()
        all_pairs = n * n - n
    else:
        all_dot = whole.square().sum() - sums.frame_sum.square().sum()
        all_pairs = n * n - float(counts.frames.square().sum())
    pair_count = all_pairs - float(ordered_pairs.sum())
    result = {"background_pairs": int(round(pair_count)) // 2, "background": math.nan}
    if pair_count <= 0:
        return result
    if variant == "pairs":
        result["background"] = float((all_dot - dot_sum.sum()) / pair_count)
        return result
    against_all = sums.against_all
    if same_frame:
        voxel_dot = against_all - sums.voxel_sq
        voxel_pairs = counts.voxel * n - counts.voxel.square()
    else:
        voxel_dot = against_all - against_frames - sums.voxel_sq + sums.frame_sq
        voxel_pairs = counts.voxel * n - counts.frame_dot - counts.voxel.square() + counts.frame_sq
    keep = has_pair & (voxel_pairs > 0)  # all of has_pair, or none when the sample has a single voxel
    if bool(keep.any()):
        result["background"] = float((voxel_dot[keep] / voxel_pairs[keep]).mean())
    return result


def _unit_rows(features: Tensor, rows: Tensor, staged: Tensor, unit: Tensor) -> tuple[Tensor, Tensor]:
    """Unit float64 features of ``rows`` (written into the buffers) and their squared norms (1, or 0 for zero)."""
    out = unit[: rows.numel()]
    out.copy_(torch.index_select(features, 0, rows, out=staged[: rows.numel()]))
    norm = torch.linalg.vector_norm(out, dim=1)
    scale = 1.0 / norm.clamp(min=NORM_EPS)
    out.mul_(scale[:, None])
    return out, (norm * scale).square()


def against_frames_sums(features: Tensor, mask: Tensor, frames: int, token: Tensor, voxel: Tensor,
                    n_voxels: int) -> tuple[Tensor, Tensor]:
    """Per voxel v, sum_s S_{v,s}.S_s (for the per-voxel background of "voxel_mean"), as the per-token dot
    products u_i.S_{s(i)} summed over each voxel's tokens; and the whole-sample sum S.

    Per frame two matrix-vector products over its tokens, in the features' precision (float32 for half
    precision); the sums over tokens are float64. The rounding moves a background by ~1e-7, far below the 1e-6
    of the tests, and the pass costs a fraction of the float64 voxel pass.

    Args:
        features: [N, C] float features of all tokens, frame-major (N = S * tokens per frame).
        mask: [N] bool valid tokens; token: [n] their rows; voxel: [n] their voxel ids in 0..V-1.
    Returns:
        against_frames: [V] float64. whole: [C] float64 S.
    """
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    per_frame = features.shape[0] // frames
    to_frame = torch.empty(features.shape[0], dtype=dtype, device=features.device)
    frame_sum = torch.empty(frames, features.shape[1], dtype=dtype, device=features.device)
    for s in range(frames):
        rows = slice(s * per_frame, (s + 1) * per_frame)
        x = features[rows].to(dtype).masked_fill(~mask[rows, None], 0.0)  # an invalid token may hold NaN
        w = torch.linalg.vector_norm(x, dim=1).clamp(min=NORM_EPS).reciprocal().masked_fill(~mask[rows], 0.0)
        frame_sum[s] = w @ x
        to_frame[rows] = w * (x @ frame_sum[s])
    against = torch.zeros(n_voxels, dtype=torch.float64, device=features.device)
    return against.index_add_(0, voxel, to_frame[token].double()), frame_sum.sum(dim=0, dtype=torch.float64)


@dataclass(frozen=True)
class UnitSums:
    """Sums of unit features u = f / |f| (float64). voxel_sq [V] |S_v|^2; frame_sq [V] sum_s |S_{v,s}|^2; self_sq
    [V] sum_{i in v} |u_i|^2 (the count of nonzero features); frame_sum [S, C] S_s; against_all [V] S_v.S when
    S was given in advance (else None)."""

    voxel_sq: Tensor
    frame_sq: Tensor
    self_sq: Tensor
    frame_sum: Tensor
    against_all: Tensor | None


def unit_sums(features: Tensor, token: Tensor, group: Tensor, group_voxel: Tensor, group_frame: Tensor,
               frames: int, whole: Tensor | None = None) -> UnitSums:
    """Per voxel and per frame, sums of unit features, in one pass over the valid tokens.

    Tokens are sorted by group and processed in blocks of whole voxels of about BLOCK_ELEMENTS / C tokens
    (a larger voxel is a block of its own); the buffers are allocated once and reused, since fresh large
    allocations (page faults) cost more than the arithmetic here.

    Args:
        features: [N, C] float features of all tokens.
        token: [n] int64 rows of the valid tokens in features.
        group: [n] int64 (voxel, frame) group of each valid token, ids in 0..G-1 sorted by voxel.
        group_voxel, group_frame: [G] int64 voxel (non-decreasing, ids in 0..V-1) and frame of each group.
        frames: S. whole: [C] float64 whole-sample sum S known in advance (`against_frames_sums`), or None.
    """
    channels, device = features.shape[1], features.device
    order = torch.argsort(group, stable=True)
    token_sorted, group_sorted = token[order], group[order]
    voxel_sorted = group_voxel[group_sorted]
    voxel_start = torch.searchsorted(voxel_sorted, torch.arange(int(group_voxel[-1]) + 1, device=device))
    block = voxel_start // max(1, BLOCK_ELEMENTS // channels)
    ends = torch.cat([voxel_start[1:][block[1:] != block[:-1]], voxel_start.new_tensor([token.numel()])])
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    first_group, last_group = group_sorted[starts], group_sorted[ends - 1]
    first_voxel, last_voxel = group_voxel[first_group], group_voxel[last_group]
    blocks = torch.stack([starts, ends, first_group, last_group + 1, first_voxel, last_voxel + 1], 1).tolist()
    largest = (ends - starts).max().item(), (last_group + 1 - first_group).max().item()

    staged = features.new_empty(largest[0], channels)
    unit = torch.empty(largest[0], channels, dtype=torch.float64, device=device)
    group_sum = torch.empty(largest[1], channels, dtype=torch.float64, device=device)
    voxel_sum = torch.empty_like(group_sum)
    voxel_sq = torch.zeros(int(group_voxel[-1]) + 1, dtype=torch.float64, device=device)
    frame_sq, self_sq = torch.zeros_like(voxel_sq), torch.zeros_like(voxel_sq)
    sums = torch.zeros(frames, channels, dtype=torch.float64, device=device)
    against_all = torch.zeros_like(voxel_sq) if whole is not None else None
    for t0, t1, g0, g1, v0, v1 in blocks:
        rows, squares = _unit_rows(features, token_sorted[t0:t1], staged, unit)
        self_sq.index_add_(0, voxel_sorted[t0:t1], squares)
        groups = group_sum[: g1 - g0].zero_().index_add_(0, group_sorted[t0:t1] - g0, rows)
        voxels = voxel_sum[: v1 - v0].zero_().index_add_(0, group_voxel[g0:g1] - v0, groups)
        voxel_sq[v0:v1] = torch.linalg.vector_norm(voxels, dim=1).square()
        frame_sq.index_add_(0, group_voxel[g0:g1], torch.linalg.vector_norm(groups, dim=1).square())
        sums.index_add_(0, group_frame[g0:g1], groups)
        if whole is not None:
            against_all[v0:v1] = voxels @ whole
    return UnitSums(voxel_sq, frame_sq, self_sq, sums, against_all)
