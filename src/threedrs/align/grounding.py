"""The grounding head of Video-3D LLM / 3DRS (METHOD.md): score candidate boxes against the `<ground>` token.

- Object features: for each candidate box, the mean of the visual embeddings (as they enter the LLM, without the
  3D position encoding) of the visual tokens whose world point falls inside the box, plus the 3D position encoding
  of the box centre; a box that contains no token gets zeros plus its centre encoding.
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
    centre = position_encoding(boxes[:, :3].double(), torch.ones(len(boxes), dtype=torch.bool, device=boxes.device),
                               embeddings.shape[-1], spec, dtype=embeddings.dtype)
    return pooled + centre


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
