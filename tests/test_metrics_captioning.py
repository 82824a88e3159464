"""Caption metrics against pycocoevalcap's own classes, the Scan2Cap m@0.5 protocol, and METEOR's robustness."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from threedrs.metrics import captioning
from threedrs.metrics.captioning import MeteorSession, caption_scores, scan2cap_normalise, scan2cap_scores

GTS = {
    "scene0011_00|12|kitchen_cabinets": ["This is a white cabinet. It is left of the fridge.", "A tall cabinet."],
    "scene0011_00|3|chair": ["A brown chair, by the desk.", "The chair is brown.", "a wooden chair"],
    "scene0025_00|7|table": ["A round table in the middle of the room."],
    "scene0025_00|9|lamp": ["The lamp is on the desk.", "a small lamp"],
}
RES = {
    "scene0011_00|12|kitchen_cabinets": "A white cabinet left of the fridge.",
    "scene0011_00|3|chair": "A brown chair by the desk.",
    "scene0025_00|7|table": "A round table.",
    "scene0025_00|9|lamp": "A lamp on the table.",
}


def coco_scores(refs: dict, hyps: dict) -> dict:
    """pycocoevalcap's classes called directly on {key: [refs]} / {key: [hyp]}, x100."""
    bleu = Bleu(4).compute_score(refs, hyps, verbose=0)[0]
    return {
        "BLEU-1": 100 * bleu[0],
        "BLEU-4": 100 * bleu[3],
        "ROUGE-L": 100 * Rouge().compute_score(refs, hyps)[0],
        "CIDEr": 100 * Cider().compute_score(refs, hyps)[0],
    }


def test_scan2cap_normalise() -> None:
    assert scan2cap_normalise("A brown chair. It is by the desk.") == "sos a brown chair .  it is by the desk .  eos"
    assert scan2cap_normalise("Table, Chair") == "sos table ,  chair eos"
    assert scan2cap_normalise("") == "sos  eos"


def test_caption_scores_equal_pycocoevalcap_on_the_same_strings() -> None:
    refs = {key: [scan2cap_normalise(text) for text in texts] for key, texts in GTS.items()}
    hyps = {key: scan2cap_normalise(text) for key, text in RES.items()}
    scores = caption_scores(refs, hyps, meteor=False)
    expected = coco_scores(refs, {key: [hyp] for key, hyp in hyps.items()})
    assert {key: scores[key] for key in expected} == pytest.approx(expected)
    assert 0 < scores["BLEU-4"] < scores["BLEU-1"] < 100 and scores["CIDEr"] > 0
    assert set(scores) == {"CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"}


def test_caption_scores_perfect_hypotheses() -> None:
    refs = {1: ["a red chair near the door"], 2: ["the lamp is on"]}
    scores = caption_scores(refs, {1: "a red chair near the door", 2: "the lamp is on"}, meteor=False)
    assert scores["BLEU-4"] == pytest.approx(100.0)
    assert scores["ROUGE-L"] == pytest.approx(100.0)


def test_scan2cap_scores_protocol() -> None:
    detected = {key: True for key in GTS}
    detected["scene0025_00|9|lamp"] = False
    res = dict(RES)
    scores = scan2cap_scores(GTS, res, detected, meteor=False)
    refs = {key: [scan2cap_normalise(text) for text in texts] for key, texts in GTS.items()}
    hyps = {key: [scan2cap_normalise(res[key] if detected[key] else "")] for key in GTS}
    assert hyps["scene0025_00|9|lamp"] == ["sos  eos"]
    assert {key: scores[key] for key in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr")} == pytest.approx(
        coco_scores(refs, hyps)
    )
    assert scores["count"] == 4 and scores["detected"] == 3
    # the undetected object's own CIDEr is exactly 0, so the corpus CIDEr is the mean of the other three over 4
    per_object = Cider().compute_score(refs, hyps)[1]
    assert per_object[3] == 0.0
    assert scores["CIDEr"] == pytest.approx(100 * sum(per_object[:3]) / 4)


def test_scan2cap_nothing_detected_gives_zero_cider() -> None:
    scores = scan2cap_scores(GTS, {}, {key: False for key in GTS}, meteor=False)
    assert scores["CIDEr"] == 0.0
    assert scores["detected"] == 0


