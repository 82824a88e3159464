"""Benchmark readers on hand-written records in the official formats (FORMATS.md §3)."""

from __future__ import annotations

import json

import pytest

from threedrs.data.instances import SceneDataError
from threedrs.data.tasks import (
    GROUND_TOKEN, SPATIAL_INSTRUCTION, load_benchmark, read_llava_style, sqa3d_question_type,
)

SCANREFER = [
    {"scene_id": "scene0011_00", "object_id": "12", "object_name": "kitchen_cabinets", "ann_id": "0",
     "description": "this is a white cabinet. It is left of the fridge.", "token": ["this"], "eval_type": "multiple"},
    {"scene_id": "scene0011_00", "object_id": "12", "object_name": "kitchen_cabinets", "ann_id": "1",
     "description": "a cabinet by the fridge.", "token": ["a"], "eval_type": "multiple"},
    {"scene_id": "scene0011_00", "object_id": "3", "object_name": "chair", "ann_id": "0",
     "description": "the chair.", "token": ["the"], "eval_type": "unique"},
]


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_scanrefer_and_scan2cap(tmp_path):
    write(tmp_path / "scanrefer" / "ScanRefer_filtered_val.json", SCANREFER)
    write(tmp_path / "scanrefer" / "ScanRefer_filtered_train.json", SCANREFER)
    refer = load_benchmark(tmp_path, "scanrefer", "val")
    assert [s.id for s in refer] == ["scene0011_00|12|0", "scene0011_00|12|1", "scene0011_00|3|0"]
    first = refer[0]
    assert first.answer == GROUND_TOKEN and first.target_ids == [12] and first.question_type == "multiple"
    # V3D capitalize(): the rest of the description is lower-cased
    assert first.prompt.endswith("\nThis is a white cabinet. it is left of the fridge.")
    caps = load_benchmark(tmp_path, "scan2cap", "val")
    assert [c.id for c in caps] == ["scene0011_00|12|kitchen_cabinets", "scene0011_00|3|chair"]
    assert caps[0].answers == [SCANREFER[0]["description"], SCANREFER[1]["description"]]
    assert "<coord>" in caps[0].prompt
    assert len(load_benchmark(tmp_path, "scan2cap", "train")) == 3


def test_multi3drefer_zero_and_multiple_targets(tmp_path):
    write(tmp_path / "multi3drefer" / "multi3drefer_val.json", [
        {"scene_id": "scene0025_00", "ann_id": 7, "description": "the black chairs.", "object_ids": [3, 5],
         "eval_type": "mt", "object_name": "chair"},
        {"scene_id": "scene0025_00", "ann_id": 8, "description": "the pink sofa.", "object_ids": [],
         "eval_type": "zt_wo_d", "object_name": "sofa"}])
    samples = load_benchmark(tmp_path, "multi3drefer", "val")
    assert samples[0].target_ids == [3, 5] and samples[1].target_ids == []
    assert samples[1].question_type == "zt_wo_d"
    assert samples[0].prompt.endswith("There may be no corresponding object, or there may be one or more objects.")


def test_scanqa_expands_answers_in_train_only(tmp_path):
    rec = {"scene_id": "scene0011_00", "question_id": "train-scene0011-3", "question": "What is on the counter?",
           "answers": ["microwave", "white microwave"], "object_ids": [22], "object_names": ["microwave"]}
    write(tmp_path / "scanqa" / "ScanQA_v1.0_train.json", [rec])
    write(tmp_path / "scanqa" / "ScanQA_v1.0_val.json", [rec | {"question_id": "val-scene0011-3"}])
    train = load_benchmark(tmp_path, "scanqa", "train")
    assert [(s.id, s.answer) for s in train] == [("train-scene0011-3_0", "microwave"),
                                                 ("train-scene0011-3_1", "white microwave")]
    val = load_benchmark(tmp_path, "scanqa", "val")
    assert len(val) == 1 and val[0].answers == rec["answers"] and val[0].target_ids == [22]
    assert val[0].prompt == "What is on the counter? Answer the question simply."


