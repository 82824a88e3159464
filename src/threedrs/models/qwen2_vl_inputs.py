"""Input building for the Qwen2-VL / Qwen2.5-VL adapter: pixels, ChatML token layout, padding, footprints.

Both families share one token layout. Every frame of a sample is one IMAGE (never a video: Qwen's video path merges
pairs of frames temporally, which would break per-frame tokens), written as
`<|vision_start|>` + (h*w) `<|image_pad|>` + `<|vision_end|>`, where (h, w) is the MERGED token grid of the frame.

Pixels: frames are resized here (torch bicubic with anti-aliasing on the float frame, clamped to [0, 1]) to a fixed
size that is a multiple of patch_size * merge_size, then normalised and patchified exactly like transformers'
`Qwen2VLImageProcessorPil` with `do_resize=False, do_rescale=False` (tests check equality on one image). Doing it
in torch keeps the frames on their device and avoids a CPU/PIL round trip per frame; the resize itself differs from
the processor's PIL bicubic on uint8 by interpolation rounding only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import IGNORE_INDEX


# Qwen's special tokens, in the order the tiny offline tokenizer gives them ids.
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")


@dataclass(frozen=True)
class PixelSpec:
    """How frames become Qwen2-VL pixel patches.

    image_size: (height, width) in pixels every frame is resized to; multiples of patch_size * merge_size.
    patch_size: ViT patch side in pixels; merge_size: spatial merge factor (2x2 patches -> one LLM token);
    temporal_patch_size: frames per temporal patch (an image is repeated to fill it).
    mean, std: per-channel normalisation of [0, 1] RGB values.
    """

    image_size: tuple[int, int]
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def token_pixels(self) -> int:
        """Side in resized pixels of one merged token (patch_size * merge_size)."""
        return self.patch_size * self.merge_size

    @property
    def grid(self) -> tuple[int, int]:
        """Merged token grid (h, w) of one frame."""
        return self.image_size[0] // self.token_pixels, self.image_size[1] // self.token_pixels


def check_image_size(image_size: Sequence[int], token_pixels: int) -> tuple[int, int]:
    """Validate a (height, width) model input size: two positive multiples of `token_pixels`."""
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) <= 0 or any(v % token_pixels for v in size):
        raise ValueError(f"image_size: expected (height, width), positive multiples of patch_size*merge_size="
                         f"{token_pixels}, got {tuple(image_size)}")
    return size[0], size[1]


def resize_frames(frames: Tensor, spec: PixelSpec) -> Tensor:
    """Resize frames [N, 3, H, W] float in [0, 1] to [N, 3, *spec.image_size] float32 in [0, 1]."""
    frames = frames.float()
    if tuple(frames.shape[-2:]) == spec.image_size:
        return frames
    out = F.interpolate(frames, size=spec.image_size, mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0.0, 1.0)


def patchify(images: Tensor, spec: PixelSpec) -> tuple[Tensor, Tensor]:
    """Normalise and patchify resized images like `Qwen2VLImageProcessorPil`.

    images: [N, 3, Hr, Wr] float in [0, 1] at `spec.image_size`.
    Returns pixel_values [N * gh * gw, 3 * T * p * p] float32 (gh, gw = patch grid; patches ordered per image by
    merged-token row, merged-token col, then the merge_size x merge_size patches inside it, so that consecutive
    merge_size**2 rows form one LLM token in row-major order) and image_grid_thw [N, 3] int64 = (1, gh, gw).
    """
    n, c, height, width = images.shape
    p, m, t = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    mean = torch.tensor(spec.mean, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    std = torch.tensor(spec.std, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    x = (images - mean) / std
    gh, gw = height // p, width // p
    x = x.reshape(n, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # n, gh/m, gw/m, mh, mw, c, ph, pw
    x = x.unsqueeze(6).expand(*x.shape[:6], t, p, p)  # repeat the image over the temporal patch
    pixel_values = x.reshape(n * gh * gw, c * t * p * p)
    grid = torch.tensor([1, gh, gw], dtype=torch.long, device=images.device).expand(n, 3).contiguous()
    return pixel_values, grid


def footprint_boxes(height: int, width: int, grid: tuple[int, int]) -> Tensor:
    """Pixel box of each merged token in an original frame of `height` x `width` pixels.

    The token (r, c) covers rows [r, r+1) * Hr/h of the resized frame, i.e. [r, r+1) * height/h of the original;
    box edges are those fractions rounded to the nearest pixel, so the half-open boxes tile the frame exactly.
    Returns [h, w, 4] int64 (x0, y0, x1, y1).
    """
    gh, gw = grid
    if height < gh or width < gw:
        raise ValueError(f"frame size: {height}x{width} pixels is smaller than the {gh}x{gw} token grid")
    ys = (2 * torch.arange(gh + 1) * height + gh) // (2 * gh)
    xs = (2 * torch.arange(gw + 1) * width + gw) // (2 * gw)
    y0, x0 = torch.meshgrid(ys[:-1], xs[:-1], indexing="ij")
    y1, x1 = torch.meshgrid(ys[1:], xs[1:], indexing="ij")
    return torch.stack([x0, y0, x1, y1], dim=-1).long()


@dataclass(frozen=True)
class QwenTokenIds:
    """Ids of the special tokens the ChatML layout uses (from the model config and the tokenizer)."""

    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    image_pad: int
    video_pad: int
    pad: int


@dataclass
class QwenBatch:
    """A padded batch of token sequences.

    input_ids, attention_mask (1 = real token), labels (IGNORE_INDEX except answer tokens and their closing
    `<|im_end|>`), mm_token_type_ids (1 at `<|image_pad|>`, 0 elsewhere): all [B, L] int64.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    mm_token_type_ids: Tensor


