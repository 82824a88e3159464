"""What LLaVA-OneVision and LLaVA-NeXT-Video share: frames enter as ONE video per sample.

Both families encode a video frame by frame (vision tower on each frame, no any-res tiling), pool each frame's
patch grid and write the result into a run of `<video>` placeholder tokens, which is what they are trained to do with
many frames and gives one clean grid per frame. The subclasses differ in the pooling (OneVision: bilinear to
ceil(n/2) after the projector; NeXT-Video: 2x2 average pooling before the projector) and in the vision tower
(SigLIP / CLIP). The model's own `get_video_features` gives the grid in (frame, row, col) order.

Newline embeddings (`newline`, the learned `image_newline` vector of the checkpoint):
- "video": ONE after the last frame (transformers' LLaVA-OneVision video layout; S*h*w + 1 tokens);
- "grid": one after EACH ROW of each frame (the layout LLaVA-Video-7B-Qwen2 is trained with in LLaVA-NeXT's
  `mm_newline_position: grid`, which Video-3D LLM and 3DRS use: h x (w+1) tokens per frame, 14 x 15 at 384 px);
- "none": no newline (transformers' LLaVA-NeXT-Video video layout).
The `<video>` run is the grid and newline tokens in that order; newlines are never supervised and get no 3D offset.

`forward(..., patch_features=True)` also returns the projector's features of every vision patch BEFORE pooling,
`extras["patch_features"]` [B, S, n, n, D] (27 x 27 at 384 / 14): what Video-3D LLM / 3DRS's grounding head pools
per object (align.object_features=pixel_share); asked for per call, kept by nobody but the caller.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from threedrs.models.placeholder import CHATML_TOKENS, PlaceholderAdapter, tiny_text_config
from threedrs.models.prompt import PromptBuilder, VisualLayout
from threedrs.models.tiny import offline_tokenizer

LLAVA_TOKENS = CHATML_TOKENS + ["<image>", "<video>"]
NEWLINES = ("grid", "video", "none")


class LlavaVideoAdapter(PlaceholderAdapter):
    """Common base of the LLaVA video adapters (see the module docstring); not used directly.

    Subclasses set `model_type`, `model_class`, `config_class`, `processor_class`, `default_newline`,
    `default_mean` / `default_std` and implement `token_grid`, `_edges` and `_tiny_vision_config`.
    newline: "grid" | "video" | "none" (module docstring); None = the family's transformers layout. resize:
    "antialias" | "pil_bicubic" (placeholder.py).
    """

    config_class: type  # the HF config class
    default_newline: str = "none"  # the newline layout of transformers' own video path for this family
    # newline embeddings transformers' get_video_features appends after the grid whatever `newline` is (dropped here)
    model_newlines: int = 0
    default_mean: tuple[float, float, float]  # image mean / std of the family's vision tower (tiny models)
    default_std: tuple[float, float, float]

    def __init__(self, model: nn.Module, tokenizer, image_processor, prompt: PromptBuilder | None = None,
                 newline: str | None = None, resize: str = "antialias"):
        newline = newline or self.default_newline
        if newline not in NEWLINES:
            raise ValueError(f"newline: expected one of {', '.join(NEWLINES)}, got {newline!r}")
        super().__init__(model, tokenizer, image_processor, prompt, resize)
        self.newline = newline
        self.video_token_id = int(model.config.video_token_id)

    @classmethod
    def check_tokenizer(cls, tokenizer, config, where: str) -> None:
        video_id = int(config.video_token_id)
        if "<video>" not in tokenizer.get_vocab():
            raise ValueError(f"{where}: no '<video>' token (the {cls.family} video placeholder)")
        if tokenizer.convert_tokens_to_ids("<video>") != video_id:
            raise ValueError(f"{where}: '<video>' has id {tokenizer.convert_tokens_to_ids('<video>')}, but the "
                             f"model config's video_token_id is {video_id}")

    @property
    def _frame_side(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def _patches(self) -> int:
        """Patches per side of one frame (vision image_size // patch_size)."""
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def _visual_layout(self, num_frames: int) -> VisualLayout:
        """`<video>` x (grid + newline tokens), the grid mask per `newline` (module docstring)."""
        h, w = self.token_grid(1, 1)
        if self.newline == "grid":
            mask = ([True] * w + [False]) * (num_frames * h)
        else:
            mask = [True] * (num_frames * h * w) + [False] * (self.newline == "video")
        return VisualLayout(items=[{"type": "video"}], expansions=["<video>" * len(mask)],
                            token_id=self.video_token_id, grid_mask=mask)

    def _encode(self, pixels: Tensor, patch_features: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Grid [B, S, h, w, D] from transformers' `get_video_features` (exactly S*h*w grid tokens, then its own
        `model_newlines`, dropped) and the newline embeddings [B, n, D] of this layout (the checkpoint's
        `image_newline`, gradients flow to it); with `patch_features` the projector's output before pooling
        [B, S, n, n, D] (module docstring), else None."""
        b, s = pixels.shape[:2]
        h, w = self.token_grid(1, 1)
        kept: list[Tensor] = []
        hook = None
        if patch_features:  # the projector's output [B*S, n*n, D], before the pooling that follows it
            hook = self.model.model.multi_modal_projector.register_forward_hook(lambda m, a, out: kept.append(out))
        try:
            feats = self.model.model.get_video_features(pixel_values_videos=pixels, return_dict=True).pooler_output
        finally:
            if hook is not None:
                hook.remove()
        patches = kept[0].reshape(b, s, self._patches, self._patches, -1) if kept else None
        if feats.shape[1] != s * h * w + self.model_newlines:
            raise RuntimeError(f"video features: expected {s * h * w} grid tokens per sample for {s} frames of "
                               f"{h}x{w} and {self.model_newlines} newline(s) of the model's own, the model returned "
                               f"{feats.shape[1]}")
        grid = feats[:, :s * h * w].reshape(b, s, h, w, -1)
        count = {"grid": s * h, "video": 1, "none": 0}[self.newline]
        newline = self.model.model.image_newline.to(grid.dtype)
        return grid, newline.expand(b, count, -1), patches

    def placeholder_ids(self) -> list[int]:
        """`<image>` and `<video>` ids (generation never emits them)."""
        return [int(self.model.config.image_token_id), self.video_token_id]

    def _part_modules(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        inner = self.model.model
        projector: list[nn.Module | nn.Parameter] = [inner.multi_modal_projector, inner.image_newline]
        if hasattr(inner, "vision_resampler"):
            projector.append(inner.vision_resampler)
        return {"vision": [inner.vision_tower], "projector": projector,
                "llm": [inner.language_model, self.model.lm_head]}

    @classmethod
    def _tiny_vision_config(cls, image_size: int, patch_size: int) -> dict:
        raise NotImplementedError

    @classmethod
    def _tiny(cls, seed: int, image_size: int, patch_size: int, newline: str | None,
              resize: str = "antialias") -> LlavaVideoAdapter:
        """A random tiny model of this family: the vision config of `_tiny_vision_config`, a 2-layer Qwen2 LLM
        (hidden 64) and an offline tokenizer with ChatML markers, `<image>` and `<video>` (no chat template: the
        family default); deterministic per seed, the global RNG state is left untouched."""
        tokenizer = offline_tokenizer(LLAVA_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        config = cls.config_class(text_config=tiny_text_config(len(tokenizer)),
                                  vision_config=cls._tiny_vision_config(image_size, patch_size),
                                  image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                                  video_token_index=tokenizer.convert_tokens_to_ids("<video>"))
        size = {"height": image_size, "width": image_size}
        processor = cls.processor_class(image_mean=list(cls.default_mean), image_std=list(cls.default_std),
                                        size=size, crop_size=size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls.model_class(config)
        return cls(model.eval(), tokenizer, processor, newline=newline, resize=resize)
