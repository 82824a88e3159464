"""The audit world of bench/audit_bad_inputs.py (paths of one case's copy, the settings) and the case registry.

A case is a function that breaks one thing in a fresh copy of the world and returns the ``threedrs`` command line
to run; ``audit_cases_training.py`` and ``audit_cases_files.py`` register them with `case`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def base_overrides(root: Path, run: Path, cache: Path) -> list[str]:
    """The audit world's settings: tiny Qwen2-VL, 4 frames at 42x56, geometry teacher, 4 steps, 4 eval samples."""
    return [f"data.root={root}", "data.frames=4", f"output_dir={run}", f"teacher.cache_dir={cache}",
            "teacher.grid=[3,4]", "teacher.channels=32", "teacher.batch_frames=4", "model.image_size=[42,56]",
            "train.steps=4", "train.batch_size=2", "train.log_every=1", "train.save_every=2", "train.lr_llm=1e-3",
            "train.lr_heads=1e-3", "train.warmup_ratio=0.25", "eval.limit=4", "eval.max_new_tokens=4",
            "eval.meteor=false", "eval.benchmarks=[scanrefer,scanqa]"]


@dataclass
class Env:
    """One case's copy of the world."""

    folder: Path

    root = property(lambda self: self.folder / "rooms")
    cache = property(lambda self: self.folder / "cache")
    run = property(lambda self: self.folder / "run")
    eval = property(lambda self: self.folder / "run" / "eval")
    marker = property(lambda self: self.folder / "CODE_RAN")
    config = property(lambda self: self.folder / "audit.yaml")

    def cmd(self, command: str, *extra: str, flags: tuple[str, ...] = ()) -> list:
        return [command, self.config, *base_overrides(self.root, self.run, self.cache), *extra, *flags]

    def ckpt(self, step: int) -> Path:
        return self.run / "checkpoints" / f"step_{step:06d}"

    def scene(self, split: str = "train") -> str:
        return (self.root / "metadata" / f"scannetv2_{split}.txt").read_text().split()[0]

    def frame(self, split: str = "train", ext: str = ".png") -> Path:
        """A file of a frame that the run uses (first frame of the first scene of ``split``)."""
        scene = self.scene(split)
        frame_id = json.loads((self.cache / "frame_lists.json").read_text())["scenes"][scene][0]
        return self.root / "scannet" / "posed_images" / scene / f"{frame_id}{ext}"

    def predictions(self, bench: str = "scanrefer") -> Path:
        return self.eval / "predictions" / f"{bench}.jsonl"

    def payload(self) -> object:
        """An object whose unpickling writes the marker file."""
        return _Payload(self.marker)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "a pickle payload ran"))


@dataclass
class Case:
    name: str
    expect: str  # regex: the error line must match it (error), or the output must (recover)
    kind: str  # "error" or "recover"
    owner: str
    run: Callable[[Env], list]
    check: Callable[[Env], str | None] | None = None  # recover: None when the result left behind is right


CASES: list[Case] = []


def case(name: str, expect: str, kind: str = "error", owner: str = "", check=None):
    def register(fn: Callable[[Env], list]) -> Callable[[Env], list]:
        CASES.append(Case(name, expect, kind, owner, fn, check))
        return fn
    return register


def edit_json(path: Path, change: Callable[[object], object]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def same_size_damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(64)
    path.write_bytes(bytes(data))


def touch_later(path: Path) -> None:
    stat = path.stat()
    path.write_bytes(path.read_bytes())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def lines_of(env: Env, bench: str = "scanrefer") -> list[str]:
    return env.predictions(bench).read_text().splitlines()


