"""`threedrs train`: fine-tune an MLLM with the 3DRS alignment loss through accelerate.

The loop only does backward, step, log and checkpoint: every loss lives in `AlignTask`. It runs unchanged on CPU,
one GPU, DDP, FSDP and DeepSpeed ZeRO-2/3 (launch with `accelerate launch --config_file configs/accelerate/...`).

- Data order is a seeded permutation per epoch cut into global batches; rank r takes its slice of every global
  batch, so the order does not depend on the number of processes and a resumed run reads exactly the samples the
  uninterrupted run would have read.
- Checkpoints (`output_dir/checkpoints/step_NNNNNN`) hold the model, optimizer, scheduler and RNG states plus the
  step as safetensors and JSON only (`threedrs.checkpoint`); they are written to a temporary folder, flushed to
  disk and renamed into place. Resuming checks them first and falls back past a damaged one with a warning.
- The run folder is locked for the whole run and carries a provenance record: a folder holding another run is
  refused unless --resume (same config, data and teacher cache) or --overwrite (`threedrs.run_folder`).
- A non-finite loss stops the run and names the last good checkpoint, which is kept.
- Precision (models/loading.py): float32 master weights whatever the checkpoint's dtype, compute in
  train.mixed_precision through autocast; the first printed line says so. Each rank loads the checkpoint where its
  launcher needs it (straight onto its GPU, or on meta on the ranks FSDP's cpu-ram-efficient loading fills).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from threedrs.align.saved_heads import is_exported, load_saved_heads, read_heads
from threedrs.align.task import GROUNDING_TASKS, AlignTask
from threedrs.checkpoint import load_checkpoint, newest_checkpoint, save_checkpoint, verify_checkpoint
from threedrs.config import ExperimentConfig
from threedrs.locking import FileLock
from threedrs.models.loading import training_load_device, training_placement
from threedrs.run_folder import check_run_data, open_run


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the message names the last good checkpoint."""


@dataclass
class TrainResult:
    """What a finished run reports: final step, the mean of the last logged losses, the checkpoint folder."""

    steps: int
    last_losses: dict[str, float]
    checkpoint: Path
    log_path: Path


def global_batches(n: int, global_batch: int, seed: int, start: int = 0) -> Iterator[list[int]]:
    """Endless stream of global batches of sample indices, beginning at global batch number `start`.

    Each epoch is a fresh permutation (seeded by seed and epoch); batches never straddle epochs (the tail of an
    epoch that cannot fill a batch is dropped, so every batch has the same size on every rank).
    """
    if n < global_batch:
        raise ValueError(f"train set has {n} samples, fewer than one global batch of {global_batch}")
    per_epoch = n // global_batch
    index = start
    while True:
        epoch, offset = divmod(index, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
        yield order[offset * global_batch:(offset + 1) * global_batch]
        index += 1


class MicroBatches(torch.utils.data.Sampler):
    """This rank's micro-batches (lists of indices), step after step from `start_step` on, for `steps` steps.

    Every optimizer step consumes one global batch of `micro * world * accum` samples; micro-batch k of a step on
    rank r is slice (k * world + r) of it.
    """

    def __init__(self, n: int, micro: int, world: int, rank: int, accum: int, seed: int, start_step: int,
                 steps: int):
        self.n, self.micro, self.world, self.rank, self.accum = n, micro, world, rank, accum
        self.seed, self.start_step, self.steps = seed, start_step, steps

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        batches = global_batches(self.n, self.micro * self.world * self.accum, self.seed, self.start_step)
        for _ in range(self.start_step, self.steps):
            indices = next(batches)
            for k in range(self.accum):
                at = (k * self.world + self.rank) * self.micro
                yield indices[at:at + self.micro]


def parameter_groups(task: AlignTask, cfg: ExperimentConfig) -> list[dict]:
    """AdamW groups with separate learning rates for llm / vision / projector / heads; frozen parts excluded."""
    t = cfg.train
    parts = task.adapter.parts()
    rates = {"llm": t.lr_llm, "vision": t.lr_vision, "projector": t.lr_projector}
    groups = []
    for name, params in parts.items():
        trainable = [p for p in params if p.requires_grad]
        if name in t.freeze:
            for p in params:
                p.requires_grad_(False)
            continue
        if trainable:
            groups.append({"name": name, "params": trainable, "lr": rates[name]})
    adapter_ids = {id(p) for params in parts.values() for p in params}
    heads = [p for p in task.parameters() if id(p) not in adapter_ids and p.requires_grad]
    groups.append({"name": "heads", "params": heads, "lr": t.lr_heads})
    return groups


def apply_lora(task: AlignTask, cfg: ExperimentConfig) -> None:
    """Inject LoRA adapters (PEFT) into the LLM's target linear layers and freeze the LLM's base weights."""
    from peft import LoraConfig, inject_adapter_in_model

    m = cfg.model
    llm_params = {id(p) for p in task.adapter.parts()["llm"]}
    for p in task.adapter.model.parameters():
        if id(p) in llm_params:
            p.requires_grad_(False)
    lora = LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                      target_modules=list(m.lora_targets))
    inject_adapter_in_model(lora, task.adapter.model)


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main_decides(accelerator, decide: Callable[[], int]) -> int:
    """Run ``decide`` on the main process only and give every process its integer result.

    When it raises there, the main process re-raises and every other process raises too (instead of waiting
    forever at the next collective).
    """
    value, error = 0, None
    if accelerator.is_main_process:
        try:
            value = int(decide())
        except Exception as exc:  # re-raised below, after the other processes know
            error = exc
    failed = error is not None
    if accelerator.num_processes > 1:
        shared = torch.tensor([value, int(failed)], dtype=torch.long, device=accelerator.device)
        value, failed = (int(x) for x in accelerator.reduce(shared, reduction="sum").tolist())
    if error is not None:
        raise error
    if failed:
        raise RuntimeError("the main process stopped the run (its message says why)")
    return value


