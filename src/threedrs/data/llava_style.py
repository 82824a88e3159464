"""Video-3D LLM's processed "llava-style" files (`data/processed/*_llava_style.json`, FORMATS.md §3.6) -> samples.

One JSON list per file, each record `{"id", "video": "scannet/<scene>", "conversations": [human, gpt],
"metadata": {"dataset", "question_type", ...}}` plus task fields (`annotations` for Scan2Cap val). What the
reader recovers, since the processed files keep only the prompt text:
- the prompt: the human turn without `<image>` and without the training-time spatial instruction;
- grounding references (ScanRefer, Multi3DRefer): the description inside the prompt (as V3D wrote it, i.e.
  `description.capitalize()`), not the `<ground>` answer; targets from `metadata.object_id`;
- the bare question: ScanQA's prompt without " Answer the question simply."; SQA3D's is the last sentence of
  "<situation> <question>" whose derived type (what/is/how/can/which/others) equals `metadata.question_type`
  (sentences end in . ? or !), or failing that the last word boundary with that type;
- ids: `str(id)`. SQA3D train files repeat a question's id once per situation; when a file repeats any SQA3D id,
  every SQA3D id gets the suffix `_k`, k = the number of earlier records of the file with the same id. A
  repeated id of any other task is an error.
"""

from __future__ import annotations

import re
from pathlib import Path

from threedrs.data.instances import SceneDataError
from threedrs.data.tasks import (GROUND_TOKEN, GROUNDING_TASKS, MULTI3DREFER_SUFFIX, OBJECT_TASKS, SCANQA_SUFFIX,
                                 SPATIAL_INSTRUCTION, SQA3D_SUFFIX, Sample, check_question_type, json_records,
                                 object_id, sqa3d_question_type, unique_ids)

TASK_OF_DATASET = {"scanrefer": "scanrefer", "multi3drefer": "multi3drefer", "scan2cap": "scan2cap",
                   "scanQA": "scanqa", "scanqa": "scanqa", "sqa3d": "sqa3d"}


def sqa3d_question(text: str, question_type: str) -> str | None:
    """The question at the end of "<situation> <question>": the last sentence start (else word start) whose
    derived type is `question_type`; None when no start qualifies."""
    sentences = [0] + [m.end() for m in re.finditer(r"[.?!]\s+", text)]
    words = [0] + [m.end() for m in re.finditer(r"\s+", text)]
    for starts in (sentences, words):
        for start in reversed(starts):
            if start < len(text) and sqa3d_question_type(text[start:]) == question_type:
                return text[start:].strip()
    return None


def _description(prompt: str, task: str, where: str) -> str:
    """The description inside a V3D grounding prompt: the text after the instruction line."""
    body = prompt.removesuffix(MULTI3DREFER_SUFFIX) if task == "multi3drefer" else prompt
    if "\n" not in body:
        raise SceneDataError(f"{where}: grounding prompt has no description line after the instruction")
    return body.split("\n", 1)[1]


def _targets(meta: dict, task: str, where: str) -> list[int]:
    if task not in OBJECT_TASKS:
        return []
    if "object_id" not in meta:
        raise SceneDataError(f"{where}: metadata has no object_id")
    ids = meta["object_id"]
    return [object_id(x, where, "metadata.object_id") for x in (ids if isinstance(ids, list) else [ids])]


def read_llava_style(path: Path) -> list[Sample]:
    """Samples of whichever tasks a V3D processed file holds (module docstring for what is recovered how)."""
    out = []
    for i, r in enumerate(json_records(path, ("id", "video", "conversations", "metadata"))):
        where = f"{path}: record {i}"
        meta = r["metadata"]
        if not isinstance(meta, dict) or TASK_OF_DATASET.get(meta.get("dataset", "")) is None:
            raise SceneDataError(f"{where}: unknown metadata.dataset "
                                 f"{meta.get('dataset') if isinstance(meta, dict) else meta!r}")
        task = TASK_OF_DATASET[meta["dataset"]]
        try:
            human, gpt = r["conversations"][0]["value"], r["conversations"][1]["value"]
        except (IndexError, KeyError, TypeError):
            raise SceneDataError(f"{where}: needs a human and a gpt turn") from None
        prompt = human.replace("<image>", "").replace(SPATIAL_INSTRUCTION, "").strip()
        question_type = str(meta.get("question_type", ""))
        targets = _targets(meta, task, where)
        check_question_type(task, question_type, len(targets), where, "metadata.question_type", "metadata.object_id")
        question = ""
        if task in GROUNDING_TASKS:
            answers = [_description(prompt, task, where)]
            gpt = GROUND_TOKEN
        elif task == "scan2cap":
            answers = list(r.get("annotations") or [gpt])
        elif task == "scanqa":
            question = prompt.removesuffix(SCANQA_SUFFIX)
            answers = list(meta.get("answers") or [gpt])
        else:
            found = sqa3d_question(prompt.removesuffix(SQA3D_SUFFIX), question_type)
            if found is None:
                raise SceneDataError(f"{where}: no question of type {question_type!r} in the prompt {prompt!r}")
            question, answers = found, [gpt]
        scene_id = str(r["video"]).split("/")[-1]
        out.append(Sample(str(r["id"]), task, scene_id, prompt, gpt, answers, targets, question_type, question))
    return unique_ids(out, path, numbered="sqa3d")
