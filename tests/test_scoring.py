"""Re-scoring predictions files: the reader's errors, hand-computed scores of all five benchmarks, the per-sample
values of the correlation study, and score_run's metrics.json / metrics.md."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
from pycocoevalcap.cider.cider import Cider

from threedrs import scoring
from threedrs.data.tasks import TASKS
from threedrs.metrics import captioning
from threedrs.metrics.captioning import scan2cap_scores
from threedrs.metrics.grounding import multi3drefer_f1, scanrefer_accuracy
from threedrs.metrics.qa import scanqa_scores, sqa3d_scores
from threedrs.predictions import PredictionsError, read_predictions
from threedrs.scoring import load_metrics, per_sample_values, score_benchmark, score_run


def cube(dx: float = 0.0, size: float = 1.0) -> list[float]:
    """Axis-aligned cube at (dx, 0, 0). Two unit cubes offset by d along x: IoU = (1 - d) / (1 + d)."""
    return [dx, 0.0, 0.0, size, size, size]


FAR = [10.0, 10.0, 10.0, 1.0, 1.0, 1.0]


def base(i: int, qtype: str, **extra) -> dict:
    return {"id": f"s{i}", "scene_id": f"scene{i:04d}_00", "question_type": qtype, **extra}


# IoU 1, 1/3, 1/9 and 1: hits@0.25 = 1, 1, 0, 1; hits@0.5 = 1, 0, 0, 1.
SCANREFER = [
    base(0, "unique", pred_box=cube(0.0), gt_box=cube(), scores=[2.0, 1.0, 0.0], correspondence={"-1": 0.9}),
    base(1, "unique", pred_box=cube(0.5), gt_box=cube(), scores=[2.0, 1.0, 0.0], correspondence={"-1": 0.6}),
    base(2, "multiple", pred_box=cube(0.8), gt_box=cube(), scores=[2.0, 1.0, 0.0], correspondence={"-1": 0.1}),
    base(3, "multiple", pred_box=cube(0.0), gt_box=cube(), scores=[2.0, 1.0, 0.0], correspondence={"-1": 0.7}),
]
# F1@0.25 / F1@0.5 per query: (1, 1), (0, 0), (1, 1), (1, 0) [IoU 1/3], (0.5, 0.5) [1 of 2 preds on 1 of 2 gts].
MULTI3DREFER = [
    base(0, "zt_w_d", pred_boxes=[], gt_boxes=[], scores=[0.0, 1.0]),
    base(1, "zt_wo_d", pred_boxes=[cube()], gt_boxes=[], scores=[1.0, 0.0]),
    base(2, "st_w_d", pred_boxes=[cube()], gt_boxes=[cube()], scores=[1.0, 0.0]),
    base(3, "st_wo_d", pred_boxes=[cube(0.5)], gt_boxes=[cube()], scores=[1.0, 0.0]),
    base(4, "mt", pred_boxes=[cube(), FAR], gt_boxes=[cube(), cube(3.0)], scores=[1.0, 1.0, 0.0]),
]
SCAN2CAP = [
    base(0, "unique", prediction="A brown chair by the desk.", detected=True,
         references=["A brown chair, by the desk.", "The chair is brown."]),
    base(1, "multiple", prediction="A white cabinet.", detected=True,
         references=["This is a white cabinet. It is left of the fridge.", "A tall cabinet."]),
    base(2, "unique", prediction="", detected=False, references=["A round table in the middle of the room."]),
    base(3, "multiple", prediction="a lamp on the table", detected=True,
         references=["The lamp is on the desk.", "a small lamp"]),
]
# raw EM 1, 0, 0, 0; refined 1 ("Chair." cleans to "chair"), 1, 0, 1 ("chair" inside "brownchair").
SCANQA = [
    base(0, "unknow", prediction="chair", answers=["chair", "stool"]),
    base(1, "unknow", prediction="Chair.", answers=["chair"]),
    base(2, "unknow", prediction="table", answers=["desk"]),
    base(3, "unknow", prediction="brown chair", answers=["chair"]),
]
# EM (clean_answer equality): 1 ("The table." -> "table"), 0, 1 ("2" -> "two"), 1.
SQA3D = [
    base(0, "what", prediction="The table.", answer="table", question="What is on my left?"),
    base(1, "is", prediction="no", answer="yes", question="Is the door open?"),
    base(2, "how", prediction="2", answer="two", question="How many chairs are there?"),
    base(3, "can", prediction="yes", answer="yes", question="Can I sit down?"),
]
ALL = {"scanrefer": SCANREFER, "multi3drefer": MULTI3DREFER, "scan2cap": SCAN2CAP, "scanqa": SCANQA,
       "sqa3d": SQA3D}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_run(root: Path, benchmarks: dict[str, list[dict]] = ALL) -> Path:
    for name, records in benchmarks.items():
        write_jsonl(root / "predictions" / f"{name}.jsonl", records)
    return root


def test_read_predictions_round_trip_skips_blank_lines(tmp_path) -> None:
    path = tmp_path / "scanrefer.jsonl"
    path.write_text(json.dumps(SCANREFER[0]) + "\n\n" + json.dumps(SCANREFER[1]) + "\n")
    assert read_predictions(path) == SCANREFER[:2]


def bad_lines(benchmark: str, second: dict | str) -> str:
    first = json.dumps(ALL[benchmark][0])
    return first + "\n" + (second if isinstance(second, str) else json.dumps(second)) + "\n"


def edit(benchmark: str, index: int, drop: str | None = None, **changes) -> dict:
    record = dict(ALL[benchmark][index]) | changes
    if drop:
        del record[drop]
    return record


@pytest.mark.parametrize("benchmark, second, match", [
    ("scanrefer", '{"id": "s1", "scene_id": ', r"line 2: malformed JSON"),
    ("scanrefer", "[1, 2]", r"line 2: expected a JSON object"),
    ("scanrefer", edit("scanrefer", 1, drop="gt_box"), r"line 2 \(id 's1'\): missing key 'gt_box'"),
    ("scanrefer", edit("scanrefer", 1, id=7), r"line 2: 'id' must be a non-empty string"),
    ("scanrefer", edit("scanrefer", 1, pred_box=[0, 0, 0, 1, 0, 1]), r"line 2 \(id 's1'\): 'pred_box' must be a box"),
    ("scanrefer", edit("scanrefer", 1, pred_box=[0, 0, 0, 1, 1]), r"line 2 .*'pred_box' must be a box"),
    ("scanrefer", edit("scanrefer", 1, scores=[1.0]), r"line 2 .*'scores' must be P \+ 1 >= 2"),
    ("scanrefer", edit("scanrefer", 1, question_type="unknown"), r"line 2 .*question_type 'unknown' is not one"),
    ("scanrefer", edit("scanrefer", 1, scene_id=None), r"line 2 .*'scene_id' must be a string"),
    ("scanrefer", edit("scanrefer", 1, correspondence=[0.5]), r"line 2 .*'correspondence' must map layers"),
    ("scanrefer", edit("scanrefer", 1, correspondence={"-1": "high"}), r"line 2 .*'correspondence' must map"),
    ("scanrefer", edit("scanrefer", 1, background=0.2), r"line 2 .*'background' must map layers"),
    ("scanrefer", edit("scanrefer", 1, contrast={"-1": True}), r"line 2 .*'contrast' must map layers"),
    ("scanrefer", edit("scanrefer", 1, recall={"-1": "0.5"}), r"line 2 .*'recall' must map layers"),
    ("scanrefer", edit("scanrefer", 1, recall_chance=[0.1]), r"line 2 .*'recall_chance' must be a number or null"),
    ("scanrefer", edit("scanrefer", 1, pairs=-3), r"line 2 .*'pairs' must be an integer >= 0"),
    ("scanrefer", edit("scanrefer", 1, id="s0"), r"line 2: duplicate id 's0' \(first on line 1\)"),
    ("multi3drefer", edit("multi3drefer", 1, gt_boxes=[cube()]), r"line 2 .*'zt_wo_d' with 1 gt_boxes"),
    ("multi3drefer", edit("multi3drefer", 1, pred_boxes=[[0, 0, 0, 1, 1, math.inf]]),
     r"line 2 .*'pred_boxes' must be a list"),
    ("scan2cap", edit("scan2cap", 2, prediction="a table"), r"line 2 .*undetected object must have the empty"),
    ("scan2cap", edit("scan2cap", 1, detected="yes"), r"line 2 .*'detected' must be true or false"),
    ("scan2cap", edit("scan2cap", 1, references=[]), r"line 2 .*'references' must be a non-empty list"),
    ("scanqa", edit("scanqa", 1, answers="chair"), r"line 2 .*'answers' must be a list of strings"),
    ("scanqa", edit("scanqa", 1, prediction=None), r"line 2 .*'prediction' must be a string"),
    ("sqa3d", edit("sqa3d", 1, question_type="what"), r"line 2 .*question_type 'what' but the question is of type"),
])
def test_read_predictions_errors_name_file_and_line(tmp_path, benchmark, second, match) -> None:
    path = tmp_path / f"{benchmark}.jsonl"
    path.write_text(bad_lines(benchmark, second))
    with pytest.raises(PredictionsError, match=rf"{benchmark}\.jsonl, {match}"):
        read_predictions(path)


def test_read_predictions_file_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no such predictions file"):
        read_predictions(tmp_path / "scanqa.jsonl")
    (tmp_path / "scanqa.jsonl").write_text("\n  \n")
    with pytest.raises(PredictionsError, match=r"scanqa\.jsonl: no predictions \(the file is empty\)"):
        read_predictions(tmp_path / "scanqa.jsonl")
    write_jsonl(tmp_path / "answers.jsonl", SCANQA)
    with pytest.raises(PredictionsError, match=r"answers\.jsonl: cannot tell the benchmark"):
        read_predictions(tmp_path / "answers.jsonl")
    assert read_predictions(tmp_path / "answers.jsonl", "scanqa") == SCANQA
    (tmp_path / "sqa3d.jsonl").write_bytes(json.dumps(SQA3D[0]).encode() + b"\n\xff\xfe\n")
    with pytest.raises(PredictionsError, match=r"sqa3d\.jsonl, line 2: not UTF-8"):
        read_predictions(tmp_path / "sqa3d.jsonl")


def test_score_benchmark_hand_computed_grounding() -> None:
    refer = score_benchmark("scanrefer", SCANREFER)
    assert refer["overall"] == {"Acc@0.25": 75.0, "Acc@0.5": 50.0, "count": 4}
    assert refer["unique"] == {"Acc@0.25": 100.0, "Acc@0.5": 50.0, "count": 2}
    assert refer["multiple"] == {"Acc@0.25": 50.0, "Acc@0.5": 50.0, "count": 2}
    multi = score_benchmark("multi3drefer", MULTI3DREFER)
    assert multi["overall"]["F1@0.25"] == pytest.approx(100 * 3.5 / 5)
    assert multi["overall"]["F1@0.5"] == pytest.approx(100 * 2.5 / 5)
    assert [multi[t]["F1@0.25"] for t in ("zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt")] == [100, 0, 100, 100, 50]
    assert [multi[t]["F1@0.5"] for t in ("zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt")] == [100, 0, 100, 0, 50]


def test_score_benchmark_hand_computed_qa() -> None:
    qa = score_benchmark("scanqa", SCANQA, meteor=False)
    assert (qa["EM"], qa["EM-refined"], qa["count"]) == (25.0, 75.0, 4)
    assert "METEOR" not in qa and {"CIDEr", "BLEU-1", "BLEU-4", "ROUGE-L"} <= set(qa)
    sqa = score_benchmark("sqa3d", SQA3D)
    assert sqa["overall"]["EM"] == 75.0 and sqa["overall"]["count"] == 4
    assert [sqa[t]["EM"] for t in ("what", "is", "how", "can")] == [100.0, 0.0, 100.0, 100.0]
    assert sqa["which"]["count"] == 0 and math.isnan(sqa["which"]["EM"])


def normalise(text: str) -> str:
    """Scan2Cap normalisation written out again (FORMATS §4.4)."""
    return "sos " + text.replace(".", " . ").replace(",", " , ").lower() + " eos"


def test_scan2cap_scores_and_per_sample_cider_against_pycocoevalcap() -> None:
    result = score_benchmark("scan2cap", SCAN2CAP, meteor=False)
    refs = {r["id"]: [normalise(t) for t in r["references"]] for r in SCAN2CAP}
    hyps = {r["id"]: [normalise(r["prediction"] if r["detected"] else "")] for r in SCAN2CAP}
    corpus, per_sample = Cider().compute_score(refs, hyps)
    assert result["CIDEr"] == pytest.approx(100 * corpus)
    assert (result["count"], result["detected"]) == (4, 3)
    name, values = per_sample_values("scan2cap", SCAN2CAP)
    assert name == "CIDEr@0.5"
    assert values == pytest.approx([100 * v for v in per_sample])
    assert values[2] == 0.0 and min(values[0], values[1], values[3]) > 0
    assert sum(values) / 4 == pytest.approx(result["CIDEr"])


def test_per_sample_values_hand_computed_and_means_equal_scores() -> None:
    assert per_sample_values("scanrefer", SCANREFER) == ("Acc@0.25", [100.0, 100.0, 0.0, 100.0])
    name, f1 = per_sample_values("multi3drefer", MULTI3DREFER)
    assert name == "F1@0.25" and f1 == pytest.approx([100.0, 0.0, 100.0, 100.0, 50.0])
    assert per_sample_values("scanqa", SCANQA) == ("EM-refined", [100.0, 100.0, 0.0, 100.0])
    assert per_sample_values("sqa3d", SQA3D) == ("EM", [100.0, 0.0, 100.0, 100.0])
    assert sum(f1) / len(f1) == pytest.approx(score_benchmark("multi3drefer", MULTI3DREFER)["overall"]["F1@0.25"])


def test_records_given_directly_are_validated() -> None:
    with pytest.raises(PredictionsError, match=r"scanqa record 1 \(id 's1'\): missing key 'answers'"):
        score_benchmark("scanqa", [SCANQA[0], edit("scanqa", 1, drop="answers")], meteor=False)
    with pytest.raises(PredictionsError, match=r"sqa3d record 1: duplicate id 's0' \(first at record 0\)"):
        per_sample_values("sqa3d", [SQA3D[0], SQA3D[0]])
    with pytest.raises(PredictionsError, match="scanrefer: no records to score"):
        score_benchmark("scanrefer", [])
    with pytest.raises(ValueError, match="unknown benchmark 'scanref'"):
        per_sample_values("scanref", SCANREFER)


def test_scanqa_test_split_is_reported_unscored(tmp_path, capsys) -> None:
    """ScanQA's test split has no public answers: its predictions are written, scoring says so."""
    unanswered = [edit("scanqa", i, answers=[]) for i in range(len(SCANQA))]
    run = make_run(tmp_path / "run", {"scanqa": unanswered, "sqa3d": SQA3D})
    metrics = score_run(run, meteor=False)
    assert set(metrics["benchmarks"]) == {"sqa3d"}
    assert metrics["unscored"] == {"scanqa": scoring.NO_ANSWERS}
    assert "Not scored: no reference answers" in (run / "metrics.md").read_text()
    scoring.main_score(argparse.Namespace(run_dir=str(run), benchmarks=None, no_meteor=True))
    assert "scanqa: no reference answers (ScanQA's test split" in capsys.readouterr().out
    with pytest.raises(PredictionsError, match="scanqa: no reference answers"):
        score_benchmark("scanqa", unanswered, meteor=False)
    write_jsonl(run / "predictions" / "scanqa.jsonl", [SCANQA[0], unanswered[1]])
    with pytest.raises(PredictionsError, match=r"scanqa.jsonl: 1 of 2 records have no answers \(first: id 's1'\)"):
        score_run(run, meteor=False)


