"""The 3D-awareness score: multi-view correspondence of visual tokens (METHOD.md, "The 3D-awareness score").

Every valid token has a world point (metres). Tokens are grouped into voxels of `voxel_size`; two tokens of
DIFFERENT frames in the same voxel form a correspondence pair, and a sample's score is the mean cosine
similarity of the features over its pairs.

Two variants:
- "pairs" (default, the paper's text): mean over all pairs of the sample.
- "voxel_mean" (the authors' leftover code): mean cosine per voxel, then the mean over voxels with >= 1 pair.
  The authors' code also counts same-frame pairs; pass `same_frame=True` to reproduce that.

The score alone cannot tell 3D-awareness from feature collapse: features that are all alike score 1 and know
nothing of 3D. Beside it every result carries:
- background: the mean cosine over the token pairs that the same frame rule admits but that lie in DIFFERENT
  voxels, i.e. how alike two tokens are anyway. "pairs": the mean over all such pairs of the sample.
  "voxel_mean": for each voxel that the score averages, the mean cosine between its tokens and the tokens of
  all other voxels, then the mean over those voxels (the score's own weighting).
- contrast = score - background: how much more alike corresponding tokens are than any two tokens. 0 for
  collapsed features and for features unrelated to the geometry; it can be negative.
- recall (optional, `recall=True`; `threedrs.metrics.correspondence_recall`): correspondence retrieval, whose
  chance level is about one over the tokens per frame.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from threedrs.geometry import voxel_keys
from threedrs.metrics.correspondence_recall import correspondence_recall

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
    """3D-awareness of one sample (module docstring: the definitions).

    score: mean cosine over correspondence pairs (nan if no pairs); pairs: number of unordered correspondence
    pairs counted; voxels: number of voxels that contributed at least one pair; tokens: number of valid tokens
    used; variant / same_frame: the definition that produced the numbers (report it with them).
    background: mean cosine over the pairs of the same frame rule in different voxels (nan if none, or when
    not computed); background_pairs: number of such unordered pairs; contrast: score - background.
    recall: share of (token, other frame) queries whose most similar token of that frame corresponds (None when
    not computed, nan without queries); recall_queries: number of queries; recall_chance: the recall that
    random features would get on the same tokens in expectation.
    """

    score: float
    pairs: int
    voxels: int
    tokens: int
    variant: Variant = "pairs"
    same_frame: bool = False
    background: float = math.nan
    background_pairs: int = 0
    contrast: float = math.nan
    recall: float | None = None
    recall_queries: int = 0
    recall_chance: float | None = None


@dataclass(frozen=True)
class DatasetCorrespondence:
    """3D-awareness of a dataset, from per-sample results of one definition.

    sample_mean: mean of the per-sample scores over the samples with >= 1 pair (each sample weighs the same).
    pooled: all samples' pairs pooled: for "pairs", the mean cosine over every pair of every sample
        (sum of score * pairs / total pairs); for "voxel_mean", the mean over every contributing voxel of
        every sample (sum of score * voxels / total voxels). nan when no sample has a pair.
    background_mean / background_pooled: the same two means of the background over the samples with >= 1 pair
        and a background ("pairs" pools by background_pairs, "voxel_mean" by voxels); contrast_mean: mean of the
        per-sample contrasts; contrast_pooled: pooled - background_pooled.
    recall_mean: mean of the per-sample recalls; recall_pooled: over all queries of all samples; recall_chance:
        pooled chance level. All three None when no result has a recall.
    samples: results given; scored_samples: those with >= 1 pair; pairs, voxels, recall_queries: totals.
    """

    sample_mean: float
    pooled: float
    samples: int
    scored_samples: int
    pairs: int
    voxels: int
    variant: Variant
    same_frame: bool
    background_mean: float = math.nan
    background_pooled: float = math.nan
    contrast_mean: float = math.nan
    contrast_pooled: float = math.nan
    recall_mean: float | None = None
    recall_pooled: float | None = None
    recall_chance: float | None = None
    recall_queries: int = 0


def _check_inputs(features: Tensor, points: Tensor, valid: Tensor | None, voxel_size: float, variant: str,
                  recall_radius: float | None, recall_memory_mb: float) -> None:
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
    if recall_radius is not None and not (float(recall_radius) > 0 and math.isfinite(float(recall_radius))):
        raise ValueError(f"recall_radius: must be positive and finite (metres) or None, got {recall_radius}")
    if not float(recall_memory_mb) > 0:
        raise ValueError(f"recall_memory_mb: must be positive, got {recall_memory_mb}")


@torch.no_grad()
def correspondence_score(
    features: Tensor,
    points: Tensor,
    valid: Tensor | None = None,
    *,
    voxel_size: float = 0.1,
    variant: Variant = "pairs",
    same_frame: bool = False,
    background: bool = True,
    recall: bool = False,
    recall_radius: float | None = None,
    recall_memory_mb: float = 256.0,
) -> CorrespondenceResult:
    """Multi-view correspondence score of one sample, with its background, contrast and optionally recall.

    Args:
        features: [S, h, w, C] token features, any float dtype (sums in float64). A zero feature has cosine 0
            with every other token. Computed on the features' device (points may be elsewhere).
        points: [S, h, w, 3] world point of each token, metres.
        valid: [S, h, w] bool, tokens to use; None uses every token with a finite point. Valid tokens must
            have finite points.
        voxel_size: voxel edge, metres (0.1 in the paper); voxels are floor(p / voxel_size).
        variant: "pairs" (mean over pairs, paper) or "voxel_mean" (mean over voxels of the per-voxel mean).
        same_frame: also count pairs of tokens of the same frame (the authors' code does); applies to the
            background too.
        background: False skips background and contrast (left nan): the paper's score alone, slightly faster.
        recall: also compute the correspondence recall (quadratic in tokens; see `correspondence_recall`).
        recall_radius: recall's match rule: None = the same voxel, else world points within this many metres.
        recall_memory_mb: bound on recall's working memory for its blocked similarity products (MiB).
    Returns:
        CorrespondenceResult; score is nan when there is no pair (e.g. one frame and same_frame=False).
    """
    _check_inputs(features, points, valid, voxel_size, variant, recall_radius, recall_memory_mb)
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
    done = {"variant": variant, "same_frame": same_frame}
    if tokens == 0:
        nothing = {"recall": math.nan, "recall_queries": 0, "recall_chance": math.nan} if recall else {}
        return CorrespondenceResult(math.nan, 0, 0, 0, **done, **nothing)

    # Groups: voxel of each token, and (voxel, frame) of each token; group ids sort by voxel, then frame.
    voxel_key, voxel = torch.unique(voxel_keys(flat_points[token], voxel_size), return_inverse=True)
    frame = token // (rows * cols)
    group_key, group = torch.unique(voxel * frames + frame, return_inverse=True)
    device = features.device
    recalled = {}
    if recall:
        found = correspondence_recall(features, points, mask.reshape(frames, rows, cols), voxel,
                                      radius=recall_radius, memory_mb=recall_memory_mb)
        recalled = {"recall": found.recall, "recall_queries": found.queries, "recall_chance": found.chance}
    token, voxel, group, frame = token.to(device), voxel.to(device), group.to(device), frame.to(device)
    group_voxel, group_frame = (group_key // frames).to(device), (group_key % frames).to(device)
    n_voxels = voxel_key.numel()

    against_frames = whole = None
    if background and variant == "voxel_mean":  # its per-voxel background needs S_s and S before the voxel pass
        against_frames, whole = _against_frames(features.reshape(-1, channels), mask.to(device), frames, token,
                                                voxel, n_voxels)
    sums = _unit_sums(features.reshape(-1, channels), token, group, group_voxel, group_frame, frames, whole)
    counts = _Counts.of(voxel, group, group_voxel, group_frame, frame, n_voxels, frames)
    if same_frame:
        dot_sum = sums.voxel_sq - sums.self_sq
        ordered_pairs = counts.voxel.square() - counts.voxel
    else:
        dot_sum = sums.voxel_sq - sums.frame_sq
        ordered_pairs = counts.voxel.square() - counts.frame_sq

    has_pair = ordered_pairs > 0
    pairs = int(ordered_pairs.sum().item()) // 2
    voxels = int(has_pair.sum().item())
    if pairs == 0:
        return CorrespondenceResult(math.nan, 0, 0, tokens, **done, **recalled)
    if variant == "pairs":
        score = float(dot_sum.sum() / ordered_pairs.sum())
    else:
        score = float((dot_sum[has_pair] / ordered_pairs[has_pair]).mean())
    extra = {}
    if background:
        extra = _background(sums, counts, against_frames, dot_sum, ordered_pairs, has_pair, variant, same_frame)
        extra["contrast"] = score - extra["background"]
    return CorrespondenceResult(score, pairs, voxels, tokens, **done, **extra, **recalled)


@dataclass(frozen=True)
class _Counts:
    """Token counts as float64: voxel [V] n_v; frame_sq [V] sum_s n_{v,s}^2; frame_dot [V] sum_s n_{v,s} n_s;
    frames [S] n_s; total n."""

    voxel: Tensor
    frame_sq: Tensor
    frame_dot: Tensor
    frames: Tensor
    total: float

    @classmethod
    def of(cls, voxel: Tensor, group: Tensor, group_voxel: Tensor, group_frame: Tensor, frame: Tensor,
           n_voxels: int, frames: int) -> _Counts:
        f64 = torch.float64
        voxel_count = torch.bincount(voxel, minlength=n_voxels).to(f64)
        group_count = torch.bincount(group, minlength=group_voxel.numel()).to(f64)
        frame_count = torch.bincount(frame, minlength=frames).to(f64)
        frame_sq = torch.zeros_like(voxel_count).index_add_(0, group_voxel, group_count.square())
        frame_dot = torch.zeros_like(voxel_count).index_add_(0, group_voxel, group_count * frame_count[group_frame])
        return cls(voxel_count, frame_sq, frame_dot, frame_count, float(voxel.numel()))


def _background(sums: _UnitSums, counts: _Counts, against_frames: Tensor | None, dot_sum: Tensor,
                ordered_pairs: Tensor, has_pair: Tensor, variant: str, same_frame: bool) -> dict:
    """Background (mean cosine over pairs of the frame rule in different voxels) and its unordered pair count.

    against_frames: for "voxel_mean", [V] sum_s S_{v,s}.S_s (`_against_frames`; S_v.S is in sums); dot_sum /
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
    scale = 1.0 / norm.clamp(min=_NORM_EPS)
    out.mul_(scale[:, None])
    return out, (norm * scale).square()


def _against_frames(features: Tensor, mask: Tensor, frames: int, token: Tensor, voxel: Tensor,
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
        x = features[rows].to(dtype)
        w = torch.linalg.vector_norm(x, dim=1).clamp(min=_NORM_EPS).reciprocal().masked_fill(~mask[rows], 0.0)
        frame_sum[s] = w @ x
        to_frame[rows] = w * (x @ frame_sum[s])
    against = torch.zeros(n_voxels, dtype=torch.float64, device=features.device)
    return against.index_add_(0, voxel, to_frame[token].double()), frame_sum.sum(dim=0, dtype=torch.float64)


@dataclass(frozen=True)
class _UnitSums:
    """Sums of unit features u = f / |f| (float64). voxel_sq [V] |S_v|^2; frame_sq [V] sum_s |S_{v,s}|^2; self_sq
    [V] sum_{i in v} |u_i|^2 (the count of nonzero features); frame_sum [S, C] S_s; against_all [V] S_v.S when
    S was given in advance (else None)."""

    voxel_sq: Tensor
    frame_sq: Tensor
    self_sq: Tensor
    frame_sum: Tensor
    against_all: Tensor | None


def _unit_sums(features: Tensor, token: Tensor, group: Tensor, group_voxel: Tensor, group_frame: Tensor,
               frames: int, whole: Tensor | None = None) -> _UnitSums:
    """Per voxel and per frame, sums of unit features, in one pass over the valid tokens.

    Tokens are sorted by group and processed in blocks of whole voxels of about _BLOCK_ELEMENTS / C tokens
    (a larger voxel is a block of its own); the buffers are allocated once and reused, since fresh large
    allocations (page faults) cost more than the arithmetic here.

    Args:
        features: [N, C] float features of all tokens.
        token: [n] int64 rows of the valid tokens in features.
        group: [n] int64 (voxel, frame) group of each valid token, ids in 0..G-1 sorted by voxel.
        group_voxel, group_frame: [G] int64 voxel (non-decreasing, ids in 0..V-1) and frame of each group.
        frames: S. whole: [C] float64 whole-sample sum S known in advance (`_against_frames`), or None.
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
    return _UnitSums(voxel_sq, frame_sq, self_sq, sums, against_all)


def correspondence_scores(
    features: Tensor,
    points: Tensor,
    valid: Tensor | None = None,
    **options,
) -> list[CorrespondenceResult]:
    """`correspondence_score` of each sample of a batch.

    Args:
        features: [B, S, h, w, C]; points: [B, S, h, w, 3]; valid: [B, S, h, w] bool or None.
        options: keyword arguments of `correspondence_score` (voxel_size, variant, same_frame, recall, ...).
    Returns:
        B results, in batch order.
    """
    if features.ndim != 5:
        raise ValueError(f"features: expected shape [B, S, h, w, C], got {list(features.shape)}")
    if points.ndim != 5 or points.shape[0] != features.shape[0]:
        raise ValueError(f"points: expected shape [{features.shape[0]}, S, h, w, 3], got {list(points.shape)}")
    if valid is not None and (valid.ndim != 4 or valid.shape[0] != features.shape[0]):
        raise ValueError(f"valid: expected shape [{features.shape[0]}, S, h, w], got {list(valid.shape)}")
    return [correspondence_score(features[b], points[b], None if valid is None else valid[b], **options)
            for b in range(features.shape[0])]


def _weighted(pairs: Sequence[tuple[float, float]]) -> float:
    """Sum of value * weight over sum of weight (nan when the weights sum to 0)."""
    total = math.fsum(w for _, w in pairs)
    return math.fsum(v * w for v, w in pairs) / total if total > 0 else math.nan


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def dataset_score(results: Sequence[CorrespondenceResult]) -> DatasetCorrespondence:
    """Dataset-level measures from per-sample results (see DatasetCorrespondence for the means).

    All results must share one definition (variant and same_frame); samples without pairs are counted in
    `samples` but excluded from the score's and background's means (their recall still counts).
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
    weight = (lambda r: r.pairs) if variant == "pairs" else (lambda r: r.voxels)
    bg_weight = (lambda r: r.background_pairs) if variant == "pairs" else (lambda r: r.voxels)
    with_bg = [r for r in scored if math.isfinite(r.background)]
    pooled = _weighted([(r.score, weight(r)) for r in scored])
    background_pooled = _weighted([(r.background, bg_weight(r)) for r in with_bg])
    recalled = [r for r in results if r.recall is not None and r.recall_queries > 0]
    any_recall = any(r.recall is not None for r in results)
    queries = sum(r.recall_queries for r in recalled)
    return DatasetCorrespondence(
        sample_mean=_mean([r.score for r in scored]), pooled=pooled, samples=len(results),
        scored_samples=len(scored), pairs=pairs, voxels=voxels, variant=variant, same_frame=same_frame,
        background_mean=_mean([r.background for r in with_bg]), background_pooled=background_pooled,
        contrast_mean=_mean([r.contrast for r in with_bg]), contrast_pooled=pooled - background_pooled,
        recall_mean=_mean([r.recall for r in recalled]) if any_recall else None,
        recall_pooled=_weighted([(r.recall, r.recall_queries) for r in recalled]) if any_recall else None,
        recall_chance=_weighted([(r.recall_chance, r.recall_queries) for r in recalled]) if any_recall else None,
        recall_queries=queries)
