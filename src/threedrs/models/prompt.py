"""The one prompt builder of every family: the checkpoint's own chat template, the processor's placeholder expansion,
labels on the answer only, padding.

A sample is one user turn (the frames, then the prompt text) and, in training, the assistant's answer. It is
rendered by the checkpoint's chat template exactly as transformers' `apply_chat_template` renders it, so a Vicuna
checkpoint (LLaVA-NeXT-Video-7B) gets `USER: <video>\\n... ASSISTANT:`, LLaVA-OneVision and InternVL get no system
turn, Qwen gets its default one. The family's visual placeholder in the rendered text (`<video>`, `<|image_pad|>`)
is then replaced by its expansion, as the family's Hugging Face processor replaces it (`<video>` x (S*h*w + 1) for
LLaVA-OneVision, `Frame1: <img><IMG_CONTEXT>...</img>` per frame for InternVL, ...), and the text is tokenised as a
whole (with the tokenizer's BOS when the template does not write one, as the processor does).

The answer: the template's own assistant turn tells what precedes the answer (Vicuna: a space) and what closes it
(ChatML: `<|im_end|>`); a template that writes no closing marker (Vicuna) gets the tokenizer's eos, as LLaVA's own
training appends `</s>`. Labels cover the answer and that end marker only (it is what teaches the model to stop).
The whole string prompt + answer is tokenised at once; when the answer's first token would merge with the
prompt's last one, the answer is tokenised on its own so that the prompt stays the one generation sees.

Which template (`read_chat_template`): the processor's (processor_config.json "chat_template", else
chat_template.json, else chat_template.jinja, transformers' own order), else the tokenizer's
(tokenizer_config.json), else the family default of templates.py (tiny models, folders without a template).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from threedrs.json_files import read_json_file
from threedrs.models.base import IGNORE_INDEX
from threedrs.models.templates import FAMILY_TEMPLATES

_ANSWER = "\u2063threedrs-answer\u2063"  # stands for the answer while reading the template's assistant turn


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and where it was read (named in every error about it)."""

    text: str
    source: str


def read_chat_template(directory: str | Path | None, tokenizer, family: str) -> ChatTemplate:
    """The chat template a checkpoint folder ships (see the module docstring for the order); the family default
    when it ships none. `directory` None: the tokenizer's own template, else the family default."""
    if directory is not None:
        directory = Path(directory)
        processor = directory / "processor_config.json"
        if processor.is_file():
            text = read_json_file(processor, ValueError, expect=dict).get("chat_template")
            if isinstance(text, str):
                return ChatTemplate(text, f"{processor} (chat_template)")
        legacy = directory / "chat_template.json"
        if legacy.is_file():
            text = read_json_file(legacy, ValueError, expect=dict).get("chat_template")
            if not isinstance(text, str):
                raise ValueError(f"{legacy}: expected a string under the key 'chat_template'")
            return ChatTemplate(text, str(legacy))
        raw = directory / "chat_template.jinja"
        if raw.is_file():
            return ChatTemplate(raw.read_text(), str(raw))
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own.strip():
        where = f"{directory / 'tokenizer_config.json'}" if directory is not None else "the tokenizer"
        return ChatTemplate(own, f"{where} (chat_template)")
    return ChatTemplate(FAMILY_TEMPLATES[family], f"threedrs' default {family} template")


@dataclass(frozen=True)
class VisualLayout:
    """The visual part of one prompt for S frames, as the family's processor writes it.

    items: content items of the user turn (`[{"type": "video"}]`, or one `{"type": "image"}` per frame).
    expansions: one text per item that replaces that item's placeholder in the rendered prompt.
    token_id: the token whose positions receive model-made embeddings (`<video>`, `<|image_pad|>`, ...).
    grid_mask: per position of `token_id` in the sequence, in order: True = a grid token (frame, row, col order),
        False = an extra embedding the model adds (a LLaVA newline), never supervised and without 3D offset.
    """

    items: list[dict]
    expansions: list[str]
    token_id: int
    grid_mask: list[bool]


@dataclass
class TokenBatch:
    """A padded batch of sequences.

    input_ids: [B, L] int64; attention_mask: [B, L] int64 (0 at padding);
    labels: [B, L] int64, IGNORE_INDEX except at answer (+ end marker) tokens; None without answers;
    grid_index: [B, S*h*w] int64 positions of the grid tokens in (frame, row, col) order;
    extra_index: [B, n_extra] int64 positions of the extra (newline) tokens.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor | None
    grid_index: Tensor
    extra_index: Tensor


def check_texts(name: str, texts, batch: int) -> list[str]:
    """Validate a list of `batch` strings (prompts or answers) and return it as a list."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise ValueError(f"{name}: expected a list of {batch} strings, got {type(texts).__name__}")
    if len(texts) != batch:
        raise ValueError(f"{name}: expected {batch} entries (one per sample), got {len(texts)}")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name}: every entry must be a string")
    return list(texts)


