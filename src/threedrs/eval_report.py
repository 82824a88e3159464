"""`threedrs report`: one report for one or more evaluation runs (tables, the 3D-awareness study, figures).

A run is an evaluation folder with ``predictions/<benchmark>.jsonl`` (`threedrs eval`); runs given the same
name are seeds of one recipe and are reported as mean ± std. The report holds the paper's Table 1 per recipe,
every recipe minus the first, the 3D-awareness measures of each recipe (score, background, contrast and, when
recorded, recall) with sentences on which measure separates the recipes and by how much against the seed
spread, the quartile study of every measure (paper Fig. 2), the before/after chart (Fig. 3b) and training curves.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from threedrs.data.tasks import TASKS
from threedrs.metrics.awareness import Recipe, number, quartile_table, runs_table, separation_lines
from threedrs.metrics.plots import plot_before_after, plot_quartiles, plot_training_curves
from threedrs.metrics.report import (MIN_QUARTILE_SAMPLES, aggregate_seeds, delta_table, markdown, quartiles,
                                     read_train_log, results_table)
from threedrs.predictions import predictions_path
from threedrs.scoring import METEOR_BENCHMARKS, awareness_study, load_metrics, score_run

__all__ = ["build_report", "main_report"]


def _run_metrics(run: Path, meteor: bool) -> dict:
    """metrics.json when it is newer than every predictions file, readable and covers them all, scored or listed
    as unscored (with METEOR if wanted), else a fresh :func:`threedrs.scoring.score_run`."""
    files = [predictions_path(run, b) for b in TASKS if predictions_path(run, b).is_file()]
    cached = run / "metrics.json"
    if files and cached.is_file() and cached.stat().st_mtime >= max(f.stat().st_mtime for f in files):
        try:
            metrics = load_metrics(cached)
        except ValueError:  # a damaged metrics.json is only a cache of the scores: score again
            return score_run(run, meteor=meteor)
        wants_meteor = meteor and any(b in METEOR_BENCHMARKS for b in metrics["benchmarks"])
        covered = set(metrics["benchmarks"]) | set(metrics.get("unscored", {}))  # unscored: ScanQA's test split
        if covered == {f.stem for f in files} and (metrics.get("meteor") or not wants_meteor):
            return metrics
    return score_run(run, meteor=meteor)


def _file_name(index: int, name: str) -> str:
    return f"{index}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}"


def build_report(runs: Mapping[str, str | Path | Sequence[str | Path]], out: str | Path, layer: str = "-1",
                 meteor: bool = True) -> Path:
    """Score (or read) each run, draw the figures and write ``OUT/report.md``; returns its path.

    Per recipe: the Table-1 metrics and, for each benchmark, the per-sample metric against each 3D-awareness
    measure the predictions record at ``layer`` (quartile plot of the score; quartile table and Spearman's rho
    of every measure; a benchmark with fewer than 4 scored samples is skipped and the report says so). Across
    recipes: every recipe minus the first, the measures side by side with the sentences of
    `threedrs.metrics.awareness.separation_lines`, the per-benchmark means (before/after chart), and training
    curves of runs with a ``train_log.jsonl``.

    Args:
        runs: recipe name -> run folder, or several run folders (seeds), the first recipe being the reference.
        out: output folder (created); the PNG files are written next to report.md.
        layer: key of the predictions' per-layer mappings (e.g. "-1").
        meteor: compute METEOR when a run has to be scored.
    """
    if not runs:
        raise ValueError("runs: no run to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folders = {n: [Path(r)] if isinstance(r, (str, Path)) else [Path(x) for x in r] for n, r in runs.items()}
    per_seed = {name: [_run_metrics(run, meteor) for run in paths] for name, paths in folders.items()}
    metrics = {name: aggregate_seeds(seeds) if len(seeds) > 1 else seeds[0] for name, seeds in per_seed.items()}
    recipes = {name: Recipe([awareness_study(run, m["benchmarks"], layer) for run, m in zip(folders[name], seeds)])
               for name, seeds in per_seed.items()}
    names, notes = list(recipes), []
    lines = ["# 3DRS evaluation report", "", "Runs:",
             *(f"- **{n}**: " + ", ".join(f"`{p}`" for p in paths) for n, paths in folders.items()), "",
             (f"3D-awareness: the per-sample measures at layer {layer} recorded in the predictions files (score = "
              "the paper's mean cosine of corresponding tokens; background = mean cosine of tokens in different "
              "voxels; contrast = score - background; recall = share of tokens whose most similar token in "
              "another view corresponds). Benchmark scores are percentages (x100); several runs of one name are "
              "seeds: mean ± std."), "",
             "## Results (paper Table 1 layout)", "", results_table(metrics), ""]
    for other in names[1:]:
        lines += [f"## {other} minus {names[0]}", "", delta_table(metrics[names[0]], metrics[other], (names[0], other)),
                  ""]

    scored = {n: r for n, r in recipes.items() if r.labels()}
    if scored:
        values = {n: r.per_seed() for n, r in scored.items()}
        reference = names[0] if names[0] in scored else next(iter(scored))
        lines += ["## 3D-awareness of each run", "", "Means over all scored samples of all benchmarks.", "",
                  runs_table(values), "", *separation_lines(values, reference), ""]
        labels = list(dict.fromkeys(label for r in scored.values() for label in r.labels()))
        benchmarks = list(dict.fromkeys(b for r in scored.values() for b in r.benchmarks()))
        means = {label: {n: {b: r.benchmark_mean(label, b) for b in benchmarks} for n, r in scored.items()}
                 for label in labels}
        plot_before_after(means, out / "before_after.png")
        rows = [[b, *(" / ".join(number(means[label][n][b]) for label in labels) for n in scored)]
                for b in benchmarks]
        lines += ["## Mean 3D-awareness per benchmark (paper Fig. 3b)", "",
                  "![mean 3D-awareness](before_after.png)", "",
                  f"Each cell: {' / '.join(labels)}.", "", markdown(["benchmark", *scored], rows), ""]

    lines += ["## 3D-awareness quartiles and downstream metric (paper Fig. 2)", ""]
    for index, (name, recipe) in enumerate(recipes.items()):
        study = {}
        for benchmark, (measures, values, metric) in recipe.study().items():
            finite = sum(math.isfinite(s) for s in measures.get("score", []))
            if finite < MIN_QUARTILE_SAMPLES:
                notes.append(f"{name} / {benchmark}: {finite} of {len(values)} samples have a 3D-awareness "
                             f"score at layer {layer}; no quartiles ({MIN_QUARTILE_SAMPLES} needed).")
            else:
                study[benchmark] = (measures, values, metric)
        if not study:
            lines += [f"### {name}", "", "No benchmark has enough 3D-awareness scores.", ""]
            continue
        image = f"quartiles_{_file_name(index, name)}.png"
        plot_quartiles({b: (m["score"], v, metric) for b, (m, v, metric) in study.items()}, out / image,
                       f"{name}: metric per 3D-awareness score quartile (layer {layer})")
        lines += [f"### {name}", "", f"![{name} quartiles]({image})", "", quartile_table(study), "",
                  _score_ranges(study), ""]

    logs = {(f"{n} ({p.name})" if len(paths) > 1 else n): read_train_log(p / "train_log.jsonl")
            for n, paths in folders.items() for p in paths if (p / "train_log.jsonl").is_file()}
    if logs:
        plot_training_curves(logs, out / "training_curves.png")
        lines += ["## Training curves", "", "![training curves](training_curves.png)", ""]
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _score_ranges(study: Mapping[str, tuple[Mapping[str, list[float]], list[float], str]]) -> str:
    """Markdown: each score quartile's range, mean score, mean metric and size, per benchmark."""
    rows = [[benchmark, f"Q{r.quartile}", f"{r.score_min:.3f} – {r.score_max:.3f}", f"{r.mean_score:.3f}",
             f"{r.mean_metric:.1f}", str(r.count)]
            for benchmark, (measures, values, _) in study.items() for r in quartiles(measures["score"], values)]
    return markdown(["benchmark", "score quartile", "score range", "mean score", "mean metric", "samples"], rows)


def main_report(args: argparse.Namespace) -> None:
    """`threedrs report RUN_DIR [RUN_DIR ...] --out OUT [--names a,b] [--layer -1] [--no-meteor]`; runs given the
    same name are seeds of one recipe."""
    runs = [Path(run) for run in args.runs]
    names = [n.strip() for n in args.names.split(",")] if args.names else [r.resolve().name for r in runs]
    if len(names) != len(runs):
        raise ValueError(f"--names: {len(names)} names for {len(runs)} runs")
    if not all(names):
        raise ValueError(f"--names: run names must be non-empty, got {names}")
    if len(set(map(Path.resolve, runs))) != len(runs):
        raise ValueError("runs: the same folder is given twice")
    grouped: dict[str, list[Path]] = {}
    for name, run in zip(names, runs):
        grouped.setdefault(name, []).append(run)
    path = build_report(grouped, args.out, layer=str(args.layer), meteor=not args.no_meteor)
    metrics = {name: (aggregate_seeds([load_metrics(r / "metrics.json") for r in paths]) if len(paths) > 1
                      else load_metrics(paths[0] / "metrics.json")) for name, paths in grouped.items()}
    print(results_table(metrics))
    print(f"Wrote {path}")