def _loss_counts(tasks: list[str], names) -> dict[str, int]:
    """How many samples of a micro-batch each logged loss averages over: "lm_loss" its text samples, "ground_loss"
    its grounding samples, every other term all of its samples."""
    ground = sum(t in GROUNDING_TASKS for t in tasks)
    counts = {"lm_loss": len(tasks) - ground, "ground_loss": ground}
    return {name: counts.get(name, len(tasks)) for name in names}


def _mean_losses(accelerator, sums: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, float]:
    """Sample-weighted means over the micro-batches of every process: sum(mean x count) / sum(count) per loss, so a
    micro-batch or rank without text (grounding) samples does not pull "lm_loss" ("ground_loss") towards 0."""
    names = sorted(sums)
    values = torch.stack([sums[k].float() for k in names])
    totals = accelerator.reduce(torch.stack([values, torch.tensor([float(counts[k]) for k in names],
                                                                  device=values.device)]), reduction="sum")
    return {k: s / max(n, 1.0) for k, s, n in zip(names, *totals.tolist())}


_COMPUTE = {"no": "float32", "bf16": "bfloat16 autocast", "fp16": "float16 autocast"}


def _load_device(accelerator) -> str:
    """Where this process loads the checkpoint (models/loading.py `training_load_device`)."""
    state = accelerator.state
    fsdp, deepspeed = getattr(state, "fsdp_plugin", None), state.deepspeed_plugin
    return training_load_device(accelerator.device, state.distributed_type.name, accelerator.local_process_index,
                                ram_efficient=bool(fsdp is not None and fsdp.cpu_ram_efficient_loading),
                                zero_stage=deepspeed.zero_stage if deepspeed is not None else None)


