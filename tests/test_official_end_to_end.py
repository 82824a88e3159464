"""A checkpoint in the authors' layout, converted, then run the way their code runs it: eval of the five benchmarks
on SynthRooms with configs/official_3drs.yaml, the 3D-awareness probe, and training started from the folder with its
heads; the Video-3D LLM points the data carry, recomputed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from official_checkpoints import write_official_checkpoint
from safetensors.torch import load_file

from threedrs.cli import main
from threedrs.config import ConfigError, load_config
from threedrs.convert_official import convert_official

BENCHMARKS = ("scanrefer", "multi3drefer", "scan2cap", "scanqa", "sqa3d")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    work = tmp_path_factory.mktemp("official_e2e")
    return work, convert_official(write_official_checkpoint(work / "src"), work / "out").out


def official(root, work, out, *extra):
    return load_config("configs/official_3drs.yaml", [
        f"data.root={root}", "data.frames=2", "data.frame_source=all", f"model.path={out}", "model.dtype=float32",
        f"output_dir={work}/run", "eval.limit=2", "eval.max_new_tokens=4", "eval.meteor=false", *extra])


def test_eval_of_the_converted_folder_on_synthrooms(converted, synthrooms_tiny, capsys):
    work, out = converted
    args = ["eval", "configs/official_3drs.yaml", f"data.root={synthrooms_tiny}", "data.frames=2",
            "data.frame_source=all", f"model.path={out}", "model.dtype=float32", f"output_dir={work}/run",
            "eval.limit=2", "eval.max_new_tokens=4", "eval.meteor=false"]
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"converted from the authors' 3DRS checkpoint {work / 'src'}" in printed
    for bench in BENCHMARKS:
        path = work / "run" / "eval" / "predictions" / f"{bench}.jsonl"
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        assert len(lines) == 2
        if bench in ("scanrefer", "multi3drefer"):
            assert all(np.isfinite(r["scores"]).all() and len(set(r["scores"])) > 1 for r in lines)
    metrics = json.loads((work / "run" / "eval" / "metrics.json").read_text())
    assert set(metrics["benchmarks"]) == set(BENCHMARKS)


def test_eval_refuses_settings_other_than_theirs_before_loading(converted, synthrooms_tiny, monkeypatch):
    from threedrs.evaluate import load_task
    from threedrs.models import registry

    monkeypatch.setattr(registry, "_build", lambda *a: pytest.fail("the model was loaded"))
    work, out = converted
    with pytest.raises(ConfigError, match=r"^data\.prompts: .* converted from the authors' checkpoint with "
                                          r"data\.prompts=video3dllm, the config says threedrs; .*official_3drs"):
        load_task(official(synthrooms_tiny, work, out, "data.prompts=threedrs"), None)
    with pytest.raises(ConfigError, match=r"^align\.object_features: "):
        load_task(official(synthrooms_tiny, work, out, "align.object_features=point_in_box"), None)


def test_probe_of_the_converted_folder(converted, synthrooms_tiny):
    from threedrs.probe import probe_model

    work, out = converted
    result = probe_model(official(synthrooms_tiny, work, out, "probe.layers=[0,-1]"), progress=False)
    assert result.grid == (14, 14) and result.summary[-1].pairs > 0
    assert all(np.isfinite(s.scores[-1]) for s in result.scenes)


def test_training_starts_from_the_folder_and_its_heads(converted, synthrooms_tiny):
    from threedrs.extract import extract
    from threedrs.train import train

    work, out = converted
    cfg = official(synthrooms_tiny, work, out, "model.dtype=auto", f"output_dir={work}/train",
                   "teacher.name=geometry", "teacher.checkpoint=null", "teacher.channels=2048",
                   f"teacher.cache_dir={work}/cache", "teacher.batch_frames=2", "train.tasks=[scanrefer,scanqa]",
                   "train.steps=2", "train.batch_size=2", 'train.mixed_precision="no"', "train.save_every=2",
                   "train.lr_heads=0", "train.log_every=1")
    extract(cfg)
    result = train(cfg, progress=False)
    log = [json.loads(x) for x in result.log_path.read_text().splitlines()]
    assert any(r["ground_loss"] > 0 for r in log) and all(np.isfinite(r["loss"]) for r in log)
    trained = load_file(str(result.checkpoint / "model.safetensors"))
    saved = load_file(str(out / "threedrs_heads.safetensors"))
    for name, tensor in saved.items():  # lr_heads=0: the heads are still the converted ones
        assert torch.equal(trained[name], tensor.float()), name
    # the LLM did train, from the converted weights
    from transformers import LlavaOnevisionForConditionalGeneration

    base = LlavaOnevisionForConditionalGeneration.from_pretrained(out, local_files_only=True).state_dict()
    name = "model.language_model.layers.0.mlp.up_proj.weight"
    moved = (trained[f"adapter.model.{name}"] - base[name].float()).abs().max()
    assert 0 < moved < 1e-3
    # eval of this run evaluates its checkpoint (the trained LLM), not the converted folder
    from threedrs.evaluate import load_task, resolve_checkpoint

    assert resolve_checkpoint(cfg) == result.checkpoint
    evaluated = load_task(cfg, result.checkpoint).state_dict()[f"adapter.model.{name}"]
    assert torch.equal(evaluated, trained[f"adapter.model.{name}"])


def test_the_data_carry_their_points(converted, synthrooms_tiny):
    """posenc_points / pixel_points of a dataset item against their pipeline written out in numpy: unproject every
    depth pixel (no masking), nearest-resize to 384 with floor(x * W / 384), average 27 x 27 blocks."""
    from threedrs.data.dataset import Candidates, SceneSampleDataset
    from threedrs.data.scene import Scene
    from threedrs.data.tasks import load_benchmark
    from threedrs.pixel_blocks import PixelGrid
    from threedrs.teachers.cache import frame_lists_for

    work, out = converted
    cfg = official(synthrooms_tiny, work, out)
    sample = load_benchmark(synthrooms_tiny, "scanqa", "val")[0]
    frames = frame_lists_for(cfg)
    grid = PixelGrid(384, 14, 14)
    whole_frame = lambda h, w: torch.tensor([0, 0, w, h]).expand(14, 14, 4)  # noqa: E731 (footprints: unused here)
    dataset = SceneSampleDataset([sample], synthrooms_tiny, frames, whole_frame,
                                 {sample.scene_id: Candidates(torch.zeros(0, 6), None)}, {}, pixel_grid=grid,
                                 keep_pixels=True)
    item = dataset[0]
    batch = Scene(synthrooms_tiny, sample.scene_id).load_frames(frames(sample.scene_id))
    depth, K, pose = batch.depth[0].numpy(), batch.depth_K.numpy(), batch.poses[0].numpy()
    hd, wd = depth.shape
    world = np.zeros((384, 384, 3))
    for y in range(384):
        for x in range(384):
            v, u = y * hd // 384, x * wd // 384
            z = depth[v, u]
            cam = np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z, 1.0])
            world[y, x] = (pose @ cam)[:3]
    blocks = world[:378, :378].reshape(14, 27, 14, 27, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(item["posenc_points"][0].numpy(), blocks, atol=1e-4)
    np.testing.assert_allclose(item["pixel_points"][0].numpy(), world[:378, :378], atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_their_float16_eval_on_a_gpu_matches_float32(converted, synthrooms_tiny, tmp_path):
    from threedrs.evaluate import evaluate

    work, out = converted
    runs = {}
    for dtype in ("float16", "float32"):
        cfg = official(synthrooms_tiny, work, out, f"model.dtype={dtype}", "eval.benchmarks=[scanrefer,multi3drefer]")
        runs[dtype] = evaluate(cfg, run_dir=tmp_path / dtype, progress=False).run_dir
    for bench in ("scanrefer", "multi3drefer"):
        half, full = ([json.loads(x) for x in (runs[d] / "predictions" / f"{bench}.jsonl").read_text().splitlines()]
                      for d in ("float16", "float32"))
        for a, b in zip(half, full):
            assert np.isfinite(a["scores"]).all()
            np.testing.assert_allclose(a["scores"], b["scores"], atol=2e-2)
