"""SynthRooms vocabulary: object categories (with their real ScanNet label-map entries), colours, textures, and
the part geometry of each category.

Every object is a set of axis-aligned boxes ("parts"). Parts are built in an object-local frame: x = width,
y = depth, z = up (metres), footprint centred on the origin, resting on z = 0, FRONT facing -y (a chair's back,
a sofa's back, a bed's headboard and a bookshelf's back panel are on the +y side).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (190, 40, 35),
    "green": (50, 140, 60),
    "blue": (40, 75, 175),
    "yellow": (228, 198, 40),
    "white": (236, 236, 230),
    "black": (32, 32, 34),
    "brown": (122, 78, 42),
    "grey": (128, 128, 130),
    "orange": (232, 122, 30),
    "purple": (122, 52, 152),
}
"""Named object colours (sRGB 0-255): the words used by every annotation."""

TEXTURES: tuple[str, ...] = ("plain", "striped", "checkered", "speckled")
"""Surface patterns of objects; the words used by the annotations."""

SIZES: tuple[str, ...] = ("small", "large")
"""Size variants; every large instance of a category is bigger (volume) than every small one."""

ROLE_MAIN, ROLE_ACCENT = 0, 1
"""Part roles: the main material carries the object's named colour and texture; the accent is legs, poles, pots."""


@dataclass(frozen=True)
class Category:
    """One object category and its row of `scannetv2-labels.combined.tsv` (real ScanNet nyu40/eigen13 ids).

    placement: "wall" (back against a wall), "free" (anywhere on the floor, any 90-degree yaw) or "top" (on top
    of a support object; `floor_ok` lets large instances also stand on the floor).
    support: other objects may stand on its top face.
    """

    name: str
    plural: str
    nyu40id: int
    eigen13id: int
    nyu_class: str
    nyu40_class: str
    eigen13_class: str
    mpcat40: str
    mpcat40index: int
    placement: str
    support: bool
    colours: tuple[str, ...]
    weight: float
    floor_ok: bool = False


_ALL = tuple(COLOURS)
_DARK = ("black", "grey", "white")
CATEGORIES: dict[str, Category] = {c.name: c for c in (
    Category("chair", "chairs", 5, 4, "chair", "chair", "Chair", "chair", 3, "free", False, _ALL, 3.0),
    Category("table", "tables", 7, 10, "table", "table", "Table", "table", 5, "free", True,
             ("brown", "white", "black", "grey", "red", "blue", "green"), 1.4),
    Category("desk", "desks", 14, 10, "desk", "desk", "Table", "table", 5, "wall", True,
             ("brown", "white", "black", "grey", "blue"), 1.0),
    Category("sofa", "sofas", 6, 9, "sofa", "sofa", "Sofa", "sofa", 10, "wall", False, _ALL, 0.8),
    Category("bed", "beds", 4, 1, "bed", "bed", "Bed", "bed", 11, "wall", False, _ALL, 1.5),
    Category("cabinet", "cabinets", 3, 6, "cabinet", "cabinet", "Furniture", "cabinet", 7, "wall", True, _ALL, 1.2),
    Category("bookshelf", "bookshelves", 10, 6, "bookshelf", "bookshelf", "Furniture", "shelving", 31, "wall",
             False, ("brown", "white", "black", "grey", "red", "blue", "yellow"), 0.9),
    Category("nightstand", "nightstands", 32, 6, "night stand", "night stand", "Furniture", "chest_of_drawers",
             13, "wall", True, ("brown", "white", "black", "grey", "blue", "green"), 0.6),
    Category("trash can", "trash cans", 39, 6, "garbage bin", "otherfurniture", "Furniture", "objects", 39,
             "free", False, _ALL, 0.8),
    Category("lamp", "lamps", 35, 7, "lamp", "lamp", "Objects", "lighting", 28, "top", False, _ALL, 1.2,
             floor_ok=True),
    Category("box", "boxes", 29, 7, "box", "box", "Objects", "objects", 39, "top", False, _ALL, 1.4,
             floor_ok=True),
    Category("plant", "plants", 40, 7, "plant", "otherprop", "Objects", "plant", 14, "top", False,
             ("green", "yellow", "orange", "purple", "red"), 1.0, floor_ok=True),
    Category("tv", "tvs", 25, 11, "television", "television", "TV", "tv_monitor", 22, "top", False, _DARK, 0.7),
    Category("monitor", "monitors", 40, 7, "monitor", "otherprop", "Objects", "tv_monitor", 22, "top", False,
             _DARK, 0.8),
)}
"""The furniture categories of SynthRooms, keyed by raw category."""

STRUCTURE: dict[str, Category] = {c.name: c for c in (
    Category("wall", "walls", 1, 12, "wall", "wall", "Wall", "wall", 1, "wall", False, (), 0.0),
    Category("floor", "floors", 2, 5, "floor", "floor", "Floor", "floor", 2, "wall", False, (), 0.0),
    Category("ceiling", "ceilings", 22, 3, "ceiling", "ceiling", "Ceiling", "ceiling", 17, "wall", False, (), 0.0),
)}
"""Room structure labels: segGroups in the aggregation file, never annotation targets."""

