"""The correlation study (quartiles, Spearman), the report tables, the PNG figures and `threedrs report` end to end."""

from __future__ import annotations

import argparse
import json
import math
import os
import re

import matplotlib
import numpy as np
import pytest
from scipy.stats import spearmanr
from test_scoring import SCANQA, SCANREFER, SQA3D, FakeMeteor, base, cube, make_run

from threedrs import eval_report, scoring
from threedrs.metrics import awareness, report
from threedrs.metrics.plots import plot_before_after, plot_quartiles, plot_training_curves
from threedrs.metrics.report import (
    aggregate_seeds,
    delta_table,
    detail_table,
    quartiles,
    results_table,
    spearman,
    table1_row,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_quartiles_eight_samples_two_per_quartile() -> None:
    scores = [0.8, 0.1, 0.5, 0.3, 0.9, 0.2, 0.6, 0.4]
    values = [100, 0, 50, 0, 100, 100, 0, 50]
    rows = quartiles(scores, values)
    # sorted by score: (0.1, 0) (0.2, 100) | (0.3, 0) (0.4, 50) | (0.5, 50) (0.6, 0) | (0.8, 100) (0.9, 100)
    assert [r.quartile for r in rows] == [1, 2, 3, 4]
    assert [r.count for r in rows] == [2, 2, 2, 2]
    assert [(r.score_min, r.score_max) for r in rows] == [(0.1, 0.2), (0.3, 0.4), (0.5, 0.6), (0.8, 0.9)]
    assert [r.mean_score for r in rows] == pytest.approx([0.15, 0.35, 0.55, 0.85])
    assert [r.mean_metric for r in rows] == pytest.approx([50, 25, 25, 100])


def test_quartiles_skip_unscored_samples_and_split_by_rank() -> None:
    scores = [0.9, math.nan, 0.1, None, 0.5, 0.2, 0.7, 0.3, 0.4, 0.6, 0.8, math.inf]
    values = [9, 99, 1, 99, 5, 2, 7, 3, 4, 6, 8, 99]
    rows = quartiles(scores, values)
    assert [r.count for r in rows] == [3, 2, 2, 2]  # 9 scored samples: the lowest quartile takes the extra one
    assert [r.mean_metric for r in rows] == pytest.approx([2, 4.5, 6.5, 8.5])


def test_quartiles_ties_keep_input_order() -> None:
    rows = quartiles([1.0] * 8, [0, 1, 2, 3, 4, 5, 6, 7])
    assert [r.mean_metric for r in rows] == [0.5, 2.5, 4.5, 6.5]


@pytest.mark.parametrize("scores, values, match", [
    ([0.1, 0.2, 0.3], [1, 2], "same length"),
    ([0.1, 0.2, 0.3, math.nan], [1, 2, 3, 4], "at least 4 samples with a finite score, got 3"),
    ([0.1, 0.2, 0.3, 0.4], [1, math.nan, 3, 4], "sample 1 has a score but a non-finite metric value"),
])
def test_quartiles_bad_input(scores, values, match) -> None:
    with pytest.raises(ValueError, match=match):
        quartiles(scores, values)


def test_spearman_against_scipy_and_nan_safe() -> None:
    rng = np.random.default_rng(4)
    scores = rng.normal(size=40)
    values = scores + rng.normal(size=40)
    scores[[3, 17]] = np.nan
    values[25] = np.nan
    keep = np.isfinite(scores) & np.isfinite(values)
    expected = spearmanr(scores[keep], values[keep])
    rho, p = spearman(scores.tolist(), values.tolist())
    assert (rho, p) == pytest.approx((expected.statistic, expected.pvalue))
    assert 0 < rho < 1 and p < 0.05
    assert all(math.isnan(x) for x in spearman([0.1, 0.2, 0.3, 0.4], [5, 5, 5, 5]))
    assert all(math.isnan(x) for x in spearman([0.1, math.nan, 0.3], [1, 2, 3]))
    assert spearman([0.1, 0.2, 0.3, 0.4], [4, 3, 2, 1])[0] == pytest.approx(-1.0)


def metrics_of(**benchmarks) -> dict:
    return {"benchmarks": benchmarks, "meteor": False}


BASELINE = metrics_of(scanrefer={"overall": {"Acc@0.25": 50.0, "Acc@0.5": 40.0, "count": 4}},
                      sqa3d={"overall": {"EM": 60.0, "EM-refined": 70.0, "count": 4}})
THREEDRS = metrics_of(scanrefer={"overall": {"Acc@0.25": 52.5, "Acc@0.5": 39.0, "count": 4}},
                      sqa3d={"overall": {"EM": 61.0, "EM-refined": 70.0, "count": 4}})


def test_results_table_layout_missing_benchmarks_and_chance() -> None:
    table = results_table({"baseline": BASELINE, "3DRS": THREEDRS}, with_chance={"ScanRefer Acc@0.25": 12.5})
    lines = table.splitlines()
    assert lines[0] == ("| run | ScanRefer Acc@0.25 | ScanRefer Acc@0.5 | Multi3DRefer F1@0.25 | Multi3DRefer F1@0.5 | "
                        "Scan2Cap C@0.5 | Scan2Cap B-4@0.5 | ScanQA C | ScanQA EM | SQA3D EM |")
    assert lines[2] == "| baseline | 50.0 | 40.0 | – | – | – | – | – | – | 60.0 |"
    assert lines[3] == "| 3DRS | 52.5 | 39.0 | – | – | – | – | – | – | 61.0 |"
    assert lines[4] == "| chance | 12.5 | – | – | – | – | – | – | – | – |"
    with pytest.raises(ValueError, match="with_chance: unknown column 'ScanRefer'"):
        results_table({"a": BASELINE}, with_chance={"ScanRefer": 1.0})
    with pytest.raises(ValueError, match="runs: no run"):
        results_table({})
    with pytest.raises(ValueError, match="'benchmarks' mapping"):
        table1_row({"scanrefer": {}})


def test_delta_table_is_second_minus_first() -> None:
    lines = delta_table(BASELINE, THREEDRS).splitlines()
    assert lines[0] == "| metric | baseline | 3DRS | 3DRS − baseline |"
    assert "| ScanRefer Acc@0.25 | 50.0 | 52.5 | +2.5 |" in lines
    assert "| ScanRefer Acc@0.5 | 40.0 | 39.0 | -1.0 |" in lines
    assert "| SQA3D EM | 60.0 | 61.0 | +1.0 |" in lines
    assert "| ScanQA C | – | – | – |" in lines


def test_aggregate_seeds_mean_and_sample_std() -> None:
    seeds = [metrics_of(sqa3d={"overall": {"EM": em, "count": 4}, "which": {"EM": None, "count": 0}})
             for em in (50.0, 60.0, 70.0)]
    agg = aggregate_seeds(seeds)
    mean, std = agg["benchmarks"]["sqa3d"]["overall"]["EM"]
    assert mean == pytest.approx(60.0)
    assert std == pytest.approx(math.sqrt(((50 - 60) ** 2 + 0 + (70 - 60) ** 2) / 2))  # ddof = 1: 10
    assert agg["benchmarks"]["sqa3d"]["overall"]["count"] == (4.0, 0.0)
    assert all(math.isnan(x) for x in agg["benchmarks"]["sqa3d"]["which"]["EM"])
    assert agg["meteor"] is False
    assert "| seeds | – | – | – | – | – | – | – | – | 60.0 ± 10.0 |" in results_table({"seeds": agg})
    assert math.isnan(aggregate_seeds(seeds[:1])["benchmarks"]["sqa3d"]["overall"]["EM"][1])
    with pytest.raises(ValueError, match=r"metrics\[1\]: the keys of metrics.benchmarks differ"):
        aggregate_seeds([BASELINE, metrics_of(scanrefer=BASELINE["benchmarks"]["scanrefer"])])
    with pytest.raises(ValueError, match="metrics.meteor differs between runs"):
        aggregate_seeds([BASELINE, {**BASELINE, "meteor": True}])
    with pytest.raises(ValueError, match="no run to aggregate"):
        aggregate_seeds([])


def test_detail_table_grouped_and_flat() -> None:
    grouped = detail_table({"overall": {"EM": 75.0, "count": 4}, "which": {"EM": math.nan, "count": 0}})
    assert grouped.splitlines() == ["| group | EM | count |", "|---|---|---|", "| overall | 75.0 | 4 |",
                                    "| which | – | 0 |"]
    flat = detail_table({"count": 3, "CIDEr": 12.34, "detected": 2})
    assert flat.splitlines()[0] == "|  | CIDEr | count | detected |"
    assert flat.splitlines()[2] == "| all | 12.3 | 3 | 2 |"


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1024


def test_plots_write_png_without_touching_matplotlib_state(tmp_path) -> None:
    backend = matplotlib.rcParams["backend"]
    rng = np.random.default_rng(0)
    scores = rng.normal(size=40)
    values = 100.0 * (scores + rng.normal(size=40) > 0)
    out = plot_quartiles({"scanrefer": (scores, values, "Acc@0.25"), "sqa3d": (scores, values / 2, "EM")},
                         tmp_path / "figs" / "q.png", "quartiles")
    assert out == tmp_path / "figs" / "q.png"
    assert_png(out)
    assert_png(plot_before_after({"score": {"baseline": {"scanrefer": 0.3, "sqa3d": math.nan},
                                            "3DRS": {"scanrefer": 0.5, "sqa3d": 0.4}},
                                  "contrast": {"baseline": {"scanrefer": 0.1}, "3DRS": {"scanrefer": -0.1}}},
                                 tmp_path / "b.png"))
    logs = {"baseline": [{"step": s, "loss": 1 / s, "lm_loss": 0.5 / s} for s in range(1, 6)],
            "3DRS": [{"step": s, "loss": 1.2 / s, "align_loss": 0.3 / s} for s in range(1, 6)]}
    assert_png(plot_training_curves(logs, tmp_path / "t.png"))
    assert matplotlib.rcParams["backend"] == backend


def test_plots_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="per_benchmark: no benchmark"):
        plot_quartiles({}, tmp_path / "q.png", "t")
    with pytest.raises(ValueError, match="at least 4 samples"):
        plot_quartiles({"scanqa": ([0.1, 0.2], [1, 2], "EM")}, tmp_path / "q.png", "t")
    with pytest.raises(ValueError, match="means: no measure"):
        plot_before_after({}, tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"means\['score'\]: no run"):
        plot_before_after({"score": {}}, tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"logs\['a'\]\[1\]: a train-log record needs a 'step'"):
        plot_training_curves({"a": [{"step": 1, "loss": 1.0}, {"loss": 0.5}]}, tmp_path / "t.png")
    with pytest.raises(ValueError, match="none of the keys"):
        plot_training_curves({"a": [{"step": 1, "lr": 1.0}]}, tmp_path / "t.png")
    assert not list(tmp_path.iterdir())


