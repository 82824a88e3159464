"""Scoring an evaluation run's predictions files without a model, and `threedrs score`.

The files (``RUN/predictions/<benchmark>.jsonl``) and their checks are predictions.py's. Scores are percentages
(x100); the metric definitions live in ``threedrs.metrics``. Scoring only reads the predictions files (and
``RUN/provenance.json``, whose sample ids every file must match exactly); it writes ``RUN/metrics.json`` and
``RUN/metrics.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

from threedrs.eval_folder import recorded_ids
from threedrs.json_files import read_json_file, write_atomic
from threedrs.metrics.captioning import MeteorSession, scan2cap_cider_per_sample, scan2cap_scores
from threedrs.metrics.awareness import Study, measure_values
from threedrs.metrics.grounding import multi3drefer_f1, multi3drefer_f1_per_query, scanrefer_accuracy, scanrefer_hits
from threedrs.metrics.qa import refined_em, scanqa_scores, sqa3d_scores
from threedrs.metrics.report import detail_table, results_table
from threedrs.data.tasks import TASKS
from threedrs.predictions import PredictionsError, check_benchmark, check_records, predictions_path, read_predictions

__all__ = [
    "METEOR_BENCHMARKS",
    "awareness_study",
    "load_metrics",
    "main_score",
    "metrics_markdown",
    "parse_benchmarks",
    "per_sample_values",
    "score_benchmark",
    "score_run",
]

METEOR_BENCHMARKS = ("scan2cap", "scanqa")  # the ones with METEOR
_TITLES = {"scanrefer": "ScanRefer", "multi3drefer": "Multi3DRefer", "scan2cap": "Scan2Cap", "scanqa": "ScanQA",
           "sqa3d": "SQA3D"}

NO_ANSWERS = "no reference answers (ScanQA's test split is a hidden benchmark): predictions written, not scored"


def has_answers(benchmark: str, records: Sequence[dict], where: str) -> bool:
    """False for a ScanQA file whose records all lack answers (the test split); a file mixing records with and
    without answers is an error naming ``where`` and the first id without."""
    if benchmark != "scanqa":
        return True
    empty = [r["id"] for r in records if not r["answers"]]
    if empty and len(empty) < len(records):
        raise PredictionsError(f"{where}: {len(empty)} of {len(records)} records have no answers (first: id "
                               f"{empty[0]!r}); a file is either all answered or the unanswered test split")
    return not empty


def score_benchmark(benchmark: str, records: Sequence[dict], meteor: bool | MeteorSession = True) -> dict:
    """The benchmark's standard scores (x100) from its validated records.

    Returns, as the metric functions give them:
    - scanrefer: ``{"overall"|"unique"|"multiple": {"Acc@0.25", "Acc@0.5", "count"}}`` (scanrefer_accuracy);
    - multi3drefer: ``{"overall"|eval type: {"F1@0.25", "F1@0.5", "count"}}`` (multi3drefer_f1);
    - scan2cap: ``{"CIDEr", "BLEU-1".."BLEU-4", "ROUGE-L", ["METEOR"], "count", "detected"}``, all m@0.5;
    - scanqa: ``{"EM", "EM-refined", "CIDEr", "BLEU-1".."BLEU-4", "ROUGE-L", ["METEOR"], "count"}``;
    - sqa3d: ``{"overall"|question type: {"EM", "EM-refined", "count"}}`` (NaN scores for an empty type).

    Args:
        benchmark: one of ``threedrs.data.tasks.TASKS``.
        records: the predictions records (as :func:`read_predictions` returns them).
        meteor: for scan2cap and scanqa: True opens a METEOR session for this call, a session is reused,
            False leaves METEOR out.
    """
    check_records(benchmark, records)
    if not has_answers(benchmark, records, benchmark):
        raise PredictionsError(f"{benchmark}: {NO_ANSWERS}")
    ids = [r["id"] for r in records]
    if benchmark == "scanrefer":
        return scanrefer_accuracy([r["pred_box"] for r in records], [r["gt_box"] for r in records],
                                  [r["question_type"] for r in records])
    if benchmark == "multi3drefer":
        return multi3drefer_f1([r["pred_boxes"] for r in records], [r["gt_boxes"] for r in records],
                               [r["question_type"] for r in records])
    if benchmark == "scan2cap":
        return scan2cap_scores(dict(zip(ids, (r["references"] for r in records))),
                               dict(zip(ids, (r["prediction"] for r in records))),
                               dict(zip(ids, (r["detected"] for r in records))), meteor=meteor)
    if benchmark == "scanqa":
        return scanqa_scores(dict(zip(ids, (r["prediction"] for r in records))),
                             dict(zip(ids, (r["answers"] for r in records))), meteor=meteor)
    return sqa3d_scores(dict(zip(ids, (r["prediction"] for r in records))),
                        dict(zip(ids, (r["answer"] for r in records))),
                        dict(zip(ids, (r["question"] for r in records))))


def per_sample_values(benchmark: str, records: Sequence[dict]) -> tuple[str, list[float]]:
    """The per-sample downstream metric of the correlation study (paper Fig. 2), x100, in record order.

    Each vector's mean is one of the benchmark's reported scores, so a quartile's mean is that score on the
    quartile's samples:
    - scanrefer "Acc@0.25": hit@0.25 (0 or 100); mean = Acc@0.25 overall.
    - multi3drefer "F1@0.25": the query's F1@0.25 (0..100); mean = F1@0.25 overall.
    - scan2cap "CIDEr@0.5": the object's CIDEr (pycocoevalcap's per-sample scores, document frequencies over
      all objects of the file; 0 when undetected); mean = C@0.5. CIDEr is the Table-1 caption metric and, unlike
      corpus BLEU, is a mean of per-sample values.
    - scanqa "EM-refined": LEO's refined exact match (0 or 100); mean = EM-refined. Refined rather than raw EM
      because raw EM is case- and punctuation-sensitive, so it mostly measures answer formatting.
    - sqa3d "EM": clean_answer equality (0 or 100); mean = EM overall.

    Returns:
        (metric name, one value per record).
    """
    check_records(benchmark, records)
    if benchmark == "scanrefer":
        hits = scanrefer_hits([r["pred_box"] for r in records], [r["gt_box"] for r in records])
        return "Acc@0.25", (100.0 * hits[:, 0]).tolist()
    if benchmark == "multi3drefer":
        f1 = multi3drefer_f1_per_query([r["pred_boxes"] for r in records], [r["gt_boxes"] for r in records])
        return "F1@0.25", (100.0 * f1[:, 0]).tolist()
    if benchmark == "scan2cap":
        ids = [r["id"] for r in records]
        cider = scan2cap_cider_per_sample(dict(zip(ids, (r["references"] for r in records))),
                                          dict(zip(ids, (r["prediction"] for r in records))),
                                          dict(zip(ids, (r["detected"] for r in records))))
        return "CIDEr@0.5", [cider[key] for key in ids]
    if benchmark == "scanqa":
        return "EM-refined", [100.0 * refined_em(r["prediction"], r["answers"])[1] for r in records]
    return "EM", [100.0 * refined_em(r["prediction"], [r["answer"]])[0] for r in records]


def awareness_study(run_dir: str | Path, benchmarks: Sequence[str], layer: str) -> Study:
    """The 3D-awareness study of one run: per benchmark (whose predictions file it reads) the measures each record
    holds at ``layer`` (`threedrs.metrics.awareness.measure_values`), the per-sample metric and its name
    (`per_sample_values`)."""
    out = {}
    for benchmark in benchmarks:
        records = read_predictions(predictions_path(run_dir, benchmark), benchmark)
        metric, values = per_sample_values(benchmark, records)
        out[benchmark] = (measure_values(records, layer), values, metric)
    return out


def parse_benchmarks(text: str | Sequence[str] | None) -> list[str] | None:
    """"a,b" or ["a", "b"] -> validated list without repeats (None stays None)."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    if not names or not all(names):
        raise ValueError(f"benchmarks: expected comma-separated names, got {text!r}")
    for name in names:
        check_benchmark(name)
    return list(dict.fromkeys(names))


