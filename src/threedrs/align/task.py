"""AlignTask: the one module that holds adapter, heads and losses; what DDP / FSDP / DeepSpeed wrap.

`forward(batch) -> {"loss", "lm_loss", "ground_loss", "align_loss", ...}`; the training loop only does backward,
step, log and checkpoint. Per sample the task loss is the text cross-entropy, or the grounding InfoNCE for
grounding samples (ScanRefer, Multi3DRefer); the 3DRS alignment loss (weight `align.weight`) is added on top for
every sample (METHOD.md). The 3D position encoding of the visual tokens and of Scan2Cap's `<coord>` box is
injected through the adapter, so no family needs a fork of transformers.

Two settings reproduce Video-3D LLM / 3DRS's own rules (pixel_blocks.py): `posenc_points="pixel_blocks"` encodes
each token at the mean world point of its pixel block (the batch's `posenc_points`, every token encoded, as theirs
are) instead of its footprint's valid-depth mean; `object_features="pixel_share"` builds the grounding candidates
from the projector's patch features and the last-layer token states by pixel shares (align/grounding.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from threedrs.align.correspondence_loss import correspondence_loss
from threedrs.align.grounding import GroundingHead, object_features, pixel_share_features
from threedrs.align.head import AlignmentHead
from threedrs.align.loss import distillation_loss
from threedrs.align.posenc import position_encoding
from threedrs.config import ExperimentConfig
from threedrs.data.batch import Batch
from threedrs.data.tasks import COORD_TOKEN, GROUND_TOKEN, GROUNDING_TASKS
from threedrs.models.base import MLLMAdapter, token_embedding_offsets


class AlignTask(nn.Module):
    """Adapter + alignment heads + grounding head + losses.

    adapter: the MLLM; teacher_dim: teacher channels (None = no distillation head); loss: "l2norm" | "cosine" |
    "cosine+l2norm" | "infonce" | "correspondence" | "none" (the baseline); layers: LLM layers to supervise
    (-1 = last, after the final norm); posenc: add the 3D position encoding to the visual embeddings;
    posenc_points: "footprint" | "pixel_blocks" and object_features: "point_in_box" | "pixel_share" (module
    docstring; the Video-3D LLM rules need an adapter with `pixel_grid()`, LLaVA-OneVision).
    """

    def __init__(self, adapter: MLLMAdapter, teacher_dim: int | None, loss: str = "l2norm", weight: float = 1.0,
                 layers: tuple[int, ...] = (-1,), posenc: bool = True, infonce_temperature: float = 0.1,
                 grounding_temperature: float = 0.07, correspondence_voxel: float = 0.1,
                 posenc_points: str = "footprint", object_features: str = "point_in_box"):
        super().__init__()
        self.adapter = adapter
        self.loss_name, self.weight, self.layers, self.posenc = loss, weight, tuple(layers), posenc
        self.correspondence_voxel = correspondence_voxel
        if posenc_points not in ("footprint", "pixel_blocks"):
            raise ValueError(f"posenc_points: expected footprint or pixel_blocks, got {posenc_points!r}")
        if object_features not in ("point_in_box", "pixel_share"):
            raise ValueError(f"object_features: expected point_in_box or pixel_share, got {object_features!r}")
        if posenc_points == "pixel_blocks" or object_features == "pixel_share":
            if not hasattr(adapter, "pixel_grid"):
                raise ValueError(f"{posenc_points} / {object_features}: the {adapter.family} adapter has no pixel "
                                 "grid (Video-3D LLM's rules are for llava_onevision)")
        self.posenc_points, self.object_features = posenc_points, object_features
        # what the adapter's forward must also return for `candidate_features` (pixel_share: the patch features)
        self.adapter_options = {"patch_features": True} if object_features == "pixel_share" else {}
        dim = adapter.hidden_size
        self.ground_id, self.coord_id = adapter.add_special_tokens([GROUND_TOKEN, COORD_TOKEN])
        self.grounding = GroundingHead(dim, grounding_temperature)
        self.distill = None
        self.heads = nn.ModuleDict()
        if loss not in ("none", "correspondence"):
            if teacher_dim is None:
                raise ValueError(f"align.loss={loss} needs a teacher (teacher features and their channel count)")
            self.distill = distillation_loss(loss, infonce_temperature)
            self.heads = nn.ModuleDict({str(layer): AlignmentHead(dim, teacher_dim) for layer in self.layers})
        # everything added follows the model (its dtype in evaluation, its device; meta on a rank that receives the
        # weights from rank 0); the new <ground>/<coord> embedding rows already do (resize_token_embeddings)
        weight = adapter.model.get_input_embeddings().weight
        self.grounding.to(weight.device, weight.dtype)
        self.heads.to(weight.device, weight.dtype)

    @classmethod
    def from_config(cls, adapter: MLLMAdapter, teacher_dim: int | None, cfg: ExperimentConfig,
                    loss: str | None = None) -> AlignTask:
        """The task `cfg` describes (align.*, correspondence.voxel) around `adapter`; `loss` replaces align.loss
        (evaluating a checkpoint without alignment heads: "none")."""
        a = cfg.align
        return cls(adapter, teacher_dim, loss=a.loss if loss is None else loss, weight=a.weight, layers=tuple(a.layers),
                   posenc=a.posenc, infonce_temperature=a.infonce_temperature,
                   grounding_temperature=a.grounding_temperature, correspondence_voxel=cfg.correspondence.voxel,
                   posenc_points=a.posenc_points, object_features=a.object_features)

    @property
    def dtype(self) -> torch.dtype:
        """The model's parameter dtype (the position encodings are produced in it)."""
        return self.adapter.model.get_input_embeddings().weight.dtype

    def visual_offsets(self, batch: Batch) -> Tensor | None:
        """[B, S, h, w, D] 3D position encoding of the visual tokens, or None when disabled."""
        if not self.posenc:
            return None
        if self.posenc_points == "pixel_blocks":
            if batch.posenc_points is None:
                raise ValueError("align.posenc_points=pixel_blocks: the batch has no posenc_points (build the dataset "
                                 "with the adapter's pixel grid, data/dataset.py pixel_options)")
            points = batch.posenc_points
            return position_encoding(points, torch.isfinite(points).all(-1), self.adapter.hidden_size,
                                     dtype=self.dtype)
        return position_encoding(batch.token_points, batch.token_valid, self.adapter.hidden_size, dtype=self.dtype)

    def coord_offsets(self, batch: Batch) -> Tensor | None:
        """[B, D] position encoding of each Scan2Cap box centre (zeros for samples without a box)."""
        has = torch.isfinite(batch.coord_boxes).all(-1)
        if not has.any():
            return None
        centres = torch.where(has[:, None], batch.coord_boxes[:, :3], torch.zeros_like(batch.coord_boxes[:, :3]))
        return position_encoding(centres, has, self.adapter.hidden_size, dtype=self.dtype)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Losses of a batch: "loss" = mean over samples of (task loss + weight * alignment loss), so every sample
        weighs the same on one process or many; "lm_loss" / "ground_loss" are the means over the text / grounding
        samples of the batch (0 when there are none) and "align_loss" the mean over all samples."""
        offsets = self.visual_offsets(batch)
        grounding = [t in GROUNDING_TASKS for t in batch.tasks]
        layers = tuple(dict.fromkeys((0, -1) + self.layers))
        with token_embedding_offsets(self.adapter.model, self.coord_id, self.coord_offsets(batch)):
            out = self.adapter(batch.frames, batch.prompts, batch.answers, layers=layers, visual_offsets=offsets,
                               answer_loss=[not g for g in grounding], **self.adapter_options)
        # keeps every term, and the grounding head, in the graph even when unused (DDP and FSDP need it)
        zero = out.last_hidden.sum() * 0.0 + sum(p.sum() for p in self.grounding.parameters()) * 0.0
        task_terms = [zero] * len(grounding)
        if out.sample_lm_loss is not None:
            task_terms = [zero if g else out.sample_lm_loss[i] for i, g in enumerate(grounding)]
        for i, g in enumerate(grounding):
            if g:
                scores = self.grounding(self.ground_query(out, i), self.candidate_features(batch, out, offsets, i))
                task_terms[i] = self.grounding.loss(scores, batch.target_ids[i])
        task = torch.stack(task_terms)
        align = self._align_loss(batch, out.visual.hidden) if self.loss_name != "none" else task * 0.0
        is_ground = torch.tensor(grounding, device=task.device)
        return {"loss": (task + self.weight * align).mean(),
                "lm_loss": task[~is_ground].mean() if (~is_ground).any() else zero,
                "ground_loss": task[is_ground].mean() if is_ground.any() else zero,
                "align_loss": align.mean()}

    def ground_query(self, out, b: int) -> Tensor:
        """Last-layer hidden state [D] at sample b's `<ground>` token."""
        pos = (out.input_ids[b] == self.ground_id).nonzero()
        if len(pos) == 0:
            raise ValueError("grounding sample without a <ground> token in its input")
        return out.last_hidden[b, pos[-1, 0]]

    def candidate_features(self, batch: Batch, out, offsets: Tensor | None, b: int) -> Tensor:
        """[P, D] object features of sample b's candidate boxes (align/grounding.py, by `object_features`)."""
        if self.object_features == "pixel_share":
            if batch.pixel_points is None or "patch_features" not in out.extras:
                raise ValueError("align.object_features=pixel_share: needs the batch's pixel_points and the adapter's "
                                 "patch features (data/dataset.py pixel_options; forward(**task.adapter_options))")
            boxes = batch.boxes[b].to(out.last_hidden.device)
            return pixel_share_features(out.extras["patch_features"][b], out.visual.hidden[-1][b],
                                        batch.pixel_points[b], boxes, self.adapter.pixel_grid())
        emb = out.visual.hidden[0][b]  # [S, h, w, D] (includes the position encoding when enabled)
        if offsets is not None:
            emb = emb - offsets[b].to(emb.dtype)
        d = emb.shape[-1]
        boxes = batch.boxes[b].to(emb.device)
        return object_features(emb.reshape(-1, d), batch.token_points[b].reshape(-1, 3),
                               batch.token_valid[b].reshape(-1), boxes)

    def _align_loss(self, batch: Batch, hidden: dict[int, Tensor]) -> Tensor:
        """Per-sample alignment loss [B], averaged over the supervised layers."""
        terms = []
        for layer in self.layers:
            h = hidden[layer]
            if self.loss_name == "correspondence":
                terms.append(correspondence_loss(h, batch.token_points, batch.pair_valid, self.correspondence_voxel))
                continue
            if batch.teacher is None:
                raise ValueError(f"align.loss={self.loss_name} needs teacher features in the batch")
            mask = batch.teacher_valid if batch.teacher_valid is not None else torch.ones_like(batch.token_valid)
            student = self.heads[str(layer)](h)
            terms.append(self.distill(student, batch.teacher.to(student.dtype), mask))
        return torch.stack(terms).mean(0)
