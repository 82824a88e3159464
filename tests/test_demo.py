"""The demo end to end at a miniature size: every stage runs and the report holds every table and figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_report import REFER8, measured
from test_scoring import make_run

from threedrs.demo import RUNS, DemoSize, run_demo
from threedrs.demo_recipes import StageTimes
from threedrs.demo_report import DemoResults, write_report
from threedrs.scoring import score_run

TINY = DemoSize(scenes=6, scan_frames=6, frames=4, image=28, steps=3, batch_size=2, eval_limit=4, width=64,
                height=48)


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_the_report(tmp_path, capsys):
    report = run_demo(tmp_path / "demo", size=TINY)
    text = report.read_text()
    for heading in ("3DRS vs baseline (paper Table 3 in miniature)", "Teachers (paper Table 4 in miniature)",
                    "3D-awareness of the visual tokens (paper Fig. 3b)", "Training curves", "Stage times"):
        assert heading in text
    assert "| chance |" in text and "ORACLE" in text
    assert "| run | score | background | contrast | recall | recall chance | seeds |" in text
    # 2x2 tokens per frame at 0.1 m voxels hold no cross-view pair: every measure is unscored, and says so
    assert "| baseline | – | – | – | – | – | 1 |" in text and "Runs by score" not in text
    for image in ("before_after.png", "training_curves.png"):
        assert (tmp_path / "demo" / image).stat().st_size > 1000
    out = capsys.readouterr().out
    assert "Mean 3D-awareness (last layer, val): baseline" in out
    assert "| 3DRS-2D | – |" in out
    # a second run reuses every finished stage and rewrites the same report
    again = run_demo(tmp_path / "demo", size=TINY)
    assert again.read_text().split("## Stage times")[0] == text.split("## Stage times")[0]


def test_demo_report_names_the_measure_that_separates_the_runs(tmp_path, capsys):
    """The issue's situation in miniature: the 2D-teacher run has the lowest score but the highest contrast. Two
    samples per scene; a run-specific curvature over the samples (mean 0) makes the per-scene differences vary."""
    i = np.arange(8) - 3.5
    bend = i ** 2 - np.mean(i ** 2)
    measures = {"baseline": (0.849, 0.414, 0.30, 0.0), "3DRS": (0.926, 0.430, 0.35, 0.001),
                "3DRS-2D": (0.768, 0.206, 0.40, 0.002)}  # score, background, recall, curvature
    results = DemoResults(size=DemoSize(scenes=4, scan_frames=4, frames=2, image=28, steps=1), runs=RUNS, seeds=[0])
    for name, (score, background, recall, curve) in measures.items():
        records = measured(REFER8, score + 0.01 * i + curve * bend, background + 0.004 * i,
                           recall + 0.02 * i + 10 * curve * bend)
        for k, record in enumerate(records):
            record["scene_id"] = f"scene{k // 2:04d}_00"
        run = make_run(tmp_path / "runs" / name, {"scanrefer": records})
        results.metrics[(name, 0)] = score_run(run, meteor=False)
        results.eval_dirs[(name, 0)] = run
        results.logs[(name, 0)] = run / "no_train_log.jsonl"
    text = write_report(tmp_path, results, StageTimes()).read_text()
    assert "| 3DRS-2D | 0.768 | 0.206 | 0.562 | 0.400 | 0.100 | 1 |" in text
    assert "- Runs by score: 3DRS (0.926) > baseline (0.849) > 3DRS-2D (0.768)." in text
    assert "- Runs by contrast: 3DRS-2D (0.562) > 3DRS (0.496) > baseline (0.435)." in text
    assert "The measures disagree on the order of the runs" in text
    # the yardstick: the standard error of the mean of the 4 per-scene differences
    per_scene = (0.002 * bend).reshape(4, 2).mean(axis=1)
    error = float(np.std(per_scene, ddof=1) / math.sqrt(4))
    assert (f"- 3DRS-2D minus baseline (one seed: no seed spread; run more seeds): score -0.081 "
            f"({0.081 / error:.1f}x the standard error of the per-scene differences)") in text
    assert f"contrast +0.127 ({0.127 / error:.1f}x the standard error of the per-scene differences)" in text
    assert f"recall +0.100 ({0.100 / (10 * error):.1f}x the standard error" in text
    assert "background -0.208 (the standard error of the per-scene differences is 0)" in text
    assert "The contrast separates them most (+0.127" in text
    assert "| scanrefer | recall | Acc@0.25 | 8 |" in text
    assert "- Runs by contrast: 3DRS-2D (0.562)" in capsys.readouterr().out
