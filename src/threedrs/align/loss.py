"""Distillation losses between projected student tokens and teacher tokens, chosen by name.

All losses take `student` [B, S, h, w, C] (the alignment head's output), `teacher` [B, S, h, w, C] (cached
targets; detached here, so no gradient ever reaches them) and `mask` [B, S, h, w] bool (tokens with a valid
teacher target), and return PER-SAMPLE losses [B]: each sample's mean over its valid tokens only, never over
zero-filled ones. A sample with no valid token gets an exact 0 that still depends on `student` (so backward
works on every rank of a distributed run). Per-sample values let the task weigh every sample equally, which
makes a DDP run with the same global batch equal to a single-process run.

- `l2norm` (the paper's): mean over tokens of || s/|s| - t/|t| ||^2 = 2 - 2 cos(s, t);
- `cosine`: mean of 1 - cos(s, t);
- `cosine+l2norm`: the sum of the two (paper Table 13 reports about the same result);
- `infonce`: each student token against all valid teacher tokens of its own sample, the matching token being
  the positive, temperature `temperature`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("l2norm", "cosine", "cosine+l2norm", "infonce")


def _check(student: Tensor, teacher: Tensor, mask: Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"teacher: shape {tuple(teacher.shape)} does not match student {tuple(student.shape)}")
    if mask.shape != student.shape[:-1]:
        raise ValueError(f"mask: shape {tuple(mask.shape)} does not match tokens {tuple(student.shape[:-1])}")


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Per-sample mean of `values` [B, ...] over `mask` [B, ...] -> [B] (0 for a sample with an empty mask)."""
    m = mask.to(values.dtype).flatten(1)
    return (values.flatten(1) * m).sum(1) / m.sum(1).clamp(min=1)


def l2norm_loss(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Per-sample mean over valid tokens of the squared distance of the unit vectors (= 2 - 2 cos) -> [B]."""
    _check(student, teacher, mask)
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.detach().float(), dim=-1)
    return _masked_mean((s - t).pow(2).sum(-1), mask)


def cosine_loss(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Per-sample mean over valid tokens of 1 - cos(student, teacher) -> [B]."""
    _check(student, teacher, mask)
    cos = F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)
    return _masked_mean(1.0 - cos, mask)


def infonce_loss(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float = 0.1) -> Tensor:
    """Token-level InfoNCE within each sample -> [B]: logits = cos(s_i, t_j) / temperature over valid tokens j.

    Memory is O(N^2) per sample with N = S*h*w tokens (e.g. 32*196 = 6272 -> 39M logits): fine on a GPU at the
    paper's size, and the other losses are the default.
    """
    _check(student, teacher, mask)
    if temperature <= 0:
        raise ValueError(f"temperature: must be positive, got {temperature}")
    b = student.shape[0]
    s = F.normalize(student.float().reshape(b, -1, student.shape[-1]), dim=-1)
    t = F.normalize(teacher.detach().float().reshape(b, -1, teacher.shape[-1]), dim=-1)
    m = mask.reshape(b, -1)
    out = []
    for i in range(b):
        if not m[i].any():
            out.append(s[i].sum() * 0.0)
            continue
        si, ti = s[i][m[i]], t[i][m[i]]
        logits = si @ ti.T / temperature
        out.append(F.cross_entropy(logits, torch.arange(len(si), device=si.device)))
    return torch.stack(out)


def distillation_loss(name: str, temperature: float = 0.1) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The loss function called `name` (one of LOSSES)."""
    if name == "l2norm":
        return l2norm_loss
    if name == "cosine":
        return cosine_loss
    if name == "cosine+l2norm":
        return lambda s, t, m: cosine_loss(s, t, m) + l2norm_loss(s, t, m)
    if name == "infonce":
        return lambda s, t, m: infonce_loss(s, t, m, temperature)
    raise ValueError(f"loss: unknown alignment loss {name!r}; known: {', '.join(LOSSES)}, correspondence")
