"""Adapter for Qwen2-VL and Qwen2.5-VL (families "qwen2_vl" and "qwen2_5_vl") over the transformers classes.

Prompt: the checkpoint's own chat template through the shared prompt builder (prompt.py); each frame is one image,
which the template writes as `<|vision_start|><|image_pad|><|vision_end|>` and whose `<|image_pad|>` is expanded to
the frame's h*w merged tokens, as `Qwen2VLProcessor` does. Pixels: `qwen2_vl_pixels.py` (each frame resized to a
fixed size, default 392x392 = a 14x14 merged-token grid for patch 14 and merge 2, or "native": the checkpoint
processor's own size for the frame, its min_pixels / max_pixels).

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
from .loading import Placement, checkpoint_model_type, load_pretrained
from .prompt import ChatTemplate, PromptBuilder, TokenBatch, VisualLayout, check_texts, read_chat_template
from .qwen2_vl_pixels import PixelSpec, check_image_size, footprint_boxes, patchify, resize_frames
from .tiny import offline_tokenizer

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
}
DEFAULT_GRID = 14  # merged tokens per side of the default frame size (14 * patch 14 * merge 2 = 392 pixels)
# Qwen's special tokens, in the order the tiny offline tokenizer gives them ids.
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")
# config key of each visual token's id (the tokenizer must agree with the model config)
VISUAL_TOKENS = {"<|vision_start|>": "vision_start_token_id", "<|vision_end|>": "vision_end_token_id",
                 "<|image_pad|>": "image_token_id", "<|video_pad|>": "video_token_id"}


class Qwen2VLAdapter(MLLMAdapter):
    """Per-frame visual-token grids, LM loss and generation for a Qwen2-VL / Qwen2.5-VL model.

    model: `Qwen2VLForConditionalGeneration` or `Qwen2_5_VLForConditionalGeneration`; tokenizer: its tokenizer;
    image_processor: a `Qwen2VLImageProcessorPil` (normalisation mean/std, min/max pixels); image_size: (height,
    width) every frame is resized to (multiples of patch_size * merge_size), "native" (the processor's own size per
    frame) or None (a 14x14 merged-token grid); prompt: the prompt builder of the checkpoint's chat template, from
    `checked_prompt` (None: built here from the tokenizer's own template, else the family default).
    """

    placeholder = "<|image_pad|>"  # what the chat template writes inside each image
    visual_item = "image"  # each frame is given to the template as one image

    def __init__(self, model: nn.Module, tokenizer: object, image_processor: Qwen2VLImageProcessorPil,
                 image_size: Sequence[int] | str | None = None, prompt: PromptBuilder | None = None):
        super().__init__()
        model_type = model.config.model_type
        if model_type not in MODEL_CLASSES:
            raise ValueError(f"model: model_type {model_type!r} is not one of {sorted(MODEL_CLASSES)}")
        self.family = model_type
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        if prompt is None:
            prompt = self.checked_prompt(tokenizer, model.config, read_chat_template(None, tokenizer, self.family),
                                         "tokenizer")
        elif prompt.tokenizer is not tokenizer:
            raise ValueError("prompt: built for another tokenizer than the adapter's")
        self.prompt = prompt
        vision = model.config.vision_config
        token_pixels = vision.patch_size * vision.spatial_merge_size
        if image_size == "native":
            size = None
        else:
            size = check_image_size(image_size or (DEFAULT_GRID * token_pixels,) * 2, token_pixels)
        self.pixels = PixelSpec(image_size=size, patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                                temporal_patch_size=vision.temporal_patch_size,
                                mean=tuple(image_processor.image_mean), std=tuple(image_processor.image_std),
                                min_pixels=int(image_processor.size.shortest_edge),
                                max_pixels=int(image_processor.size.longest_edge))
        self.image_pad = int(model.config.image_token_id)

    @classmethod
    def check_tokenizer(cls, tokenizer, config, where: str) -> None:
        """Raise ValueError (naming `where`) when a visual token is missing or its id differs from the config's."""
        vocab = tokenizer.get_vocab()
        for token, key in VISUAL_TOKENS.items():
            if token not in vocab:
                raise ValueError(f"{where}: no {token!r} token (not a Qwen2-VL tokenizer)")
            if vocab[token] != int(getattr(config, key)):
                raise ValueError(f"{where}: {token!r} has id {vocab[token]}, but the model config's {key} is "
                                 f"{getattr(config, key)}")

    @classmethod
    def checked_prompt(cls, tokenizer, config, template: ChatTemplate, where: str) -> PromptBuilder:
        """The prompt builder of `template`, after the tokenizer's visual tokens are checked against `config`
        (`check_tokenizer`, errors naming `where`) and the template is (PromptBuilder); nothing loads weights."""
        cls.check_tokenizer(tokenizer, config, where)
        return PromptBuilder(tokenizer, template, cls.placeholder, cls.visual_item)

    # ----------------------------------------------------------------------------------------------- building
    @classmethod
    def from_pretrained(cls, path: str | Path, family: str | None = None, placement: Placement | None = None,
                        image_size: Sequence[int] | str | None = None) -> Qwen2VLAdapter:
        """Load model, tokenizer and PIL image processor from a LOCAL checkpoint directory (no downloads).

        family: "qwen2_vl" or "qwen2_5_vl"; None accepts whichever the config's model_type says, otherwise the two
        must agree. placement: dtype, device and attention kernel (models/loading.py; None = float32 on the CPU).
        image_size: see the class docstring.
        The tokenizer's visual tokens and the chat template are checked before the weights load.
        """
        directory = Path(path)
        model_type = checkpoint_model_type(directory, MODEL_CLASSES, f"not a Qwen2-VL checkpoint (expected one of "
                                                                     f"{sorted(MODEL_CLASSES)})")
        if not (directory / "preprocessor_config.json").is_file():
            raise FileNotFoundError(f"model directory has no preprocessor_config.json (image processor): {directory}")
        if family is not None and family != model_type:
            raise ValueError(f"family: {family!r} does not match the checkpoint's model_type {model_type!r}")
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        config = MODEL_CLASSES[model_type].config_class.from_pretrained(directory, local_files_only=True)
        prompt = cls.checked_prompt(tokenizer, config, read_chat_template(directory, tokenizer, model_type),
                                    f"{directory}: tokenizer")
        model = load_pretrained(MODEL_CLASSES[model_type], directory, placement or Placement())
        processor = Qwen2VLImageProcessorPil.from_pretrained(directory, local_files_only=True)
        return cls(model, tokenizer, processor, image_size=image_size, prompt=prompt)

    def save_pretrained(self, path: str | Path) -> None:
        """Write model, tokenizer, image processor and the chat template in use (chat_template.jinja) to a
        directory `from_pretrained` can load (and then renders the same prompts)."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        (Path(path) / "chat_template.jinja").write_text(self.prompt.template.text)

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
        """Merged token grid (h, w) of a `height` x `width` frame: fixed by `image_size`, or the processor's own
        size for that frame ("native")."""
        return self.pixels.grid_for(height, width)

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
    def visual_layout(self, num_frames: int, grid: tuple[int, int]) -> VisualLayout:
        """One image per frame, each `<|image_pad|>` expanded to the frame's h*w merged tokens."""
        h, w = grid
        return VisualLayout(items=[{"type": "image"}] * num_frames,
                            expansions=[self.placeholder * (h * w)] * num_frames, token_id=self.image_pad,
                            grid_mask=[True] * (num_frames * h * w))

    def build_inputs(self, frames: Tensor, prompts: Sequence[str], answers: Sequence[str] | None,
                     padding_side: str) -> tuple[TokenBatch, Tensor, Tensor]:
        """Tokens and pixels for a batch.

        frames [B, S, 3, H, W] float in [0, 1]; padding_side "right" (training) or "left" (generation).
        Returns the padded `TokenBatch` (on the frames' device), pixel_values [B*S*gh*gw, 3*T*p*p] float32 and
        image_grid_thw [B*S, 3].
        """
        b, s, height, width = check_frames(frames)
        prompts = check_texts("prompts", prompts, b)
        answers = None if answers is None else check_texts("answers", answers, b)
        layout = self.visual_layout(s, self.token_grid(height, width))
        batch = self.prompt.batch(layout, prompts, answers, padding_side)
        batch = TokenBatch(**{k: None if v is None else v.to(frames.device) for k, v in vars(batch).items()})
        pixel_values, grid_thw = patchify(resize_frames(frames.flatten(0, 1), self.pixels), self.pixels)
        return batch, pixel_values, grid_thw

    def image_features(self, pixel_values: Tensor, grid_thw: Tensor, batch_frames: tuple[int, int],
                       grid: tuple[int, int], visual_offsets: Tensor | None) -> Tensor:
        """Merger output with the offsets added: [B*S*h*w, D] in (sample, frame, row, col) order.

        grid: (h, w) merged tokens per frame; visual_offsets: [B, S, h, w, D] or None; added in the features' dtype
        (gradients flow to it, to the vision tower and to the merger).
        """
        b, s = batch_frames
        h, w = grid
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
        h, w = self.token_grid(height, width)
        features = self.image_features(pixel_values, grid_thw, (b, s), (h, w), visual_offsets)
        need_all = any(layer % num_states != num_states - 1 for layer in layers)
        out = self.model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               mm_token_type_ids=self.mm_token_type_ids(batch), image_grid_thw=grid_thw,
                               mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=(features,))},
                               output_hidden_states=need_all, use_cache=False)
        last = out.last_hidden_state
        rows = torch.arange(b, device=last.device)[:, None]
        hidden = {}
        for layer in layers:
            states = last if layer % num_states == num_states - 1 else out.hidden_states[layer]
            hidden[layer] = states[rows, batch.grid_index].reshape(b, s, h, w, -1)
        footprint = self.footprints(height, width).to(frames.device).expand(s, h, w, 4)
        labels = None if batch.labels is None else drop_answer_loss(batch.labels, answer_loss)
        lm_loss = sample_loss = None
        if labels is not None and bool((labels != IGNORE_INDEX).any()):
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
        placeholder tokens (`placeholder_ids`) are suppressed; decoding stops at the template's end-of-turn marker
        (`<|im_end|>`) or the tokenizer's eos.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {max_new_tokens}")
        b, s, height, width = check_frames(frames)
        batch, pixel_values, grid_thw = self.build_inputs(frames, prompts, None, "left")
        features = self.image_features(pixel_values, grid_thw, (b, s), self.token_grid(height, width), visual_offsets)
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, repetition_penalty=1.0,
                                  eos_token_id=self.prompt.stop_ids(), pad_token_id=self.prompt.pad_id(),
                                  suppress_tokens=self.placeholder_ids())
        out = self.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  mm_token_type_ids=self.mm_token_type_ids(batch), image_grid_thw=grid_thw,
                                  mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=(features,))},
                                  generation_config=config)
        new_tokens = out[:, batch.input_ids.shape[1]:]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def mm_token_type_ids(self, batch: TokenBatch) -> Tensor:
        """[B, L] int64: 1 at the `<|image_pad|>` tokens, 0 elsewhere (transformers 5's multimodal token types)."""
        return (batch.input_ids == self.image_pad).long()

    def placeholder_ids(self) -> list[int]:
        """Vision token ids generation never emits (`<|vision_start|>`, `<|vision_end|>`, image and video pads)."""
        config = self.model.config
        return [int(getattr(config, key)) for key in VISUAL_TOKENS.values()]
