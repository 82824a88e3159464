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

The computation is exact and linear in the number of tokens; no pairwise similarity matrix is formed
(`threedrs.metrics.correspondence_sums` holds the sums and the formulas).
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
from threedrs.metrics.correspondence_sums import VoxelCounts, against_frames_sums, background_of, unit_sums

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
        per-sample contrasts; contrast_pooled: the pooled score minus background_pooled, both over the samples
        with a background (a sample whose pairs all lie in one voxel has a score but no contrast).
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
        against_frames, whole = against_frames_sums(features.reshape(-1, channels), mask.to(device), frames, token,
                                                voxel, n_voxels)
    sums = unit_sums(features.reshape(-1, channels), token, group, group_voxel, group_frame, frames, whole)
    counts = VoxelCounts.of(voxel, group, group_voxel, group_frame, frame, n_voxels, frames)
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
        extra = background_of(sums, counts, against_frames, dot_sum, ordered_pairs, has_pair, variant, same_frame)
        extra["contrast"] = score - extra["background"]
    return CorrespondenceResult(score, pairs, voxels, tokens, **done, **extra, **recalled)


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
        contrast_mean=_mean([r.contrast for r in with_bg]),
        contrast_pooled=_weighted([(r.score, weight(r)) for r in with_bg]) - background_pooled,
        recall_mean=_mean([r.recall for r in recalled]) if any_recall else None,
        recall_pooled=_weighted([(r.recall, r.recall_queries) for r in recalled]) if any_recall else None,
        recall_chance=_weighted([(r.recall_chance, r.recall_queries) for r in recalled]) if any_recall else None,
        recall_queries=queries)
