"""A training run folder: what it already holds, and whether this run may continue it.

``<output_dir>/`` of `threedrs train`::

    .lock            held by the training process (rank 0) for the whole run (`threedrs.locking`)
    provenance.json  what the run is (`threedrs.provenance`): code, config, teacher and data fingerprints
    config.yaml      the resolved config, for people
    train_log.jsonl  one line per logged step
    checkpoints/     step_NNNNNN folders (`threedrs.checkpoint`)
    eval/            the default evaluation folder of the run

Rules, applied by the main process before any model is built (`open_run`) and once the data is read
(`check_run_data`):
- without ``--resume``, a folder that already holds a run (checkpoints, log or record) is refused unless
  ``--overwrite``, which deletes what threedrs wrote there (the list above: ``checkpoints/step_*`` only, and
  ``eval/`` through its own locks) and starts afresh;
- with ``--resume``, the stored record must equal this run's, field by field, else the run is refused naming
  the fields (or started afresh with ``--overwrite``); the newest usable checkpoint is chosen (damaged newer ones
  are renamed ``*.damaged`` with a warning) and train_log.jsonl is cut back to its step;
- the frames the feature cache was computed from must be unchanged (its teacher is checked when the training
  data opens it); the record keeps the sha256 of the annotation files, a digest of each
  scene's files (frames, intrinsics, alignment, instances: size and modification time) and of the cache.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from threedrs.checkpoint import resume_point, set_aside, step_folders
from threedrs.config import ExperimentConfig, dump_yaml
from threedrs.eval_folder import clear_eval_folder
from threedrs.json_files import write_atomic
from threedrs.provenance import (RECORD, ProvenanceError, code_version, config_fields, digest, file_sha256, names,
                                 read_record, refuse_if_different, scene_digest, write_record)

__all__ = ["RunFolderError", "check_run_data", "cut_log", "open_run"]

LOG = "train_log.jsonl"


class RunFolderError(ProvenanceError):
    """The run folder holds another run, or this run cannot continue it; the message says what to pass."""


def _record(cfg: ExperimentConfig) -> dict:
    return {"kind": "train", "code": code_version(), "config": config_fields(cfg, "train")}


def _holdings(out: Path) -> list[str]:
    """What of a run the folder holds, in words (empty: nothing)."""
    found = []
    folders = sorted(p.name for p in (out / "checkpoints").glob("step_*")) if (out / "checkpoints").is_dir() else []
    if folders:
        found.append(f"checkpoints {names(folders, 3)}")
    found += [name for name in (LOG, RECORD) if (out / name).is_file()]
    return found


def _clear(out: Path) -> None:
    """Delete what a training run wrote into ``out`` and nothing else: the checkpoint folders
    (``checkpoints/step_*``, their ``.tmp`` and ``.damaged`` ones; ``checkpoints/`` itself only when that leaves
    it empty, since configs keep weights there too when output_dir is "."), the log, config.yaml, the record, and
    the evaluation folder ``eval/`` through `clear_eval_folder` (its locks and its own refusals). Every refusal
    comes before anything is deleted."""
    try:
        stored = read_record(out)
    except ProvenanceError:
        stored = None  # an unreadable record: --overwrite is the remedy its message gives
    if stored is not None and stored.get("kind") != "train":
        raise RunFolderError(f"{out / RECORD}: a record of kind {stored.get('kind')!r}, not a training run's: "
                             f"--overwrite deletes only a training run's files; choose another output_dir")
    clear_eval_folder(out / "eval")
    checkpoints = out / "checkpoints"
    for folder in sorted(checkpoints.glob("step_*")) if checkpoints.is_dir() else []:
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        else:
            folder.unlink()
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    for name in (LOG, "config.yaml", RECORD):
        (out / name).unlink(missing_ok=True)


def cut_log(path: Path, step: int) -> None:
    """Keep the log lines of steps <= ``step`` (a resumed run writes the later ones again); drop broken lines."""
    if not path.is_file():
        return
    content = path.read_bytes()
    kept = []
    for line in content.splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(json.dumps(record))
    text = "".join(line + "\n" for line in kept)
    if text.encode() != content:
        write_atomic(path, text)


def open_run(out: Path, cfg: ExperimentConfig, resume: bool, overwrite: bool,
             warn: Callable[[str], None]) -> int:
    """Check (and with ``overwrite`` clear) the run folder; returns the step to start from (0 = scratch).

    Main process only, before the model is built. Raises RunFolderError / ProvenanceError / CheckpointError.
    """
    out = Path(out)
    if overwrite:
        _clear(out)
    held = _holdings(out)
    if held and not resume:
        raise RunFolderError(f"{out} already holds a run ({', '.join(held)}); pass --resume to continue it, "
                             f"--overwrite to delete it and start afresh, or choose another output_dir")
    stored = read_record(out)
    if stored is not None:
        mine = _record(cfg)
        refuse_if_different({k: stored.get(k) for k in ("kind", "code", "config")}, mine, f"run folder {out}",
                            "resume with the run's own settings, or pass --overwrite to start afresh")
    elif step_folders(out):
        raise RunFolderError(f"{out}: checkpoints without {RECORD} (written by an older threedrs?): cannot tell "
                             f"which run they belong to; pass --overwrite to start afresh")
    chosen = resume_point(out, warn) if resume else None
    step = 0
    if chosen is not None:
        folder, state, damaged = chosen
        for bad in damaged:
            warn(f"warning: damaged checkpoint set aside as {set_aside(bad)}")
        step = int(state["step"])
        warn(f"resuming from {folder} at step {step}")
    elif resume:
        warn(f"no checkpoint under {out / 'checkpoints'}; starting from scratch")
    cut_log(out / LOG, step)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    return step


def check_run_data(out: Path, cfg: ExperimentConfig, cache, frame_lists: Callable[[str], list[str]],
                   scene_ids: list[str]) -> None:
    """Check that the frames the feature cache was computed from are unchanged, then compare (or write) the
    run's full record. ``cache``: the run's FeatureCache or None (its teacher was checked against the config when
    it was opened, `threedrs.training_data.open_training_cache`); ``frame_lists``: the run's frame lists;
    ``scene_ids``: the scenes trained on.

    Main process only, after the data is read and before the first step.
    """
    from threedrs.data.tasks import benchmark_paths
    from threedrs.teachers.cache import CacheMismatchError, stale_sources

    root = Path(cfg.data.root)
    record = _record(cfg)
    scenes = {s: scene_digest(root, s, frame_lists(s), cfg.data.axis_alignment) for s in scene_ids}
    annotations = dict.fromkeys(p for task in cfg.train.tasks for p in benchmark_paths(root, task, "train"))
    record["data"] = {"annotations": {p.relative_to(root).as_posix(): file_sha256(p) for p in annotations},
                      "scenes": scenes}
    if cache is not None:
        sources = {}
        for scene_id in scene_ids:
            sources[scene_id] = cache.sources(scene_id)
            changed = stale_sources(sources[scene_id], root)
            if changed:
                raise CacheMismatchError(f"{cache.path(scene_id)}: extracted from frames that changed since "
                                         f"({names(changed, 3)} under {root}); run `threedrs extract` again")
        record["teacher"] = {"name": cache.spec.teacher, "weights_checksum": cache.spec.weights_checksum,
                             "channels": cache.spec.channels, "layer": cache.spec.layer}
        record["data"]["cache"] = digest(sources)
    stored = read_record(out)
    if stored is not None:
        refuse_if_different(stored, record, f"run folder {out}",
                            "resume with the run's own data and teacher cache, or pass --overwrite to start afresh")
    write_record(out, record)
