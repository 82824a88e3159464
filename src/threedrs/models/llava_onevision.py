"""LLaVA-OneVision adapter (HF `LlavaOnevisionForConditionalGeneration`, model_type "llava_onevision").

Also the HF format of LLaVA-Video-7B-Qwen2, 3DRS's default model. Frames enter as one video per sample
(llava_common.py); following transformers' `LlavaOnevisionModel.get_video_features`, each frame is resized to the
SigLIP input (384 x 384), encoded into n x n patches (27 x 27 at 384 / 14), projected, then bilinearly resized
(align_corners=False) to ceil(n/2) x ceil(n/2) (14 x 14 = 196 tokens). Newlines (llava_common.py): by default ONE
learned newline embedding follows the last frame, as in transformers; `newline="grid"` writes one after each row of
each frame (14 x 15 tokens per frame), the layout LLaVA-Video-7B-Qwen2 is trained with by Video-3D LLM and 3DRS.
Newlines are excluded from the grid and get no offset.

Footprints: bilinear resizing puts output token i's sample point at the centre of the band [i/h, (i+1)/h) of the
frame, so token (i, j) covers rows [i*H/h, (i+1)*H/h) and columns [j*W/w, (j+1)*W/w) of the original frame
(floored to pixels): the boxes tile the frame.
"""

from __future__ import annotations

import math
from fractions import Fraction

from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

from threedrs.models.llava_common import LlavaVideoAdapter
from threedrs.pixel_blocks import PixelGrid


class LlavaOnevisionAdapter(LlavaVideoAdapter):
    """LLaVA-OneVision / LLaVA-Video: frames as a video, bilinear pooling, one newline per video by default.

    Token grid per frame: ceil(n/2) x ceil(n/2) with n = image_size // patch_size (14 x 14 at 384 / 14).
    """

    family = "llava_onevision"
    model_type = "llava_onevision"
    model_class = LlavaOnevisionForConditionalGeneration
    config_class = LlavaOnevisionConfig
    processor_class = LlavaOnevisionImageProcessorPil
    default_newline = "video"  # transformers' LlavaOnevisionModel.get_video_features
    model_newlines = 1  # get_video_features appends image_newline after the video's tokens
    default_mean = (0.5, 0.5, 0.5)  # SigLIP
    default_std = (0.5, 0.5, 0.5)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) tokens per frame; frames of any size are resized to the square vision input."""
        if height < 1 or width < 1:
            raise ValueError(f"frame size: expected positive height and width, got {height} x {width}")
        side = math.ceil(self._patches / 2)
        return side, side

    def pixel_grid(self) -> PixelGrid:
        """The vision input's pixel layout: side (384), patch (14) and pooled grid (14) (pixel_blocks.py)."""
        vision = self.model.config.vision_config
        return PixelGrid(int(vision.image_size), int(vision.patch_size), self.token_grid(1, 1)[0])

    def _edges(self) -> tuple[list[Fraction], list[Fraction]]:
        h, w = self.token_grid(1, 1)
        return [Fraction(k, h) for k in range(h + 1)], [Fraction(k, w) for k in range(w + 1)]

    @classmethod
    def _tiny_vision_config(cls, image_size: int, patch_size: int) -> dict:
        return dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, image_size=image_size, patch_size=patch_size, vision_use_head=False)

    @classmethod
    def tiny(cls, seed: int = 0, image_size: int = 63, patch_size: int = 7,
             newline: str | None = None, resize: str = "antialias") -> LlavaOnevisionAdapter:
        """A random tiny LLaVA-OneVision: SigLIP (1 layer, hidden 32) + Qwen2 (2 layers, hidden 64), offline.

        The default 63 / 7 gives an odd 9 x 9 patch grid pooled to 5 x 5, like the real 27 x 27 -> 14 x 14.
        """
        return cls._tiny(seed, image_size, patch_size, newline, resize)
