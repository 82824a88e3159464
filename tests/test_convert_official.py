"""threedrs convert-official on folders in the authors' layout (official_checkpoints.py): every tensor mapped or
listed as dropped, their vocabulary kept, their prompt tokenised as their evaluation scripts tokenise it, the same
bytes twice, and one-line errors with nothing written for bad input."""

from __future__ import annotations

import filecmp
import json
import shutil

import pytest
import torch
from official_checkpoints import VOCAB, official_tensors, write_official_checkpoint
from safetensors.torch import load_file, save_file

from threedrs.cli import main
from threedrs.convert_official import convert_official

SOURCE_TO_TARGET = {  # written from their module tree and transformers' LLaVA-OneVision, not from the converter
    "model.embed_tokens.weight": "model.language_model.embed_tokens.weight",
    "model.layers.1.mlp.down_proj.weight": "model.language_model.layers.1.mlp.down_proj.weight",
    "model.layers.0.self_attn.k_proj.bias": "model.language_model.layers.0.self_attn.k_proj.bias",
    "model.norm.weight": "model.language_model.norm.weight",
    "lm_head.weight": "lm_head.weight",
    "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight":
        "model.vision_tower.embeddings.patch_embedding.weight",
    "model.vision_tower.vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight":
        "model.vision_tower.encoder.layers.1.mlp.fc2.weight",
    "model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.out_proj.bias":
        "model.vision_tower.encoder.layers.0.self_attn.out_proj.bias",
    "model.vision_tower.vision_tower.vision_model.post_layernorm.weight": "model.vision_tower.post_layernorm.weight",
    "model.mm_projector.0.weight": "model.multi_modal_projector.linear_1.weight",
    "model.mm_projector.2.bias": "model.multi_modal_projector.linear_2.bias",
    "model.image_newline": "model.image_newline",
}
HEADS = {"ground_head_query.0.weight": "grounding.query_mlp.0.weight",
         "ground_head_query.2.bias": "grounding.query_mlp.2.bias",
         "ground_head_obj.3.weight": "grounding.object_mlp.3.weight",
         "ground_head_zero_target": "grounding.no_target",
         "model.proj_3d.0.weight": "heads.-1.net.0.weight", "model.proj_3d.2.bias": "heads.-1.net.2.bias"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(source folder, converted folder) of a 3DRS checkpoint with safetensors shards."""
    work = tmp_path_factory.mktemp("official")
    src = write_official_checkpoint(work / "3drs")
    convert_official(src, work / "out")
    return src, work / "out"


def test_every_tensor_lands_where_transformers_and_threedrs_read_it(converted):
    from transformers import LlavaOnevisionForConditionalGeneration

    src, out = converted
    source = official_tensors("3drs")
    model, info = LlavaOnevisionForConditionalGeneration.from_pretrained(out, output_loading_info=True,
                                                                         local_files_only=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    state = model.state_dict()
    assert model.dtype == torch.bfloat16  # as they saved it
    for name, target in SOURCE_TO_TARGET.items():
        got = state[target]
        if target in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            assert got.shape[0] == VOCAB + 1 and not got[VOCAB:].any()  # their 151649 rows, then <video> (zeros)
            got = got[:VOCAB]
        assert torch.equal(got, source[name]), name
    heads = load_file(str(out / "threedrs_heads.safetensors"))
    assert len(heads) == 17  # 2 MLPs of 6 tensors, the zero target, the 4 tensors of proj_3d
    for name, target in HEADS.items():
        assert torch.equal(heads[target], source[name]), name
    meta = json.loads((out / "threedrs_heads.json").read_text())
    assert meta["source"]["official"] == "3DRS" and meta["teacher_dim"] == 2048
    assert sorted(meta["source"]["dropped"]) == ["model.corres_linear.weight", "model.geometric_linear.weight",
                                                 "model.linear_dc.weight"]
    n_model = len([k for k in source if k not in HEADS and not k.startswith(("ground_head", "model.proj_3d"))])
    assert len(state) == n_model - 3  # every other source tensor is one of the model's
    assert meta["tokens"] == {"<ground>": 151647, "<coord>": 151648} and meta["source"]["vocab_size"] == VOCAB
    assert meta["source"]["placeholders"] == {"<video>": 151649}
    assert {meta[k] for k in ("newline", "resize", "prompts")} == {"grid", "pil_bicubic", "video3dllm"}
    assert meta["align"]["posenc_points"] == "pixel_blocks" and meta["align"]["object_features"] == "pixel_share"
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["num_hidden_layers"] == 2 and config["vision_feature_layer"] == -1
    assert config["image_token_index"] == 151646 and config["video_token_index"] == 151649


def test_their_prompt_is_tokenised_as_their_eval_scripts_tokenise_it(converted):
    """Their `preprocess_qwen` tokenises piece by piece: system turn, `<|im_start|>user`, newline, the visual
    placeholder, newline, the text after `<image>`, `<|im_end|>`, newline, `<|im_start|>assistant`, newline."""
    from transformers import AutoTokenizer

    from threedrs.config import load_config
    from threedrs.data.prompt_style import video3dllm_prompt
    from threedrs.data.tasks import Sample
    from threedrs.models.registry import build_adapter

    _, out = converted
    cfg = load_config("configs/official_3drs.yaml", [f"model.path={out}", "model.dtype=float32"])
    adapter = build_adapter(cfg.model)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    sample = Sample(id="q", task="scanqa", scene_id="s", prompt="What is on the table? Answer the question simply.",
                    answer="a")
    layout = adapter._visual_layout(2)
    ids, n_prompt = adapter.prompt.sequence(layout, video3dllm_prompt(sample, training=False), None)

    def t(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    im_start, im_end, nl = 151644, 151645, t("\n")
    visual = [151649] * (2 * 14 * 15)
    theirs = ([im_start] + t("system") + nl + t("You are a helpful assistant.") + [im_end] + nl + t("<|im_start|>user")
              + nl + visual + nl + t(" What is on the table? Answer the question simply.") + [im_end] + nl
              + t("<|im_start|>assistant") + nl)
    assert ids == theirs and n_prompt == len(theirs)
    newlines = [i for i, m in enumerate(layout.grid_mask) if not m]
    assert newlines == [15 * k + 14 for k in range(2 * 14)]  # one after each row of 14 tokens, 28 rows


def test_converting_twice_gives_identical_bytes(converted, tmp_path):
    src, out = converted
    again = convert_official(src, tmp_path / "again").out
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert all(filecmp.cmp(out / n, again / n, shallow=False) for n in names)


def test_the_reader_reads_one_tensor_at_a_time(converted, monkeypatch):
    """Each safetensors file is opened once and only the tensors asked for are read (a 7B bfloat16 checkpoint is
    ~15 GB: no file is read whole and kept for the conversion)."""
    import safetensors

    from threedrs.convert_official import _Reader
    from threedrs.official_checkpoint import read_checkpoint

    src, _ = converted
    checkpoint = read_checkpoint(src)
    real, opened, read = safetensors.safe_open, [], []

    class Counting:
        def __init__(self, path, framework):
            self.handle = real(path, framework)
            opened.append(path.rsplit("/", 1)[-1])

        def __enter__(self):
            self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.handle.keys()

        def get_tensor(self, name):
            read.append(name)
            return self.handle.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Counting)
    first = sorted(n for n, t in checkpoint.tensors.items() if t.file == "model-00001-of-00002.safetensors")
    source = official_tensors("3drs")
    with _Reader(checkpoint) as reader:
        for name in first[:2]:
            assert torch.equal(reader(name), source[name])
    assert len(first) > 2 and read == first[:2] and opened == ["model-00001-of-00002.safetensors"]


def test_a_video3dllm_checkpoint_in_bin_shards(tmp_path):
    src = write_official_checkpoint(tmp_path / "v3d", kind="video3dllm", weights="bin")
    result = convert_official(src, tmp_path / "out")
    meta = json.loads((result.out / "threedrs_heads.json").read_text())
    assert result.kind == "Video-3D LLM" and result.dropped == {}
    assert meta["teacher_dim"] is None and meta["align"]["loss"] == "none"
    heads = load_file(str(result.out / "threedrs_heads.safetensors"))
    assert not [k for k in heads if k.startswith("heads.")]
    assert sorted(meta["source"]["files"]) == ["config.json", "pytorch_model-00001-of-00002.bin",
                                               "pytorch_model-00002-of-00002.bin"]


def _convert_fails(src, out, capsys) -> str:
    assert main(["convert-official", str(src), str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))  # nothing written, no temporary left
    return err


@pytest.fixture()
def source_copy(converted, tmp_path):
    src, _ = converted
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    return copy


def test_not_an_authors_checkpoint(release_checkpoint, tmp_path, capsys):
    err = _convert_fails(release_checkpoint("llava_onevision"), tmp_path / "out", capsys)
    assert "config.json: architectures is ['LlavaOnevisionForConditionalGeneration'], not LlavaQwenForCausalLM" in err
    (tmp_path / "empty").mkdir()
    assert "config.json: not found" in _convert_fails(tmp_path / "empty", tmp_path / "out", capsys)


def test_a_missing_shard(source_copy, tmp_path, capsys):
    (source_copy / "model-00002-of-00002.safetensors").unlink()
    err = _convert_fails(source_copy, tmp_path / "out", capsys)
    assert "model-00002-of-00002.safetensors: shard listed in model.safetensors.index.json is missing" in err


def test_a_shape_that_does_not_match_its_config(source_copy, tmp_path, capsys):
    config = json.loads((source_copy / "config.json").read_text())
    config["intermediate_size"] = 96
    (source_copy / "config.json").write_text(json.dumps(config))
    err = _convert_fails(source_copy, tmp_path / "out", capsys)
    assert "model-0000" in err
    assert "model.layers.0.mlp.down_proj.weight has shape [64, 128], its config gives [64, 96]" in err


def test_a_head_of_another_width(source_copy, tmp_path, capsys):
    weight_map = json.loads((source_copy / "model.safetensors.index.json").read_text())["weight_map"]
    shard = source_copy / weight_map["ground_head_obj.3.weight"]
    tensors = load_file(str(shard)) | {"ground_head_obj.3.weight": torch.zeros(64, 32, dtype=torch.bfloat16)}
    save_file(tensors, str(shard), metadata={"format": "pt"})
    err = _convert_fails(source_copy, tmp_path / "out", capsys)
    assert f"{shard.name}: ground_head_obj.3.weight has shape [64, 32], its config gives [64, 64]" in err


def test_an_unknown_tensor(source_copy, tmp_path, capsys):
    shard = source_copy / "model-00001-of-00002.safetensors"
    tensors = load_file(str(shard)) | {"model.mystery.weight": torch.zeros(2)}
    save_file(tensors, str(shard), metadata={"format": "pt"})
    err = _convert_fails(source_copy, tmp_path / "out", capsys)
    assert "model-00001-of-00002.safetensors: unknown tensor 'model.mystery.weight'" in err


def test_a_bin_that_needs_pickle_beyond_tensors(tmp_path, capsys):
    import argparse

    src = write_official_checkpoint(tmp_path / "src", weights="bin")
    shard = src / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    state["model.norm.weight"] = argparse.Namespace(value=1)  # an object the restricted unpickler cannot build
    torch.save(state, shard)
    err = _convert_fails(src, tmp_path / "out", capsys)
    assert "pytorch_model-00001-of-00002.bin: refused, it needs pickle beyond tensors" in err


def test_a_setting_their_inference_path_does_not_have(source_copy, tmp_path, capsys):
    config = json.loads((source_copy / "config.json").read_text())
    config["object_feature_type"] = "patch27-pe"
    (source_copy / "config.json").write_text(json.dumps(config))
    err = _convert_fails(source_copy, tmp_path / "out", capsys)
    assert ("config.json: object_feature_type is 'patch27-pe'; threedrs reproduces the paper's setting "
            "'patch14-pe'") in err


def test_an_existing_out_is_refused(converted, capsys):
    src, out = converted
    assert main(["convert-official", str(src), str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
