"""End to end on folders shaped like each family's RELEASED checkpoint (release_checkpoints.py: released config,
bfloat16 weights, float16 for the llava-hf OneVision conversion, real token ids and vocabularies, 2 layers, small
widths): extract -> train 2 steps with the paper recipes' precision (train.mixed_precision=bf16: float32 master weights,
bf16 autocast) -> evaluate all five benchmarks on 2 samples each -> probe the trained checkpoint -> export -> reload.

Evaluation runs in the checkpoint's own dtype (what `model.dtype=auto` picks on a GPU), so the bf16/fp16 grounding
path that used to fail is exercised on the CPU; the export in that dtype must give exactly the training
checkpoint's predictions. Qwen2-VL trains with LoRA and gradient checkpointing instead and is compared in float32
(a merged LoRA differs from the unmerged one by float rounding only); Qwen2.5-VL runs at its processor's native
frame size and LLaVA-OneVision with a newline after each row (the 3DRS layout).
"""

from __future__ import annotations

import json

import pytest
import torch
from release_checkpoints import FAMILIES

from threedrs.config import load_config
from threedrs.evaluate import evaluate
from threedrs.export import export_run
from threedrs.extract import extract
from threedrs.models.loading import checkpoint_dtype
from threedrs.models.registry import build_adapter
from threedrs.probe import probe_model
from threedrs.train import train

BENCHMARKS = ("scanrefer", "multi3drefer", "scan2cap", "scanqa", "sqa3d")
LORA_FAMILY = "qwen2_vl"  # trained with LoRA and gradient checkpointing
# the settings that change the visual tokens, each used by one family (and carried through the export)
FAMILY_OPTIONS = {"qwen2_5_vl": ["model.image_size=native"], "llava_onevision": ["model.newline=grid"]}


def make_config(root, work, family, folder, grid, *extra):
    return load_config(None, [
        f"data.root={root}", "data.frames=2", f"output_dir={work}/run", f"teacher.cache_dir={work}/cache",
        f"teacher.grid=[{grid[0]},{grid[1]}]", "teacher.channels=16", "teacher.batch_frames=2",
        f"model.family={family}", f"model.path={folder}", "train.steps=2", "train.batch_size=2", "train.save_every=2",
        "train.log_every=1", "train.mixed_precision=bf16", "train.lr_llm=1e-4", "train.lr_heads=1e-3",
        "eval.limit=2", "eval.batch_size=2", "eval.max_new_tokens=3", "eval.meteor=false", "eval.probe=true",
        "probe.target=model", "probe.layers=[0,-1]", "correspondence.voxel=1.0", *extra])


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state that refuses a second `Accelerator` with another mixed precision;
    these tests train with bf16 while the rest of the suite trains with "no", so each starts and ends afresh."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def predictions(run_dir, bench):
    return [json.loads(line) for line in (run_dir / "predictions" / f"{bench}.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_release_checkpoint_extract_train_eval_probe_export_reload(family, release_checkpoint, synthrooms_tiny,
                                                                   tmp_path, capsys):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    folder = release_checkpoint(family)
    released = checkpoint_dtype(folder)
    assert released == (torch.float16 if family == "llava_onevision" else torch.bfloat16)
    lora = family == LORA_FAMILY
    options = ["model.lora_rank=4", "model.lora_alpha=8", "model.gradient_checkpointing=true"] if lora else []
    options += FAMILY_OPTIONS.get(family, [])
    model = load_config(None, [f"model.family={family}", f"model.path={folder}", *options]).model
    grid = build_adapter(model).token_grid(48, 64)
    setting = (synthrooms_tiny, tmp_path, family, folder, grid, *options)
    eval_dtype = f"model.dtype={'float32' if lora else str(released).removeprefix('torch.')}"
    cfg = make_config(*setting, eval_dtype)

    extract(cfg)
    result = train(make_config(*setting), progress=False)  # model.dtype=auto
    printed = capsys.readouterr().out
    assert "precision: float32 master weights (model.dtype=auto), compute in bfloat16 autocast" in printed
    log = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["align_loss"]])).all() for r in log)

    evaluate(cfg, run_dir=tmp_path / "eval", progress=False)
    for bench in BENCHMARKS:
        records = predictions(tmp_path / "eval", bench)
        assert len(records) == 2, bench
        if bench in ("scanrefer", "multi3drefer"):
            assert all(torch.isfinite(torch.tensor(r["scores"])).all() for r in records)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["benchmarks"]) == set(BENCHMARKS)

    probed = probe_model(make_config(*setting, eval_dtype, f"probe.checkpoint={result.checkpoint}"), progress=False)
    assert probed.layers == [0, -1] and probed.grid == tuple(grid)
    assert all(-1.0 <= s.scores[-1] <= 1.0 for s in probed.scenes if s.pairs)

    out = export_run(tmp_path / "run", tmp_path / "export", dtype="float32" if lora else "auto")
    assert out.dtype == (torch.float32 if lora else released) and (out.lora_layers > 0) == lora
    for name in ("chat_template.json", "preprocessor_config.json"):  # the processor's files, as released
        assert (out.out / name).is_file() == (folder / name).is_file(), name
        if (folder / name).is_file():
            assert (out.out / name).read_text() == (folder / name).read_text(), name
    tokenizers = [AutoTokenizer.from_pretrained(f, local_files_only=True) for f in (folder, out.out)]
    assert tokenizers[0].chat_template == tokenizers[1].chat_template  # re-saved the transformers-5 way
    assert tokenizers[1].convert_tokens_to_ids(["<ground>", "<coord>"]) == [len(tokenizers[0]), len(tokenizers[0]) + 1]
    reloaded = AutoModelForImageTextToText.from_pretrained(out.out, local_files_only=True, dtype="auto")
    assert reloaded.config.model_type == family and reloaded.dtype == out.dtype
    evaluate(make_config(*setting, eval_dtype, f"model.path={out.out}"), run_dir=tmp_path / "eval_export",
             progress=False)
    for bench in BENCHMARKS:
        for x, y in zip(predictions(tmp_path / "eval", bench), predictions(tmp_path / "eval_export", bench),
                        strict=True):
            if "scores" not in x:
                assert x["prediction"] == y["prediction"], bench
            elif lora:
                torch.testing.assert_close(torch.tensor(x["scores"]), torch.tensor(y["scores"]), atol=1e-4, rtol=0)
            else:
                assert x["scores"] == y["scores"] and x.get("pred_box") == y.get("pred_box"), bench



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_training_streams_to_it_and_eval_runs_in_the_released_dtype(release_checkpoint, synthrooms_tiny,
                                                                              tmp_path, capsys):
    from threedrs.models.loading import compute_device, inference_placement

    family = "qwen2_vl"
    folder = release_checkpoint(family)
    grid = build_adapter(load_config(None, [f"model.family={family}", f"model.path={folder}"]).model).token_grid(48, 64)
    cfg = make_config(synthrooms_tiny, tmp_path, family, folder, grid)  # model.dtype=auto
    extract(cfg)
    train(cfg, progress=False)
    assert "float32 weights streamed to cuda" in capsys.readouterr().out
    assert inference_placement(cfg.model, compute_device()).dtype == torch.bfloat16
    evaluate(cfg, run_dir=tmp_path / "eval", progress=False)
    for bench in ("scanrefer", "multi3drefer"):
        assert all(torch.isfinite(torch.tensor(r["scores"])).all() for r in predictions(tmp_path / "eval", bench))
