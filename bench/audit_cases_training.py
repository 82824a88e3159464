"""Audit cases, part 1: config values, checkpoints and resuming (see bench/audit_bad_inputs.py)."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys

import torch

from audit_world import Env, base_overrides, case, edit_json, same_size_damage, truncate


# ------------------------------------------------------------------------------------------ config values (44)

CONFIG = [
    ("train.lr_llm=-1e-5", r"train\.lr_llm"), ("train.lr_vision=-1", r"train\.lr_vision"),
    ("train.lr_projector=-0.1", r"train\.lr_projector"), ("train.lr_heads=-1e-4", r"train\.lr_heads"),
    ("train.lr_llm=nan", r"train\.lr_llm"), ("train.lr_heads=inf", r"train\.lr_heads"),
    ("train.weight_decay=-0.1", r"train\.weight_decay"), ("train.num_workers=-1", r"train\.num_workers"),
    ("seed=-1", r"^threedrs config: error: seed"), ("seed=99999999999", r"error: seed"),
    ("train.max_grad_norm=-1", r"train\.max_grad_norm"), ("train.warmup_ratio=1.5", r"train\.warmup_ratio"),
    ("train.steps=0", r"train\.steps"), ("train.batch_size=0", r"train\.batch_size"),
    ("train.grad_accum=0", r"train\.grad_accum"), ("train.log_every=0", r"train\.log_every"),
    ("train.save_every=-5", r"train\.save_every"), ("eval.limit=0", r"eval\.limit"),
    ("eval.batch_size=0", r"eval\.batch_size"), ("eval.max_new_tokens=-3", r"eval\.max_new_tokens"),
    ("data.frames=0", r"data\.frames"), ("data.frames=1.5", r"data\.frames"),
    ("data.coverage_voxel=-0.1", r"data\.coverage_voxel"), ("correspondence.voxel=0", r"correspondence\.voxel"),
    ("teacher.channels=0", r"teacher\.channels"), ("teacher.batch_frames=0", r"teacher\.batch_frames"),
    ("teacher.grid=[0,4]", r"teacher\.grid"), ("model.lora_rank=-1", r"model\.lora_rank"),
    ("model.lora_alpha=-16", r"model\.lora_alpha"), ("model.lora_dropout=1.5", r"model\.lora_dropout"),
    ("model.tiny_seed=-1", r"model\.tiny_seed"), ("model.image_size=[0,5]", r"model\.image_size"),
    ("align.weight=-1", r"align\.weight"), ("align.infonce_temperature=0", r"align\.infonce_temperature"),
    ("align.grounding_temperature=-0.07", r"align\.grounding_temperature"), ("align.layers=[]", r"align\.layers"),
    ("eval.probe_layers=[]", r"eval\.probe_layers"), ("synth.val_fraction=1.0", r"synth\.val_fraction"),
    ("train.lrr=1", r"unknown config key train\.lrr"), ("train.steps=abc", r"train\.steps"),
    ("data.sampling=random", r"data\.sampling"), ("train.mixed_precision=fp8", r"train\.mixed_precision"),
    ("teacher.dtype=int8", r"teacher\.dtype"), ("eval.split=dev", r"eval\.split"),
]
for _override, _key in CONFIG:
    case(f"config {_override}", _key)(lambda env, o=_override: env.cmd("config", o))


@case("config file is not YAML", r"audit\.yaml: not valid YAML")
def _(env):
    env.config.write_text("data: [1, 2\n")
    return env.cmd("config")


@case("config file is a list", r"audit\.yaml: the top level must be a mapping")
def _(env):
    env.config.write_text("- 1\n- 2\n")
    return env.cmd("config")


@case("config file missing", r"config file not found: .*nothing\.yaml")
def _(env):
    return ["config", env.folder / "nothing.yaml"]


def _log_ok(env: Env) -> str | None:
    steps = [json.loads(line)["step"] for line in (env.run / "train_log.jsonl").read_text().splitlines()]
    return None if steps == [1, 2, 3, 4] else f"train_log.jsonl steps {steps}"


# ------------------------------------------------------------------------------- checkpoints and resume (24)

for _name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"):
    @case(f"resume: planted pickle payload {_name}", re.escape(_name) + r": refused")
    def _(env, name=_name):
        torch.save({"state": env.payload()}, env.ckpt(4) / name)
        return env.cmd("train", flags=("--resume",))


@case("resume: planted payload listed in state.json", r"custom_checkpoint_0\.pkl: refused")
def _(env):
    torch.save(env.payload(), env.ckpt(4) / "custom_checkpoint_0.pkl")
    edit_json(env.ckpt(4) / "state.json", lambda s: s | {"files": s["files"] | {"custom_checkpoint_0.pkl": {
        "bytes": (env.ckpt(4) / "custom_checkpoint_0.pkl").stat().st_size}}})
    return env.cmd("train", flags=("--resume",))


@case("resume: optimizer.safetensors replaced by a pickle", r"optimizer\.safetensors: .*falling back",
      kind="recover", check=_log_ok)
def _(env):
    (env.ckpt(4) / "optimizer.safetensors").write_bytes(pickle.dumps(env.payload()))
    return env.cmd("train", flags=("--resume",))


@case("resume: checkpoint in accelerate's pickled layout", r"not a threedrs checkpoint of this format")
def _(env):
    folder = env.ckpt(4)
    for name in ("optimizer.json", "optimizer.safetensors", "scheduler.json", "rng_0.safetensors"):
        (folder / name).unlink()
    torch.save({"step": 4, "random_state": env.payload()}, folder / "random_states_0.pkl")
    (folder / "state.json").write_text(json.dumps({"step": 4}))
    return env.cmd("train", flags=("--resume",))


for _name, _damage in (("truncated", truncate), ("same-size damaged", same_size_damage)):
    @case(f"resume: newest model.safetensors {_name}", r"model\.safetensors: .*falling back", kind="recover",
          check=_log_ok)
    def _(env, damage=_damage):
        damage(env.ckpt(4) / "model.safetensors")
        return env.cmd("train", flags=("--resume",))


@case("resume: newest state.json not JSON", r"state\.json: not valid JSON.*falling back", kind="recover",
      check=_log_ok)
def _(env):
    (env.ckpt(4) / "state.json").write_text("{\"step\": 4, ")
    return env.cmd("train", flags=("--resume",))


@case("resume: newest rng file deleted", r"rng_0\.safetensors: missing.*falling back", kind="recover", check=_log_ok)
def _(env):
    (env.ckpt(4) / "rng_0.safetensors").unlink()
    return env.cmd("train", flags=("--resume",))


@case("resume: newest state.json without 'files'", r"state\.json: 'step' must be.*falling back", kind="recover",
      check=_log_ok)
def _(env):
    edit_json(env.ckpt(4) / "state.json", lambda s: {k: v for k, v in s.items() if k != "files"})
    return env.cmd("train", flags=("--resume",))


@case("resume: every checkpoint damaged", r"no usable checkpoint under .*checkpoints")
def _(env):
    for step in (2, 4):
        truncate(env.ckpt(step) / "model.safetensors")
    return env.cmd("train", flags=("--resume",))


@case("resume: train_log.jsonl with a cut line and later steps", r"resuming from .*step_000004", kind="recover",
      check=_log_ok)
def _(env):
    with open(env.run / "train_log.jsonl", "a") as log:
        log.write('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')
    return env.cmd("train", flags=("--resume",))


@case("resume with a changed learning rate", r"train\.lr_llm: recorded 0\.001, this run has 0\.005")
def _(env):
    return env.cmd("train", "train.lr_llm=5e-3", flags=("--resume",))


@case("resume with another teacher.channels", r"channels: recorded 32, this run has 16")
def _(env):
    return env.cmd("train", "teacher.channels=16", flags=("--resume",))


@case("train without --resume into a folder holding a run", r"already holds a run .*--resume.*--overwrite")
def _(env):
    return env.cmd("train")


@case("resume: provenance.json not JSON", r"provenance\.json: not valid JSON")
def _(env):
    (env.run / "provenance.json").write_text("{")
    return env.cmd("train", flags=("--resume",))


@case("resume: checkpoints without provenance.json", r"checkpoints without provenance\.json")
def _(env):
    (env.run / "provenance.json").unlink()
    return env.cmd("train", flags=("--resume",))


@case("two trainings on one run folder", r"the run folder .* is in use by process \d+")
def _(env):
    from threedrs.locking import FileLock

    env.held = FileLock(env.run / ".lock", "audit").acquire()  # held until the case's copy is dropped
    return env.cmd("train", flags=("--resume",))


def _killed_then_resumed(env: Env) -> list:
    code = ("import os, signal, sys; import threedrs.checkpoint as c; from threedrs.config import load_config; "
            "from threedrs.train import train; real = c.save_file\n"
            "def die(t, f, metadata=None):\n    real(t, f, metadata=metadata)\n"
            "    if 'step_000004.tmp' in str(f): os.kill(os.getpid(), signal.SIGKILL)\n"
            "c.save_file = die; train(load_config(None, sys.argv[1:]), progress=False, overwrite=True)")
    env_vars = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code, *base_overrides(env.root, env.run, env.cache)],
                          env=env_vars, capture_output=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-500:]
    return env.cmd("train", flags=("--resume",))


case("kill -9 during a checkpoint write, then resume", r"resuming from .*step_000002", kind="recover",
     check=lambda env: _log_ok(env) or (None if not (env.run / "checkpoints" / "step_000004.tmp").exists()
                                        else "step_000004.tmp left behind"))(_killed_then_resumed)


for _name, _damage in (("truncated", truncate), ("garbage", lambda p: p.write_bytes(os.urandom(4096)))):
    @case(f"eval.checkpoint with a {_name} model.safetensors",
          r"model\.safetensors: (damaged or truncated|content does not match the sha256)")
    def _(env, damage=_damage):
        damage(env.ckpt(2) / "model.safetensors")
        return env.cmd("eval", f"eval.checkpoint={env.ckpt(2)}", flags=("--out", env.folder / "e"))


@case("eval of the newest checkpoint, its weights damaged in place", r"does not match the sha256")
def _(env):
    same_size_damage(env.ckpt(4) / "model.safetensors")
    return env.cmd("eval", flags=("--out", env.folder / "e"))


@case("eval.checkpoint without model.safetensors", r"not a training checkpoint \(no model\.safetensors\)")
def _(env):
    (env.ckpt(2) / "model.safetensors").unlink()
    return env.cmd("eval", f"eval.checkpoint={env.ckpt(2)}")


@case("eval.checkpoint that does not exist", r"nowhere: not a training checkpoint")
def _(env):
    return env.cmd("eval", f"eval.checkpoint={env.folder / 'nowhere'}")


@case("probe.checkpoint with a truncated model.safetensors", r"model\.safetensors: damaged or truncated")
def _(env):
    truncate(env.ckpt(2) / "model.safetensors")
    return env.cmd("probe", "probe.target=model", f"probe.checkpoint={env.ckpt(2)}")


@case("eval of a checkpoint with another model family", r"weights do not fit the configured model")
def _(env):
    return env.cmd("eval", "model.family=llava_onevision", "model.image_size=[56,56]", "teacher.grid=[4,4]",
                   f"eval.checkpoint={env.ckpt(4)}", flags=("--out", env.folder / "e"))


