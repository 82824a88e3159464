"""`probe_model` / `threedrs probe probe.target=model` on the tiny SynthRooms set with the tiny Qwen2-VL.

The fixture's rooms have 6 frames, one with an invalid pose, so `data.frames=6` repeats a frame of each room (the
uniform rule over 5 valid frames). With 3x4 tokens per 64x48 frame each token averages a large footprint; at the
paper's 0.1 m voxel almost no two tokens of distinct views share a voxel (0 pairs in 5 of the 6 rooms), so these
tests score with 1 m voxels.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from threedrs.align.posenc import position_encoding
from threedrs.cli import main
from threedrs.config import ConfigError, load_config
from threedrs.evaluate import evaluate
from threedrs.data.scene import Scene, split_scene_ids
from threedrs.geometry import depth_to_world, token_world_points
from threedrs.models.registry import build_adapter
from threedrs.probe import probe_model
from threedrs.run_config import checkpoint_and_run, settings_from_run
from threedrs.train import train

VOXEL = 1.0


def settings(root, work, *extra):
    return [f"data.root={root}", "data.frames=6", "data.split=train", "model.image_size=[42,56]",
            f"teacher.cache_dir={work}/cache", f"output_dir={work}/run", "probe.target=model",
            "probe.layers=[-1,0]", f"correspondence.voxel={VOXEL}", *extra]


def make_config(root, work, *extra):
    return load_config(None, settings(root, work, *extra))


@pytest.fixture(scope="module")
def base(synthrooms_tiny, tmp_path_factory):
    """The untrained tiny model probed at layers -1 and 0 with the position encoding, on the train rooms."""
    work = tmp_path_factory.mktemp("probe_model")
    cfg = make_config(synthrooms_tiny, work)
    return cfg, work, probe_model(cfg, progress=False)


def brute_force_scores(cfg, scene_id, frame_ids):
    """Layer -> (mean cosine over every pair of valid tokens of two different views (frame ids; a repeated frame's
    tokens are dropped) in the same floor(p / voxel) voxel, the same over such pairs in DIFFERENT voxels), from an
    explicit [N, N] pair matrix (float64)."""
    adapter = build_adapter(cfg.model)
    batch = Scene(cfg.data.root, scene_id).load_frames(frame_ids)
    height, width = batch.images.shape[-2:]
    world, depth_valid = depth_to_world(batch.depth.double(), batch.depth_K, batch.poses)
    points, valid = token_world_points(world, depth_valid, adapter.footprints(height, width), (height, width))
    points = torch.nan_to_num(points).float()
    offsets = position_encoding(points, valid, adapter.hidden_size)[None]
    with torch.no_grad():
        hidden = adapter(batch.images[None], [cfg.probe.prompt], None, layers=(-1, 0), visual_offsets=offsets)
    keep = valid.clone()
    for s, frame_id in enumerate(frame_ids):
        if frame_id in frame_ids[:s]:
            keep[s] = False  # a repeated frame is the same view: each view is scored once
    frame_of_token = torch.arange(len(frame_ids))[:, None, None].expand(valid.shape)[keep]
    cell = torch.floor(points[keep].double() / VOXEL)
    views = frame_of_token[:, None] != frame_of_token[None]
    pair = (cell[:, None] == cell[None]).all(-1) & views
    apart = ~(cell[:, None] == cell[None]).all(-1) & views
    out = {}
    for layer in (-1, 0):
        f = hidden.visual.hidden[layer][0][keep].double()
        f = f / f.norm(dim=-1, keepdim=True)
        cos = f @ f.T
        out[layer] = (float(cos[pair].mean()) if pair.any() else math.nan, float(cos[apart].mean()))
    return out


def test_per_layer_scores_equal_a_brute_force_pair_mean(base, synthrooms_tiny):
    cfg, work, result = base
    ids = split_scene_ids(synthrooms_tiny, "train")
    lists = json.loads((work / "cache" / "frame_lists.json").read_text())["scenes"]
    assert result.layers == [-1, 0] and [s.scene_id for s in result.scenes] == ids and result.grid == (3, 4)
    assert [s.repeated_frames for s in result.scenes] == [len(lists[i]) - len(set(lists[i])) for i in ids]
    assert all(s.repeated_frames >= 1 for s in result.scenes)  # the exclusion of repeats is exercised
    assert sum(s.pairs > 0 for s in result.scenes) >= len(ids) - 1
    for s in result.scenes:
        assert set(s.scores) == {-1, 0}
        assert all(math.isfinite(v) == (s.pairs > 0) for v in s.scores.values())
        expected = brute_force_scores(cfg, s.scene_id, lists[s.scene_id])
        for layer in (-1, 0):
            if s.pairs:
                assert s.scores[layer] == pytest.approx(expected[layer][0], rel=1e-6, abs=1e-9)
                assert s.backgrounds[layer] == pytest.approx(expected[layer][1], rel=1e-6, abs=1e-9)
                assert s.contrasts[layer] == pytest.approx(expected[layer][0] - expected[layer][1], abs=1e-8)
            else:
                assert math.isnan(expected[layer][0])
    for layer in (-1, 0):
        finite = [s.scores[layer] for s in result.scenes if s.pairs]
        assert result.summary[layer].sample_mean == pytest.approx(sum(finite) / len(finite))
    saved = json.loads((work / "run" / "probe_model_qwen2_vl.json").read_text())
    assert (saved["variant"], saved["same_frame"], saved["voxel"], saved["posenc"]) == ("pairs", False, VOXEL, True)
    assert saved["scenes"][0]["scores"]["0"] == pytest.approx(result.scenes[0].scores[0])
    assert saved["summary"]["-1"]["sample_mean"] == pytest.approx(result.summary[-1].sample_mean)
    assert saved["scenes"][0]["backgrounds"]["-1"] == pytest.approx(result.scenes[0].backgrounds[-1])
    assert ("| scene | L-1 score | L-1 background | L-1 contrast | L0 score | L0 background | L0 contrast | pairs |"
            in result.table())


def test_prompt_after_the_frames_leaves_the_visual_states_alone(base):
    cfg, _, result = base
    other = dataclasses.replace(cfg, probe=dataclasses.replace(cfg.probe, prompt="Where is the chair? " * 5))
    again = probe_model(other, scenes=[result.scenes[0].scene_id], progress=False)
    for layer in (-1, 0):
        assert again.scenes[0].scores[layer] == pytest.approx(result.scenes[0].scores[layer], abs=1e-6)


def test_position_encoding_raises_the_input_layer_score_through_the_location(base, monkeypatch):
    """Layer 0 (the LLM input) with the encoding beats the same tokens without it AND with the same encodings
    shuffled among the tokens: adding any encoding also adds a component shared by all tokens (the slow channels),
    so only the shuffled control shows that the gain comes from encoding each token's voxel."""
    cfg, _, with_pe = base

    def layer0(posenc):
        run = dataclasses.replace(cfg, probe=dataclasses.replace(cfg.probe, layers=[0], posenc=posenc))
        return probe_model(run, progress=False)

    without = layer0(False)

    def shuffled(points, valid, channels):
        enc = position_encoding(points, valid, channels)
        order = torch.randperm(int(valid.sum()), generator=torch.Generator().manual_seed(0))
        enc[valid] = enc[valid][order]
        return enc

    monkeypatch.setattr("threedrs.probe.position_encoding", shuffled)
    control = layer0(True)
    assert with_pe.summary[0].sample_mean > without.summary[0].sample_mean + 0.1
    assert with_pe.summary[0].sample_mean > control.summary[0].sample_mean + 0.1
    for pe, ctrl in zip(with_pe.scenes, control.scenes):
        if pe.pairs:
            assert pe.scores[0] > ctrl.scores[0]


