"""Adapter for Qwen2-VL and Qwen2.5-VL (families "qwen2_vl" and "qwen2_5_vl") over the transformers classes.

Token layout and pixels: see `qwen2_vl_inputs.py` (each frame is one image of a fixed size; default: the size giving
a 14x14 merged-token grid, 392x392 pixels for patch 14 and merge 2).

Visual offsets (e.g. the 3D position encoding) are injected without touching transformers: the adapter runs the
vision tower itself (`get_image_features`, which returns the merger output in row-major token order for both
families, Qwen2.5-VL's window reordering already undone), adds the offsets, and hands the result to the model as
`mm_encoder_outputs={"image": ...}`, transformers 5's entry point for pre-encoded images. The model then scatters
them into the `<|image_pad|>` positions and computes mRoPE position ids from `input_ids`, `mm_token_type_ids` and
`image_grid_thw` exactly as it would for raw pixels; `generate` forwards `mm_encoder_outputs` to the prefill only.

Hidden states: transformers 5's output capturing returns `num_hidden_layers + 1` states, index 0 the input
embeddings (visual features already scattered in) and index -1 replaced by `last_hidden_state`, i.e. the last layer
AFTER the final RMSNorm (what 3DRS supervises); the adapter uses `last_hidden_state` for layer -1 directly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (AutoTokenizer, GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          Qwen2VLConfig, Qwen2VLForConditionalGeneration)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .base import (IGNORE_INDEX, AdapterOutput, MLLMAdapter, VisualTokens, answer_cross_entropy, check_frames,
                   drop_answer_loss)
from .qwen2_vl_inputs import (QWEN_SPECIAL_TOKENS, ChatLayout, PixelSpec, QwenBatch, QwenTokenIds,
                              check_image_size, footprint_boxes, patchify, resize_frames)
from .tiny import offline_tokenizer

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
}
DEFAULT_GRID = 14  # merged tokens per side of the default frame size (14 * patch 14 * merge 2 = 392 pixels)


class Qwen2VLAdapter(MLLMAdapter):
    """Per-frame visual-token grids, LM loss and generation for a Qwen2-VL / Qwen2.5-VL model.

    model: `Qwen2VLForConditionalGeneration` or `Qwen2_5_VLForConditionalGeneration`; tokenizer: its tokenizer;
    image_processor: a `Qwen2VLImageProcessorPil` (normalisation mean/std); image_size: (height, width) every frame
    is resized to (multiples of patch_size * merge_size; None = a 14x14 merged-token grid).
    """

    def __init__(self, model: nn.Module, tokenizer: object, image_processor: Qwen2VLImageProcessorPil,
                 image_size: Sequence[int] | None = None):
        super().__init__()
        model_type = model.config.model_type
        if model_type not in MODEL_CLASSES:
            raise ValueError(f"model: model_type {model_type!r} is not one of {sorted(MODEL_CLASSES)}")
        self.family = model_type
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        vision = model.config.vision_config
        token_pixels = vision.patch_size * vision.spatial_merge_size
        size = image_size if image_size is not None else (DEFAULT_GRID * token_pixels,) * 2
        self.pixels = PixelSpec(image_size=check_image_size(size, token_pixels), patch_size=vision.patch_size,
                                merge_size=vision.spatial_merge_size,
                                temporal_patch_size=vision.temporal_patch_size,
                                mean=tuple(image_processor.image_mean), std=tuple(image_processor.image_std))
        config = model.config
        im_start, im_end = (self._token_id(t) for t in ("<|im_start|>", "<|im_end|>"))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._token_id("<|endoftext|>")
        self.ids = QwenTokenIds(im_start=im_start, im_end=im_end, vision_start=config.vision_start_token_id,
                                vision_end=config.vision_end_token_id, image_pad=config.image_token_id,
                                video_pad=config.video_token_id, pad=pad)
        self.layout = ChatLayout(tokenizer, self.ids)

    def _token_id(self, token: str) -> int:
        if token not in self.tokenizer.get_vocab():
            raise ValueError(f"tokenizer: special token {token!r} is missing (not a Qwen2-VL tokenizer)")
        return self.tokenizer.convert_tokens_to_ids(token)

    # ----------------------------------------------------------------------------------------------- building
    @classmethod
    def from_pretrained(cls, path: str | Path, family: str | None = None, dtype: torch.dtype | None = None,
                        image_size: Sequence[int] | None = None) -> Qwen2VLAdapter:
        """Load model, tokenizer and PIL image processor from a LOCAL checkpoint directory (no downloads).

        family: "qwen2_vl" or "qwen2_5_vl"; None accepts whichever the config's model_type says, otherwise the two
        must agree. dtype: parameter dtype (None = the checkpoint's own).
        """
        directory = Path(path)
        if not directory.is_dir():
            raise FileNotFoundError(f"model directory not found: {directory}")
        config_file = directory / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"model directory has no config.json: {config_file}")
        if not (directory / "preprocessor_config.json").is_file():
            raise FileNotFoundError(f"model directory has no preprocessor_config.json (image processor): {directory}")
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type not in MODEL_CLASSES:
            raise ValueError(f"{config_file}: model_type {model_type!r} is not a Qwen2-VL checkpoint "
                             f"(expected one of {sorted(MODEL_CLASSES)})")
        if family is not None and family != model_type:
            raise ValueError(f"family: {family!r} does not match the checkpoint's model_type {model_type!r}")
        model = MODEL_CLASSES[model_type].from_pretrained(directory, local_files_only=True,
                                                          dtype=dtype if dtype is not None else "auto")
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        processor = Qwen2VLImageProcessorPil.from_pretrained(directory, local_files_only=True)
        return cls(model, tokenizer, processor, image_size=image_size)

    def save_pretrained(self, path: str | Path) -> None:
        """Write model, tokenizer and image processor to a directory `from_pretrained` can load."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)

    @classmethod
    def tiny(cls, family: str, seed: int = 0, image_size: Sequence[int] = (42, 56)) -> Qwen2VLAdapter:
        """A random-initialised tiny model (LLM: hidden 64, 2 layers; vision: depth 2, patch 7, merge 2).

        Deterministic for a seed (the global RNG is left untouched). The default 42x56 frame gives a 3x4 merged
        grid (6x8 patches), non-square so that row/column mix-ups show.
        """
        if family not in MODEL_CLASSES:
            raise ValueError(f"family: expected one of {sorted(MODEL_CLASSES)}, got {family!r}")
        tokenizer = offline_tokenizer(QWEN_SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tid = tokenizer.convert_tokens_to_ids
        text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                    bos_token_id=None, eos_token_id=tid("<|im_end|>"), pad_token_id=tid("<|endoftext|>"))
        common = dict(depth=2, num_heads=2, patch_size=7, spatial_merge_size=2, temporal_patch_size=2)
        ids = dict(image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
                   vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"))
        if family == "qwen2_vl":
            config = Qwen2VLConfig(text_config=text, vision_config=dict(common, embed_dim=32, hidden_size=64,
                                                                        mlp_ratio=2), **ids)
        else:
            config = Qwen2_5_VLConfig(text_config=text, vision_config=dict(
                common, hidden_size=32, out_hidden_size=64, intermediate_size=64, window_size=28,
                fullatt_block_indexes=[1]), **ids)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MODEL_CLASSES[family](config)
        processor = Qwen2VLImageProcessorPil(patch_size=7, merge_size=2, temporal_patch_size=2)
        return cls(model.eval(), tokenizer, processor, image_size=image_size)

    # -------------------------------------------------------------------------------------------- geometry
    @property
    def hidden_size(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Merged token grid (h, w) per frame; fixed by `image_size`, whatever the frame size."""
        if height <= 0 or width <= 0:
            raise ValueError(f"frame size: expected positive height and width, got {height}x{width}")
        return self.pixels.grid

    def footprints(self, height: int, width: int) -> Tensor:
        """[h, w, 4] int64 half-open pixel boxes (x0, y0, x1, y1) of each token in a height x width frame."""
        return footprint_boxes(height, width, self.token_grid(height, width))

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """"vision": vision tower minus merger; "projector": the merger; "llm": embeddings, decoder, lm_head."""
        visual = self.model.model.visual
        merger = list(visual.merger.parameters())
        merger_ids = {id(p) for p in merger}
        llm = list(self.model.model.language_model.parameters()) + list(self.model.lm_head.parameters())
        unique_llm = list({id(p): p for p in llm}.values())  # lm_head may be tied to the embeddings
        return {"vision": [p for p in visual.parameters() if id(p) not in merger_ids], "projector": merger,
                "llm": unique_llm}

    # ---------------------------------------------------------------------------------------------- inputs
    def build_inputs(self, frames: Tensor, prompts: Sequence[str], answers: Sequence[str] | None,
                     padding_side: str) -> tuple[QwenBatch, Tensor, Tensor]:
        """Tokens and pixels for a batch.

        frames [B, S, 3, H, W] float in [0, 1]; padding_side "right" (training) or "left" (generation).
        Returns the padded `QwenBatch`, pixel_values [B*S*gh*gw, 3*T*p*p] float32 and image_grid_thw [B*S, 3].
        """
        b, s, _, _ = check_frames(frames)
        _check_texts("prompts", prompts, b)
        if answers is not None:
            _check_texts("answers", answers, b)
        h, w = self.pixels.grid
        batch = self.layout.batch(s, h * w, prompts, answers, padding_side, frames.device)
        pixel_values, grid_thw = patchify(resize_frames(frames.flatten(0, 1), self.pixels), self.pixels)
        return batch, pixel_values, grid_thw

    def image_features(self, pixel_values: Tensor, grid_thw: Tensor, batch_frames: tuple[int, int],
                       visual_offsets: Tensor | None) -> Tensor:
        """Merger output with the offsets added: [B*S*h*w, D] in (sample, frame, row, col) order.

        visual_offsets: [B, S, h, w, D] or None; added in the features' dtype (gradients flow to it, to the
        vision tower and to the merger).
        """
        b, s = batch_frames
        h, w = self.pixels.grid
        expected = (b, s, h, w, self.hidden_size)
        if visual_offsets is not None and tuple(visual_offsets.shape) != expected:
            raise ValueError(f"visual_offsets: expected shape {expected}, got {tuple(visual_offsets.shape)}")
        encoded = self.model.model.get_image_features(pixel_values, image_grid_thw=grid_thw)
        features = torch.cat(list(encoded.pooler_output), dim=0)
        if visual_offsets is not None:
            features = features + visual_offsets.reshape(-1, features.shape[-1]).to(features.dtype)
        return features

    # ------------------------------------------------------------------------------------------------- run
    def forward(self, frames: Tensor, prompts: Sequence[str], answers: Sequence[str] | None = None,
                layers: Sequence[int] = (-1,), visual_offsets: Tensor | None = None,
                answer_loss: Sequence[bool] | None = None) -> AdapterOutput:
        """Run the model on a batch (right padding).

        frames [B, S, 3, H, W] float in [0, 1]; prompts/answers: B strings; layers: hidden-state indices
        (-1 = last layer after the final norm, 0 = input embeddings, k = output of decoder layer k);
        visual_offsets [B, S, h, w, D] added to the visual embeddings before the LLM; answer_loss: B flags, False
        = that sample's answer is input only (lm_loss is None when no answer token carries loss).
        extras: "attention_mask" and "labels" [B, L] int64 of the built sequences.
        """
        b, s, height, width = check_frames(frames)
        num_states = self.model.config.text_config.num_hidden_layers + 1
        bad = [layer for layer in layers if not -num_states <= layer < num_states]
        if bad:
            raise ValueError(f"layers: indices {bad} out of range for {num_states} hidden states")
        batch, pixel_values, grid_thw = self.build_inputs(frames, prompts, answers, "right")
        features = self.image_features(pixel_values, grid_thw, (b, s), visual_offsets)
        need_all = any(layer % num_states != num_states - 1 for layer in layers)
        out = self.model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               mm_token_type_ids=batch.mm_token_type_ids, image_grid_thw=grid_thw,
                               mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=(features,))},
                               output_hidden_states=need_all, use_cache=False)
        last = out.last_hidden_state
        visual_mask = batch.input_ids == self.ids.image_pad
        h, w = self.pixels.grid
        hidden = {}
        for layer in layers:
            states = last if layer % num_states == num_states - 1 else out.hidden_states[layer]
            hidden[layer] = states[visual_mask].reshape(b, s, h, w, -1)
        footprint = self.footprints(height, width).to(frames.device).expand(s, h, w, 4)
        labels = drop_answer_loss(batch.labels, answer_loss)
        lm_loss = sample_loss = None
        if answers is not None and bool((labels != IGNORE_INDEX).any()):
            lm_loss, sample_loss = answer_cross_entropy(self.model.lm_head, last, labels)
        return AdapterOutput(lm_loss=lm_loss, visual=VisualTokens(hidden=hidden, footprint=footprint),
                             last_hidden=last, input_ids=batch.input_ids,
                             extras={"attention_mask": batch.attention_mask, "labels": labels},
                             sample_lm_loss=sample_loss)

    @torch.no_grad()
    def generate(self, frames: Tensor, prompts: Sequence[str], max_new_tokens: int = 16,
                 visual_offsets: Tensor | None = None) -> list[str]:
        """Plain greedy decoding (left padding); offsets enter the prefill only. Returns B decoded answers.

        The checkpoint's own sampling and repetition-penalty settings are overridden, so results are reproducible;
        placeholder tokens (`placeholder_ids`) are suppressed; decoding stops at `<|im_end|>` or the tokenizer's eos.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {max_new_tokens}")
        b, s, _, _ = check_frames(frames)
        batch, pixel_values, grid_thw = self.build_inputs(frames, prompts, None, "left")
        features = self.image_features(pixel_values, grid_thw, (b, s), visual_offsets)
        stops = [self.ids.im_end] + [t for t in [self.tokenizer.eos_token_id] if t not in (None, self.ids.im_end)]
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, repetition_penalty=1.0,
                                  eos_token_id=stops, pad_token_id=self.ids.pad,
                                  suppress_tokens=self.placeholder_ids())
        out = self.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  mm_token_type_ids=batch.mm_token_type_ids, image_grid_thw=grid_thw,
                                  mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=(features,))},
                                  generation_config=config)
        new_tokens = out[:, batch.input_ids.shape[1]:]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def placeholder_ids(self) -> list[int]:
        """Vision token ids generation never emits (`<|vision_start|>`, `<|vision_end|>`, image and video pads)."""
        return [self.ids.vision_start, self.ids.vision_end, self.ids.image_pad, self.ids.video_pad]


def _check_texts(name: str, texts: Sequence[str], batch_size: int) -> None:
    """Require one string per sample."""
    if isinstance(texts, str) or len(texts) != batch_size or not all(isinstance(t, str) for t in texts):
        count = "a single str" if isinstance(texts, str) else f"{len(texts)} items"
        raise ValueError(f"{name}: expected a list of {batch_size} strings (one per sample), got {count}")
