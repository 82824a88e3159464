"""ScanQA and SQA3D scores: exact match, LEO's refined exact match, and the answer normaliser (FORMATS §4.6, §4.7).

All percentages are x100. Predictions and annotations are dicts keyed by sample id (any hashable); both must hold
exactly the same ids, otherwise the first offending id is named in a ValueError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence

from threedrs.data.tasks import SQA3D_QUESTION_TYPES, sqa3d_question_type
from threedrs.metrics.captioning import MeteorSession, caption_scores

__all__ = [
    "SQA3D_QUESTION_TYPES",
    "clean_answer",
    "refined_em",
    "scanqa_scores",
    "sqa3d_question_type",
    "sqa3d_scores",
]

# Whole-word typo fixes of step 4 (the upper-case "TV" is intended: ground-truth answers contain it).
_TYPOS = {
    "letf": "left",
    "let": "left",
    "tehre": "there",
    "rigth": "right",
    "rght": "right",
    "behine": "behind",
    "tv": "TV",
    "chai": "chair",
    "wasing": "washing",
    "waslked": "walked",
    "oclock": "o'clock",
}
# Whole-word numbers of step 5: 0 and "none" -> zero, 1..20 and 23 spelled out; other numbers stay digits.
_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty"
).split()
_NUMBERS = {str(i): word for i, word in enumerate(_NUMBER_WORDS)} | {"none": "zero", "23": "twenty-three"}


def _whole_words(table: Mapping[str, str]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(re.escape(word) for word in table) + r")\b")


_TYPO_RE = _whole_words(_TYPOS)
_NUMBER_RE = _whole_words(_NUMBERS)
_ARTICLE_RES = tuple(re.compile(rf"\b{article}\b ([a-zA-Z]+)") for article in ("a", "an", "the"))


def clean_answer(text: str) -> str:
    """The answer normaliser shared by SQA3D, LEO, Video-3D LLM and LLaVA-3D (FORMATS §4.7), step by step.

    1. lower-case;
    2. strip trailing then leading spaces (spaces only), collapse runs of spaces, then replace "." followed by
       2+ spaces by ". " (a no-op after the collapse, kept for fidelity);
    3. delete every character outside ``[a-zA-Z0-9,'\\s\\-:]`` ("3.5" -> "35", "café" -> "caf", "don’t" -> "dont");
    4. whole-word typo fixes (letf/let -> left, ..., tv -> TV, oclock -> o'clock), then "o'  clock" -> "o'clock";
    5. whole-word numbers: 0 and none -> zero, 1..20 -> one..twenty, 23 -> twenty-three (21 stays);
    6. drop one digit glued to the end of letters ("mat2" -> "mat");
    7. drop "a", then "an", then "the" before a word, each one non-overlapping regex pass
       ("the the chair" -> "the chair", "an apple a day" -> "apple day");
    8. backwards -> backward.
    The "ç" -> "c" and "’" -> "'" rules of the original come after step 3 has deleted those characters, so they
    never fire and are left out.
    """
    text = text.lower()
    text = re.sub(r"[ ]+$", "", text)
    text = re.sub(r"^[ ]+", "", text)
    text = re.sub(r" {2,}", " ", text)
    text = re.sub(r"\.[ ]{2,}", ". ", text)
    text = re.sub(r"[^a-zA-Z0-9,'\s\-:]+", "", text)
    text = _TYPO_RE.sub(lambda m: _TYPOS[m.group(1)], text)
    text = re.sub(r"\bo'[ ]+clock\b", "o'clock", text)
    text = _NUMBER_RE.sub(lambda m: _NUMBERS[m.group(1)], text)
    text = re.sub(r"\b([a-zA-Z]+)([0-9])\b", r"\g<1>", text)
    for article in _ARTICLE_RES:
        text = article.sub(r"\g<1>", text)
    return re.sub(r"\bbackwards\b", "backward", text)


def _squeeze(text: str) -> str:
    return "".join(text.split())


def refined_em(pred: str, answers: Sequence[str]) -> tuple[int, int]:
    """LEO's (EM, refined EM) of one prediction (FORMATS §4.6 step 2), on ``clean_answer``-ed strings.

    The references are visited in order and the first one that matches decides: equal -> (1, 1); else the
    whitespace-free prediction inside the whitespace-free reference, or the reverse -> (0, 1). No match -> (0, 0).
    This is order-dependent: a partial match on an earlier reference hides an exact match on a later one. An empty
    (or, after cleaning, empty) prediction is a substring of every reference, so it always gets refined = 1.

    Args:
        pred: the predicted answer.
        answers: one or more reference answers.
    """
    if not answers:
        raise ValueError("answers: expected at least one reference answer, got none")
    pred_clean = clean_answer(pred)
    pred_flat = _squeeze(pred_clean)
    for answer in answers:
        answer_clean = clean_answer(answer)
        if pred_clean == answer_clean:
            return 1, 1
        answer_flat = _squeeze(answer_clean)
        if pred_flat in answer_flat or answer_flat in pred_flat:
            return 0, 1
    return 0, 0


def _check_ids(preds: Mapping[Hashable, object], name: str, annotations: Mapping[Hashable, object]) -> None:
    if not preds:
        raise ValueError("preds: no predictions to score")
    for key, pred in preds.items():
        if key not in annotations:
            raise ValueError(f"preds: id {key!r} has no entry in {name}")
        if not isinstance(pred, str):
            raise ValueError(f"preds: id {key!r} needs an answer string, got {pred!r}")
    for key in annotations:
        if key not in preds:
            raise ValueError(f"preds: no prediction for id {key!r} of {name}")


def scanqa_scores(
    preds: Mapping[Hashable, str],
    answers: Mapping[Hashable, Sequence[str]],
    caption_metrics: bool = True,
    meteor: bool | MeteorSession = True,
) -> dict[str, float | int]:
    """ScanQA scores (FORMATS §4.6).

    - "EM": V3D's exact match, the raw prediction is one of the raw answers (case-sensitive, nothing stripped).
    - "EM-refined": LEO's refined EM (:func:`refined_em`).
    - With ``caption_metrics``: CIDEr, BLEU-1..4, ROUGE-L (and METEOR unless ``meteor`` is False) as in V3D,
      hypothesis = ``pred.rstrip(".")``, references = the raw answers (see :func:`caption_scores`).
    - "count": number of questions.

    Args:
        preds: id -> predicted answer.
        answers: id -> list of reference answers (non-empty), same ids as ``preds``.
        caption_metrics: also compute the caption metrics (pycocoevalcap).
        meteor: as in :func:`caption_scores`; ignored without ``caption_metrics``.
    """
    _check_ids(preds, "answers", answers)
    em = refined = 0
    for key, pred in preds.items():
        refs = answers[key]
        if isinstance(refs, str) or not refs or not all(isinstance(ref, str) for ref in refs):
            raise ValueError(f"answers: id {key!r} needs a non-empty list of answer strings, got {refs!r}")
        em += pred in refs
        refined += refined_em(pred, refs)[1]
    count = len(preds)
    scores: dict[str, float | int] = {"EM": 100.0 * em / count, "EM-refined": 100.0 * refined / count}
    if caption_metrics:
        hyps = {key: pred.rstrip(".") for key, pred in preds.items()}
        scores |= caption_scores({key: list(answers[key]) for key in preds}, hyps, meteor=meteor)
    scores["count"] = count
    return scores


def sqa3d_scores(
    preds: Mapping[Hashable, str], answers: Mapping[Hashable, str], questions: Mapping[Hashable, str]
) -> dict[str, dict[str, float | int]]:
    """SQA3D EM (``clean_answer`` equality, as V3D) and LEO's refined EM, overall and per question type (§4.7).

    Args:
        preds: id -> predicted answer.
        answers: id -> the single reference answer.
        questions: id -> question text (gives the type).
    Returns:
        ``{"overall"|type: {"EM": %, "EM-refined": %, "count": n}}``; a type without questions has NaN scores.
    """
    _check_ids(preds, "answers", answers)
    _check_ids(preds, "questions", questions)
    totals = {group: [0, 0, 0] for group in ("overall", *SQA3D_QUESTION_TYPES)}
    for key, pred in preds.items():
        answer = answers[key]
        if not isinstance(answer, str):
            raise ValueError(f"answers: id {key!r} needs one answer string, got {answer!r}")
        question = questions[key]
        if not isinstance(question, str):
            raise ValueError(f"questions: id {key!r} needs a question string, got {question!r}")
        hit, refined = refined_em(pred, [answer])
        for group in ("overall", sqa3d_question_type(question)):
            totals[group][0] += hit
            totals[group][1] += refined
            totals[group][2] += 1
    return {
        group: {
            "EM": 100.0 * hit / count if count else math.nan,
            "EM-refined": 100.0 * refined / count if count else math.nan,
            "count": count,
        }
        for group, (hit, refined, count) in totals.items()
    }
