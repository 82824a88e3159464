"""Folders shaped like the RELEASED Hugging Face checkpoints of the five families, written offline for tests.

`write_release_checkpoint(family, directory)` writes what a user who downloaded the release holds:
- `config.json` in the release's own layout and keys (Qwen2-VL / Qwen2.5-VL: the flat 2024 layout with
  `rope_scaling: {type: mrope}`; the llava-hf and InternVL `-hf` conversions: nested `text_config` /
  `vision_config`), `torch_dtype` as released (bfloat16; float16 for the llava-hf OneVision conversions), the
  real special-token ids and the real vocabulary size;
- weights as safetensors IN THAT DTYPE, under the release's tensor names (Qwen: `model.*`, `visual.*`; llava-hf:
  `language_model.model.*`, `vision_tower.vision_model.*`, `multi_modal_projector.*`, `image_newline`;
  InternVL-hf: `model.language_model.*`, `model.vision_tower.*`, `lm_head`), sharded with an index file when the
  release is sharded;
- the tokenizer in the released form (`tokenizer.json`, `tokenizer_config.json`; every special token at its real
  id, see release_tokenizers.py), the chat template where that release keeps it (release_templates.py), the
  image processor's `preprocessor_config.json` and `generation_config.json`.

Only the depth is cut (`layers`, 1-2, for the LLM and the vision tower) and, by default, the widths
(`width="small"`: hidden sizes of 32-64 so that CPU tests stay fast; vocabulary, ids and every key stay real).
`width="release"` keeps the release's widths (e.g. the 2B-size Qwen2-VL with 2 layers for load benchmarks).
Variants: qwen2_vl 2b / 7b, qwen2_5_vl 3b / 7b, llava_onevision 0.5b / 7b, llava_next_video 7b, internvl 1b / 2b / 8b.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from release_configs import RELEASES, Release, release_config
from release_tokenizers import added_tokens_decoder, write_llama_tokenizer, write_qwen_tokenizer

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "llava_next_video", "internvl")
DEFAULT_VARIANT = {"qwen2_vl": "2b", "qwen2_5_vl": "3b", "llava_onevision": "0.5b", "llava_next_video": "7b",
                   "internvl": "2b"}

# transformers-5 in-memory tensor names -> the names in the released files (first matching prefix wins)
RELEASED_NAMES = {
    "qwen": [("model.visual.", "visual."), ("model.language_model.", "model.")],
    "llava_hf": [("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                 ("model.vision_tower.", "vision_tower.vision_model."),
                 ("model.multi_modal_projector.", "multi_modal_projector."), ("model.image_newline", "image_newline")],
    "internvl_hf": [],
}


def _json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _released_state_dict(model: torch.nn.Module, release: Release, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's tensors under the released names, in `dtype`; lm_head left out where the release leaves it out
    (Qwen's tied 2B/3B), stored as its own copy where the release stores it (the llava-hf conversions)."""
    rules = RELEASED_NAMES[release.naming]
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and release.tied:
            continue
        for old, new in rules:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[name] = tensor.detach().to(dtype).clone()
    return out


def _save_weights(directory: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json` when sharded."""
    if shards == 1:
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
        return
    names = list(tensors)
    per = math.ceil(len(names) / shards)
    weight_map, total = {}, 0
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, directory / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
        total += sum(tensors[n].numel() * tensors[n].element_size() for n in part)
    _json(directory / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def _write_tokenizer(directory: Path, release: Release) -> None:
    tok = release.tokenizer
    if tok.kind == "qwen":
        write_qwen_tokenizer(directory, tok.added)
    else:
        write_llama_tokenizer(directory, tok.added)
    config = dict(tok.config)
    config["added_tokens_decoder"] = added_tokens_decoder(tok.decoder_tokens)
    if tok.config_template is not None:
        config["chat_template"] = tok.config_template
    _json(directory / "tokenizer_config.json", dict(sorted(config.items())))
    if tok.special_tokens_map:
        _json(directory / "special_tokens_map.json", tok.special_tokens_map)


def write_release_checkpoint(family: str, directory: str | Path, variant: str | None = None, width: str = "small",
                             layers: int = 2, seed: int = 0) -> Path:
    """Write a release-shaped checkpoint folder of `family` into `directory` (created) and return its path.

    variant: which release (None = DEFAULT_VARIANT[family]); width: "small" (CPU-fast hidden sizes) or "release";
    layers: LLM and vision depth (1 or 2); seed: weight initialisation (the global RNG is left untouched).
    """
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    variant = variant or DEFAULT_VARIANT[family]
    if variant not in RELEASES[family]:
        raise ValueError(f"variant: {family} releases are {sorted(RELEASES[family])}, got {variant!r}")
    if width not in ("small", "release") or layers not in (1, 2):
        raise ValueError(f"width must be 'small' or 'release' and layers 1 or 2, got {width!r}, {layers}")
    release = RELEASES[family][variant]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = release_config(release, width=width, layers=layers)
    _json(directory / "config.json", config)
    _json(directory / "generation_config.json", release.generation_config)
    _json(directory / "preprocessor_config.json", release.preprocessor_config)
    for name, content in release.extra_files.items():
        (directory / name).write_text(content)
    _write_tokenizer(directory, release)

    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(directory, local_files_only=True)
    dtype = getattr(torch, config["torch_dtype"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = release.model_class()(hf_config)
    _save_weights(directory, _released_state_dict(model, release, dtype), release.shards)
    return directory
