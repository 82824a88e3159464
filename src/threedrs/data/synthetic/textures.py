"""Procedural surface appearance: albedo as a function of the 3D surface position (aligned room frame, metres).

Patterns are evaluated in the two in-plane coordinates of the face that was hit (faces are axis-aligned): for a
face whose normal is along axis a, the coordinates are the other two axes in increasing order. Every material
has a base and a second colour mixed by a pattern value t in [0, 1] (plain, stripes, checkers with optional
grout lines, value-noise speckles), plus a low-frequency noise modulation so equal colours do not give equal
pixels. The same function colours the rendered frames and the mesh vertices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

PATTERNS: dict[str, int] = {"plain": 0, "striped": 1, "checkered": 2, "speckled": 3}
"""Pattern codes; the keys are also the texture words of the annotations."""

IN_PLANE = np.array([[1, 2], [0, 2], [0, 1]], dtype=np.int64)
"""IN_PLANE[a]: the two coordinate axes spanning a face whose normal is along axis a."""

GLASS = np.array([0.62, 0.78, 0.95], dtype=np.float32)
FRAME = np.array([0.94, 0.94, 0.92], dtype=np.float32)


@dataclass(frozen=True)
class MaterialTable:
    """M materials as arrays.

    base, second: [M, 3] float32 albedo in [0, 1]; pattern: [M] int64 (PATTERNS codes); freq: [M] float32
    pattern cycles per metre; axis: [M] int64 in-plane coordinate (0/1) the stripes vary along; grout: [M]
    float32 fraction of each checker cell drawn as a dark grout line (0 = none); seed: [M] int64 noise seed.
    """

    base: np.ndarray
    second: np.ndarray
    pattern: np.ndarray
    freq: np.ndarray
    axis: np.ndarray
    grout: np.ndarray
    seed: np.ndarray


class MaterialBuilder:
    """Collects materials one by one and freezes them into a MaterialTable."""

    def __init__(self) -> None:
        self._rows: list[tuple] = []

    def add(self, base: np.ndarray, second: np.ndarray, pattern: str, freq: float, axis: int = 0,
            grout: float = 0.0, seed: int = 0) -> int:
        """Append one material (colours [3] in [0, 1]) and return its index."""
        if pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")
        self._rows.append((np.clip(base, 0, 1), np.clip(second, 0, 1), PATTERNS[pattern], freq, axis, grout, seed))
        return len(self._rows) - 1

    def build(self) -> MaterialTable:
        cols = list(zip(*self._rows))
        return MaterialTable(
            base=np.asarray(cols[0], dtype=np.float32), second=np.asarray(cols[1], dtype=np.float32),
            pattern=np.asarray(cols[2], dtype=np.int64), freq=np.asarray(cols[3], dtype=np.float32),
            axis=np.asarray(cols[4], dtype=np.int64), grout=np.asarray(cols[5], dtype=np.float32),
            seed=np.asarray(cols[6], dtype=np.int64))


@dataclass(frozen=True)
class Window:
    """The room's landmark: a window on one wall.

    surface: shell surface index of the wall (0: x = 0, 1: x = Lx, 2: y = 0, 3: y = Ly).
    u0, u1: extent along the wall (metres; x for the y-walls, y for the x-walls); z0, z1: sill and top height.
    """

    surface: int
    u0: float
    u1: float
    z0: float
    z1: float

    @property
    def along_axis(self) -> int:
        """Coordinate axis running along the window's wall (0 = x, 1 = y)."""
        return 1 if self.surface < 2 else 0

    def centre(self, room_size: np.ndarray) -> np.ndarray:
        """[3] centre of the window in the aligned frame (on the wall plane)."""
        wall_axis = 0 if self.surface < 2 else 1
        c = np.zeros(3)
        c[wall_axis] = room_size[wall_axis] if self.surface % 2 else 0.0
        c[self.along_axis] = (self.u0 + self.u1) / 2
        c[2] = (self.z0 + self.z1) / 2
        return c


@functools.cache
def _lattice() -> np.ndarray:
    """[256, 256] float32 random lattice values in [0, 1) (fixed: part of the SynthRooms look)."""
    return np.random.default_rng(0x5E7A).random((256, 256), dtype=np.float32)


