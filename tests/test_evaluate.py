"""End to end on a tiny SynthRooms set: train a few steps, evaluate all five benchmarks, score, report."""

from __future__ import annotations

import json
import math

import pytest

from threedrs.cli import main
from threedrs.config import load_config
from threedrs.data.instances import SceneDataError
from threedrs.data.tasks import load_benchmark
from threedrs.evaluate import evaluate
from threedrs.extract import extract
from threedrs.train import train

BENCHMARKS = ("scanrefer", "multi3drefer", "scan2cap", "scanqa", "sqa3d")


def make_config(root, work, *extra):
    return load_config(None, [
        f"data.root={root}", "data.frames=4", f"output_dir={work}/run", f"teacher.cache_dir={work}/cache",
        "teacher.grid=[3,4]", "teacher.channels=32", "teacher.batch_frames=4", "model.image_size=[42,56]",
        "train.steps=3", "train.save_every=3", "eval.limit=5", "eval.max_new_tokens=6", "eval.probe=true",
        "eval.probe_layers=[-1,0]", "eval.meteor=false", "data.frames=6",
        "correspondence.voxel=1.0",  # 3x4 tokens on 64x48 frames: 0.1 m voxels hold almost no cross-view pair
        *extra])


@pytest.fixture(scope="module")
def trained(synthrooms_tiny, tmp_path_factory):
    work = tmp_path_factory.mktemp("evaluate")
    cfg = make_config(synthrooms_tiny, work)
    extract(cfg)
    train(cfg, progress=False)
    return synthrooms_tiny, work


def finite_numbers(node):
    """Every number of a metrics dict, skipping groups with count 0 (their means are undefined)."""
    if isinstance(node, dict):
        if node.get("count") == 0:
            return []
        return [x for v in node.values() for x in finite_numbers(v)]
    return [node] if isinstance(node, (int, float)) and not isinstance(node, bool) else []


def test_evaluate_all_benchmarks_writes_predictions_and_finite_scores(trained):
    root, work = trained
    cfg = make_config(root, work)
    result = evaluate(cfg, progress=False)
    for bench in BENCHMARKS:
        lines = (result.run_dir / "predictions" / f"{bench}.jsonl").read_text().splitlines()
        expected = [s.id for s in load_benchmark(root, bench, "val", cfg.data.label_map)[:5]]
        assert [json.loads(line)["id"] for line in lines] == expected
        first = json.loads(lines[0])
        assert set(first["correspondence"]) == set(first["background"]) == set(first["contrast"]) == {"-1", "0"}
        scored = {layer: score for layer, score in first["correspondence"].items() if score is not None}
        assert scored, f"{bench}: no probed layer of the first sample has a score"
        for layer, score in scored.items():  # the contrast is the score minus the background
            assert first["contrast"][layer] == pytest.approx(score - first["background"][layer], abs=1e-12)
    numbers = finite_numbers(result.metrics["benchmarks"])
    assert numbers and all(math.isfinite(x) for x in numbers)
    stored = json.loads((result.run_dir / "metrics.json").read_text())
    assert stored["benchmarks"]["scanrefer"]["overall"] == result.metrics["benchmarks"]["scanrefer"]["overall"]
    assert (result.run_dir / "metrics.md").read_text().count("|") > 20


def test_probe_measures_are_computed_once_per_scene(trained, tmp_path, monkeypatch):
    """eval --probe: a scene's visual tokens precede every text that differs between its samples (prompt, answer,
    Scan2Cap's <coord>), so its samples share their measures: computed once per scene, layer and benchmark, and
    the probe's forward pass of a generation batch runs only when the batch holds a scene not measured yet."""
    from threedrs import evaluate as evaluate_module
    from threedrs.models.qwen2_vl import Qwen2VLAdapter

    root, work = trained
    cfg = make_config(root, work, "eval.benchmarks=[multi3drefer,scanqa]", "eval.limit=8", "eval.batch_size=2",
                      "correspondence.recall=true")
    scored, forwards = [], []
    score, forward = evaluate_module.correspondence_score, Qwen2VLAdapter.forward
    monkeypatch.setattr(evaluate_module, "correspondence_score", lambda *a, **k: scored.append(1) or score(*a, **k))
    monkeypatch.setattr(Qwen2VLAdapter, "forward", lambda *a, **k: forwards.append(1) or forward(*a, **k))
    result = evaluate(cfg, run_dir=tmp_path / "run", progress=False)
    scenes = 0
    for bench in ("multi3drefer", "scanqa"):
        records = [json.loads(x) for x in (result.run_dir / "predictions" / f"{bench}.jsonl").read_text().splitlines()]
        assert len(records) == 8
        by_scene: dict[str, list[dict]] = {}
        for r in records:
            by_scene.setdefault(r["scene_id"], []).append(r)
        scenes += len(by_scene)
        for group in by_scene.values():
            measures = [{k: r[k] for k in ("correspondence", "background", "contrast", "recall", "recall_chance",
                                           "pairs")} for r in group]
            assert all(m == measures[0] for m in measures)
            assert any(v is not None for v in measures[0]["correspondence"].values())
    assert scenes == 4  # the first 8 samples of each benchmark come from two val rooms (the test's premise)
    assert len(scored) == scenes * 2  # two probed layers
    # multi3drefer: 4 batches of 2, one forward each (grounding needs it); scanqa: its batches hold samples of
    # scene0000_00 x 6 then scene0001_00 x 2, so only the first and the fourth batch run the probe's forward
    assert len(forwards) == 4 + 2


