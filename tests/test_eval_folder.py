"""Evaluation folders: predictions are reused only by the run that wrote them, scoring rejects ids outside the
benchmark, one process at a time appends to a predictions file, and a damaged checkpoint is one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from threedrs.checkpoint import CorruptCheckpointError
from threedrs.cli import main
from threedrs.config import load_config
from threedrs.data.instances import SceneDataError
from threedrs.evaluate import evaluate
from threedrs.extract import extract
from threedrs.locking import LockedError
from threedrs.probe import probe_model
from threedrs.predictions import PredictionsError
from threedrs.provenance import ProvenanceError
from threedrs.scoring import score_run
from threedrs.train import train


def overrides(root, work, *extra):
    return [f"data.root={root}", "data.frames=4", f"output_dir={work}/run", f"teacher.cache_dir={work}/cache",
            "teacher.grid=[3,4]", "teacher.channels=32", "teacher.batch_frames=4", "model.image_size=[42,56]",
            "train.steps=4", "train.save_every=2", "eval.limit=4", "eval.max_new_tokens=4", "eval.meteor=false",
            "eval.benchmarks=[scanrefer,scanqa]", *extra]


def make_config(root, work, *extra):
    return load_config(None, overrides(root, work, *extra))


@pytest.fixture(scope="module")
def trained(synthrooms_tiny, tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4."""
    work = tmp_path_factory.mktemp("eval_folder")
    cfg = make_config(synthrooms_tiny, work)
    extract(cfg)
    train(cfg, progress=False)
    return synthrooms_tiny, work


def test_eval_says_which_checkpoint_and_refuses_predictions_of_another(trained, tmp_path, capsys):
    root, work = trained
    run = tmp_path / "eval"
    evaluate(make_config(root, work), run_dir=run, progress=False)
    assert f"evaluating checkpoint {work}/run/checkpoints/step_000004" in capsys.readouterr().out
    older = f"eval.checkpoint={work}/run/checkpoints/step_000002"
    with pytest.raises(ProvenanceError, match=r"checkpoint.sha256: recorded '[0-9a-f.]+', this run has '[0-9a-f.]+'.*"
                                              r"--overwrite"):
        evaluate(make_config(root, work, older), run_dir=run, progress=False)
    evaluate(make_config(root, work, older), run_dir=run, progress=False, overwrite=True)
    assert "step_000002" in capsys.readouterr().out
    assert json.loads((run / "provenance.json").read_text())["checkpoint"]["path"].endswith("step_000002")
    with pytest.raises(ProvenanceError, match=r"benchmarks.scanrefer.limit: recorded 4, this run has 2"):
        evaluate(make_config(root, work, older, "eval.limit=2"), run_dir=run, progress=False)
    with pytest.raises(ProvenanceError, match=r"eval.max_new_tokens: recorded 4, this run has 5"):
        evaluate(make_config(root, work, older, "eval.max_new_tokens=5"), run_dir=run, progress=False)
    # a new benchmark joins the same folder (same checkpoint and config): the record grows
    evaluate(make_config(root, work, older, "eval.benchmarks=[sqa3d]"), run_dir=run, progress=False)
    assert sorted(json.loads((run / "provenance.json").read_text())["benchmarks"]) == ["scanqa", "scanrefer", "sqa3d"]


def test_scoring_rejects_ids_outside_the_benchmark_and_missing_ones(trained, tmp_path):
    root, work = trained
    run = tmp_path / "eval"
    evaluate(make_config(root, work), run_dir=run, progress=False)
    path = run / "predictions" / "scanrefer.jsonl"
    lines = path.read_text().splitlines()
    foreign = json.loads(lines[0]) | {"id": "scene0999_00|1|0"}
    path.write_text("\n".join(lines + [json.dumps(foreign)]) + "\n")
    with pytest.raises(PredictionsError, match=r"scanrefer.jsonl, line 5: id 'scene0999_00\|1\|0' is not a sample "
                                               r"of scanrefer"):
        score_run(run, meteor=False)
    with pytest.raises(PredictionsError, match="is not a sample of scanrefer"):
        evaluate(make_config(root, work), run_dir=run, progress=False)  # eval scores the file: same refusal
    path.write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(PredictionsError, match=r"2 of 4 samples have no prediction"):
        score_run(run, meteor=False)
    evaluate(make_config(root, work), run_dir=run, progress=False)  # completes the missing two
    assert len(path.read_text().splitlines()) == 4