def value_noise(a: np.ndarray, b: np.ndarray, seed: np.ndarray | int) -> np.ndarray:
    """2D value noise in [0, 1): smooth interpolation of a periodic (256) random lattice, shifted per seed.

    a, b: [N] float32 coordinates in lattice units; seed: int or [N] int64 (< 2**20). Returns [N] float32.
    """
    fa, fb = np.floor(a), np.floor(b)
    ta, tb = a - fa, b - fb
    ta, tb = ta * ta * (3 - 2 * ta), tb * tb * (3 - 2 * tb)
    seed = np.asarray(seed, dtype=np.int32)
    ia = (fa.astype(np.int32) + seed * 53) & 255
    ib = (fb.astype(np.int32) + seed * 97) & 255
    ia1, ib1 = (ia + 1) & 255, (ib + 1) & 255
    lat = _lattice()
    top = lat[ia, ib] * (1 - ta) + lat[ia1, ib] * ta
    bottom = lat[ia, ib1] * (1 - ta) + lat[ia1, ib1] * ta
    return top * (1 - tb) + bottom * tb


def albedo(points: np.ndarray, axis: np.ndarray, material: np.ndarray, table: MaterialTable) -> np.ndarray:
    """Surface colour before lighting.

    points: [N, 3] float32 surface points (aligned frame, metres); axis: [N] int64 normal axis of the face hit;
    material: [N] int64 material index. Returns [N, 3] float32 albedo in [0, 1].
    """
    n = points.shape[0]
    uv = np.take_along_axis(points, IN_PLANE[axis], axis=1)
    freq = table.freq[material]
    s = uv * freq[:, None]
    pattern = table.pattern[material]
    t = np.zeros(n, dtype=np.float32)
    m = pattern == PATTERNS["striped"]
    if m.any():
        coord = np.take_along_axis(s[m], table.axis[material[m]][:, None], axis=1)[:, 0]
        t[m] = (coord - np.floor(coord)) < 0.5
    grout = np.zeros(n, dtype=bool)
    m = pattern == PATTERNS["checkered"]
    if m.any():
        cell = np.floor(s[m])
        t[m] = np.mod(cell[:, 0] + cell[:, 1], 2.0)
        frac = s[m] - cell
        g = table.grout[material[m]][:, None]
        grout[m] = ((frac < g) | (frac > 1 - g)).any(axis=1)
    m = pattern == PATTERNS["speckled"]
    if m.any():
        noise = value_noise(s[m, 0], s[m, 1], table.seed[material[m]])
        t[m] = np.clip((noise - 0.38) / 0.24, 0.0, 1.0)
    t = t[:, None]
    colour = table.base[material] * (1 - t) + table.second[material] * t
    low = value_noise(uv[:, 0] * 2.3, uv[:, 1] * 2.3, table.seed[material] + 7)
    colour *= (0.9 + 0.2 * low)[:, None]
    colour[grout] *= 0.45
    return np.clip(colour, 0.0, 1.0)


def paint_window(points: np.ndarray, colour: np.ndarray, on_wall: np.ndarray, window: Window) -> np.ndarray:
    """Draw the window (glass with a white frame and a cross bar) onto `colour` [N, 3] where `on_wall` [N] bool
    marks points on the window's wall; returns [N] bool of the points inside the window."""
    along = points[:, window.along_axis]
    z = points[:, 2]
    inside = on_wall & (along >= window.u0) & (along <= window.u1) & (z >= window.z0) & (z <= window.z1)
    if not inside.any():
        return inside
    a, h = along[inside], z[inside]
    mid_a, mid_z = (window.u0 + window.u1) / 2, (window.z0 + window.z1) / 2
    frame = ((a - window.u0 < 0.05) | (window.u1 - a < 0.05) | (h - window.z0 < 0.05) | (window.z1 - h < 0.05)
             | (np.abs(a - mid_a) < 0.025) | (np.abs(h - mid_z) < 0.025))
    glass = GLASS[None, :] + ((h - window.z0) / (window.z1 - window.z0) * 0.08)[:, None].astype(np.float32)
    colour[inside] = np.where(frame[:, None], FRAME[None, :], np.clip(glass, 0, 1))
    return inside