def scored(records: list[dict], scores: list[float | None]) -> list[dict]:
    return [{**r, "correspondence": {"-1": s}} if s is not None else {k: v for k, v in r.items()
                                                                         if k != "correspondence"}
            for r, s in zip(records, scores)]


# 8 ScanRefer samples: hits 1, 1, 0, 1 twice; the second run has higher scores.
REFER8 = SCANREFER + [{**r, "id": r["id"] + "b"} for r in SCANREFER]
RUNS = {
    "baseline": {"scanrefer": scored(REFER8, [0.5, 0.4, 0.1, 0.3, 0.6, 0.45, 0.2, 0.35]),
                 "scanqa": scored(SCANQA, [0.2, 0.3, 0.1, 0.4]),
                 "sqa3d": scored(SQA3D, [None, None, 0.3, None])},
    "3DRS": {"scanrefer": scored(REFER8, [0.7, 0.8, 0.3, 0.75, 0.9, 0.85, 0.2, 0.6]),
             "scanqa": scored(SCANQA, [0.6, 0.5, 0.2, 0.7]),
             "sqa3d": scored(SQA3D, [None] * 4)},
}


def make_runs(tmp_path) -> list:
    dirs = []
    for name, benchmarks in RUNS.items():
        dirs.append(make_run(tmp_path / f"run_{name}", benchmarks))
    (dirs[1] / "train_log.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 2.0 / s, "lm_loss": 1.0 / s, "align_loss": 1.0 / s}) + "\n"
        for s in range(1, 5)))
    return dirs