def _present_benchmarks(run_dir: Path, benchmarks: Sequence[str] | None) -> list[str]:
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    if benchmarks is None:
        found = [b for b in TASKS if predictions_path(run_dir, b).is_file()]
        if not found:
            raise FileNotFoundError(f"{run_dir / 'predictions'}: no predictions file (<benchmark>.jsonl with "
                                    f"benchmark one of {', '.join(TASKS)})")
        return found
    for name in benchmarks:
        if not predictions_path(run_dir, name).is_file():
            raise FileNotFoundError(f"{predictions_path(run_dir, name)}: no such predictions file")
    return list(benchmarks)


def _json_safe(value: object) -> object:
    """NaN and infinities become null (strict JSON); tuples become lists."""
    if isinstance(value, dict):
        return {key: _json_safe(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _from_json(value: object) -> object:
    """Inverse of :func:`_json_safe` for metrics: null becomes NaN."""
    if isinstance(value, dict):
        return {key: _from_json(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return math.nan if value is None else value


def load_metrics(path: str | Path) -> dict:
    """Read a ``metrics.json`` written by :func:`score_run` (null scores come back as NaN)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrics file")
    metrics = read_json_file(path, ValueError)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("benchmarks"), dict):
        raise ValueError(f"{path}: not a metrics file (no 'benchmarks' object)")
    return _from_json(metrics)


def _meteor_note(metrics: dict) -> str:
    return "computed" if metrics.get("meteor") else "not computed"


def metrics_markdown(name: str, metrics: dict) -> str:
    """``metrics.md``: the Table-1 row of one run, then one detailed table per benchmark."""
    lines = [f"# Metrics of {name}", "",
             f"Scored from `predictions/<benchmark>.jsonl` (x100); METEOR {_meteor_note(metrics)}.", "",
             "## Paper Table 1 layout", "", results_table({name: metrics}), ""]
    for benchmark, result in metrics["benchmarks"].items():
        lines += [f"## {_TITLES.get(benchmark, benchmark)}", "", detail_table(result), ""]
    for benchmark, reason in metrics.get("unscored", {}).items():
        lines += [f"## {_TITLES.get(benchmark, benchmark)}", "", f"Not scored: {reason}.", ""]
    return "\n".join(lines)


def score_run(run_dir: str | Path, benchmarks: Sequence[str] | str | None = None, meteor: bool = True) -> dict:
    """Score every predictions file of a run (or the named ones) and write ``metrics.json`` and ``metrics.md``.

    All files are read and validated before any scoring (against the sample ids of the folder's provenance
    record when it has one: `threedrs eval` writes it), and one METEOR session serves the whole run (opened
    only when METEOR is wanted and scan2cap or scanqa is scored). The two output files are replaced atomically
    and hold exactly the benchmarks scored by this call; predictions files are only read.

    Args:
        run_dir: the run folder (holds ``predictions/``).
        benchmarks: names or "a,b" (default: every predictions file present).
        meteor: compute METEOR (needs Java).
    Returns:
        ``{"benchmarks": {benchmark: score_benchmark(...)}, "meteor": bool}`` (the content of metrics.json), plus
        ``"unscored": {benchmark: reason}`` for files without reference answers (ScanQA test).
    """
    run = Path(run_dir)
    names = _present_benchmarks(run, parse_benchmarks(benchmarks))
    recorded = recorded_ids(run) or {}
    records = {name: read_predictions(predictions_path(run, name), name, recorded.get(name)) for name in names}
    unscored = {name: NO_ANSWERS for name in names
                if not has_answers(name, records[name], str(predictions_path(run, name)))}
    names = [name for name in names if name not in unscored]
    use_meteor = bool(meteor) and any(name in METEOR_BENCHMARKS for name in names)
    with MeteorSession() if use_meteor else contextlib.nullcontext(False) as session:
        results = {name: score_benchmark(name, records[name], meteor=session) for name in names}
    metrics = {"benchmarks": results, "meteor": use_meteor} | ({"unscored": unscored} if unscored else {})
    write_atomic(run / "metrics.json", json.dumps(_json_safe(metrics), indent=2) + "\n")
    write_atomic(run / "metrics.md", metrics_markdown(run.resolve().name, metrics))
    return metrics


def main_score(args: argparse.Namespace) -> None:
    """`threedrs score RUN_DIR [--benchmarks a,b] [--no-meteor]` (fields: run_dir, benchmarks, no_meteor)."""
    run = Path(args.run_dir)
    if run.is_dir() and recorded_ids(run) is None:
        print(f"note: {run} has no provenance.json (not written by `threedrs eval`): sample ids are not checked "
              "against the benchmark")
    metrics = score_run(run, args.benchmarks, meteor=not args.no_meteor)
    print(results_table({run.resolve().name: metrics}))
    for benchmark, reason in metrics.get("unscored", {}).items():
        print(f"{benchmark}: {reason}")
    print(f"Wrote {run / 'metrics.json'} and {run / 'metrics.md'}")

