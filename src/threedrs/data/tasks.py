"""Readers of the five benchmarks' official annotation files into one `Sample` record (FORMATS.md §3).

Default file locations under a dataset root (the layout SynthRooms writes and the official downloads unpack to):
```
scanrefer/ScanRefer_filtered_<split>.json           multi3drefer/multi3drefer_<split>.json
scanqa/ScanQA_v1.0_<split>.json  (test: _test_w_obj.json + _test_wo_obj.json)   (Scan2Cap re-uses ScanRefer's)
sqa3d/balanced/v1_balanced_questions_<split>_scannetv2.json + v1_balanced_sqa_annotations_<split>_scannetv2.json
```
Prompts are Video-3D LLM's (§3.6.2-3.6.6); samples are expanded as V3D does: ScanQA train one per (question,
answer), SQA3D train one per (question, situation), Scan2Cap val one per object with all its descriptions as
references. The `<image>` placeholder is not part of `prompt`: the model adapter puts the frames first.

Every reader checks what scoring will rely on while it reads (record fields and types, object ids, eval types,
unique ids) and names the file and the record of the first problem. Video-3D LLM's processed files are read by
`threedrs.data.llava_style`. The benchmarks' names, question types, prompt suffixes and the rules on types and ids
(`check_question_type`, `unique_ids`) are defined here once; that reader and the predictions files use them too.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from threedrs.config import TASK_NAMES
from threedrs.data.instances import SceneDataError
from threedrs.data.labels import read_label_map, scanrefer_eval_types
from threedrs.json_files import read_json_file

TASKS = TASK_NAMES
"""The five benchmarks, in the column order of the paper's Table 1 (the config checks task lists against them)."""
GROUNDING_TASKS = ("scanrefer", "multi3drefer")  # answered by the grounding head (`<ground>`), scored on boxes
OBJECT_TASKS = ("scanrefer", "multi3drefer", "scan2cap")  # tasks whose target ids must be objects of the scene

SCANREFER_EVAL_TYPES = ("unique", "multiple")
"""ScanRefer sub-groups (FORMATS §4.2)."""
MULTI3DREFER_EVAL_TYPES = ("zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt")
"""Multi3DRefer sub-groups (FORMATS §3.2): zero / single / multiple targets, with / without distractors; the
zero-target types ("zt_...") are exactly the queries without a target."""
SQA3D_QUESTION_TYPES = ("what", "is", "how", "can", "which", "others")
"""SQA3D question types derived from the question's first characters (FORMATS §3.5), in the order tested."""
QUESTION_TYPES: dict[str, tuple[str, ...] | None] = {
    "scanrefer": SCANREFER_EVAL_TYPES, "multi3drefer": MULTI3DREFER_EVAL_TYPES, "scan2cap": None, "scanqa": None,
    "sqa3d": SQA3D_QUESTION_TYPES}
"""The question types each benchmark's scores are grouped by; None: any string (Scan2Cap's scores do not depend
on ScanRefer's unique/multiple labels; ScanQA has no types)."""

GROUND_TOKEN = "<ground>"  # the whole answer of a grounding sample; its hidden state is the grounding query
COORD_TOKEN = "<coord>"  # stands for the Scan2Cap box; its embedding gets the box centre's 3D position encoding
SPATIAL_INSTRUCTION = ("The video captures 3D spatial information of a scene. Please focus on the spatial "
                       "relationships in the video and answer the following questions.\n")
MULTI3DREFER_SUFFIX = "\nThere may be no corresponding object, or there may be one or more objects."
SCANQA_SUFFIX = " Answer the question simply."  # follows the question
SQA3D_SUFFIX = " Answer the question using a single word or phrase."  # follows "<situation> <question>"


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


