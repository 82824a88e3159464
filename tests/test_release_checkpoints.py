"""The release-shaped checkpoint folders (release_checkpoints.py) load as users' downloads do: with the family's
transformers class and AutoTokenizer, in the released dtype, with the released ids, vocabulary sizes, tensor names
and chat templates (expected strings written from the releases' documented prompt formats)."""

import json

import pytest
import torch
from release_checkpoints import FAMILIES, write_release_checkpoint
from release_configs import RELEASES
from transformers import AutoConfig, AutoTokenizer

# family -> (released torch_dtype, vocab_size, len(tokenizer), special token -> id, config id keys)
EXPECTED = {
    "qwen2_vl": ("bfloat16", 151936, 151657,
                 {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
                  "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656},
                 {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652}),
    "qwen2_5_vl": ("bfloat16", 151936, 151665,
                   {"<|im_start|>": 151644, "<|im_end|>": 151645, "<|image_pad|>": 151655, "<|file_sep|>": 151664},
                   {"image_token_id": 151655, "video_token_id": 151656, "vision_end_token_id": 151653}),
    "llava_onevision": ("float16", 152000, 151648,
                        {"<|im_start|>": 151644, "<|im_end|>": 151645, "<image>": 151646, "<video>": 151647},
                        {"image_token_id": 151646, "video_token_id": 151647}),
    "llava_next_video": ("bfloat16", 32064, 32002,
                         {"<unk>": 0, "<s>": 1, "</s>": 2, "<video>": 32000, "<image>": 32001},
                         {"image_token_id": 32001, "video_token_id": 32000}),
    "internvl": ("bfloat16", 151674, 151675,
                 {"<|im_start|>": 151644, "<|im_end|>": 151645, "<img>": 151665, "</img>": 151666,
                  "<IMG_CONTEXT>": 151667, "</box>": 151673},
                 {"image_token_id": 151667}),
}

# family -> (template file, user turn with one visual item + "Q?" rendered with the generation prompt)
RENDERED = {
    "qwen2_vl": ("chat_template.json", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                 "<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n"),
    "qwen2_5_vl": ("chat_template.json", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                   "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n"),
    "llava_onevision": ("chat_template.json", "<|im_start|>user\n<video>\nQ?<|im_end|>\n<|im_start|>assistant\n"),
    "llava_next_video": ("chat_template.json", "USER: <video>\nQ? ASSISTANT:"),
    "internvl": ("chat_template.jinja", "<|im_start|>user\n<video>\nQ?<|im_end|>\n<|im_start|>assistant\n"),
}


def _template(folder, name):
    text = (folder / name).read_text()
    return json.loads(text)["chat_template"] if name.endswith(".json") else text


@pytest.mark.parametrize("family", FAMILIES)
def test_release_folder_loads_with_the_family_class_in_its_dtype(release_checkpoint, family):
    folder = release_checkpoint(family)
    dtype, vocab, tokens, ids, config_ids = EXPECTED[family]
    raw = json.loads((folder / "config.json").read_text())
    assert raw["torch_dtype"] == dtype and raw["model_type"] == family
    cls = next(iter(RELEASES[family].values())).model_class()
    model, info = cls.from_pretrained(folder, local_files_only=True, dtype="auto", output_loading_info=True)
    assert not any(info.values()), f"{family}: {info}"  # no missing / unexpected / mismatched tensors
    assert model.dtype == getattr(torch, dtype)
    assert model.get_input_embeddings().weight.shape[0] == vocab
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    assert {k: getattr(config, k) for k in config_ids} == config_ids
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert len(tokenizer) == tokens
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in ids} == ids
    # the special tokens written together come out as their released ids, each one token (Llama's <s> first)
    bos = [1] if family == "llava_next_video" else []
    assert tokenizer("".join(ids))["input_ids"] == bos + list(ids.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_release_folder_chat_template_renders_the_released_prompt(release_checkpoint, family):
    folder = release_checkpoint(family)
    name, expected = RENDERED[family]
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    visual = {"type": "image"} if family.startswith("qwen") else {"type": "video"}
    user = [{"role": "user", "content": [visual, {"type": "text", "text": "Q?"}]}]
    text = tokenizer.apply_chat_template(user, chat_template=_template(folder, name), tokenize=False,
                                         add_generation_prompt=True)
    assert text == expected


def test_onevision_tokenizer_keeps_qwen2_instruct_template_with_its_system_turn(release_checkpoint):
    """The llava-hf OneVision folders carry two templates: the processor's (chat_template.json, no system turn) and
    Qwen2-Instruct's in tokenizer_config.json (default system turn), which AutoTokenizer alone picks up."""
    tokenizer = AutoTokenizer.from_pretrained(release_checkpoint("llava_onevision"), local_files_only=True)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Q?"}], tokenize=False)
    assert text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n"


def test_release_folder_uses_released_tensor_names_and_shards(release_checkpoint):
    qwen = release_checkpoint("qwen2_vl")
    index = json.loads((qwen / "model.safetensors.index.json").read_text())["weight_map"]
    assert "visual.merger.mlp.0.weight" in index and "model.embed_tokens.weight" in index
    assert "lm_head.weight" not in index  # tied in the 2B release
    assert sorted(set(index.values())) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    from safetensors import safe_open

    with safe_open(release_checkpoint("llava_onevision") / "model.safetensors", "pt") as f:
        names = set(f.keys())
        assert f.get_tensor("image_newline").dtype == torch.float16
    assert {"image_newline", "language_model.lm_head.weight", "multi_modal_projector.linear_1.weight",
            "vision_tower.vision_model.post_layernorm.weight"} <= names


def test_bad_release_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="variant"):
        write_release_checkpoint("qwen2_vl", tmp_path, variant="72b")
    with pytest.raises(ValueError, match="family"):
        write_release_checkpoint("llava", tmp_path)


@pytest.mark.slow
def test_release_width_gives_the_2b_size_model(release_checkpoint):
    folder = release_checkpoint("qwen2_vl", variant="2b", width="release", layers=2)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    assert (config.text_config.hidden_size, config.vision_config.embed_dim, config.text_config.num_hidden_layers,
            config.vision_config.depth) == (1536, 1280, 2, 2)
    assert config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
