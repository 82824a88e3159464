"""What `threedrs demo` trains: its sizes (default and --full), its recipes, and the wall time of its stages.

Shared by the demo's pipeline (:mod:`threedrs.demo`) and its report (:mod:`threedrs.demo_report`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["DEFAULT", "FULL", "RUNS", "VARIANT_RUNS", "DemoRun", "DemoSize", "StageTimes"]


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: SynthRooms, frames per sample, student resolution, training length."""

    scenes: int
    scan_frames: int
    frames: int
    image: int
    steps: int
    batch_size: int = 4
    lr: float = 1e-3
    eval_limit: int | None = None
    width: int = 224
    height: int = 224
    posenc: bool = False


DEFAULT = DemoSize(scenes=40, scan_frames=16, frames=12, image=112, steps=200, lr=3e-3)
FULL = DemoSize(scenes=120, scan_frames=24, frames=16, image=196, steps=1500)


@dataclass(frozen=True)
class DemoRun:
    """One training recipe of the demo: its name in the report, the alignment loss and the teacher."""

    name: str
    loss: str
    teacher: str | None
    note: str


RUNS = (
    DemoRun("baseline", "none", None, "text and grounding losses only"),
    DemoRun("3DRS", "l2norm", "geometry", "+ alignment to the geometry oracle (3D teacher)"),
    DemoRun("3DRS-2D", "l2norm", "appearance", "+ alignment to the per-pixel appearance teacher (2D)"),
)
VARIANT_RUNS = (DemoRun("correspondence", "correspondence", None, "+ the teacher-free correspondence loss"),)


@dataclass
class StageTimes:
    """Wall time of each stage in seconds, in order."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, start: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
