"""ScanNet object instances: the annotation mesh's vertices, its over-segmentation and the aggregation file.

ScanNet stores instances per scan as three files (FORMATS.md §2.1):
- `<scene>_vh_clean_2.ply`: the mesh; only its vertices are needed (unaligned scan frame, metres);
- `<scene>_vh_clean_2.0.010000.segs.json`: `segIndices`, one segment id per vertex;
- `<scene>.aggregation.json`: `segGroups`, each an `objectId` (0-based), a raw `label` and its segment ids.
An object's box is the min/max of its vertices after the axis alignment `A` (§2.2: later groups overwrite earlier
ones where segments overlap). SynthRooms writes the same three files.

ScanNet quirk (ScanNet issue #51): scene0217_00's aggregation lists every segGroup twice, the copies carrying new
objectIds from 31 on. A group with the same label and segments as an earlier one is such a copy: it is dropped
(the first occurrence is kept, as the public preprocessors do) with a warning naming the scene; without that,
"later group wins" would leave the original objects without a vertex.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from threedrs.json_files import read_json_file


class SceneDataError(ValueError):
    """A scene file is missing, unreadable or malformed; the message names the file."""


@dataclass(frozen=True)
class ObjectBox:
    """One annotated object instance.

    object_id: ScanNet `objectId` (0-based), the id every benchmark uses.
    label: raw category (e.g. "kitchen cabinets").
    box: [6] float64 axis-aligned box `[cx, cy, cz, dx, dy, dz]` in metres, in the axis-aligned frame.
    """

    object_id: int
    label: str
    box: np.ndarray


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def read_ply_vertices(path: str | Path) -> np.ndarray:
    """Vertex positions `[N, 3]` float64 of a PLY file (binary little/big endian or ascii).

    Only the vertex element is read, so it must be the first element (as in every ScanNet mesh).
    """
    path = Path(path)
    if not path.is_file():
        raise SceneDataError(f"{path}: mesh file not found")
    with path.open("rb") as fh:
        if fh.readline().strip() != b"ply":
            raise SceneDataError(f"{path}: not a PLY file (no 'ply' magic line)")
        fmt, elements = None, []  # elements: [name, count, [(property, numpy type)]]
        while True:
            line = fh.readline()
            if not line:
                raise SceneDataError(f"{path}: PLY header has no end_header line")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append((words[1], int(words[2]), []))
            elif words[0] == "property" and elements:
                ptype = None if words[1] == "list" else _PLY_TYPES.get(words[1])
                elements[-1][2].append((words[-1], ptype))
        if not elements or elements[0][0] != "vertex":
            raise SceneDataError(f"{path}: the first PLY element must be 'vertex'")
        _, count, props = elements[0]
        if any(t is None for _, t in props) or not {"x", "y", "z"} <= {n for n, _ in props}:
            raise SceneDataError(f"{path}: vertex element needs x, y, z and scalar properties of known types")
        if fmt == "ascii":
            names = [n for n, _ in props]
            try:
                data = np.asarray([fh.readline().split()[: len(names)] for _ in range(count)], dtype=np.float64)
            except ValueError:
                raise SceneDataError(f"{path}: malformed ascii vertex rows") from None
            return data[:, [names.index("x"), names.index("y"), names.index("z")]]
        endian = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt or "")
        if endian is None:
            raise SceneDataError(f"{path}: unsupported PLY format {fmt!r}")
        dtype = np.dtype([(n, endian + t) for n, t in props])
        raw = fh.read(dtype.itemsize * count)
        if len(raw) < dtype.itemsize * count:
            raise SceneDataError(f"{path}: truncated PLY ({len(raw)} of {dtype.itemsize * count} vertex bytes)")
        verts = np.frombuffer(raw, dtype=dtype, count=count)
        return np.stack([verts["x"], verts["y"], verts["z"]], axis=1).astype(np.float64)


def read_instances(scan_dir: str | Path, scene_id: str, axis_align: np.ndarray) -> list[ObjectBox]:
    """Objects of one scan from its mesh, segments and aggregation files, boxes in the aligned frame.

    scan_dir: the scan folder `scans/<scene_id>/`; axis_align: [4, 4] alignment matrix A.
    Returns objects sorted by object_id; an object that owns no vertex is left out.
    """
    scan_dir = Path(scan_dir)
    verts = read_ply_vertices(scan_dir / f"{scene_id}_vh_clean_2.ply")
    segs_path = scan_dir / f"{scene_id}_vh_clean_2.0.010000.segs.json"
    segments = read_json_file(segs_path, SceneDataError, expect=dict)
    seg_indices = np.asarray(segments.get("segIndices", []), dtype=np.int64)
    if seg_indices.shape[0] != verts.shape[0]:
        raise SceneDataError(f"{segs_path}: {seg_indices.shape[0]} segIndices for {verts.shape[0]} mesh vertices")
    agg_path = scan_dir / f"{scene_id}.aggregation.json"
    groups = read_json_file(agg_path, SceneDataError, expect=dict).get("segGroups")
    if not isinstance(groups, list):
        raise SceneDataError(f"{agg_path}: no segGroups list")
    aligned = verts @ axis_align[:3, :3].T + axis_align[:3, 3]
    owner = np.full(verts.shape[0], -1, dtype=np.int64)
    labels: dict[int, str] = {}
    seen: dict[tuple[str, tuple[int, ...]], int] = {}
    copies = []
    for group in groups:
        try:
            oid, label = int(group["objectId"]), str(group["label"])
            segments = tuple(sorted(int(s) for s in group["segments"]))
        except (KeyError, TypeError, ValueError):
            raise SceneDataError(f"{agg_path}: segGroup without objectId/label/segments: {group!r}") from None
        if (label, segments) in seen:
            copies.append(oid)
            continue
        seen[(label, segments)] = oid
        owner[np.isin(seg_indices, np.asarray(segments, dtype=np.int64))] = oid
        labels[oid] = label
    if copies:
        warnings.warn(f"{scene_id}: {len(copies)} segGroup(s) of {agg_path.name} repeat an earlier group (objectIds "
                      f"{copies[0]}..{copies[-1]}); kept the first occurrence of each (ScanNet issue #51)",
                      stacklevel=2)
    objects = []
    for oid in sorted(labels):
        pts = aligned[owner == oid]
        if len(pts) == 0:
            continue
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        objects.append(ObjectBox(oid, labels[oid], np.concatenate([(lo + hi) / 2, hi - lo])))
    return objects
