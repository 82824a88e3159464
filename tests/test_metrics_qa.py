"""ScanQA / SQA3D scores and the answer normaliser against hand-computed cases and a step-by-step reference."""

from __future__ import annotations

import math
import random
import re

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from threedrs.metrics.qa import clean_answer, refined_em, scanqa_scores, sqa3d_question_type, sqa3d_scores

# ------------------------------------------------------------------------------------------------ clean_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the table of FORMATS §4.7
        ("The TV.", "TV"),
        ("  2 Chairs ", "two chairs"),
        ("Left.", "left"),
        ("none", "zero"),
        ("Backwards!", "backward"),
        ("don’t", "dont"),
        ("Table, chair", "table, chair"),
        # the quirks of §4.7 and §5.14
        ("3.5", "35"),
        ("café", "caf"),
        ("the the chair", "the chair"),
        ("an apple a day", "apple day"),
        ("mat2", "mat"),
        ("no1", "no"),
        ("oclock", "o'clock"),
        ("five o'   clock", "five o'clock"),
        ("tv", "TV"),
        ("21", "21"),
        ("23", "twenty-three"),
        ("0", "zero"),
        ("20 chairs", "twenty chairs"),
        ("letf", "left"),
        ("let", "left"),
        ("rigth of the tehre chai", "right of there chair"),
        ("facing: north-east", "facing: north-east"),
        ("ça", "a"),
        ("a", "a"),
        ("", ""),
    ],
)
def test_clean_answer_examples(text: str, expected: str) -> None:
    assert clean_answer(text) == expected


def reference_clean(text: str) -> str:
    """Independent transcription of the steps of FORMATS §4.7, one regex pass per rule, in the listed order."""
    text = text.lower()
    text = re.sub("[ ]+$", "", text)
    text = re.sub("^[ ]+", "", text)
    text = re.sub(" {2,}", " ", text)
    text = re.sub(r"\.[ ]{2,}", ". ", text)
    text = re.sub(r"[^a-zA-Z0-9,'\s\-:]+", "", text)
    fixes = [
        ("letf", "left"), ("let", "left"), ("tehre", "there"), ("rigth", "right"), ("rght", "right"),
        ("behine", "behind"), ("tv", "TV"), ("chai", "chair"), ("wasing", "washing"), ("waslked", "walked"),
        ("oclock", "o'clock"),
    ]  # fmt: skip
    for wrong, right in fixes:
        text = re.sub(rf"\b{wrong}\b", right, text)
    text = re.sub(r"\bo'[ ]+clock\b", "o'clock", text)
    words = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()
    words += "sixteen seventeen eighteen nineteen twenty".split()
    numbers = [("0", "zero"), ("none", "zero")] + [(str(i), words[i]) for i in range(1, 21)] + [("23", "twenty-three")]
    for digits, word in numbers:
        text = re.sub(rf"\b{digits}\b", word, text)
    text = re.sub(r"\b([a-zA-Z]+)([0-9])\b", r"\1", text)
    for article in ("a", "an", "the"):
        text = re.sub(rf"\b{article}\b ([a-zA-Z]+)", r"\1", text)
    return re.sub(r"\bbackwards\b", "backward", text)


def test_clean_answer_matches_step_by_step_reference_on_random_text() -> None:
    rng = random.Random(0)
    vocabulary = (
        "a an the The A tv TV let letf let's none 0 1 2 10 13 20 21 23 mat2 no1 oclock o' clock chai chair "
        "backwards 3.5 café don’t left. Right! (two) x/y , : - rght behine wasing waslked tehre ç ’ . ?"
    ).split()
    separators = [" ", "  ", "   ", "\t", ""]
    for _ in range(2000):
        text = "".join(rng.choice(vocabulary) + rng.choice(separators) for _ in range(rng.randint(0, 7)))
        assert clean_answer(text) == reference_clean(text), text


# -------------------------------------------------------------------------------------------------- refined EM


def test_refined_em_rules_and_order_dependence() -> None:
    assert refined_em("Chair.", ["chair"]) == (1, 1)  # cleaned strings are compared
    assert refined_em("chair", ["chair", "white chair"]) == (1, 1)
    # the earlier partial match hides the later exact one
    assert refined_em("chair", ["white chair", "chair"]) == (0, 1)
    assert refined_em("white chair", ["chair"]) == (0, 1)  # reference inside the prediction
    assert refined_em("bookshelf", ["book shelf"]) == (0, 1)  # whitespace is ignored for containment
    assert refined_em("table", ["chair", "desk"]) == (0, 0)
    # an empty prediction is a substring of everything: refined = 1
    assert refined_em("", ["chair"]) == (0, 1)
    assert refined_em("?!", ["chair"]) == (0, 1)


def test_refined_em_needs_answers() -> None:
    with pytest.raises(ValueError, match="answers: expected at least one reference answer"):
        refined_em("chair", [])


# ----------------------------------------------------------------------------------------------------- ScanQA