def test_predictions_without_a_record_and_unreadable_files_are_named(trained, tmp_path):
    root, work = trained
    run = tmp_path / "eval"
    evaluate(make_config(root, work), run_dir=run, progress=False)
    path = run / "predictions" / "scanqa.jsonl"
    path.write_bytes(path.read_bytes() + b'{"id": "caf\xe9"}\n')
    with pytest.raises(SceneDataError, match=r"scanqa.jsonl: line 5 is not a prediction record \(UTF-8 JSON"):
        evaluate(make_config(root, work), run_dir=run, progress=False)
    assert main(["score", str(run), "--no-meteor"]) == 1
    (run / "provenance.json").unlink()
    with pytest.raises(ProvenanceError, match=r"predictions \(scanqa, scanrefer\) without provenance.json"):
        evaluate(make_config(root, work), run_dir=run, progress=False)
    (run / "provenance.json").write_text("{not json")
    with pytest.raises(ProvenanceError, match=r"provenance.json: not valid JSON"):
        evaluate(make_config(root, work), run_dir=run, progress=False)


def test_a_second_writer_of_a_predictions_file_is_refused_naming_the_holder(trained, tmp_path):
    root, work = trained
    run = tmp_path / "eval"
    lock = run / "predictions" / "scanrefer.jsonl.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from threedrs.locking import FileLock; "
        f"held = FileLock({str(lock)!r}, 'x').acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"predictions file .*scanrefer.jsonl is in use by process "
                                              rf"{holder.pid} on .*-c"):
            evaluate(make_config(root, work), run_dir=run, progress=False)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    result = evaluate(make_config(root, work), run_dir=run, progress=False)  # the holder is gone: the lock is free
    ids = [json.loads(x)["id"] for x in (run / "predictions" / "scanrefer.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 4 and result.metrics["benchmarks"]["scanrefer"]["overall"]["count"] == 4


def test_a_damaged_weights_file_is_one_clear_line_in_eval_and_probe(trained, tmp_path, capsys):
    root, work = trained
    bad = tmp_path / "step_000002"
    bad.mkdir()
    good = work / "run" / "checkpoints" / "step_000002"
    (bad / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(CorruptCheckpointError, match=r"step_000002/model.safetensors: damaged or truncated weights"):
        evaluate(make_config(root, work, f"eval.checkpoint={bad}"), run_dir=tmp_path / "e", progress=False)
    with pytest.raises(CorruptCheckpointError, match=r"model.safetensors: damaged or truncated weights"):
        probe_model(make_config(root, work, "probe.target=model", f"probe.checkpoint={bad}", "data.split=val"))
    (tmp_path / "c.yaml").write_text("name: damaged\n")
    args = ["eval", str(tmp_path / "c.yaml"), *overrides(root, work, f"eval.checkpoint={bad}"), "--out",
            str(tmp_path / "e")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged or truncated weights file" in err[0]


def test_a_changed_label_table_refuses_the_scanrefer_predictions_it_labelled(trained, tmp_path):
    """ScanRefer's unique / multiple labels come from ScanNet's label table: a table that changed since the
    predictions were written is named, as a changed annotation file is."""
    import shutil

    root, work = trained
    data = tmp_path / "rooms"
    shutil.copytree(root, data)
    run = tmp_path / "eval"
    only = ["eval.benchmarks=[scanrefer]", "eval.limit=2", f"data.root={data}"]
    evaluate(make_config(root, work, *only), run_dir=run, progress=False)
    table = data / "scannet" / "scannetv2-labels.combined.tsv"
    table.write_text(table.read_text() + table.read_text().splitlines()[-1] + "\n")  # one more row
    with pytest.raises(ProvenanceError, match=r"scannetv2-labels\.combined\.tsv"):
        evaluate(make_config(root, work, *only), run_dir=run, progress=False)


def test_overwrite_never_clears_a_training_runs_folder(tmp_path):
    """`threedrs eval --out <run folder> --overwrite` must not delete the training run's record."""
    from threedrs.eval_folder import open_eval

    run = tmp_path / "run"
    run.mkdir()
    (run / "provenance.json").write_text(json.dumps({"kind": "train", "config": {"train.steps": 4}}))
    with pytest.raises(ProvenanceError, match=r"provenance.json: a record of kind 'train', not an evaluation's"):
        open_eval(run, {"kind": "eval", "benchmarks": {}}, overwrite=True)
    assert json.loads((run / "provenance.json").read_text())["kind"] == "train"
    with pytest.raises(ProvenanceError, match=r"kind: recorded 'train', this run has 'eval'"):
        open_eval(run, {"kind": "eval", "benchmarks": {}})
    (run / "provenance.json").write_text("{damaged")  # unreadable: --overwrite is the remedy it names
    open_eval(run, {"kind": "eval", "benchmarks": {}}, overwrite=True)
    assert json.loads((run / "provenance.json").read_text())["kind"] == "eval"
