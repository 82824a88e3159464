"""Adapter base for MLLMs whose visual features replace placeholder tokens (LLaVA-OneVision, LLaVA-NeXT-Video,
InternVL).

How a forward pass runs (the same for the three families; only the visual block and the encoder differ):
1. frames [B, S, 3, H, W] in [0, 1] are resized to the vision tower's square input (bicubic, antialiased; every pixel
   of the frame is kept, no crop, no any-res tiling) and normalised with the checkpoint's image mean/std;
   `resize="pil_bicubic"` resizes the 8-bit frame with PIL's bicubic filter instead, as Video-3D LLM / 3DRS do
   (PIL `Image.resize` on the decoded JPEG, then / 255), so their model sees the very pixel values it was trained on;
2. the family's own HF code encodes them (vision tower, projector, pooling / pixel shuffle) into a per-frame grid
   [B, S, h, w, D] of projected embeddings (+ model-made extras such as LLaVA-OneVision's newline);
3. `visual_offsets` (e.g. the 3D position encoding) are ADDED to the grid embeddings (never to extras);
4. the text embeddings of the token sequence (prompt.py: the checkpoint's chat template, the placeholder expanded as
   the family's processor expands it) get the visual embeddings written at the placeholder positions and the LLM
   runs on `inputs_embeds` (no fork of transformers: the HF classes are used as they are);
5. the LM loss is a mean cross-entropy over the answer tokens, computed from logits at those positions only (the
   full [B, L, vocab] logits are never built); hidden states are gathered at the grid positions.

Layer indices follow the HF `hidden_states` tuple of the LLM: 0 = input embeddings, k = output of decoder layer k,
num_layers (= -1) = the last layer AFTER the final norm (transformers 5 replaces `hidden_states[-1]` with the
normed `last_hidden_state`; the adapter reads `last_hidden_state` for it directly). Other layers are pre-norm.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoTokenizer

from threedrs.models.base import (AdapterOutput, MLLMAdapter, VisualTokens, answer_cross_entropy, check_frames,
                                  drop_answer_loss)
from threedrs.models.loading import Placement, checkpoint_model_type, load_pretrained
from threedrs.models.prompt import (ChatTemplate, PromptBuilder, TokenBatch, VisualLayout, check_texts,
                                    read_chat_template)

CHATML_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
RESIZES = ("antialias", "pil_bicubic")


def tiny_text_config(vocab_size: int) -> dict:
    """A 2-layer Qwen2 LLM with hidden size 64 (4 heads, 2 KV heads), as a config dict for a sub-config."""
    return dict(model_type="qwen2", vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                tie_word_embeddings=False)


def grid_boxes(row_edges: list[Fraction], col_edges: list[Fraction], height: int, width: int) -> Tensor:
    """Pixel boxes of a token grid in a frame of `height` x `width` pixels.

    row_edges / col_edges: h+1 / w+1 increasing fractions of the frame (0 first, 1 last) where token rows / columns
    start and end. Returns [h, w, 4] int64 (x0, y0, x1, y1), half-open; the boxes tile the frame exactly and none is
    empty (a frame smaller than the grid is refused).
    """
    if height < 1 or width < 1:
        raise ValueError(f"frame size: expected positive height and width, got {height} x {width}")
    h, w = len(row_edges) - 1, len(col_edges) - 1
    if height < h or width < w:
        raise ValueError(f"frame size: {height} x {width} is smaller than the {h} x {w} token grid")
    ys = torch.tensor([int(f * height) for f in row_edges], dtype=torch.long)
    xs = torch.tensor([int(f * width) for f in col_edges], dtype=torch.long)
    y0, y1 = ys[:-1, None].expand(h, w), ys[1:, None].expand(h, w)
    x0, x1 = xs[None, :-1].expand(h, w), xs[None, 1:].expand(h, w)
    return torch.stack([x0, y0, x1, y1], dim=-1)


def pil_bicubic(frames: Tensor, side: int) -> Tensor:
    """Frames [N, 3, H, W] in [0, 1] (8-bit values / 255, as decoded) resized to side x side with PIL's bicubic
    filter on 8-bit RGB, as `PIL.Image.resize` does by default; returns [N, 3, side, side] float32 in [0, 1]."""
    from PIL import Image

    out = []
    for frame in frames:
        rgb = (frame * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        resized = Image.fromarray(rgb).resize((side, side), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1))
    return torch.stack(out).to(frames.device, torch.float32) / 255.0


def pooled_edges(patches: int, stride: int) -> list[Fraction]:
    """Edges (fractions of the frame) of tokens that each pool `stride` patches of a `patches`-patch row.

    A remainder of patches the pooling drops (floor) is given to the last token so that the boxes tile the frame.
    """
    count = patches // stride
    return [Fraction(k * stride, patches) for k in range(count)] + [Fraction(1)]


class PlaceholderAdapter(MLLMAdapter):
    """Base of the placeholder-token adapters; subclasses supply the family's layout, encoder and parts.

    Subclass hooks: `model_type` (config.json's model_type), `placeholder` / `visual_item` (what the chat template
    writes for the frames), `check_tokenizer(tokenizer, config, where)`, `_frame_side` (vision input side, pixels),
    `token_grid`, `_edges()`, `_visual_layout(num_frames)`, `_encode(pixels, patch_features) -> (grid [B,S,h,w,D],
    extra [B,n,D], patches [B,S,n,n,D] or None)` and `_part_modules()`.
    prompt: the prompt builder of the checkpoint's chat template, from `checked_prompt` (None: built here from the
    tokenizer's own template, else the family default); resize: "antialias" | "pil_bicubic" (module docstring,
    step 1).
    """

    model_type: str = ""  # config.json's model_type of the family's checkpoints
    model_class: type  # the HF ...ForConditionalGeneration class
    processor_class: type  # its PIL image processor (mean / std; saved with the model)
    placeholder: str = "<video>"  # the text the chat template writes for the frames
    visual_item: str = "video"  # the frames are given to the template as one video

    def __init__(self, model: nn.Module, tokenizer, image_processor, prompt: PromptBuilder | None = None,
                 resize: str = "antialias"):
        super().__init__()
        if resize not in RESIZES:
            raise ValueError(f"resize: expected one of {', '.join(RESIZES)}, got {resize!r}")
        self.resize = resize
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        if prompt is None:
            prompt = self.checked_prompt(tokenizer, model.config, read_chat_template(None, tokenizer, self.family),
                                         "tokenizer")
        elif prompt.tokenizer is not tokenizer:
            raise ValueError("prompt: built for another tokenizer than the adapter's")
        self.prompt = prompt
        mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    @classmethod
    def check_tokenizer(cls, tokenizer, config, where: str) -> None:
        """Raise ValueError (naming `where`) when the tokenizer lacks the family's visual tokens or their ids
        differ from the model config's."""
        raise NotImplementedError

    @classmethod
    def checked_prompt(cls, tokenizer, config, template: ChatTemplate, where: str) -> PromptBuilder:
        """The prompt builder of `template`, after the tokenizer's visual tokens are checked against `config`
        (`check_tokenizer`, errors naming `where`) and the template is (PromptBuilder); nothing loads weights."""
        cls.check_tokenizer(tokenizer, config, where)
        return PromptBuilder(tokenizer, template, cls.placeholder, cls.visual_item)

    @classmethod
    def from_pretrained(cls, path: str | Path, placement: Placement | None = None, **options) -> PlaceholderAdapter:
        """Load model, tokenizer and image-processor config from a LOCAL checkpoint directory (no downloads).

        The tokenizer's visual tokens and the chat template are checked before the weights load.
        placement: dtype, device and attention kernel (models/loading.py; None = float32 on the CPU);
        options: family options passed to the constructor (LLaVA: `newline`, `resize`).
        """
        checkpoint_model_type(path, (cls.model_type,), f"expected {cls.model_type!r}")
        path = Path(path)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        prompt = cls.checked_prompt(tokenizer, AutoConfig.from_pretrained(path, local_files_only=True),
                                    read_chat_template(path, tokenizer, cls.family), f"{path}: tokenizer")
        model = load_pretrained(cls.model_class, path, placement or Placement())
        processor = cls.processor_class.from_pretrained(path, local_files_only=True)
        return cls(model.eval(), tokenizer, processor, prompt=prompt, **options)

    # ----------------------------------------------------------------- family hooks
    @property
    def _frame_side(self) -> int:
        raise NotImplementedError

    def _edges(self) -> tuple[list[Fraction], list[Fraction]]:
        raise NotImplementedError

    def _visual_layout(self, num_frames: int) -> VisualLayout:
        raise NotImplementedError

    def _encode(self, pixels: Tensor, patch_features: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """(grid [B, S, h, w, D], model-made extras [B, n, D], and with `patch_features` the projector's features of
        every vision patch before pooling [B, S, n, n, D], None when not asked for or the family has none)."""
        raise NotImplementedError

    def _part_modules(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        raise NotImplementedError

    def placeholder_ids(self) -> list[int]:
        """Visual placeholder / marker token ids; generation never emits them."""
        raise NotImplementedError

    # ----------------------------------------------------------------- contract
    @property
    def hidden_size(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    @property
    def num_layers(self) -> int:
        """Number of LLM decoder layers (layer index num_layers = -1 is the normed last layer)."""
        return int(self.model.config.text_config.num_hidden_layers)

    def footprints(self, height: int, width: int) -> Tensor:
        """[h, w, 4] int64 (x0, y0, x1, y1) half-open pixel boxes of each token in a `height` x `width` frame."""
        rows, cols = self._edges()
        return grid_boxes(rows, cols, height, width)

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part ("vision", "projector", "llm"); every parameter is in exactly one part."""
        seen: set[int] = set()
        out: dict[str, list[nn.Parameter]] = {}
        for name, items in self._part_modules().items():
            params = []
            for item in items:
                for p in ([item] if isinstance(item, nn.Parameter) else item.parameters()):
                    if id(p) not in seen:
                        seen.add(id(p))
                        params.append(p)
            out[name] = params
        return out

    def save_pretrained(self, directory: str | Path) -> None:
        """Write model, tokenizer, image-processor config and the chat template in use (chat_template.jinja) to
        `directory` (loadable by `from_pretrained`, which then renders the same prompts)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        (directory / "chat_template.jinja").write_text(self.prompt.template.text)

    def pixels(self, frames: Tensor) -> Tensor:
        """Frames [B, S, 3, H, W] in [0, 1] -> normalised model input [B, S, 3, side, side] in the vision dtype."""
        b, s, h, w = check_frames(frames)
        if frames.numel():
            low, high = torch.aminmax(frames)
            if low < 0 or high > 1:
                raise ValueError("frames: values must lie in [0, 1]")
        side = self._frame_side
        x = frames.to(self.pixel_mean.device, torch.float32).reshape(b * s, 3, h, w)
        if (h, w) != (side, side) and self.resize == "pil_bicubic":
            x = pil_bicubic(x, side)
        elif (h, w) != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(0.0, 1.0)
        x = (x - self.pixel_mean) / self.pixel_std
        dtype = next(self.model.model.vision_tower.parameters()).dtype
        return x.to(dtype).reshape(b, s, 3, side, side)

    def _inputs(self, frames: Tensor, prompts, answers, visual_offsets: Tensor | None, padding_side: str,
                patch_features: bool = False) -> tuple[TokenBatch, Tensor, Tensor | None]:
        """Token batch, LLM input embeddings [B, L, D] with the visual embeddings (+ offsets) in place, and the
        patch features of `_encode` (None unless `patch_features`)."""
        b, s, h, w = check_frames(frames)
        prompts = check_texts("prompts", prompts, b)
        answers = None if answers is None else check_texts("answers", answers, b)
        gh, gw = self.token_grid(h, w)
        if visual_offsets is not None and tuple(visual_offsets.shape) != (b, s, gh, gw, self.hidden_size):
            raise ValueError(f"visual_offsets: expected shape {(b, s, gh, gw, self.hidden_size)}, "
                             f"got {tuple(visual_offsets.shape)}")
        tokens = self.prompt.batch(self._visual_layout(s), prompts, answers, padding_side)
        embed = self.model.get_input_embeddings()
        device = embed.weight.device
        grid, extra, patches = self._encode(self.pixels(frames), patch_features)
        if patch_features and patches is None:
            raise ValueError(f"patch_features: the {self.family} adapter has no patch features before pooling")
        if visual_offsets is not None:
            grid = grid + visual_offsets.to(grid.device, grid.dtype)
        input_ids = tokens.input_ids.to(device)
        embeds = embed(input_ids)
        rows = torch.arange(b, device=device)[:, None]
        embeds = embeds.index_put((rows.expand_as(tokens.grid_index), tokens.grid_index.to(device)),
                                  grid.reshape(b, s * gh * gw, -1).to(embeds.dtype))
        if extra.shape[1]:
            embeds = embeds.index_put((rows.expand_as(tokens.extra_index), tokens.extra_index.to(device)),
                                      extra.to(embeds.dtype))
        return tokens, embeds, patches

    def _check_layers(self, layers) -> list[int]:
        layers = list(layers)
        total = self.num_layers + 1
        bad = [k for k in layers if not isinstance(k, int) or not -total <= k < total]
        if bad or not layers:
            raise ValueError(f"layers: expected indices in [-{total}, {total - 1}] (0 = embeddings, -1 = last "
                             f"layer after the final norm), got {list(layers)}")
        return layers

    def forward(self, frames: Tensor, prompts, answers=None, layers=(-1,),
                visual_offsets: Tensor | None = None, answer_loss=None, patch_features: bool = False) -> AdapterOutput:
        """Run the MLLM on frames [B, S, 3, H, W] in [0, 1] and B prompts (and answers).

        Returns the mean answer-token cross-entropy (None without answers), the hidden states [B, S, h, w, D] at the
        grid tokens for each of `layers`, the normed last-layer states [B, L, D] and the input ids [B, L];
        extras: "attention_mask" [B, L], "visual_index" [B, S*h*w] (grid-token positions, frame/row/col order) and,
        with answers, "labels" [B, L] (IGNORE_INDEX except the answer tokens). `answer_loss` (B bools): False keeps
        that sample's answer as input only (lm_loss is None when no answer token is supervised).
        `patch_features`: also return the projector's features of every vision patch before pooling,
        extras["patch_features"] [B, S, n, n, D] (LLaVA: what Video-3D LLM's grounding pools per object; ValueError
        for a family without them); nothing of this call is kept by the adapter.
        """
        layers = self._check_layers(layers)
        b, s, h, w = check_frames(frames)
        tokens, embeds, patches = self._inputs(frames, prompts, answers, visual_offsets, "right", patch_features)
        device = embeds.device
        mask = tokens.attention_mask.to(device)
        last = self.num_layers
        need_all = any(k % (last + 1) != last for k in layers)
        out = self.model.model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False,
                                              output_hidden_states=need_all)
        states = out.last_hidden_state
        gh, gw = self.token_grid(h, w)
        index = tokens.grid_index.to(device)
        rows = torch.arange(b, device=device)[:, None]
        hidden = {}
        for k in layers:
            layer = states if k % (last + 1) == last else out.hidden_states[k]
            hidden[k] = layer[rows, index].reshape(b, s, gh, gw, -1)
        loss = sample_loss = None
        labels = None if tokens.labels is None else drop_answer_loss(tokens.labels.to(device), answer_loss)
        if labels is not None and (answer_loss is None or any(answer_loss)):
            loss, sample_loss = answer_cross_entropy(self.model.lm_head, states, labels)
        foot = self.footprints(h, w).to(frames.device).unsqueeze(0).repeat(s, 1, 1, 1)
        extras = {"attention_mask": mask, "visual_index": index}
        if patches is not None:
            extras["patch_features"] = patches
        if labels is not None:
            extras["labels"] = labels
        return AdapterOutput(lm_loss=loss, visual=VisualTokens(hidden=hidden, footprint=foot), last_hidden=states,
                             input_ids=tokens.input_ids.to(device), extras=extras, sample_lm_loss=sample_loss)

    @torch.no_grad()
    def generate(self, frames: Tensor, prompts, max_new_tokens: int = 16,
                 visual_offsets: Tensor | None = None) -> list[str]:
        """Greedy answers (special tokens removed, stripped) for frames [B, S, 3, H, W] and B prompts."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
        tokens, embeds, _ = self._inputs(frames, prompts, None, visual_offsets, "left")
        out = self.model.generate(inputs_embeds=embeds, attention_mask=tokens.attention_mask.to(embeds.device),
                                  max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=self.prompt.stop_ids(), pad_token_id=self.prompt.pad_id(),
                                  suppress_tokens=self.placeholder_ids())
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
