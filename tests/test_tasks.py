"""Benchmark readers on hand-written records in the official formats (FORMATS.md §3)."""

from __future__ import annotations

import pytest

from benchmark_files import (LABEL_HEADER, LABEL_ROWS, MULTI3DREFER_VAL, SCANQA_TEST_W_OBJ, SCANQA_TEST_WO_OBJ,
                             SCANREFER_VAL, SCANREFER_VAL_TYPES, llava_multi3drefer, llava_scanqa, llava_scanrefer,
                             llava_sqa3d, write_json, write_label_table)
from threedrs.data.instances import SceneDataError
from threedrs.data.llava_style import read_llava_style, sqa3d_question
from threedrs.data.tasks import (
    GROUND_TOKEN, SPATIAL_INSTRUCTION, load_benchmark, sqa3d_question_type,
)

TSV = "scannet/scannetv2-labels.combined.tsv"


def write(path, data):
    write_json(path, data)


def test_official_scanrefer_is_labelled_as_the_official_evaluation(tmp_path):
    write(tmp_path / "scanrefer" / "ScanRefer_filtered_val.json", SCANREFER_VAL)
    write_label_table(tmp_path / TSV)
    refer = load_benchmark(tmp_path, "scanrefer", "val", TSV)
    assert [s.question_type for s in refer] == SCANREFER_VAL_TYPES
    assert [s.id for s in refer[:3]] == ["scene0011_00|12|0", "scene0011_00|12|1", "scene0011_00|13|0"]
    first = refer[0]
    assert first.answer == GROUND_TOKEN and first.target_ids == [12]
    assert first.answers == [SCANREFER_VAL[0]["description"]]
    # V3D capitalize(): the rest of the description is lower-cased
    assert first.prompt.endswith("\nThis is a white cabinet. it is left of the fridge.")
    # an eval_type in the file is used as is (the table is then not even needed)
    labelled = [r | {"eval_type": "unique"} for r in SCANREFER_VAL]
    write(tmp_path / "scanrefer" / "ScanRefer_filtered_val.json", labelled)
    assert {s.question_type for s in load_benchmark(tmp_path, "scanrefer", "val", "missing.tsv")} == {"unique"}
    # records without one are labelled from the table, counting every object of the file
    write(tmp_path / "scanrefer" / "ScanRefer_filtered_val.json", labelled[:1] + SCANREFER_VAL[1:])
    assert [s.question_type for s in load_benchmark(tmp_path, "scanrefer", "val", TSV)] == \
        ["unique"] + SCANREFER_VAL_TYPES[1:]


def test_scan2cap_does_not_need_the_labels(tmp_path):
    write(tmp_path / "scanrefer" / "ScanRefer_filtered_val.json", SCANREFER_VAL)
    write(tmp_path / "scanrefer" / "ScanRefer_filtered_train.json", SCANREFER_VAL)
    caps = load_benchmark(tmp_path, "scan2cap", "val")
    assert [c.id for c in caps[:2]] == ["scene0011_00|12|kitchen_cabinets", "scene0011_00|13|kitchen_cabinet"]
    assert caps[0].answers == [SCANREFER_VAL[0]["description"], SCANREFER_VAL[1]["description"]]
    assert "<coord>" in caps[0].prompt and caps[0].question_type == "" and caps[0].target_ids == [12]
    assert len(load_benchmark(tmp_path, "scan2cap", "train")) == len(SCANREFER_VAL)