def test_checkpoint_weights_are_the_ones_probed(base, synthrooms_tiny, tmp_path):
    untrained = base[2]
    scores = {}
    for name, lr in (("trained", 1e-3), ("unchanged", 0.0)):
        run = make_config(synthrooms_tiny, tmp_path / name, "align.loss=none", "train.steps=2", "train.save_every=2",
                          f"train.lr_llm={lr}", f"train.lr_vision={lr}", f"train.lr_projector={lr}")
        checkpoint = train(run, progress=False).checkpoint
        probed = probe_model(make_config(synthrooms_tiny, tmp_path / name, f"probe.checkpoint={checkpoint}"),
                             progress=False)
        assert str(checkpoint) in probed.description and probed.checkpoint == str(checkpoint)
        scores[name] = [s.scores[k] for s in probed.scenes if s.pairs for k in (-1, 0)]
    before = [s.scores[k] for s in untrained.scenes if s.pairs for k in (-1, 0)]
    # learning rate 0 for the MLLM (only the heads moved): the same visual states as without a checkpoint
    assert scores["unchanged"] == pytest.approx(before, abs=1e-6)
    change = max(abs(a - b) for a, b in zip(scores["trained"], before))
    assert change > 1e-4


def test_checkpoint_probe_takes_the_runs_settings_and_equals_its_eval_probe(synthrooms_tiny, tmp_path, capsys):
    """A run trained WITHOUT the 3D position encoding, probed through the CLI with a config that does not mention
    the encoding (probe.posenc defaults to true): the probe takes align.posenc=false, the frames, the image size
    and the layers from <run>/config.yaml and reproduces the score, background and contrast that the run's own
    `eval --probe` recorded for the same scenes. An explicit probe.posenc=true wins, is printed, and differs."""
    run_dir = tmp_path / "run"
    training = load_config(None, [
        f"data.root={synthrooms_tiny}", "data.frames=6", "model.image_size=[42,56]", f"output_dir={run_dir}",
        f"teacher.cache_dir={tmp_path}/cache", "align.posenc=false", "align.loss=none", "train.steps=2",
        "train.save_every=2", "train.lr_llm=1e-3", "train.lr_vision=1e-3", "train.lr_projector=1e-3",
        "eval.probe=true", "eval.benchmarks=[scanqa]", "eval.limit=8", "eval.meteor=false", "eval.max_new_tokens=2",
        f"correspondence.voxel={VOXEL}"])
    train(training, progress=False)
    lines = (evaluate(training, progress=False).run_dir / "predictions" / "scanqa.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    scenes = sorted({r["scene_id"] for r in records})
    config = tmp_path / "probe.yaml"
    config.write_text("name: probe-a-run\n")
    args = [f"data.root={synthrooms_tiny}", "data.split=val", "probe.target=model", f"probe.checkpoint={run_dir}",
            f"correspondence.voxel={VOXEL}", "--scenes", ",".join(scenes)]
    assert main(["probe", str(config), f"output_dir={tmp_path}/as_trained", *args]) == 0
    out = capsys.readouterr().out
    assert f"settings that shaped the run's tokens come from {run_dir / 'config.yaml'}" in out
    for taken in ("probe.posenc=False (from align.posenc)", "data.frames=6", "model.image_size=[42, 56]"):
        assert taken in out
    saved = json.loads((tmp_path / "as_trained" / "probe_model_qwen2_vl.json").read_text())
    assert saved["posenc"] is False and saved["layers"] == [-1] and saved["frames"] == 6
    by_scene = {s["scene_id"]: s for s in saved["scenes"]}
    compared = 0
    for record in records:
        probed = by_scene[record["scene_id"]]
        for key, field in (("correspondence", "scores"), ("background", "backgrounds"), ("contrast", "contrasts")):
            assert (record[key]["-1"] is None) == (probed[field]["-1"] is None)
            if record[key]["-1"] is not None:
                assert probed[field]["-1"] == pytest.approx(record[key]["-1"], abs=1e-5)
                compared += 1
    assert compared >= 6

    assert main(["probe", str(config), f"output_dir={tmp_path}/with_posenc", "probe.posenc=true", *args]) == 0
    assert "explicit override kept: probe.posenc=True (the run has align.posenc=False)" in capsys.readouterr().out
    other = json.loads((tmp_path / "with_posenc" / "probe_model_qwen2_vl.json").read_text())
    assert other["posenc"] is True
    assert any(abs(a["scores"]["-1"] - by_scene[a["scene_id"]]["scores"]["-1"]) > 1e-3
               for a in other["scenes"] if a["scores"]["-1"] is not None)


def test_checkpoint_paths_and_a_run_without_its_config(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="probe.checkpoint: .*run is not a training checkpoint"):
        checkpoint_and_run(run)
    step = run / "checkpoints" / "step_000002"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"")
    (step / "state.json").write_text('{"step": 2}')
    assert checkpoint_and_run(run) == (step, run) == checkpoint_and_run(step)
    cfg = load_config(None, ["data.frames=3"])
    same, lines = settings_from_run(cfg, run, set())
    assert same == cfg and "config.yaml not found" in lines[0]


