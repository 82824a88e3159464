"""The cases of bench/audit_bad_inputs.py: each breaks one thing in a fresh copy of the audit world and returns
the ``threedrs`` command line to run (see that script for the world and the classification)."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


def base_overrides(root: Path, run: Path, cache: Path) -> list[str]:
    """The audit world's settings: tiny Qwen2-VL, 4 frames at 42x56, geometry teacher, 4 steps, 4 eval samples."""
    return [f"data.root={root}", "data.frames=4", f"output_dir={run}", f"teacher.cache_dir={cache}",
            "teacher.grid=[3,4]", "teacher.channels=32", "teacher.batch_frames=4", "model.image_size=[42,56]",
            "train.steps=4", "train.batch_size=2", "train.log_every=1", "train.save_every=2", "train.lr_llm=1e-3",
            "train.lr_heads=1e-3", "train.warmup_ratio=0.25", "eval.limit=4", "eval.max_new_tokens=4",
            "eval.meteor=false", "eval.benchmarks=[scanrefer,scanqa]"]


@dataclass
class Env:
    """One case's copy of the world."""

    folder: Path

    root = property(lambda self: self.folder / "rooms")
    cache = property(lambda self: self.folder / "cache")
    run = property(lambda self: self.folder / "run")
    eval = property(lambda self: self.folder / "run" / "eval")
    marker = property(lambda self: self.folder / "CODE_RAN")
    config = property(lambda self: self.folder / "audit.yaml")

    def cmd(self, command: str, *extra: str, flags: tuple[str, ...] = ()) -> list:
        return [command, self.config, *base_overrides(self.root, self.run, self.cache), *extra, *flags]

    def ckpt(self, step: int) -> Path:
        return self.run / "checkpoints" / f"step_{step:06d}"

    def scene(self, split: str = "train") -> str:
        return (self.root / "metadata" / f"scannetv2_{split}.txt").read_text().split()[0]

    def frame(self, split: str = "train", ext: str = ".png") -> Path:
        """A file of a frame that the run uses (first frame of the first scene of ``split``)."""
        scene = self.scene(split)
        frame_id = json.loads((self.cache / "frame_lists.json").read_text())["scenes"][scene][0]
        return self.root / "scannet" / "posed_images" / scene / f"{frame_id}{ext}"

    def predictions(self, bench: str = "scanrefer") -> Path:
        return self.eval / "predictions" / f"{bench}.jsonl"

    def payload(self) -> object:
        """An object whose unpickling writes the marker file."""
        return _Payload(self.marker)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "a pickle payload ran"))


@dataclass
class Case:
    name: str
    expect: str  # regex: the error line must match it (error), or the output must (recover)
    kind: str  # "error" or "recover"
    owner: str
    run: Callable[[Env], list]
    check: Callable[[Env], str | None] | None = None  # recover: None when the result left behind is right


CASES: list[Case] = []


def case(name: str, expect: str, kind: str = "error", owner: str = "", check=None):
    def register(fn: Callable[[Env], list]) -> Callable[[Env], list]:
        CASES.append(Case(name, expect, kind, owner, fn, check))
        return fn
    return register


