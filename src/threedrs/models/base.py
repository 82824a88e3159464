"""The contract between threedrs and a Hugging Face MLLM: the `MLLMAdapter` base class and its records.

An adapter owns every model-specific piece of token bookkeeping (Qwen2-VL's 2x2 spatial merge, LLaVA's pooling and
newline tokens, InternVL's tiles and pixel shuffle) so that everything above it sees one shape: a per-frame grid of
visual tokens `[B, S, h, w, D]`, each token with the pixel box it covers in the ORIGINAL frame.

Frames enter as `[B, S, 3, H, W]` float in [0, 1] (all frames of a batch share H and W). The adapter resizes them
for its model; footprints are always given in original-frame pixels so that geometry (depth unprojection) and the
teacher never need to know the model's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class VisualTokens:
    """Visual-token hidden states of a batch, one grid per frame.

    hidden: layer index -> [B, S, h, w, D] hidden states at the visual-token positions (layer indices as asked for,
        e.g. -1 = the last layer AFTER the final norm, which is what 3DRS supervises).
    footprint: [S, h, w, 4] int64 pixel boxes (x0, y0, x1, y1), half-open, of each token in the original frame
        (identical for every sample of the batch, since frames share a size).
    """

    hidden: dict[int, Tensor]
    footprint: Tensor


@dataclass
class AdapterOutput:
    """What an adapter's forward returns.

    lm_loss: scalar mean cross-entropy over all supervised answer tokens of the batch (None when none).
    sample_lm_loss: [B] each sample's mean cross-entropy over its own answer tokens (0 for samples without any),
        so that a loss can weigh samples equally whatever their answer lengths (None when lm_loss is None).
    visual: the visual-token grids at the requested layers.
    last_hidden: [B, L, D] last-layer hidden states (after the final norm) of the whole sequence; the grounding head
        reads the `<ground>` token's state from it.
    input_ids: [B, L] the token ids the model saw (to find special tokens).
    """

    lm_loss: Tensor | None
    visual: VisualTokens
    last_hidden: Tensor
    input_ids: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
    sample_lm_loss: Tensor | None = None


class MLLMAdapter(nn.Module):
    """Base class of the per-family adapters (qwen2_vl.py, llava_onevision.py, ...).

    Subclasses hold the HF model as `self.model` and the tokenizer as `self.tokenizer`, and implement:
    - `token_grid(height, width) -> (h, w)`: the per-frame visual-token grid for frames of that size;
    - `footprints(height, width) -> [h, w, 4]` int64 pixel boxes of each token in the original frame;
    - `forward(frames, prompts, answers=None, layers=(-1,), visual_offsets=None, answer_loss=None)
      -> AdapterOutput` where `visual_offsets` [B, S, h, w, D] (e.g. the 3D position encoding) is ADDED to the
      visual embeddings before the LLM, and `answer_loss` (B bools) says which samples' answers carry the LM
      loss (grounding samples keep their `<ground>` answer in the input but train through the grounding head);
      `extras` holds "attention_mask" and "labels" [B, L] int64 of the built sequences;
    - `generate(frames, prompts, max_new_tokens, visual_offsets=None) -> list[str]` (greedy by default);
    - `hidden_size` (D of the LLM) and the parameter groups `parts() -> dict[str, list[nn.Parameter]]` with keys
      "llm", "vision", "projector" (for separate learning rates and freezing).
    """

    family: str = "base"
    model: nn.Module
    tokenizer: object

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        raise NotImplementedError

    def footprints(self, height: int, width: int) -> Tensor:
        raise NotImplementedError

    def parts(self) -> dict[str, list[nn.Parameter]]:
        raise NotImplementedError

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Add tokens (e.g. `<ground>`, `<coord>`) to the tokenizer, resize the embeddings, return their ids."""
        new = [t for t in tokens if t not in self.tokenizer.get_vocab()]
        if new:
            self.tokenizer.add_tokens(new, special_tokens=True)
            # real checkpoints pad their vocabulary (Qwen2-VL: 151936 rows for ~151665 tokens): never shrink it
            embed = self.model.get_input_embeddings()
            if len(self.tokenizer) > embed.num_embeddings:
                # on a meta-device model (a rank that receives its weights from rank 0) there is nothing to average
                self.model.resize_token_embeddings(len(self.tokenizer), pad_to_multiple_of=64,
                                                   mean_resizing=not embed.weight.is_meta)
        return [self.tokenizer.convert_tokens_to_ids(t) for t in tokens]


IGNORE_INDEX = -100  # label of positions that carry no LM loss


def drop_answer_loss(labels: Tensor, answer_loss: Sequence[bool] | None) -> Tensor:
    """Labels [B, L] with every position of the samples whose `answer_loss` is False set to IGNORE_INDEX."""
    if answer_loss is None:
        return labels
    if len(answer_loss) != labels.shape[0]:
        raise ValueError(f"answer_loss: expected {labels.shape[0]} flags, got {len(answer_loss)}")
    keep = torch.tensor([bool(a) for a in answer_loss], device=labels.device)
    return torch.where(keep[:, None], labels, torch.full_like(labels, IGNORE_INDEX))


def answer_cross_entropy(lm_head: nn.Module, last_hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy at the supervised positions only (lm_head never sees the rest: memory).

    last_hidden [B, L, D], labels [B, L] (IGNORE_INDEX = no loss). Returns (mean over all supervised tokens,
    per-sample means [B] with 0 for samples without supervised tokens). Raises if no token is supervised.
    """
    targets = labels[:, 1:]
    rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    if rows.numel() == 0:
        raise ValueError("answers: no answer tokens to supervise (empty answers and end marker)")
    logits = lm_head(last_hidden[rows, cols]).float()
    per_token = nn.functional.cross_entropy(logits, targets[rows, cols], reduction="none")
    b = labels.shape[0]
    sums = per_token.new_zeros(b).index_add(0, rows, per_token)
    counts = torch.bincount(rows, minlength=b).to(per_token.dtype)
    return per_token.mean(), sums / counts.clamp(min=1)


def check_frames(frames: Tensor) -> tuple[int, int, int, int]:
    """Validate a frame batch `[B, S, 3, H, W]` float in [0, 1]; return (B, S, H, W)."""
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames: expected [B, S, 3, H, W], got shape {tuple(frames.shape)}")
    if not torch.is_floating_point(frames):
        raise ValueError(f"frames: expected a float tensor in [0, 1], got {frames.dtype}")
    b, s, _, h, w = frames.shape
    return b, s, h, w


class token_embedding_offsets:
    """Context manager: add a per-sample vector to the input embedding of every occurrence of one token.

    Used for Scan2Cap's `<coord>` token, whose embedding gets the 3D position encoding of the box centre. Works for
    every family because it hooks the LLM's input-embedding module: `offsets` [B, D] is added at the positions
    where `input_ids == token_id` (samples without the token are untouched). During generation only the prefill
    call (the one that holds the whole prompt) contains the token, so decoding steps are unaffected.
    """

    def __init__(self, model: nn.Module, token_id: int, offsets: Tensor | None):
        self.embed = model.get_input_embeddings()
        self.token_id, self.offsets = token_id, offsets
        self.handle = None

    def _hook(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        ids = args[0]
        hit = ids == self.token_id
        if not hit.any() or ids.shape[0] != self.offsets.shape[0]:
            return output
        add = self.offsets.to(output.dtype)[:, None, :] * hit[..., None].to(output.dtype)
        return output + add

    def __enter__(self) -> token_embedding_offsets:
        if self.offsets is not None:
            self.handle = self.embed.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
