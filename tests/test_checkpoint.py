"""Training checkpoints and run folders: no pickle is ever loaded, a kill at any moment resumes exactly, a damaged
checkpoint is skipped with a warning, a run folder never mixes two runs, two trainings never share one folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from threedrs.checkpoint import (CheckpointError, CorruptCheckpointError, UntrustedCheckpointError, model_sha256,
                                 read_model_weights, verify_checkpoint)
from threedrs.checkpoint_state import load_optimizer, load_rng, save_optimizer, save_rng
from threedrs.config import load_config
from threedrs.extract import extract
from threedrs.locking import FileLock, LockedError
from threedrs.provenance import ProvenanceError, file_sha256
from threedrs.teachers.cache import CacheMismatchError
from threedrs.train import train

LOSSES = ("loss", "lm_loss", "ground_loss", "align_loss")


def overrides(root, out, *extra):
    """4 steps of the tiny Qwen2-VL on tiny SynthRooms, a checkpoint every 2 steps."""
    return [f"data.root={root}", "data.frames=4", f"output_dir={out}", f"teacher.cache_dir={out.parent}/cache",
            "teacher.grid=[3,4]", "teacher.channels=32", "teacher.batch_frames=4", "model.image_size=[42,56]",
            "train.steps=4", "train.batch_size=2", "train.log_every=1", "train.save_every=2", "train.lr_llm=1e-3",
            "train.lr_heads=1e-3", "train.warmup_ratio=0.25", *extra]


def make_config(root, out, *extra):
    return load_config(None, overrides(root, out, *extra))


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def assert_same_losses(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        for key in LOSSES:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (b["step"], key)


@pytest.fixture(scope="module")
def work(synthrooms_tiny, tmp_path_factory):
    """(root, work dir, the log of an uninterrupted 4-step run); the geometry cache lives in work/cache."""
    work = tmp_path_factory.mktemp("checkpoint")
    extract(make_config(synthrooms_tiny, work / "extract"))
    full = work / "full"
    train(make_config(synthrooms_tiny, full), progress=False)
    return synthrooms_tiny, work, log_of(full)


class Payload:
    """Unpickling this writes a marker file: what a planted checkpoint would do (and far worse)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code from a checkpoint ran"))


def test_checkpoint_holds_only_safetensors_and_json(work):
    _, work_dir, _ = work
    folder = work_dir / "full" / "checkpoints" / "step_000004"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["model.safetensors", "optimizer.json", "optimizer.safetensors", "rng_0.safetensors",
                     "scheduler.json", "state.json"]
    state = verify_checkpoint(folder)
    assert state["step"] == 4 and state["format"] == "threedrs-checkpoint" and not state["sharded"]
    assert state["files"]["model.safetensors"]["sha256"] == file_sha256(folder / "model.safetensors")
    assert model_sha256(folder) == file_sha256(folder / "model.safetensors")
    assert json.loads((folder / "scheduler.json").read_text())["last_epoch"] == 4
    assert not list((work_dir / "full" / "checkpoints").glob("*.tmp"))


def test_planted_pickle_payload_is_refused_and_never_runs(work, tmp_path):
    root, work_dir, _ = work
    out = tmp_path / "run"
    cfg = make_config(root, out, f"teacher.cache_dir={work_dir / 'cache'}", "train.steps=2")
    train(cfg, progress=False)
    folder = out / "checkpoints" / "step_000002"
    marker = tmp_path / "marker"
    torch.save({"payload": Payload(marker)}, folder / "custom_checkpoint_0.pkl")  # accelerate's scheduler file
    with pytest.raises(UntrustedCheckpointError, match=r"custom_checkpoint_0.pkl: refused, a file that threedrs "
                                                       r"did not write"):
        train(cfg, resume=True, progress=False)
    # listing it in state.json does not help: threedrs never reads a file other than its own safetensors/JSON
    state = json.loads((folder / "state.json").read_text())
    state["files"]["custom_checkpoint_0.pkl"] = {"bytes": (folder / "custom_checkpoint_0.pkl").stat().st_size}
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(UntrustedCheckpointError, match="custom_checkpoint_0.pkl"):
        train(cfg, resume=True, progress=False)
    assert not marker.exists()


