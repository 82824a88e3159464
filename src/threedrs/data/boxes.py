"""Candidate boxes of a scene: Video-3D LLM's proposal tables and the ground-truth objects (FORMATS.md §2.2-2.3).

Boxes are `[cx, cy, cz, dx, dy, dz]` in metres in the axis-aligned frame, kept in float64: the values of a JSON
table reach the predictions files unchanged, so scoring sees the numbers the official scripts see.

A proposal table `{"scannet/<scene>": [[cx, cy, cz, dx, dy, dz], ...]}` comes from detector masks; the official
converter keeps a box of zero size (a one-point or flat Mask3D mask), which no metric can score: such boxes are
dropped and counted (a warning names the table and the count). A non-finite value or a negative size is an error
naming the table, the scene and the box.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from threedrs.data.instances import SceneDataError
from threedrs.data.scene import Scene
from threedrs.json_files import read_json_file


@dataclass
class ProposalTable:
    """boxes: scene id -> [P, 6] float64 usable proposals; dropped: scene id -> number of zero-size boxes removed."""

    path: Path
    boxes: dict[str, Tensor]
    dropped: dict[str, int] = field(default_factory=dict)


def read_box_table(path: Path) -> ProposalTable:
    """A V3D box table (module docstring) -> ProposalTable; zero-size boxes are dropped with a warning."""
    raw = read_json_file(path, SceneDataError, expect=dict, what="box table", shape="a mapping of scene -> boxes")
    table = ProposalTable(path, {})
    for key, boxes in raw.items():
        try:
            t = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 6)
        except (TypeError, ValueError, RuntimeError):
            raise SceneDataError(f"{path}: scene {key}: expected a list of [cx, cy, cz, dx, dy, dz] boxes") from None
        bad = (~torch.isfinite(t).all(dim=1)).nonzero()
        if len(bad):
            raise SceneDataError(f"{path}: scene {key}, box {int(bad[0])}: non-finite value {t[int(bad[0])].tolist()}")
        negative = (t[:, 3:] < 0).any(dim=1).nonzero()
        if len(negative):
            i = int(negative[0])
            raise SceneDataError(f"{path}: scene {key}, box {i}: negative size {t[i, 3:].tolist()}")
        empty = (t[:, 3:] == 0).any(dim=1)
        if bool(empty.any()):
            table.dropped[key.split("/")[-1]] = int(empty.sum())
        table.boxes[key.split("/")[-1]] = t[~empty]
    if table.dropped:
        warnings.warn(f"{path}: dropped {sum(table.dropped.values())} zero-size proposal(s) (one-point or flat "
                      f"detector masks) in {len(table.dropped)} scene(s); the evaluation goes on", stacklevel=2)
    return table


def scene_object_boxes(root: Path, scene_ids: Sequence[str],
                       axis_alignment: str = "required") -> dict[str, tuple[list[int], Tensor]]:
    """Ground-truth objects per scene from the instance files: (object ids, boxes [K, 6] float64)."""
    out = {}
    for scene_id in scene_ids:
        objs = Scene(root, scene_id, axis_alignment).objects
        boxes = np.stack([o.box for o in objs]) if objs else np.zeros((0, 6))
        out[scene_id] = ([o.object_id for o in objs], torch.from_numpy(boxes))
    return out
