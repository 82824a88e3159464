"""threedrs train on a tiny SynthRooms set: logs, checkpoints, determinism, resume, divergence, start-up checks."""

from __future__ import annotations

import json

import pytest
import torch

from threedrs.align.task import AlignTask
from threedrs.config import load_config
from threedrs.training_data import build_training_data
from threedrs.data.instances import SceneDataError
from threedrs.extract import extract
from threedrs.models.registry import build_adapter
from threedrs import train as train_module
from threedrs.train import MicroBatches, TrainingDiverged, global_batches, train


def make_config(root, out, *extra):
    return load_config(None, [
        f"data.root={root}", "data.frames=4", f"output_dir={out}", f"teacher.cache_dir={out.parent}/cache",
        "teacher.grid=[3,4]", "teacher.channels=32", "teacher.batch_frames=4", "model.image_size=[42,56]",
        "train.steps=4", "train.batch_size=2", "train.log_every=1", "train.save_every=2", "train.lr_llm=1e-3",
        "train.lr_heads=1e-3", "train.warmup_ratio=0.25", *extra])


@pytest.fixture(scope="module")
def cached(synthrooms_tiny, tmp_path_factory):
    """A tiny SynthRooms root with a geometry-teacher cache; returns (root, work dir)."""
    work = tmp_path_factory.mktemp("train")
    extract(make_config(synthrooms_tiny, work / "extract"))
    return synthrooms_tiny, work


def losses_of(log_path):
    return [json.loads(line) for line in log_path.read_text().splitlines()]


def test_batches_are_seeded_permutations_split_across_ranks():
    stream = global_batches(10, 4, seed=1)
    epoch0 = [next(stream), next(stream)]
    assert len(set(epoch0[0] + epoch0[1])) == 8  # no repeats within an epoch; the tail of 2 is dropped
    assert next(global_batches(10, 4, seed=1, start=1)) == epoch0[1]
    single = list(MicroBatches(12, 4, 1, 0, 1, seed=0, start_step=0, steps=2))
    ranks = [list(MicroBatches(12, 2, 2, r, 1, seed=0, start_step=0, steps=2)) for r in range(2)]
    assert [ranks[0][i] + ranks[1][i] for i in range(2)] == single  # same global batches whatever the world size
    with pytest.raises(ValueError, match="fewer than one global batch"):
        next(global_batches(3, 4, seed=0))


def test_train_logs_checkpoints_and_is_deterministic(cached):
    root, work = cached
    a = train(make_config(root, work / "a"), progress=False)
    b = train(make_config(root, work / "b"), progress=False)
    log_a, log_b = losses_of(a.log_path), losses_of(b.log_path)
    assert [r["step"] for r in log_a] == [1, 2, 3, 4]
    keys = ("loss", "lm_loss", "ground_loss", "align_loss")
    assert all(torch.isfinite(torch.tensor([r[k] for k in keys])).all() for r in log_a)
    assert [[r[k] for k in keys] for r in log_a] == [[r[k] for k in keys] for r in log_b]
    assert (work / "a" / "checkpoints" / "step_000004" / "state.json").is_file()
    assert (work / "a" / "checkpoints" / "step_000002" / "state.json").is_file()
    assert (work / "a" / "config.yaml").is_file()
    assert a.steps == 4 and a.checkpoint.name == "step_000004"


