"""The 3D-awareness measures side by side in reports: per-sample values from predictions records, means per run,
the order they put runs in, which measure separates two runs and by how much against the seed spread, and the
quartile study of each measure (paper Fig. 2).

The measures (`threedrs.metrics.correspondence`): the paper's score (record key "correspondence"), the
background, the contrast (score - background) and, when computed, the correspondence recall. A higher score
with an equally higher background is no gain in 3D-awareness; the contrast and the recall are the ones that
collapsed or geometry-blind features cannot raise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from threedrs.metrics.report import MIN_QUARTILE_SAMPLES, markdown, quartiles, spearman

__all__ = ["CHANCE", "LABELS", "MEASURES", "SCENE", "Recipe", "Study", "finite_mean", "measure_values", "mean_std",
           "number", "quartile_table", "runs_table", "separation_lines"]

MEASURES: tuple[tuple[str, str], ...] = (("correspondence", "score"), ("background", "background"),
                                         ("contrast", "contrast"), ("recall", "recall"))
"""(predictions record key, label) of each per-sample measure, in report order."""
LABELS = tuple(label for _, label in MEASURES)
_NO_SPREAD = 1e-9  # a spread this small is rounding: the difference is the same in every seed (or scene)
CHANCE = "recall chance"
"""Label of the recall's chance level (record key "recall_chance"), kept beside the measures but not one."""
SCENE = "scene"
"""Label of each record's scene id: the unit of the one-seed standard error (a scene's samples share its frames)."""
Study = dict[str, tuple[dict[str, list], list[float], str]]
"""benchmark -> ({label: per-sample values (`measure_values`)}, per-sample metric values, metric name), one run."""


def number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, "–" when None or not finite."""
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "–"


def finite_mean(values: Sequence[float | None]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return math.fsum(kept) / len(kept) if kept else math.nan


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof = 1) of the finite values; NaN with fewer than two."""
    kept = [v for v in values if math.isfinite(v)]
    return float(np.std(kept, ddof=1)) if len(kept) > 1 else math.nan


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """"mean ± std" over the finite values (just the mean for one, "–" for none)."""
    kept = [v for v in values if math.isfinite(v)]
    if not kept:
        return "–"
    text = f"{finite_mean(kept):.{digits}f}"
    return text + (f" ± {_std(kept):.{digits}f}" if len(kept) > 1 else "")


def measure_values(records: Sequence[Mapping], layer: str) -> dict[str, list]:
    """Label -> the value of each record at ``layer`` (NaN where absent or null), for the measures that at least
    one record holds, in MEASURES order; with a recall also CHANCE -> each record's "recall_chance"; and SCENE ->
    each record's scene id.

    Args:
        records: predictions records (``threedrs.predictions.read_predictions``).
        layer: key of the per-layer mappings, e.g. "-1".
    """
    out = {}
    for key, label in MEASURES:
        if any(isinstance(r.get(key), Mapping) for r in records):
            values = [(r.get(key) or {}).get(layer) for r in records]
            out[label] = [math.nan if v is None else float(v) for v in values]
    if "recall" in out:
        out[CHANCE] = [math.nan if r.get("recall_chance") is None else float(r["recall_chance"]) for r in records]
    return out | {SCENE: [r.get("scene_id") for r in records]}


def runs_table(runs: Mapping[str, Sequence[Mapping[str, Sequence[float]]]]) -> str:
    """Markdown: per run the mean of each measure (and the recall's chance level) over its samples, as mean ± std
    over seeds, and the number of seeds.

    Args:
        runs: run name -> one mapping per seed, label -> per-sample values (NaN = unscored).
    """
    present = {label for seeds in runs.values() for seed in seeds for label in seed}
    labels = [label for label in (*LABELS, CHANCE) if label in present]
    rows = [[name, *(mean_std([finite_mean(seed.get(label, [])) for seed in seeds]) for label in labels),
             str(len(seeds))] for name, seeds in runs.items()]
    return markdown(["run", *labels, "seeds"], rows)


