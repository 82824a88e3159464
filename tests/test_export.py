"""threedrs export: a trained run (tiny Qwen2-VL, LoRA, 2 steps) back to a folder plain transformers loads, and
`threedrs eval model.path=OUT` giving the predictions of the training checkpoint; the one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from threedrs.cli import main
from threedrs.config import ConfigError, load_config
from threedrs.evaluate import evaluate
from threedrs.export import export_run
from threedrs.extract import extract
from threedrs.train import train

BENCHMARKS = ("scanrefer", "multi3drefer", "scan2cap", "scanqa", "sqa3d")
LORA_RANK, LORA_ALPHA = 4, 8


def make_config(root, work, *extra):
    return load_config(None, [
        f"data.root={root}", "data.frames=4", f"output_dir={work}/run", f"teacher.cache_dir={work}/cache",
        "teacher.grid=[3,4]", "teacher.channels=32", "teacher.batch_frames=4", "model.image_size=[42,56]",
        f"model.lora_rank={LORA_RANK}", f"model.lora_alpha={LORA_ALPHA}", "model.lora_dropout=0",
        "train.steps=2", "train.save_every=1", "train.lr_llm=1e-2", "train.lr_heads=1e-3", "train.warmup_ratio=0",
        "eval.limit=2", "eval.max_new_tokens=4", "eval.meteor=false", *extra])


@pytest.fixture(scope="module")
def exported(synthrooms_tiny, tmp_path_factory):
    """(work dir, training config, export folder) after 2 LoRA steps and `threedrs export` of the last one."""
    work = tmp_path_factory.mktemp("export")
    cfg = make_config(synthrooms_tiny, work)
    extract(cfg)
    train(cfg, progress=False)
    result = export_run(work / "run", work / "out")
    assert result.lora_layers == 8 and result.dtype == torch.float32  # q/k/v/o of 2 layers; tiny models: float32
    return work, cfg, work / "out"


def predictions(run_dir, bench):
    return [json.loads(line) for line in (run_dir / "predictions" / f"{bench}.jsonl").read_text().splitlines()]


def test_plain_transformers_loads_the_export_with_lora_merged(exported):
    from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    work, cfg, out = exported
    model = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True)
    assert type(model) is Qwen2VLForConditionalGeneration
    state = model.state_dict()
    assert not [k for k in state if "lora" in k]
    # the merged projection is the base weight plus (alpha / r) B A of the trained checkpoint
    trained = load_file(str(work / "run" / "checkpoints" / "step_000002" / "model.safetensors"))
    prefix = "adapter.model.model.language_model.layers.0.self_attn.q_proj"
    base, a, b = (trained[f"{prefix}.{k}"] for k in ("base_layer.weight", "lora_A.default.weight",
                                                     "lora_B.default.weight"))
    assert b.abs().max() > 0  # two steps at lr 1e-2 moved LoRA's B away from its zero init
    merged = state["model.language_model.layers.0.self_attn.q_proj.weight"]
    torch.testing.assert_close(merged, base + (LORA_ALPHA / LORA_RANK) * b @ a)
    meta = json.loads((out / "threedrs_heads.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in ("<ground>", "<coord>")} == meta["tokens"]
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    assert Qwen2VLImageProcessorPil.from_pretrained(out, local_files_only=True).patch_size == 7
    from threedrs.models.templates import FAMILY_TEMPLATES

    assert tokenizer.chat_template == FAMILY_TEMPLATES["qwen2_vl"]  # the tiny model's template, now in the folder
    assert meta["teacher_dim"] == 32 and meta["lora_merged"] and meta["source"]["step"] == 2
    heads = load_file(str(out / "threedrs_heads.safetensors"))
    assert {k.split(".")[0] for k in heads} == {"heads", "grounding"}
    torch.testing.assert_close(heads["heads.-1.net.2.weight"], trained["heads.-1.net.2.weight"])


def test_eval_of_the_export_gives_the_training_checkpoints_predictions(exported, tmp_path, capsys):
    work, cfg, out = exported
    evaluate(cfg, run_dir=tmp_path / "checkpoint", progress=False)
    from_export = load_config(work / "run" / "config.yaml", [f"model.path={out}", "eval.limit=2",
                                                             "eval.max_new_tokens=4", "eval.meteor=false"])
    evaluate(from_export, run_dir=tmp_path / "export", progress=False)
    assert f"evaluating the export {out} (step 2 of {work / 'run'}, float32)" in capsys.readouterr().out
    for bench in BENCHMARKS:
        a, b = predictions(tmp_path / "checkpoint", bench), predictions(tmp_path / "export", bench)
        assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) == 2
        for x, y in zip(a, b):
            if "scores" in x:  # merged vs unmerged LoRA: float32 rounding only
                torch.testing.assert_close(torch.tensor(x["scores"]), torch.tensor(y["scores"]), atol=1e-5, rtol=0)
                assert x.get("pred_box") == y.get("pred_box") and x.get("pred_boxes") == y.get("pred_boxes")
            else:
                assert x["prediction"] == y["prediction"]


def test_export_in_bfloat16_writes_bfloat16_weights(exported, tmp_path):
    work, _, _ = exported
    out = export_run(work / "run", tmp_path / "bf16", step=1, dtype="bfloat16").out
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert json.loads((out / "threedrs_heads.json").read_text())["source"]["step"] == 1


def test_export_hashes_the_model_once_and_refuses_a_damaged_one_before_loading(exported, tmp_path, monkeypatch):
    import shutil

    import threedrs.checkpoint as checkpoint_module
    from threedrs.checkpoint import CorruptCheckpointError

    work, _, _ = exported
    hashed = []
    real = checkpoint_module.file_sha256
    monkeypatch.setattr(checkpoint_module, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    export_run(work / "run", tmp_path / "out")
    assert hashed == ["model.safetensors"]  # the one file export reads, once (the optimizer state is not read)

    run = tmp_path / "damaged"
    shutil.copytree(work / "run", run)
    model = run / "checkpoints" / "step_000002" / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    model.write_bytes(bytes(data))

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("threedrs.models.registry.build_adapter", no_model)
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors: content does not match the sha256"):
        export_run(run, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_export_errors_are_one_line(exported, tmp_path, capsys):
    work, _, out = exported
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text((work / "run" / "config.yaml").read_text())
    cases = [([str(tmp_path / "empty"), str(tmp_path / "a")], "no checkpoint under"),
             ([str(work / "run"), str(tmp_path / "b"), "--step", "5"], "this run has steps 1, 2"),
             ([str(work / "run"), str(out)], "already exists"),
             ([str(tmp_path), str(tmp_path / "c")], "not a training run folder (no config.yaml)")]
    for args, message in cases:
        assert main(["export", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def test_a_run_trained_from_the_export_is_evaluated_and_exported_with_its_own_weights(exported, synthrooms_tiny,
                                                                                     tmp_path):
    """model.path = an exported folder (threedrs_heads.json): the run's checkpoints, found or given, hold the whole
    trained state, heads included; eval, probe and export use them, not the folder's weights and heads."""
    from threedrs.evaluate import load_task, resolve_checkpoint

    work, _, out = exported
    cfg = make_config(synthrooms_tiny, work, f"model.path={out}", f"output_dir={tmp_path}/again")
    train(cfg, progress=False)
    last = tmp_path / "again" / "checkpoints" / "step_000002"
    assert resolve_checkpoint(cfg) == last  # found: the newest checkpoint of the run trained from the folder
    first = last.with_name("step_000001")
    given = load_config(tmp_path / "again" / "config.yaml", [f"eval.checkpoint={first}"])
    assert resolve_checkpoint(given) == first
    # the export's own run (trained from the tiny base, not from OUT) does not shadow the export
    assert resolve_checkpoint(load_config(work / "run" / "config.yaml", [f"model.path={out}"])) is None

    trained = load_file(str(last / "model.safetensors"))
    folder = load_file(str(out / "threedrs_heads.safetensors"))
    assert not torch.equal(trained["heads.-1.net.2.weight"], folder["heads.-1.net.2.weight"])  # the heads trained
    state = load_task(cfg, last).state_dict()
    for name, tensor in trained.items():
        assert torch.equal(state[name], tensor), name

    result = export_run(tmp_path / "again", tmp_path / "out")
    meta = json.loads((result.out / "threedrs_heads.json").read_text())
    assert meta["source"]["step"] == 2 and meta["source"]["base_model"] == str(out)
    heads = load_file(str(result.out / "threedrs_heads.safetensors"))
    for name, tensor in heads.items():
        assert torch.equal(tensor, trained[name]), name
    from transformers import AutoModelForImageTextToText

    exported_model = AutoModelForImageTextToText.from_pretrained(result.out, local_files_only=True).state_dict()
    prefix = "adapter.model.model.language_model.layers.0.self_attn.q_proj"
    base, a, b = (trained[f"{prefix}.{k}"] for k in ("base_layer.weight", "lora_A.default.weight",
                                                     "lora_B.default.weight"))
    torch.testing.assert_close(exported_model["model.language_model.layers.0.self_attn.q_proj.weight"],
                               base + (LORA_ALPHA / LORA_RANK) * b @ a)


def test_eval_of_an_export_refuses_a_different_config_before_loading(exported, monkeypatch):
    from threedrs.evaluate import load_task, resolve_checkpoint
    from threedrs.models import registry

    monkeypatch.setattr(registry, "_build", lambda *a: pytest.fail("the model was loaded"))
    work, _, out = exported
    base = [f"model.path={out}"]
    with pytest.raises(ConfigError, match=r"align\.posenc: .* exported from a run with align\.posenc=True"):
        load_task(load_config(work / "run" / "config.yaml", base + ["align.posenc=false"]), None)
    # eval.checkpoint is honoured with an exported model.path too (test above); a folder without weights is named
    with pytest.raises(FileNotFoundError, match=r"run: not a training checkpoint \(no model\.safetensors\)"):
        resolve_checkpoint(load_config(work / "run" / "config.yaml", base + [f"eval.checkpoint={work}/run"]))