def train(cfg: ExperimentConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> TrainResult:
    """Train `cfg` (model, data, teacher cache, align and train sections); returns the final state.

    resume: continue the run in output_dir from its newest usable checkpoint. overwrite: delete the run in
    output_dir first. Without either, a folder that holds a run is refused (`threedrs.run_folder`).
    """
    out = Path(cfg.output_dir)
    lock = FileLock(out / ".lock", f"the run folder {out}")
    try:
        return _train(cfg, resume, progress, overwrite, lock)
    finally:
        lock.release()


def _train(cfg: ExperimentConfig, resume: bool, progress: bool, overwrite: bool, lock: FileLock) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from transformers import get_cosine_schedule_with_warmup

    from threedrs.training_data import build_training_data
    from threedrs.data.preflight import prepare_training
    from threedrs.models.registry import build_adapter
    from threedrs.teachers.cache import frame_lists_for

    t = cfg.train
    out = Path(cfg.output_dir)
    # a rank whose micro-batch has no grounding sample leaves the grounding head unused in that step
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # cpu=True when there is no GPU: accelerate then runs a torchrun/accelerate launch as gloo DDP on CPU
    accelerator = Accelerator(mixed_precision=t.mixed_precision, kwargs_handlers=[ddp],
                              cpu=not torch.cuda.is_available())
    placement = training_placement(cfg.model, t.mixed_precision, accelerator.device, _load_device(accelerator))
    accelerator.print(f"precision: float32 master weights (model.dtype={cfg.model.dtype}), compute in "
                      f"{_COMPUTE[t.mixed_precision]} (train.mixed_precision={t.mixed_precision}); "
                      f"{placement.describe()}")

    def begin() -> int:  # before any model is built: the lock, the folder against this run, the step to start at
        lock.acquire()
        return open_run(out, cfg, resume, overwrite, _warn)

    step = main_decides(accelerator, begin)
    checkpoint = out / "checkpoints" / f"step_{step:06d}" if step else None
    state = verify_checkpoint(checkpoint, hash_files=False) if checkpoint is not None else None
    set_seed(cfg.seed)
    inputs = prepare_training(cfg, frame_lists_for(cfg), progress=progress and accelerator.is_main_process)
    adapter = build_adapter(cfg.model, placement)  # only after the whole training set passed its checks
    data = build_training_data(cfg, adapter, inputs=inputs)
    scenes = sorted({s.scene_id for s in data.dataset.samples})
    main_decides(accelerator, lambda: check_run_data(out, cfg, data.dataset.cache, data.dataset.frame_lists,
                                                     scenes) or 0)
    task = AlignTask.from_config(adapter, data.teacher_channels, cfg)
    if is_exported(cfg.model.path):  # an exported or converted folder: start from its heads too
        unused = load_saved_heads(task, read_heads(cfg.model.path), cfg.model.path)
        accelerator.print(f"heads from {cfg.model.path}" + (f" (not used here: {', '.join(unused)})" if unused else ""))
    if cfg.model.lora_rank > 0:
        apply_lora(task, cfg)
    if cfg.model.gradient_checkpointing:
        adapter.model.activation_checkpointing_enable()
    optimizer = torch.optim.AdamW(parameter_groups(task, cfg), weight_decay=t.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(t.warmup_ratio * t.steps), t.steps)
    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is not None:
        if t.grad_accum > 1:  # DeepSpeed scales and steps on its own; this loop's accumulation would double it
            raise ValueError("train.grad_accum > 1 is not supported under DeepSpeed here; raise train.batch_size")
        deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = t.batch_size  # no loader is prepared
    # the scheduler is stepped once per optimizer step by us (a prepared one would advance once per process)
    task, optimizer = accelerator.prepare(task, optimizer)
    if checkpoint is not None:
        load_checkpoint(accelerator, task, optimizer, scheduler, checkpoint, state, _warn)
    log_path = out / "train_log.jsonl"

    world = accelerator.num_processes
    global_batch = t.batch_size * world * t.grad_accum
    sampler = MicroBatches(len(data.dataset), t.batch_size, world, accelerator.process_index, t.grad_accum,
                           cfg.seed, step, t.steps)
    loader = iter(torch.utils.data.DataLoader(data.dataset, batch_sampler=sampler, collate_fn=data.collate,
                                              num_workers=t.num_workers))
    bar = tqdm(total=t.steps, initial=step, desc="train", unit="step", disable=not (progress and accelerator.is_main_process))
    last: dict[str, float] = {}
    window: list[dict[str, float]] = []
    tick, samples = time.perf_counter(), 0
    task.train()
    while step < t.steps:
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for k in range(t.grad_accum):
            batch = next(loader).to(accelerator.device)
            sync = k == t.grad_accum - 1
            ctx = accelerator.no_sync(task) if not sync and world > 1 else nullcontext()
            with ctx, accelerator.autocast():
                losses = task(batch)
                if losses["loss"].requires_grad:  # False only when every part is frozen and no head is used
                    accelerator.backward(losses["loss"] / t.grad_accum)
            for name, n in _loss_counts(batch.tasks, losses).items():
                sums[name] = sums.get(name, 0.0) + losses[name].detach().float() * n
                counts[name] = counts.get(name, 0) + n
        reduced = _mean_losses(accelerator, sums, counts)
        if not all(math.isfinite(v) for v in reduced.values()):
            good = newest_checkpoint(out)
            raise TrainingDiverged(f"non-finite loss at step {step + 1}: {reduced}; last good checkpoint: "
                                   f"{good if good else 'none (no checkpoint was written yet)'}")
        if t.max_grad_norm > 0:
            accelerator.clip_grad_norm_(task.parameters(), t.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        samples += global_batch
        window.append(reduced)
        bar.update(1)
        if step % t.log_every == 0 or step == t.steps:
            elapsed = time.perf_counter() - tick
            last = {k2: sum(w[k2] for w in window) / len(window) for k2 in window[0]}
            rates = {f"lr_{g['name']}": lr for g, lr in zip(optimizer.param_groups, scheduler.get_last_lr())}
            record = {"step": step, **last, **rates, "samples_per_s": samples / elapsed}
            bar.set_postfix({k2: f"{v:.3f}" for k2, v in last.items() if k2 != "loss"} | {"loss": f"{last['loss']:.3f}"})
            if accelerator.is_main_process:
                with log_path.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
            window, tick, samples = [], time.perf_counter(), 0
        if step % t.save_every == 0 or step == t.steps:
            checkpoint = save_checkpoint(accelerator, task, optimizer, scheduler, out, step)
    bar.close()
    accelerator.end_training()
    return TrainResult(step, last, checkpoint, log_path)
