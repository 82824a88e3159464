"""InternVL adapter (HF `InternVLForConditionalGeneration`, model_type "internvl"; InternVL2.5 / 3 / 3.5 "-hf").

Frames enter the way transformers' InternVL processor writes a video: the chat template's `<video>` becomes, for
frame i (1-based), `Frame{i}: <img>` + `<IMG_CONTEXT>` x (h*w) + `</img>`, frames separated by "\\n", each frame ONE
tile at the vision
input size (448 x 448; no dynamic tiling, no thumbnail). Following `InternVLModel.get_image_features`, the tile is
encoded into n x n patches (32 x 32 at 448 / 14), the CLS token dropped, pixel shuffle (downsample_ratio 0.5)
merges each 2 x 2 block of patches into one token (16 x 16 = 256 tokens per frame) and the projector maps it to the
LLM. Only the `<IMG_CONTEXT>` tokens form the grid; `Frame{i}: `, `<img>`, `</img>` and the separators do not.

Frames are resized to the square tile without cropping; footprint of token (i, j): the 2 x 2 patches it merges, i.e.
rows [i*H/h, (i+1)*H/h) and columns [j*W/w, (j+1)*W/w) of the original frame, floored to pixels.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import Tensor, nn
from transformers import InternVLConfig, InternVLForConditionalGeneration
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from threedrs.models.placeholder import CHATML_TOKENS, PlaceholderAdapter, pooled_edges, tiny_text_config
from threedrs.models.prompt import PromptBuilder, VisualLayout
from threedrs.models.tiny import offline_tokenizer

INTERNVL_TOKENS = CHATML_TOKENS + ["<img>", "</img>", "<IMG_CONTEXT>"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InternVLAdapter(PlaceholderAdapter):
    """InternVL: one 448 tile per frame, pixel shuffle; token grid (n * ratio) x (n * ratio), 16 x 16 at 448 / 14."""

    family = "internvl"
    model_type = "internvl"
    model_class = InternVLForConditionalGeneration
    processor_class = GotOcr2ImageProcessorPil

    def __init__(self, model: nn.Module, tokenizer, image_processor, prompt: PromptBuilder | None = None):
        super().__init__(model, tokenizer, image_processor, prompt)
        size = model.config.vision_config.image_size
        if size[0] != size[1]:
            raise ValueError(f"vision_config.image_size: InternVL tiles are square, got {tuple(size)}")
        vocab = tokenizer.get_vocab()
        self.start_id, self.end_id, self.context_id = vocab["<img>"], vocab["</img>"], vocab["<IMG_CONTEXT>"]

    @classmethod
    def check_tokenizer(cls, tokenizer, config, where: str) -> None:
        vocab = tokenizer.get_vocab()
        missing = [t for t in ("<img>", "</img>", "<IMG_CONTEXT>") if t not in vocab]
        if missing:
            raise ValueError(f"{where}: InternVL tokens missing: {missing}")
        if vocab["<IMG_CONTEXT>"] != int(config.image_token_id):
            raise ValueError(f"{where}: '<IMG_CONTEXT>' has id {vocab['<IMG_CONTEXT>']}, but the model config's "
                             f"image_token_id is {config.image_token_id}")

    @property
    def _frame_side(self) -> int:
        return int(self.model.config.vision_config.image_size[0])

    @property
    def _patches(self) -> int:
        vision = self.model.config.vision_config
        return int(vision.image_size[0]) // int(vision.patch_size[0])

    @property
    def _merge(self) -> int:
        """Patches per token side (1 / downsample_ratio: 2)."""
        return round(1 / float(self.model.config.downsample_ratio))

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) tokens per frame; frames of any size are resized to the square tile."""
        if height < 1 or width < 1:
            raise ValueError(f"frame size: expected positive height and width, got {height} x {width}")
        side = self._patches // self._merge
        return side, side

    def _edges(self) -> tuple[list[Fraction], list[Fraction]]:
        edges = pooled_edges(self._patches, self._merge)
        return edges, edges

    def _visual_layout(self, num_frames: int) -> VisualLayout:
        """The video's `Frame{i}: <img><IMG_CONTEXT>...</img>` lines (InternVLProcessor.replace_video_token)."""
        h, w = self.token_grid(1, 1)
        frame = "<img>" + "<IMG_CONTEXT>" * (h * w) + "</img>"
        text = "\n".join(f"Frame{i + 1}: {frame}" for i in range(num_frames))
        return VisualLayout(items=[{"type": "video"}], expansions=[text], token_id=self.context_id,
                            grid_mask=[True] * (num_frames * h * w))

    def _encode(self, pixels: Tensor, patch_features: bool = False) -> tuple[Tensor, Tensor, None]:
        """Grid [B, S, h, w, D] of the pixel-shuffled tiles, no extras, no patch features."""
        b, s = pixels.shape[:2]
        h, w = self.token_grid(1, 1)
        feats = self.model.model.get_image_features(pixel_values=pixels.flatten(0, 1), return_dict=True).pooler_output
        if feats.shape[1] != h * w:
            raise RuntimeError(f"image features: expected {h * w} tokens per frame, the model returned "
                               f"{feats.shape[1]}")
        return feats.reshape(b, s, h, w, -1), feats.new_zeros(b, 0, feats.shape[-1]), None

    def placeholder_ids(self) -> list[int]:
        """`<img>`, `</img>` and `<IMG_CONTEXT>` ids (generation never emits them)."""
        return [self.start_id, self.end_id, self.context_id]

    def _part_modules(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        inner = self.model.model
        return {"vision": [inner.vision_tower], "projector": [inner.multi_modal_projector],
                "llm": [inner.language_model, self.model.lm_head]}

    @classmethod
    def tiny(cls, seed: int = 0, image_size: int = 56, patch_size: int = 7) -> InternVLAdapter:
        """A random tiny InternVL: InternViT (1 layer, hidden 32) + Qwen2 (2 layers, hidden 64), offline tokenizer
        with ChatML markers, `<img>`, `</img>`, `<IMG_CONTEXT>` (no chat template: the family default). The default
        56 / 7 gives 8 x 8 patches shuffled to 4 x 4 tokens. Deterministic per seed; the global RNG state is left
        untouched."""
        tokenizer = offline_tokenizer(INTERNVL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        grid = (image_size // patch_size) // 2
        config = InternVLConfig(
            text_config=tiny_text_config(len(tokenizer)),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=image_size, patch_size=patch_size),
            image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=grid * grid,
            tie_word_embeddings=False)
        size = {"height": image_size, "width": image_size}
        processor = cls.processor_class(image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), size=size,
                                        crop_to_patches=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls.model_class(config)
        return cls(model.eval(), tokenizer, processor)