def test_main_report_end_to_end(tmp_path, capsys) -> None:
    dirs = make_runs(tmp_path)
    eval_report.main_report(argparse.Namespace(runs=[str(d) for d in dirs], out=str(tmp_path / "out"),
                                          names="baseline,3DRS", layer="-1", no_meteor=True))
    assert "| baseline | 75.0 | 50.0 |" in capsys.readouterr().out
    text = (tmp_path / "out" / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(images) == ["before_after.png", "quartiles_0_baseline.png", "quartiles_1_3DRS.png",
                              "training_curves.png"]
    for image in images:
        assert_png(tmp_path / "out" / image)
    for run in dirs:
        assert (run / "metrics.json").is_file()
    # Spearman rho of each run and benchmark, as scipy gives it on the same pairs
    for benchmarks in RUNS.values():
        for benchmark in ("scanrefer", "scanqa"):
            scores = [r["correspondence"]["-1"] for r in benchmarks[benchmark]]
            values = scoring.per_sample_values(benchmark, benchmarks[benchmark])[1]
            assert f"| {spearmanr(scores, values).statistic:+.3f} |" in text
    # 3DRS quartiles of ScanRefer: hits sorted by score: (0.2: 0, 0.3: 0) (0.6: 1, 0.7: 1) ... -> 0, 100, 100, 100
    assert "| scanrefer | Q1 | 0.200 – 0.300 | 0.250 | 0.0 | 2 |" in text
    assert "| scanrefer | Q2 | 0.600 – 0.700 | 0.650 | 100.0 | 2 |" in text
    assert "| scanqa | score | EM-refined | 4 | 0.0 | 100.0 | 100.0 | 100.0 |" in text
    assert "baseline / sqa3d: 1 of 4 samples have a 3D-awareness score at layer -1; no quartiles" in text
    assert "3DRS / sqa3d: 0 of 4 samples" in text
    assert "## 3DRS minus baseline" in text and "| ScanRefer Acc@0.25 | 75.0 | 75.0 | +0.0 |" in text
    mean_refer = np.mean([r["correspondence"]["-1"] for r in RUNS["3DRS"]["scanrefer"]])
    mean_base = math.fsum([0.5, 0.4, 0.1, 0.3, 0.6, 0.45, 0.2, 0.35]) / 8  # 0.3625 exactly: prints 0.362
    assert f"| scanrefer | {mean_base:.3f} | {mean_refer:.3f} |" in text
    assert "| sqa3d | 0.300 | – |" in text
    assert "- Runs by score: 3DRS (" in text and "x the standard error of the per-scene differences)" in text


def test_report_reuses_fresh_metrics_and_rescores_stale(tmp_path, monkeypatch) -> None:
    run = make_run(tmp_path / "run", {"scanrefer": RUNS["3DRS"]["scanrefer"]})
    eval_report.build_report({"a": run}, tmp_path / "out", meteor=False)
    calls = []
    real = scoring.score_run
    monkeypatch.setattr(eval_report, "score_run", lambda *a, **k: calls.append(a) or real(*a, **k))
    eval_report.build_report({"a": run}, tmp_path / "out", meteor=False)
    assert calls == []  # metrics.json is newer than the predictions and covers them
    newer = (run / "metrics.json").stat().st_mtime + 10
    os.utime(run / "predictions" / "scanrefer.jsonl", (newer, newer))
    eval_report.build_report({"a": run}, tmp_path / "out", meteor=False)
    assert len(calls) == 1
    make_run(run, {"scanqa": SCANQA})  # a new predictions file: metrics.json no longer covers the run
    eval_report.build_report({"a": run}, tmp_path / "out", meteor=False)
    assert len(calls) == 2 and "scanqa" in scoring.load_metrics(run / "metrics.json")["benchmarks"]


def test_report_reuses_metrics_with_an_unscored_scanqa_test_file(tmp_path, monkeypatch) -> None:
    """A ScanQA test-split file (no answers) is listed under metrics["unscored"]: fresh metrics still cover it."""
    unanswered = [{**r, "answers": []} for r in SCANQA]
    run = make_run(tmp_path / "run", {"scanqa": unanswered, "scanrefer": RUNS["3DRS"]["scanrefer"]})
    eval_report.build_report({"a": run}, tmp_path / "out", meteor=False)
    assert set(scoring.load_metrics(run / "metrics.json")["unscored"]) == {"scanqa"}
    calls = []
    real = scoring.score_run
    monkeypatch.setattr(eval_report, "score_run", lambda *a, **k: calls.append(a) or real(*a, **k))
    eval_report.build_report({"a": run}, tmp_path / "out", meteor=False)
    eval_report.build_report({"a": run}, tmp_path / "out", meteor=True)  # no scored caption file needs METEOR
    assert calls == []


def test_report_without_scores_and_bad_arguments(tmp_path) -> None:
    run = make_run(tmp_path / "plain", {"sqa3d": SQA3D, "multi3drefer": [base(0, "mt", pred_boxes=[cube()],
                                                                               gt_boxes=[cube(), cube(3)],
                                                                               scores=[1.0, 0.0])]})
    text = eval_report.build_report({"plain": run}, tmp_path / "out", meteor=False).read_text()
    assert "No benchmark has enough 3D-awareness scores." in text and "![" not in text
    assert not list((tmp_path / "out").glob("*.png"))
    def args(names):
        return argparse.Namespace(runs=[str(run), str(run)], out="o", names=names, layer="-1", no_meteor=True)

    with pytest.raises(ValueError, match="--names: 1 names for 2 runs"):
        eval_report.main_report(args("a"))
    with pytest.raises(ValueError, match="runs: the same folder is given twice"):
        eval_report.main_report(args(None))
    with pytest.raises(ValueError, match="runs: no run to report"):
        eval_report.build_report({}, tmp_path / "out")


def test_read_train_log(tmp_path) -> None:
    path = tmp_path / "train_log.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": 1.5}\n')
    assert report.read_train_log(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n')
    with pytest.raises(ValueError, match=r"train_log\.jsonl, line 2: malformed JSON"):
        report.read_train_log(path)
    path.write_text('{"loss": 2.0}\n')
    with pytest.raises(ValueError, match=r"train_log\.jsonl, line 1: expected an object with a numeric 'step'"):
        report.read_train_log(path)


def test_report_rescores_when_meteor_is_wanted_and_missing(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(scoring, "MeteorSession", FakeMeteor)
    monkeypatch.setattr(FakeMeteor, "opened", 0)
    run = make_run(tmp_path / "run", {"scanqa": RUNS["3DRS"]["scanqa"]})
    eval_report.build_report({"a": run}, tmp_path / "out", meteor=False)
    assert FakeMeteor.opened == 0 and not scoring.load_metrics(run / "metrics.json")["meteor"]
    eval_report.build_report({"a": run}, tmp_path / "out", meteor=True)  # cached metrics lack METEOR: re-scored
    assert FakeMeteor.opened == 1 and scoring.load_metrics(run / "metrics.json")["meteor"]
    eval_report.build_report({"a": run}, tmp_path / "out", meteor=True)
    eval_report.build_report({"a": run}, tmp_path / "out", meteor=False)  # METEOR present but not needed: reused
    assert FakeMeteor.opened == 1


def measured(records: list[dict], score, background, recall) -> list[dict]:
    """Records with every 3D-awareness measure at layer -1 (contrast = score - background), recall chance 0.1."""
    return [{**r, "correspondence": {"-1": s}, "background": {"-1": b}, "contrast": {"-1": s - b},
             "recall": {"-1": c}, "recall_chance": 0.1} for r, s, b, c in zip(records, score, background, recall)]


def test_report_sets_the_measures_side_by_side_over_seeds(tmp_path, capsys) -> None:
    """Two recipes x two seeds: "new" has the LOWER score but the higher contrast and recall; the report's runs
    table gives mean ± std over seeds, and its sentences name the contrast as what separates the recipes, with the
    paired per-seed differences against their spread."""
    i = np.arange(8)
    recipes = {"base": [(0.80 + 0.01 * i, 0.10 + 0.001 * i, 0.2 + 0.01 * i),
                        (0.82 + 0.01 * i, 0.102 + 0.001 * i, 0.21 + 0.01 * i)],
               "new": [(0.70 + 0.01 * i, 0.30 + 0.001 * i, 0.5 + 0.01 * i),
                       (0.71 + 0.01 * i, 0.304 + 0.001 * i, 0.52 + 0.01 * i)]}
    dirs, names = [], []
    for name, seeds in recipes.items():
        for k, (score, contrast, recall) in enumerate(seeds):
            dirs.append(str(make_run(tmp_path / f"{name}{k}", {"scanrefer": measured(REFER8, score, score - contrast,
                                                                                       recall)})))
            names.append(name)
    eval_report.main_report(argparse.Namespace(runs=dirs, out=str(tmp_path / "out"), names=",".join(names),
                                               layer="-1", no_meteor=True))
    assert "| base | 75.0 ± 0.0 |" in capsys.readouterr().out  # Table 1 aggregated over the two seeds
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| run | score | background | contrast | recall | recall chance | seeds |" in text
    base_scores = [float(np.mean(s)) for s, _, _ in recipes["base"]]
    assert f"| base | {np.mean(base_scores):.3f} ± {np.std(base_scores, ddof=1):.3f} |" in text
    for label, column in (("score", 0), ("contrast", 1), ("recall", 2)):
        diffs = [float(np.mean(n[column]) - np.mean(b[column])) for b, n in zip(recipes["base"], recipes["new"])]
        mean, spread = np.mean(diffs), np.std(diffs, ddof=1)
        assert (f"{label} {mean:+.3f} ± {spread:.3f} ({abs(mean) / spread:.1f}x the seed spread)") in text
    assert "- new minus base over 2 seeds:" in text and "The contrast separates them most" in text
    assert "- Runs by score: base (" in text and "- Runs by contrast: new (" in text
    assert "The measures disagree on the order of the runs" in text
    for label in ("score", "background", "contrast", "recall"):
        assert f"| scanrefer | {label} | Acc@0.25 | 16 |" in text  # quartiles over both seeds' samples
    assert "Each cell: score / background / contrast / recall." in text


def test_measure_values_and_separation_edge_cases() -> None:
    records = measured(REFER8[:2], [0.9, 0.8], [0.5, 0.5], [0.4, 0.2])
    records[1]["recall"] = {"-1": None}
    values = awareness.measure_values(records + [dict(REFER8[2])], "-1")
    assert list(values) == ["score", "background", "contrast", "recall", "recall chance", "scene"]
    assert values["scene"] == ["scene0000_00", "scene0001_00", "scene0002_00"]
    assert values["contrast"][:2] == pytest.approx([0.4, 0.3]) and math.isnan(values["contrast"][2])
    assert values["recall"][0] == 0.4 and math.isnan(values["recall"][1])
    at_zero = awareness.measure_values(REFER8, "0")["score"]  # the records hold scores at layer -1 only
    assert len(at_zero) == 8 and all(math.isnan(v) for v in at_zero)
    with pytest.raises(ValueError, match="reference: 'nope' is not one of the runs"):
        awareness.separation_lines({"a": [{"score": [0.5]}]}, "nope")
    assert awareness.separation_lines({"a": [{"score": [math.nan]}], "b": [{"score": [math.nan]}]}, "a") == []


def test_recipe_lines_up_measures_a_seed_does_not_record() -> None:
    """A recipe whose second seed recorded no recall: the pooled study and each seed's values keep one value per
    sample (NaN where unrecorded), so the recall's quartiles pair each value with its own sample's metric."""
    with_recall = {"scanrefer": ({"score": [0.9, 0.8], "recall": [0.5, 0.4], "scene": ["a", "b"]}, [100.0, 0.0],
                                 "Acc@0.25")}
    without = {"scanrefer": ({"score": [0.7, 0.6], "scene": ["a", "b"]}, [0.0, 100.0], "Acc@0.25"),
               "sqa3d": ({"score": [0.2]}, [100.0], "EM")}
    recipe = awareness.Recipe([without, with_recall])
    assert recipe.labels() == ["score", "recall"] and recipe.benchmarks() == ["scanrefer", "sqa3d"]
    measures, values, metric = recipe.study()["scanrefer"]
    assert values == [0.0, 100.0, 100.0, 0.0] and metric == "Acc@0.25"
    assert measures["score"] == [0.7, 0.6, 0.9, 0.8]
    assert all(math.isnan(v) for v in measures["recall"][:2]) and measures["recall"][2:] == [0.5, 0.4]
    first, second = recipe.per_seed()
    assert len(first["recall"]) == 3 and all(math.isnan(v) for v in first["recall"])
    assert second["recall"] == [0.5, 0.4] and second["scene"] == ["a", "b"]
    assert recipe.benchmark_mean("score", "sqa3d") == pytest.approx(0.2)
    assert recipe.benchmark_mean("recall", "scanrefer") == pytest.approx(0.45)
    with pytest.raises(ValueError, match="seeds: a recipe needs at least one run"):
        awareness.Recipe([])