def _scene_means(values: Sequence[float], scenes: Sequence[str]) -> dict[str, float]:
    """Scene id -> the mean of its finite values (scenes without one left out)."""
    groups: dict[str, list[float]] = {}
    for value, scene in zip(values, scenes):
        if math.isfinite(value):
            groups.setdefault(scene, []).append(value)
    return {scene: finite_mean(group) for scene, group in groups.items()}


def _one_seed_error(a: Mapping[str, Sequence], b: Mapping[str, Sequence], label: str) -> tuple[float, str]:
    """(standard error, what it is) of the difference b - a of one seed each: paired over the scenes both runs
    scored when the mappings carry SCENE (the runs saw the same scenes, and a scene's samples share its frames),
    else unpaired over samples. NaN with fewer than two units."""
    if SCENE in a and SCENE in b:
        mean_a, mean_b = _scene_means(a[label], a[SCENE]), _scene_means(b[label], b[SCENE])
        diffs = [mean_b[scene] - mean_a[scene] for scene in mean_a if scene in mean_b]
        error = _std(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
        return error, "the standard error of the per-scene differences"
    x, y = (np.asarray([v for v in s[label] if math.isfinite(v)]) for s in (a, b))
    error = math.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size) if min(x.size, y.size) > 1 else math.nan
    return error, "the standard error over samples"


def _ranking(means: Mapping[str, float]) -> str:
    ordered = sorted((m, run) for run, m in means.items() if math.isfinite(m))
    return " > ".join(f"{run} ({m:.3f})" for m, run in reversed(ordered))


def separation_lines(runs: Mapping[str, Sequence[Mapping[str, Sequence[float]]]], reference: str) -> list[str]:
    """Sentences: the order each measure puts the runs in (and whether score, contrast and recall disagree), and
    for each run against ``reference`` the difference of every measure and which of score, contrast and recall
    separates them most (the background is context: a lower one is no loss of 3D-awareness).

    With several seeds the yardstick is the seed spread: the difference is the mean over seeds of the paired
    per-seed differences (seed k of one run against seed k of the other) and the spread their standard deviation.
    With one seed there is no seed spread; the yardstick is then the standard error of the mean of the per-scene
    differences (each scene's samples averaged first: they share the scene's frames, so their measures are not
    independent; both runs saw the same scenes), or the unpaired error over samples when the mappings carry no
    SCENE. It is a lower bound of the noise, since seeds vary more, and the sentence says which it is.

    Args:
        runs: run name -> one mapping per seed, label -> per-sample values (NaN = unscored), optionally SCENE ->
            per-sample scene ids; seeds in the same order for every run. The reference must be one of the runs.
        reference: the run the others are compared with (e.g. the baseline).
    """
    if reference not in runs:
        raise ValueError(f"reference: {reference!r} is not one of the runs {sorted(runs)}")
    labels = [label for _, label in MEASURES if all(label in seed for seeds in runs.values() for seed in seeds)]
    lines, orders = [], {}
    for label in labels:
        means = {run: finite_mean([finite_mean(seed[label]) for seed in seeds]) for run, seeds in runs.items()}
        if label != "background":  # context, not a measure of 3D-awareness: its order is no verdict
            orders[label] = [run for _, run in sorted((-m, run) for run, m in means.items() if math.isfinite(m))]
        if any(math.isfinite(m) for m in means.values()):
            lines.append(f"- Runs by {label}: {_ranking(means)}.")
    if len({tuple(order) for order in orders.values()}) > 1:
        lines.append("- The measures disagree on the order of the runs: read the contrast (and the recall) before "
                     "the score, which also rises when all features become alike.")
    for run, seeds in runs.items():
        if run == reference:
            continue
        parts, best = [], None
        for label in labels:
            pairs = list(zip(runs[reference], seeds))
            diffs = [finite_mean(b[label]) - finite_mean(a[label]) for a, b in pairs]
            diff = finite_mean(diffs)
            if len(pairs) > 1:
                noise, what = _std(diffs), "the seed spread"
            else:
                noise, what = _one_seed_error(*pairs[0], label)
            if not math.isfinite(diff):
                continue
            flat = math.isfinite(noise) and noise <= _NO_SPREAD
            ratio = abs(diff) / noise if math.isfinite(noise) and not flat else math.nan
            spread = f" ± {noise:.3f}" if len(pairs) > 1 and math.isfinite(noise) else ""
            note = f" ({ratio:.1f}x {what})" if math.isfinite(ratio) else (f" ({what} is 0)" if flat else "")
            parts.append(f"{label} {diff:+.3f}{spread}{note}")
            if label != "background" and math.isfinite(ratio) and (best is None or ratio > best[1]):
                best = (label, ratio, diff, what)
        if not parts:
            continue
        seeds_note = f" over {len(seeds)} seeds" if len(seeds) > 1 else " (one seed: no seed spread; run more seeds)"
        line = f"- {run} minus {reference}{seeds_note}: " + "; ".join(parts) + "."
        if best is not None:
            line += f" The {best[0]} separates them most ({best[2]:+.3f}, {best[1]:.1f}x {best[3]})."
        lines.append(line)
    return lines