def test_resume_after_interruption_reproduces_the_uninterrupted_run(cached, monkeypatch):
    root, work = cached
    full = losses_of(train(make_config(root, work / "full"), progress=False).log_path)
    real_save = train_module.save_checkpoint

    def save_then_die(*args):
        path, step = real_save(*args), args[-1]
        if step == 2:
            raise KeyboardInterrupt("simulated kill after the step-2 checkpoint")
        return path

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(make_config(root, work / "cut"), progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    train(make_config(root, work / "cut"), resume=True, progress=False)
    cut = losses_of(work / "cut" / "train_log.jsonl")
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    for r_full, r_cut in zip(full, cut):
        for key in ("loss", "lm_loss", "ground_loss", "align_loss"):
            assert r_cut[key] == pytest.approx(r_full[key], rel=1e-5, abs=1e-6), (r_full["step"], key)


def test_non_finite_loss_stops_and_names_the_last_good_checkpoint(cached, monkeypatch):
    root, work = cached
    real_forward = AlignTask.forward
    calls = {"n": 0}

    def forward(self, batch):
        calls["n"] += 1
        out = real_forward(self, batch)
        if calls["n"] == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(AlignTask, "forward", forward)
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 3.*step_000002"):
        train(make_config(root, work / "nan"), progress=False)
    assert (work / "nan" / "checkpoints" / "step_000002" / "state.json").is_file()


def test_missing_cache_scenes_and_grid_mismatch_fail_at_start(cached, tmp_path):
    root, work = cached
    cfg = make_config(root, tmp_path / "x", f"teacher.cache_dir={tmp_path}/cache")
    extract(cfg)
    for scene_id in (root / "metadata" / "scannetv2_train.txt").read_text().split()[:2]:
        (tmp_path / "cache" / f"{scene_id}.safetensors").unlink()
    adapter = build_adapter(cfg.model)
    with pytest.raises(SceneDataError, match=r"lacks 2 scene\(s\) of the samples: scene"):
        build_training_data(cfg, adapter)
    with pytest.raises(SceneDataError, match=r"teacher.grid \[2, 2\] does not match the student's token grid \[3, 4\]"):
        build_training_data(make_config(root, tmp_path / "y", "teacher.grid=[2,2]"), adapter)


def _task_and_batch(cfg, loss="l2norm"):
    from threedrs.data.batch import collate

    adapter = build_adapter(cfg.model)
    data = build_training_data(cfg, adapter)
    task = AlignTask(adapter, data.teacher_channels, loss=loss)
    order = sorted(range(len(data.dataset)), key=lambda i: data.dataset.samples[i].task)
    picks = [order[0], order[len(order) // 2], order[-1]]  # a grounding, a captioning/QA and an SQA3D sample
    return task, collate([data.dataset[i] for i in picks])


def test_gradients_reach_llm_and_heads_but_never_the_teacher(cached):
    root, work = cached
    task, batch = _task_and_batch(make_config(root, work / "g"))
    batch.teacher.requires_grad_(False)
    losses = task(batch)
    assert set(losses) == {"loss", "lm_loss", "ground_loss", "align_loss"}
    losses["loss"].backward()
    llm = task.adapter.parts()["llm"]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in llm)
    assert all(p.grad is not None for p in task.heads.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.grounding.parameters())
    assert batch.teacher.grad is None


def test_alignment_loss_decreases_when_training_on_a_fixed_batch(cached):
    root, work = cached
    torch.manual_seed(0)
    task, batch = _task_and_batch(make_config(root, work / "fit"))
    opt = torch.optim.Adam([p for p in task.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(25):
        losses = task(batch)
        first = first if first is not None else float(losses["align_loss"].detach())
        opt.zero_grad()
        losses["align_loss"].backward()
        opt.step()
    assert float(task(batch)["align_loss"].detach()) < 0.5 * first


def _torchrun(script, procs, *args):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", f"--master_port={port}",
           "--master_addr=127.0.0.1", str(script), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(cached, tmp_path):
    from pathlib import Path

    root, work = cached
    script = Path(__file__).parent / "ddp_train.py"
    runs = {}
    for name, procs, batch in (("one", 1, 2), ("two", 2, 1)):
        done = _torchrun(script, procs, root, tmp_path / name, batch, work / "cache")
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = losses_of(tmp_path / name / "train_log.jsonl")
    assert [r["step"] for r in runs["two"]] == [1, 2, 3]
    for one, two in zip(runs["one"], runs["two"]):
        for key in ("loss", "align_loss"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), (one["step"], key)
    # a 2-process run stopped after its step-2 checkpoint, resumed with 2 processes: the same 3 steps
    stopped = tmp_path / "stopped"
    done = _torchrun(script, 2, root, stopped, 1, work / "cache", "stop")
    assert done.returncode != 0 and [r["step"] for r in losses_of(stopped / "train_log.jsonl")] == [1, 2]
    assert sorted(p.name for p in (stopped / "checkpoints" / "step_000002").glob("rng_*")) == \
        ["rng_0.safetensors", "rng_1.safetensors"]
    done = _torchrun(script, 2, root, stopped, 1, work / "cache", "resume")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = losses_of(stopped / "train_log.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3]
    for two, again in zip(runs["two"], resumed):
        for key in ("loss", "align_loss"):
            assert again[key] == pytest.approx(two[key], rel=1e-5, abs=1e-6), (two["step"], key)