def test_rerun_skips_done_ids_and_redoes_a_cut_line(trained):
    root, work = trained
    cfg = make_config(root, work, "eval.benchmarks=[scanqa]")
    run = evaluate(cfg, run_dir=work / "again", progress=False).run_dir
    path = run / "predictions" / "scanqa.jsonl"
    before = path.read_text().splitlines()
    path.write_text("\n".join(before[:-1]) + "\n" + before[-1][:15])  # last write cut short
    evaluate(cfg, run_dir=work / "again", progress=False)
    after = path.read_text().splitlines()
    assert [json.loads(x)["id"] for x in after] == [json.loads(x)["id"] for x in before]
    path.write_text(before[0] + "\nnot json\n" + "\n".join(before[1:]) + "\n")
    with pytest.raises(SceneDataError, match=r"scanqa.jsonl: line 2 is not a prediction record"):
        evaluate(cfg, run_dir=work / "again", progress=False)


def test_cli_eval_score_and_report(trained, tmp_path, capsys):
    root, work = trained
    args = [f"data.root={root}", f"output_dir={work}/run", f"teacher.cache_dir={work}/cache",
            "model.image_size=[42,56]", "data.frames=6", "eval.limit=4", "eval.max_new_tokens=4",
            "eval.meteor=false", "correspondence.voxel=1.0"]
    assert main(["eval", "--benchmarks", "scanrefer,sqa3d", "--probe", "--out", str(tmp_path / "cli"), "-"] + args) \
        == 1  # "-" is not a config file: a one-line error, exit code 1
    assert "config file not found" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("name: cli\n")
    assert main(["eval", str(config), *args, "--benchmarks", "scanrefer,sqa3d", "--probe",
                 "--out", str(tmp_path / "cli")]) == 0
    assert "ScanRefer" in capsys.readouterr().out
    assert main(["score", str(tmp_path / "cli"), "--no-meteor"]) == 0
    assert main(["report", str(tmp_path / "cli"), "--out", str(tmp_path / "rep"), "--names", "a",
                 "--no-meteor"]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "a" in report and list((tmp_path / "rep").glob("*.png"))


def test_chance_policy_makes_no_frame_list_and_needs_no_grounding_training_file(synthrooms_tiny, tmp_path):
    """The chance level looks at no frame, so no frame list is made (under max_coverage that reads every depth
    frame), and only Scan2Cap, ScanQA and SQA3D draw answers from a training split: without the grounding
    benchmarks' training files it still runs."""
    import shutil

    from threedrs.data.tasks import benchmark_paths
    from threedrs.evaluate import write_chance_predictions
    from threedrs.teachers.cache import frame_lists_for

    copy = tmp_path / "rooms"
    shutil.copytree(synthrooms_tiny, copy)
    for bench in ("scanrefer", "multi3drefer"):
        benchmark_paths(copy, bench, "train")[0].unlink()
    cfg = make_config(copy, tmp_path, "eval.benchmarks=[scanrefer,multi3drefer,sqa3d]", "data.sampling=max_coverage",
                      "data.frames=3")
    metrics = write_chance_predictions(cfg, tmp_path / "chance")
    assert set(metrics["benchmarks"]) == {"scanrefer", "multi3drefer", "sqa3d"}
    assert not frame_lists_for(cfg).path.exists()
    answers = {s.answer for s in load_benchmark(copy, "sqa3d", "train")}
    lines = (tmp_path / "chance" / "predictions" / "sqa3d.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(x)["prediction"] in answers for x in lines)


def test_bad_checkpoint_and_missing_proposals(trained, tmp_path):
    root, work = trained
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        evaluate(make_config(root, work, f"eval.checkpoint={tmp_path}"), run_dir=tmp_path / "x", progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        evaluate(make_config(root, tmp_path), run_dir=tmp_path / "y", progress=False)
    table = root / "metadata" / "scannet_val_pred_box.json"
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(SceneDataError, match="no proposals for scene"):
        evaluate(make_config(root, work, f"eval.proposals={empty}", "eval.benchmarks=[scanrefer]"),
                 run_dir=tmp_path / "z", progress=False)
    assert table.is_file()


def test_scanqa_test_split_is_predicted_and_reported_unscored(trained, tmp_path):
    """ScanQA's test files (ScanQA_v1.0_test_w_obj / _wo_obj) have no answers: predictions, then a note."""
    import shutil

    root, work = trained
    copy = tmp_path / "rooms"
    shutil.copytree(root, copy)
    val = json.loads((copy / "scanqa" / "ScanQA_v1.0_val.json").read_text())
    unanswered = [{k: v for k, v in r.items() if k not in ("answers",)} for r in val]
    (copy / "scanqa" / "ScanQA_v1.0_test_w_obj.json").write_text(json.dumps(unanswered[:2]))
    (copy / "scanqa" / "ScanQA_v1.0_test_wo_obj.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if not k.startswith("object")} for r in unanswered[2:3]]))
    cfg = make_config(copy, work, "eval.benchmarks=[scanqa]", "eval.split=test", "eval.probe=false")
    result = evaluate(cfg, run_dir=tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (result.run_dir / "predictions" / "scanqa.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == [r["question_id"] for r in val[:3]]
    assert all(r["answers"] == [] and isinstance(r["prediction"], str) for r in lines)
    assert result.metrics["benchmarks"] == {} and "scanqa" in result.metrics["unscored"]
