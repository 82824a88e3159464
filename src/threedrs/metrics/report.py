"""The correlation study and the report's tables: quartiles by 3D-awareness score (paper Fig. 2), Spearman's rho,
tables in the layout of the paper's Table 1, differences between runs, mean and spread over seeds. `threedrs
report` (:mod:`threedrs.eval_report`) and the demo report put them together with the figures of
:mod:`threedrs.metrics.plots`.

A run's metrics are the ``{"benchmarks": {benchmark: scores}, "meteor": bool}`` dict that
:func:`threedrs.scoring.score_run` returns and writes as ``metrics.json``; scores are percentages (x100).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

__all__ = [
    "TABLE1_COLUMNS",
    "QuartileRow",
    "aggregate_seeds",
    "delta_table",
    "detail_table",
    "MIN_QUARTILE_SAMPLES",
    "markdown",
    "quartiles",
    "read_train_log",
    "results_table",
    "spearman",
    "table1_row",
]

TABLE1_COLUMNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ScanRefer Acc@0.25", "scanrefer", ("overall", "Acc@0.25")),
    ("ScanRefer Acc@0.5", "scanrefer", ("overall", "Acc@0.5")),
    ("Multi3DRefer F1@0.25", "multi3drefer", ("overall", "F1@0.25")),
    ("Multi3DRefer F1@0.5", "multi3drefer", ("overall", "F1@0.5")),
    ("Scan2Cap C@0.5", "scan2cap", ("CIDEr",)),
    ("Scan2Cap B-4@0.5", "scan2cap", ("BLEU-4",)),
    ("ScanQA C", "scanqa", ("CIDEr",)),
    ("ScanQA EM", "scanqa", ("EM",)),
    ("SQA3D EM", "sqa3d", ("overall", "EM")),
)
"""(column label, benchmark, path in that benchmark's scores) for each column of the paper's Table 1."""

_LABELS = tuple(label for label, _, _ in TABLE1_COLUMNS)
MIN_QUARTILE_SAMPLES = 4
"""Fewest samples with a finite score that a quartile study accepts."""


@dataclass(frozen=True)
class QuartileRow:
    """One quartile of a benchmark's samples ranked by 3D-awareness score (quartile 1 = lowest scores).

    score_min / score_max / mean_score: of the quartile's scores (cosine, -1..1); mean_metric: mean per-sample
    downstream metric (x100); count: samples in the quartile.
    """

    quartile: int
    score_min: float
    score_max: float
    mean_score: float
    mean_metric: float
    count: int


def _paired(scores: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if s.ndim != 1 or s.shape != v.shape:
        raise ValueError(f"scores, values: expected two lists of the same length, got shapes {s.shape} and {v.shape}")
    return s, v


def quartiles(scores: Sequence[float], values: Sequence[float]) -> list[QuartileRow]:
    """Split the samples with a finite score into 4 equal-size bins by score rank; the metric mean per bin.

    Ties: samples are ranked with a stable sort, so equal scores keep their input order (for a predictions file,
    the line order) and a run of equal scores may straddle a quartile boundary. Sizes: ``np.array_split`` of
    the ranking, so bins differ by at most one sample and the lower quartiles take the extra ones.

    Args:
        scores: N 3D-awareness scores; NaN / inf / None mark unscored samples, which are left out.
        values: N per-sample metric values (finite wherever the score is).
    Returns:
        4 rows, quartile 1 (lowest scores) to 4.
    """
    s, v = _paired([math.nan if x is None else x for x in scores], values)
    keep = np.isfinite(s)
    bad = np.flatnonzero(keep & ~np.isfinite(v))
    if bad.size:
        raise ValueError(f"values: sample {int(bad[0])} has a score but a non-finite metric value {v[bad[0]]}")
    s, v = s[keep], v[keep]
    if s.size < MIN_QUARTILE_SAMPLES:
        raise ValueError(f"scores: quartiles need at least {MIN_QUARTILE_SAMPLES} samples with a finite score, "
                         f"got {s.size}")
    bins = np.array_split(np.argsort(s, kind="stable"), 4)
    return [QuartileRow(q, float(s[b].min()), float(s[b].max()), float(s[b].mean()), float(v[b].mean()), b.size)
            for q, b in enumerate(bins, start=1)]


def spearman(scores: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Spearman's rank correlation (scipy.stats.spearmanr) over the samples where both are finite.

    Returns:
        (rho, two-sided p-value); (nan, nan) with fewer than 3 such samples or when either side is constant.
    """
    s, v = _paired([math.nan if x is None else x for x in scores], values)
    keep = np.isfinite(s) & np.isfinite(v)
    s, v = s[keep], v[keep]
    if s.size < 3 or np.all(s == s[0]) or np.all(v == v[0]):
        return math.nan, math.nan
    result = spearmanr(s, v)
    return float(result.statistic), float(result.pvalue)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _leaf(metrics: Mapping, benchmark: str, path: tuple[str, ...]) -> object:
    """The value at ``metrics["benchmarks"][benchmark][path...]``, NaN when absent."""
    node: object = metrics.get("benchmarks", {}).get(benchmark)
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return math.nan
        node = node[key]
    return node


def table1_row(metrics: Mapping) -> dict[str, object]:
    """Table-1 column label -> value (a number, a (mean, std) pair, or NaN when the run lacks it)."""
    if not isinstance(metrics, Mapping) or not isinstance(metrics.get("benchmarks"), Mapping):
        raise ValueError("metrics: expected a score_run result with a 'benchmarks' mapping")
    return {label: _leaf(metrics, benchmark, path) for label, benchmark, path in TABLE1_COLUMNS}


def _number(value: float, sign: bool = False) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:+.1f}" if sign else f"{value:.1f}"


