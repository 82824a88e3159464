"""Training checkpoints: what one holds, how it is written so a crash never leaves half of one, and how it is
checked before anything in it is loaded.

A checkpoint is ``<output_dir>/checkpoints/step_NNNNNN/``::

    state.json              {"format", "version", "step", "processes", "sharded", "files": {name: {"bytes",
                            "sha256"}}}: every other file of the folder, its size and (unsharded) its sha256
    model.safetensors       the AlignTask state dict (adapter + heads), each shared tensor once
    optimizer.safetensors   optimizer tensors, and optimizer.json its groups (`threedrs.checkpoint_state`)
    scheduler.json          the learning-rate scheduler's state_dict
    scaler.json             the fp16 loss scaler's state_dict (train.mixed_precision=fp16 only)
    rng_<rank>.safetensors  the random generators of each process

The sampler position is the step itself (`threedrs.train.MicroBatches` restarts at it). Under FSDP and DeepSpeed
the model and optimizer shards are written and read by the library (accelerate's ``save_state`` /
``load_state``) instead of model/optimizer/scaler files, and their pickles are checked by
`threedrs.pickle_guard` before the library opens them; eval and probe need ``model.safetensors`` (DDP or one
process).

Writing: into ``step_NNNNNN.tmp``, every file flushed to disk (fsync), state.json last, then renamed into place
and the parent folder flushed; a killed writer leaves only a ``.tmp`` folder, which readers ignore.
Reading: `verify_checkpoint` checks state.json, sizes, checksums and that the folder holds nothing else;
a damaged checkpoint raises `CorruptCheckpointError` (resume falls back to the previous one), a file that threedrs
did not write raises `UntrustedCheckpointError` (refused: it may be a planted pickle).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from threedrs.checkpoint_state import load_optimizer, load_rng, rng_file, save_optimizer, save_rng
from threedrs.json_files import read_json_file, write_json_atomic
from threedrs.pickle_guard import UntrustedCheckpointError, check_pickles
from threedrs.provenance import file_sha256

__all__ = ["CheckpointError", "CorruptCheckpointError", "UntrustedCheckpointError", "load_checkpoint",
           "load_model_weights", "model_sha256", "newest_checkpoint", "read_model_weights", "resume_point",
           "save_checkpoint", "set_aside", "step_folders", "verify_checkpoint"]

FORMAT = "threedrs-checkpoint"
VERSION = 1
STATE, MODEL, SCHEDULER, SCALER = "state.json", "model.safetensors", "scheduler.json", "scaler.json"
OPTIMIZER, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"
_OWN_FILES = re.compile(r"model\.safetensors|optimizer\.(safetensors|json)|scheduler\.json|scaler\.json|"
                        r"rng_\d+\.safetensors")
_STEP = re.compile(r"step_(\d+)")


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the folder or file."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint is incomplete or damaged (truncated file, wrong checksum, unreadable state.json)."""


def step_folders(run: Path) -> list[Path]:
    """The finished checkpoint folders of a run (``checkpoints/step_N``, no ``.tmp``), oldest first."""
    found = [p for p in (Path(run) / "checkpoints").glob("step_*") if p.is_dir() and _STEP.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_STEP.fullmatch(p.name).group(1)))


def newest_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint folder of a run (not verified: loading it checks it), or None."""
    folders = step_folders(run)
    return folders[-1] if folders else None


def is_sharded(accelerator) -> bool:
    """True under FSDP / DeepSpeed / Megatron, where the library writes the model and optimizer shards."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                            DistributedType.MEGATRON_LM)


