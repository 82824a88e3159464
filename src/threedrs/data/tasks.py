"""Readers of the five benchmarks' official annotation files into one `Sample` record (FORMATS.md §3).

Default file locations under a dataset root (the layout SynthRooms writes and the official downloads unpack to):
```
scanrefer/ScanRefer_filtered_<split>.json           multi3drefer/multi3drefer_<split>.json
scanqa/ScanQA_v1.0_<split>.json                     (Scan2Cap re-uses the ScanRefer files)
sqa3d/balanced/v1_balanced_questions_<split>_scannetv2.json + v1_balanced_sqa_annotations_<split>_scannetv2.json
```
Prompts are Video-3D LLM's (§3.6.2-3.6.6); samples are expanded as V3D does: ScanQA train one per (question,
answer), SQA3D train one per (question, situation), Scan2Cap val one per object with all its descriptions as
references. The `<image>` placeholder is not part of `prompt`: the model adapter puts the frames first.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from threedrs.data.instances import SceneDataError, read_json

TASKS = ("scanrefer", "multi3drefer", "scan2cap", "scanqa", "sqa3d")
GROUND_TOKEN = "<ground>"  # the whole answer of a grounding sample; its hidden state is the grounding query
COORD_TOKEN = "<coord>"  # stands for the Scan2Cap box; its embedding gets the box centre's 3D position encoding
SPATIAL_INSTRUCTION = ("The video captures 3D spatial information of a scene. Please focus on the spatial "
                       "relationships in the video and answer the following questions.\n")


@dataclass
class Sample:
    """One benchmark sample.

    id: unique within its task (ScanRefer "scene|object|ann", Multi3DRefer "scene|ann", Scan2Cap
        "scene|object|name", ScanQA question_id[_k], SQA3D question_id[_situation]).
    prompt: the user text after the frames.  answer: the training target ("<ground>" for grounding).
    answers: every reference (QA answers, Scan2Cap descriptions); target_ids: grounding targets, the captioned
        object, or the question's related objects (may be empty).  question_type: eval split (unique/multiple,
        zt_w_d..mt, what/is/how/can/which/others, ...).
    """

    id: str
    task: str
    scene_id: str
    prompt: str
    answer: str
    answers: list[str] = field(default_factory=list)
    target_ids: list[int] = field(default_factory=list)
    question_type: str = ""
    question: str = ""  # the bare question (ScanQA, SQA3D), without situation or instruction


def _records(path: Path, required: tuple[str, ...]) -> list[dict]:
    data = read_json(path, "annotation file")
    if not isinstance(data, list):
        raise SceneDataError(f"{path}: expected a JSON list of records")
    for i, rec in enumerate(data):
        missing = [k for k in required if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise SceneDataError(f"{path}: record {i} lacks {', '.join(missing)}")
    return data


def scanrefer_prompt(description: str) -> str:
    """V3D ScanRefer prompt; `capitalize()` lower-cases the rest of the description, as V3D does."""
    return "Identify the object according to the following description.\n" + description.capitalize()


def read_scanrefer(path: Path) -> list[Sample]:
    """ScanRefer_filtered_<split>.json -> grounding samples (one per description)."""
    out = []
    for r in _records(path, ("scene_id", "object_id", "ann_id", "description")):
        out.append(Sample(f"{r['scene_id']}|{r['object_id']}|{r['ann_id']}", "scanrefer", r["scene_id"],
                          scanrefer_prompt(r["description"]), GROUND_TOKEN, [r["description"]],
                          [int(r["object_id"])], r.get("eval_type", "")))
    return out


def read_multi3drefer(path: Path) -> list[Sample]:
    """multi3drefer_<split>.json -> grounding samples with 0, 1 or many targets."""
    out = []
    suffix = "\nThere may be no corresponding object, or there may be one or more objects."
    for r in _records(path, ("scene_id", "ann_id", "description", "object_ids", "eval_type")):
        out.append(Sample(f"{r['scene_id']}|{r['ann_id']}", "multi3drefer", r["scene_id"],
                          scanrefer_prompt(r["description"]) + suffix, GROUND_TOKEN, [r["description"]],
                          [int(i) for i in r["object_ids"]], r["eval_type"]))
    return out


def read_scan2cap(path: Path, split: str) -> list[Sample]:
    """ScanRefer file -> captioning samples: train one per description, val one per object (all references)."""
    prompt = f"Given an object located at {COORD_TOKEN} , describe the object in detail."
    recs = _records(path, ("scene_id", "object_id", "object_name", "description"))
    if split == "train":
        return [Sample(f"{r['scene_id']}|{r['object_id']}|{r['object_name']}|{r.get('ann_id', i)}", "scan2cap",
                       r["scene_id"], prompt, r["description"].capitalize(), [r["description"]],
                       [int(r["object_id"])], r.get("eval_type", "")) for i, r in enumerate(recs)]
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        groups[f"{r['scene_id']}|{r['object_id']}|{r['object_name']}"].append(r)
    return [Sample(key, "scan2cap", rs[0]["scene_id"], prompt, rs[0]["description"].capitalize(),
                   [r["description"] for r in rs], [int(rs[0]["object_id"])], rs[0].get("eval_type", ""))
            for key, rs in groups.items()]


def read_scanqa(path: Path, split: str) -> list[Sample]:
    """ScanQA_v1.0_<split>.json -> QA samples (train: one per answer, as V3D)."""
    out = []
    for r in _records(path, ("scene_id", "question_id", "question", "answers")):
        prompt = f"{r['question']} Answer the question simply."
        targets = [int(i) for i in r.get("object_ids", [])]
        answers = list(r["answers"])
        if not answers:
            raise SceneDataError(f"{path}: question {r['question_id']} has no answers")
        chosen = enumerate(answers) if split == "train" else [(0, answers[0])]
        for k, ans in chosen:
            out.append(Sample(f"{r['question_id']}_{k}" if split == "train" else str(r["question_id"]), "scanqa",
                              r["scene_id"], prompt, ans, answers, targets, "unknow", r["question"]))
    return out


def sqa3d_question_type(question: str) -> str:
    """what / is / how / can / which / others, from the question's first characters (case-insensitive)."""
    q = question.lstrip().lower()
    for prefix in ("what", "is", "how", "can", "which"):
        if q.startswith(prefix):
            return prefix
    return "others"


