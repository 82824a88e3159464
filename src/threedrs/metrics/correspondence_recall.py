"""Correspondence recall: can a token find its own 3D place in another view by feature similarity alone?

Probe3D-style retrieval (El Banani et al., "Probing the 3D Awareness of Visual Foundation Models", CVPR 2024,
measure correspondence by nearest-neighbour retrieval across views). For each valid token i of frame s and each
OTHER frame t that sees i's place (holds a valid token that matches i), the query (i, t) retrieves the valid
token of frame t with the highest cosine similarity to i; it is a hit when the retrieved token matches i.
Recall is hits / queries. Match rule: the same voxel (``radius=None``), or world points at most ``radius``
metres apart.

Unlike the mean cosine, recall only asks whether the right token is the MOST similar one, so it is unchanged by
anything that moves all similarities alike (a shared component, collapse towards one direction). Its chance
level, the expected recall of features unrelated to the scene, is the mean over queries of (tokens of frame t
that match i) / (valid tokens of frame t): about 1 / tokens per frame for voxel matching. It is returned beside
the recall.

Cost: one [B, N] block of similarities per B query tokens (N = S * h * w), i.e. N^2 C multiply-adds in all, on
the features' device (a GPU when the features are there). B is chosen so that a block's buffers stay within
``memory_mb``; half-precision features are first converted to float32 (one [N, C] copy), float64 stays float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from threedrs.metrics.correspondence_sums import NORM_EPS

__all__ = ["RecallResult", "correspondence_recall"]


@dataclass(frozen=True)
class RecallResult:
    """recall: hits / queries (nan without queries); queries: number of (token, other frame) queries;
    chance: expected recall of features unrelated to the scene on the same queries (nan without queries)."""

    recall: float
    queries: int
    chance: float


@torch.no_grad()
def correspondence_recall(features: Tensor, points: Tensor, valid: Tensor, voxel: Tensor, *,
                          radius: float | None = None, memory_mb: float = 256.0) -> RecallResult:
    """Correspondence recall of one sample (module docstring). Inputs as checked by `correspondence_score`.

    Args:
        features: [S, h, w, C] float token features (cosine similarity; a zero feature has cosine 0).
        points: [S, h, w, 3] world points, metres (finite at valid tokens).
        valid: [S, h, w] bool tokens taking part (as queries and as candidates).
        voxel: [n] int64 voxel id (0..V-1) of each valid token in row-major order of ``valid``; used when
            ``radius`` is None.
        radius: None = match within the same voxel; else match within this distance, metres.
        memory_mb: bound on the per-block buffers (similarities, distances), MiB.
    Returns:
        RecallResult.
    """
    frames, rows, cols, channels = features.shape
    per_frame = rows * cols
    device = features.device
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    flat = features.reshape(-1, channels).to(dtype)
    mask = valid.reshape(-1).to(device)
    query = mask.nonzero().squeeze(1)
    if query.numel() == 0:
        return RecallResult(math.nan, 0, math.nan)
    column_scale = torch.where(mask, 1.0 / torch.linalg.vector_norm(flat, dim=1).clamp(min=NORM_EPS), 0.0)
    frame_count = mask.reshape(frames, per_frame).sum(dim=1).to(torch.float64)
    query_frame = query // per_frame
    if radius is None:
        voxel = voxel.to(device)
        column_voxel = torch.full((mask.numel(),), -1, dtype=torch.int64, device=device)
        column_voxel[query] = voxel
        in_voxel = torch.zeros(int(voxel.max()) + 1, frames, dtype=torch.float64, device=device)  # [V, S] counts
        in_voxel.index_put_((voxel, query_frame), torch.ones_like(voxel, dtype=torch.float64), accumulate=True)
        extra = 0
    else:
        flat_points = torch.where(mask[:, None], points.reshape(-1, 3).to(device, torch.float64), math.inf)
        extra = 9  # float64 distance + bool match per candidate
    row_bytes = mask.numel() * (flat.element_size() + 1 + extra) + 64
    step = max(1, int(memory_mb * 2**20) // row_bytes)
    hits = torch.zeros((), dtype=torch.int64, device=device)
    queries = torch.zeros((), dtype=torch.int64, device=device)
    chance = torch.zeros((), dtype=torch.float64, device=device)
    other = torch.arange(frames, device=device)[None, :]
    invalid = ~mask
    for q0 in range(0, query.numel(), step):
        q = query[q0:q0 + step]
        sim = (flat[q] @ flat.T).mul_(column_scale).masked_fill_(invalid, -math.inf)
        best = sim.view(-1, frames, per_frame).argmax(dim=2)  # [B, S] best token of each frame
        del sim
        best_column = best + other * per_frame
        if radius is None:
            matches = in_voxel[voxel[q0:q0 + step]]  # [B, S] tokens of each frame in the query's voxel
            hit = column_voxel[best_column] == voxel[q0:q0 + step, None]
        else:
            distance = torch.cdist(flat_points[q], flat_points, compute_mode="donot_use_mm_for_euclid_dist")
            near = (distance <= radius).view(-1, frames, per_frame)
            del distance
            matches = near.sum(dim=2).to(torch.float64)
            hit = near.gather(2, best[:, :, None]).squeeze(2)
        asked = (matches > 0) & (other != query_frame[q0:q0 + step, None])
        hits += (hit & asked).sum()
        queries += asked.sum()
        chance += (matches / frame_count.clamp(min=1))[asked].sum()
    n = int(queries)
    if n == 0:
        return RecallResult(math.nan, 0, math.nan)
    return RecallResult(int(hits) / n, n, float(chance) / n)