SUPPORTS_FOR: dict[str, tuple[str, ...]] = {
    "tv": ("cabinet", "table", "desk"),
    "monitor": ("desk", "table"),
    "lamp": ("nightstand", "desk", "table", "cabinet"),
    "box": ("table", "desk", "cabinet", "nightstand"),
    "plant": ("table", "cabinet", "nightstand", "desk"),
}
"""Which support categories each on-top category may stand on."""


def _box(x0: float, y0: float, z0: float, x1: float, y1: float, z1: float) -> list[float]:
    return [x0, y0, z0, x1, y1, z1]


def build_parts(name: str, size: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Part boxes of one object in its local frame.

    Returns (parts [P, 6] float64 `lo_xyz, hi_xyz` in metres, roles [P] int64 ROLE_MAIN / ROLE_ACCENT).
    Parts of one object never overlap (they may touch).
    """
    large = size == "large"
    u = rng.uniform
    parts: list[list[float]] = []
    roles: list[int] = []

    def add(box: list[float], role: int = ROLE_MAIN) -> None:
        parts.append(box)
        roles.append(role)

    if name == "chair":
        w = u(0.52, 0.60) if large else u(0.40, 0.46)
        d = w * u(0.95, 1.1)
        seat = u(0.45, 0.50) if large else u(0.42, 0.46)
        back = u(0.50, 0.60) if large else u(0.38, 0.46)
        leg, t = 0.04, 0.05
        for sx in (-1, 1):
            for sy in (-1, 1):
                x, y = sx * (w / 2 - leg / 2), sy * (d / 2 - leg / 2)
                add(_box(x - leg / 2, y - leg / 2, 0.0, x + leg / 2, y + leg / 2, seat - t), ROLE_ACCENT)
        add(_box(-w / 2, -d / 2, seat - t, w / 2, d / 2, seat))
        add(_box(-w / 2, d / 2 - t, seat, w / 2, d / 2, seat + back))
    elif name in ("table", "desk"):
        if name == "table":
            w = u(1.4, 1.9) if large else u(0.6, 0.9)
            d = u(0.8, 1.0) if large else u(0.5, 0.7)
        else:
            w = u(1.4, 1.7) if large else u(1.0, 1.2)
            d = u(0.6, 0.72) if large else u(0.55, 0.62)
        h, t, leg = u(0.70, 0.76), u(0.04, 0.06), u(0.05, 0.07)
        add(_box(-w / 2, -d / 2, h - t, w / 2, d / 2, h))
        legs_x = (-1, 1)
        if name == "desk":  # a drawer block under one side, two legs on the other
            block = 0.4
            add(_box(w / 2 - block, -d / 2, 0.0, w / 2, d / 2, h - t))
            legs_x = (-1,)
        for sx in legs_x:
            for sy in (-1, 1):
                x, y = sx * (w / 2 - leg / 2 - 0.03), sy * (d / 2 - leg / 2 - 0.03)
                add(_box(x - leg / 2, y - leg / 2, 0.0, x + leg / 2, y + leg / 2, h - t), ROLE_ACCENT)
    elif name == "sofa":
        w = u(1.9, 2.4) if large else u(1.3, 1.6)
        d, seat, h = u(0.8, 0.95), u(0.40, 0.45), u(0.80, 0.90)
        arm, back, arm_h = u(0.15, 0.2), 0.2, u(0.58, 0.64)
        add(_box(-w / 2 + arm, -d / 2, 0.0, w / 2 - arm, d / 2 - back, seat))
        add(_box(-w / 2, d / 2 - back, 0.0, w / 2, d / 2, h))
        add(_box(-w / 2, -d / 2, 0.0, -w / 2 + arm, d / 2 - back, arm_h))
        add(_box(w / 2 - arm, -d / 2, 0.0, w / 2, d / 2 - back, arm_h))
    elif name == "bed":
        w = u(1.5, 1.9) if large else u(0.9, 1.1)
        d, base, hb, hb_h = u(1.95, 2.1), u(0.45, 0.55), 0.06, u(0.9, 1.1)
        add(_box(-w / 2, -d / 2, 0.0, w / 2, d / 2 - hb, base))
        add(_box(-w / 2, d / 2 - hb, 0.0, w / 2, d / 2, hb_h))
        centres = (-w / 4, w / 4) if large else (0.0,)
        for cx in centres:
            add(_box(cx - 0.25, d / 2 - hb - 0.42, base, cx + 0.25, d / 2 - hb - 0.06, base + 0.12), ROLE_ACCENT)
    elif name in ("cabinet", "nightstand"):
        if name == "cabinet":
            w = u(1.0, 1.4) if large else u(0.5, 0.7)
            h = u(0.9, 1.1) if large else u(0.7, 0.85)
            d = u(0.4, 0.5)
        else:
            w = u(0.55, 0.65) if large else u(0.4, 0.5)
            h, d = u(0.5, 0.6), u(0.38, 0.45)
        plinth = 0.08
        add(_box(-w / 2 + 0.02, -d / 2 + 0.04, 0.0, w / 2 - 0.02, d / 2, plinth), ROLE_ACCENT)
        add(_box(-w / 2, -d / 2, plinth, w / 2, d / 2, h))
    elif name == "bookshelf":
        w, d = u(0.7, 1.0), u(0.28, 0.35)
        h = u(1.7, 2.0) if large else u(0.9, 1.1)
        t = 0.03
        shelves = 4 if large else 2
        add(_box(-w / 2, -d / 2, 0.0, -w / 2 + t, d / 2, h))
        add(_box(w / 2 - t, -d / 2, 0.0, w / 2, d / 2, h))
        add(_box(-w / 2 + t, d / 2 - t, 0.0, w / 2 - t, d / 2, h))
        for k in range(shelves + 1):  # bottom board, inner shelves (accent), top board
            z0 = k * (h - t) / shelves
            add(_box(-w / 2 + t, -d / 2, z0, w / 2 - t, d / 2 - t, z0 + t),
                ROLE_ACCENT if 0 < k < shelves else ROLE_MAIN)
    elif name == "lamp":
        if large:
            base_w, pole, shade_w, shade_h, h = u(0.28, 0.34), 0.035, u(0.35, 0.45), 0.3, u(1.4, 1.7)
        else:
            base_w, pole, shade_w, shade_h, h = u(0.13, 0.16), 0.025, u(0.22, 0.28), 0.2, u(0.4, 0.55)
        add(_box(-base_w / 2, -base_w / 2, 0.0, base_w / 2, base_w / 2, 0.03), ROLE_ACCENT)
        add(_box(-pole / 2, -pole / 2, 0.03, pole / 2, pole / 2, h - shade_h), ROLE_ACCENT)
        add(_box(-shade_w / 2, -shade_w / 2, h - shade_h, shade_w / 2, shade_w / 2, h))
    elif name == "box":
        s = u(0.5, 0.7) if large else u(0.22, 0.38)
        w, d, h = s * u(0.9, 1.2), s * u(0.8, 1.0), s * u(0.7, 1.0)
        add(_box(-w / 2, -d / 2, 0.0, w / 2, d / 2, h))
    elif name == "plant":
        if large:
            pot, pot_h, leaves, leaves_h = u(0.35, 0.45), u(0.35, 0.45), u(0.6, 0.8), u(0.8, 1.1)
        else:
            pot, pot_h, leaves, leaves_h = u(0.16, 0.22), u(0.15, 0.2), u(0.28, 0.36), u(0.25, 0.35)
        add(_box(-pot / 2, -pot / 2, 0.0, pot / 2, pot / 2, pot_h), ROLE_ACCENT)
        add(_box(-leaves / 2, -leaves / 2, pot_h, leaves / 2, leaves / 2, pot_h + leaves_h))
    elif name in ("tv", "monitor"):
        if name == "tv":
            w = u(1.2, 1.5) if large else u(0.8, 1.0)
            t, foot, neck_h = 0.06, (0.4, 0.24), 0.1
        else:
            w = u(0.6, 0.7) if large else u(0.45, 0.55)
            t, foot, neck_h = 0.04, (0.22, 0.16), 0.1
        h = w * u(0.56, 0.62)
        add(_box(-foot[0] / 2, -foot[1] / 2, 0.0, foot[0] / 2, foot[1] / 2, 0.03), ROLE_ACCENT)
        add(_box(-0.04, -0.02, 0.03, 0.04, 0.02, neck_h), ROLE_ACCENT)
        add(_box(-w / 2, -t / 2, neck_h, w / 2, t / 2, neck_h + h))
    elif name == "trash can":
        s = u(0.35, 0.45) if large else u(0.25, 0.3)
        h = u(0.6, 0.75) if large else u(0.35, 0.45)
        add(_box(-s / 2, -s / 2, 0.0, s / 2, s / 2, h - 0.03))
        add(_box(-s / 2, -s / 2, h - 0.03, s / 2, s / 2, h), ROLE_ACCENT)
    else:
        raise ValueError(f"unknown SynthRooms category {name!r}; known: {', '.join(CATEGORIES)}")
    return np.asarray(parts, dtype=np.float64), np.asarray(roles, dtype=np.int64)


def rotate_parts(parts: np.ndarray, quarter_turns: int) -> np.ndarray:
    """Rotate local part boxes [P, 6] about +z by `quarter_turns` x 90 degrees (counter-clockwise)."""
    k = quarter_turns % 4
    lo, hi = parts[:, :3].copy(), parts[:, 3:].copy()
    for _ in range(k):  # (x, y) -> (-y, x)
        lo, hi = (np.stack([-hi[:, 1], lo[:, 0], lo[:, 2]], 1), np.stack([-lo[:, 1], hi[:, 0], hi[:, 2]], 1))
    return np.concatenate([lo, hi], axis=1)


def front_direction(quarter_turns: int) -> np.ndarray:
    """[2] unit xy vector of an object's front (local -y) after `quarter_turns` x 90 degrees about +z."""
    angle = -np.pi / 2 + quarter_turns * np.pi / 2
    return np.round(np.array([np.cos(angle), np.sin(angle)]), 12)