@pytest.mark.parametrize(
    ("gts", "res", "detected", "match"),
    [
        ({"a": ["x"]}, {"b": "x"}, {"a": True}, "res: id 'b' has no references in gts"),
        ({"a": ["x"]}, {"a": "x"}, {"a": True, "c": False}, "detected: id 'c' has no references in gts"),
        ({"a": ["x"], "b": ["y"]}, {"a": "x"}, {"a": True}, "detected: no entry for id 'b' of gts"),
        ({"a": ["x"]}, {}, {"a": True}, "res: no caption for detected id 'a'"),
        ({"a": []}, {"a": "x"}, {"a": True}, "gts: id 'a' needs a non-empty list of descriptions"),
        ({"a": "x"}, {"a": "x"}, {"a": True}, "gts: id 'a' needs a non-empty list of descriptions"),
        ({"a": ["x"]}, {"a": 3}, {"a": True}, "res: id 'a' needs one caption string"),
        ({}, {}, {}, "gts: no captions to score"),
    ],
)
def test_scan2cap_bad_input(gts, res, detected, match) -> None:
    with pytest.raises(ValueError, match=match):
        scan2cap_scores(gts, res, detected, meteor=False)


@pytest.mark.parametrize(
    ("gts", "res", "match"),
    [
        ({"a": ["x"]}, {"a": "x", "b": "y"}, "res: id 'b' has no references in gts"),
        ({"a": ["x"], "b": ["y"]}, {"a": "x"}, "res: no hypothesis for id 'b' of gts"),
        ({"a": []}, {"a": "x"}, "gts: id 'a' needs a non-empty list of reference strings"),
        ({"a": ["x"]}, {"a": ["x"]}, "res: id 'a' needs one hypothesis string"),
    ],
)
def test_caption_scores_bad_input(gts, res, match) -> None:
    with pytest.raises(ValueError, match=match):
        caption_scores(gts, res, meteor=False)


class HangingMeteor:
    """Stands in for pycocoevalcap's Meteor: a subprocess that never answers, and the wrapper's lock."""

    def __init__(self) -> None:
        code = "import time; time.sleep(60)"
        self.meteor_p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()

    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        self.lock.acquire()
        return float(self.meteor_p.stdout.readline().strip()), []


def test_meteor_session_stops_a_hanging_jar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captioning.shutil, "which", lambda name: "/bin/" + name)
    monkeypatch.setattr(captioning, "Meteor", HangingMeteor)
    session = MeteorSession(timeout_s=0.5)
    process, lock = session._meteor.meteor_p, session._meteor.lock
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"METEOR did not answer within 0.5 s; its process was stopped"):
        session.score({"a": ["x"]}, {"a": "x"})
    assert time.monotonic() - start < 10
    assert process.poll() is not None and not lock.locked()
    with pytest.raises(RuntimeError, match="METEOR session is closed"):
        session.score({"a": ["x"]}, {"a": "x"})


def test_meteor_needs_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="METEOR needs a Java runtime"):
        caption_scores({"a": ["x"]}, {"a": "x"}, meteor=True)
    with pytest.raises(ValueError, match="timeout_s: expected a positive number"):
        MeteorSession(timeout_s=0)


@pytest.mark.slow
def test_meteor_one_session() -> None:
    """The only test that starts the METEOR jar: one session for every check."""
    refs = {key: [scan2cap_normalise(text) for text in texts] for key, texts in GTS.items()}
    hyps = {key: scan2cap_normalise(text) for key, text in RES.items()}
    with MeteorSession() as session:
        scores = caption_scores(refs, hyps, meteor=session)
        # the same input through pycocoevalcap's wrapper directly
        direct, _ = session._meteor.compute_score(refs, {key: [hyp] for key, hyp in hyps.items()})
        assert scores["METEOR"] == pytest.approx(100 * direct)
        # the Scan2Cap protocol reuses the session; undetected objects only lower the score
        all_detected = scan2cap_scores(GTS, RES, {key: True for key in GTS}, meteor=session)
        none_detected = scan2cap_scores(GTS, {}, {key: False for key in GTS}, meteor=session)
        assert all_detected["METEOR"] == pytest.approx(scores["METEOR"])
        assert 0 <= none_detected["METEOR"] < all_detected["METEOR"]
        # line breaks and "|||" would break the jar's line protocol; they are neutralised, scores unchanged
        broken = session.score({"a": ["a red\nchair ||| here"], "b": [""]}, {"a": "a red\r\nchair", "b": ""})
        clean = session.score({"a": ["a red chair  here"], "b": [""]}, {"a": "a red  chair", "b": ""})
        assert broken == pytest.approx(clean) and broken > 0
    assert session._meteor is None
