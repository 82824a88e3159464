"""Token sequences of one chat turn with frames: the chat template, the visual block, labels and padding.

A sample's sequence is

    system + user + <visual block> + visual_sep + prompt + assistant + answer + end

where the visual block is the family's placeholder tokens for S frames (LLaVA: a run of `<video>` tokens; InternVL:
`Frame1: <img><IMG_CONTEXT>...</img>` per frame). The answer and the closing `end` marker are the only supervised
tokens (labels -100 elsewhere): the end marker is what teaches the model to stop, as in LLaVA's own training.

Pieces are tokenised separately (the first with the tokenizer's own special tokens, e.g. a BOS, the rest without),
so the answer tokens are exactly `tokenizer(answer + end)` whatever the prompt is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from threedrs.models.base import IGNORE_INDEX



@dataclass(frozen=True)
class ChatTemplate:
    """The text around one user turn (frames + prompt) and the assistant's answer.

    The default is the ChatML form with a system turn ("qwen_1_5" in LLaVA-NeXT), which LLaVA-OneVision,
    LLaVA-Video / Video-3D LLM (3DRS's base) and InternVL2.5/3 are trained with. A Vicuna-based checkpoint (e.g.
    LLaVA-NeXT-Video-7B) needs its own: `ChatTemplate(system="", user="USER: ", assistant=" ASSISTANT:", end="</s>")`.
    The answer is tokenised on its own, so `assistant` must end where the tokenizer splits anyway (a newline or a
    special token as in ChatML; a SentencePiece tokenizer adds the answer's leading space itself); a trailing
    space would be a token of its own here but merge with the answer's first word in a whole-string tokenisation.
    """

    system: str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"  # text before the user turn
    user: str = "<|im_start|>user\n"  # opens the user turn; the visual block follows it
    visual_sep: str = "\n"  # between the visual block and the prompt
    assistant: str = "<|im_end|>\n<|im_start|>assistant\n"  # closes the user turn and opens the answer
    end: str = "<|im_end|>"  # closes the answer (supervised; generation stops at it when it is one token)


@dataclass(frozen=True)
class VisualBlock:
    """Token ids of the visual part of a prompt for S frames.

    ids: the block's token ids (placeholders and any interleaved text such as InternVL's `Frame1: <img>`).
    grid: offsets within `ids` of the per-frame grid tokens, in (frame, row, col) order, length S*h*w.
    extra: offsets within `ids` of model-made embeddings that are not grid tokens (LLaVA-OneVision's newline), in
        the order the model's encoder returns them; they get no 3D offset and are never supervised.
    """

    ids: list[int]
    grid: list[int]
    extra: list[int]


@dataclass
class TokenBatch:
    """A padded batch of sequences.

    input_ids: [B, L] int64; attention_mask: [B, L] int64 (0 at padding);
    labels: [B, L] int64, IGNORE_INDEX except at answer (+ end marker) tokens; None without answers;
    grid_index: [B, S*h*w] int64 positions of the grid tokens in (frame, row, col) order;
    extra_index: [B, n_extra] int64 positions of the extra (newline) tokens;
    prompt_lengths: [B] number of real tokens before the answer.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor | None
    grid_index: Tensor
    extra_index: Tensor
    prompt_lengths: Tensor


def _token_ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"]) if text or special else []


def check_texts(name: str, texts, batch: int) -> list[str]:
    """Validate a list of `batch` strings (prompts or answers) and return it as a list."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise ValueError(f"{name}: expected a list of {batch} strings, got {type(texts).__name__}")
    if len(texts) != batch:
        raise ValueError(f"{name}: expected {batch} entries (one per sample), got {len(texts)}")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name}: every entry must be a string")
    return list(texts)


def pad_id_of(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else its eos token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer: has neither a pad nor an eos token to pad batches with")
    return int(pad)


def stop_ids(tokenizer, chat: ChatTemplate) -> list[int]:
    """Token ids that end generation: the template's end marker (when it is one token) and the tokenizer's eos."""
    ids = []
    end = _token_ids(tokenizer, chat.end, special=False)
    if len(end) == 1:
        ids.append(end[0])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def build_batch(tokenizer, chat: ChatTemplate, block: VisualBlock, prompts: list[str],
                answers: list[str] | None, padding_side: str = "right") -> TokenBatch:
    """Tokenise B samples that share one visual block and pad them.

    Right padding (training) keeps every real token at its unpadded position; left padding (generation) makes the
    last real token the last position. Positions in `grid_index` / `extra_index` account for the padding.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
    head = _token_ids(tokenizer, chat.system + chat.user, special=True)
    rows, label_rows, prompt_lengths = [], [], []
    for i, prompt in enumerate(prompts):
        tail = _token_ids(tokenizer, chat.visual_sep + prompt + chat.assistant, special=False)
        ids = head + block.ids + tail
        prompt_lengths.append(len(ids))
        labels = [IGNORE_INDEX] * len(ids)
        if answers is not None:
            answer = _token_ids(tokenizer, answers[i] + chat.end, special=False)
            ids = ids + answer
            labels = labels + answer
        rows.append(ids)
        label_rows.append(labels)
    length = max(len(r) for r in rows)
    pad = pad_id_of(tokenizer)
    batch = len(rows)
    input_ids = torch.full((batch, length), pad, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    shifts = []
    for i, (ids, lab) in enumerate(zip(rows, label_rows)):
        start = length - len(ids) if padding_side == "left" else 0
        shifts.append(start)
        input_ids[i, start:start + len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, start:start + len(ids)] = 1
        labels[i, start:start + len(ids)] = torch.tensor(lab, dtype=torch.long)
    shift = torch.tensor(shifts, dtype=torch.long)[:, None] + len(head)
    grid_index = torch.tensor(block.grid, dtype=torch.long)[None, :] + shift
    extra_index = torch.tensor(block.extra, dtype=torch.long).reshape(1, -1) + shift
    return TokenBatch(input_ids=input_ids, attention_mask=attention_mask,
                      labels=labels if answers is not None else None, grid_index=grid_index,
                      extra_index=extra_index, prompt_lengths=torch.tensor(prompt_lengths, dtype=torch.long))