def test_scanqa_exact_match_is_raw_and_case_sensitive() -> None:
    preds = {"q1": "chair", "q2": "Chair", "q3": "table.", "q4": "white table", "q5": "lamp"}
    answers = {
        "q1": ["white chair", "chair"],  # raw EM 1 (membership), refined 1
        "q2": ["chair"],  # case differs: raw EM 0, refined 1
        "q3": ["table"],  # trailing "." kept: raw EM 0, refined 1
        "q4": ["table"],  # raw EM 0, refined 1 (reference inside prediction)
        "q5": ["sofa", "bed"],  # 0, 0
    }
    scores = scanqa_scores(preds, answers, caption_metrics=False)
    assert scores == {"EM": pytest.approx(20.0), "EM-refined": pytest.approx(80.0), "count": 5}


def test_scanqa_caption_metrics_follow_v3d() -> None:
    preds = {"q1": "brown chair.", "q2": "Table", "q3": "two"}
    answers = {"q1": ["brown chair", "chair"], "q2": ["table", "desk"], "q3": ["2", "two"]}
    scores = scanqa_scores(preds, answers, caption_metrics=True, meteor=False)
    # hypothesis = prediction without trailing ".", references = raw answers, no tokenizer
    hyps = {"q1": ["brown chair"], "q2": ["Table"], "q3": ["two"]}
    refs = {key: list(value) for key, value in answers.items()}
    assert scores["CIDEr"] == pytest.approx(100 * Cider().compute_score(refs, hyps)[0])
    assert scores["BLEU-1"] == pytest.approx(100 * Bleu(4).compute_score(refs, hyps, verbose=0)[0][0])
    assert scores["ROUGE-L"] == pytest.approx(100 * Rouge().compute_score(refs, hyps)[0])
    assert "METEOR" not in scores
    assert scores["EM"] == pytest.approx(100 / 3)


@pytest.mark.parametrize(
    ("preds", "answers", "match"),
    [
        ({"q1": "a", "q9": "b"}, {"q1": ["a"], "q9x": ["b"]}, "preds: id 'q9' has no entry in answers"),
        ({"q1": "a"}, {"q1": ["a"], "q2": ["b"]}, "preds: no prediction for id 'q2' of answers"),
        ({"q1": "a"}, {"q1": "a"}, "answers: id 'q1' needs a non-empty list of answer strings"),
        ({"q1": "a"}, {"q1": []}, "answers: id 'q1' needs a non-empty list of answer strings"),
        ({"q1": "a"}, {"q1": ["a", None]}, "answers: id 'q1' needs a non-empty list of answer strings"),
        ({"q1": None}, {"q1": ["a"]}, "preds: id 'q1' needs an answer string"),
        ({}, {}, "preds: no predictions to score"),
    ],
)
def test_scanqa_bad_input(preds, answers, match) -> None:
    with pytest.raises(ValueError, match=match):
        scanqa_scores(preds, answers, caption_metrics=False)


# ------------------------------------------------------------------------------------------------------ SQA3D


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("What is on my left?", "what"),
        ("  WHAT color", "what"),
        ("\tIs the door open?", "is"),
        ("Island in front of me?", "is"),  # a 2-character prefix test
        ("How many chairs?", "how"),
        ("Can I sit down?", "can"),
        ("Which way should I go?", "which"),
        ("Where is the sink?", "others"),
        ("", "others"),
    ],
)
def test_sqa3d_question_type(question: str, kind: str) -> None:
    assert sqa3d_question_type(question) == kind


def test_sqa3d_scores_overall_and_per_type() -> None:
    preds = {1: "Left.", 2: "2", 3: "the table", 4: "no", 5: "white chair"}
    answers = {1: "left", 2: "two", 3: "table", 4: "yes", 5: "chair"}
    questions = {1: "What side?", 2: "How many?", 3: "What is there?", 4: "Is it open?", 5: "Where?"}
    scores = sqa3d_scores(preds, answers, questions)
    # EM: 1, 2, 3 match after cleaning; refined adds 5 (reference inside prediction)
    assert scores["overall"] == pytest.approx({"EM": 60.0, "EM-refined": 80.0, "count": 5})
    assert scores["what"] == pytest.approx({"EM": 100.0, "EM-refined": 100.0, "count": 2})
    assert scores["how"] == pytest.approx({"EM": 100.0, "EM-refined": 100.0, "count": 1})
    assert scores["is"] == pytest.approx({"EM": 0.0, "EM-refined": 0.0, "count": 1})
    assert scores["others"] == pytest.approx({"EM": 0.0, "EM-refined": 100.0, "count": 1})
    assert scores["can"]["count"] == 0 and math.isnan(scores["can"]["EM"])


@pytest.mark.parametrize(
    ("answers", "questions", "match"),
    [
        ({1: "a", 2: "b", 3: "c"}, {1: "What", 2: "Is"}, "preds: no prediction for id 3 of answers"),
        ({1: "a", 2: "b"}, {1: "What"}, "preds: id 2 has no entry in questions"),
        ({1: "a", 2: ["b"]}, {1: "What", 2: "Is"}, "answers: id 2 needs one answer string"),
        ({1: "a", 2: "b"}, {1: "What", 2: None}, "questions: id 2 needs a question string"),
    ],
)
def test_sqa3d_bad_input(answers, questions, match) -> None:
    with pytest.raises(ValueError, match=match):
        sqa3d_scores({1: "a", 2: "b"}, answers, questions)
