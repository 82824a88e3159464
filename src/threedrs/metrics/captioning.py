"""Caption metrics (pycocoevalcap BLEU, ROUGE-L, CIDEr, METEOR) and the Scan2Cap m@0.5 protocol (FORMATS §4.4, §4.5).

Strings are scored as given: no PTB tokenizer, no lower-casing beyond what a caller's normaliser does. Scores
are x100. METEOR runs the METEOR 1.5 jar in a Java subprocess (about 11 s to start): open one
:class:`MeteorSession` per evaluation run and pass it to every scorer, or pass ``meteor=False`` to skip it.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Hashable, Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

__all__ = ["MeteorSession", "caption_scores", "scan2cap_cider_per_sample", "scan2cap_normalise", "scan2cap_scores"]


def _meteor_text(text: str) -> str:
    """Make a string safe for the jar's line protocol. The jar reads one line per request and splits its fields
    on "|||": a line break inside a caption desynchronises the pipe (the wrapper then fails, or hangs), so line
    breaks become spaces (METEOR splits words on whitespace: same score) and "|||" is removed (pycocoevalcap's
    wrapper does so for hypotheses only)."""
    return text.replace("\r", " ").replace("\n", " ").replace("|||", "")


class MeteorSession:
    """One METEOR 1.5 process (pycocoevalcap's wrapper), reused for any number of scoring calls.

    Use as a context manager, or call :meth:`close`. Each :meth:`score` call is guarded by a watchdog: if the jar
    does not answer within ``timeout_s`` seconds, or dies, the process is stopped and a RuntimeError is raised
    instead of hanging (the wrapper would otherwise block on a pipe, or deadlock on its lock at exit).

    Args:
        timeout_s: seconds one :meth:`score` call may take, > 0.
    """

    def __init__(self, timeout_s: float = 600.0) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: expected a positive number of seconds, got {timeout_s}")
        if shutil.which("java") is None:
            raise RuntimeError("METEOR needs a Java runtime (`java` on PATH); pass meteor=False to skip METEOR")
        self._timeout_s = timeout_s
        self._meteor: Meteor | None = Meteor()

    def __enter__(self) -> MeteorSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def score(self, gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, str]) -> float:
        """Corpus METEOR (the jar's aggregate, 0..1) of hypotheses ``res[key]`` against references ``gts[key]``."""
        meteor = self._meteor
        if meteor is None:
            raise RuntimeError("METEOR session is closed")
        refs = {key: [_meteor_text(ref) for ref in gts[key]] for key in gts}
        hyps = {key: [_meteor_text(res[key])] for key in gts}
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            meteor.meteor_p.kill()

        watchdog = threading.Timer(self._timeout_s, stop)
        watchdog.start()
        try:
            score, _ = meteor.compute_score(refs, hyps)
        except Exception as error:
            if meteor.lock.locked():
                meteor.lock.release()
            self.close()
            reason = f"did not answer within {self._timeout_s:g} s" if timed_out.is_set() else f"failed: {error!r}"
            raise RuntimeError(f"METEOR {reason}; its process was stopped") from error
        finally:
            watchdog.cancel()
        return float(score)

    def close(self) -> None:
        """Stop the Java process (idempotent)."""
        meteor, self._meteor = self._meteor, None
        if meteor is not None:
            with contextlib.suppress(OSError):  # the pipe is broken when the jar already died
                meteor.meteor_p.stdin.close()
            meteor.meteor_p.kill()
            meteor.meteor_p.wait()


def _check_caption_inputs(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, str]) -> None:
    if not gts:
        raise ValueError("gts: no captions to score")
    for key in res:
        if key not in gts:
            raise ValueError(f"res: id {key!r} has no references in gts")
    for key, refs in gts.items():
        if key not in res:
            raise ValueError(f"res: no hypothesis for id {key!r} of gts")
        if isinstance(refs, str) or not refs or not all(isinstance(ref, str) for ref in refs):
            raise ValueError(f"gts: id {key!r} needs a non-empty list of reference strings, got {refs!r}")
        if not isinstance(res[key], str):
            raise ValueError(f"res: id {key!r} needs one hypothesis string, got {res[key]!r}")


def caption_scores(
    gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, str], meteor: bool | MeteorSession = True
) -> dict[str, float]:
    """Corpus caption metrics of pycocoevalcap on the strings as given (FORMATS §4.5), x100.

    Args:
        gts: id -> non-empty list of reference captions.
        res: id -> hypothesis caption; exactly the ids of ``gts``.
        meteor: True starts a :class:`MeteorSession` for this call, a session is reused, False skips METEOR.
    Returns:
        {"CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"} and "METEOR" unless skipped. BLEU is
        corpus-level (closest reference length); CIDEr's document frequencies come from these references only.
    """
    _check_caption_inputs(gts, res)
    refs = {key: list(gts[key]) for key in gts}
    hyps = {key: [res[key]] for key in gts}
    bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
    rouge, _ = Rouge().compute_score(refs, hyps)
    cider, _ = Cider().compute_score(refs, hyps)
    scores = {"CIDEr": 100.0 * float(cider)}
    scores |= {f"BLEU-{n}": 100.0 * float(value) for n, value in enumerate(bleu, start=1)}
    scores["ROUGE-L"] = 100.0 * float(rouge)
    if isinstance(meteor, MeteorSession):
        scores["METEOR"] = 100.0 * meteor.score(refs, res)
    elif meteor:
        with MeteorSession() as session:
            scores["METEOR"] = 100.0 * session.score(refs, res)
    return scores


