"""The predictions files of an evaluation run: their format (FORMATS §4), its checks, and their reader.

An evaluation run folder ``RUN/`` holds ``RUN/predictions/<benchmark>.jsonl``, one JSON object per line, appended
as produced. Every line has ``"id"`` (str, unique in the file), ``"scene_id"`` (str), ``"question_type"`` (str)
and optionally the sample's 3D-awareness (`threedrs.metrics.correspondence`): ``"correspondence"`` (the score),
``"background"``, ``"contrast"`` and ``"recall"``, each {layer: number or null}, ``"recall_chance"`` (number or
null) and ``"pairs"`` (int >= 0), plus:

- scanrefer: ``"pred_box"`` and ``"gt_box"`` ([cx, cy, cz, dx, dy, dz] in metres), ``"scores"`` (P + 1 floats);
- multi3drefer: ``"pred_boxes"`` and ``"gt_boxes"`` (lists of boxes, possibly empty), ``"scores"`` (P + 1 floats);
- scan2cap: ``"prediction"`` (str, "" when undetected), ``"references"`` (non-empty list of str), ``"detected"``;
- scanqa: ``"prediction"`` (str), ``"answers"`` (list of str; empty in every record of a file only for ScanQA's
  test split, which has no public answers: such a file is reported as unscored);
- sqa3d: ``"prediction"``, ``"answer"``, ``"question"`` (str).
Other keys are ignored. `threedrs.scoring` scores the files.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Sequence
from pathlib import Path

from threedrs.data.tasks import TASKS, check_question_type, sqa3d_question_type
from threedrs.metrics.awareness import MEASURES

__all__ = ["PredictionsError", "check_benchmark", "check_records", "predictions_path", "read_predictions"]

_short = reprlib.Repr()
_short.maxstring, _short.maxlist, _short.maxother = 60, 8, 60


class PredictionsError(ValueError):
    """A predictions file or record that cannot be scored; the message names the file and line (or record)."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_box(value: object) -> bool:
    return (isinstance(value, list) and len(value) == 6 and all(_is_number(v) and math.isfinite(v) for v in value)
            and all(v > 0 for v in value[3:]))


def _is_box_list(value: object) -> bool:
    return isinstance(value, list) and all(_is_box(box) for box in value)


def _is_scores(value: object, least: int) -> bool:
    return (isinstance(value, list) and len(value) >= least and all(_is_number(v) for v in value)
            and all(math.isfinite(v) for v in value))


def _is_text_list(value: object) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, str) for v in value)


_BOX = (_is_box, "a box: 6 finite numbers [cx, cy, cz, dx, dy, dz] with sizes > 0")
_TEXT = (lambda v: isinstance(v, str), "a string")
_FIELDS: dict[str, dict[str, tuple[Callable[[object], bool], str]]] = {
    "scanrefer": {"pred_box": _BOX, "gt_box": _BOX,
                  "scores": (lambda v: _is_scores(v, 2), "P + 1 >= 2 finite numbers")},
    "multi3drefer": {"pred_boxes": (_is_box_list, "a list of boxes (6 finite numbers, sizes > 0)"),
                     "gt_boxes": (_is_box_list, "a list of boxes (6 finite numbers, sizes > 0)"),
                     "scores": (lambda v: _is_scores(v, 1), "P + 1 >= 1 finite numbers")},
    "scan2cap": {"prediction": _TEXT, "references": (_is_text_list, "a non-empty list of strings"),
                 "detected": (lambda v: isinstance(v, bool), "true or false")},
    "scanqa": {"prediction": _TEXT, "answers": (lambda v: v == [] or _is_text_list(v), "a list of strings")},
    "sqa3d": {"prediction": _TEXT, "answer": _TEXT, "question": _TEXT},
}


def check_benchmark(benchmark: str) -> None:
    if benchmark not in TASKS:
        raise ValueError(f"benchmark: unknown benchmark {benchmark!r}, expected one of {', '.join(TASKS)}")