@pytest.mark.parametrize(("change", "match"), [
    (None, r"ScanRefer_filtered_val.json: records have no eval_type .*set data.label_map to ScanNet's "
           r"scannetv2-labels.combined.tsv"),
    ("no_table", r"scannetv2-labels.combined.tsv: ScanNet label table .* not found"),
    ("columns", r"scannetv2-labels.combined.tsv: label table lacks column\(s\) nyu40id"),
    ("name", r"ScanRefer_filtered_val.json: record 5: object_name 'door' is not a raw_category"),
    ("object_id", r"ScanRefer_filtered_val.json: record 2: object_id 'thirteen' is not a non-negative integer"),
    ("eval_type", r"ScanRefer_filtered_val.json: record 0: eval_type 'hard' is not one of"),
    ("duplicate", r"ScanRefer_filtered_val.json: records 0 and 1 have the same scanrefer id 'scene0011_00\|12\|0'"),
])
def test_bad_scanrefer_input_is_named_at_load(tmp_path, change, match):
    records = [dict(r) for r in SCANREFER_VAL]
    label_map = TSV
    if change == "columns":
        write_label_table(tmp_path / TSV, rows=tuple(r.rsplit("\t", 13)[0] for r in LABEL_ROWS),
                          header=LABEL_HEADER[:4])
    elif change != "no_table":
        write_label_table(tmp_path / TSV, rows=tuple(r for r in LABEL_ROWS if "\tdoor\t" not in r)
                          if change == "name" else LABEL_ROWS)
    if change is None:
        label_map = None
    if change == "object_id":
        records[2]["object_id"] = "thirteen"
    if change == "eval_type":
        records[0]["eval_type"] = "hard"
    if change == "duplicate":
        records[1]["ann_id"] = "0"
    write(tmp_path / "scanrefer" / "ScanRefer_filtered_val.json", records)
    with pytest.raises(SceneDataError, match=match):
        load_benchmark(tmp_path, "scanrefer", "val", label_map)


def test_scanqa_test_split_has_no_answers(tmp_path):
    write(tmp_path / "scanqa" / "ScanQA_v1.0_test_w_obj.json", SCANQA_TEST_W_OBJ)
    with pytest.raises(SceneDataError, match="ScanQA_v1.0_test_wo_obj.json: annotation file not found"):
        load_benchmark(tmp_path, "scanqa", "test")
    write(tmp_path / "scanqa" / "ScanQA_v1.0_test_wo_obj.json", SCANQA_TEST_WO_OBJ)
    samples = load_benchmark(tmp_path, "scanqa", "test")
    assert [(s.id, s.scene_id, s.answers, s.answer) for s in samples] == [
        ("test-scene0707-0", "scene0707_00", [], ""), ("test-scene0708-2", "scene0708_00", [], "")]
    assert samples[0].target_ids == [4] and samples[1].question == "What color is the sofa?"


def test_multi3drefer_zero_and_multiple_targets(tmp_path):
    write(tmp_path / "multi3drefer" / "multi3drefer_val.json", MULTI3DREFER_VAL)
    samples = load_benchmark(tmp_path, "multi3drefer", "val")
    assert samples[0].target_ids == [3, 5] and samples[1].target_ids == []
    assert samples[1].question_type == "zt_wo_d"
    assert samples[0].prompt.endswith("There may be no corresponding object, or there may be one or more objects.")
    bad = [MULTI3DREFER_VAL[0], MULTI3DREFER_VAL[1] | {"object_ids": [2]}]
    write(tmp_path / "multi3drefer" / "multi3drefer_val.json", bad)
    with pytest.raises(SceneDataError, match=r"multi3drefer_val.json: record 1: eval_type 'zt_wo_d' with 1 object_ids"):
        load_benchmark(tmp_path, "multi3drefer", "val")
    write(tmp_path / "multi3drefer" / "multi3drefer_val.json", [MULTI3DREFER_VAL[0] | {"eval_type": "zt"}])
    with pytest.raises(SceneDataError, match=r"record 0: eval_type 'zt' is not one of"):
        load_benchmark(tmp_path, "multi3drefer", "val")


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
    spatial = llava_scanrefer(17, "scene0011_00", "12", "this is a cabinet.", "unique")
    spatial["conversations"][0]["value"] = spatial["conversations"][0]["value"].replace(
        "<image>", "<image>\n" + SPATIAL_INSTRUCTION)  # the training-time rewrite is removed too
    write(path, [spatial, llava_multi3drefer(3, "scene0025_00", [3, 5], "the black chairs.", "mt"),
                 llava_scanqa("val-scene0011-3", "scene0011_00", "What is it?", ["microwave", "oven"])])
    refer, multi, qa = read_llava_style(path)
    assert refer.task == "scanrefer" and refer.scene_id == "scene0011_00" and refer.target_ids == [12]
    assert refer.prompt == "Identify the object according to the following description.\nThis is a cabinet."
    assert refer.answers == ["This is a cabinet."] and refer.answer == "<ground>"  # references: the description
    assert multi.answers == ["The black chairs."] and multi.target_ids == [3, 5] and multi.question_type == "mt"
    assert qa.task == "scanqa" and qa.answers == ["microwave", "oven"] and qa.id == "scanqa_val-scene0011-3_0"
    assert qa.question == "What is it?"