def read_sqa3d(questions_path: Path, annotations_path: Path, split: str) -> list[Sample]:
    """SQA3D questions + annotations joined on question_id (train: one sample per situation variant)."""
    questions = read_json(questions_path, "annotation file")
    annotations = read_json(annotations_path, "annotation file")
    if not isinstance(questions, dict) or "questions" not in questions:
        raise SceneDataError(f"{questions_path}: expected a dict with a 'questions' list")
    if not isinstance(annotations, dict) or "annotations" not in annotations:
        raise SceneDataError(f"{annotations_path}: expected a dict with an 'annotations' list")
    answer_of = {}
    for a in annotations["annotations"]:
        try:
            answer_of[a["question_id"]] = a["answers"][0]["answer"]
        except (KeyError, IndexError, TypeError):
            raise SceneDataError(f"{annotations_path}: annotation without answers: {a!r}") from None
    out = []
    for q in questions["questions"]:
        qid = q.get("question_id")
        if qid not in answer_of:
            raise SceneDataError(f"{questions_path}: question {qid} has no annotation in {annotations_path.name}")
        situations = [q["situation"]] + (list(q.get("alternative_situation", [])) if split == "train" else [])
        for k, situation in enumerate(situations):
            prompt = f"{situation} {q['question']} Answer the question using a single word or phrase."
            out.append(Sample(f"{qid}_{k}" if split == "train" else str(qid), "sqa3d", q["scene_id"], prompt,
                              answer_of[qid], [answer_of[qid]], [], sqa3d_question_type(q["question"]),
                              q["question"]))
    return out


def benchmark_paths(root: str | Path, task: str, split: str) -> list[Path]:
    """The annotation file(s) of `task` and `split` under a dataset root (module docstring layout)."""
    root = Path(root)
    if task in ("scanrefer", "scan2cap"):
        return [root / "scanrefer" / f"ScanRefer_filtered_{split}.json"]
    if task == "multi3drefer":
        return [root / "multi3drefer" / f"multi3drefer_{split}.json"]
    if task == "scanqa":
        return [root / "scanqa" / f"ScanQA_v1.0_{split}.json"]
    if task == "sqa3d":
        base = root / "sqa3d" / "balanced"
        return [base / f"v1_balanced_questions_{split}_scannetv2.json",
                base / f"v1_balanced_sqa_annotations_{split}_scannetv2.json"]
    raise ValueError(f"task: unknown benchmark {task!r}; known: {', '.join(TASKS)}")


def load_benchmark(root: str | Path, task: str, split: str) -> list[Sample]:
    """All samples of one benchmark split from the default files under `root`."""
    paths = benchmark_paths(root, task, split)
    if task == "scanrefer":
        return read_scanrefer(paths[0])
    if task == "multi3drefer":
        return read_multi3drefer(paths[0])
    if task == "scan2cap":
        return read_scan2cap(paths[0], split)
    if task == "scanqa":
        return read_scanqa(paths[0], split)
    return read_sqa3d(paths[0], paths[1], split)


_LLAVA_TASKS = {"scanrefer": "scanrefer", "multi3drefer": "multi3drefer", "scan2cap": "scan2cap",
                "scanQA": "scanqa", "scanqa": "scanqa", "sqa3d": "sqa3d"}


def read_llava_style(path: Path) -> list[Sample]:
    """Video-3D LLM's processed "llava-style" JSON (§3.6) -> samples of whichever tasks it holds.

    The `<image>` placeholder and the training-time spatial instruction are removed from the prompt; the ids are
    the file's own `id`s (as strings).
    """
    out = []
    for i, r in enumerate(_records(path, ("id", "video", "conversations", "metadata"))):
        meta = r["metadata"]
        task = _LLAVA_TASKS.get(meta.get("dataset", ""))
        if task is None:
            raise SceneDataError(f"{path}: record {i} has unknown metadata.dataset {meta.get('dataset')!r}")
        try:
            human, gpt = r["conversations"][0]["value"], r["conversations"][1]["value"]
        except (IndexError, KeyError, TypeError):
            raise SceneDataError(f"{path}: record {i} needs a human and a gpt turn") from None
        prompt = human.replace("<image>", "").replace(SPATIAL_INSTRUCTION, "").strip()
        ids = meta.get("object_id", [])
        targets = [int(x) for x in (ids if isinstance(ids, list) else [ids])]
        answers = r.get("annotations") or meta.get("answers") or [gpt]
        scene_id = r["video"].split("/")[-1]
        out.append(Sample(str(r["id"]), task, scene_id, prompt, gpt, list(answers), targets,
                          str(meta.get("question_type", ""))))
    return out