def test_sqa3d_joins_and_expands_situations(tmp_path):
    base = tmp_path / "sqa3d" / "balanced"
    for split in ("train", "val"):
        write(base / f"v1_balanced_questions_{split}_scannetv2.json", {"questions": [
            {"scene_id": "scene0050_00", "situation": "I am by the bed.", "alternative_situation": ["I sit."],
             "question": "Which way is the door?", "question_id": 220602000002}]})
        write(base / f"v1_balanced_sqa_annotations_{split}_scannetv2.json", {"annotations": [
            {"scene_id": "scene0050_00", "question_id": 220602000002,
             "answers": [{"answer": "left", "answer_confidence": "yes", "answer_id": 1}]}]})
    train = load_benchmark(tmp_path, "sqa3d", "train")
    assert [s.id for s in train] == ["220602000002_0", "220602000002_1"]
    val = load_benchmark(tmp_path, "sqa3d", "val")
    assert val[0].answer == "left" and val[0].question_type == "which"
    assert val[0].prompt == ("I am by the bed. Which way is the door? Answer the question using a single word or "
                             "phrase.")


def test_sqa3d_question_types():
    assert [sqa3d_question_type(q) for q in ("  What is", "Is there", "How many", "Can I", "which", "Island?",
                                            "Where")] == ["what", "is", "how", "can", "which", "is", "others"]


def test_llava_style_reader(tmp_path):
    path = tmp_path / "scanrefer_vg_val_llava_style.json"
    write(path, [{"id": 17, "video": "scannet/scene0011_00", "conversations": [
        {"from": "human", "value": "<image>\n" + SPATIAL_INSTRUCTION + "Identify the object.\nThis is a cabinet."},
        {"from": "gpt", "value": "<ground>"}], "box": [1, 2, 3, 1, 1, 1],
        "metadata": {"dataset": "scanrefer", "question_type": "unique", "ann_id": "0", "object_id": "12"}},
        {"id": "scanqa_val-scene0011-3_0", "video": "scannet/scene0011_00", "conversations": [
            {"from": "human", "value": "<image> What is it? Answer the question simply."},
            {"from": "gpt", "value": "microwave"}],
         "metadata": {"dataset": "scanQA", "question_type": "unknow", "answers": ["microwave", "oven"]}}])
    refer, qa = read_llava_style(path)
    assert refer.task == "scanrefer" and refer.scene_id == "scene0011_00" and refer.target_ids == [12]
    assert refer.prompt == "Identify the object.\nThis is a cabinet."
    assert qa.task == "scanqa" and qa.answers == ["microwave", "oven"] and qa.id == "scanqa_val-scene0011-3_0"


def test_bad_annotation_files(tmp_path):
    with pytest.raises(SceneDataError, match="ScanRefer_filtered_val.json: annotation file not found"):
        load_benchmark(tmp_path, "scanrefer", "val")
    write(tmp_path / "scanrefer" / "ScanRefer_filtered_val.json", [{"scene_id": "s", "object_id": "1"}])
    with pytest.raises(SceneDataError, match="record 0 lacks ann_id, description"):
        load_benchmark(tmp_path, "scanrefer", "val")
    write(tmp_path / "scanqa" / "ScanQA_v1.0_val.json", {"not": "a list"})
    with pytest.raises(SceneDataError, match="expected a JSON list"):
        load_benchmark(tmp_path, "scanqa", "val")
    with pytest.raises(ValueError, match="unknown benchmark 'nr3d'"):
        load_benchmark(tmp_path, "nr3d", "val")
    base = tmp_path / "sqa3d" / "balanced"
    write(base / "v1_balanced_questions_val_scannetv2.json", {"questions": [
        {"scene_id": "s", "situation": "x", "question": "q", "question_id": 5}]})
    write(base / "v1_balanced_sqa_annotations_val_scannetv2.json", {"annotations": []})
    with pytest.raises(SceneDataError, match="question 5 has no annotation"):
        load_benchmark(tmp_path, "sqa3d", "val")
