"""Folders shaped like the authors' released Video-3D LLM / 3DRS checkpoints, for the `threedrs convert-official` tests.

What their training (`llava/train/train_3d.py`, LLaVA-NeXT's trainer) saves, written from their code's module tree,
not through threedrs's converter:
- `config.json` of `LlavaQwenForCausalLM` (model_type "llava_qwen"): LLaVA-Video-7B-Qwen2's LLaVA-NeXT fields, the
  3D fields `get_model` writes (world_position_embedding_type, voxel_size, min/max_xyz_range, object_feature_type,
  ground_head_*), the arguments of Video-3D LLM's `train_multi.sh`, and `ground_token_ids` / `coord_token_ids`;
- the tokenizer: Qwen2's (151,643 byte-level BPE tokens, `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` at
  151643-151645) with one more token at 151646 and their `<ground>` 151647 and `<coord>` 151648 added as plain
  tokens, so that `vocab_size` is 151649 as their evaluation scripts set it. Which token holds 151646 is not in
  their code; `<image>` is assumed (it makes no difference to the conversion);
- the weights under their names (`model.layers.*`, `model.vision_tower.vision_tower.vision_model.*` with the 26
  SigLIP layers their tower keeps, `model.mm_projector.{0,2}`, `model.image_newline`, `ground_head_{query,obj}`,
  `ground_head_zero_target`, and for 3DRS `model.proj_3d` and the dead `model.{corres_linear,linear_dc,
  geometric_linear}`) in bfloat16, as `model-0000i-of-00002.safetensors` + index or `pytorch_model-*.bin` + index,
  plus the `training_args.bin` pickle the trainer leaves beside them (never to be read).
Only the widths and depths are cut (LLM hidden 64, 2 layers; SigLIP hidden 32, 2 layers); the SigLIP input stays
384 x 384 with 14-pixel patches (27 x 27 patches, pooled 14 x 14), so every pixel rule is the real one.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from release_templates import QWEN2_INSTRUCT
from release_tokenizers import added_tokens_decoder, write_qwen_tokenizer
from safetensors.torch import save_file

VOCAB = 151649
ADDED = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>", 151646: "<image>",
         151647: "<ground>", 151648: "<coord>"}
PLAIN = {"<ground>", "<coord>"}  # their add_tokens_and_resize_embeddings adds these as normal tokens
SIZES = dict(hidden=64, intermediate=128, heads=4, kv=2, layers=2, vision_hidden=32, vision_intermediate=64,
             vision_layers=2, teacher=2048)
VISION = "model.vision_tower.vision_tower.vision_model."


def official_config(sizes: dict = SIZES) -> dict:
    """config.json as their training writes it (widths from `sizes`); the same for both kinds (3DRS shows only in
    its tensors, `official_shapes`)."""
    pinpoints = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
    return {
        "_name_or_path": "data/models/LLaVA-Video-7B-Qwen2", "add_faster_video": False,
        "add_time_instruction": False, "architectures": ["LlavaQwenForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "coord_token_ids": [151648], "eos_token_id": 151645, "faster_token_stride": 10,
        "force_sample": True, "ground_head_hidden_size": 512, "ground_head_temperature": 0.07,
        "ground_head_type": "infonce", "ground_loss_scale": 1, "ground_token_ids": [151647], "hidden_act": "silu",
        "hidden_size": sizes["hidden"], "image_aspect_ratio": "anyres_max_9", "image_crop_resolution": None,
        "image_grid_pinpoints": pinpoints, "image_split_resolution": None, "initializer_range": 0.02,
        "intermediate_size": sizes["intermediate"], "max_position_embeddings": 32768, "max_window_layers": 28,
        "max_xyz_range": [15, 15, 5], "min_xyz_range": [-15, -15, -5], "mm_hidden_size": sizes["vision_hidden"],
        "mm_newline_position": "grid", "mm_patch_merge_type": "spatial_unpad", "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu", "mm_resampler_type": None, "mm_spatial_pool_mode": "bilinear",
        "mm_spatial_pool_stride": 2, "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model",
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "mm_vision_tower": "google/siglip-so400m-patch14-384",
        "mm_vision_tower_lr": 2e-06, "model_type": "llava_qwen", "num_attention_heads": sizes["heads"],
        "num_hidden_layers": sizes["layers"], "num_key_value_heads": sizes["kv"],
        "object_feature_type": "patch14-pe", "pos_skipping_range": 4096, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
        "tokenizer_model_max_length": 32768, "tokenizer_padding_side": "right", "torch_dtype": "bfloat16",
        "transformers_version": "4.40.0.dev0", "use_cache": False, "use_mm_proj": True, "use_pos_skipping": False,
        "use_sliding_window": False, "vision_tower_pretrained": None, "voxel_size": 0.1, "vocab_size": VOCAB,
        "world_position_embedding_type": "avg-discrete-sin3d"}


def official_shapes(kind: str, sizes: dict = SIZES) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of their LlavaQwenForCausalLM state dict (3DRS adds proj_3d and its dead modules)."""
    h, i, v = sizes["hidden"], sizes["intermediate"], sizes["vision_hidden"]
    kv = sizes["kv"] * h // sizes["heads"]
    shapes = {"model.embed_tokens.weight": (VOCAB, h), "model.norm.weight": (h,), "lm_head.weight": (VOCAB, h)}
    for n in range(sizes["layers"]):
        p = f"model.layers.{n}."
        shapes |= {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
                   p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
                   p + "self_attn.o_proj.weight": (h, h), p + "mlp.gate_proj.weight": (i, h),
                   p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
                   p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}
    shapes |= {VISION + "embeddings.patch_embedding.weight": (v, 3, 14, 14),
               VISION + "embeddings.patch_embedding.bias": (v,),
               VISION + "embeddings.position_embedding.weight": (27 * 27, v),
               VISION + "post_layernorm.weight": (v,), VISION + "post_layernorm.bias": (v,)}
    for n in range(sizes["vision_layers"]):
        p = f"{VISION}encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes |= {p + f"self_attn.{proj}.weight": (v, v), p + f"self_attn.{proj}.bias": (v,)}
        shapes |= {p + "layer_norm1.weight": (v,), p + "layer_norm1.bias": (v,), p + "layer_norm2.weight": (v,),
                   p + "layer_norm2.bias": (v,), p + "mlp.fc1.weight": (sizes["vision_intermediate"], v),
                   p + "mlp.fc1.bias": (sizes["vision_intermediate"],),
                   p + "mlp.fc2.weight": (v, sizes["vision_intermediate"]), p + "mlp.fc2.bias": (v,)}
    shapes |= {"model.mm_projector.0.weight": (h, v), "model.mm_projector.0.bias": (h,),
               "model.mm_projector.2.weight": (h, h), "model.mm_projector.2.bias": (h,), "model.image_newline": (h,),
               "ground_head_zero_target": (h,)}
    for head in ("ground_head_obj", "ground_head_query"):  # Linear, ReLU, LayerNorm, Linear
        shapes |= {f"{head}.0.weight": (h, h), f"{head}.0.bias": (h,), f"{head}.2.weight": (h,),
                   f"{head}.2.bias": (h,), f"{head}.3.weight": (h, h), f"{head}.3.bias": (h,)}
    if kind == "3drs":
        t = sizes["teacher"]
        shapes |= {"model.proj_3d.0.weight": (2 * h, h), "model.proj_3d.0.bias": (2 * h,),
                   "model.proj_3d.2.weight": (t, 2 * h), "model.proj_3d.2.bias": (t,),
                   "model.corres_linear.weight": (h, h), "model.linear_dc.weight": (h // 32, h),
                   "model.geometric_linear.weight": (5, h // 16)}
    return shapes


def official_tensors(kind: str, seed: int = 0, sizes: dict = SIZES) -> dict[str, torch.Tensor]:
    """Random bfloat16 weights of every tensor (norm weights near 1, the rest small), deterministic per seed."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in official_shapes(kind, sizes).items():
        values = torch.randn(shape, generator=gen) * 0.05
        if name.endswith("norm.weight") or "layer_norm" in name and name.endswith("weight") or (
                name.endswith(".2.weight") and name.startswith("ground_head")):
            values = values + 1.0
        out[name] = values.to(torch.bfloat16)
    return out


def _write_tokenizer(directory: Path) -> None:
    write_qwen_tokenizer(directory, ADDED)
    data = json.loads((directory / "tokenizer.json").read_text())
    for token in data["added_tokens"]:
        if token["content"] in PLAIN:
            token["special"] = False
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    decoder = added_tokens_decoder(ADDED)
    for entry in decoder.values():
        if entry["content"] in PLAIN:
            entry["special"] = False
    config = {"add_prefix_space": False, "added_tokens_decoder": decoder,
              "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
              "chat_template": QWEN2_INSTRUCT, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
              "errors": "replace", "model_max_length": 32768, "pad_token": "<|endoftext|>", "padding_side": "right",
              "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "eos_token": "<|im_end|>",
         "pad_token": "<|endoftext|>"}, indent=2) + "\n")
    (directory / "added_tokens.json").write_text(json.dumps({t: i for i, t in sorted(ADDED.items())}, indent=2))


def write_official_checkpoint(directory: str | Path, kind: str = "3drs", weights: str = "safetensors",
                              seed: int = 0) -> Path:
    """Write an authors'-layout checkpoint folder (module docstring) into `directory` and return its path.

    kind: "3drs" | "video3dllm"; weights: "safetensors" | "bin" (2 shards + index either way).
    """
    if kind not in ("3drs", "video3dllm") or weights not in ("safetensors", "bin"):
        raise ValueError(f"kind / weights: got {kind!r}, {weights!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(official_config(), indent=2) + "\n")
    _write_tokenizer(directory)
    tensors = official_tensors(kind, seed)
    names = sorted(tensors)
    per = math.ceil(len(names) / 2)
    stem, suffix = ("model", "safetensors") if weights == "safetensors" else ("pytorch_model", "bin")
    weight_map = {}
    for k in range(2):
        file = f"{stem}-{k + 1:05d}-of-00002.{suffix}"
        part = {n: tensors[n] for n in names[k * per:(k + 1) * per]}
        if weights == "safetensors":
            save_file(part, str(directory / file), metadata={"format": "pt"})
        else:
            torch.save(part, directory / file)
        weight_map |= {n: file for n in part}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / f"{stem}.{suffix}.index.json").write_text(json.dumps(index, indent=2) + "\n")
    torch.save(argparse.Namespace(learning_rate=1e-5, output_dir="./ckpt/3drs"), directory / "training_args.bin")
    return directory
