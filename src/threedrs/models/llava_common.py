"""What LLaVA-OneVision and LLaVA-NeXT-Video share: frames enter as ONE video per sample.

Both families encode a video frame by frame (vision tower on each frame, no any-res tiling), pool each frame's
patch grid and write the result into a run of `<video>` placeholder tokens, which is what they are trained to do with
many frames and gives one clean grid per frame. The subclasses differ in the pooling (OneVision: bilinear to
ceil(n/2) after the projector, then ONE newline embedding after the last frame; NeXT-Video: 2x2 average pooling
before the projector, no newline) and in the vision tower (SigLIP / CLIP).

The visual block is `<video>` x (S*h*w + newline_tokens); the model's own `get_video_features` returns the
embeddings in exactly this order, and the first S*h*w of them are the grid in (frame, row, col) order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from threedrs.models.chat import ChatTemplate, VisualBlock
from threedrs.models.placeholder import CHATML_TOKENS, PlaceholderAdapter, tiny_text_config
from threedrs.models.tiny import offline_tokenizer

LLAVA_TOKENS = CHATML_TOKENS + ["<image>", "<video>"]


class LlavaVideoAdapter(PlaceholderAdapter):
    """Common base of the LLaVA video adapters (see the module docstring); not used directly.

    Subclasses set `model_type`, `model_class`, `config_class`, `processor_class`, `newline_tokens`,
    `default_mean` / `default_std` and implement `token_grid`, `_edges` and `_tiny_vision_config`.
    """

    config_class: type  # the HF config class
    newline_tokens: int = 0  # model-made embeddings after the last frame's grid
    default_mean: tuple[float, float, float]  # image mean / std of the family's vision tower (tiny models)
    default_std: tuple[float, float, float]

    def __init__(self, model: nn.Module, tokenizer, image_processor, chat: ChatTemplate | None = None):
        super().__init__(model, tokenizer, image_processor, chat)
        video_id = int(model.config.video_token_id)
        if tokenizer.convert_tokens_to_ids("<video>") != video_id:
            raise ValueError(f"tokenizer: '<video>' has id {tokenizer.convert_tokens_to_ids('<video>')}, but the "
                             f"model config's video_token_id is {video_id}")
        self.video_token_id = video_id

    @property
    def _frame_side(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def _patches(self) -> int:
        """Patches per side of one frame (vision image_size // patch_size)."""
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def _visual_block(self, num_frames: int) -> VisualBlock:
        h, w = self.token_grid(1, 1)
        n = num_frames * h * w
        return VisualBlock(ids=[self.video_token_id] * (n + self.newline_tokens), grid=list(range(n)),
                           extra=list(range(n, n + self.newline_tokens)))

    def _encode(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        b, s = pixels.shape[:2]
        h, w = self.token_grid(1, 1)
        feats = self.model.model.get_video_features(pixel_values_videos=pixels, return_dict=True).pooler_output
        if feats.shape[1] != s * h * w + self.newline_tokens:
            raise RuntimeError(f"video features: expected {s * h * w + self.newline_tokens} tokens per sample "
                               f"for {s} frames of {h}x{w}, the model returned {feats.shape[1]}")
        return feats[:, :s * h * w].reshape(b, s, h, w, -1), feats[:, s * h * w:]

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
    def _tiny(cls, seed: int, image_size: int, patch_size: int, chat: ChatTemplate | None) -> LlavaVideoAdapter:
        """A random tiny model of this family: the vision config of `_tiny_vision_config`, a 2-layer Qwen2 LLM
        (hidden 64) and an offline tokenizer with ChatML markers, `<image>` and `<video>`; deterministic per seed,
        the global RNG state is left untouched."""
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
        return cls(model.eval(), tokenizer, processor, chat)
