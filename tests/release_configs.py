"""Facts about the released checkpoints the release-shaped test folders imitate (release_checkpoints.py).

Each `Release` holds what a downloaded folder of that release contains apart from weights and vocabulary: the
config.json layout (built by `release_config`), the widths of the variant, the tokenizer's added tokens at their
real ids and its tokenizer_config.json keys, where the chat template lives, the image processor config and the
generation config. Sources: the released config / tokenizer / processor files and transformers' conversion
scripts (convert_llava_onevision_weights_to_hf.py, convert_llava_next_video_weights_to_hf.py,
convert_internvl_weights_to_hf.py), which say how the llava-hf and -hf folders were produced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import release_templates as templates

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
SMALL_LLM = dict(hidden=64, intermediate=128, heads=4)  # width="small": head_dim 16
SMALL_VISION = dict(hidden=32, intermediate=64, heads=2)

QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 151643-151645 in every Qwen2 tokenizer
QWEN_VL_SPECIALS = QWEN2_SPECIALS + ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                                     "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                                     "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]  # 151643-151656
QWEN25_EXTRA = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                "<|repo_name|>", "<|file_sep|>"]  # 151657-151664 (Qwen2.5 tokenizers)
INTERNVL_EXTRA = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]


def _ids(tokens: list[str], start: int) -> dict[int, str]:
    return {start + i: t for i, t in enumerate(tokens)}


@dataclass(frozen=True)
class TokenizerRelease:
    """kind: "qwen" (byte-level BPE, 151643 base tokens) or "llama" (SentencePiece BPE, 32000); added: id -> token
    after the base vocabulary; decoder_tokens: those listed in tokenizer_config.json's added_tokens_decoder;
    config: the other tokenizer_config.json keys; config_template: the chat template kept in it (or None)."""

    kind: str
    added: dict[int, str]
    decoder_tokens: dict[int, str]
    config: dict
    config_template: str | None = None
    special_tokens_map: dict | None = None


@dataclass(frozen=True)
class Release:
    """One released checkpoint: repo name, widths (`llm`, `vision`), tensor naming, tying, shards and files."""

    family: str
    repo: str
    llm: dict
    vision: dict
    tokenizer: TokenizerRelease
    naming: str  # key of release_checkpoints.RELEASED_NAMES
    tied: bool  # lm_head tied to the input embeddings and not stored in the files
    shards: int
    dtype: str
    generation_config: dict
    preprocessor_config: dict
    extra_files: dict[str, str] = field(default_factory=dict)  # file name -> content (chat_template.json ...)

    def model_class(self) -> type:
        import transformers

        name = {"qwen2_vl": "Qwen2VLForConditionalGeneration",
                "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                "llava_onevision": "LlavaOnevisionForConditionalGeneration",
                "llava_next_video": "LlavaNextVideoForConditionalGeneration",
                "internvl": "InternVLForConditionalGeneration"}[self.family]
        return getattr(transformers, name)


def _chat_template_json(template: str) -> dict[str, str]:
    return {"chat_template.json": json.dumps({"chat_template": template}, indent=2) + "\n"}


# ---------------------------------------------------------------------------------------------------- Qwen
def _qwen_tokenizer(added: list[str], max_length: int) -> TokenizerRelease:
    ids = _ids(added, 151643)
    return TokenizerRelease(
        kind="qwen", added=ids, decoder_tokens=ids, config_template=templates.QWEN_VL, config=dict(
            add_prefix_space=False, additional_special_tokens=QWEN_VL_SPECIALS[1:], bos_token=None,
            clean_up_tokenization_spaces=False, eos_token="<|im_end|>", errors="replace",
            model_max_length=max_length, pad_token="<|endoftext|>", split_special_tokens=False,
            tokenizer_class="Qwen2Tokenizer", unk_token=None))


def _qwen_processor(processor_class: str) -> dict:
    return {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
            "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": processor_class}


def _qwen_generation(repetition_penalty: float) -> dict:
    return {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
            "repetition_penalty": repetition_penalty, "temperature": 0.1, "top_p": 0.001, "top_k": 1,
            "transformers_version": "4.37.0"}


def _qwen2_vl(repo, hidden, intermediate, heads, kv, vocab, tied, shards) -> Release:
    return Release(family="qwen2_vl", repo=repo, llm=dict(hidden=hidden, intermediate=intermediate, heads=heads,
                                                          kv=kv, layers=28, vocab=vocab, window=28),
                   vision=dict(hidden=1280, heads=16, depth=32), tokenizer=_qwen_tokenizer(QWEN_VL_SPECIALS, 32768),
                   naming="qwen", tied=tied, shards=shards, dtype="bfloat16",
                   generation_config=_qwen_generation(1.0), preprocessor_config=_qwen_processor("Qwen2VLProcessor"),
                   extra_files=_chat_template_json(templates.QWEN_VL))


def _qwen2_5_vl(repo, hidden, intermediate, heads, kv, layers, vocab, window, tied, shards) -> Release:
    return Release(family="qwen2_5_vl", repo=repo, llm=dict(hidden=hidden, intermediate=intermediate, heads=heads,
                                                            kv=kv, layers=layers, vocab=vocab, window=window),
                   vision=dict(hidden=1280, intermediate=3420, heads=16, depth=32),
                   tokenizer=_qwen_tokenizer(QWEN_VL_SPECIALS + QWEN25_EXTRA, 131072), naming="qwen", tied=tied,
                   shards=shards, dtype="bfloat16", generation_config=_qwen_generation(1.05),
                   preprocessor_config=_qwen_processor("Qwen2_5_VLProcessor"),
                   extra_files=_chat_template_json(templates.QWEN_VL))


# ---------------------------------------------------------------------------------------------------- LLaVA
def _onevision(repo, hidden, intermediate, heads, kv, layers, vocab, tied, shards, text_id) -> Release:
    ids = _ids(QWEN2_SPECIALS + ["<image>", "<video>"], 151643)
    tokenizer = TokenizerRelease(
        kind="qwen", added=ids, decoder_tokens=ids, config_template=templates.QWEN2_INSTRUCT, config=dict(
            additional_special_tokens=["<|im_start|>", "<|im_end|>"], bos_token=None,
            clean_up_tokenization_spaces=False, eos_token="<|im_end|>", errors="replace", model_max_length=32768,
            pad_token="<|endoftext|>", split_special_tokens=False, tokenizer_class="Qwen2Tokenizer",
            unk_token=None))
    size = {"height": 384, "width": 384}
    pinpoints = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
    processor = {"do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
                 "image_grid_pinpoints": pinpoints, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                 "image_processor_type": "LlavaOnevisionImageProcessor", "processor_class": "LlavaOnevisionProcessor",
                 "resample": 3, "rescale_factor": 1 / 255, "size": size}
    proc = {"num_image_tokens": 729, "processor_class": "LlavaOnevisionProcessor",
            "vision_feature_select_strategy": "full"}
    return Release(family="llava_onevision", repo=repo, llm=dict(hidden=hidden, intermediate=intermediate,
                                                                 heads=heads, kv=kv, layers=layers, vocab=vocab,
                                                                 window=layers, name=text_id, tied=tied),
                   vision=dict(hidden=1152, intermediate=4304, heads=16, depth=26), tokenizer=tokenizer,
                   naming="llava_hf", tied=False, shards=shards, dtype="float16",
                   generation_config={"bos_token_id": 151643, "eos_token_id": 151645,
                                      "transformers_version": "4.45.0.dev0"},
                   preprocessor_config=processor,
                   extra_files={**_chat_template_json(templates.LLAVA_ONEVISION),
                                "processor_config.json": json.dumps(proc, indent=2) + "\n"})


def _next_video() -> Release:
    ids = {32000: "<video>", 32001: "<image>"}
    tokenizer = TokenizerRelease(
        kind="llama", added=ids, decoder_tokens={0: "<unk>", 1: "<s>", 2: "</s>", **ids}, config=dict(
            add_bos_token=True, add_eos_token=False, bos_token="<s>", clean_up_tokenization_spaces=False,
            eos_token="</s>", legacy=False, model_max_length=4096, pad_token="<unk>", padding_side="left",
            sp_model_kwargs={}, tokenizer_class="LlamaTokenizer", unk_token="<unk>",
            use_default_system_prompt=False),
        special_tokens_map={"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"})
    processor = {"crop_size": {"height": 336, "width": 336}, "do_center_crop": True, "do_convert_rgb": True,
                 "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
                 "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
                 "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "image_processor_type": "LlavaNextImageProcessor",
                 "processor_class": "LlavaNextVideoProcessor", "resample": 3, "rescale_factor": 1 / 255,
                 "size": {"shortest_edge": 336}}
    proc = {"patch_size": 14, "processor_class": "LlavaNextVideoProcessor", "vision_feature_select_strategy": "default"}
    return Release(family="llava_next_video", repo="llava-hf/LLaVA-NeXT-Video-7B-hf",
                   llm=dict(hidden=4096, intermediate=11008, heads=32, kv=32, layers=32, vocab=32064),
                   vision=dict(hidden=1024, intermediate=4096, heads=16, depth=24), tokenizer=tokenizer,
                   naming="llava_hf", tied=False, shards=3, dtype="bfloat16",
                   generation_config={"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                                      "pad_token_id": 0, "transformers_version": "4.42.0.dev0"},
                   preprocessor_config=processor,
                   extra_files={**_chat_template_json(templates.LLAVA_NEXT_VIDEO_VICUNA),
                                "processor_config.json": json.dumps(proc, indent=2) + "\n"})


# -------------------------------------------------------------------------------------------------- InternVL
def _internvl(repo, hidden, intermediate, heads, kv, layers, shards) -> Release:
    added = _ids(QWEN_VL_SPECIALS + QWEN25_EXTRA + INTERNVL_EXTRA, 151643)
    image_tokens = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                    "video_token": "<video>"}
    tokenizer = TokenizerRelease(
        kind="qwen", added=added, decoder_tokens=added, config=dict(
            add_prefix_space=False, additional_special_tokens=QWEN_VL_SPECIALS[1:] + INTERNVL_EXTRA, bos_token=None,
            clean_up_tokenization_spaces=False, eos_token="<|im_end|>", errors="replace",
            extra_special_tokens=image_tokens, model_max_length=8192, pad_token="<|endoftext|>",
            return_token_type_ids=False, split_special_tokens=False, tokenizer_class="Qwen2Tokenizer",
            unk_token=None, **image_tokens))
    processor = {"crop_size": None, "crop_to_patches": False, "data_format": "channels_first",
                 "default_to_square": True, "do_center_crop": None, "do_convert_rgb": True, "do_normalize": True,
                 "do_rescale": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
                 "image_processor_type": "GotOcr2ImageProcessorFast", "image_std": [0.229, 0.224, 0.225],
                 "max_patches": 12, "min_patches": 1, "processor_class": "InternVLProcessor", "resample": 3,
                 "rescale_factor": 1 / 255, "size": {"height": 448, "width": 448}}
    proc = {"image_seq_length": 256, "processor_class": "InternVLProcessor"}
    return Release(family="internvl", repo=repo, llm=dict(hidden=hidden, intermediate=intermediate, heads=heads,
                                                          kv=kv, layers=layers, vocab=151674, window=70),
                   vision=dict(hidden=1024, intermediate=4096, heads=16, depth=24), tokenizer=tokenizer,
                   naming="internvl_hf", tied=False, shards=shards, dtype="bfloat16",
                   generation_config={"_from_model_config": True, "bos_token_id": 151643, "eos_token_id": 151645,
                                      "transformers_version": "4.52.0.dev0"},
                   preprocessor_config=processor,
                   extra_files={"chat_template.jinja": templates.INTERNVL_HF,
                                "processor_config.json": json.dumps(proc, indent=2) + "\n"})


RELEASES: dict[str, dict[str, Release]] = {
    "qwen2_vl": {"2b": _qwen2_vl("Qwen/Qwen2-VL-2B-Instruct", 1536, 8960, 12, 2, 151936, True, 2),
                 "7b": _qwen2_vl("Qwen/Qwen2-VL-7B-Instruct", 3584, 18944, 28, 4, 152064, False, 5)},
    "qwen2_5_vl": {"3b": _qwen2_5_vl("Qwen/Qwen2.5-VL-3B-Instruct", 2048, 11008, 16, 2, 36, 151936, 70, True, 2),
                   "7b": _qwen2_5_vl("Qwen/Qwen2.5-VL-7B-Instruct", 3584, 18944, 28, 4, 28, 152064, 28, False, 5)},
    "llava_onevision": {
        "0.5b": _onevision("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", 896, 4864, 14, 2, 24, 152000, True, 1,
                           "Qwen/Qwen2-0.5B-Instruct"),
        "7b": _onevision("llava-hf/llava-onevision-qwen2-7b-ov-hf", 3584, 18944, 28, 4, 28, 152128, False, 4,
                         "Qwen/Qwen2-7B-Instruct")},
    "llava_next_video": {"7b": _next_video()},
    "internvl": {"1b": _internvl("OpenGVLab/InternVL3-1B-hf", 896, 4864, 14, 2, 24, 1),
                 "2b": _internvl("OpenGVLab/InternVL3-2B-hf", 1536, 8960, 12, 2, 28, 1),
                 "8b": _internvl("OpenGVLab/InternVL3-8B-hf", 3584, 18944, 28, 4, 28, 4)},
}


def _widths(release: Release, width: str) -> tuple[dict, dict]:
    if width == "release":
        return release.llm, release.vision
    llm = dict(release.llm, **SMALL_LLM, kv=4 if release.llm["kv"] == release.llm["heads"] else 2)
    return llm, dict(release.vision, **SMALL_VISION)


def release_config(release: Release, width: str, layers: int) -> dict:
    """config.json of `release` in its released layout, `layers` deep, widths per `width` ("small" | "release")."""
    llm, vision = _widths(release, width)
    mrope = [16, 24, 24] if llm["hidden"] // llm["heads"] == 128 else [2, 3, 3]
    qwen2_text = {"attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
                  "hidden_size": llm["hidden"], "initializer_range": 0.02, "intermediate_size": llm["intermediate"],
                  "max_window_layers": llm.get("window", layers), "num_attention_heads": llm["heads"],
                  "num_hidden_layers": layers, "num_key_value_heads": llm["kv"], "rms_norm_eps": 1e-06,
                  "rope_theta": 1000000.0, "use_cache": True, "use_sliding_window": False,
                  "vocab_size": llm["vocab"]}
    if release.family in ("qwen2_vl", "qwen2_5_vl"):
        ids = {"vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
               "image_token_id": 151655, "video_token_id": 151656}
        if release.family == "qwen2_vl":
            arch, max_pos = "Qwen2VLForConditionalGeneration", 32768
            vis = {"depth": layers, "embed_dim": vision["hidden"], "mlp_ratio": 4, "num_heads": vision["heads"],
                   "in_chans": 3, "hidden_size": llm["hidden"], "patch_size": 14, "spatial_merge_size": 2,
                   "spatial_patch_size": 14, "temporal_patch_size": 2}
        else:
            arch, max_pos = "Qwen2_5_VLForConditionalGeneration", 128000
            vis = {"depth": layers, "hidden_act": "silu", "hidden_size": vision["hidden"],
                   "intermediate_size": vision["intermediate"], "num_heads": vision["heads"], "in_chans": 3,
                   "out_hidden_size": llm["hidden"], "patch_size": 14, "spatial_merge_size": 2,
                   "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [layers - 1],
                   "tokens_per_second": 2, "temporal_patch_size": 2}
        return {"architectures": [arch], **qwen2_text, **ids, "max_position_embeddings": max_pos,
                "model_type": release.family, "sliding_window": 32768, "tie_word_embeddings": release.tied,
                "torch_dtype": release.dtype, "transformers_version": "4.41.2", "vision_config": vis,
                "rope_scaling": {"type": "mrope", "mrope_section": mrope}}
    if release.family == "llava_onevision":
        text = {"_name_or_path": llm["name"], "architectures": ["Qwen2ForCausalLM"], **qwen2_text,
                "max_position_embeddings": 32768, "model_type": "qwen2", "sliding_window": 131072,
                "tie_word_embeddings": llm["tied"], "torch_dtype": "bfloat16"}
        vis = {"hidden_size": vision["hidden"], "image_size": 384, "intermediate_size": vision["intermediate"],
               "model_type": "siglip_vision_model", "num_attention_heads": vision["heads"],
               "num_hidden_layers": layers, "patch_size": 14, "vision_use_head": False}
        return {"architectures": ["LlavaOnevisionForConditionalGeneration"],
                "image_grid_pinpoints": release.preprocessor_config["image_grid_pinpoints"],
                "image_token_index": 151646, "model_type": "llava_onevision", "projector_hidden_act": "gelu",
                "text_config": text, "tie_word_embeddings": False, "torch_dtype": release.dtype,
                "transformers_version": "4.45.0.dev0", "use_image_newline_parameter": True,
                "video_token_index": 151647, "vision_aspect_ratio": "anyres_max_9", "vision_config": vis,
                "vision_feature_layer": -1, "vision_feature_select_strategy": "full"}
    if release.family == "llava_next_video":
        text = {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                "hidden_size": llm["hidden"], "intermediate_size": llm["intermediate"],
                "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": llm["heads"],
                "num_hidden_layers": layers, "num_key_value_heads": llm["kv"], "pad_token_id": 0,
                "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": llm["vocab"]}
        vis = {"hidden_size": vision["hidden"], "image_size": 336, "intermediate_size": vision["intermediate"],
               "model_type": "clip_vision_model", "num_attention_heads": vision["heads"],
               "num_hidden_layers": layers, "patch_size": 14, "projection_dim": 768, "vocab_size": 32000}
        return {"architectures": ["LlavaNextVideoForConditionalGeneration"], "ignore_index": -100,
                "image_grid_pinpoints": release.preprocessor_config["image_grid_pinpoints"],
                "image_token_index": 32001, "model_type": "llava_next_video", "projector_hidden_act": "gelu",
                "spatial_pool_mode": "average", "spatial_pool_stride": 2, "text_config": text,
                "tie_word_embeddings": False, "torch_dtype": release.dtype, "transformers_version": "4.42.0.dev0",
                "use_image_newline_parameter": True, "video_token_index": 32000, "vision_config": vis,
                "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": llm["vocab"]}
    text = {"architectures": ["Qwen2ForCausalLM"], **qwen2_text, "layer_types": ["full_attention"] * layers,
            "max_position_embeddings": 32768, "model_type": "qwen2", "rope_scaling": None, "sliding_window": None,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    vis = {"architectures": ["InternVisionModel"], "attention_bias": True, "attention_dropout": 0.0, "dropout": 0.0,
           "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": vision["hidden"],
           "image_size": [448, 448], "initializer_factor": 0.1, "initializer_range": 1e-10,
           "intermediate_size": vision["intermediate"], "layer_norm_eps": 1e-06, "layer_scale_init_value": 0.1,
           "model_type": "internvl_vision", "norm_type": "layer_norm", "num_attention_heads": vision["heads"],
           "num_channels": 3, "num_hidden_layers": layers, "patch_size": [14, 14], "projection_dropout": 0.0,
           "torch_dtype": "bfloat16", "use_absolute_position_embeddings": True, "use_mask_token": False,
           "use_mean_pooling": True, "use_qk_norm": False}
    return {"architectures": ["InternVLForConditionalGeneration"], "downsample_ratio": 0.5, "image_seq_length": 256,
            "image_token_id": 151667, "model_type": "internvl", "projector_hidden_act": "gelu",
            "text_config": text, "torch_dtype": release.dtype, "transformers_version": "4.52.0.dev0",
            "vision_config": vis, "vision_feature_layer": -1, "vision_feature_select_strategy": "default"}
