"""models/loading.py: which dtype, device and attention kernel a run loads a model with, the one-line errors for
what the device cannot run, meta-device loading for ranks that receive their weights, and every module threedrs adds
following the model's dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from release_checkpoints import FAMILIES

from threedrs.align.task import AlignTask
from threedrs.config import ConfigError, load_config
from threedrs.models import loading
from threedrs.models.loading import (Placement, check_mixed_precision, checkpoint_dtype, inference_placement,
                                     training_load_device, training_placement)
from threedrs.models.registry import build_adapter

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def model_cfg(*extra):
    return load_config(None, list(extra)).model


@pytest.fixture
def gpu_without_cuda(monkeypatch):
    """Pretend the CUDA device of the placement rules exists (the rules only ask it two questions)."""
    support = {"bf16": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: support["bf16"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100-SXM2-32GB")
    return support


def write_config(folder, config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_checkpoint_dtype_reads_the_released_and_the_transformers5_keys(tmp_path):
    assert checkpoint_dtype(write_config(tmp_path / "a", {"torch_dtype": "bfloat16"})) == torch.bfloat16
    assert checkpoint_dtype(write_config(tmp_path / "b", {"dtype": "float16"})) == torch.float16
    nested = write_config(tmp_path / "c", {"text_config": {"torch_dtype": "bfloat16"}})
    assert checkpoint_dtype(nested) == torch.bfloat16
    assert checkpoint_dtype(write_config(tmp_path / "d", {"model_type": "qwen2_vl"})) == torch.float32
    with pytest.raises(ValueError, match=r"config\.json: torch_dtype 'float8' is not one of"):
        checkpoint_dtype(write_config(tmp_path / "e", {"torch_dtype": "float8"}))


def test_training_keeps_float32_master_weights_and_refuses_half_precision_ones():
    for dtype in ("auto", "float32"):
        assert training_placement(model_cfg(f"model.dtype={dtype}"), "bf16", CPU, "cpu").dtype == torch.float32
    with pytest.raises(ConfigError, match=r"model\.dtype=bfloat16: .*set model\.dtype=auto \(or float32\) and "
                                          r"train\.mixed_precision=bf16"):
        training_placement(model_cfg("model.dtype=bfloat16"), "bf16", CPU, "cpu")
    with pytest.raises(ConfigError, match=r"train\.mixed_precision=fp16"):
        training_placement(model_cfg("model.dtype=float16"), "no", CPU, "cpu")


def test_devices_that_cannot_run_a_dtype_are_refused_in_one_line(gpu_without_cuda):
    with pytest.raises(ConfigError, match=r"train\.mixed_precision=fp16 needs a CUDA GPU"):
        check_mixed_precision("fp16", CPU)
    check_mixed_precision("bf16", CPU)  # accelerate autocasts to bfloat16 on the CPU
    gpu_without_cuda["bf16"] = False
    with pytest.raises(ConfigError, match=r"train\.mixed_precision=bf16: this GPU \(Tesla V100-SXM2-32GB\)"):
        check_mixed_precision("bf16", GPU)
    with pytest.raises(ConfigError, match=r"model\.dtype: this GPU \(Tesla V100-SXM2-32GB\) cannot run bfloat16"):
        inference_placement(model_cfg("model.dtype=bfloat16"), GPU)
    assert inference_placement(model_cfg("model.dtype=float16"), GPU).dtype == torch.float16


def test_inference_uses_the_checkpoints_dtype_on_a_gpu_and_float32_on_the_cpu(tmp_path, gpu_without_cuda):
    folder = write_config(tmp_path / "ckpt", {"torch_dtype": "bfloat16"})
    cfg = model_cfg(f"model.path={folder}")
    assert inference_placement(cfg, GPU) == Placement(torch.bfloat16, "cuda:0", "sdpa")
    assert inference_placement(cfg, CPU) == Placement(torch.float32, "cpu", "sdpa")
    assert inference_placement(model_cfg(), GPU).dtype == torch.float32  # tiny random model
    assert inference_placement(model_cfg(f"model.path={folder}", "model.dtype=float16"), CPU).dtype == torch.float16


def test_flash_attention_without_its_package_is_a_one_line_error(monkeypatch):
    cfg = model_cfg("model.attn_implementation=flash_attention_2")
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"^model\.attn_implementation=flash_attention_2: the flash-attn package "
                                          r"is not installed"):
        training_placement(cfg, "bf16", CPU, "cpu")
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: object())  # installed, but ...
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU, the run is on cpu"):
        inference_placement(cfg, CPU)


def test_flash_attention_needs_half_precision_compute(monkeypatch, gpu_without_cuda):
    cfg = model_cfg("model.attn_implementation=flash_attention_2")
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(ConfigError, match=r"computes in float16/bfloat16, this run in float32; set "
                                          r"train\.mixed_precision=bf16"):
        training_placement(cfg, "no", GPU, "cuda:0")
    with pytest.raises(ConfigError, match=r"set model\.dtype=bfloat16 \(or auto\)"):
        inference_placement(model_cfg("model.attn_implementation=flash_attention_2", "model.dtype=float32"), GPU)
    assert training_placement(cfg, "bf16", GPU, "cuda:0").attn_implementation == "flash_attention_2"


def test_where_each_process_of_a_training_run_loads_the_checkpoint():
    gpu1 = torch.device("cuda", 1)
    assert training_load_device(CPU, "NO", 0) == "cpu"
    assert training_load_device(CPU, "MULTI_CPU", 1) == "cpu"  # CPU DDP: every rank needs the whole model
    assert training_load_device(gpu1, "MULTI_GPU", 1) == "cuda:1"  # streamed straight onto the rank's GPU
    assert training_load_device(gpu1, "FSDP", 1) == "cuda:1"
    assert training_load_device(GPU, "FSDP", 0, ram_efficient=True) == "cpu"  # rank 0 reads ...
    assert training_load_device(gpu1, "FSDP", 1, ram_efficient=True) == "meta"  # ... the others receive
    assert training_load_device(gpu1, "DEEPSPEED", 1, zero_stage=3) == "cpu"  # transformers' zero.Init path
    assert training_load_device(gpu1, "DEEPSPEED", 1, zero_stage=2) == "cuda:1"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_meta_rank_builds_the_same_task_without_reading_weights(family, release_checkpoint):
    """What accelerate's FSDP cpu-ram-efficient path needs from a non-zero rank: the same state-dict keys, shapes and
    dtypes as rank 0 (it sends rank 0's tensors into them), parameters on meta, real non-persistent buffers. The
    released InternVL tokenizer is one token longer than its embedding table: the meta rank resizes too."""
    from threedrs.train import apply_lora

    cfg = load_config(None, [f"model.family={family}", f"model.path={release_checkpoint(family)}",
                             "model.lora_rank=2"])
    full = AlignTask(build_adapter(cfg.model, Placement()), 32)
    meta = AlignTask(build_adapter(cfg.model, Placement(device="meta")), 32)
    for task in (full, meta):
        apply_lora(task, cfg)
    a, b = full.state_dict(), meta.state_dict()
    assert list(a) == list(b)
    assert all((a[k].shape, a[k].dtype) == (b[k].shape, b[k].dtype) for k in a)
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    buffers = dict(full.named_buffers())
    assert all(buf.device.type == "cpu" and torch.equal(buf, buffers[name]) for name, buf in meta.named_buffers())


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_everything_threedrs_adds_follows_the_model_dtype(family, release_checkpoint):
    """On the released dtype (bfloat16; float16 for the llava-hf OneVision conversion), as evaluation on a GPU."""
    from threedrs.data.batch import Batch

    folder = release_checkpoint(family)
    dtype = checkpoint_dtype(folder)
    cfg = model_cfg(f"model.family={family}", f"model.path={folder}", f"model.dtype={str(dtype)[6:]}")
    adapter = build_adapter(cfg, inference_placement(cfg, CPU))
    task = AlignTask(adapter, 32)
    assert {p.dtype for p in task.parameters()} == {dtype}  # model, heads, grounding head, new embedding rows
    h, w = adapter.token_grid(48, 64)
    batch = Batch(samples=[], frames=torch.rand(1, 2, 3, 48, 64), token_points=torch.rand(1, 2, h, w, 3),
                  token_valid=torch.ones(1, 2, h, w, dtype=torch.bool), boxes=[torch.rand(3, 6)], target_ids=[[0]],
                  coord_boxes=torch.rand(1, 6), first_view=torch.ones(1, 2, dtype=torch.bool))
    assert task.visual_offsets(batch).dtype == task.coord_offsets(batch).dtype == dtype
    out = adapter(batch.frames, ["where is the chair"], ["<ground>"], layers=(0, -1),
                  visual_offsets=task.visual_offsets(batch))
    objects = task.candidate_features(batch, out, task.visual_offsets(batch), 0)
    scores = task.grounding(out.last_hidden[0, -1], objects)  # the float32 heads failed here on bf16 models
    assert scores.dtype == dtype and scores.shape == (4,) and torch.isfinite(scores).all()


def test_the_attention_kernel_reaches_the_model(tmp_path):
    """model.attn_implementation, through every way a config becomes a model (no placement given, eval's and
    training's placements), ends up in both towers' configs; the default stays sdpa."""
    cfg = model_cfg("model.family=llava_onevision", "model.attn_implementation=eager")
    adapter = build_adapter(cfg)
    assert adapter.model.config.text_config._attn_implementation == "eager"
    adapter.save_pretrained(tmp_path)
    folder = [f"model.path={tmp_path}", "model.family=llava_onevision"]
    for extra, kernel in (([], "sdpa"), (["model.attn_implementation=eager"], "eager")):
        saved = model_cfg(*folder, *extra)
        for placement in (inference_placement(saved, CPU), training_placement(saved, "no", CPU, "cpu")):
            config = build_adapter(saved, placement).model.config
            assert config.vision_config._attn_implementation == config.text_config._attn_implementation == kernel


def test_train_refuses_half_precision_master_weights_before_loading(tmp_path, capsys, monkeypatch):
    from threedrs.cli import main
    from threedrs.models import registry

    monkeypatch.setattr(registry, "_build", lambda *a: pytest.fail("the model was loaded"))
    config = Path(__file__).parent.parent / "configs" / "tiny_qwen2_vl.yaml"
    assert main(["train", str(config), "model.dtype=float16", f"output_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("threedrs train: error: model.dtype=float16: training keeps float32 master weights")
    assert "train.mixed_precision=fp16" in err and "\n" not in err