def test_a_checkpoint_in_accelerates_pickled_layout_is_refused(work, tmp_path):
    root, work_dir, _ = work
    out = tmp_path / "run"
    cfg = make_config(root, out, f"teacher.cache_dir={work_dir / 'cache'}", "train.steps=2")
    train(cfg, progress=False)
    folder = out / "checkpoints" / "step_000002"
    marker = tmp_path / "marker"
    for name in ("optimizer.json", "optimizer.safetensors", "scheduler.json", "rng_0.safetensors"):
        (folder / name).unlink()
    torch.save({"step": 2, "random_state": Payload(marker)}, folder / "random_states_0.pkl")
    (folder / "state.json").write_text(json.dumps({"step": 2}))  # what threedrs wrote before this format
    with pytest.raises(UntrustedCheckpointError, match=r"not a threedrs checkpoint of this format.*--overwrite"):
        train(cfg, resume=True, progress=False)
    assert not marker.exists()
    assert read_model_weights(folder)  # its weights can still be evaluated: safetensors, no pickle


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_then_resume_reproduces_the_run(work, tmp_path):
    root, work_dir, full = work
    out = tmp_path / "killed"
    args = overrides(root, out, f"teacher.cache_dir={work_dir / 'cache'}")
    script = Path(__file__).parent / "train_killed.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]  # SIGKILL halfway through step_000004's model.safetensors
    checkpoints = out / "checkpoints"
    assert (checkpoints / "step_000004.tmp" / "model.safetensors").is_file()
    assert not (checkpoints / "step_000004").exists() and (checkpoints / "step_000002").is_dir()
    assert [r["step"] for r in log_of(out)] == [1, 2, 3, 4]  # step 4 was logged before the kill
    train(make_config(root, out, f"teacher.cache_dir={work_dir / 'cache'}"), resume=True, progress=False)
    assert_same_losses(log_of(out), full)  # cut back to step 2, then steps 3 and 4 again: no duplicates
    assert not (checkpoints / "step_000004.tmp").exists() and verify_checkpoint(checkpoints / "step_000004")


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(work, tmp_path, capsys):
    root, work_dir, full = work
    out = tmp_path / "run"
    cfg = make_config(root, out, f"teacher.cache_dir={work_dir / 'cache'}")
    train(cfg, progress=False)
    newest = out / "checkpoints" / "step_000004" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-100:] = bytes(100)  # same size, damaged tensor bytes: only the checksum can tell
    newest.write_bytes(bytes(data))
    with open(out / "train_log.jsonl", "a") as log:
        log.write('{"step": 5, "loss": 1.0')  # a line cut short
    train(cfg, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "step_000004/model.safetensors: content does not match the sha256" in err
    assert "falling back to the previous checkpoint" in err and "resuming from" in err and "step_000002" in err
    assert (out / "checkpoints" / "step_000004.damaged").is_dir()
    assert_same_losses(log_of(out), full)
    # every checkpoint damaged: a one-line error, not a silent restart from scratch
    for folder in (out / "checkpoints").glob("step_00000?"):
        (folder / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="no usable checkpoint .* start afresh with --overwrite"):
        train(cfg, resume=True, progress=False)


def test_a_folder_never_mixes_two_runs(work, tmp_path):
    root, work_dir, _ = work
    out = tmp_path / "run"
    cache = f"teacher.cache_dir={work_dir / 'cache'}"
    train(make_config(root, out, cache, "train.steps=2"), progress=False)
    with pytest.raises(ProvenanceError, match=r"already holds a run \(checkpoints step_000002.*--resume.*--overwrite"):
        train(make_config(root, out, cache, "train.steps=2", "seed=1"), progress=False)
    with pytest.raises(ProvenanceError, match=r"train.lr_llm: recorded 0.001, this run has 0.002"):
        train(make_config(root, out, cache, "train.steps=2", "train.lr_llm=2e-3"), resume=True, progress=False)
    assert json.loads((out / "provenance.json").read_text())["config"]["train.lr_llm"] == 1e-3
    (out / "eval").mkdir()
    train(make_config(root, out, cache, "train.steps=2", "train.lr_llm=2e-3"), overwrite=True, progress=False)
    assert json.loads((out / "provenance.json").read_text())["config"]["train.lr_llm"] == 2e-3
    assert [r["step"] for r in log_of(out)] == [1, 2] and not (out / "eval").exists()


def test_the_cache_must_match_the_teacher_and_the_current_frames(work, tmp_path):
    root, work_dir, _ = work
    with pytest.raises(CacheMismatchError, match=r"channels: recorded 32, this run has 16"):
        train(make_config(root, tmp_path / "a", f"teacher.cache_dir={work_dir / 'cache'}", "teacher.channels=16",
                          "train.steps=1"), progress=False)
    data = tmp_path / "rooms"
    import shutil

    shutil.copytree(root, data)
    cfg = make_config(data, tmp_path / "b", f"teacher.cache_dir={tmp_path / 'cache'}", "train.steps=1")
    extract(cfg)
    scene = (data / "metadata" / "scannetv2_train.txt").read_text().split()[0]
    depth = sorted((data / "scannet" / "posed_images" / scene).glob("*.png"))
    for png in depth:  # every depth image re-written: same content, new modification time
        png.write_bytes(png.read_bytes())
        os.utime(png, ns=(png.stat().st_atime_ns, png.stat().st_mtime_ns + 10**9))
    with pytest.raises(CacheMismatchError, match=rf"{scene}.safetensors: extracted from frames that changed since"):
        train(cfg, progress=False)
    summary = extract(cfg)
    assert summary.stale == [scene] and "re-extracted because their frames changed" in summary.describe()
    train(cfg, progress=False)


def test_two_trainings_cannot_share_a_run_folder(work, tmp_path):
    root, work_dir, _ = work
    out = tmp_path / "run"
    with FileLock(out / ".lock", "test"):
        with pytest.raises(LockedError, match=rf"the run folder {out} is in use by process {os.getpid()}"):
            train(make_config(root, out, f"teacher.cache_dir={work_dir / 'cache'}", "train.steps=1"),
                  progress=False)
    assert not (out / "checkpoints").exists()


def test_optimizer_and_random_state_round_trip(tmp_path):
    weight = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([{"params": [weight], "lr": 0.1, "name": "llm"}], weight_decay=0.01)
    weight.grad = torch.ones(3, 2)
    opt.step()
    save_optimizer(opt.state_dict(), tmp_path / "o.safetensors", tmp_path / "o.json")
    again = torch.optim.AdamW([{"params": [weight], "lr": 0.5, "name": "x"}], weight_decay=0.0)
    again.load_state_dict(load_optimizer(tmp_path / "o.safetensors", tmp_path / "o.json", again.param_groups))
    a, b = opt.state_dict(), again.state_dict()
    assert a["param_groups"] == b["param_groups"] and isinstance(b["param_groups"][0]["betas"], tuple)
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(a["state"][0][key], b["state"][0][key])
    import random

    import numpy as np

    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    save_rng(tmp_path / "rng.safetensors")
    want = (torch.rand(4), random.random(), np.random.rand())
    torch.rand(9), random.random(), np.random.rand(5)
    load_rng(tmp_path / "rng.safetensors")
    got = (torch.rand(4), random.random(), np.random.rand())
    assert torch.equal(want[0], got[0]) and want[1:] == got[1:]


def test_library_pickles_are_opened_only_with_a_restricted_loader(tmp_path):
    """FSDP (distributed checkpoint) and DeepSpeed files are pickles their libraries load; check_pickles vets them."""
    import pickle
    import warnings

    import torch.distributed.checkpoint as dcp

    from threedrs.pickle_guard import check_pickles

    marker = tmp_path / "marker"
    torch.save({"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
               tmp_path / "optimizer.bin")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group": a one-process save is what this test needs
        dcp.save({"model": {"w": torch.randn(3, 4)}, "step": 3}, checkpoint_id=tmp_path / "pytorch_model_fsdp_0")
    (tmp_path / "latest").write_text("pytorch_model\n")
    good = ["optimizer.bin", "latest", *sorted(p.relative_to(tmp_path).as_posix()
                                               for p in (tmp_path / "pytorch_model_fsdp_0").iterdir())]
    check_pickles(tmp_path, good)  # plain tensors and DCP metadata pass
    torch.save({"scaler": Payload(marker)}, tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(UntrustedCheckpointError, match="optim_states.pt: refused, it holds objects beyond"):
        check_pickles(tmp_path, good + ["zero_pp_rank_0_mp_rank_00_optim_states.pt"])
    (tmp_path / "pytorch_model_fsdp_0" / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UntrustedCheckpointError, match=r"\.metadata: refused.*Path.write_text is not allowed"):
        check_pickles(tmp_path, good)
    (tmp_path / "blob").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(UntrustedCheckpointError, match="blob: refused, a pickle file"):
        check_pickles(tmp_path, ["blob"])
    assert not marker.exists()


def test_overwrite_deletes_only_what_a_training_wrote(tmp_path):
    """output_dir="." is where configs keep ./checkpoints/<weights>: --overwrite must leave those, and must not
    pull an evaluation's predictions from under the process writing them."""
    from threedrs.run_folder import open_run

    out = tmp_path / "run"
    cfg = load_config(None, [f"output_dir={out}"])
    checkpoints = out / "checkpoints"
    for name in ("step_000002", "step_000004.tmp", "step_000001.damaged"):
        (checkpoints / name).mkdir(parents=True)
        (checkpoints / name / "model.safetensors").write_bytes(b"ours")
    (checkpoints / "vggt_1b.pt").write_bytes(b"the user's teacher weights")
    (checkpoints / "Qwen2-VL-2B").mkdir()
    (checkpoints / "Qwen2-VL-2B" / "config.json").write_text("{}")
    (out / "train_log.jsonl").write_text('{"step": 1}\n')
    (out / "provenance.json").write_text(json.dumps({"kind": "train"}))
    (out / "notes.txt").write_text("the user's")
    predictions = out / "eval" / "predictions"
    predictions.mkdir(parents=True)
    (predictions / "scanrefer.jsonl").write_text("{}\n")
    (out / "eval" / "provenance.json").write_text(json.dumps({"kind": "eval"}))
    with FileLock(predictions / "scanrefer.jsonl.lock", "an evaluation appending to it"):
        with pytest.raises(LockedError, match=rf"predictions file .*scanrefer.jsonl is in use by process "
                                              rf"{os.getpid()}"):
            open_run(out, cfg, resume=False, overwrite=True, warn=print)
        assert (checkpoints / "step_000002").is_dir() and (predictions / "scanrefer.jsonl").is_file()  # untouched
    assert open_run(out, cfg, resume=False, overwrite=True, warn=print) == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["Qwen2-VL-2B", "vggt_1b.pt"]
    assert (checkpoints / "vggt_1b.pt").read_bytes() == b"the user's teacher weights"
    assert (checkpoints / "Qwen2-VL-2B" / "config.json").is_file() and (out / "notes.txt").is_file()
    assert not (out / "eval").exists() and not (out / "train_log.jsonl").exists()
    assert not (out / "provenance.json").exists()  # written again once the data is checked (check_run_data)
    (checkpoints / "vggt_1b.pt").unlink()
    shutil.rmtree(checkpoints / "Qwen2-VL-2B")
    (checkpoints / "step_000002").mkdir()
    assert open_run(out, cfg, resume=False, overwrite=True, warn=print) == 0 and not checkpoints.exists()
    (out / "provenance.json").write_text(json.dumps({"kind": "eval"}))  # an evaluation folder, not a run's
    with pytest.raises(ProvenanceError, match=r"provenance.json: a record of kind 'eval', not a training run's"):
        open_run(out, cfg, resume=False, overwrite=True, warn=print)
    assert (out / "provenance.json").is_file()


def test_model_sha256_never_skips_its_check_because_state_json_is_damaged(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "step_000002"
    folder.mkdir()
    save_file({"w": torch.arange(6.0)}, str(folder / "model.safetensors"))
    actual = file_sha256(folder / "model.safetensors")
    assert model_sha256(folder) == actual  # no state.json: nothing recorded to compare with
    (folder / "state.json").write_text(json.dumps({"step": 2}))  # pre-format state.json: records no checksum
    assert model_sha256(folder) == actual
    (folder / "state.json").write_text(json.dumps({"files": {"model.safetensors": {"sha256": "0" * 64}}}))
    with pytest.raises(CorruptCheckpointError, match="content does not match the sha256 in state.json"):
        model_sha256(folder)
    (folder / "state.json").write_text('{"files": {"model.safetensors": {"sha256": "0')  # cut short
    with pytest.raises(CorruptCheckpointError, match=r"state.json: not valid JSON"):
        model_sha256(folder)