def _edit_json(path: Path, change: Callable[[object], object]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _same_size_damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(64)
    path.write_bytes(bytes(data))


def _touch_later(path: Path) -> None:
    stat = path.stat()
    path.write_bytes(path.read_bytes())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def _lines_of(env: Env, bench: str = "scanrefer") -> list[str]:
    return env.predictions(bench).read_text().splitlines()


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
    _edit_json(env.ckpt(4) / "state.json", lambda s: s | {"files": s["files"] | {"custom_checkpoint_0.pkl": {
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


for _name, _damage in (("truncated", _truncate), ("same-size damaged", _same_size_damage)):
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
    _edit_json(env.ckpt(4) / "state.json", lambda s: {k: v for k, v in s.items() if k != "files"})
    return env.cmd("train", flags=("--resume",))


@case("resume: every checkpoint damaged", r"no usable checkpoint under .*checkpoints")
def _(env):
    for step in (2, 4):
        _truncate(env.ckpt(step) / "model.safetensors")
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


for _name, _damage in (("truncated", _truncate), ("garbage", lambda p: p.write_bytes(os.urandom(4096)))):
    @case(f"eval.checkpoint with a {_name} model.safetensors",
          r"model\.safetensors: (damaged or truncated|content does not match the sha256)")
    def _(env, damage=_damage):
        damage(env.ckpt(2) / "model.safetensors")
        return env.cmd("eval", f"eval.checkpoint={env.ckpt(2)}", flags=("--out", env.folder / "e"))


@case("eval of the newest checkpoint, its weights damaged in place", r"does not match the sha256")
def _(env):
    _same_size_damage(env.ckpt(4) / "model.safetensors")
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
    _truncate(env.ckpt(2) / "model.safetensors")
    return env.cmd("probe", "probe.target=model", f"probe.checkpoint={env.ckpt(2)}")


@case("eval of a checkpoint with another model family", r"weights do not fit the configured model")
def _(env):
    return env.cmd("eval", "model.family=llava_onevision", "model.image_size=[56,56]", "teacher.grid=[4,4]",
                   f"eval.checkpoint={env.ckpt(4)}", flags=("--out", env.folder / "e"))


# ---------------------------------------------------------------------------------- evaluation folders (26)

for _change, _expect in (("eval.limit=2", r"benchmarks\.scanrefer\.limit: recorded 4, this run has 2"),
                         ("eval.limit=6", r"benchmarks\.scanrefer\.limit: recorded 4, this run has 6"),
                         ("eval.max_new_tokens=8", r"eval\.max_new_tokens: recorded 4"),
                         ("eval.split=train", r"benchmarks\.scanqa\.split: recorded 'val'"),
                         ("eval.probe=true", r"eval\.probe: recorded False"),
                         ("model.tiny_seed=1", r"model\.tiny_seed: recorded 0")):
    case(f"eval into the same folder with {_change}", _expect)(
        lambda env, c=_change: env.cmd("eval", c, "eval.benchmarks=[scanqa]" if "split" in c else "eval.meteor=false"))


@case("eval of another checkpoint into the same folder", r"checkpoint\.sha256: recorded")
def _(env):
    return env.cmd("eval", f"eval.checkpoint={env.ckpt(2)}")


@case("eval after an annotation file changed", r"benchmarks\.scanrefer\.files\.scanrefer/ScanRefer_filtered_val")
def _(env):
    _edit_json(env.root / "scanrefer" / "ScanRefer_filtered_val.json",
               lambda recs: [recs[0] | {"description": recs[0]["description"] + " it is red."}] + recs[1:])
    return env.cmd("eval")


@case("eval after the proposals file changed", r"data\.proposals: recorded")
def _(env):
    _edit_json(env.root / "metadata" / "scannet_val_pred_box.json", lambda t: {k: v[:-1] for k, v in t.items()})
    return env.cmd("eval")


@case("eval after a depth image of an evaluated scene changed", r"benchmarks\.\w+\.scenes\.scene\d+_\d+: recorded")
def _(env):
    _touch_later(env.frame("val"))
    return env.cmd("eval")


@case("eval into a folder whose provenance.json is gone", r"without provenance\.json")
def _(env):
    (env.eval / "provenance.json").unlink()
    return env.cmd("eval")


@case("eval: provenance.json is not JSON", r"provenance\.json: not valid JSON")
def _(env):
    (env.eval / "provenance.json").write_text("[")
    return env.cmd("eval")


@case("eval: provenance.json is a JSON list", r"provenance\.json: expected a JSON mapping")
def _(env):
    (env.eval / "provenance.json").write_text("[1]")
    return env.cmd("eval")


def _append_foreign(env: Env) -> None:
    first = json.loads(_lines_of(env)[0])
    env.predictions().write_text("\n".join(_lines_of(env) + [json.dumps(first | {"id": "scene0999_00|1|0"})]) + "\n")


case("score: an id that is not in the benchmark", r"scene0999_00\|1\|0' is not a sample of scanrefer")(
    lambda env: (_append_foreign(env), ["score", env.eval, "--no-meteor"])[1])
case("eval: an id that is not in the benchmark", r"scene0999_00\|1\|0' is not a sample of scanrefer")(
    lambda env: (_append_foreign(env), env.cmd("eval"))[1])


@case("score: a duplicated line", r"scanrefer\.jsonl, line 5: duplicate id")
def _(env):
    env.predictions().write_text("\n".join(_lines_of(env) + _lines_of(env)[:1]) + "\n")
    return ["score", env.eval, "--no-meteor"]


for _command in ("eval", "score"):
    @case(f"{_command}: a line that is not UTF-8", r"scanrefer\.jsonl.* line 2.*UTF-8")
    def _(env, command=_command):
        lines = _lines_of(env)
        env.predictions().write_bytes((lines[0] + "\n").encode() + b'{"id": "caf\xe9"}\n'
                                      + "\n".join(lines[1:]).encode() + b"\n")
        return ["score", env.eval, "--no-meteor"] if command == "score" else env.cmd("eval")

    @case(f"{_command}: a malformed JSON line", r"scanrefer\.jsonl.* line 2")
    def _(env, command=_command):
        lines = _lines_of(env)
        env.predictions().write_text("\n".join([lines[0], "{not json"] + lines[1:]) + "\n")
        return ["score", env.eval, "--no-meteor"] if command == "score" else env.cmd("eval")


@case("score: a line without pred_box", r"line 1 \(id .*\): missing key 'pred_box'")
def _(env):
    lines = _lines_of(env)
    record = json.loads(lines[0])
    del record["pred_box"]
    env.predictions().write_text("\n".join([json.dumps(record)] + lines[1:]) + "\n")
    return ["score", env.eval, "--no-meteor"]


@case("score: an empty predictions file", r"scanrefer\.jsonl: no predictions")
def _(env):
    env.predictions().write_text("")
    return ["score", env.eval, "--no-meteor"]


@case("score: predictions of half the samples", r"2 of 4 samples have no prediction")
def _(env):
    env.predictions().write_text("\n".join(_lines_of(env)[:2]) + "\n")
    return ["score", env.eval, "--no-meteor"]


def _four_unique(env: Env) -> str | None:
    ids = [json.loads(line)["id"] for line in _lines_of(env)]
    return None if len(ids) == len(set(ids)) == 4 else f"ids {ids}"


@case("eval after a kill mid-line (last line cut)", r"ScanRefer", kind="recover", check=_four_unique)
def _(env):
    text = env.predictions().read_text()
    env.predictions().write_text(text[: len(text) - 40])
    return env.cmd("eval")


@case("two evals appending to one predictions file", r"predictions file .*scanrefer\.jsonl is in use by process")
def _(env):
    from threedrs.locking import FileLock

    env.held = FileLock(env.predictions().with_name("scanrefer.jsonl.lock"), "audit").acquire()
    return env.cmd("eval")


@case("score: a folder without predictions", r"no predictions file")
def _(env):
    (env.folder / "empty").mkdir()
    return ["score", env.folder / "empty", "--no-meteor"]


@case("score: a folder that does not exist", r"nowhere: no such run folder")
def _(env):
    return ["score", env.folder / "nowhere", "--no-meteor"]


@case("report: metrics.json is not JSON (and newer than the predictions)", r"ScanRefer", kind="recover",
      check=lambda env: None if json.loads((env.eval / "metrics.json").read_text()).get("benchmarks") else "no metrics")
def _(env):
    (env.eval / "metrics.json").write_text("{")
    return ["report", env.eval, "--out", env.folder / "rep", "--no-meteor"]


# ------------------------------------------------------------------------------------ feature cache (17)

@case("train after a depth image changed (stale cache)", r"extracted from frames that changed since")
def _(env):
    _touch_later(env.frame("train"))
    return env.cmd("train", flags=("--overwrite",))


@case("extract after a depth image changed", r"1 re-extracted because their frames changed", kind="recover")
def _(env):
    _touch_later(env.frame("train"))
    return env.cmd("extract")


for _command in ("extract", "train"):
    @case(f"{_command}: frame_lists.json is not JSON", r"frame_lists\.json: not valid JSON")
    def _(env, command=_command):
        (env.cache / "frame_lists.json").write_text('{"rule": "uniform", ')
        return env.cmd(command, flags=("--overwrite",) if command == "train" else ())


@case("frame_lists.json scenes are not lists", r"frame_lists\.json: scene 'scene\d+_\d+' must map to a non-empty list")
def _(env):
    _edit_json(env.cache / "frame_lists.json", lambda d: d | {"scenes": {k: 7 for k in d["scenes"]}})
    return env.cmd("extract")


@case("frame_lists.json made for other settings", r"frame_lists\.json: frame lists were made for")
def _(env):
    _edit_json(env.cache / "frame_lists.json", lambda d: d | {"frames": 9})
    return env.cmd("extract")


@case("train: manifest.json is not JSON", r"manifest\.json: not valid JSON")
def _(env):
    (env.cache / "manifest.json").write_text("{")
    return env.cmd("train", flags=("--overwrite",))


@case("train: manifest.json deleted", r"no feature cache here \(manifest\.json not found\)")
def _(env):
    (env.cache / "manifest.json").unlink()
    return env.cmd("train", flags=("--overwrite",))


def _cache_file(env: Env) -> Path:
    return env.cache / f"{env.scene('train')}.safetensors"


@case("train: a truncated cache file", r"\.safetensors: truncated")
def _(env):
    _truncate(_cache_file(env))
    return env.cmd("train", flags=("--overwrite",))


@case("extract: a truncated cache file", r"truncated/corrupt files rewritten", kind="recover")
def _(env):
    _truncate(_cache_file(env))
    return env.cmd("extract")


@case("train: a cache file of random bytes", r"\.safetensors: (truncated|corrupt|not a threedrs)")
def _(env):
    _cache_file(env).write_bytes(os.urandom(5000))
    return env.cmd("train", flags=("--overwrite",))


@case("train: a cache file deleted", r"lacks 1 scene\(s\)")
def _(env):
    _cache_file(env).unlink()
    return env.cmd("train", flags=("--overwrite",))


@case("train with another teacher on the cache", r"teacher: recorded 'geometry', this run has 'appearance'")
def _(env):
    return env.cmd("train", "teacher.name=appearance", flags=("--overwrite",))


@case("extract into a cache of other channels", r"channels: recorded 32, this run has 16.*--overwrite")
def _(env):
    return env.cmd("extract", "teacher.channels=16")


@case("extract while another process extracts a scene", r"another process is extracting this scene",
      kind="recover", check=lambda env: None if (env.cache / "x.safetensors.tmp-1").read_bytes() == b"live"
      else "the live writer's temporary file was touched")
def _(env):
    from threedrs.locking import FileLock

    _cache_file(env).unlink()
    (env.cache / "x.safetensors.tmp-1").write_bytes(b"live")
    env.held = FileLock(env.cache / ".locks" / f"{env.scene('train')}.lock", "audit").acquire()
    return env.cmd("extract")


@case("extract with a dead writer's temporary file", r"1 extracted", kind="recover",
      check=lambda env: None if not list(env.cache.glob("*.tmp-*")) else "temporary file left")
def _(env):
    _cache_file(env).with_name(_cache_file(env).name + ".tmp-999999").write_bytes(b"half")
    _cache_file(env).unlink()
    return env.cmd("extract")


@case("teacher.cache_dir is a file", r"teacher\.cache_dir .*file: not a folder")
def _(env):
    (env.folder / "file").write_text("x")
    return env.cmd("extract", f"teacher.cache_dir={env.folder / 'file'}")


# ------------------------------------------------------------------------------------- data files (19)

@case("data.root does not exist", r"nowhere/.*not found")
def _(env):
    return env.cmd("train", f"data.root={env.folder / 'nowhere'}", flags=("--overwrite",))


@case("split list is empty", r"scannetv2_train\.txt: split list is empty")
def _(env):
    (env.root / "metadata" / "scannetv2_train.txt").write_text("\n")
    return env.cmd("extract", flags=("--overwrite",))


@case("a depth image missing", r"\.png: depth image not found")
def _(env):
    env.frame("train").unlink()
    return env.cmd("extract", flags=("--overwrite",))


@case("a depth image of random bytes", r"\.png: corrupt or unreadable depth image")
def _(env):
    env.frame("train").write_bytes(os.urandom(300))
    return env.cmd("extract", flags=("--overwrite",))


@case("a colour image of random bytes", r"\.jpg: corrupt or unreadable colour image")
def _(env):
    env.frame("train", ".jpg").write_bytes(os.urandom(300))
    return env.cmd("extract", flags=("--overwrite",))


@case("a pose file with 15 numbers", r"\.txt: expected 16 numbers, found 15")
def _(env):
    pose = env.frame("train", ".txt")
    pose.write_text(" ".join(pose.read_text().split()[:15]))
    return env.cmd("extract", flags=("--overwrite",))


@case("intrinsic.txt that is not numbers", r"intrinsic\.txt: not a text matrix")
def _(env):
    (env.frame("train").parent / "intrinsic.txt").write_text("fx fy cx cy\n")
    return env.cmd("extract", flags=("--overwrite",))


@case("intrinsics with the principal point outside the image", r"intrinsic", owner="issue 10")
def _(env):
    path = env.frame("train").parent / "intrinsic.txt"
    values = path.read_text().split()
    values[2] = "5000.0"
    path.write_text(" ".join(values))
    return env.cmd("extract", flags=("--overwrite",))


@case("ScanRefer val annotation file missing", r"ScanRefer_filtered_val\.json: annotation file not found")
def _(env):
    (env.root / "scanrefer" / "ScanRefer_filtered_val.json").unlink()
    return env.cmd("eval", flags=("--overwrite",))


@case("ScanQA train annotation file not JSON", r"ScanQA_v1\.0_train\.json: not valid JSON")
def _(env):
    (env.root / "scanqa" / "ScanQA_v1.0_train.json").write_text("[{")
    return env.cmd("train", flags=("--overwrite",))


@case("ScanRefer val: unknown object id", r"object", owner="issue 10")
def _(env):
    _edit_json(env.root / "scanrefer" / "ScanRefer_filtered_val.json", lambda r: [r[0] | {"object_id": "777"}] + r[1:])
    return env.cmd("eval", flags=("--overwrite",))


@case("ScanRefer val: non-integer object id", r"object_id", owner="issue 10")
def _(env):
    _edit_json(env.root / "scanrefer" / "ScanRefer_filtered_val.json", lambda r: [r[0] | {"object_id": "chair"}] + r[1:])
    return env.cmd("eval", flags=("--overwrite",))


@case("ScanRefer train: unknown object id (fails at start-up, not at step N)", r"object", owner="issue 10")
def _(env):
    _edit_json(env.root / "scanrefer" / "ScanRefer_filtered_train.json", lambda r: r[:-1] + [r[-1] | {"object_id": "777"}])
    return env.cmd("train", "train.steps=1", flags=("--overwrite",))


@case("proposals with a NaN", r"scannet_val_pred_box\.json", owner="issue 10")
def _(env):
    path = env.root / "metadata" / "scannet_val_pred_box.json"
    table = json.loads(path.read_text())
    key = next(k for k, boxes in table.items() if boxes)
    table[key][0] = [float("nan")] + table[key][0][1:6]
    path.write_text(json.dumps(table))  # Python writes NaN, as numpy-based exporters do
    return env.cmd("eval", flags=("--overwrite",))


@case("proposals file not JSON", r"scannet_val_pred_box\.json: not valid JSON")
def _(env):
    (env.root / "metadata" / "scannet_val_pred_box.json").write_text("{")
    return env.cmd("eval", flags=("--overwrite",))


@case("proposals file missing", r"scannet_val_pred_box\.json: box table not found")
def _(env):
    (env.root / "metadata" / "scannet_val_pred_box.json").unlink()
    return env.cmd("eval", flags=("--overwrite",))


@case("frame list naming a frame that does not exist", r"99999", owner="issue 10")
def _(env):
    _edit_json(env.cache / "frame_lists.json",
               lambda d: d | {"scenes": d["scenes"] | {env.scene("train"): ["99999"] * 4}})
    return env.cmd("train", flags=("--overwrite",))


@case("instance aggregation file not JSON", r"aggregation\.json: not valid JSON")
def _(env):
    scene = env.scene("val")
    (env.root / "scannet" / "scans" / scene / f"{scene}.aggregation.json").write_text("{")
    return env.cmd("eval", flags=("--overwrite",))


@case("a scene listed in the split but absent", r"scene0999_00: scene folder not found|scene0999_00")
def _(env):
    split = env.root / "metadata" / "scannetv2_val.txt"
    split.write_text(split.read_text() + "scene0999_00\n")
    return env.cmd("extract", flags=("--overwrite",))