def verify_checkpoint(folder: Path, hash_files: bool = True) -> dict:
    """The checkpoint's state.json after checking the folder against it; see the module docstring for errors."""
    folder = Path(folder)
    path = folder / STATE
    if not path.is_file():
        raise CorruptCheckpointError(f"{folder}: incomplete checkpoint (no {STATE})")
    state = read_json_file(path, CorruptCheckpointError)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UntrustedCheckpointError(
            f"{folder}: not a threedrs checkpoint of this format ({STATE} has no \"format\": \"{FORMAT}\"; older "
            f"threedrs versions pickled training state, which is no longer loaded); start the run afresh with "
            f"--overwrite, or evaluate its weights with eval.checkpoint={folder}")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {state.get('version')!r}; this threedrs reads "
                              f"version {VERSION}")
    files, step = state.get("files"), state.get("step")
    named = _STEP.fullmatch(folder.name)
    if not isinstance(files, dict) or not isinstance(step, int) or (named and int(named.group(1)) != step):
        raise CorruptCheckpointError(f"{path}: 'step' must be the folder's step and 'files' a mapping")
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    sharded = bool(state.get("sharded"))
    strangers = [n for n in present if n != STATE and (n not in files or not (sharded or _OWN_FILES.fullmatch(n)))]
    if strangers:
        raise UntrustedCheckpointError(f"{folder / strangers[0]}: refused, a file that threedrs did not write into "
                                       f"this checkpoint (it could be a planted pickle); remove it only if you "
                                       f"know where it comes from")
    for name, entry in files.items():
        target = folder / name
        if not target.is_file():
            raise CorruptCheckpointError(f"{target}: missing from the checkpoint")
        size = target.stat().st_size
        if not isinstance(entry, dict) or size != entry.get("bytes"):
            raise CorruptCheckpointError(f"{target}: {size} bytes, {STATE} says {entry.get('bytes')!r} "
                                         f"(truncated or damaged)")
        if hash_files and entry.get("sha256") and file_sha256(target) != entry["sha256"]:
            raise CorruptCheckpointError(f"{target}: content does not match the sha256 in {STATE} (damaged)")
    return state


def resume_point(run: Path, warn: Callable[[str], None]) -> tuple[Path, dict, list[Path]] | None:
    """(newest usable checkpoint, its state, the newer damaged ones) or None when the run has no checkpoint.

    Each damaged checkpoint is reported through ``warn``; a run whose checkpoints are all damaged raises
    CheckpointError; an untrusted one raises UntrustedCheckpointError (never skipped).
    """
    damaged: list[Path] = []
    for folder in reversed(step_folders(run)):
        try:
            return folder, verify_checkpoint(folder), damaged
        except CorruptCheckpointError as exc:
            warn(f"warning: {exc}; falling back to the previous checkpoint")
            damaged.append(folder)
    if damaged:
        raise CheckpointError(f"no usable checkpoint under {Path(run) / 'checkpoints'} (all {len(damaged)} are "
                              f"damaged, see above); start afresh with --overwrite")
    return None


def set_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint to ``<name>.damaged[-k]`` so that nothing reads it again; returns the new path."""
    target, k = folder.with_name(folder.name + ".damaged"), 1
    while target.exists():
        target, k = folder.with_name(f"{folder.name}.damaged-{k}"), k + 1
    folder.rename(target)
    return target


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with each tensor stored once: a key that views the same memory as an earlier key (tied
    embeddings) is dropped; `load_model_weights` accepts it missing."""
    seen: set[tuple] = set()
    out = {}
    for key, tensor in state.items():
        ident = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and ident in seen:
            continue
        seen.add(ident)
        out[key] = tensor.detach().contiguous()
    return out


