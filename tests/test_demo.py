"""The demo end to end at a miniature size: every stage runs and the report holds every table and figure."""

from __future__ import annotations

import pytest

from threedrs.demo import DemoSize, run_demo

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
    for image in ("before_after.png", "training_curves.png"):
        assert (tmp_path / "demo" / image).stat().st_size > 1000
    out = capsys.readouterr().out
    assert "Mean 3D-awareness (last layer, val): baseline" in out
    # a second run reuses every finished stage and rewrites the same report
    again = run_demo(tmp_path / "demo", size=TINY)
    assert again.read_text().split("## Stage times")[0] == text.split("## Stage times")[0]
