"""The paper's teacher-free ablation (Sec. 2.2.1): a multi-view correspondence loss on the visual tokens.

With the voxels of the 3D-awareness score (0.1 m), features of tokens from DIFFERENT frames in the same voxel are
pulled together (mean 1 - cos over those pairs) and pairs of tokens in different voxels are pushed apart (mean
cos over those pairs). Both means are exact and linear in the number of tokens, computed from sums of unit
features (the identity of metrics/correspondence.py), so the loss never builds an [N, N] similarity matrix and
is differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from threedrs.geometry import voxel_keys


def _sample_terms(features: Tensor, points: Tensor, valid: Tensor, voxel: float) -> tuple[Tensor, Tensor] | None:
    """(mean cos over same-voxel cross-frame pairs, mean cos over different-voxel pairs) of one sample.

    features [S, h, w, D], points [S, h, w, 3], valid [S, h, w]; None when either pair set is empty.
    """
    s, h, w, d = features.shape
    idx = valid.reshape(-1).nonzero().squeeze(1)
    if idx.numel() < 2:
        return None
    f = F.normalize(features.reshape(-1, d)[idx].float(), dim=-1)
    _, vox = torch.unique(voxel_keys(points.reshape(-1, 3)[idx], voxel), return_inverse=True)
    frame = idx // (h * w)
    _, group = torch.unique(vox * s + frame, return_inverse=True)
    n_vox = int(vox.max()) + 1
    vox_sum = torch.zeros(n_vox, d, dtype=f.dtype, device=f.device).index_add(0, vox, f)
    grp_sum = torch.zeros(int(group.max()) + 1, d, dtype=f.dtype, device=f.device).index_add(0, group, f)
    n_v = torch.bincount(vox).double()
    n_g = torch.bincount(group).double()
    total = f.sum(0)
    same_vox_dots = vox_sum.pow(2).sum()  # includes self pairs and same-frame pairs
    pos_dots = same_vox_dots - grp_sum.pow(2).sum()
    pos_pairs = float((n_v.square().sum() - n_g.square().sum()).item())
    neg_dots = total.pow(2).sum() - same_vox_dots
    neg_pairs = float((n_v.sum().square() - n_v.square().sum()).item())
    if pos_pairs == 0 or neg_pairs == 0:
        return None
    return pos_dots / pos_pairs, neg_dots / neg_pairs


def correspondence_loss(features: Tensor, points: Tensor, valid: Tensor, voxel: float = 0.1) -> Tensor:
    """Per-sample (1 - mean positive cos) + mean negative cos -> [B].

    features: [B, S, h, w, D] student hidden states; points: [B, S, h, w, 3] token world points (metres);
    valid: [B, S, h, w] bool. A sample without both positive and negative pairs gets an exact 0 connected to
    `features`.
    """
    if features.shape[:-1] != valid.shape or points.shape[:-1] != valid.shape:
        raise ValueError(f"features {tuple(features.shape)}, points {tuple(points.shape)} and valid "
                         f"{tuple(valid.shape)} must share [B, S, h, w]")
    terms = []
    for b in range(features.shape[0]):
        t = _sample_terms(features[b], points[b], valid[b], voxel)
        terms.append(features[b].sum() * 0.0 if t is None else (1.0 - t[0] + t[1]).to(features.dtype))
    return torch.stack(terms)
