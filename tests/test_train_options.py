"""threedrs train options on a tiny SynthRooms set (tiny Qwen2-VL, 4 frames, 3x4 tokens, 2 steps per run):
learning-rate groups, freezing, LoRA, gradient accumulation, gradient checkpointing, every alignment loss, several
supervised layers; and the accelerate launcher configs under configs/accelerate."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor

from threedrs import train as train_module
from threedrs.align.task import AlignTask
from threedrs.config import load_config
from threedrs.extract import extract
from threedrs.models.registry import build_adapter
from threedrs.train import parameter_groups, train

LAUNCHERS = sorted((Path(__file__).parent.parent / "configs" / "accelerate").glob("*.yaml"))
LOSS_KEYS = ("loss", "lm_loss", "ground_loss", "align_loss")


def make_config(root, out, cache, *extra):
    """2 steps of batch 2 without warm-up, so both steps update (cosine: factor 1 at step 1, 0.5 at step 2).

    Seed 7: each of the first two global batches holds a grounding and a text sample (checked below)."""
    return load_config(None, [
        "seed=7", f"data.root={root}", "data.frames=4", f"output_dir={out}", f"teacher.cache_dir={cache}",
        "teacher.grid=[3,4]", "teacher.channels=32", "teacher.batch_frames=4", "model.image_size=[42,56]",
        "train.steps=2", "train.batch_size=2", "train.log_every=1", "train.save_every=100", "train.warmup_ratio=0",
        "train.lr_llm=1e-3", "train.lr_vision=1e-3", "train.lr_projector=1e-3", "train.lr_heads=1e-3", *extra])


@dataclass
class Run:
    """One finished `train` run: its log, the trained task, and every named parameter before and after."""

    log: list[dict]
    task: AlignTask
    before: dict[str, Tensor]  # at optimizer construction: after LoRA injection and freezing, before any step
    after: dict[str, Tensor]
    layer_calls: int  # forward calls of the first LLM decoder layer's MLP during training

    def changed(self, name: str) -> bool:
        return not torch.equal(self.before[name], self.after[name])


def run(cfg) -> Run:
    """Train `cfg`, capturing the task through `parameter_groups` (called once, right before the first step)."""
    seen: dict = {"calls": 0}
    real = train_module.parameter_groups

    def spy(task, c):
        groups = real(task, c)
        seen["task"] = task
        seen["before"] = {n: p.detach().clone() for n, p in task.named_parameters()}
        # a PRE-hook on a submodule: transformers checkpoints a layer's forward (hooks on the layer itself run once)
        # and the recomputation stops early, once every saved tensor is back (the MLP never returns)
        mlp = task.adapter.model.model.language_model.layers[0].mlp
        mlp.register_forward_pre_hook(lambda *_: seen.__setitem__("calls", seen["calls"] + 1))
        return groups

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "parameter_groups", spy)
        result = train(cfg, progress=False)
    log = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    after = {n: p.detach().clone() for n, p in seen["task"].named_parameters()}
    return Run(log, seen["task"], seen["before"], after, seen["calls"])


def part_of(name: str) -> str:
    """The parameter group a named parameter of AlignTask belongs to, from the module tree of Qwen2-VL."""
    if name.startswith("adapter.model.model.visual.merger."):
        return "projector"
    if name.startswith("adapter.model.model.visual."):
        return "vision"
    if name.startswith(("adapter.model.model.language_model.", "adapter.model.lm_head.")):
        return "llm"
    assert name.startswith(("heads.", "grounding.")), name
    return "heads"


@pytest.fixture(scope="module")
def cached(synthrooms_tiny, tmp_path_factory):
    """(SynthRooms root, work dir, geometry-teacher cache dir) with the cache extracted once."""
    work = tmp_path_factory.mktemp("train_options")
    extract(make_config(synthrooms_tiny, work / "extract", work / "cache"))
    return synthrooms_tiny, work, work / "cache"


@pytest.fixture(scope="module")
def reference(cached):
    """The plain run: l2norm, batch 2, no accumulation, no checkpointing, nothing frozen."""
    root, work, cache = cached
    return run(make_config(root, work / "reference", cache))


def cfg_for(cached, name, *extra):
    root, work, cache = cached
    return make_config(root, work / name, cache, *extra)


# ------------------------------------------------------------------------------------------------- groups


def test_parameter_groups_get_the_configured_learning_rates(cached):
    cfg = cfg_for(cached, "groups", "train.lr_llm=1e-5", "train.lr_vision=2e-6", "train.lr_projector=3e-5",
                  "train.lr_heads=4e-4")
    task = AlignTask(build_adapter(cfg.model), 32)
    optimizer = torch.optim.AdamW(parameter_groups(task, cfg))
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == {
        "llm": 1e-5, "vision": 2e-6, "projector": 3e-5, "heads": 4e-4}
    names = {id(p): n for n, p in task.named_parameters()}
    for group in optimizer.param_groups:
        assert {part_of(names[id(p)]) for p in group["params"]} == {group["name"]}
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in task.parameters())  # each parameter exactly once


def test_logged_learning_rates_follow_the_groups_and_the_cosine(reference):
    # no warm-up, 2 steps: the factor after step 1 is (1 + cos(pi / 2)) / 2 = 0.5, after step 2 it is 0
    assert [r["step"] for r in reference.log] == [1, 2]
    assert all(r["ground_loss"] > 0 and r["lm_loss"] > 0 for r in reference.log)  # both kinds of samples
    for part in ("llm", "vision", "projector", "heads"):
        assert reference.log[0][f"lr_{part}"] == pytest.approx(0.5e-3)
        assert reference.log[1][f"lr_{part}"] == pytest.approx(0.0, abs=1e-12)


def test_freeze_vision_keeps_it_bit_identical_while_the_llm_learns(cached, reference):
    frozen = run(cfg_for(cached, "freeze", "train.freeze=[vision]"))
    assert "lr_vision" not in frozen.log[0] and "lr_llm" in frozen.log[0]
    parts = {n: part_of(n) for n in frozen.before}
    vision = [n for n, p in parts.items() if p == "vision"]
    assert vision and not any(frozen.changed(n) for n in vision)
    assert all(reference.changed(n) for n in vision)  # the same parameters move when not frozen
    llm = [n for n, p in parts.items() if p == "llm"]
    assert all(frozen.changed(n) for n in llm), [n for n in llm if not frozen.changed(n)]
    assert all(frozen.changed(n) for n, p in parts.items() if p == "projector")


def test_lora_trains_only_the_adapters_and_the_heads(cached):
    lora = run(cfg_for(cached, "lora", "model.lora_rank=4", "train.freeze=[vision,projector]"))
    assert [r["step"] for r in lora.log] == [1, 2]
    assert all(math.isfinite(r[k]) for r in lora.log for k in LOSS_KEYS)
    injected = [n for n in lora.before if ".lora_" in n]
    # q, k, v, o of each of the 2 decoder layers, an A and a B matrix each (rank 4)
    assert len(injected) == 16
    assert all(".language_model.layers." in n and re.search(r"\.(q|k|v|o)_proj\.lora_[AB]\.", n) for n in injected)
    assert all(4 in lora.before[n].shape for n in injected)
    changed = {n for n in lora.before if lora.changed(n)}
    align_head = {n for n in lora.before if n.startswith("heads.")}
    grounding = {n for n in lora.before if n.startswith("grounding.")}  # moves only with a grounding sample
    assert set(injected) <= changed and align_head <= changed
    assert changed - grounding == set(injected) | align_head  # base LLM, vision and projector bit-identical


# ---------------------------------------------------------------------------------------- equivalences


def test_gradient_accumulation_matches_the_same_global_batch(cached, reference):
    accum = run(cfg_for(cached, "accum", "train.batch_size=1", "train.grad_accum=2"))
    for one, two in zip(reference.log, accum.log, strict=True):
        for key in LOSS_KEYS:
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), (one["step"], key)
    assert reference.layer_calls == 2 and accum.layer_calls == 4  # two micro-batches per step


def test_gradient_checkpointing_recomputes_and_gives_the_same_losses(cached, reference):
    ckpt = run(cfg_for(cached, "ckpt", "model.gradient_checkpointing=true"))
    assert ckpt.task.adapter.model.is_activation_checkpointing
    assert ckpt.layer_calls == 2 * reference.layer_calls  # every decoder layer runs again in backward
    for plain, recomputed in zip(reference.log, ckpt.log, strict=True):
        for key in LOSS_KEYS:
            assert recomputed[key] == pytest.approx(plain[key], abs=1e-5), (plain["step"], key)


# ---------------------------------------------------------------------------------------- alignment


@pytest.fixture(scope="module")
def variants(cached):
    # 3x4 tokens per frame are too coarse for cross-frame pairs in 10 cm voxels: the correspondence loss uses 1 m
    extra = {"correspondence": ["correspondence.voxel=1.0"]}
    return {loss: run(cfg_for(cached, loss.replace("+", "_"), f"align.loss={loss}", *extra.get(loss, [])))
            for loss in ("cosine", "cosine+l2norm", "infonce", "correspondence", "none")}


@pytest.mark.parametrize("loss, low, high", [
    ("cosine", 0.0, 2.0), ("cosine+l2norm", 0.0, 6.0), ("infonce", 0.0, math.inf), ("correspondence", -1.0, 3.0)])
def test_every_alignment_loss_trains_with_finite_losses(variants, loss, low, high):
    r = variants[loss]
    assert [x["step"] for x in r.log] == [1, 2]
    assert all(math.isfinite(x[k]) for x in r.log for k in LOSS_KEYS)
    assert all(low <= x["align_loss"] <= high and x["align_loss"] != 0.0 for x in r.log)
    assert (len(r.task.heads) == 1) == (loss != "correspondence")


def test_the_distillation_losses_agree_on_the_first_step(variants, reference):
    # same seed, same model, same head, same batch before any update: per token l2norm = 2 (1 - cos), so
    # l2norm = 2 x cosine and cosine+l2norm = 3 x cosine
    cosine = variants["cosine"].log[0]["align_loss"]
    assert reference.log[0]["align_loss"] == pytest.approx(2 * cosine, rel=1e-5)
    assert variants["cosine+l2norm"].log[0]["align_loss"] == pytest.approx(3 * cosine, rel=1e-5)


def test_no_alignment_is_an_exact_zero_and_has_no_head(variants):
    r = variants["none"]
    assert [x["align_loss"] for x in r.log] == [0.0, 0.0]
    assert all(math.isfinite(x["loss"]) for x in r.log)
    assert len(r.task.heads) == 0


def test_two_supervised_layers_train_two_heads(cached):
    r = run(cfg_for(cached, "layers", "align.layers=[-1,-2]"))
    assert sorted(r.task.heads) == ["-1", "-2"]
    assert all(math.isfinite(x[k]) for x in r.log for k in LOSS_KEYS)
    for layer in ("-1", "-2"):
        names = [n for n in r.before if n.startswith(f"heads.{layer}.")]
        assert names and all(r.changed(n) for n in names)


# ------------------------------------------------------------------------------------- paper recipes

RECIPES = sorted((Path(__file__).parent.parent / "configs").glob("*_7b_vggt.yaml"))
PAPER_SAMPLES = 36_665 + 36_665 + 43_838 + 26_515 + 79_445  # ScanRefer, Scan2Cap, Multi3DRefer, ScanQA, SQA3D


def test_paper_recipes_follow_the_training_settings():
    from threedrs.teachers.cache import CacheSpec

    assert [p.name.split("_7b")[0] for p in RECIPES] == ["llava_onevision", "llava_video", "qwen2_5_vl", "qwen2_vl"]
    specs = set()
    for path in RECIPES:
        cfg = load_config(path)
        t = cfg.train
        assert t.batch_size * 8 * t.grad_accum == 16  # global batch 16 on 8 GPUs
        assert t.steps * 16 <= PAPER_SAMPLES < (t.steps + 1) * 16  # one epoch of full batches
        assert (t.lr_llm, t.lr_vision, t.warmup_ratio, t.mixed_precision) == (1e-5, 2e-6, 0.03, "bf16")
        assert cfg.model.gradient_checkpointing and cfg.data.frames == 32 and cfg.data.sampling == "uniform"
        assert cfg.teacher.name == "vggt" and cfg.align.loss == "l2norm" and cfg.align.layers == [-1]
        assert t.freeze == (["vision"] if cfg.model.family == "qwen2_vl" else [])
        # the family's token grid at the chosen size: Qwen 392 px / (patch 14 x merge 2); LLaVA ceil(384/14 / 2)
        side = cfg.model.image_size[0] // 28 if cfg.model.image_size else math.ceil(384 // 14 / 2)
        assert tuple(cfg.teacher.grid) == (side, side) == (14, 14)
        # LLaVA-Video (the paper's default, Table 1) as the authors train it: a newline after each frame row
        assert cfg.model.newline == ("grid" if path.name.startswith("llava_video") else "auto")
        specs.add(CacheSpec.from_config(cfg))
    assert len(specs) == 1  # one VGGT extraction serves the four recipes


# ----------------------------------------------------------------------------------- launcher configs


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_accelerate_launcher_configs_are_valid(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict)
    assert {"compute_environment", "distributed_type", "num_processes"} <= set(raw)
    processes = re.search(r"(\d+)(gpu|proc)", path.stem)
    assert raw["num_processes"] == (int(processes.group(1)) if processes else 1)
    loaded = load_config_from_file(str(path))  # accelerate's own loader: unknown keys and bad enums fail
    assert loaded.num_processes == raw["num_processes"]
    options = {action.dest for action in launch_command_parser()._actions}
    for section in ("fsdp_config", "deepspeed_config"):
        unknown = set(raw.get(section) or {}) - options
        assert not unknown, f"{path.name}: {section} keys that accelerate launch does not know: {unknown}"
    stage = re.search(r"zero(\d)", path.stem)
    if stage:
        assert raw["distributed_type"] == "DEEPSPEED" and raw["deepspeed_config"]["zero_stage"] == int(stage.group(1))


FSDP = Path(__file__).parent.parent / "configs" / "accelerate" / "fsdp_8gpu.yaml"


def fsdp_class_lists() -> dict[str, str]:
    """family -> layer classes: the config's own list (Qwen2-VL) plus the per-family overrides in its header."""
    text = FSDP.read_text()
    lists = {"qwen2_vl": yaml.safe_load(text)["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]}
    lists.update(re.findall(r"#\s+(\w+):\s+--fsdp_transformer_layer_cls_to_wrap (\S+)", text))
    return lists


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava_onevision", "internvl"])
def test_fsdp_wrap_classes_exist_in_each_family(family):
    from accelerate.utils.dataclasses import get_module_class_from_name

    names = fsdp_class_lists()[family].split(",")
    task = AlignTask(build_adapter(load_config(None, [f"model.family={family}"]).model), 32)
    found = {n: get_module_class_from_name(task, n) for n in names}
    assert all(found.values()), f"{family}: classes not in the model: {[n for n, c in found.items() if c is None]}"
    decoder = type(task.adapter.model.get_decoder().layers[0]).__name__
    assert decoder in names  # the LLM's decoder layers are wrapped, not only the vision blocks


@pytest.mark.slow
def test_cpu_ddp_launcher_runs_two_processes(cached, tmp_path):
    import os
    import subprocess
    import sys

    root, _, cache = cached
    configs = Path(__file__).parent.parent / "configs"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(configs / "accelerate" / "cpu_ddp_2proc.yaml"), "-m", "threedrs.cli", "train",
           str(configs / "tiny_qwen2_vl.yaml"), f"data.root={root}", "data.frames=4", f"output_dir={tmp_path / 'ddp'}",
           f"teacher.cache_dir={cache}", "teacher.grid=[3,4]", "teacher.channels=32", "model.image_size=[42,56]",
           "train.steps=2", "train.batch_size=1", "train.log_every=1", "train.warmup_ratio=0"]
    done = subprocess.run(cmd, check=False, env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 2 steps") == 2  # one line per process
    log = [json.loads(line) for line in (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(math.isfinite(r["loss"]) for r in log)