def scan2cap_normalise(text: str) -> str:
    """V3D's Scan2Cap text normalisation (FORMATS §4.4), for hypotheses and references alike: every "." becomes
    " . ", every "," becomes " , ", lower-case, then "sos " + text + " eos". Double spaces are kept on purpose
    ("A chair. It" -> "sos a chair .  it eos"); "" becomes "sos  eos"."""
    return "sos " + text.replace(".", " . ").replace(",", " , ").lower() + " eos"


def scan2cap_scores(
    gts: Mapping[Hashable, Sequence[str]],
    res: Mapping[Hashable, str],
    detected: Mapping[Hashable, bool],
    meteor: bool | MeteorSession = True,
) -> dict[str, float | int]:
    """Scan2Cap m@0.5 (FORMATS §4.4): every ground-truth object counts once, detected or not.

    A detected object (a proposal with IoU >= 0.5 was captioned) is scored with its caption; an undetected one
    with the empty caption "", which normalises to "sos  eos": the only n-grams it shares with the references,
    "sos" and "eos", occur in every reference (IDF 0), so its CIDEr is exactly 0 (BLEU, ROUGE-L and METEOR may
    give it a little credit, as in V3D). References and hypotheses go through :func:`scan2cap_normalise`. Each
    object is scored against its own references (V3D's stale-reference bug for undetected objects is not
    reproduced).

    Args:
        gts: object key ("scene|object_id|name") -> all its reference descriptions, non-empty.
        res: object key -> caption, required for every detected object; captions of undetected objects are
            ignored; a key outside ``gts`` is an error.
        detected: object key -> whether it was detected, for exactly the keys of ``gts``.
        meteor: as in :func:`caption_scores`.
    Returns:
        The :func:`caption_scores` keys (each the m@0.5 value), plus "count" (objects) and "detected".
    """
    refs, hyps = _scan2cap_inputs(gts, res, detected)
    scores: dict[str, float | int] = dict(caption_scores(refs, hyps, meteor=meteor))
    scores["count"] = len(gts)
    scores["detected"] = sum(bool(detected[key]) for key in gts)
    return scores


def scan2cap_cider_per_sample(
    gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, str], detected: Mapping[Hashable, bool]
) -> dict[Hashable, float]:
    """Per-object CIDEr@0.5 (x100) of the Scan2Cap protocol: the values whose mean is :func:`scan2cap_scores`'s
    "CIDEr" (pycocoevalcap's per-sample scores, the second value of ``Cider().compute_score``). Document
    frequencies come from all objects of ``gts``, as for the corpus score; an undetected object scores 0.

    Args:
        gts, res, detected: as in :func:`scan2cap_scores`.
    Returns:
        object key -> CIDEr x100, in the order of ``gts``.
    """
    refs, hyps = _scan2cap_inputs(gts, res, detected)
    _check_caption_inputs(refs, hyps)
    _, per_sample = Cider().compute_score(refs, {key: [hyps[key]] for key in refs})
    return {key: 100.0 * float(value) for key, value in zip(refs, per_sample, strict=True)}


def _scan2cap_inputs(
    gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, str], detected: Mapping[Hashable, bool]
) -> tuple[dict[Hashable, list[str]], dict[Hashable, str]]:
    """Validate the Scan2Cap inputs; return (normalised references, normalised hypotheses) keyed as ``gts``,
    with "" as the caption of every undetected object."""
    for key in detected:
        if key not in gts:
            raise ValueError(f"detected: id {key!r} has no references in gts")
    for key in res:
        if key not in gts:
            raise ValueError(f"res: id {key!r} has no references in gts")
    hyps = {}
    for key in gts:
        if key not in detected:
            raise ValueError(f"detected: no entry for id {key!r} of gts")
        if detected[key] and key not in res:
            raise ValueError(f"res: no caption for detected id {key!r}")
        caption = res[key] if detected[key] else ""
        if not isinstance(caption, str):
            raise ValueError(f"res: id {key!r} needs one caption string, got {caption!r}")
        hyps[key] = scan2cap_normalise(caption)
    refs = {}
    for key, descriptions in gts.items():
        if isinstance(descriptions, str) or not descriptions or not all(isinstance(d, str) for d in descriptions):
            raise ValueError(f"gts: id {key!r} needs a non-empty list of descriptions, got {descriptions!r}")
        refs[key] = [scan2cap_normalise(text) for text in descriptions]
    return refs, hyps
