"""Audit cases, part 2: evaluation folders, the feature cache and the data files (see bench/audit_bad_inputs.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from audit_world import Env, case, edit_json, lines_of, touch_later, truncate


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
    edit_json(env.root / "scanrefer" / "ScanRefer_filtered_val.json",
               lambda recs: [recs[0] | {"description": recs[0]["description"] + " it is red."}] + recs[1:])
    return env.cmd("eval")


@case("eval after the proposals file changed", r"data\.proposals: recorded")
def _(env):
    edit_json(env.root / "metadata" / "scannet_val_pred_box.json", lambda t: {k: v[:-1] for k, v in t.items()})
    return env.cmd("eval")


@case("eval after a depth image of an evaluated scene changed", r"benchmarks\.\w+\.scenes\.scene\d+_\d+: recorded")
def _(env):
    touch_later(env.frame("val"))
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
    first = json.loads(lines_of(env)[0])
    env.predictions().write_text("\n".join(lines_of(env) + [json.dumps(first | {"id": "scene0999_00|1|0"})]) + "\n")


case("score: an id that is not in the benchmark", r"scene0999_00\|1\|0' is not a sample of scanrefer")(
    lambda env: (_append_foreign(env), ["score", env.eval, "--no-meteor"])[1])
case("eval: an id that is not in the benchmark", r"scene0999_00\|1\|0' is not a sample of scanrefer")(
    lambda env: (_append_foreign(env), env.cmd("eval"))[1])


@case("score: a duplicated line", r"scanrefer\.jsonl, line 5: duplicate id")
def _(env):
    env.predictions().write_text("\n".join(lines_of(env) + lines_of(env)[:1]) + "\n")
    return ["score", env.eval, "--no-meteor"]


for _command in ("eval", "score"):
    @case(f"{_command}: a line that is not UTF-8", r"scanrefer\.jsonl.* line 2.*UTF-8")
    def _(env, command=_command):
        lines = lines_of(env)
        env.predictions().write_bytes((lines[0] + "\n").encode() + b'{"id": "caf\xe9"}\n'
                                      + "\n".join(lines[1:]).encode() + b"\n")
        return ["score", env.eval, "--no-meteor"] if command == "score" else env.cmd("eval")

    @case(f"{_command}: a malformed JSON line", r"scanrefer\.jsonl.* line 2")
    def _(env, command=_command):
        lines = lines_of(env)
        env.predictions().write_text("\n".join([lines[0], "{not json"] + lines[1:]) + "\n")
        return ["score", env.eval, "--no-meteor"] if command == "score" else env.cmd("eval")


@case("score: a line without pred_box", r"line 1 \(id .*\): missing key 'pred_box'")
def _(env):
    lines = lines_of(env)
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
    env.predictions().write_text("\n".join(lines_of(env)[:2]) + "\n")
    return ["score", env.eval, "--no-meteor"]


def _four_unique(env: Env) -> str | None:
    ids = [json.loads(line)["id"] for line in lines_of(env)]
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
    touch_later(env.frame("train"))
    return env.cmd("train", flags=("--overwrite",))


@case("extract after a depth image changed", r"1 re-extracted because their frames changed", kind="recover")
def _(env):
    touch_later(env.frame("train"))
    return env.cmd("extract")


for _command in ("extract", "train"):
    @case(f"{_command}: frame_lists.json is not JSON", r"frame_lists\.json: not valid JSON")
    def _(env, command=_command):
        (env.cache / "frame_lists.json").write_text('{"rule": "uniform", ')
        return env.cmd(command, flags=("--overwrite",) if command == "train" else ())


@case("frame_lists.json scenes are not lists", r"frame_lists\.json: scene 'scene\d+_\d+' must map to a non-empty list")
def _(env):
    edit_json(env.cache / "frame_lists.json", lambda d: d | {"scenes": {k: 7 for k in d["scenes"]}})
    return env.cmd("extract")


@case("frame_lists.json made for other settings", r"frame_lists\.json: frame lists were made for")
def _(env):
    edit_json(env.cache / "frame_lists.json", lambda d: d | {"frames": 9})
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
    truncate(_cache_file(env))
    return env.cmd("train", flags=("--overwrite",))


@case("extract: a truncated cache file", r"truncated/corrupt files rewritten", kind="recover")
def _(env):
    truncate(_cache_file(env))
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
    edit_json(env.root / "scanrefer" / "ScanRefer_filtered_val.json", lambda r: [r[0] | {"object_id": "777"}] + r[1:])
    return env.cmd("eval", flags=("--overwrite",))


@case("ScanRefer val: non-integer object id", r"object_id", owner="issue 10")
def _(env):
    edit_json(env.root / "scanrefer" / "ScanRefer_filtered_val.json", lambda r: [r[0] | {"object_id": "chair"}] + r[1:])
    return env.cmd("eval", flags=("--overwrite",))


@case("ScanRefer train: unknown object id (fails at start-up, not at step N)", r"object", owner="issue 10")
def _(env):
    edit_json(env.root / "scanrefer" / "ScanRefer_filtered_train.json", lambda r: r[:-1] + [r[-1] | {"object_id": "777"}])
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
    edit_json(env.cache / "frame_lists.json",
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

