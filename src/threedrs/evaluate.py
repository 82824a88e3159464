"""`threedrs eval`: run a (trained) model on the five benchmarks, write predictions as produced, then score them.

For each benchmark, `RUN/predictions/<benchmark>.jsonl` gets one line per sample, appended and flushed as soon as
it is produced; a re-run skips the ids already written (a line cut short by an interruption is dropped and
redone), but only when the folder's provenance record says the same checkpoint, config and data wrote them
(`threedrs.eval_folder`; otherwise refused, or started afresh with --overwrite). One process at a time appends
to a predictions file (its lock names the holder). Eval prints which checkpoint it evaluates.

Grounding (ScanRefer, Multi3DRefer) scores the detector proposals of `eval.proposals` with the grounding
head and applies V3D's prediction rules; Scan2Cap, ScanQA and SQA3D generate greedily (Scan2Cap's prompt box is
the best proposal with IoU >= 0.5 to the object; without one the caption is empty). With `eval.probe` every
line also records the sample's 3D-awareness score at `eval.probe_layers` (the correlation study; computed once per
scene, whose samples all have the same visual tokens: `_probe`). Scores are
computed from the files by `threedrs.scoring.score_run`, the same code `threedrs score` runs. Every check scoring
would make on the data runs before the model is built (`threedrs.data.preflight.prepare_evaluation`).
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from threedrs.align.saved_heads import HEAD_PREFIXES, META_FILE, check_export_settings, is_exported, read_heads
from threedrs.align.task import AlignTask
from threedrs.checkpoint import load_model_weights, model_sha256, newest_checkpoint, read_model_weights
from threedrs.config import ExperimentConfig
from threedrs.data.batch import Batch, collate
from threedrs.data.dataset import Candidates, SceneSampleDataset, pixel_options
from threedrs.data.instances import SceneDataError
from threedrs.data.preflight import BenchmarkInputs, prepare_evaluation
from threedrs.data.tasks import GROUNDING_TASKS, load_benchmark
from threedrs.eval_folder import eval_record, open_eval
from threedrs.locking import FileLock
from threedrs.metrics.correspondence import correspondence_score
from threedrs.models.base import token_embedding_offsets
from threedrs.models.loading import Placement, compute_device, inference_placement
from threedrs.provenance import file_sha256, read_record


@dataclass
class EvalResult:
    """Where the predictions and scores are, and the scores themselves (threedrs.scoring.score_run output)."""

    run_dir: Path
    metrics: dict


def resolve_checkpoint(cfg: ExperimentConfig) -> Path | None:
    """The training checkpoint folder to evaluate: eval.checkpoint, else the newest under output_dir; None for "none".

    A model.path written by `threedrs export` or `convert-official` is a trained model itself: with eval.checkpoint
    unset it is evaluated as it is (None), unless output_dir holds a run trained from it (its provenance record
    names this model.path), whose newest checkpoint is evaluated. A checkpoint always wins over the folder's heads:
    it holds the whole trained state, heads included."""
    if cfg.eval.checkpoint == "none":
        return None
    if cfg.eval.checkpoint:
        path = Path(cfg.eval.checkpoint)
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"{path}: not a training checkpoint (no model.safetensors)")
        return path
    if is_exported(cfg.model.path) and not _trained_from(Path(cfg.output_dir), cfg.model.path):
        return None
    found = newest_checkpoint(Path(cfg.output_dir))
    if found is None:
        raise FileNotFoundError(f"no checkpoint under {Path(cfg.output_dir) / 'checkpoints'}; train first or set "
                                f"eval.checkpoint=none to evaluate {cfg.model.path or 'the untrained model'} as it is")
    return found


def _trained_from(run: Path, model_path: str) -> bool:
    """Whether the training run in folder `run` started from `model_path` (its provenance record says so)."""
    record = read_record(run)
    started = ((record or {}).get("config") or {}).get("model.path")
    return started is not None and Path(started).resolve() == Path(model_path).resolve()


def checkpoint_identity(cfg: ExperimentConfig, checkpoint: Path | None) -> dict:
    """{"path", "sha256"} of the weights evaluated (checked against the checkpoint's state.json); printed. Without a
    checkpoint, an exported model.path is identified by its threedrs_heads.json (source checkpoint, its sha256, step,
    dtype)."""
    if checkpoint is not None:
        sha = model_sha256(checkpoint)
        print(f"evaluating checkpoint {checkpoint} (model.safetensors sha256 {sha[:12]})")
        return {"path": str(checkpoint), "sha256": sha}
    if is_exported(cfg.model.path):
        meta = read_heads(cfg.model.path).meta
        check_export_settings(meta, cfg)
        source = meta.get("source") or {}
        if "official" in source:
            print(f"evaluating {cfg.model.path}, converted from the authors' {source['official']} checkpoint "
                  f"{source['path']} ({meta['dtype']})")
        else:
            print(f"evaluating the export {cfg.model.path} (step {source['step']} of {source['run']}, {meta['dtype']})")
        return {"path": str(cfg.model.path), "sha256": file_sha256(Path(cfg.model.path) / META_FILE)}
    print(f"evaluating the untrained model ({cfg.model.path or 'tiny random model'}; eval.checkpoint=none)")
    return {"path": None, "sha256": None}


def load_task(cfg: ExperimentConfig, checkpoint: Path | None, placement: Placement | None = None) -> AlignTask:
    """The AlignTask of `cfg` with the weights of training checkpoint `checkpoint` (heads included; head sizes read
    from the file), placed as `placement` says (default: `inference_placement` on `compute_device()`, the checks run
    first). Without a checkpoint, a model.path written by `threedrs export` or `convert-official` brings its own heads
    (align/saved_heads.py; LoRA already merged), after its recorded settings are checked against `cfg`; a checkpoint
    of a run trained from such a folder holds the whole trained state and wins."""
    from threedrs.models.registry import build_adapter
    from threedrs.train import apply_lora

    placement = placement or inference_placement(cfg.model, compute_device())
    saved = None
    if checkpoint is not None:
        state, source = read_model_weights(checkpoint), checkpoint
    elif is_exported(cfg.model.path):
        saved = read_heads(cfg.model.path)
        check_export_settings(saved.meta, cfg)
        state, source = saved.state, Path(cfg.model.path)
    else:
        state, source = {}, None
    head_keys = [k for k in state if re.fullmatch(r"heads\.-?\d+\.net\.2\.weight", k)]
    teacher_dim = int(state[head_keys[0]].shape[0]) if head_keys else None
    loss = cfg.align.loss if (teacher_dim is not None or cfg.align.loss == "correspondence") else "none"
    task = AlignTask.from_config(build_adapter(cfg.model, placement), teacher_dim, cfg, loss=loss)
    if cfg.model.lora_rank > 0 and saved is None:
        apply_lora(task, cfg)
    if saved is None and state:
        load_model_weights(task, state, source, remedy="is model.* the training config?")
    elif saved is not None:  # the folder's model weights are loaded already: only the heads come from the file
        result = task.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if k.startswith(HEAD_PREFIXES)]
        if missing or result.unexpected_keys:
            raise SceneDataError(f"{source}: heads do not fit the configured model (missing {missing[:5]}, "
                                 f"unexpected {result.unexpected_keys[:5]}); is model.* the exported run's config?")
    return task.eval()


class PredictionsFile:
    """An append-only JSONL file of one benchmark; knows which ids it already holds.

    Opening it takes its lock (``<file>.lock``; LockedError naming the holder when another process appends to
    it), so that only the holder trims a line cut short by an interruption; `close` releases it.
    """

    def __init__(self, path: Path):
        self.path = path
        self.done: set[str] = set()
        self.lock = FileLock(path.with_name(path.name + ".lock"), f"the predictions file {path}").acquire()
        try:
            self._read()
        except BaseException:
            self.lock.release()
            raise

    def _read(self) -> None:
        if self.path.is_file():
            raw = self.path.read_bytes()
            keep = raw if raw.endswith(b"\n") or not raw else raw[: raw.rfind(b"\n") + 1]
            if len(keep) != len(raw):  # an interrupted write: drop the partial last line, redo that sample
                self.path.write_bytes(keep)
            for n, line in enumerate(keep.splitlines(), 1):
                if line.strip():
                    try:
                        self.done.add(str(json.loads(line.decode("utf-8"))["id"]))
                    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                        raise SceneDataError(f"{self.path}: line {n} is not a prediction record (UTF-8 JSON with "
                                             f"an 'id'); fix or delete the file") from None
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, records: list[dict]) -> None:
        with self.path.open("a") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
                self.done.add(r["id"])
            fh.flush()

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> PredictionsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


ProbeMemo = dict[str, dict]
"""scene id -> the probe fields of its samples (`_probe`), within one benchmark's evaluation."""


def _probe(cfg: ExperimentConfig, hidden: dict[int, torch.Tensor] | None, batch: Batch, i: int,
           memo: ProbeMemo) -> dict:
    """Sample i's 3D-awareness at each probed layer: score ("correspondence"), "background" and "contrast" (and
    "recall" with "recall_chance" when correspondence.recall), each {layer: value or None}, and the pair count of
    the last layer (the threedrs.scoring record format).

    Computed once per scene and taken from ``memo`` for its other samples: the frames (one frame list per scene),
    the token points and the position encoding are the scene's, and the visual tokens precede all text that
    differs between samples (prompt, Scan2Cap's `<coord>`, the grounding answer) in every family's sequence;
    these causal LLMs with right-padded forward passes therefore give every sample of a scene the same visual
    states (equal up to float rounding across batches). ``hidden`` may be None when the scene is in ``memo``.
    """
    scene = batch.scene_ids[i]
    if scene not in memo:
        out: dict = {"correspondence": {}, "background": {}, "contrast": {}}
        pairs = 0
        for layer in cfg.eval.probe_layers:
            r = correspondence_score(hidden[layer][i].float(), batch.token_points[i], batch.pair_valid[i],
                                     **cfg.correspondence.score_options())
            for key, value in (("correspondence", r.score), ("background", r.background), ("contrast", r.contrast)):
                out[key][str(layer)] = None if r.pairs == 0 or not math.isfinite(value) else value
            if r.recall is not None:
                out.setdefault("recall", {})[str(layer)] = r.recall if math.isfinite(r.recall) else None
                out["recall_chance"] = r.recall_chance if math.isfinite(r.recall_chance) else None
            pairs = r.pairs
        memo[scene] = out | {"pairs": pairs}
    return copy.deepcopy(memo[scene])


def _grounding_records(task: AlignTask, cfg: ExperimentConfig, batch: Batch, gt: dict,
                       proposals: dict[str, torch.Tensor], memo: ProbeMemo) -> list[dict]:
    from threedrs.metrics.grounding import multi3drefer_prediction, scanrefer_prediction

    adapter = task.adapter
    offsets = task.visual_offsets(batch)
    layers = tuple(dict.fromkeys((0, -1) + tuple(cfg.eval.probe_layers if cfg.eval.probe else ())))
    out = adapter(batch.frames, batch.prompts, batch.answers, layers=layers, visual_offsets=offsets,
                  answer_loss=[False] * len(batch.ids), **task.adapter_options)
    records = []
    for i, (sid, task_name) in enumerate(zip(batch.ids, batch.tasks)):
        scene_boxes = proposals[batch.scene_ids[i]]  # float64, as in the table: predictions keep its values
        scores = task.grounding(task.ground_query(out, i), task.candidate_features(batch, out, offsets, i)).float()
        ids, boxes = gt[batch.scene_ids[i]]
        sample = batch.samples[i]
        targets = [boxes[ids.index(t)].tolist() for t in sample.target_ids]
        rec = {"id": sid, "scene_id": sample.scene_id, "question_type": sample.question_type,
               "scores": scores.tolist()}
        if task_name == "scanrefer":
            rec |= {"pred_box": scanrefer_prediction(scores, scene_boxes).tolist(), "gt_box": targets[0]}
        else:
            rec |= {"pred_boxes": multi3drefer_prediction(scores, scene_boxes).tolist(), "gt_boxes": targets}
        if cfg.eval.probe:
            rec |= _probe(cfg, out.visual.hidden, batch, i, memo)
        records.append(rec)
    return records


def _generation_records(task: AlignTask, cfg: ExperimentConfig, batch: Batch, memo: ProbeMemo) -> list[dict]:
    adapter = task.adapter
    offsets = task.visual_offsets(batch)
    with token_embedding_offsets(adapter.model, task.coord_id, task.coord_offsets(batch)):
        texts = adapter.generate(batch.frames, batch.prompts, max_new_tokens=cfg.eval.max_new_tokens,
                                 visual_offsets=offsets)
        hidden = None
        if cfg.eval.probe and any(scene not in memo for scene in batch.scene_ids):  # else no state is needed
            hidden = adapter(batch.frames, batch.prompts, None, layers=tuple(cfg.eval.probe_layers),
                             visual_offsets=offsets).visual.hidden
    records = []
    for i, (sample, text) in enumerate(zip(batch.samples, texts)):
        rec = {"id": sample.id, "scene_id": sample.scene_id, "question_type": sample.question_type}
        text = text.strip()
        if sample.task == "scan2cap":
            detected = bool(torch.isfinite(batch.coord_boxes[i]).all())
            rec |= {"prediction": text if detected else "", "references": sample.answers, "detected": detected}
        elif sample.task == "scanqa":
            rec |= {"prediction": text, "answers": sample.answers}
        else:
            rec |= {"prediction": text, "answer": sample.answer, "question": sample.question}
        if cfg.eval.probe:
            rec |= _probe(cfg, hidden, batch, i, memo)
        records.append(rec)
    return records


def evaluate(cfg: ExperimentConfig, run_dir: str | Path | None = None, progress: bool = True,
             overwrite: bool = False) -> EvalResult:
    """Evaluate `cfg.eval.benchmarks`; predictions and metrics go to run_dir (default output_dir/eval).

    overwrite: delete the folder's predictions first when another run (checkpoint, config, data) wrote them.
    """
    from threedrs.scoring import score_run
    from threedrs.teachers.cache import frame_lists_for

    e = cfg.eval
    run = Path(run_dir) if run_dir is not None else Path(cfg.output_dir) / "eval"
    frame_lists = frame_lists_for(cfg)
    inputs = prepare_evaluation(cfg, frame_lists, progress)  # every data check before the model is built
    checkpoint = resolve_checkpoint(cfg)
    placement = inference_placement(cfg.model, compute_device())  # dtype and device checks before any work
    identity = checkpoint_identity(cfg, checkpoint)
    by_bench = {prepared.task: prepared.samples for prepared in inputs.benchmarks}
    open_eval(run, eval_record(cfg, identity, by_bench, frame_lists), overwrite)
    task = load_task(cfg, checkpoint, placement)
    torch.manual_seed(cfg.seed)
    for prepared in inputs.benchmarks:
        with PredictionsFile(run / "predictions" / f"{prepared.task}.jsonl") as out:
            _evaluate_benchmark(task, cfg, prepared, out, inputs.proposals.boxes, frame_lists, progress)
    metrics = score_run(run, benchmarks=list(e.benchmarks), meteor=e.meteor)
    return EvalResult(run, metrics)


def _evaluate_benchmark(task: AlignTask, cfg: ExperimentConfig, prepared: BenchmarkInputs, out: PredictionsFile,
                        proposals: dict, frame_lists, progress: bool) -> None:
    """Predict the samples of one benchmark that ``out`` does not hold yet, appending batch by batch."""
    e = cfg.eval
    root = Path(cfg.data.root)
    bench, samples, gt = prepared.task, prepared.samples, prepared.objects
    pending = [s for s in samples if s.id not in out.done]
    scenes = sorted({s.scene_id for s in samples})
    cands = {s: Candidates(proposals[s], None) for s in scenes if s in proposals}
    dataset = SceneSampleDataset(pending, root, frame_lists, task.adapter.footprints, cands, gt,
                                 axis_alignment=cfg.data.axis_alignment, **pixel_options(cfg, task.adapter))
    device = task.adapter.model.get_input_embeddings().weight.device  # the batch goes where the model is
    bar = tqdm(total=len(samples), initial=len(samples) - len(pending), desc=f"eval {bench}", unit="sample",
               disable=not progress)
    memo: ProbeMemo = {}  # eval.probe: each scene's measures, computed at its first sample (`_probe`)
    with torch.no_grad():
        for start in range(0, len(pending), e.batch_size):
            chunk = list(range(start, min(start + e.batch_size, len(pending))))
            batch = collate([dataset[k] for k in chunk]).to(device)
            if bench in GROUNDING_TASKS:
                records = _grounding_records(task, cfg, batch, gt, proposals, memo)
            else:
                records = _generation_records(task, cfg, batch, memo)
            out.append(records)
            bar.update(len(chunk))
    bar.close()


def write_chance_predictions(cfg: ExperimentConfig, run_dir: str | Path, seed: int = 0) -> dict:
    """Predictions of a model that has learned nothing, scored like any run: the chance level of every metric.

    Grounding: uniformly random scores over the proposals (+ the no-target entry) through the same prediction
    rules; Scan2Cap: a random training description (same detection rule as `evaluate`); ScanQA / SQA3D: a
    uniformly random answer among the distinct training answers of the benchmark. The policy looks at no frame
    (no frame list is made) and reads a training split only for the three benchmarks that draw answers from it.
    """
    from threedrs.scoring import score_run

    e = cfg.eval
    run = Path(run_dir)
    root = Path(cfg.data.root)
    gen = torch.Generator().manual_seed(seed)
    inputs = prepare_evaluation(cfg, None)
    by_bench = {prepared.task: prepared.samples for prepared in inputs.benchmarks}
    open_eval(run, eval_record(cfg, {"policy": "chance", "seed": seed}, by_bench, None))
    for prepared in inputs.benchmarks:
        bench = prepared.task
        pool = [] if bench in GROUNDING_TASKS else sorted(
            {a for s in load_benchmark(root, bench, "train", cfg.data.label_map) for a in s.answers})
        with PredictionsFile(run / "predictions" / f"{bench}.jsonl") as out:
            _append_chance(out, bench, prepared.samples, prepared.objects, pool, inputs.proposals.boxes, gen)
    return score_run(run, benchmarks=list(e.benchmarks), meteor=e.meteor)


def _append_chance(out: PredictionsFile, bench: str, samples: list, gt: dict, pool: list[str], proposals: dict,
                   gen: torch.Generator) -> None:
    """The chance policy's records of the samples ``out`` does not hold yet (see `write_chance_predictions`)."""
    from threedrs.metrics.grounding import best_proposal, multi3drefer_prediction, scanrefer_prediction

    records = []
    for s in samples:
        if s.id in out.done:
            continue
        ids, boxes = gt.get(s.scene_id, ([], None))  # objects are loaded for grounding and captioning
        targets = [boxes[ids.index(t)] for t in s.target_ids if t in ids]
        rec = {"id": s.id, "scene_id": s.scene_id, "question_type": s.question_type}
        if bench in GROUNDING_TASKS:
            # no answer to draw, but the stream advances as by the answer draw every sample made before, so that a
            # seed still gives the chance numbers it gave (BENCHMARKS.md's demo row)
            torch.randint(1, (1,), generator=gen)
            cand = proposals[s.scene_id]
            scores = torch.rand(len(cand) + 1, generator=gen)
            rec["scores"] = scores.tolist()
            if bench == "scanrefer":
                rec |= {"pred_box": scanrefer_prediction(scores, cand).tolist(), "gt_box": targets[0].tolist()}
            else:
                rec |= {"pred_boxes": multi3drefer_prediction(scores, cand).tolist(),
                        "gt_boxes": [t.tolist() for t in targets]}
        else:
            guess = pool[int(torch.randint(len(pool), (1,), generator=gen))] if pool else ""
            if bench == "scan2cap":
                detected = best_proposal(targets[0], proposals.get(s.scene_id, torch.zeros(0, 6)))[0] is not None
                rec |= {"prediction": guess if detected else "", "references": s.answers, "detected": detected}
            elif bench == "scanqa":
                rec |= {"prediction": guess, "answers": s.answers}
            else:
                rec |= {"prediction": guess, "answer": s.answer, "question": s.question}
        records.append(rec)
    out.append(records)
