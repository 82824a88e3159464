"""The report's figures as PNG files: metric per 3D-awareness quartile (paper Fig. 2), the mean 3D-awareness
measures of several runs (Fig. 3b), training curves.

Figures are drawn on a ``matplotlib.figure.Figure`` with its own Agg canvas: pyplot and the global backend are
never touched, so importing or calling this module changes no matplotlib state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from threedrs.data.tasks import TASKS
from threedrs.metrics.report import quartiles, spearman

__all__ = ["plot_before_after", "plot_quartiles", "plot_training_curves"]

_DPI = 120


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches an Agg canvas to this figure only
    fig.savefig(path, dpi=_DPI)
    return path


def plot_quartiles(per_benchmark: Mapping[str, tuple[Sequence[float], Sequence[float], str]], path: str | Path,
                   title: str) -> Path:
    """Paper Fig. 2: one panel per benchmark, one bar per score quartile (Q1 lowest .. Q4 highest) with the mean
    per-sample metric, the quartile's mean score under each bar, Spearman's rho in the panel title.

    Args:
        per_benchmark: benchmark -> (N 3D-awareness scores (NaN = unscored), N metric values, metric name); at
            least 4 scored samples each (see :func:`threedrs.metrics.report.quartiles`).
        path: PNG file to write (its folder is created).
        title: figure title.
    Returns:
        ``path``.
    """
    if not per_benchmark:
        raise ValueError("per_benchmark: no benchmark to plot")
    fig = Figure(figsize=(2.9 * len(per_benchmark) + 0.4, 3.8), layout="constrained")
    axes = fig.subplots(1, len(per_benchmark), squeeze=False)[0]
    colours = colormaps["Blues"](np.linspace(0.35, 0.9, 4))
    for ax, (name, (scores, values, metric)) in zip(axes, per_benchmark.items()):
        rows = quartiles(scores, values)
        rho, _ = spearman(scores, values)
        heights = [row.mean_metric for row in rows]
        bars = ax.bar(range(4), heights, color=colours, edgecolor="black", linewidth=0.5)
        ax.bar_label(bars, labels=[f"{h:.1f}" for h in heights], padding=2, fontsize=8)
        ax.set_xticks(range(4), [f"Q{row.quartile}\n{row.mean_score:.2f}" for row in rows], fontsize=8)
        ax.set_ylim(0, max(heights) * 1.18 if max(heights) > 0 else 1.0)
        rho_text = f"ρ = {rho:.2f}" if math.isfinite(rho) else "ρ = n/a"
        ax.set_title(f"{name}\n{rho_text}, n = {sum(row.count for row in rows)}", fontsize=9)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("3D-awareness score quartile (its mean score)", fontsize=8)
    return _save(fig, path)


def plot_before_after(means: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | Path) -> Path:
    """Paper Fig. 3b, one panel per 3D-awareness measure (score, background, contrast, ...): grouped bars of the
    mean per benchmark, one bar per run, value labels.

    Args:
        means: measure label -> run name -> {benchmark: mean}, e.g. {"score": {"baseline": {...}, "3DRS": {...}}};
            a benchmark missing (or NaN) for a run gets no bar.
        path: PNG file to write.
    Returns:
        ``path``.
    """
    if not means:
        raise ValueError("means: no measure to plot")
    empty = [label for label, runs in means.items() if not runs]
    if empty:
        raise ValueError(f"means[{empty[0]!r}]: no run to plot")
    found = list(dict.fromkeys(b for runs in means.values() for run in runs.values() for b in run))
    benchmarks = [b for b in TASKS if b in found] + [b for b in found if b not in TASKS]
    if not benchmarks:
        raise ValueError("means: no benchmark to plot")
    fig = Figure(figsize=((1.3 * len(benchmarks) + 1.2) * len(means) + 0.4, 3.6), layout="constrained")
    axes = fig.subplots(1, len(means), squeeze=False)[0]
    for ax, (label, runs) in zip(axes, means.items()):
        width = 0.8 / len(runs)
        for i, (run, values) in enumerate(runs.items()):
            xs = [j + (i - (len(runs) - 1) / 2) * width for j, b in enumerate(benchmarks)
                  if math.isfinite(values.get(b, math.nan))]
            ys = [values[b] for b in benchmarks if math.isfinite(values.get(b, math.nan))]
            bars = ax.bar(xs, ys, width, label=run, color=colormaps["tab10"](i % 10))
            ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], padding=2, fontsize=6)
        ax.set_xticks(range(len(benchmarks)), benchmarks, fontsize=7, rotation=20)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.margins(y=0.15)
        ax.set_title(f"mean {label}", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle("3D-awareness per benchmark", fontsize=10)
    return _save(fig, path)


def plot_training_curves(logs: Mapping[str, Sequence[Mapping]], path: str | Path,
                         keys: Sequence[str] = ("loss", "lm_loss", "ground_loss", "align_loss")) -> Path:
    """Training curves: one panel per loss key logged by at least one run, one line per run.

    Args:
        logs: run name -> train-log records ({"step": int, "loss": float, ...}, the lines of train_log.jsonl).
        path: PNG file to write.
        keys: loss keys to draw, in panel order; keys no run logged are left out.
    Returns:
        ``path``.
    """
    for run, records in logs.items():
        for i, record in enumerate(records):
            if not isinstance(record, Mapping) or "step" not in record:
                raise ValueError(f"logs[{run!r}][{i}]: a train-log record needs a 'step'")
    drawn = [k for k in keys if any(k in record for records in logs.values() for record in records)]
    if not drawn:
        raise ValueError(f"logs: none of the keys {tuple(keys)} was logged")
    fig = Figure(figsize=(3.4 * len(drawn) + 0.4, 3.2), layout="constrained")
    axes = fig.subplots(1, len(drawn), squeeze=False)[0]
    for ax, key in zip(axes, drawn):
        for i, (run, records) in enumerate(logs.items()):
            points = [(r["step"], r[key]) for r in records
                      if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=run, color=colormaps["tab10"](i % 10), linewidth=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return _save(fig, path)