def _mean(value: object) -> float:
    """A plain number, or the mean of a (mean, std) pair; NaN for anything else."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        value = value[0]
    return float(value) if _is_number(value) else math.nan


def _cell(value: object) -> str:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return f"{_number(_mean(value))} ± {_number(_mean(value[1]))}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _number(_mean(value))


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: one header row, a separator, one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def results_table(runs: Mapping[str, Mapping], with_chance: Mapping[str, float] | None = None) -> str:
    """Markdown table in the layout of the paper's Table 1: one row per run, "–" where a run lacks a benchmark.

    Args:
        runs: run name -> metrics (a score_run result, or :func:`aggregate_seeds` of several: "mean ± std").
        with_chance: Table-1 column label -> chance level, printed as a last row "chance" (a missing label
            prints "–"; ``table1_row`` of a scored random-prediction run gives such a mapping).
    """
    if not runs:
        raise ValueError("runs: no run to tabulate")
    rows = [[name, *(_cell(v) for v in table1_row(metrics).values())] for name, metrics in runs.items()]
    if with_chance is not None:
        unknown = sorted(set(with_chance) - set(_LABELS))
        if unknown:
            raise ValueError(f"with_chance: unknown column {unknown[0]!r}, expected labels of TABLE1_COLUMNS")
        rows.append(["chance", *(_cell(with_chance.get(label, math.nan)) for label in _LABELS)])
    return markdown(["run", *_LABELS], rows)


def delta_table(a: Mapping, b: Mapping, names: tuple[str, str] = ("baseline", "3DRS")) -> str:
    """Markdown table, one row per Table-1 metric: a, b and b - a (e.g. 3DRS minus baseline).

    Args:
        a, b: metrics of two runs (plain or seed aggregates, whose means are compared).
        names: the two runs' names for the header.
    """
    row_a, row_b = table1_row(a), table1_row(b)
    rows = [[label, _cell(row_a[label]), _cell(row_b[label]),
             _number(_mean(row_b[label]) - _mean(row_a[label]), sign=True)] for label in _LABELS]
    return markdown(["metric", names[0], names[1], f"{names[1]} − {names[0]}"], rows)


def _aggregate(items: list, where: str) -> object:
    first = items[0]
    if isinstance(first, Mapping):
        for i, item in enumerate(items):
            if not isinstance(item, Mapping) or set(item) != set(first):
                raise ValueError(f"metrics[{i}]: the keys of {where} differ from those of metrics[0]")
        return {key: _aggregate([item[key] for item in items], f"{where}.{key}") for key in first}
    if all(_is_number(x) or x is None for x in items):
        arr = np.array([math.nan if x is None else x for x in items], dtype=np.float64)
        return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    if any(x != first for x in items):
        raise ValueError(f"metrics: {where} differs between runs: {items!r}")
    return first


def aggregate_seeds(list_of_metrics: Sequence[Mapping]) -> dict:
    """Mean and sample standard deviation (ddof = 1; NaN for one run) of every number over runs of several seeds.

    Args:
        list_of_metrics: metrics of the same benchmarks from runs that differ only in the seed.
    Returns:
        The same nested layout with each number replaced by ``(mean, std)``; other values (e.g. "meteor") must
        agree and are kept. Counts become (count, 0.0) when the runs agree.
    """
    if not list_of_metrics:
        raise ValueError("list_of_metrics: no run to aggregate")
    result = _aggregate(list(list_of_metrics), "metrics")
    if not isinstance(result, dict):
        raise ValueError("list_of_metrics: expected metrics dicts")
    return result


def detail_table(result: Mapping) -> str:
    """Markdown table of one benchmark's scores: a row per group ("overall", eval or question types) for grouped
    scores, else one row "all"; a column per score, "count" last."""
    grouped = bool(result) and all(isinstance(v, Mapping) for v in result.values())
    groups = dict(result) if grouped else {"all": result}
    columns = list(dict.fromkeys(key for scores in groups.values() for key in scores))
    columns.sort(key=lambda key: key in ("count", "detected"))  # stable: score columns first
    rows = [[group, *(_cell(scores.get(key, math.nan)) for key in columns)] for group, scores in groups.items()]
    return markdown(["group" if grouped else "", *columns], rows)


def read_train_log(path: str | Path) -> list[dict]:
    """The records of a training log (``train_log.jsonl``: one {"step": int, "loss": float, ...} per line)."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: malformed JSON ({error.msg})") from None
        if not isinstance(record, dict) or not _is_number(record.get("step")):
            raise ValueError(f"{path}, line {number}: expected an object with a numeric 'step'")
        records.append(record)
    return records