def test_cli_probes_the_model_and_writes_the_json(base, synthrooms_tiny, tmp_path, capsys):
    _, _, result = base
    config = tmp_path / "probe.yaml"
    config.write_text("name: probe-cli\nprobe:\n  layers: [0]\n")
    scene = result.scenes[0].scene_id
    args = settings(synthrooms_tiny, tmp_path, "probe.layers=[0]")
    assert main(["probe", str(config), *args, "--scenes", scene]) == 0
    out = capsys.readouterr().out
    assert f"| {scene} |" in out and "probe_model_qwen2_vl.json" in out
    saved = json.loads((tmp_path / "run" / "probe_model_qwen2_vl.json").read_text())
    assert saved["layers"] == [0] and [s["scene_id"] for s in saved["scenes"]] == [scene]
    assert saved["scenes"][0]["scores"]["0"] == pytest.approx(result.scenes[0].scores[0], abs=1e-9)


def test_bad_target_layers_and_checkpoint_are_refused(synthrooms_tiny, tmp_path, capsys):
    with pytest.raises(ConfigError, match="probe.target: 'student' is not one of 'teacher', 'model'"):
        make_config(synthrooms_tiny, tmp_path, "probe.target=student")
    config = tmp_path / "c.yaml"
    config.write_text("probe:\n  target: student\n")
    assert main(["probe", str(config)]) == 1
    assert "probe.target: 'student' is not one of" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="probe.layers: list each layer once"):
        make_config(synthrooms_tiny, tmp_path, "probe.layers=[-1,-1]")
    with pytest.raises(ConfigError, match="probe.layers: name at least one layer"):
        make_config(synthrooms_tiny, tmp_path, "probe.layers=[]")
    # the tiny LLM has 2 decoder layers: hidden states -3..2
    for bad in (3, -4):
        with pytest.raises(ConfigError, match=rf"probe.layers: \[{bad}\] out of range for qwen2_vl's 3 hidden "
                                              r"states \(indices -3..2"):
            probe_model(make_config(synthrooms_tiny, tmp_path, f"probe.layers=[2,{bad}]"), progress=False)
    with pytest.raises(FileNotFoundError, match="probe.checkpoint: .*nowhere is not a training checkpoint"):
        probe_model(make_config(synthrooms_tiny, tmp_path, f"probe.checkpoint={tmp_path / 'nowhere'}"),
                    progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_probe_on_gpu_matches_cpu(base, monkeypatch):
    cfg, _, cpu = base  # computed on the GPU when one is present: compare with a CPU run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    other = probe_model(cfg, progress=False)
    for a, b in zip(cpu.scenes, other.scenes):
        for layer in (-1, 0):
            assert a.scores[layer] == pytest.approx(b.scores[layer], abs=2e-3, nan_ok=True)