def test_scan2cap_takes_any_question_type_and_reports_no_groups() -> None:
    """Official ScanRefer files carry no eval_type, so Scan2Cap records hold "" (or what a processed file wrote):
    any string is accepted and the scores are flat, with no unique / multiple groups, whatever the labels say."""
    scores = score_benchmark("scan2cap", SCAN2CAP, meteor=False)
    assert scores["count"] == len(SCAN2CAP) and not any(isinstance(v, dict) for v in scores.values())
    unlabelled = [dict(r, question_type="") for r in SCAN2CAP]
    other = [dict(r, question_type="st_w_d") for r in SCAN2CAP]  # not a ScanRefer label at all
    assert score_benchmark("scan2cap", unlabelled, meteor=False) == scores == score_benchmark("scan2cap", other,
                                                                                               meteor=False)
    assert per_sample_values("scan2cap", unlabelled) == per_sample_values("scan2cap", SCAN2CAP)


def expected_metrics() -> dict:
    """Every benchmark scored by the metric functions directly (METEOR off)."""
    def by_id(records, key):
        return {r["id"]: r[key] for r in records}
    return {
        "scanrefer": scanrefer_accuracy([r["pred_box"] for r in SCANREFER], [r["gt_box"] for r in SCANREFER],
                                        [r["question_type"] for r in SCANREFER]),
        "multi3drefer": multi3drefer_f1([r["pred_boxes"] for r in MULTI3DREFER],
                                        [r["gt_boxes"] for r in MULTI3DREFER],
                                        [r["question_type"] for r in MULTI3DREFER]),
        "scan2cap": scan2cap_scores(by_id(SCAN2CAP, "references"), by_id(SCAN2CAP, "prediction"),
                                    by_id(SCAN2CAP, "detected"), meteor=False),
        "scanqa": scanqa_scores(by_id(SCANQA, "prediction"), by_id(SCANQA, "answers"), meteor=False),
        "sqa3d": sqa3d_scores(by_id(SQA3D, "prediction"), by_id(SQA3D, "answer"), by_id(SQA3D, "question")),
    }


def leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, (*prefix, key))
    else:
        yield prefix, tree


def same(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


def test_score_run_writes_metrics_matching_direct_calls(tmp_path) -> None:
    run = make_run(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (run / "predictions").iterdir()}
    metrics = score_run(run, meteor=False)
    expected = expected_metrics()
    assert list(metrics["benchmarks"]) == list(TASKS) and metrics["meteor"] is False
    got = dict(leaves(metrics["benchmarks"]))
    want = dict(leaves(expected))
    assert got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    on_disk = json.loads((run / "metrics.json").read_text())  # strict JSON: NaN written as null
    assert on_disk["benchmarks"]["sqa3d"]["which"]["EM"] is None
    reloaded = dict(leaves(load_metrics(run / "metrics.json")["benchmarks"]))
    assert all(same(reloaded[k], want[k]) for k in want)
    table = (run / "metrics.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| run |"))
    assert row.startswith("| run | ScanRefer Acc@0.25 | ScanRefer Acc@0.5 | Multi3DRefer F1@0.25")
    headline = [want[("scanrefer", "overall", "Acc@0.25")], want[("scanrefer", "overall", "Acc@0.5")],
                want[("multi3drefer", "overall", "F1@0.25")], want[("multi3drefer", "overall", "F1@0.5")],
                want[("scan2cap", "CIDEr")], want[("scan2cap", "BLEU-4")], want[("scanqa", "CIDEr")],
                want[("scanqa", "EM")], want[("sqa3d", "overall", "EM")]]
    assert f"| run | {' | '.join(f'{v:.1f}' for v in headline)} |" in table
    assert "| unique | 100.0 | 50.0 | 2 |" in table and "| which | – | – | 0 |" in table
    assert {p.name: p.read_bytes() for p in (run / "predictions").iterdir()} == before


