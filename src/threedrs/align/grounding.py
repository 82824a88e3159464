"""The grounding head of Video-3D LLM / 3DRS (METHOD.md): score candidate boxes against the `<ground>` token.

- Object features (`align.object_features`):
  - "point_in_box" (`object_features`): for each candidate box, the mean of the visual embeddings (as they enter the
    LLM, without the 3D position encoding) of the visual tokens whose world point falls inside the box, plus the 3D
    position encoding of the box centre; a box that contains no token gets zeros plus its centre encoding;
  - "pixel_share" (`pixel_share_features`, Video-3D LLM / 3DRS's `object_feature_type=patch14-pe` with 3DRS's
    `extract_object_feature`): the average of (a) the mean projector feature of the vision patches (27 x 27, before
    pooling) with at least half of their pixels in the box, plus the box centre's encoding, and (b) the mean
    last-layer LLM state of the pooled tokens (14 x 14) with at least an eighth of their block's pixels in the box;
    a part without any patch or token is zeros. Pixels and their world points follow pixel_blocks.py.
- A learned "no target" embedding is appended as the last candidate (used by Multi3DRefer's zero-target queries).
- Query and object MLPs: Linear(D, D), ReLU, LayerNorm(D), Linear(D, D); score = cos(query, object) (the
  temperature 0.07 divides the scores inside the loss and the Multi3DRefer rule, as V3D does).
- Loss: InfoNCE over the candidates with every target a positive, -log(sum_pos exp(s/t) / sum_all exp(s/t)); a
  zero-target query's positive is the no-target entry.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from threedrs.align.posenc import PositionEncodingRange, position_encoding
from threedrs.pixel_blocks import PixelGrid, cell_counts_per_grid

PATCH_SHARE = 0.5  # a vision patch belongs to a box when at least this share of its pixels is inside (patch14)
TOKEN_SHARE = 0.125  # a pooled token belongs to a box when at least this share of its block is inside


def _mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.LayerNorm(dim), nn.Linear(dim, dim))


def points_in_boxes(points: Tensor, valid: Tensor, boxes: Tensor) -> Tensor:
    """Which tokens lie in which box.

    points: [N, 3] token world points (metres); valid: [N] bool; boxes: [P, 6] `[cx, cy, cz, dx, dy, dz]`.
    Returns [P, N] bool (inclusive bounds).
    """
    lo = boxes[:, None, :3] - boxes[:, None, 3:] / 2
    hi = boxes[:, None, :3] + boxes[:, None, 3:] / 2
    p = points[None].to(boxes.dtype)
    return ((p >= lo) & (p <= hi)).all(-1) & valid[None]


def object_features(embeddings: Tensor, points: Tensor, valid: Tensor, boxes: Tensor,
                    spec: PositionEncodingRange = PositionEncodingRange()) -> Tensor:
    """Candidate features [P, D] from one sample's visual embeddings [N, D] (tokens flattened), points [N, 3],
    valid [N] and boxes [P, 6]: masked mean of the in-box tokens plus the box centre's 3D position encoding."""
    inside = points_in_boxes(points, valid, boxes).to(embeddings.dtype)  # [P, N]
    counts = inside.sum(1, keepdim=True).clamp(min=1)
    pooled = inside @ embeddings / counts
    return pooled + _centre_encoding(boxes, embeddings.shape[-1], spec, embeddings.dtype)


def _centre_encoding(boxes: Tensor, channels: int, spec: PositionEncodingRange, dtype: torch.dtype) -> Tensor:
    """[P, channels] position encoding of the box centres (boxes [P, 6])."""
    return position_encoding(boxes[:, :3].double(), torch.ones(len(boxes), dtype=torch.bool, device=boxes.device),
                             channels, spec, dtype=dtype)


def _masked_means(inside: Tensor, features: Tensor) -> Tensor:
    """Per-box mean [P, D] of features [N, D] over inside [P, N] bool (zeros for a box without any)."""
    weights = inside.to(features.dtype)
    return weights @ features / weights.sum(1, keepdim=True).clamp(min=1)


def pixel_share_features(patches: Tensor, states: Tensor, pixels: Tensor, boxes: Tensor, grid: PixelGrid,
                         spec: PositionEncodingRange = PositionEncodingRange()) -> Tensor:
    """Candidate features [P, D] by pixel shares (module docstring, "pixel_share") of one sample.

    patches: [S, n, n, D] projector features before pooling; states: [S, g, g, D] last-layer LLM states of the
    pooled tokens; pixels: [S, >= n p, >= n p, 3] world point of each vision-input pixel (metres); boxes: [P, 6].
    The shares are counted as their code counts them: int(p * p * 0.5) and int(b * b * 0.125) pixels (98 and 91).
    """
    d = patches.shape[-1]
    patch_counts, token_counts = cell_counts_per_grid(pixels, boxes, [(grid.patch, grid.patches),
                                                                     (grid.block, grid.grid)])
    patch_in = patch_counts >= int(grid.patch ** 2 * PATCH_SHARE)
    token_in = token_counts >= int(grid.block ** 2 * TOKEN_SHARE)
    from_patches = _masked_means(patch_in.flatten(1), patches.reshape(-1, d))
    from_patches = from_patches + _centre_encoding(boxes, d, spec, patches.dtype)
    from_states = _masked_means(token_in.flatten(1), states.reshape(-1, d).to(patches.dtype))
    return (from_patches + from_states) / 2


class GroundingHead(nn.Module):
    """Scores P candidate objects (+1 no-target entry) for a grounding query.

    forward(query [D], objects [P, D]) -> scores [P + 1] cosine similarities in [-1, 1]; the last entry is the
    learned no-target candidate.
    """

    def __init__(self, dim: int, temperature: float = 0.07):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature: must be positive, got {temperature}")
        self.temperature = temperature
        self.query_mlp = _mlp(dim)
        self.object_mlp = _mlp(dim)
        self.no_target = nn.Parameter(torch.randn(dim) * dim ** -0.5)

    def forward(self, query: Tensor, objects: Tensor) -> Tensor:
        candidates = torch.cat([objects, self.no_target[None].to(objects.dtype)], dim=0)
        q = nn.functional.normalize(self.query_mlp(query), dim=-1)
        o = nn.functional.normalize(self.object_mlp(candidates), dim=-1)
        return o @ q

    def loss(self, scores: Tensor, targets: list[int]) -> Tensor:
        """InfoNCE with every index in `targets` a positive (empty = the no-target entry, the last score)."""
        positives = targets if targets else [scores.shape[0] - 1]
        if max(positives) >= scores.shape[0] - 1 and targets:
            raise ValueError(f"targets: index {max(positives)} out of range for {scores.shape[0] - 1} candidates")
        logits = scores / self.temperature
        return torch.logsumexp(logits, 0) - torch.logsumexp(logits[positives], 0)