def _check_record(benchmark: str, record: object, where: str) -> None:
    """Raise a PredictionsError naming ``where`` (and the id) unless ``record`` is a valid line of ``benchmark``."""
    if not isinstance(record, dict):
        raise PredictionsError(f"{where}: expected a JSON object, got {_short.repr(record)}")
    if not isinstance(record.get("id"), str) or not record["id"]:
        raise PredictionsError(f"{where}: 'id' must be a non-empty string, got {_short.repr(record.get('id'))}")
    where = f"{where} (id {record['id']!r})"
    for key in ("scene_id", "question_type"):
        if not isinstance(record.get(key), str):
            raise PredictionsError(f"{where}: {key!r} must be a string, got {_short.repr(record.get(key))}")
    for key, (check, expected) in _FIELDS[benchmark].items():
        if key not in record:
            raise PredictionsError(f"{where}: missing key {key!r} ({expected})")
        if not check(record[key]):
            raise PredictionsError(f"{where}: {key!r} must be {expected}, got {_short.repr(record[key])}")
    check_question_type(benchmark, record["question_type"], len(record["gt_boxes"]) if benchmark == "multi3drefer" else None,
                        where, count="gt_boxes", error=PredictionsError)
    if benchmark == "scan2cap" and not record["detected"] and record["prediction"]:
        raise PredictionsError(f"{where}: an undetected object must have the empty prediction, "
                               f"got {_short.repr(record['prediction'])}")
    if benchmark == "sqa3d" and sqa3d_question_type(record["question"]) != record["question_type"]:
        raise PredictionsError(f"{where}: question_type {record['question_type']!r} but the question is of type "
                               f"{sqa3d_question_type(record['question'])!r}")
    for key, _ in MEASURES:
        layers = record.get(key)
        if layers is not None and not (isinstance(layers, dict)
                                       and all(v is None or _is_number(v) for v in layers.values())):
            raise PredictionsError(f"{where}: {key!r} must map layers to a number or null, got {_short.repr(layers)}")
    chance = record.get("recall_chance")
    if chance is not None and not _is_number(chance):
        raise PredictionsError(f"{where}: 'recall_chance' must be a number or null, got {_short.repr(chance)}")
    pairs = record.get("pairs")
    if pairs is not None and not (isinstance(pairs, int) and not isinstance(pairs, bool) and pairs >= 0):
        raise PredictionsError(f"{where}: 'pairs' must be an integer >= 0, got {_short.repr(pairs)}")


def predictions_path(run_dir: str | Path, benchmark: str) -> Path:
    """``RUN/predictions/<benchmark>.jsonl``."""
    return Path(run_dir) / "predictions" / f"{benchmark}.jsonl"


def read_predictions(path: str | Path, benchmark: str | None = None, ids: Sequence[str] | None = None) -> list[dict]:
    """Read and validate one predictions file (the module docstring gives the format).

    Args:
        path: ``<benchmark>.jsonl``.
        benchmark: one of ``threedrs.data.tasks.TASKS``; default: the file name without ``.jsonl``.
        ids: the benchmark's sample ids (the evaluation folder's provenance record): a record with another id,
            or a sample without a record, is an error. None: not checked.
    Returns:
        The records in file order. Blank lines are skipped.
    Raises:
        FileNotFoundError: no such file.
        PredictionsError: a malformed JSON line, a missing key, a wrong type, a duplicate id (each naming the
            file, the line number and the id where known), or a file without any record.
    """
    path = Path(path)
    benchmark = path.name.removesuffix(".jsonl") if benchmark is None else benchmark
    if benchmark not in TASKS:
        raise PredictionsError(f"{path}: cannot tell the benchmark ({benchmark!r} is not one of "
                               f"{', '.join(TASKS)}); name the file <benchmark>.jsonl")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file")
    records: list[dict] = []
    first_line: dict[str, int] = {}
    known = set(ids) if ids is not None else None
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}, line {number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise PredictionsError(f"{where}: not UTF-8 text ({error.reason})") from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise PredictionsError(f"{where}: malformed JSON ({error.msg} at column {error.colno})") from None
            _check_record(benchmark, record, where)
            if known is not None and record["id"] not in known:
                raise PredictionsError(f"{where}: id {record['id']!r} is not a sample of {benchmark} as evaluated "
                                       f"(see provenance.json); remove the line")
            if record["id"] in first_line:
                raise PredictionsError(f"{where}: duplicate id {record['id']!r} (first on line "
                                       f"{first_line[record['id']]})")
            first_line[record["id"]] = number
            records.append(record)
    if not records:
        raise PredictionsError(f"{path}: no predictions (the file is empty)")
    if known is not None and len(first_line) < len(known):
        absent = [i for i in ids if i not in first_line]
        raise PredictionsError(f"{path}: {len(absent)} of {len(known)} samples have no prediction (first: "
                               f"{absent[0]!r}); finish the evaluation with `threedrs eval` (it resumes)")
    return records


def check_records(benchmark: str, records: Sequence[dict]) -> None:
    """Validate records given directly (not read from a file): named by their index."""
    check_benchmark(benchmark)
    if not records:
        raise PredictionsError(f"{benchmark}: no records to score")
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        _check_record(benchmark, record, f"{benchmark} record {index}")
        if record["id"] in seen:
            raise PredictionsError(f"{benchmark} record {index}: duplicate id {record['id']!r} "
                                   f"(first at record {seen[record['id']]})")
        seen[record["id"]] = index
