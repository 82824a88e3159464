"""The collated batch that training, evaluation and AlignTask share, and `collate` that builds it.

A plain record of tensors (shapes in `Batch`); it lives in the data layer so the dataset can build it without
knowing the model side, and align/task.py, train.py and evaluate.py read it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from threedrs.data.tasks import Sample


@dataclass
class Batch:
    """A collated training or evaluation batch of B samples, each with the S frames of its scene.

    samples: the B benchmark samples (ids, tasks, prompts and answers are read from them).
    frames: [B, S, 3, H, W] float in [0, 1].  token_points: [B, S, h, w, 3] world points (metres) of the visual
    tokens, token_valid: [B, S, h, w] bool (token has valid depth).  teacher: [B, S, h, w, C] cached teacher
    targets (None when no teacher), teacher_valid: [B, S, h, w] bool.  boxes: per sample the candidate boxes
    [P_i, 6] (ground truth in training, proposals at evaluation).  coord_boxes: [B, 6] Scan2Cap prompt boxes
    (NaN rows for other samples).  target_ids: indices into that sample's `boxes` of the grounding targets.
    first_view: [B, S] bool, False for a frame that repeats an earlier one (uniform sampling of a short scan).
    posenc_points: [B, S, h, w, 3] the points the position encoding reads under align.posenc_points=pixel_blocks
    (None otherwise); pixel_points: [B, S, c, c, 3] the world point of every vision-input pixel the patches cover,
    for align.object_features=pixel_share (None otherwise; data/dataset.py).
    """

    samples: list[Sample]
    frames: Tensor
    token_points: Tensor
    token_valid: Tensor
    boxes: list[Tensor]
    target_ids: list[list[int]]
    coord_boxes: Tensor
    first_view: Tensor
    teacher: Tensor | None = None
    teacher_valid: Tensor | None = None
    posenc_points: Tensor | None = None
    pixel_points: Tensor | None = None

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    @property
    def tasks(self) -> list[str]:
        return [s.task for s in self.samples]

    @property
    def scene_ids(self) -> list[str]:
        return [s.scene_id for s in self.samples]

    @property
    def prompts(self) -> list[str]:
        return [s.prompt for s in self.samples]

    @property
    def answers(self) -> list[str]:
        return [s.answer for s in self.samples]

    @property
    def pair_valid(self) -> Tensor:
        """[B, S, h, w] tokens that may form correspondence pairs: valid depth, and a frame's first copy only."""
        return self.token_valid & self.first_view[:, :, None, None]

    def to(self, device: torch.device | str) -> Batch:
        """The batch with every tensor moved to `device` (teacher targets become float32)."""
        return replace(
            self, frames=self.frames.to(device), token_points=self.token_points.to(device),
            token_valid=self.token_valid.to(device), boxes=[b.to(device) for b in self.boxes],
            coord_boxes=self.coord_boxes.to(device), first_view=self.first_view.to(device),
            teacher=None if self.teacher is None else self.teacher.to(device, torch.float32),
            teacher_valid=None if self.teacher_valid is None else self.teacher_valid.to(device),
            posenc_points=None if self.posenc_points is None else self.posenc_points.to(device),
            pixel_points=None if self.pixel_points is None else self.pixel_points.to(device))


def collate(items: list[dict]):
    """Stack the items of `SceneSampleDataset` (data/dataset.py) into a Batch."""
    samples = [it["sample"] for it in items]
    teacher = None
    if "teacher" in items[0]:
        teacher = torch.stack([it["teacher"] for it in items])
        teacher_valid = torch.stack([it["teacher_valid"] for it in items]) & torch.stack(
            [it["token_valid"] for it in items])
    return Batch(samples=samples, frames=torch.stack([it["frames"] for it in items]),
                 token_points=torch.stack([it["token_points"] for it in items]),
                 token_valid=torch.stack([it["token_valid"] for it in items]),
                 boxes=[it["boxes"] for it in items], target_ids=[it["target_ids"] for it in items],
                 coord_boxes=torch.stack([it["coord_box"] for it in items]),
                 first_view=torch.stack([it["first_view"] for it in items]), teacher=teacher,
                 teacher_valid=teacher_valid if teacher is not None else None,
                 posenc_points=_stacked(items, "posenc_points"), pixel_points=_stacked(items, "pixel_points"))


def _stacked(items: list[dict], key: str) -> Tensor | None:
    return torch.stack([it[key] for it in items]) if key in items[0] else None