class ChatLayout:
    """Builds Qwen ChatML token sequences with the frames' image tokens expanded.

    Sequence: `<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n` + per frame
    `<|vision_start|>` + h*w `<|image_pad|>` + `<|vision_end|>` + `{prompt}<|im_end|>\\n<|im_start|>assistant\\n`
    + (training) `{answer}<|im_end|>`. Text pieces are tokenised separately (special tokens such as `<ground>`
    inside the prompt stay single ids) and concatenated, so every position is known without offsets.
    """

    def __init__(self, tokenizer: object, ids: QwenTokenIds, system_prompt: str = "You are a helpful assistant."):
        self.tokenizer = tokenizer
        self.ids = ids
        self.system_prompt = system_prompt

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def sequence(self, num_frames: int, tokens_per_frame: int, prompt: str,
                 answer: str | None) -> tuple[list[int], list[int]]:
        """Token ids and labels of one sample (labels cover the answer and its `<|im_end|>` only)."""
        ids = self.ids
        prefix = self._encode(f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n<|im_start|>user\n")
        frame = [ids.vision_start] + [ids.image_pad] * tokens_per_frame + [ids.vision_end]
        suffix = self._encode(f"{prompt}<|im_end|>\n<|im_start|>assistant\n")
        tokens = prefix + frame * num_frames + suffix
        labels = [IGNORE_INDEX] * len(tokens)
        if answer is not None:
            target = self._encode(answer) + [ids.im_end]
            tokens, labels = tokens + target, labels + target
        placeholders = sum(t in (ids.image_pad, ids.video_pad) for t in tokens)
        if placeholders != num_frames * tokens_per_frame:
            raise ValueError("prompts/answers: text must not contain the image or video placeholder tokens")
        return tokens, labels

    def batch(self, num_frames: int, tokens_per_frame: int, prompts: Sequence[str],
              answers: Sequence[str] | None, padding_side: str, device: torch.device) -> QwenBatch:
        """Pad the samples' sequences into a `QwenBatch` ("right" for training, "left" for generation)."""
        seqs = [self.sequence(num_frames, tokens_per_frame, p, None if answers is None else answers[i])
                for i, p in enumerate(prompts)]
        length = max(len(t) for t, _ in seqs)
        rows: list[tuple[list[int], list[int], list[int]]] = []
        for tokens, labels in seqs:
            pad = length - len(tokens)
            parts = (tokens, labels, [1] * len(tokens))
            fill = ([self.ids.pad] * pad, [IGNORE_INDEX] * pad, [0] * pad)
            if padding_side == "right":
                rows.append(tuple(a + f for a, f in zip(parts, fill)))
            else:
                rows.append(tuple(f + a for a, f in zip(parts, fill)))
        input_ids = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)
        return QwenBatch(input_ids=input_ids,
                         labels=torch.tensor([r[1] for r in rows], dtype=torch.long, device=device),
                         attention_mask=torch.tensor([r[2] for r in rows], dtype=torch.long, device=device),
                         mm_token_type_ids=(input_ids == self.ids.image_pad).long())
