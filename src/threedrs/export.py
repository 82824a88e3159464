"""`threedrs export RUN OUT [--step N] [--dtype D]`: a trained run back to a folder plain transformers loads.

OUT gets what the base checkpoint's folder holds, with the trained weights:
- the model (`config.json`, safetensors) loadable with the family class or
  `AutoModelForImageTextToText.from_pretrained(OUT)`, LoRA merged into the base weights;
- the tokenizer with the added `<ground>` / `<coord>` tokens (at the ids the model was trained with), and the chat
  template the run used (the base folder's, re-saved; `chat_template.jinja` with the family default for tiny models);
- the image processor: the base folder's processor files copied as they are (`preprocessor_config.json`, ...), or
  for the tiny random models the adapter's image processor saved;
- threedrs's own heads beside it (align/saved_heads.py): `threedrs_heads.safetensors` + `threedrs_heads.json`.
`threedrs eval RUN/config.yaml model.path=OUT` then gives the predictions of evaluating the training checkpoint in
the same dtype. Weights are written in `--dtype` (auto = the base checkpoint's own dtype, as released; float32 keeps
the float32 master weights exactly; the tiny models are float32). The merge runs in float32 on the CPU. OUT is
written under a temporary name and renamed into place; an existing OUT is refused.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from threedrs.align.saved_heads import export_meta, write_heads
from threedrs.checkpoint import model_sha256, step_folders, verify_checkpoint
from threedrs.config import load_config
from threedrs.evaluate import load_task
from threedrs.models.loading import DTYPES, Placement, checkpoint_dtype

# processor-level files of a released folder that training does not change (the tokenizer's are re-saved)
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
                   "chat_template.json")
TEMPLATE_FILES = ("processor_config.json", "chat_template.json", "chat_template.jinja")  # models/prompt.py's order


@dataclass
class ExportResult:
    """Where the export went, from which checkpoint, in which dtype, and how many LoRA layers were merged."""

    out: Path
    checkpoint: Path
    dtype: torch.dtype
    lora_layers: int


def run_checkpoint(run: Path, step: int | None) -> tuple[Path, dict, str]:
    """RUN/checkpoints/step_N (newest when `step` is None), its state.json and its model's sha256, checked before
    anything loads: the folder against state.json (`threedrs.checkpoint.verify_checkpoint`: files and sizes) and
    model.safetensors, the one file export reads, against its recorded sha256 (`model_sha256`: hashed once, the
    optimizer state is not hashed). One-line errors for a run without checkpoints, a missing step, a sharded
    checkpoint and a damaged model file."""
    done = step_folders(run)
    if not done:
        raise FileNotFoundError(f"{run}: no checkpoint under {run / 'checkpoints'} (train first; checkpoints are "
                                "written every train.save_every steps and at the end)")
    checkpoint = done[-1] if step is None else run / "checkpoints" / f"step_{step:06d}"
    if checkpoint not in done:
        steps = ", ".join(str(int(p.name.removeprefix("step_"))) for p in done)
        raise FileNotFoundError(f"--step {step}: no checkpoint {checkpoint}; this run has steps {steps}")
    state = verify_checkpoint(checkpoint, hash_files=False)
    if state.get("sharded") or not (checkpoint / "model.safetensors").is_file():
        raise FileNotFoundError(f"{checkpoint}: no model.safetensors (a sharded FSDP or DeepSpeed checkpoint); "
                                "consolidate it first (accelerate merge-weights, or DeepSpeed's zero_to_fp32.py)")
    return checkpoint, state, model_sha256(checkpoint)


def merge_lora(model: nn.Module) -> int:
    """Merge every PEFT LoRA layer of `model` into its base layer and put the base layer back in its place; returns
    the number of layers merged (0 for a model without LoRA)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and hasattr(module, "base_layer"):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
            merged += 1
    if hasattr(model, "peft_config"):
        del model.peft_config
    return merged


def export_run(run: str | Path, out: str | Path, step: int | None = None, dtype: str = "auto") -> ExportResult:
    """Export the newest (or `step`'s) checkpoint of training run folder `run` to `out` (see the module docstring)."""
    run, out = Path(run), Path(out)
    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run}: not a training run folder (no config.yaml)")
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"--dtype: {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose a new folder")
    checkpoint, state, sha = run_checkpoint(run, step)
    cfg = load_config(config_file)
    base = cfg.model.path
    target = DTYPES[dtype] if dtype != "auto" else (checkpoint_dtype(base) if base else torch.float32)
    task = load_task(cfg, checkpoint, Placement(torch.float32, "cpu", "sdpa"))
    lora_layers = merge_lora(task.adapter.model) if cfg.model.lora_rank > 0 else 0
    task.to(target)
    meta = export_meta(cfg, task) | {
        "lora_merged": lora_layers > 0, "dtype": str(target).removeprefix("torch."),
        "source": {"run": str(run), "checkpoint": checkpoint.name, "step": state["step"],
                   "sha256": sha, "base_model": base}}
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    adapter = task.adapter
    adapter.model.save_pretrained(tmp)
    copied = [name for name in PROCESSOR_FILES if base and (Path(base) / name).is_file()]
    for name in copied:
        shutil.copy2(Path(base) / name, tmp / name)
    if not copied:
        adapter.image_processor.save_pretrained(tmp)
    adapter.tokenizer.save_pretrained(tmp)
    if not any((tmp / name).is_file() for name in TEMPLATE_FILES):  # a tiny model: its family default is in use
        (tmp / "chat_template.jinja").write_text(adapter.prompt.template.text)
    write_heads(task, tmp, meta)
    tmp.rename(out)
    return ExportResult(out, checkpoint, target, lora_layers)


def main_export(args: argparse.Namespace) -> None:
    """`threedrs export RUN OUT [--step N] [--dtype D]` (fields: run, out, step, dtype)."""
    result = export_run(args.run, args.out, step=args.step, dtype=args.dtype)
    merged = f", {result.lora_layers} LoRA layers merged" if result.lora_layers else ""
    print(f"exported {result.checkpoint} to {result.out} ({str(result.dtype).removeprefix('torch.')}{merged}); "
          f"evaluate with: threedrs eval {Path(args.run) / 'config.yaml'} model.path={result.out}")