def test_score_run_subset_and_errors(tmp_path) -> None:
    run = make_run(tmp_path / "run", {"scanrefer": SCANREFER, "sqa3d": SQA3D})
    assert list(score_run(run, "sqa3d", meteor=False)["benchmarks"]) == ["sqa3d"]
    with pytest.raises(FileNotFoundError, match=r"scanqa\.jsonl: no such predictions file"):
        score_run(run, ["scanqa"], meteor=False)
    with pytest.raises(ValueError, match="unknown benchmark 'qa'"):
        score_run(run, "sqa3d,qa", meteor=False)
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        score_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no predictions file"):
        score_run(tmp_path / "empty")
    (run / "predictions" / "scanqa.jsonl").write_text(json.dumps(SCANQA[0]) + "\n{oops\n")
    with pytest.raises(PredictionsError, match=r"scanqa\.jsonl, line 2: malformed JSON"):
        score_run(run, meteor=False)


class FakeMeteor(captioning.MeteorSession):
    """A METEOR session without Java: counts sessions opened and calls made, returns 0.25."""

    opened = 0
    calls = 0

    def __init__(self) -> None:
        type(self).opened += 1

    def score(self, gts, res) -> float:
        type(self).calls += 1
        return 0.25

    def close(self) -> None:
        pass


