"""The annotation mesh of a SynthRooms room: what ScanNet's `_vh_clean_2.ply`, segments and aggregation hold.

Vertices are the corners of every part box and of every shell surface (each surface has its own four corners)
plus random samples on every face (OBJECT_DENSITY / SHELL_DENSITY points per square metre); faces are the two
triangles of every box face over its corners. Segments: one per (part, face) for furniture, one per 1.5 m patch
for the shell. Vertex order is shuffled, as a real mesh is not sorted by object. Positions are stored in the
UNALIGNED scan frame as float32; `aligned` is what every reader computes from the files (A applied in float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threedrs.data.synthetic.rooms import SHELL_LABELS, Room
from threedrs.data.synthetic.textures import albedo, paint_window

OBJECT_DENSITY = 150.0  # surface samples per square metre on furniture
SHELL_DENSITY = 25.0  # surface samples per square metre on floor, walls and ceiling
SHELL_NOISE = 0.02  # metres: shell samples lie up to this far behind their surface (scan noise)
SHELL_PATCH = 1.5  # metres: size of one shell segment
# the 8 corners of a box as (hi?) flags per axis, and the 12 triangles over them (two per face)
_CORNER_BITS = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=bool)
_FACE_CORNERS = {(0, 0): (0, 2, 6, 4), (0, 1): (1, 3, 7, 5), (1, 0): (0, 1, 5, 4), (1, 1): (2, 3, 7, 6),
                 (2, 0): (0, 1, 3, 2), (2, 1): (4, 5, 7, 6)}


@dataclass(frozen=True)
class SegGroup:
    """One aggregation entry: objectId, raw label and its segment ids."""

    object_id: int
    label: str
    segments: list[int]


@dataclass(frozen=True)
class SceneMesh:
    """xyz: [N, 3] float32 unaligned positions (as written); rgb: [N, 3] uint8; faces: [M, 3] int32 vertex
    indices; segments: [N] int64 segment id per vertex; instance: [N] int64 objectId per vertex (shell ids
    included); groups: aggregation entries (furniture 0..K-1, then floor, walls, ceiling); aligned: [N, 3] float64
    = A · xyz, exactly as a reader computes it."""

    xyz: np.ndarray
    rgb: np.ndarray
    faces: np.ndarray
    segments: np.ndarray
    instance: np.ndarray
    groups: list[SegGroup]
    aligned: np.ndarray

    def boxes(self) -> np.ndarray:
        """[G, 6] `[cx, cy, cz, dx, dy, dz]` per seg group (index = objectId): min/max of its aligned vertices."""
        out = np.zeros((len(self.groups), 6))
        for g in self.groups:
            pts = self.aligned[self.instance == g.object_id]
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            out[g.object_id] = np.concatenate([(lo + hi) / 2, hi - lo])
        return out


def _face_samples(lo: np.ndarray, hi: np.ndarray, axis: int, side: int, density: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Uniform random points [n, 3] on one face of box (lo, hi); n = round(area · density), at least 1."""
    other = [a for a in range(3) if a != axis]
    area = (hi[other[0]] - lo[other[0]]) * (hi[other[1]] - lo[other[1]])
    n = max(int(round(area * density)), 1)
    pts = np.empty((n, 3))
    pts[:, other] = rng.uniform(lo[other], hi[other], size=(n, 2))
    pts[:, axis] = hi[axis] if side else lo[axis]
    return pts


class _Builder:
    def __init__(self) -> None:
        self.points: list[np.ndarray] = []
        self.axes: list[np.ndarray] = []
        self.materials: list[np.ndarray] = []
        self.instances: list[np.ndarray] = []
        self.segments: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.count = 0
        self.next_segment = 0

    def segment(self) -> int:
        """A fresh segment id (non-contiguous on purpose, as ScanNet's)."""
        self.next_segment += 1
        return 7 + 13 * self.next_segment

    def add(self, pts: np.ndarray, axis: int, material: int, instance: int, segment: int | np.ndarray,
            faces: np.ndarray | None = None) -> None:
        """Append vertices [n, 3] of one face or corner set; `segment` is one id or [n] ids; `faces` index pts."""
        n = len(pts)
        self.points.append(pts)
        self.axes.append(np.full(n, axis, dtype=np.int64))
        self.materials.append(np.full(n, material, dtype=np.int64))
        self.instances.append(np.full(n, instance, dtype=np.int64))
        self.segments.append(np.broadcast_to(np.asarray(segment, dtype=np.int64), (n,)))
        if faces is not None:
            self.faces.append(faces + self.count)
        self.count += n


