"""The 3D-awareness score: multi-view correspondence of visual tokens (METHOD.md, "The 3D-awareness score").

Every valid token has a world point (metres). Tokens are grouped into voxels of `voxel_size`; two tokens of
DIFFERENT frames in the same voxel form a correspondence pair, and a sample's score is the mean cosine
similarity of the features over its pairs.

Two variants:
- "pairs" (default, the paper's text): mean over all pairs of the sample.
- "voxel_mean" (the authors' leftover code): mean cosine per voxel, then the mean over voxels with >= 1 pair.
  The authors' code also counts same-frame pairs; pass `same_frame=True` to reproduce that.

The computation is exact and linear in the number of tokens; no pairwise similarity matrix is formed. With
unit features f_i, the sum over ordered pairs i != j of a voxel v is |sum_v f|^2 - sum_i |f_i|^2, and over
ordered pairs from different frames |sum_v f|^2 - sum_s |sum_{v,s} f|^2; pair counts follow from the token
counts n_v and n_{v,s} the same way. All sums are accumulated in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from threedrs.geometry import voxel_keys

__all__ = [
    "CorrespondenceResult",
    "DatasetCorrespondence",
    "Variant",
    "correspondence_score",
    "correspondence_scores",
    "dataset_score",
]

Variant = Literal["pairs", "voxel_mean"]
_VARIANTS = ("pairs", "voxel_mean")
_NORM_EPS = 1e-12  # as torch.nn.functional.normalize: a zero feature stays zero (cosine 0 with everything)
_BLOCK_ELEMENTS = 1 << 19  # float64 elements per block of tokens (4 MiB, cache-sized): max(1, this // C) tokens


@dataclass(frozen=True)
class CorrespondenceResult:
    """3D-awareness score of one sample.

    score: mean cosine similarity (nan if no pairs); pairs: number of unordered correspondence pairs counted;
    voxels: number of voxels that contributed at least one pair; tokens: number of valid tokens used;
    variant / same_frame: the definition that produced the score (report it with the number).
    """

    score: float
    pairs: int
    voxels: int
    tokens: int
    variant: Variant = "pairs"
    same_frame: bool = False


@dataclass(frozen=True)
class DatasetCorrespondence:
    """3D-awareness score of a dataset, from per-sample results of one definition.

    sample_mean: mean of the per-sample scores over the samples with >= 1 pair (each sample weighs the same).
    pooled: all samples' pairs pooled: for "pairs", the mean cosine over every pair of every sample
        (sum of score * pairs / total pairs); for "voxel_mean", the mean over every contributing voxel of
        every sample (sum of score * voxels / total voxels). nan when no sample has a pair.
    samples: results given; scored_samples: those with >= 1 pair; pairs, voxels: totals.
    """

    sample_mean: float
    pooled: float
    samples: int
    scored_samples: int
    pairs: int
    voxels: int
    variant: Variant
    same_frame: bool


def _check_inputs(features: Tensor, points: Tensor, valid: Tensor | None, voxel_size: float, variant: str) -> None:
    if features.ndim != 4 or features.shape[-1] < 1:
        raise ValueError(f"features: expected shape [S, h, w, C], got {list(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features: expected a floating-point tensor, got {features.dtype}")
    grid = list(features.shape[:3])
    if points.ndim != 4 or points.shape[-1] != 3:
        raise ValueError(f"points: expected shape [S, h, w, 3], got {list(points.shape)}")
    if list(points.shape[:3]) != grid:
        raise ValueError(f"points: grid {list(points.shape[:3])} does not match the features' grid {grid}")
    if not points.is_floating_point():
        raise ValueError(f"points: expected a floating-point tensor, got {points.dtype}")
    if valid is not None and (list(valid.shape) != grid or valid.dtype != torch.bool):
        raise ValueError(f"valid: expected a bool tensor of shape {grid}, got {valid.dtype} {list(valid.shape)}")
    if not (float(voxel_size) > 0 and math.isfinite(float(voxel_size))):
        raise ValueError(f"voxel_size: must be positive and finite, got {voxel_size}")
    if variant not in _VARIANTS:
        raise ValueError(f"variant: expected one of {_VARIANTS}, got {variant!r}")


@torch.no_grad()
def correspondence_score(
    features: Tensor,
    points: Tensor,
    valid: Tensor | None = None,
    *,
    voxel_size: float = 0.1,
    variant: Variant = "pairs",
    same_frame: bool = False,
) -> CorrespondenceResult:
    """Multi-view correspondence score of one sample.

    Args:
        features: [S, h, w, C] token features, any float dtype (computed in float64). A zero feature has
            cosine 0 with every other token.
        points: [S, h, w, 3] world point of each token, metres.
        valid: [S, h, w] bool, tokens to use; None uses every token with a finite point. Valid tokens must
            have finite points.
        voxel_size: voxel edge, metres (0.1 in the paper); voxels are floor(p / voxel_size).
        variant: "pairs" (mean over pairs, paper) or "voxel_mean" (mean over voxels of the per-voxel mean).
        same_frame: also count pairs of tokens of the same frame (the authors' code does).
    Returns:
        CorrespondenceResult; score is nan when there is no pair (e.g. one frame and same_frame=False).
    """
    _check_inputs(features, points, valid, voxel_size, variant)
    frames, rows, cols, channels = features.shape
    flat_points = points.reshape(-1, 3)
    if valid is None:
        mask = torch.isfinite(flat_points).all(dim=-1)
    else:
        mask = valid.reshape(-1).to(points.device)
        if not bool(torch.isfinite(flat_points[mask]).all()):
            raise ValueError("points: non-finite point at a token marked valid")
    token = mask.nonzero().squeeze(1)
    tokens = token.numel()
    if tokens == 0:
        return CorrespondenceResult(math.nan, 0, 0, 0, variant, same_frame)

    # Groups: voxel of each token, and (voxel, frame) of each token; group ids sort by voxel, then frame.
    voxel_key, voxel = torch.unique(voxel_keys(flat_points[token], voxel_size), return_inverse=True)
    frame = token // (rows * cols)
    group_key, group = torch.unique(voxel * frames + frame, return_inverse=True)
    device = features.device
    token, voxel, group = token.to(device), voxel.to(device), group.to(device)
    group_voxel = (group_key // frames).to(device)
    n_voxels = voxel_key.numel()

    voxel_sq, frame_sq, self_sq = _unit_sums(features.reshape(-1, channels), token, group, group_voxel)
    voxel_count = torch.bincount(voxel, minlength=n_voxels).to(torch.float64)
    if same_frame:
        dot_sum = voxel_sq - self_sq
        ordered_pairs = voxel_count.square() - voxel_count
    else:
        group_count = torch.bincount(group, minlength=group_key.numel()).to(torch.float64)
        frame_pairs = torch.zeros_like(voxel_sq).index_add_(0, group_voxel, group_count.square())
        dot_sum = voxel_sq - frame_sq
        ordered_pairs = voxel_count.square() - frame_pairs

    has_pair = ordered_pairs > 0
    pairs = int(ordered_pairs.sum().item()) // 2
    voxels = int(has_pair.sum().item())
    if pairs == 0:
        return CorrespondenceResult(math.nan, 0, 0, tokens, variant, same_frame)
    if variant == "pairs":
        score = float(dot_sum.sum() / ordered_pairs.sum())
    else:
        score = float((dot_sum[has_pair] / ordered_pairs[has_pair]).mean())
    return CorrespondenceResult(score, pairs, voxels, tokens, variant, same_frame)


def _unit_sums(
    features: Tensor, token: Tensor, group: Tensor, group_voxel: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per voxel, squared norms of sums of unit features (f / |f|), in float64.

    Tokens are sorted by group and processed in blocks of whole voxels of about _BLOCK_ELEMENTS / C tokens
    (a larger voxel is a block of its own); the buffers are allocated once and reused, since fresh large
    allocations (page faults) cost more than the arithmetic here.

    Args:
        features: [N, C] float features of all tokens.
        token: [n] int64 rows of the valid tokens in features.
        group: [n] int64 (voxel, frame) group of each valid token, ids in 0..G-1 sorted by voxel.
        group_voxel: [G] int64 voxel of each group, non-decreasing, ids in 0..V-1.
    Returns:
        voxel_sq: [V] |sum_v u|^2; frame_sq: [V] sum_s |sum_{v,s} u|^2; self_sq: [V] sum_v |u|^2 (the count
        of nonzero features), where u = f / |f| (0 for a zero feature).
    """
    channels, device = features.shape[1], features.device
    order = torch.argsort(group, stable=True)
    token_sorted, group_sorted = token[order], group[order]
    voxel_sorted = group_voxel[group_sorted]
    voxel_start = torch.searchsorted(voxel_sorted, torch.arange(int(group_voxel[-1]) + 1, device=device))
    block = voxel_start // max(1, _BLOCK_ELEMENTS // channels)
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
    frame_sq = torch.zeros_like(voxel_sq)
    self_sq = torch.zeros_like(voxel_sq)
    for t0, t1, g0, g1, v0, v1 in blocks:
        rows = unit[: t1 - t0]
        rows.copy_(torch.index_select(features, 0, token_sorted[t0:t1], out=staged[: t1 - t0]))
        norm = torch.linalg.vector_norm(rows, dim=1)
        scale = 1.0 / norm.clamp(min=_NORM_EPS)
        rows.mul_(scale[:, None])
        self_sq.index_add_(0, voxel_sorted[t0:t1], (norm * scale).square())
        groups = group_sum[: g1 - g0].zero_().index_add_(0, group_sorted[t0:t1] - g0, rows)
        voxels = voxel_sum[: v1 - v0].zero_().index_add_(0, group_voxel[g0:g1] - v0, groups)
        voxel_sq[v0:v1] = torch.linalg.vector_norm(voxels, dim=1).square()
        frame_sq.index_add_(0, group_voxel[g0:g1], torch.linalg.vector_norm(groups, dim=1).square())
    return voxel_sq, frame_sq, self_sq


def correspondence_scores(
    features: Tensor,
    points: Tensor,
    valid: Tensor | None = None,
    *,
    voxel_size: float = 0.1,
    variant: Variant = "pairs",
    same_frame: bool = False,
) -> list[CorrespondenceResult]:
    """`correspondence_score` of each sample of a batch.

    Args:
        features: [B, S, h, w, C]; points: [B, S, h, w, 3]; valid: [B, S, h, w] bool or None.
    Returns:
        B results, in batch order.
    """
    if features.ndim != 5:
        raise ValueError(f"features: expected shape [B, S, h, w, C], got {list(features.shape)}")
    if points.ndim != 5 or points.shape[0] != features.shape[0]:
        raise ValueError(f"points: expected shape [{features.shape[0]}, S, h, w, 3], got {list(points.shape)}")
    if valid is not None and (valid.ndim != 4 or valid.shape[0] != features.shape[0]):
        raise ValueError(f"valid: expected shape [{features.shape[0]}, S, h, w], got {list(valid.shape)}")
    return [
        correspondence_score(
            features[b],
            points[b],
            None if valid is None else valid[b],
            voxel_size=voxel_size,
            variant=variant,
            same_frame=same_frame,
        )
        for b in range(features.shape[0])
    ]


def dataset_score(results: Sequence[CorrespondenceResult]) -> DatasetCorrespondence:
    """Dataset-level score from per-sample results (see DatasetCorrespondence for the two means).

    All results must share one definition (variant and same_frame); samples without pairs are counted in
    `samples` but excluded from both means.
    """
    if len(results) == 0:
        raise ValueError("results: no per-sample results to average")
    definitions = {(r.variant, r.same_frame) for r in results}
    if len(definitions) != 1:
        raise ValueError(f"results: mixed score definitions (variant, same_frame) {sorted(definitions)}")
    variant, same_frame = definitions.pop()
    scored = [r for r in results if r.pairs > 0]
    pairs = sum(r.pairs for r in scored)
    voxels = sum(r.voxels for r in scored)
    if not scored:
        return DatasetCorrespondence(math.nan, math.nan, len(results), 0, 0, 0, variant, same_frame)
    sample_mean = math.fsum(r.score for r in scored) / len(scored)
    if variant == "pairs":
        pooled = math.fsum(r.score * r.pairs for r in scored) / pairs
    else:
        pooled = math.fsum(r.score * r.voxels for r in scored) / voxels
    return DatasetCorrespondence(sample_mean, pooled, len(results), len(scored), pairs, voxels, variant, same_frame)
