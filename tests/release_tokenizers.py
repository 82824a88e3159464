"""Offline tokenizer files shaped like the released ones, with every special token at its REAL id.

A released Qwen tokenizer has 151,643 byte-level BPE tokens followed by its added special tokens (151643
`<|endoftext|>` ...); a Vicuna / Llama tokenizer has 32,000 SentencePiece-style BPE tokens (0 `<unk>`, 1 `<s>`,
2 `</s>`, 3-258 the byte-fallback tokens `<0x00>`-`<0xFF>`). Their vocabularies cannot be shipped, so the files
written here train a small BPE of the same kind (`tokenizers`, a few hundred merges, well under a second) and fill
the rest of the base vocabulary with unused placeholder tokens, so that `len(tokenizer)`, every special-token id
and the id of any token added later are the released ones. The pipeline (normalizer, pre-tokenizer, decoder,
post-processor) is written in the released `tokenizer.json` form.

`write_qwen_tokenizer(dir, added)` / `write_llama_tokenizer(dir, added)` write `tokenizer.json` (and for Qwen also
`vocab.json` / `merges.txt` as the releases have them); the caller writes `tokenizer_config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from threedrs.models.tiny import BASE_CORPUS

# Words of the benchmark prompts, answers and chat markup (the tiny models' corpus plus the markup of the
# released templates); the BPE learns merges for them.
CORPUS = BASE_CORPUS + "picture USER ASSISTANT Frame".split()

# Qwen2's pre-tokenizer split pattern (tokenizer.json of every Qwen2 / Qwen2.5 release).
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
QWEN_BASE_VOCAB = 151643  # byte-level BPE tokens before the first added token (<|endoftext|>)
LLAMA_BASE_VOCAB = 32000  # SentencePiece vocabulary of Llama-2 / Vicuna


def _training_text() -> list[str]:
    words = CORPUS + [w.capitalize() for w in CORPUS]
    return [" ".join(words)] * 4 + [" " + w for w in words] + ["\n".join(words), "0123456789 .,?!:;'\"()[]{}<>-_/"]


def _filled(vocab: dict[str, int], size: int) -> dict[str, int]:
    """`vocab` (ids 0..n-1) extended with unused placeholder tokens to exactly `size` entries (ids 0..size-1)."""
    if len(vocab) > size:
        raise ValueError(f"trained vocabulary ({len(vocab)}) exceeds the released size {size}")
    out = dict(vocab)
    k = 0
    while len(out) < size:
        out.setdefault(f"<|unused_{k}|>", len(out))
        k += 1
    return out


def _added(token: str, token_id: int, special: bool = True) -> dict:
    return {"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def write_qwen_tokenizer(directory: Path, added: dict[int, str]) -> dict:
    """Write a Qwen2-style byte-level BPE (`tokenizer.json`, `vocab.json`, `merges.txt`) into `directory`.

    added: id -> token of the added (special) tokens, ids from 151643 up as released.
    Returns the tokenizer.json content (a dict).
    """
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_text(), trainer=trainer)
    data = json.loads(tok.to_str())
    vocab = _filled(data["model"]["vocab"], QWEN_BASE_VOCAB)
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    data["model"].update(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                         end_of_word_suffix="", fuse_unk=False, byte_fallback=False, ignore_merges=False)
    data["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                              "use_regex": False}
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    data["added_tokens"] = [_added(t, i) for i, t in sorted(added.items())]
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return data


def write_llama_tokenizer(directory: Path, added: dict[int, str]) -> dict:
    """Write a Llama-2 / Vicuna-style SentencePiece BPE with byte fallback (`tokenizer.json`) into `directory`.

    Ids 0-2 are `<unk>`, `<s>`, `</s>`, 3-258 the byte tokens, the merges follow and unused placeholders fill the
    vocabulary to 32,000; `added`: id -> token of the tokens added after it (LLaVA: `<video>` 32000, `<image>` 32001).
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # pieces are learned within words, each word starting with "▁" (as SentencePiece learns them)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=500, show_progress=False, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(_training_text(), trainer=trainer)
    data = json.loads(tok.to_str())
    trained = data["model"]["vocab"]
    ordered = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    ordered += [t for t, _ in sorted(trained.items(), key=lambda kv: kv[1]) if t not in ordered]
    vocab = _filled({t: i for i, t in enumerate(ordered)}, LLAMA_BASE_VOCAB)
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    data["model"].update(vocab=vocab, merges=merges, dropout=None, unk_token="<unk>", continuing_subword_prefix=None,
                         end_of_word_suffix=None, fuse_unk=True, byte_fallback=True, ignore_merges=False)
    data["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                              {"type": "Replace", "pattern": {"String": " "},
                                                               "content": "▁"}]}
    data["pre_tokenizer"] = None
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    base = {0: "<unk>", 1: "<s>", 2: "</s>"}
    data["added_tokens"] = [_added(t, i) for i, t in sorted({**base, **added}.items())]
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    return data


def added_tokens_decoder(added: dict[int, str]) -> dict[str, dict]:
    """The `added_tokens_decoder` block of a tokenizer_config.json for the tokens `added` (id -> token)."""
    return {str(i): {k: v for k, v in _added(t, i).items() if k != "id"} for i, t in sorted(added.items())}