def build_mesh(room: Room, rng: np.random.Generator) -> SceneMesh:
    """Sample the annotation mesh of `room` (see module docstring)."""
    mb = _Builder()
    groups: list[SegGroup] = []
    quads = np.array([_FACE_CORNERS[(a, s)] for a in range(3) for s in range(2)])  # [6, 4]
    box_tris = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])  # [12, 3] over the 8 corners
    for obj in room.objects:
        segs: list[int] = []
        for part, material in zip(obj.parts, obj.part_material):
            lo, hi = part[:3], part[3:]
            face_segments = [mb.segment() for _ in range(6)]  # one per face; the corners join the first
            segs += face_segments
            mb.add(np.where(_CORNER_BITS, hi, lo), 2, int(material), obj.object_id, face_segments[0], box_tris)
            for f, (axis, side) in enumerate((a, s) for a in range(3) for s in range(2)):
                mb.add(_face_samples(lo, hi, axis, side, OBJECT_DENSITY, rng), axis, int(material),
                       obj.object_id, face_segments[f])
        groups.append(SegGroup(obj.object_id, obj.category, segs))
    size = room.size.astype(np.float64)
    shell_order = (4, 0, 1, 2, 3, 5)  # floor, the four walls, ceiling: objectIds K, K+1..K+4, K+5
    for surface in shell_order:
        axis, side = (surface // 2, surface % 2) if surface < 4 else (2, surface - 4)
        lo, hi = np.zeros(3), size.copy()
        if side:
            lo[axis] = size[axis]
        else:
            hi[axis] = 0.0
        sid = int(room.shell_ids[surface])
        material = int(room.shell_material[surface])
        quad = np.where(_CORNER_BITS, hi, lo)[list(_FACE_CORNERS[(axis, side)])]
        pts = _face_samples(lo, hi, axis, side, SHELL_DENSITY, rng)
        # scanned walls are not infinitely thin: push samples up to SHELL_NOISE outwards, so that no shell box
        # (ground truth or proposal) is degenerate
        pts[:, axis] += (1.0 if side else -1.0) * rng.uniform(0.0, SHELL_NOISE, len(pts))
        other = [a for a in range(3) if a != axis]
        cell = np.floor(pts[:, other] / SHELL_PATCH).astype(np.int64)
        cell_c = np.floor(np.minimum(quad[:, other], size[other] - 1e-6) / SHELL_PATCH).astype(np.int64)
        keys = np.unique(np.concatenate([cell, cell_c]), axis=0)
        seg_of = {tuple(k): mb.segment() for k in keys}
        mb.add(quad, axis, material, sid, np.array([seg_of[tuple(c)] for c in cell_c]),
               np.array([[0, 1, 2], [0, 2, 3]]))
        mb.add(pts, axis, material, sid, np.array([seg_of[tuple(c)] for c in cell]))
        groups.append(SegGroup(sid, SHELL_LABELS[surface], sorted(seg_of.values())))
    points = np.concatenate(mb.points)
    axes, materials = np.concatenate(mb.axes), np.concatenate(mb.materials)
    instance, segments = np.concatenate(mb.instances), np.concatenate(mb.segments)
    pts32 = points.astype(np.float32)
    colour = albedo(pts32, axes, materials, room.materials)
    paint_window(pts32, colour, instance == room.shell_ids[room.window.surface], room.window)
    rgb = np.clip(colour * 255.0 + 0.5, 0, 255).astype(np.uint8)
    order = rng.permutation(len(points))  # new position i holds old vertex order[i]
    where = np.empty_like(order)
    where[order] = np.arange(len(order))
    faces = where[np.concatenate(mb.faces)].astype(np.int32)
    a = room.alignment
    homog = np.concatenate([points[order], np.ones((len(order), 1))], axis=1)
    xyz = (homog @ np.linalg.inv(a).T)[:, :3].astype(np.float32)
    aligned = xyz.astype(np.float64) @ a[:3, :3].T + a[:3, 3]
    groups.sort(key=lambda g: g.object_id)
    return SceneMesh(xyz=xyz, rgb=rgb[order], faces=faces, segments=segments[order], instance=instance[order],
                     groups=groups, aligned=aligned)