def test_score_run_opens_one_meteor_session_only_when_needed(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(scoring, "MeteorSession", FakeMeteor)
    monkeypatch.setattr(FakeMeteor, "opened", 0)
    monkeypatch.setattr(FakeMeteor, "calls", 0)
    metrics = score_run(make_run(tmp_path / "all"), meteor=True)
    assert (FakeMeteor.opened, FakeMeteor.calls) == (1, 2)
    assert metrics["meteor"] is True
    assert metrics["benchmarks"]["scan2cap"]["METEOR"] == metrics["benchmarks"]["scanqa"]["METEOR"] == 25.0
    score_run(make_run(tmp_path / "grounding", {"scanrefer": SCANREFER}), meteor=True)
    assert FakeMeteor.opened == 1


def test_main_score_parses_and_prints(tmp_path, capsys) -> None:
    run = make_run(tmp_path / "myrun", {"scanrefer": SCANREFER, "scanqa": SCANQA})
    scoring.main_score(argparse.Namespace(run_dir=str(run), benchmarks="scanrefer", no_meteor=True))
    out = capsys.readouterr().out
    assert "| myrun | 75.0 | 50.0 | – |" in out and "metrics.json" in out
    assert list(load_metrics(run / "metrics.json")["benchmarks"]) == ["scanrefer"]


def test_benchmark_list_and_metrics_file_errors(tmp_path) -> None:
    assert scoring.parse_benchmarks("sqa3d, scanqa,sqa3d") == ["sqa3d", "scanqa"]
    with pytest.raises(ValueError, match="benchmarks: expected comma-separated names"):
        scoring.parse_benchmarks("scanqa,")
    with pytest.raises(FileNotFoundError, match="no such metrics file"):
        load_metrics(tmp_path / "metrics.json")
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(ValueError, match=r"metrics\.json: not valid JSON"):  # the one JSON reader's words
        load_metrics(tmp_path / "metrics.json")
    (tmp_path / "metrics.json").write_bytes(b'{"benchmarks": "\xff"}')  # not UTF-8: one line, not a decode traceback
    with pytest.raises(ValueError, match=r"metrics\.json: not valid JSON"):
        load_metrics(tmp_path / "metrics.json")
    (tmp_path / "metrics.json").write_text('{"scanqa": {}}')
    with pytest.raises(ValueError, match=r"metrics\.json: not a metrics file"):
        load_metrics(tmp_path / "metrics.json")