class PromptBuilder:
    """Token sequences of (frames, prompt[, answer]) through one chat template.

    tokenizer: the checkpoint's tokenizer; template: its chat template; placeholder: the text the template writes
    for one visual item (`<video>`, `<|image_pad|>`); item: that item's content type ("video" | "image").
    The template is checked on construction (before any model is loaded): it must write the placeholder once per
    visual item and its assistant turn must continue its generation prompt.
    """

    def __init__(self, tokenizer, template: ChatTemplate, placeholder: str, item: str):
        self.tokenizer, self.template, self.placeholder = tokenizer, template, placeholder
        for count in (1, 2):
            rendered = self._render([{"type": item}] * count, "Q", None)
            if rendered.count(placeholder) != count:
                raise ValueError(f"{template.source}: the chat template writes the visual placeholder "
                                 f"{placeholder!r} {rendered.count(placeholder)} times for {count} {item} item(s) "
                                 f"(expected {count}); it drops or repeats the frames")
        prompt = self._render([{"type": item}], "Q", None)
        full = self._render([{"type": item}], "Q", _ANSWER)
        if not full.startswith(prompt) or _ANSWER not in full[len(prompt):]:
            raise ValueError(f"{template.source}: the assistant turn does not continue the generation prompt "
                             f"(cannot tell where the answer goes)")
        lead, _, trail = full[len(prompt):].partition(_ANSWER)
        end = trail.strip()
        if not end:
            if tokenizer.eos_token is None:
                raise ValueError(f"{template.source}: the template closes no assistant turn and the tokenizer has "
                                 f"no eos token to end answers with")
            end = tokenizer.eos_token
        self.answer_lead, self.end = lead, end  # answer text = lead + answer + end

    def _render(self, items: list[dict], prompt: str, answer: str | None) -> str:
        messages = [{"role": "user", "content": items + [{"type": "text", "text": prompt}]}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.template.text, tokenize=False,
                                                      add_generation_prompt=answer is None)
        except Exception as exc:  # jinja2 errors and the template's own raise_exception
            raise ValueError(f"{self.template.source}: the chat template cannot render a turn with "
                             f"{items[0]['type'] if items else 'no'} content items "
                             f"({type(exc).__name__}: {exc})") from None

    def _encode(self, text: str) -> list[int]:
        bos = self.tokenizer.bos_token
        special = not (bos is not None and text.startswith(bos))
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def pad_id(self) -> int:
        """The id used for padding: the tokenizer's pad token, else its eos token."""
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError("tokenizer: has neither a pad nor an eos token to pad batches with")
        return int(pad)

    def stop_ids(self) -> list[int]:
        """Token ids that end generation: the answer's end marker (when it is one token) and the tokenizer's eos."""
        ids = []
        end = self.tokenizer(self.end, add_special_tokens=False)["input_ids"]
        if len(end) == 1:
            ids.append(int(end[0]))
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos not in ids:
            ids.append(int(eos))
        return ids

    def sequence(self, layout: VisualLayout, prompt: str, answer: str | None) -> tuple[list[int], int]:
        """Token ids of one sample and the number of prompt tokens (the rest is the answer + end marker)."""
        rendered = self._render(layout.items, prompt, None)
        parts = rendered.split(self.placeholder)
        if len(parts) - 1 != len(layout.items):
            raise ValueError(f"prompts: the text must not contain the visual placeholder {self.placeholder!r} "
                             f"(prompt {prompt[:60]!r})")
        text = parts[0] + "".join(e + p for e, p in zip(layout.expansions, parts[1:]))
        ids = self._encode(text)
        if answer is None:
            return ids, len(ids)
        full = self._encode(text + self.answer_lead + answer + self.end)
        if full[:len(ids)] == ids:
            return full, len(ids)
        tail = self.tokenizer(self.answer_lead + answer + self.end, add_special_tokens=False)["input_ids"]
        return ids + list(tail), len(ids)

    def batch(self, layout: VisualLayout, prompts: Sequence[str], answers: Sequence[str] | None,
              padding_side: str = "right") -> TokenBatch:
        """Tokenise B samples that share one visual layout and pad them.

        Right padding (training) keeps every real token at its unpadded position; left padding (generation) makes
        the last real token the last position. `grid_index` / `extra_index` account for the padding.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        mask = torch.tensor(layout.grid_mask, dtype=torch.bool)
        rows, starts = [], []
        for i, prompt in enumerate(prompts):
            ids, n_prompt = self.sequence(layout, prompt, None if answers is None else answers[i])
            found = sum(1 for t in ids[:n_prompt] if t == layout.token_id)
            if found != len(layout.grid_mask) or layout.token_id in ids[n_prompt:]:
                raise ValueError(f"prompts/answers: expected {len(layout.grid_mask)} visual tokens (id "
                                 f"{layout.token_id}) in the prompt only, found {found}; the text must not contain "
                                 f"visual placeholder tokens")
            rows.append(ids)
            starts.append(n_prompt)
        length, batch = max(len(r) for r in rows), len(rows)
        input_ids = torch.full((batch, length), self.pad_id(), dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        grid, extra = [], []
        for i, (ids, n_prompt) in enumerate(zip(rows, starts)):
            shift = length - len(ids) if padding_side == "left" else 0
            row = torch.tensor(ids, dtype=torch.long)
            input_ids[i, shift:shift + len(ids)] = row
            attention_mask[i, shift:shift + len(ids)] = 1
            labels[i, shift + n_prompt:shift + len(ids)] = row[n_prompt:]
            positions = (row == layout.token_id).nonzero().flatten() + shift
            grid.append(positions[mask])
            extra.append(positions[~mask])
        return TokenBatch(input_ids=input_ids, attention_mask=attention_mask,
                          labels=labels if answers is not None else None, grid_index=torch.stack(grid),
                          extra_index=torch.stack(extra))