def json_records(path: Path, required: tuple[str, ...]) -> list[dict]:
    """A JSON list of records, each a dict holding the `required` keys (else an error naming the record)."""
    data = read_json_file(path, SceneDataError, expect=list, what="annotation file", shape="a JSON list of records")
    for i, rec in enumerate(data):
        missing = [k for k in required if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise SceneDataError(f"{path}: record {i} lacks {', '.join(missing)}")
    return data


def object_id(value: object, where: str, key: str = "object_id") -> int:
    """An object id as the files write it under `key` (ScanRefer: a digit string, the others: an int) -> int."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise SceneDataError(f"{where}: {key} {value!r} is not a non-negative integer (or its digit string)")
    return int(value)


def _text(record: dict, key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise SceneDataError(f"{where}: {key} must be a string, got {value!r}")
    return value


def check_question_type(task: str, question_type: str, targets: int | None, where: str, key: str = "question_type",
                        count: str = "targets", error: type[Exception] = SceneDataError) -> None:
    """Raise ``error`` naming ``where`` unless ``question_type`` (the value of ``key``) is one of the task's
    `QUESTION_TYPES` and, for Multi3DRefer, agrees with the number of ``targets`` (named ``count``): the zero-target
    types have none, the others at least one. targets None: that rule is not checked."""
    allowed = QUESTION_TYPES[task]
    if allowed is not None and question_type not in allowed:
        raise error(f"{where}: {key} {question_type!r} is not one of {allowed}")
    if task == "multi3drefer" and targets is not None and question_type.startswith("zt") != (targets == 0):
        raise error(f"{where}: {key} {question_type!r} with {targets} {count} (zero-target types have none, the "
                    "others at least one)")


def unique_ids(samples: list[Sample], path: Path, numbered: str | None = None) -> list[Sample]:
    """Refuse two samples of one task with one id (the official files have none; a repeat means a merged or edited
    file), naming ``path`` and both samples' positions.

    numbered: a task whose ids the file may repeat (Video-3D LLM's processed SQA3D train file repeats a question's
    id once per situation): when it repeats any id of that task, every id of that task gets the suffix ``_k``,
    k = the number of earlier samples with the same id (the samples are changed in place).
    """
    counts = Counter(s.id for s in samples if s.task == numbered)
    suffix = any(n > 1 for n in counts.values())
    seen: Counter = Counter()
    first: dict[tuple[str, str], int] = {}
    for i, s in enumerate(samples):
        if s.task == numbered and suffix:
            base = s.id
            s.id = f"{base}_{seen[base]}"
            seen[base] += 1
        key = (s.task, s.id)
        if key in first:
            raise SceneDataError(f"{path}: records {first[key]} and {i} have the same {s.task} id {s.id!r}")
        first[key] = i
    return samples


def scanrefer_prompt(description: str) -> str:
    """V3D ScanRefer prompt; `capitalize()` lower-cases the rest of the description, as V3D does."""
    return "Identify the object according to the following description.\n" + description.capitalize()


def read_scanrefer(path: Path, label_map: Path | None = None) -> list[Sample]:
    """ScanRefer_filtered_<split>.json -> grounding samples (one per description).

    A record's `eval_type` is used when the file has one (M3DRef-CLIP / V3D add it in place); the official
    downloads have none, and then the label table `label_map` (scannetv2-labels.combined.tsv) gives the official
    unique/multiple labels (`threedrs.data.labels`). Without either, the file is refused.
    """
    recs = json_records(path, ("scene_id", "object_id", "object_name", "ann_id", "description"))
    computed: list[str] | None = None
    if any("eval_type" not in r for r in recs):
        if label_map is None:
            raise SceneDataError(f"{path}: records have no eval_type (the official files have none); set "
                                 "data.label_map to ScanNet's scannetv2-labels.combined.tsv to label them")
        computed = scanrefer_eval_types(recs, read_label_map(label_map), path)
    out = []
    for i, r in enumerate(recs):
        where = f"{path}: record {i}"
        eval_type = r["eval_type"] if "eval_type" in r else computed[i]
        check_question_type("scanrefer", eval_type, 1, where, "eval_type")
        target = object_id(r["object_id"], where)
        description = _text(r, "description", where)
        out.append(Sample(f"{r['scene_id']}|{target}|{r['ann_id']}", "scanrefer", _text(r, "scene_id", where),
                          scanrefer_prompt(description), GROUND_TOKEN, [description], [target], eval_type))
    return unique_ids(out, path)


def read_multi3drefer(path: Path) -> list[Sample]:
    """multi3drefer_<split>.json -> grounding samples with 0, 1 or many targets (zero-target types have none)."""
    out = []
    for i, r in enumerate(json_records(path, ("scene_id", "ann_id", "description", "object_ids", "eval_type"))):
        where = f"{path}: record {i}"
        if not isinstance(r["object_ids"], list):
            raise SceneDataError(f"{where}: object_ids must be a list, got {r['object_ids']!r}")
        targets = [object_id(t, where, "object_ids") for t in r["object_ids"]]
        check_question_type("multi3drefer", r["eval_type"], len(targets), where, "eval_type", "object_ids")
        description = _text(r, "description", where)
        out.append(Sample(f"{r['scene_id']}|{r['ann_id']}", "multi3drefer", _text(r, "scene_id", where),
                          scanrefer_prompt(description) + MULTI3DREFER_SUFFIX, GROUND_TOKEN, [description], targets,
                          r["eval_type"]))
    return unique_ids(out, path)


def read_scan2cap(path: Path, split: str) -> list[Sample]:
    """ScanRefer file -> captioning samples: train one per description, val one per object (all references).

    Scan2Cap's scores do not depend on ScanRefer's unique/multiple labels: `question_type` is the record's
    `eval_type` when the file has one, else empty.
    """
    prompt = f"Given an object located at {COORD_TOKEN} , describe the object in detail."
    recs = json_records(path, ("scene_id", "object_id", "object_name", "ann_id", "description"))
    targets = [object_id(r["object_id"], f"{path}: record {i}") for i, r in enumerate(recs)]
    for i, r in enumerate(recs):
        _text(r, "description", f"{path}: record {i}")
    if split == "train":
        return unique_ids([
            Sample(f"{r['scene_id']}|{t}|{r['object_name']}|{r['ann_id']}", "scan2cap", r["scene_id"], prompt,
                   r["description"].capitalize(), [r["description"]], [t], r.get("eval_type", ""))
            for r, t in zip(recs, targets)], path)
    groups: dict[str, list[tuple[dict, int]]] = defaultdict(list)
    for r, t in zip(recs, targets):
        groups[f"{r['scene_id']}|{t}|{r['object_name']}"].append((r, t))
    return [Sample(key, "scan2cap", rs[0][0]["scene_id"], prompt, rs[0][0]["description"].capitalize(),
                   [r["description"] for r, _ in rs], [rs[0][1]], rs[0][0].get("eval_type", ""))
            for key, rs in groups.items()]


def read_scanqa(paths: list[Path], split: str) -> list[Sample]:
    """ScanQA_v1.0_<split>.json -> QA samples (train: one per answer, as V3D).

    The test split is ScanQA_v1.0_test_w_obj.json + ScanQA_v1.0_test_wo_obj.json (ScanNet test scenes): its
    questions have no answers, so its samples have none (predictions can be written, not scored).
    """
    out = []
    required = ("scene_id", "question_id", "question") + (() if split == "test" else ("answers",))
    for path in paths:
        for i, r in enumerate(json_records(path, required)):
            where = f"{path}: record {i}"
            question = _text(r, "question", where)
            prompt = question + SCANQA_SUFFIX
            targets = [object_id(t, where, "object_ids") for t in r.get("object_ids", [])]
            answers = list(r.get("answers", []))
            if split != "test" and not answers:
                raise SceneDataError(f"{where}: question {r['question_id']} has no answers")
            if not all(isinstance(a, str) for a in answers):
                raise SceneDataError(f"{where}: answers must be strings, got {answers!r}")
            if split == "train":
                chosen = [(f"{r['question_id']}_{k}", a) for k, a in enumerate(answers)]
            else:
                chosen = [(str(r["question_id"]), answers[0] if answers else "")]
            out += [Sample(sid, "scanqa", _text(r, "scene_id", where), prompt, answer, answers, targets, "unknow",
                           question) for sid, answer in chosen]
    return unique_ids(out, paths[0])


def sqa3d_question_type(question: str) -> str:
    """what / is / how / can / which / others, from the question's first characters (case-insensitive)."""
    q = question.lstrip().lower()
    for prefix in SQA3D_QUESTION_TYPES[:-1]:  # all but "others"
        if q.startswith(prefix):
            return prefix
    return "others"


def read_sqa3d(questions_path: Path, annotations_path: Path, split: str) -> list[Sample]:
    """SQA3D questions + annotations joined on question_id (train: one sample per situation variant)."""
    questions = read_json_file(questions_path, SceneDataError, what="annotation file")
    annotations = read_json_file(annotations_path, SceneDataError, what="annotation file")
    if not isinstance(questions, dict) or "questions" not in questions:
        raise SceneDataError(f"{questions_path}: expected a dict with a 'questions' list")
    if not isinstance(annotations, dict) or "annotations" not in annotations:
        raise SceneDataError(f"{annotations_path}: expected a dict with an 'annotations' list")
    answer_of = {}
    for i, a in enumerate(annotations["annotations"]):
        try:
            answer_of[a["question_id"]] = a["answers"][0]["answer"]
        except (KeyError, IndexError, TypeError):
            raise SceneDataError(f"{annotations_path}: annotation {i} has no answers: {a!r}") from None
    out = []
    for i, q in enumerate(questions["questions"]):
        missing = [k for k in ("scene_id", "situation", "question", "question_id")
                   if not isinstance(q, dict) or k not in q]
        if missing:
            raise SceneDataError(f"{questions_path}: record {i} lacks {', '.join(missing)}")
        qid = q["question_id"]
        if qid not in answer_of:
            raise SceneDataError(f"{questions_path}: question {qid} (record {i}) has no annotation in "
                                 f"{annotations_path.name}")
        where = f"{questions_path}: record {i}"
        situations = [_text(q, "situation", where)] + (list(q.get("alternative_situation", []))
                                                       if split == "train" else [])
        for k, situation in enumerate(situations):
            prompt = f"{situation} {_text(q, 'question', where)}{SQA3D_SUFFIX}"
            out.append(Sample(f"{qid}_{k}" if split == "train" else str(qid), "sqa3d", _text(q, "scene_id", where),
                              prompt, answer_of[qid], [answer_of[qid]], [], sqa3d_question_type(q["question"]),
                              q["question"]))
    return unique_ids(out, questions_path)


def benchmark_paths(root: str | Path, task: str, split: str) -> list[Path]:
    """The annotation file(s) of `task` and `split` under a dataset root (module docstring layout)."""
    root = Path(root)
    if task in ("scanrefer", "scan2cap"):
        return [root / "scanrefer" / f"ScanRefer_filtered_{split}.json"]
    if task == "multi3drefer":
        return [root / "multi3drefer" / f"multi3drefer_{split}.json"]
    if task == "scanqa":
        if split == "test":
            return [root / "scanqa" / f"ScanQA_v1.0_test_{kind}.json" for kind in ("w_obj", "wo_obj")]
        return [root / "scanqa" / f"ScanQA_v1.0_{split}.json"]
    if task == "sqa3d":
        base = root / "sqa3d" / "balanced"
        return [base / f"v1_balanced_questions_{split}_scannetv2.json",
                base / f"v1_balanced_sqa_annotations_{split}_scannetv2.json"]
    raise ValueError(f"task: unknown benchmark {task!r}; known: {', '.join(TASKS)}")


def load_benchmark(root: str | Path, task: str, split: str, label_map: str | Path | None = None) -> list[Sample]:
    """All samples of one benchmark split from the default files under `root`.

    label_map: ScanNet's scannetv2-labels.combined.tsv (relative to `root` unless absolute), read only when a
    ScanRefer file lacks `eval_type` (the official files do).
    """
    paths = benchmark_paths(root, task, split)
    if task == "scanrefer":
        return read_scanrefer(paths[0], None if label_map is None else Path(root) / label_map)
    if task == "multi3drefer":
        return read_multi3drefer(paths[0])
    if task == "scan2cap":
        return read_scan2cap(paths[0], split)
    if task == "scanqa":
        return read_scanqa(paths, split)
    return read_sqa3d(paths[0], paths[1], split)