def quartile_table(study: Mapping[str, tuple[Mapping[str, Sequence[float]], Sequence[float], str]]) -> str:
    """Markdown: per benchmark and measure, the downstream metric per quartile of the measure (Q1 = lowest),
    Spearman's rho and its p-value. A measure with fewer than MIN_QUARTILE_SAMPLES finite values in a benchmark
    is left out.

    Args:
        study: benchmark -> ({label: N per-sample values}, N per-sample metric values, metric name).
    """
    rows = []
    for benchmark, (measures, values, metric) in study.items():
        for label, scores in measures.items():
            if label not in LABELS or sum(math.isfinite(s) for s in scores) < MIN_QUARTILE_SAMPLES:
                continue
            rho, p = spearman(scores, values)
            q = quartiles(scores, values)
            rows.append([benchmark, label, metric, str(sum(r.count for r in q)), *(f"{r.mean_metric:.1f}" for r in q),
                         f"{rho:+.3f}" if math.isfinite(rho) else "–", f"{p:.2g}" if math.isfinite(p) else "–"])
    return markdown(["benchmark", "measure", "metric", "samples", "Q1 (lowest)", "Q2", "Q3", "Q4 (highest)",
                     "Spearman ρ", "p"], rows)


class Recipe:
    """The 3D-awareness of one recipe's runs (its seeds): one `Study` per seed, as the reports read them.

    A measure that some seed or benchmark does not record counts as NaN (unscored) for each of its samples, so
    the values of a measure always line up with the metric values and the scene ids.
    """

    def __init__(self, seeds: Sequence[Study]):
        if not seeds:
            raise ValueError("seeds: a recipe needs at least one run")
        self.seeds = list(seeds)

    def benchmarks(self) -> list[str]:
        """The benchmarks of the first seed, in its order."""
        return list(self.seeds[0])

    def per_seed(self) -> list[dict[str, list]]:
        """Per seed, label -> its values over every sample of every benchmark (recall chance and scene ids too)."""
        found = list(dict.fromkeys(label for seed in self.seeds for m, _, _ in seed.values() for label in m))
        return [{label: [v for m, values, _ in seed.values() for v in m.get(label, [math.nan] * len(values))]
                 for label in found} for seed in self.seeds]

    def labels(self) -> list[str]:
        """The measures (not the chance level) that some sample records, in report order."""
        found = {label for seed in self.seeds for m, _, _ in seed.values() for label in m}
        return [label for label in LABELS if label in found]

    def benchmark_mean(self, label: str, benchmark: str) -> float:
        """Mean over seeds of the mean over the benchmark's samples (NaN when unscored)."""
        return finite_mean([finite_mean(seed[benchmark][0].get(label, [])) for seed in self.seeds
                            if benchmark in seed])

    def study(self) -> Study:
        """benchmark -> ({label: values}, metric values, metric name), the samples of all seeds pooled."""
        out = {}
        for benchmark in self.benchmarks():
            seeds = [seed[benchmark] for seed in self.seeds if benchmark in seed]
            measures = {label: [v for m, values, _ in seeds for v in m.get(label, [math.nan] * len(values))]
                        for label in self.labels()}
            out[benchmark] = (measures, [v for _, values, _ in seeds for v in values], seeds[0][2])
        return out
