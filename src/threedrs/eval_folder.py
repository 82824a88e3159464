"""An evaluation run folder: its predictions are reused only by the run that wrote them.

``<run>/`` of `threedrs eval` (default ``<output_dir>/eval``)::

    provenance.json                 what wrote the predictions (`threedrs.provenance`), see `eval_record`
    .lock                           held while provenance.json is read and updated
    predictions/<benchmark>.jsonl   one line per sample (`threedrs.evaluate.PredictionsFile`), and its .lock,
                                    held by the one process appending to it
    metrics.json, metrics.md        the scores (`threedrs.scoring.score_run`)

Before a run appends to a folder, `open_eval` compares the folder's record with the run's: the code version, the
config values that change predictions, the checkpoint's sha256 and the proposals file must be equal, and so must
each benchmark's entry that the folder already holds (split, limit, sample ids, annotation files, scene files).
A difference is refused naming the fields, unless ``--overwrite``, which deletes the predictions, metrics and
record first (never in a folder whose record is not an evaluation's, nor while another process writes a
predictions file). Benchmarks new to the folder are added to the record. Scoring reads the recorded sample ids
and rejects any other id (`threedrs.scoring`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from threedrs.config import ExperimentConfig
from threedrs.locking import FileLock
from threedrs.provenance import (RECORD, ProvenanceError, code_version, config_fields, file_sha256, read_record,
                                 refuse_if_different, relative_path, scene_digest, write_record)

__all__ = ["clear_eval_folder", "eval_record", "open_eval", "recorded_ids"]

_REMEDY = "pass --overwrite to delete its predictions and evaluate afresh, or write to another folder (--out)"


def eval_record(cfg: ExperimentConfig, checkpoint: dict, samples: dict[str, list],
                frame_lists: Callable[[str], list[str]] | None) -> dict:
    """The record of an evaluation: ``checkpoint`` is {"path", "sha256"} (or a policy's description),
    ``samples`` the Sample list of each benchmark (after eval.limit), ``frame_lists`` the run's frame lists, or
    None for a policy that looks at no frame (the chance level: no frame list is made, no frame fingerprinted).

    Scene files (the listed frames, intrinsics, alignment, instances) are fingerprinted by size and modification
    time and kept as one digest per scene.
    """
    from threedrs.data.tasks import benchmark_paths

    root = Path(cfg.data.root)
    e = cfg.eval
    scenes: dict[str, str] = {}  # each scene and each file is read once, however many benchmarks share it
    hashes: dict[Path, str] = {}
    benchmarks = {}
    for bench, items in samples.items():
        ids = sorted({s.scene_id for s in items})
        for scene_id in ids:
            if scene_id not in scenes:
                listed = frame_lists(scene_id) if frame_lists is not None else []
                scenes[scene_id] = scene_digest(root, scene_id, listed, cfg.data.axis_alignment)
        files = benchmark_paths(root, bench, e.split)
        labels = root / cfg.data.label_map  # ScanRefer's unique / multiple labels come from it (data/labels.py)
        if bench == "scanrefer" and labels.is_file():
            files.append(labels)
        for path in files:
            if path not in hashes:
                hashes[path] = file_sha256(path)
        benchmarks[bench] = {
            "split": e.split, "limit": e.limit, "ids": [s.id for s in items],
            "files": {relative_path(p, root): hashes[p] for p in files},
            "scenes": {s: scenes[s] for s in ids}}
    proposals = root / e.proposals
    return {"kind": "eval", "code": code_version(), "config": config_fields(cfg, "eval"), "checkpoint": checkpoint,
            "data": {"proposals": file_sha256(proposals) if proposals.is_file() else None},
            "benchmarks": benchmarks}


def _clear(run: Path) -> None:
    """Delete what an evaluation wrote; LockedError (naming the holder) while another process appends to a file,
    ProvenanceError when the folder's record is not an evaluation's (a training run's folder, say). Nothing is
    deleted unless every check passes. The caller holds the folder's ``.lock``."""
    try:
        stored = read_record(run)
    except ProvenanceError:
        stored = None  # an unreadable record: --overwrite is the remedy its message gives
    if stored is not None and stored.get("kind") != "eval":
        raise ProvenanceError(f"{run / RECORD}: a record of kind {stored.get('kind')!r}, not an evaluation's: "
                              f"--overwrite deletes only an evaluation's files; evaluate into another folder (--out)")
    locks = sorted((run / "predictions").glob("*.jsonl.lock")) if (run / "predictions").is_dir() else []
    for lock in locks:
        FileLock(lock, f"the predictions file {lock.with_suffix('')}").acquire().release()
    shutil.rmtree(run / "predictions", ignore_errors=True)
    for name in ("metrics.json", "metrics.md", RECORD):
        (run / name).unlink(missing_ok=True)


def clear_eval_folder(run: Path) -> None:
    """What ``threedrs eval --overwrite`` deletes (predictions, metrics, record; see `_clear` for the refusals),
    under the folder's lock; the folder itself is removed when nothing else is left in it (`threedrs train
    --overwrite` clears the run's ``eval/`` so)."""
    run = Path(run)
    if not run.is_dir():
        return
    with FileLock(run / ".lock", f"the evaluation folder {run}").acquire(wait=30.0):
        _clear(run)
        if [p.name for p in run.iterdir()] == [".lock"]:
            (run / ".lock").unlink()
            run.rmdir()


def open_eval(run: Path, record: dict, overwrite: bool = False) -> None:
    """Check the folder's record against ``record`` (see the module docstring), then store the merged record.

    Raises ProvenanceError naming the differing fields (or the predictions without a record).
    """
    run = Path(run)
    with FileLock(run / ".lock", f"the evaluation folder {run}").acquire(wait=30.0):
        if overwrite:
            _clear(run)
        stored = read_record(run)
        held = sorted(p.stem for p in (run / "predictions").glob("*.jsonl")) if (run / "predictions").is_dir() else []
        if stored is None and held:
            raise ProvenanceError(f"{run}: predictions ({', '.join(held)}) without provenance.json: cannot tell "
                                  f"which checkpoint, config and data wrote them; {_REMEDY}")
        merged = record
        if stored is not None:
            common = {k: v for k, v in record.items() if k != "benchmarks"}
            refuse_if_different({k: stored.get(k) for k in common}, common, f"evaluation folder {run}", _REMEDY)
            known = stored.get("benchmarks") if isinstance(stored.get("benchmarks"), dict) else {}
            for bench, entry in record["benchmarks"].items():
                if bench in known:
                    refuse_if_different({"benchmarks": {bench: known[bench]}}, {"benchmarks": {bench: entry}},
                                        f"evaluation folder {run}", _REMEDY)
                elif bench in held:
                    raise ProvenanceError(f"{run}: predictions/{bench}.jsonl is not in provenance.json; {_REMEDY}")
            merged = {**stored, **common, "benchmarks": {**known, **record["benchmarks"]}}
        write_record(run, merged)


def recorded_ids(run: Path) -> dict[str, list[str]] | None:
    """The sample ids of each benchmark that the folder's record holds; None without a record."""
    stored = read_record(Path(run))
    if stored is None:
        return None
    benchmarks = stored.get("benchmarks")
    if not isinstance(benchmarks, dict) or not all(isinstance(v, dict) and isinstance(v.get("ids"), list)
                                                   for v in benchmarks.values()):
        raise ProvenanceError(f"{Path(run) / 'provenance.json'}: 'benchmarks' must map each benchmark to its "
                              f"'ids'; rerun `threedrs eval` with --overwrite")
    return {b: [str(i) for i in v["ids"]] for b, v in benchmarks.items()}
