"""Hand-written benchmark files in the shapes of the public releases (FORMATS.md §3), independent of SynthRooms.

Field names, id types and value spellings follow the official files: ScanRefer ids are digit strings and the files
have no eval_type; Multi3DRefer ids are ints; ScanQA's test files carry no answers; the label table has ScanNet's
17 columns (the rows below are real rows of scannetv2-labels.combined.tsv); Video-3D LLM's processed records and
frame files follow its preprocessing scripts.
"""

from __future__ import annotations

import json
from pathlib import Path

LABEL_HEADER = ("id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyuClass", "nyu40class",
                "eigen13class", "ModelNet40", "ModelNet10", "ShapeNetCore55", "synsetoffset", "wnsynsetid",
                "wnsynsetkey", "mpcat40", "mpcat40index")
LABEL_ROWS = (
    "1\twall\twall\t8277\t1\t12\twall\twall\tWall\t\t\t\t\tn04546855\twall.n.01\twall\t1",
    "2\tchair\tchair\t4646\t5\t4\tchair\tchair\tChair\tchair\tchair\tchair\t3001627\tn03001627\tchair.n.01\tchair\t3",
    "3\tfloor\tfloor\t1553\t2\t5\tfloor\tfloor\tFloor\t\t\t\t\tn03365592\tfloor.n.01\tfloor\t2",
    "5\tdoor\tdoor\t1483\t8\t12\tdoor\tdoor\tWall\tdoor\t\t\t\tn03221720\tdoor.n.01\tdoor\t4",
    "4\ttable\ttable\t1170\t7\t10\ttable\ttable\tTable\ttable\ttable\ttable\t4379243\tn04379243\ttable.n.02\ttable\t5",
    "56\ttrash can\ttrash can\t1090\t39\t6\tgarbage bin\totherfurniture\tFurniture\t\t\ttrash_bin\t2747177\t"
    "n02747177\tashcan.n.01\tobjects\t39",
    "10\toffice chair\toffice chair\t595\t5\t4\tchair\tchair\tChair\tchair\tchair\tchair\t3001627\tn04373704\t"
    "swivel_chair.n.01\tchair\t3",
    "29\tkitchen cabinet\tkitchen cabinet\t310\t3\t6\tcabinet\tcabinet\tFurniture\t\t\t\t\tn02933112\t"
    "cabinet.n.01\tcabinet\t7",
    "29\tkitchen cabinets\tkitchen cabinet\t289\t3\t6\tcabinet\tcabinet\tFurniture\t\t\tcabinet\t2933112\t"
    "n02933112\tcabinet.n.01\tcabinet\t7",
)


def scanrefer_record(scene: str, object_id: str, name: str, ann_id: str, description: str) -> dict:
    """One record of ScanRefer_filtered_<split>.json as downloaded (no eval_type)."""
    token = description.replace(".", " .").replace(",", " ,").split()
    return {"scene_id": scene, "object_id": object_id, "object_name": name, "ann_id": ann_id,
            "description": description, "token": token}


# scene0011_00: two kitchen cabinets (nyu 3: multiple), a chair and an office chair (nyu 5: multiple), a door
# (nyu 8: unique) and a trash can (nyu 39: unique); scene0025_00: one chair (unique).
SCANREFER_VAL = [
    scanrefer_record("scene0011_00", "12", "kitchen_cabinets", "0",
                     "this is a white cabinet. it is left of the fridge."),
    scanrefer_record("scene0011_00", "12", "kitchen_cabinets", "1", "a white cabinet by the fridge."),
    scanrefer_record("scene0011_00", "13", "kitchen_cabinet", "0", "the cabinet under the sink."),
    scanrefer_record("scene0011_00", "3", "chair", "0", "the chair at the end of the table."),
    scanrefer_record("scene0011_00", "5", "office_chair", "0", "the black office chair."),
    scanrefer_record("scene0011_00", "21", "door", "0", "the door next to the window."),
    scanrefer_record("scene0011_00", "20", "trash_can", "0", "a trash can beside the door."),
    scanrefer_record("scene0025_00", "3", "chair", "0", "the only chair in the room."),
]
SCANREFER_VAL_TYPES = ["multiple", "multiple", "multiple", "multiple", "multiple", "unique", "unique", "unique"]

