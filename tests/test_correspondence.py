"""Tests of the 3D-awareness score, its background, contrast and recall against brute-force pairwise
implementations written here."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

import threedrs.metrics.correspondence_sums as correspondence_sums
from threedrs.metrics.correspondence import (
    CorrespondenceResult,
    correspondence_score,
    correspondence_scores,
    dataset_score,
)

F64 = torch.float64


def _points_in_voxels(gen: torch.Generator, shape: tuple[int, ...], cells: int, voxel: float) -> torch.Tensor:
    """[*shape, 3] points strictly inside voxels drawn from a cells^3 block (no boundary ambiguity)."""
    index = torch.randint(-cells // 2, cells - cells // 2, (*shape, 3), generator=gen).to(F64)
    offset = 0.1 + 0.8 * torch.rand(*shape, 3, generator=gen, dtype=F64)
    return (index + offset) * voxel


def _brute_force(features, points, valid, voxel_size, same_frame):
    """Explicit double loop over token pairs; returns (pair sims grouped by voxel)."""
    frames, rows, cols, channels = features.shape
    f = features.reshape(-1, channels).to(F64)
    f = f / f.norm(dim=1, keepdim=True).clamp(min=1e-12)
    sim = (f @ f.T).tolist()
    voxel = [tuple(v) for v in torch.floor(points.reshape(-1, 3).to(F64) / voxel_size).long().tolist()]
    ok = valid.reshape(-1).tolist()
    frame = [i // (rows * cols) for i in range(len(ok))]
    per_voxel: dict[tuple[int, ...], list[float]] = defaultdict(list)
    for i in range(len(ok)):
        for j in range(i + 1, len(ok)):
            if ok[i] and ok[j] and voxel[i] == voxel[j] and (same_frame or frame[i] != frame[j]):
                per_voxel[voxel[i]].append(sim[i][j])
    return per_voxel


def _random_sample(seed: int, frames: int = 5, rows: int = 3, cols: int = 3, channels: int = 16):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(frames, rows, cols, channels, generator=gen, dtype=F64)
    features += torch.randn(channels, generator=gen, dtype=F64)  # shared component: cosines far from 0
    points = _points_in_voxels(gen, (frames, rows, cols), 2, 0.1)
    valid = torch.rand(frames, rows, cols, generator=gen) > 0.2
    return features, points, valid


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", ["pairs", "voxel_mean"])
@pytest.mark.parametrize("same_frame", [False, True])
def test_matches_brute_force(seed: int, variant: str, same_frame: bool) -> None:
    features, points, valid = _random_sample(seed)
    features[0, 0, 0] = 0.0  # a zero feature: cosine 0 with everything
    points[~valid] = float("nan")  # masked tokens may hold anything
    result = correspondence_score(features, points, valid, variant=variant, same_frame=same_frame)
    per_voxel = _brute_force(features, points, valid, 0.1, same_frame)
    sims = [s for v in per_voxel.values() for s in v]
    assert result.pairs == len(sims) > 0
    assert result.voxels == len(per_voxel)
    assert result.tokens == int(valid.sum())
    assert (result.variant, result.same_frame) == (variant, same_frame)
    if variant == "pairs":
        expected = sum(sims) / len(sims)
    else:
        expected = sum(sum(v) / len(v) for v in per_voxel.values()) / len(per_voxel)
    assert result.score == pytest.approx(expected, abs=1e-5)


def _brute_force_background(features, points, valid, voxel_size, same_frame):
    """(cosines of all unordered pairs of the frame rule in different voxels, {voxel: mean cosine of its tokens
    with the tokens of every other voxel}) by an explicit double loop."""
    frames, rows, cols, channels = features.shape
    f = features.reshape(-1, channels).to(F64)
    f = f / f.norm(dim=1, keepdim=True).clamp(min=1e-12)
    sim = (f @ f.T).tolist()
    voxel = [tuple(v) for v in torch.floor(points.reshape(-1, 3).to(F64) / voxel_size).long().tolist()]
    ok = valid.reshape(-1).tolist()
    frame = [i // (rows * cols) for i in range(len(ok))]
    apart, per_voxel = [], defaultdict(list)
    for i in range(len(ok)):
        for j in range(len(ok)):
            if i != j and ok[i] and ok[j] and voxel[i] != voxel[j] and (same_frame or frame[i] != frame[j]):
                per_voxel[voxel[i]].append(sim[i][j])
                if i < j:
                    apart.append(sim[i][j])
    return apart, {v: sum(x) / len(x) for v, x in per_voxel.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", ["pairs", "voxel_mean"])
@pytest.mark.parametrize("same_frame", [False, True])
def test_background_and_contrast_match_brute_force(seed: int, variant: str, same_frame: bool) -> None:
    features, points, valid = _random_sample(seed)
    features[0, 0, 0] = 0.0
    points[~valid] = float("nan")
    result = correspondence_score(features, points, valid, variant=variant, same_frame=same_frame)
    apart, per_voxel_background = _brute_force_background(features, points, valid, 0.1, same_frame)
    scoring_voxels = _brute_force(features, points, valid, 0.1, same_frame)
    assert result.background_pairs == len(apart) > 0
    if variant == "pairs":
        expected = sum(apart) / len(apart)
    else:  # the voxels the score averages, each with its tokens against every other voxel's
        expected = sum(per_voxel_background[v] for v in scoring_voxels) / len(scoring_voxels)
    assert result.background == pytest.approx(expected, abs=1e-6)
    assert result.contrast == pytest.approx(result.score - expected, abs=1e-6)
    assert result.recall is None and result.recall_chance is None  # not asked for


def _brute_force_recall(features, points, valid, voxel_size, radius):
    """(hits, queries, summed chance) by looping over every (valid token, other frame) pair."""
    frames, rows, cols, channels = features.shape
    f = features.reshape(-1, channels).to(F64)
    f = f / f.norm(dim=1, keepdim=True).clamp(min=1e-12)
    sim = f @ f.T
    p = points.reshape(-1, 3).to(F64)
    cell = torch.floor(p / voxel_size).long()
    ok = valid.reshape(-1)
    hits = queries = 0
    chance = 0.0
    for i in ok.nonzero().squeeze(1).tolist():
        for t in range(frames):
            if t == i // (rows * cols):
                continue
            cand = [j for j in range(t * rows * cols, (t + 1) * rows * cols) if ok[j]]
            if radius is None:
                match = [bool((cell[j] == cell[i]).all()) for j in cand]
            else:
                match = [float((p[j] - p[i]).norm()) <= radius for j in cand]
            if not any(match):
                continue
            best = max(range(len(cand)), key=lambda k: float(sim[i, cand[k]]))
            hits += match[best]
            queries += 1
            chance += sum(match) / len(cand)
    return hits, queries, chance


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("radius", [None, 0.12])
@pytest.mark.parametrize("memory_mb", [1e-4, 256.0])  # one query per block, and all queries in one block
def test_recall_matches_brute_force(seed: int, radius: float | None, memory_mb: float) -> None:
    features, points, valid = _random_sample(seed, frames=4, rows=4, cols=3)
    points[~valid] = float("nan")
    result = correspondence_score(features, points, valid, recall=True, recall_radius=radius,
                                  recall_memory_mb=memory_mb)
    hits, queries, chance = _brute_force_recall(features, points, valid, 0.1, radius)
    assert result.recall_queries == queries > 0
    assert result.recall == pytest.approx(hits / queries, abs=1e-12)
    assert result.recall_chance == pytest.approx(chance / queries, abs=1e-9)


@pytest.mark.parametrize("variant", ["pairs", "voxel_mean"])
@pytest.mark.parametrize("same_frame", [False, True])
def test_collapsed_features_score_one_with_zero_contrast(variant: str, same_frame: bool) -> None:
    gen = torch.Generator().manual_seed(16)
    points = _points_in_voxels(gen, (6, 4, 5), 3, 0.1)
    features = torch.randn(64, generator=gen, dtype=F64).expand(6, 4, 5, 64)  # one vector everywhere
    result = correspondence_score(features, points, variant=variant, same_frame=same_frame)
    assert result.pairs > 0 and result.background_pairs > 0
    assert result.score == pytest.approx(1.0, abs=1e-12)
    assert result.background == pytest.approx(1.0, abs=1e-12)
    assert result.contrast == pytest.approx(0.0, abs=1e-12)


def test_features_of_the_voxel_have_high_contrast_and_full_recall() -> None:
    gen = torch.Generator().manual_seed(4)
    frames, rows, cols = 6, 4, 5
    points = _points_in_voxels(gen, (frames, rows, cols), 3, 0.1)
    keys = torch.floor(points / 0.1).long()
    keys -= keys.reshape(-1, 3).min(dim=0).values  # voxel indices from 0: one table row per voxel
    table = torch.randn(*(keys.reshape(-1, 3).max(dim=0).values + 1).tolist(), 256, generator=gen, dtype=F64)
    features = table[keys[..., 0], keys[..., 1], keys[..., 2]]
    for variant in ("pairs", "voxel_mean"):
        result = correspondence_score(features, points, variant=variant, recall=True)
        assert result.score == pytest.approx(1.0, abs=1e-12)
        assert abs(result.background) < 0.1 and result.contrast > 0.9  # distinct random vectors: cosine ~ 0
        assert result.recall == 1.0 and result.recall_queries > 0
        assert result.recall_chance < 0.5


def test_random_features_have_no_contrast_and_chance_recall() -> None:
    gen = torch.Generator().manual_seed(5)
    frames, rows, cols = 8, 14, 14
    features = torch.randn(frames, rows, cols, 256, generator=gen)
    features += 3.0 * torch.randn(256, generator=gen)  # a shared component: high score, same background
    points = _points_in_voxels(gen, (frames, rows, cols), 6, 0.1)
    result = correspondence_score(features, points, recall=True)
    assert result.score > 0.8 and abs(result.contrast) < 0.01
    per_frame = rows * cols
    assert 1 / per_frame <= result.recall_chance < 3 / per_frame  # the query's voxel holds >= 1 token of t
    assert result.recall_queries > 5000
    assert abs(result.recall - result.recall_chance) < 0.005  # binomial std ~ 0.0012 here


def test_background_can_be_skipped_and_needs_two_voxels() -> None:
    features, points, valid = _random_sample(17)
    full = correspondence_score(features, points, valid, variant="voxel_mean")
    alone = correspondence_score(features, points, valid, variant="voxel_mean", background=False)
    assert alone.score == full.score and math.isnan(alone.background) and math.isnan(alone.contrast)
    one_voxel = torch.full_like(points, 0.05)
    for variant in ("pairs", "voxel_mean"):
        result = correspondence_score(features, one_voxel, valid, variant=variant)
        assert result.pairs > 0 and result.background_pairs == 0
        assert math.isnan(result.background) and math.isnan(result.contrast)


@pytest.mark.parametrize("variant", ["pairs", "voxel_mean"])
def test_background_is_exact_over_blocks(monkeypatch: pytest.MonkeyPatch, variant: str) -> None:
    features, points, valid = _random_sample(3, channels=33)
    whole = correspondence_score(features, points, valid, variant=variant)
    monkeypatch.setattr(correspondence_sums, "BLOCK_ELEMENTS", 3 * 33)
    chunked = correspondence_score(features, points, valid, variant=variant)
    assert chunked.background == pytest.approx(whole.background, abs=1e-12)


@pytest.mark.parametrize("same_frame", [False, True])
def test_blocks_of_voxels_are_exact(monkeypatch: pytest.MonkeyPatch, same_frame: bool) -> None:
    features, points, valid = _random_sample(3, channels=33)
    whole = correspondence_score(features, points, valid, same_frame=same_frame)
    monkeypatch.setattr(correspondence_sums, "BLOCK_ELEMENTS", 3 * 33)  # 3-token blocks, voxels larger than that
    chunked = correspondence_score(features, points, valid, same_frame=same_frame)
    assert chunked.pairs == whole.pairs
    assert chunked.score == pytest.approx(whole.score, abs=1e-12)


def test_features_that_depend_only_on_the_voxel_score_one() -> None:
    gen = torch.Generator().manual_seed(4)
    frames, rows, cols = 6, 4, 5
    points = _points_in_voxels(gen, (frames, rows, cols), 3, 0.1)
    keys = torch.floor(points / 0.1).long()
    table = torch.randn(3, 3, 3, 64, generator=gen, dtype=F64)
    scale = 0.5 + torch.rand(frames, rows, cols, 1, generator=gen, dtype=F64)  # norms do not matter
    features = table[keys[..., 0] + 1, keys[..., 1] + 1, keys[..., 2] + 1] * scale
    for variant in ("pairs", "voxel_mean"):
        result = correspondence_score(features, points, variant=variant)
        assert result.pairs > 0
        assert result.score == pytest.approx(1.0, abs=1e-12)


def test_random_gaussian_features_score_near_zero() -> None:
    gen = torch.Generator().manual_seed(5)
    frames, rows, cols = 8, 14, 14
    features = torch.randn(frames, rows, cols, 256, generator=gen)
    points = _points_in_voxels(gen, (frames, rows, cols), 6, 0.1)
    result = correspondence_score(features, points)
    assert result.pairs > 1000
    assert abs(result.score) < 0.05


def test_single_frame_without_same_frame_pairs_is_nan() -> None:
    features, points, _ = _random_sample(6, frames=1)
    result = correspondence_score(features, points)
    assert (result.pairs, result.voxels, result.tokens) == (0, 0, 9)
    assert math.isnan(result.score)
    with_same = correspondence_score(features, points, same_frame=True)
    assert with_same.pairs > 0 and math.isfinite(with_same.score)


def test_no_valid_token_is_nan() -> None:
    features, points, valid = _random_sample(7)
    result = correspondence_score(features, points, torch.zeros_like(valid))
    assert (result.pairs, result.voxels, result.tokens) == (0, 0, 0)
    assert math.isnan(result.score)


def test_default_valid_is_finite_points() -> None:
    features, points, valid = _random_sample(8)
    masked = points.clone()
    masked[~valid] = float("nan")
    assert correspondence_score(features, masked) == correspondence_score(features, points, valid)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_features_are_accumulated_in_float64(dtype: torch.dtype) -> None:
    features, points, valid = _random_sample(9, channels=64)
    low = features.to(dtype)
    result = correspondence_score(low, points.to(dtype), valid)
    reference = correspondence_score(low.to(F64), points.to(dtype).to(F64), valid)
    assert result.pairs == reference.pairs > 0
    assert result.score == pytest.approx(reference.score, abs=1e-12)


def test_features_that_require_grad() -> None:
    features, points, valid = _random_sample(15)
    result = correspondence_score(features.requires_grad_(), points, valid)
    assert result == correspondence_score(features.detach(), points, valid)


def test_batched_scores_match_per_sample() -> None:
    samples = [_random_sample(seed) for seed in (10, 11)]
    features, points, valid = (torch.stack(parts) for parts in zip(*samples))
    batched = correspondence_scores(features, points, valid, variant="voxel_mean")
    assert batched == [correspondence_score(*s, variant="voxel_mean") for s in samples]


def test_dataset_score_hand_values() -> None:
    results = [CorrespondenceResult(0.5, 2, 1, 4), CorrespondenceResult(1.0, 6, 2, 8),
               CorrespondenceResult(math.nan, 0, 0, 3)]
    summary = dataset_score(results)
    assert summary.sample_mean == pytest.approx(0.75)
    assert summary.pooled == pytest.approx((0.5 * 2 + 1.0 * 6) / 8)
    assert (summary.samples, summary.scored_samples, summary.pairs, summary.voxels) == (3, 2, 8, 3)
    voxel = dataset_score([CorrespondenceResult(0.5, 2, 1, 4, "voxel_mean"),
                           CorrespondenceResult(1.0, 6, 2, 8, "voxel_mean")])
    assert voxel.pooled == pytest.approx((0.5 * 1 + 1.0 * 2) / 3)
    empty = dataset_score([CorrespondenceResult(math.nan, 0, 0, 3)])
    assert math.isnan(empty.sample_mean) and math.isnan(empty.pooled)


def test_dataset_pooled_is_mean_over_all_pairs() -> None:
    samples = [_random_sample(seed) for seed in (12, 13)]
    summary = dataset_score([correspondence_score(*s) for s in samples])
    sims = [x for s in samples for v in _brute_force(*s, 0.1, False).values() for x in v]
    assert summary.pairs == len(sims)
    assert summary.pooled == pytest.approx(sum(sims) / len(sims), abs=1e-9)


def test_dataset_contrast_pools_only_samples_with_a_background() -> None:
    """A sample whose pairs all lie in one voxel has a score but no background: it must not enter the contrast."""
    with_bg = CorrespondenceResult(0.6, 4, 2, 8, background=0.4, background_pairs=10, contrast=0.2)
    one_voxel = CorrespondenceResult(0.9, 20, 1, 5)
    summary = dataset_score([with_bg, one_voxel])
    assert summary.pooled == pytest.approx((0.6 * 4 + 0.9 * 20) / 24)
    assert summary.contrast_pooled == pytest.approx(0.2) and summary.contrast_mean == pytest.approx(0.2)


@pytest.mark.parametrize("variant", ["pairs", "voxel_mean"])
def test_a_nan_feature_at_an_invalid_token_changes_nothing(variant: str) -> None:
    features, points, valid = _random_sample(15)
    valid[0, 0, 0] = False
    clean = correspondence_score(features, points, valid, variant=variant)
    features[0, 0, 0] = math.nan
    dirty = correspondence_score(features, points, valid, variant=variant)
    assert math.isfinite(clean.background)
    assert (dirty.score, dirty.background) == pytest.approx((clean.score, clean.background), abs=1e-12)


def test_bad_input() -> None:
    features, points, valid = _random_sample(14)
    with pytest.raises(ValueError, match=r"features: expected shape \[S, h, w, C\]"):
        correspondence_score(features[0], points, valid)
    with pytest.raises(ValueError, match=r"features: expected a floating-point tensor"):
        correspondence_score(features.long(), points, valid)
    with pytest.raises(ValueError, match=r"points: grid \[5, 3, 2\] does not match"):
        correspondence_score(features, points[:, :, :2], valid)
    with pytest.raises(ValueError, match=r"points: expected shape \[S, h, w, 3\]"):
        correspondence_score(features, points[..., :2], valid)
    with pytest.raises(ValueError, match=r"valid: expected a bool tensor of shape \[5, 3, 3\]"):
        correspondence_score(features, points, valid[:4])
    with pytest.raises(ValueError, match=r"valid: expected a bool tensor"):
        correspondence_score(features, points, valid.long())
    with pytest.raises(ValueError, match=r"voxel_size: must be positive"):
        correspondence_score(features, points, valid, voxel_size=0.0)
    with pytest.raises(ValueError, match=r"voxel_size: must be positive"):
        correspondence_score(features, points, valid, voxel_size=-0.1)
    with pytest.raises(ValueError, match=r"variant: expected one of"):
        correspondence_score(features, points, valid, variant="mean")  # type: ignore[arg-type]
    nan_points = points.clone()
    nan_points[valid] = float("nan")
    with pytest.raises(ValueError, match=r"points: non-finite point at a token marked valid"):
        correspondence_score(features, nan_points, valid)
    with pytest.raises(ValueError, match=r"features: expected shape \[B, S, h, w, C\]"):
        correspondence_scores(features, points, valid)
    with pytest.raises(ValueError, match=r"points: expected shape \[1, S, h, w, 3\]"):
        correspondence_scores(features[None], points, valid)
    with pytest.raises(ValueError, match=r"valid: expected shape \[1, S, h, w\]"):
        correspondence_scores(features[None], points[None], valid)
    with pytest.raises(ValueError, match=r"results: no per-sample results"):
        dataset_score([])
    with pytest.raises(ValueError, match=r"results: mixed score definitions"):
        dataset_score([CorrespondenceResult(0.5, 1, 1, 2), CorrespondenceResult(0.5, 1, 1, 2, "voxel_mean")])
