"""LLaVA-NeXT-Video adapter (HF `LlavaNextVideoForConditionalGeneration`, model_type "llava_next_video").

Frames enter as one video per sample (llava_common.py); following transformers'
`LlavaNextVideoModel.get_video_features`, each frame is resized to the vision input (CLIP-L/336: 336 x 336 -> 24 x 24
patches), the CLS token is dropped, the patch grid is pooled with the config's `spatial_pool_mode`
(average / max / conv) and stride (2) BEFORE the projector (24 x 24 -> 12 x 12 = 144 tokens), and there is no
newline token for videos (the default here too; `newline="grid"` / `"video"` use the checkpoint's `image_newline`,
see llava_common.py).

Frames are resized to the square input without the video processor's centre crop, so that every pixel of the frame
is seen and the footprints tile the frame. Footprints: token i pools patches [i*stride, (i+1)*stride); when the
patch count is not a multiple of the stride, the pooling drops the remainder and the last token's box is extended to
the frame's edge.
"""

from __future__ import annotations

from fractions import Fraction

from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from threedrs.models.llava_common import LlavaVideoAdapter
from threedrs.models.placeholder import pooled_edges


class LlavaNextVideoAdapter(LlavaVideoAdapter):
    """LLaVA-NeXT-Video: frames as a video, stride x stride pooling of the patch grid, no newline by default.

    Token grid per frame: (n // stride) x (n // stride) with n = image_size // patch_size (12 x 12 at 336 / 14).
    """

    family = "llava_next_video"
    model_type = "llava_next_video"
    model_class = LlavaNextVideoForConditionalGeneration
    config_class = LlavaNextVideoConfig
    processor_class = LlavaNextImageProcessorPil
    default_newline = "none"  # transformers' LlavaNextVideoModel.get_video_features
    model_newlines = 0  # its get_video_features returns the grid tokens only
    default_mean = (0.48145466, 0.4578275, 0.40821073)  # CLIP
    default_std = (0.26862954, 0.26130258, 0.27577711)

    @property
    def _stride(self) -> int:
        return int(self.model.config.spatial_pool_stride)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) tokens per frame; frames of any size are resized to the square vision input."""
        if height < 1 or width < 1:
            raise ValueError(f"frame size: expected positive height and width, got {height} x {width}")
        side = self._patches // self._stride
        return side, side

    def _edges(self) -> tuple[list[Fraction], list[Fraction]]:
        edges = pooled_edges(self._patches, self._stride)
        return edges, edges

    @classmethod
    def _tiny_vision_config(cls, image_size: int, patch_size: int) -> dict:
        return dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, image_size=image_size, patch_size=patch_size, projection_dim=32)

    @classmethod
    def tiny(cls, seed: int = 0, image_size: int = 56, patch_size: int = 7,
             newline: str | None = None, resize: str = "antialias") -> LlavaNextVideoAdapter:
        """A random tiny LLaVA-NeXT-Video: CLIP (2 layers, hidden 32) + Qwen2 (2 layers, hidden 64), offline.

        The default 56 / 7 gives 8 x 8 patches average-pooled to 4 x 4, like the real 24 x 24 -> 12 x 12.
        """
        return cls._tiny(seed, image_size, patch_size, newline, resize)
