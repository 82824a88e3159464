"""Furniture placement in a SynthRooms room (aligned frame, metres): rejection sampling without interpenetration.

Floor objects have disjoint footprints (at least CLEARANCE apart) and keep PATH_CLEARANCE from the camera path;
wall pieces stand with their back against a wall; chairs are often pulled up to a table or desk; small objects
(box, lamp, plant, tv, monitor) stand ON TOP of a table, desk, cabinet or nightstand, inside its top face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threedrs.data.synthetic.catalog import (CATEGORIES, SUPPORTS_FOR, TEXTURES, build_parts, front_direction,
                                             rotate_parts)
from threedrs.data.synthetic.textures import Window

CLEARANCE = 0.1  # metres between the footprints of two floor objects
TOP_CLEARANCE = 0.05  # metres between two objects on the same support
PATH_CLEARANCE = 0.5  # metres between any footprint and the camera path
WALL_GAP = 0.03  # metres between a wall piece and its wall
MIN_OBJECTS, MAX_OBJECTS = 5, 15
WALL_TURNS = (1, 3, 2, 0)  # quarter turns that put an object's back (+y local) against wall surface 0..3
CAPS = {"bed": 1, "sofa": 2, "desk": 2, "table": 2, "bookshelf": 2, "cabinet": 3, "nightstand": 2, "chair": 6,
        "trash can": 2, "tv": 2, "monitor": 2, "lamp": 3, "box": 4, "plant": 3}
_SUPPORTS = ("table", "desk", "cabinet", "nightstand")


@dataclass
class Placed:
    """A placed object before objectIds are assigned: parts [P, 6] aligned lo/hi, roles [P], front [2] xy,
    support = index of the supporting Placed (None = floor)."""

    category: str
    size: str
    colour: str
    texture: str
    parts: np.ndarray
    roles: np.ndarray
    front: np.ndarray
    support: int | None

    @property
    def rect(self) -> np.ndarray:
        """[4] footprint x0, y0, x1, y1."""
        return np.array([self.parts[:, 0].min(), self.parts[:, 1].min(), self.parts[:, 3].max(),
                         self.parts[:, 4].max()])

    @property
    def top(self) -> float:
        return float(self.parts[:, 5].max())


def _separated(a: np.ndarray, b: np.ndarray, gap: float) -> bool:
    """Whether footprints a, b ([4] x0 y0 x1 y1) are at least `gap` apart along x or y."""
    return max(a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3]) >= gap


def _rect_point_distance(rect: np.ndarray, pts: np.ndarray) -> np.ndarray:
    dx = np.maximum(np.maximum(rect[0] - pts[:, 0], pts[:, 0] - rect[2]), 0)
    dy = np.maximum(np.maximum(rect[1] - pts[:, 1], pts[:, 1] - rect[3]), 0)
    return np.hypot(dx, dy)


class _Layout:
    def __init__(self, size: np.ndarray, window: Window, path_xy: np.ndarray, rng: np.random.Generator):
        self.size, self.window, self.path, self.rng = size, window, path_xy, rng
        self.placed: list[Placed] = []

    def count(self, category: str) -> int:
        return sum(p.category == category for p in self.placed)

    def _attributes(self, category: str) -> tuple[str, str]:
        """(colour, texture): a repeated category often repeats an existing colour, so relations must decide."""
        rng = self.rng
        same = [p.colour for p in self.placed if p.category == category]
        if same and rng.random() < 0.45:
            colour = same[int(rng.integers(len(same)))]
        else:
            colours = CATEGORIES[category].colours
            colour = colours[int(rng.integers(len(colours)))]
        if category in ("tv", "monitor"):
            return colour, "plain"
        if category == "plant":
            return colour, "speckled"
        return colour, TEXTURES[int(rng.choice(4, p=[0.4, 0.2, 0.2, 0.2]))]

    def _floor_ok(self, parts: np.ndarray) -> bool:
        rect = np.array([parts[:, 0].min(), parts[:, 1].min(), parts[:, 3].max(), parts[:, 4].max()])
        if rect[0] < 0.01 or rect[1] < 0.01 or rect[2] > self.size[0] - 0.01 or rect[3] > self.size[1] - 0.01:
            return False
        if any(p.support is None and not _separated(rect, p.rect, CLEARANCE) for p in self.placed):
            return False
        if _rect_point_distance(rect, self.path).min() < PATH_CLEARANCE:
            return False
        w = self.window  # nothing tall may stand in front of the window
        wall_axis = 0 if w.surface < 2 else 1
        wall_pos = self.size[wall_axis] if w.surface % 2 else 0.0
        near = min(abs(rect[wall_axis] - wall_pos), abs(rect[wall_axis + 2] - wall_pos)) < 0.8
        along = rect[w.along_axis] < w.u1 + 0.1 and rect[w.along_axis + 2] > w.u0 - 0.1
        return not (near and along and parts[:, 5].max() > w.z0 - 0.05)

    def _add(self, category: str, size: str, parts: np.ndarray, roles: np.ndarray, turns: int,
             support: int | None) -> None:
        colour, texture = self._attributes(category)
        self.placed.append(Placed(category, size, colour, texture, parts, roles, front_direction(turns), support))

    def try_floor(self, category: str, size: str) -> bool:
        """Place one floor object at a random spot (wall pieces against a random wall)."""
        rng = self.rng
        local, roles = build_parts(category, size, rng)
        if CATEGORIES[category].placement == "wall":
            surface = int(rng.integers(4))
            turns = WALL_TURNS[surface]
        else:
            surface, turns = -1, int(rng.integers(4))
        parts = rotate_parts(local, turns)
        half = (parts[:, 3:5].max(axis=0) - parts[:, 0:2].min(axis=0)) / 2
        centre = np.array([rng.uniform(half[i] + 0.05, self.size[i] - half[i] - 0.05) if self.size[i] > 2 * half[i]
                           + 0.1 else -1.0 for i in range(2)])
        if (centre < 0).any():
            return False
        if surface >= 0:
            axis = 0 if surface < 2 else 1
            centre[axis] = self.size[axis] - WALL_GAP - half[axis] if surface % 2 else WALL_GAP + half[axis]
        parts = parts + np.concatenate([centre, [0.0], centre, [0.0]])
        if not self._floor_ok(parts):
            return False
        self._add(category, size, parts, roles, turns, None)
        return True

    def try_chair_at(self, size: str) -> bool:
        """Pull a chair up to a side of a table (any side) or desk (its front), facing it."""
        rng = self.rng
        tables = [i for i, p in enumerate(self.placed) if p.category in ("table", "desk")]
        if not tables:
            return False
        t = self.placed[tables[int(rng.integers(len(tables)))]]
        if t.category == "desk":
            normal = t.front
        else:
            normal = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])[int(rng.integers(4))]
        turns = next(k for k in range(4) if np.allclose(front_direction(k), -normal))
        local, roles = build_parts("chair", size, rng)
        parts = rotate_parts(local, turns)
        half = (parts[:, 3:5].max(axis=0) - parts[:, 0:2].min(axis=0)) / 2
        rect = t.rect
        t_centre, t_half = (rect[:2] + rect[2:]) / 2, (rect[2:] - rect[:2]) / 2
        n_axis = int(np.argmax(np.abs(normal)))
        o_axis = 1 - n_axis
        centre = t_centre.copy()
        centre[n_axis] += normal[n_axis] * (t_half[n_axis] + rng.uniform(0.12, 0.22) + half[n_axis])
        slack = max(t_half[o_axis] - half[o_axis], 0.0)
        centre[o_axis] += rng.uniform(-slack, slack)
        parts = parts + np.concatenate([centre, [0.0], centre, [0.0]])
        if not self._floor_ok(parts):
            return False
        self._add("chair", size, parts, roles, turns, None)
        return True

    def try_top(self, category: str, size: str) -> bool:
        """Stand a small object on a random compatible support, inside its top face, apart from its neighbours."""
        rng = self.rng
        supports = [i for i, p in enumerate(self.placed) if p.category in SUPPORTS_FOR[category]
                    and p.support is None]
        if not supports:
            return False
        s_index = supports[int(rng.integers(len(supports)))]
        s = self.placed[s_index]
        local, roles = build_parts(category, size, rng)
        if category in ("tv", "monitor") and s.category != "table":
            turns = next(k for k in range(4) if np.allclose(front_direction(k), s.front))
        else:
            turns = int(rng.integers(4))
        parts = rotate_parts(local, turns)
        half = (parts[:, 3:5].max(axis=0) - parts[:, 0:2].min(axis=0)) / 2
        rect = s.rect
        lo, hi = rect[:2] + half + 0.03, rect[2:] - half - 0.03
        if (lo > hi).any():
            return False
        centre = rng.uniform(lo, hi)
        parts = parts + np.concatenate([centre, [s.top], centre, [s.top]])
        mine = np.array([parts[:, 0].min(), parts[:, 1].min(), parts[:, 3].max(), parts[:, 4].max()])
        if any(p.support == s_index and not _separated(mine, p.rect, TOP_CLEARANCE) for p in self.placed):
            return False
        self._add(category, size, parts, roles, turns, s_index)
        return True


def _weighted(rng: np.random.Generator, names: list[str]) -> str:
    weights = np.array([CATEGORIES[n].weight for n in names])
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def furnish(size: np.ndarray, window: Window, path_xy: np.ndarray, rng: np.random.Generator) -> list[Placed]:
    """Place MIN_OBJECTS..MAX_OBJECTS objects in a room of `size` [3] metres, clear of the camera path
    `path_xy` [M, 2]; at least one object stands on top of another whenever a support fits."""
    lay = _Layout(size, window, path_xy, rng)
    target = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    n_top = int(min(rng.integers(1, 4) + target // 5, target - 3))
    for _ in range(60):  # a support first, so that "on top of" relations exist
        if lay.try_floor(_SUPPORTS[int(rng.integers(len(_SUPPORTS)))], ("small", "large")[int(rng.integers(2))]):
            break
    floor_names = [n for n, c in CATEGORIES.items() if c.placement != "top" or c.floor_ok]
    for _ in range(300):
        if len(lay.placed) >= target - n_top:
            break
        names = [n for n in floor_names if lay.count(n) < CAPS[n]]
        name = _weighted(rng, names)
        size_word = ("small", "large")[int(rng.integers(2))]
        if name in ("lamp", "plant"):
            size_word = "large"  # small lamps and plants only stand on furniture
        if name == "chair" and rng.random() < 0.6 and lay.try_chair_at(size_word):
            continue
        lay.try_floor(name, size_word)
    top_names = list(SUPPORTS_FOR)
    for _ in range(200):
        if len(lay.placed) >= target:
            break
        names = [n for n in top_names if lay.count(n) < CAPS[n]]
        name = _weighted(rng, names)
        size_word = "small" if name in ("lamp", "plant", "box") else ("small", "large")[int(rng.integers(2))]
        lay.try_top(name, size_word)
    for _ in range(400):  # top up tiny rooms with small boxes and bins
        if len(lay.placed) >= MIN_OBJECTS:
            break
        name = ("box", "trash can")[int(rng.integers(2))]
        if not (name == "box" and lay.try_top("box", "small")):
            lay.try_floor(name, "small")
    if len(lay.placed) < MIN_OBJECTS:
        raise RuntimeError(f"could not fit {MIN_OBJECTS} objects in a {size[0]:.2f} x {size[1]:.2f} m room")
    return lay.placed