def save_checkpoint(accelerator, task, optimizer, scheduler, run: Path, step: int) -> Path:
    """Write the training state after ``step`` optimizer steps; every process calls it. Returns the folder."""
    final = Path(run) / "checkpoints" / f"step_{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    main, sharded = accelerator.is_main_process, is_sharded(accelerator)
    if main:  # a .tmp folder is a killed writer's: the run-folder lock says no one else writes here
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if sharded:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:  # accelerate's pickled RNG states: threedrs writes its own (rng_<rank>.safetensors)
            for pickled in tmp.glob("random_states_*.pkl"):
                pickled.unlink()
    elif main:
        save_file(_unshared(accelerator.get_state_dict(task)), str(tmp / MODEL))
        save_optimizer(optimizer.state_dict(), tmp / OPTIMIZER, tmp / OPTIMIZER_JSON)
        if accelerator.scaler is not None:
            (tmp / SCALER).write_text(json.dumps(accelerator.scaler.state_dict()))
    if main:
        (tmp / SCHEDULER).write_text(json.dumps(scheduler.state_dict()))
    save_rng(tmp / rng_file(accelerator.process_index))
    _fsync(tmp / rng_file(accelerator.process_index))
    accelerator.wait_for_everyone()
    if main:
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync(path)
            entry = {"bytes": path.stat().st_size}
            if not sharded:
                entry["sha256"] = file_sha256(path)
            files[path.relative_to(tmp).as_posix()] = entry
        state = {"format": FORMAT, "version": VERSION, "step": step, "processes": accelerator.num_processes,
                 "sharded": sharded, "files": files}
        write_json_atomic(tmp / STATE, state)
        for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            _fsync(folder)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync(final.parent)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, task, optimizer, scheduler, folder: Path, state: dict,
                    warn: Callable[[str], None]) -> None:
    """Restore a verified checkpoint (`verify_checkpoint` gave ``state``) into the prepared objects."""
    sharded = is_sharded(accelerator)
    if bool(state.get("sharded")) != sharded:
        kind = "FSDP/DeepSpeed" if state.get("sharded") else "one process or DDP"
        raise CheckpointError(f"{folder}: saved under {kind}; resume it with the same kind of launch")
    if sharded:
        check_pickles(folder, sorted(state["files"]))
        accelerator.load_state(str(folder))
    else:
        load_model_weights(accelerator.unwrap_model(task), read_model_weights(folder), folder / MODEL)
        optimizer.load_state_dict(load_optimizer(folder / OPTIMIZER, folder / OPTIMIZER_JSON, optimizer.param_groups))
        if accelerator.scaler is not None:
            if not (folder / SCALER).is_file():
                raise CheckpointError(f"{folder}: no {SCALER}; it was saved without fp16 mixed precision")
            scaler_state = read_json_file(folder / SCALER, CorruptCheckpointError, expect=dict)
            accelerator.scaler.load_state_dict(scaler_state)
    scheduler.load_state_dict(read_json_file(folder / SCHEDULER, CorruptCheckpointError, expect=dict))
    rng = folder / rng_file(accelerator.process_index)
    if rng.is_file():
        load_rng(rng)
    else:
        warn(f"warning: {rng} not found (saved with {state.get('processes')} processes): this process keeps "
             f"its seeded random generators")


def read_model_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``folder/model.safetensors`` (eval, probe, resume); a damaged file is named."""
    path = Path(folder) / MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a training checkpoint (no {MODEL})")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) on damaged files
        raise CorruptCheckpointError(f"{path}: damaged or truncated weights file ({exc})") from None


def model_sha256(folder: Path) -> str:
    """sha256 of ``model.safetensors``, checked against the checksum state.json recorded when it was saved.

    Without state.json, or with one that records no checksum of it (a sharded or pre-format checkpoint), there is
    nothing to compare with; a state.json that cannot be read raises CorruptCheckpointError naming it (the check
    is never skipped silently)."""
    path = Path(folder) / MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a training checkpoint (no {MODEL})")
    actual = file_sha256(path)
    state = read_json_file(Path(folder) / STATE, CorruptCheckpointError) if (Path(folder) / STATE).is_file() else {}
    files = state.get("files") if isinstance(state, dict) else None
    entry = files.get(MODEL) if isinstance(files, dict) else None
    recorded = entry.get("sha256") if isinstance(entry, dict) else None
    if recorded is not None and recorded != actual:
        raise CorruptCheckpointError(f"{path}: content does not match the sha256 in {STATE} (damaged)")
    return actual


def load_model_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path,
                       remedy: str = "resume with the run's own model settings") -> None:
    """Load a full state dict saved by `save_checkpoint` (``path``: its file, for messages); keys may be missing
    only where they alias a loaded tensor (tied weights, which the checkpoint stores once). CheckpointError
    naming the missing and unexpected keys, and ``remedy``, otherwise."""
    result = model.load_state_dict(weights, strict=False)
    live = model.state_dict()
    loaded = {(t.data_ptr(), tuple(t.shape)) for k, t in live.items() if k in weights}
    missing = [k for k in result.missing_keys if (live[k].data_ptr(), tuple(live[k].shape)) not in loaded]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: weights do not fit the configured model (missing {missing[:5]}, unexpected "
                              f"{result.unexpected_keys[:5]}); {remedy}")
