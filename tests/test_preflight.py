"""Checks before any model is built: hand-made scenes with official-shaped annotations, tables and frame lists."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from benchmark_files import (embodiedscan_images, scanrefer_record, select_frames_record, write_json,
                             write_label_table)
from scene_files import write_matrix, write_scene
from threedrs.config import load_config
from threedrs.data.boxes import read_box_table
from threedrs.data.instances import SceneDataError
from threedrs.data.preflight import prepare_evaluation, prepare_training
from threedrs.teachers.cache import frame_lists_for

BOX_TABLE = "metadata/scannet_val_pred_box.json"
GOOD = [[0.5, 0.5, 0.5, 1.0, 1.0, 1.0], [2.5, 0.5, 1.0, 1.0, 1.0, 2.0]]


def make_root(tmp_path, records=None, table=None):
    """Two hand-made val scenes (objects 0 = chair, 1 = table), an official ScanRefer file, the label table and a
    proposal table."""
    root = tmp_path / "data"
    for scene in ("scene0011_00", "scene0025_00"):
        write_scene(root, scene_id=scene)
    write_label_table(root / "scannet" / "scannetv2-labels.combined.tsv")
    records = records if records is not None else [
        scanrefer_record("scene0011_00", "0", "chair", "0", "the chair."),
        scanrefer_record("scene0011_00", "1", "table", "0", "the table by the chair."),
        scanrefer_record("scene0025_00", "0", "chair", "0", "the chair by the table.")]
    write_json(root / "scanrefer" / "ScanRefer_filtered_val.json", records)
    write_json(root / BOX_TABLE, table if table is not None else {"scannet/scene0011_00": GOOD,
                                                                 "scannet/scene0025_00": GOOD})
    return root


def config(tmp_path, root, *extra):
    return load_config(None, [f"data.root={root}", "data.frames=2", f"teacher.cache_dir={tmp_path}/cache",
                              "eval.benchmarks=[scanrefer,scan2cap]", *extra])


def prepare(tmp_path, root, *extra):
    cfg = config(tmp_path, root, *extra)
    return prepare_evaluation(cfg, frame_lists_for(cfg))


def test_a_good_evaluation_set_passes_and_keeps_float64_boxes(tmp_path):
    inputs = prepare(tmp_path, make_root(tmp_path))
    refer = inputs.benchmarks[0]
    assert [s.question_type for s in refer.samples] == ["unique", "unique", "unique"]
    ids, boxes = refer.objects["scene0011_00"]
    assert ids == [0, 1] and boxes.dtype == torch.float64
    assert inputs.proposals.boxes["scene0011_00"].dtype == torch.float64
    lists = json.loads((tmp_path / "cache" / "frame_lists.json").read_text())
    assert lists["scenes"]["scene0011_00"] == ["00000", "00020"] and lists["source"] == "all"


def test_a_target_missing_from_its_scene_is_named(tmp_path):
    records = [scanrefer_record("scene0011_00", "0", "chair", "0", "the chair."),
               scanrefer_record("scene0011_00", "7", "chair", "0", "the other chair.")]
    with pytest.raises(SceneDataError, match=r"ScanRefer_filtered_val.json: sample scene0011_00\|7\|0: object 7 is "
                                             r"not an annotated object of scene0011_00 \(objects \[0, 1\]\)"):
        prepare(tmp_path, make_root(tmp_path, records))


def test_proposal_tables(tmp_path):
    nan = {"scannet/scene0011_00": [GOOD[0], [1.0, float("nan"), 0.5, 1.0, 1.0, 1.0]],
           "scannet/scene0025_00": GOOD}
    with pytest.raises(SceneDataError, match=r"scannet_val_pred_box.json: scene scannet/scene0011_00, box 1: "
                                             r"non-finite value"):
        prepare(tmp_path, make_root(tmp_path, table=nan))
    negative = {"scannet/scene0011_00": [[0.5, 0.5, 0.5, 1.0, -1.0, 1.0]]}
    write_json(tmp_path / "neg.json", negative)
    with pytest.raises(SceneDataError, match=r"neg.json: scene scannet/scene0011_00, box 0: negative size"):
        read_box_table(tmp_path / "neg.json")
    # a one-point mask gives a zero-size box: dropped and counted, the evaluation goes on
    point = {"scannet/scene0011_00": [GOOD[0], [3.0, 3.0, 1.0, 0.0, 0.0, 0.0], GOOD[1]],
             "scannet/scene0025_00": GOOD}
    with pytest.warns(UserWarning, match=r"scannet_val_pred_box.json: dropped 1 zero-size proposal\(s\)"):
        inputs = prepare(tmp_path, make_root(tmp_path, table=point))
    assert inputs.proposals.dropped == {"scene0011_00": 1}
    assert inputs.proposals.boxes["scene0011_00"].tolist() == GOOD
    # a grounding scene left without any proposal, or absent from the table, is refused
    shutil.rmtree(tmp_path / "data")
    empty = {"scannet/scene0011_00": [[3.0, 3.0, 1.0, 0.0, 0.0, 0.0]], "scannet/scene0025_00": GOOD}
    with pytest.warns(UserWarning), pytest.raises(SceneDataError, match="scene scene0011_00 has no usable proposal"):
        prepare(tmp_path, make_root(tmp_path, table=empty))
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(SceneDataError, match=r"no proposals for scene\(s\) scene0025_00 of scanrefer"):
        prepare(tmp_path, make_root(tmp_path, table={"scannet/scene0011_00": GOOD}))


def test_intrinsics_are_checked_against_the_images(tmp_path):
    root = make_root(tmp_path)
    frame_dir = root / "scannet" / "posed_images" / "scene0025_00"
    write_matrix(frame_dir / "intrinsic.txt", np.array([[10.0, 0, 4, 0], [0, 10, 30, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    with pytest.raises(SceneDataError, match=r"scene0025_00/intrinsic.txt: principal point \(4, 30\) lies outside "
                                             r"the 8x6 image 00000.jpg"):
        prepare(tmp_path, root)


def test_a_missing_axis_alignment_is_refused_before_work(tmp_path):
    root = make_root(tmp_path)
    (root / "scannet" / "scans" / "scene0025_00" / "scene0025_00.txt").write_text("sceneType = Office\n")
    with pytest.raises(SceneDataError, match=r"scene0025_00.txt: no axisAlignment line"):
        prepare(tmp_path, root)
    inputs = prepare(tmp_path, root, "data.axis_alignment=identity")
    assert len(inputs.benchmarks[0].samples) == 3


def test_frame_lists_naming_frames_the_export_lacks(tmp_path):
    root = make_root(tmp_path)
    images = embodiedscan_images("scene0011_00", ["00000", "00020"])
    images["data_list"].append(embodiedscan_images("scene0025_00", ["00000", "00050"])["data_list"][0])
    write_json(root / "metadata" / "embodiedscan_images.json", images)
    with pytest.raises(SceneDataError, match=r"embodiedscan_images.json: the image list of scene0025_00 names frame "
                                             r"00050 of scene0025_00, which the export cannot use"):
        prepare(tmp_path, root, "data.frame_source=embodiedscan")
    # an invalid pose (frame 00010 of the hand-made scenes) is refused too
    write_json(root / "metadata" / "scannet_select_frames.json", [
        select_frames_record("scene0011_00", ["00020", "00000"], [40, 10], 50),
        select_frames_record("scene0025_00", ["00010", "00000"], [40, 10], 50)])
    with pytest.raises(SceneDataError, match=r"scannet_select_frames.json: record 1 names frame 00010 of "
                                             r"scene0025_00, .*has an invalid pose"):
        prepare(tmp_path / "b", root, "data.frame_source=select_frames", "data.sampling=max_coverage")


def test_a_kept_frame_list_naming_a_missing_frame_is_named(tmp_path):
    root = make_root(tmp_path)
    prepare(tmp_path, root)  # writes cache/frame_lists.json
    (root / "scannet" / "posed_images" / "scene0025_00" / "00020.jpg").unlink()  # the export changed since
    with pytest.raises(SceneDataError, match=r"cache/frame_lists.json: the frame list of scene0025_00 names frame "
                                             r"00020, which the export cannot use .*delete the file to sample again"):
        prepare(tmp_path, root)


def test_training_set_is_checked_whole(tmp_path):
    root = make_root(tmp_path)
    records = [scanrefer_record("scene0011_00", "0", "chair", "0", "the chair."),
               scanrefer_record("scene0025_00", "3", "chair", "0", "a chair that is not there.")]
    write_json(root / "scanrefer" / "ScanRefer_filtered_train.json", records)
    cfg = config(tmp_path, root, "train.tasks=[scanrefer]")
    with pytest.raises(SceneDataError, match=r"ScanRefer_filtered_train.json: sample scene0025_00\|3\|0: object 3"):
        prepare_training(cfg, frame_lists_for(cfg))
    write_json(root / "scanrefer" / "ScanRefer_filtered_train.json", records[:1])
    inputs = prepare_training(cfg, frame_lists_for(cfg))
    assert [s.id for s in inputs.samples] == ["scene0011_00|0|0"] and set(inputs.objects) == {"scene0011_00"}


def corrupted_copy(synthrooms_tiny, tmp_path, split):
    """A copy of the tiny SynthRooms set whose ScanRefer <split> file names an object its scene lacks."""
    root = tmp_path / "rooms"
    shutil.copytree(synthrooms_tiny, root)
    path = root / "scanrefer" / f"ScanRefer_filtered_{split}.json"
    records = json.loads(path.read_text())
    records[-1]["object_id"] = "999"
    path.write_text(json.dumps(records))
    return root, records[-1]


def refuse_model(*args, **kwargs):
    raise AssertionError("the model was built before the data was checked")


def test_a_bad_annotation_fails_evaluation_before_the_model_is_built(synthrooms_tiny, tmp_path, monkeypatch):
    from threedrs import evaluate as evaluate_module

    root, bad = corrupted_copy(synthrooms_tiny, tmp_path, "val")
    monkeypatch.setattr(evaluate_module, "load_task", refuse_model)
    monkeypatch.setattr(evaluate_module, "resolve_checkpoint", refuse_model)
    cfg = load_config(None, [f"data.root={root}", f"output_dir={tmp_path}/run", f"teacher.cache_dir={tmp_path}/c",
                             "data.frames=4", "eval.meteor=false"])
    with pytest.raises(SceneDataError, match=rf"ScanRefer_filtered_val.json: sample {bad['scene_id']}\|999\|"):
        evaluate_module.evaluate(cfg, progress=False)
    assert not (tmp_path / "run" / "eval" / "predictions").exists()


def test_a_bad_annotation_fails_training_before_the_model_is_built(synthrooms_tiny, tmp_path, monkeypatch):
    from threedrs.models import registry
    from threedrs.train import train

    root, bad = corrupted_copy(synthrooms_tiny, tmp_path, "train")
    monkeypatch.setattr(registry, "build_adapter", refuse_model)
    cfg = load_config(None, [f"data.root={root}", f"output_dir={tmp_path}/run", f"teacher.cache_dir={tmp_path}/c",
                             "data.frames=4", "align.loss=none"])
    with pytest.raises(SceneDataError, match=rf"ScanRefer_filtered_train.json: sample {bad['scene_id']}\|999\|"):
        train(cfg, progress=False)