MULTI3DREFER_VAL = [
    {"scene_id": "scene0025_00", "object_name": "chair", "ann_id": 7, "description": "the black chairs.",
     "object_ids": [3, 5], "eval_type": "mt", "spatial": False, "color": True, "texture": False, "shape": False},
    {"scene_id": "scene0025_00", "object_name": "sofa", "ann_id": 8, "description": "the pink sofa.",
     "object_ids": [], "eval_type": "zt_wo_d", "spatial": False, "color": True, "texture": False, "shape": False},
]

SCANQA_TEST_W_OBJ = [
    {"scene_id": "scene0707_00", "question_id": "test-scene0707-0", "question": "What is on the desk?",
     "object_ids": [4], "object_names": ["desk"]},
]
SCANQA_TEST_WO_OBJ = [
    {"scene_id": "scene0708_00", "question_id": "test-scene0708-2", "question": "What color is the sofa?"},
]


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_label_table(path: Path, rows: tuple[str, ...] = LABEL_ROWS, header: tuple[str, ...] = LABEL_HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(header) + "\n" + "".join(row + "\n" for row in rows))
    return path


def llava_scanrefer(index: int, scene: str, object_id: str, description: str, eval_type: str) -> dict:
    """A record of scanrefer_vg_<split>_llava_style.json as V3D's process_scanrefer.py writes it."""
    return {"id": index, "video": f"scannet/{scene}", "conversations": [
        {"value": "<image>Identify the object according to the following description.\n" + description.capitalize(),
         "from": "human"}, {"value": "<ground>", "from": "gpt"}],
        "box": [1.0, 2.0, 0.5, 0.6, 0.6, 0.9],
        "metadata": {"dataset": "scanrefer", "question_type": eval_type, "ann_id": "0", "object_id": object_id}}


def llava_multi3drefer(index: int, scene: str, object_ids: list[int], description: str, eval_type: str) -> dict:
    return {"id": index, "video": f"scannet/{scene}", "conversations": [
        {"value": "<image>Identify the object according to the following description.\n" + description.capitalize()
         + "\nThere may be no corresponding object, or there may be one or more objects.", "from": "human"},
        {"value": "<ground>", "from": "gpt"}], "box": [[1.0, 2.0, 0.5, 0.6, 0.6, 0.9]] * len(object_ids),
        "metadata": {"dataset": "multi3drefer", "question_type": eval_type, "ann_id": 7, "object_id": object_ids}}


def llava_sqa3d(question_id: int, scene: str, situation: str, question: str, answer: str, qtype: str) -> dict:
    """A record of sqa3d_<split>_llava_style.json (train repeats the id once per situation)."""
    return {"id": question_id, "video": f"scannet/{scene}", "conversations": [
        {"value": f"<image> {situation} {question} Answer the question using a single word or phrase.",
         "from": "human"}, {"value": answer, "from": "gpt"}],
        "metadata": {"dataset": "sqa3d", "question_type": qtype}}


def llava_scanqa(question_id: str, scene: str, question: str, answers: list[str]) -> dict:
    """A record of scanqa_val_llava_style.json."""
    return {"id": f"scanqa_{question_id}_0", "video": f"scannet/{scene}", "conversations": [
        {"value": f"<image> {question} Answer the question simply.", "from": "human"},
        {"value": answers[0], "from": "gpt"}],
        "metadata": {"dataset": "scanQA", "question_type": "unknow", "answers": answers}}


def embodiedscan_images(scene: str, frames: list[str]) -> dict:
    """An EmbodiedScan info structure (as JSON) with one ScanNet scene and one 3RScan scene (ignored)."""
    image = lambda f: {"img_path": f"scannet/posed_images/{scene}/{f}.jpg",  # noqa: E731
                       "depth_path": f"scannet/posed_images/{scene}/{f}.png", "visible_instance_ids": [0, 3]}
    return {"metainfo": {"categories": {"chair": 0}, "DATASET": "EmbodiedScan"}, "data_list": [
        {"sample_idx": f"scannet/{scene}", "images": [image(f) for f in frames]},
        {"sample_idx": "3rscan/0a4b8ef6-a83a-21f2-8672-dce34dd0d7ca",
         "images": [{"img_path": "3rscan/0a4b8ef6/sequence/frame-000000.color.jpg"}]}]}


def select_frames_record(scene: str, frames: list[str], voxel_nums: list[int], num_all: int) -> dict:
    """A record of Video-3D LLM's scannet_select_frames.json."""
    files = [f"data/scannet/posed_images/{scene}/{f}.jpg" for f in frames]
    return {"video_id": f"scannet/{scene}", "frame_files": files,
            "voxel_nums": voxel_nums, "num_all_voxels": num_all, "num_select_voxels": sum(voxel_nums)}