def test_llava_style_sqa3d_ids_are_made_unique_and_questions_filled(tmp_path):
    question = "Which way should I go to reach the door?"
    records = [llava_sqa3d(220602000002, "scene0050_00", s, question, "left", "which")
               for s in ("I just sat down. It is warm.", "I am facing the sofa.", "I am by the bed.")]
    records.append(llava_sqa3d(220602000003, "scene0050_00", "I stand by the desk.", "Is the lamp on?", "yes", "is"))
    write(tmp_path / "sqa3d_train_llava_style.json", records)
    samples = read_llava_style(tmp_path / "sqa3d_train_llava_style.json")
    assert [s.id for s in samples] == ["220602000002_0", "220602000002_1", "220602000002_2", "220602000003_0"]
    assert {s.question for s in samples[:3]} == {question} and samples[3].question == "Is the lamp on?"
    assert samples[0].question_type == "which" and samples[0].answers == ["left"]
    write(tmp_path / "sqa3d_test_llava_style.json", records[2:])  # no repeats: the plain ids stay
    assert [s.id for s in read_llava_style(tmp_path / "sqa3d_test_llava_style.json")] == ["220602000002",
                                                                                          "220602000003"]
    # a question of two sentences: the last sentence start of the metadata's type
    assert sqa3d_question("I sit. There is a lamp. What color is it?", "what") == "What color is it?"
    assert sqa3d_question("I sit. I want light. Which lamp is on?", "others") == "I want light. Which lamp is on?"
    bad = [llava_sqa3d(5, "scene0050_00", "I sit.", "Is it on?", "yes", "what")]
    write(tmp_path / "bad.json", bad)
    with pytest.raises(SceneDataError, match=r"bad.json: record 0: no question of type 'what'"):
        read_llava_style(tmp_path / "bad.json")
    write(tmp_path / "dup.json", [llava_scanrefer(1, "scene0011_00", "12", "a cabinet.", "unique")] * 2)
    with pytest.raises(SceneDataError, match=r"dup.json: records 0 and 1 have the same scanrefer id '1'"):
        read_llava_style(tmp_path / "dup.json")


def test_bad_annotation_files(tmp_path):
    with pytest.raises(SceneDataError, match="ScanRefer_filtered_val.json: annotation file not found"):
        load_benchmark(tmp_path, "scanrefer", "val")
    write(tmp_path / "scanrefer" / "ScanRefer_filtered_val.json", [{"scene_id": "s", "object_id": "1"}])
    with pytest.raises(SceneDataError, match="record 0 lacks object_name, ann_id, description"):
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
    with pytest.raises(SceneDataError, match=r"question 5 \(record 0\) has no annotation"):
        load_benchmark(tmp_path, "sqa3d", "val")


def test_llava_style_question_types_follow_the_benchmark_rules(tmp_path):
    """The processed files' metadata.question_type obeys the rules of the official readers and the predictions
    files (one check, `check_question_type`): a known type of the task, and Multi3DRefer's zero-target types
    exactly for queries without a target."""
    cases = [(llava_multi3drefer(0, "scene0025_00", [3], "the black chair.", "zt_w_d"),
              r"record 0: metadata.question_type 'zt_w_d' with 1 metadata.object_id"),
             (llava_multi3drefer(0, "scene0025_00", [], "the black chair.", "st_w_d"),
              r"record 0: metadata.question_type 'st_w_d' with 0 metadata.object_id"),
             (llava_scanrefer(0, "scene0011_00", "12", "a cabinet.", "hard"),
              r"record 0: metadata.question_type 'hard' is not one of \('unique', 'multiple'\)")]
    for record, message in cases:
        write(tmp_path / "bad.json", [record])
        with pytest.raises(SceneDataError, match=message):
            read_llava_style(tmp_path / "bad.json")
    write(tmp_path / "good.json", [llava_multi3drefer(0, "scene0025_00", [], "the black chair.", "zt_wo_d")])
    assert read_llava_style(tmp_path / "good.json")[0].target_ids == []
