"""Files of the ScanNet / Video-3D LLM layout as SynthRooms writes them (FORMATS §1.3b, §1.6, §2.1, §2.4).

Every writer is deterministic: no timestamps (the sparse-mask archive gets a fixed zip date), floats in text
files as "%f", JSON with the standard separators.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse
from PIL import Image

from threedrs.data.synthetic.camera import Intrinsics
from threedrs.data.synthetic.catalog import CATEGORIES, STRUCTURE
from threedrs.data.synthetic.mesh import SceneMesh
from threedrs.data.synthetic.rooms import Room

MAX_DEPTH_M = 10.0  # depth beyond this is written as 0 (invalid), as a depth sensor's range ends
JPEG_QUALITY = 90
FRAME_STEP = 10  # frame names are multiples of 10 (the --fast export of every 10th stream frame)
LABEL_MAP_COLUMNS = ("id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyuClass", "nyu40class",
                     "eigen13class", "ModelNet40", "ModelNet10", "ShapeNetCore55", "synsetoffset", "wnsynsetid",
                     "wnsynsetkey", "mpcat40", "mpcat40index")
SEGMENT_PARAMS = {"kThresh": "0.01", "segMinVerts": "20", "minPoints": "750", "maxPoints": "30000",
                  "thinThresh": "0.05", "flatThresh": "0.001", "minLength": "0.02", "maxLength": "1"}


def frame_name(index: int) -> str:
    """File stem of frame `index` of a scan: 00000, 00010, 00020, ..."""
    return f"{index * FRAME_STEP:05d}"


def matrix_text(matrix: np.ndarray) -> str:
    """A 4x4 matrix as ScanNet's exporters write it: "%f" values, single spaces, one row per line."""
    return "".join(" ".join("%f" % v for v in row) + "\n" for row in np.asarray(matrix, dtype=np.float64))


def depth_millimetres(depth: np.ndarray) -> np.ndarray:
    """[H, W] float32 metres -> [H, W] uint16 millimetres; 0 where missing, non-finite or beyond MAX_DEPTH_M."""
    valid = np.isfinite(depth) & (depth > 0) & (depth <= MAX_DEPTH_M)
    return np.where(valid, np.rint(np.where(valid, depth, 0) * 1000.0), 0).astype(np.uint16)


def write_frame(folder: Path, index: int, rgb: np.ndarray, depth: np.ndarray, pose: np.ndarray | None) -> None:
    """Colour JPEG, 16-bit depth PNG (mm) and camera-to-world text of one frame; pose None writes all -inf."""
    stem = folder / frame_name(index)
    Image.fromarray(rgb).save(stem.with_suffix(".jpg"), quality=JPEG_QUALITY)
    Image.fromarray(depth_millimetres(depth)).save(stem.with_suffix(".png"))
    stem.with_suffix(".txt").write_text(matrix_text(np.full((4, 4), -np.inf) if pose is None else pose))


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def write_scan_meta(path: Path, room: Room, frames: int, depth: Intrinsics) -> None:
    """`<scene_id>.txt`: ScanNet's sorted `key = value` scan metadata, including axisAlignment."""
    k = room.intrinsics
    values = {
        "axisAlignment": " ".join("%f" % v for v in room.alignment.ravel()),
        "colorHeight": k.height, "colorToDepthExtrinsics": " ".join("%f" % v for v in np.eye(4).ravel()),
        "colorWidth": k.width, "depthHeight": depth.height, "depthWidth": depth.width,
        "fx_color": "%f" % k.fx, "fx_depth": "%f" % depth.fx, "fy_color": "%f" % k.fy, "fy_depth": "%f" % depth.fy,
        "mx_color": "%f" % k.cx, "mx_depth": "%f" % depth.cx, "my_color": "%f" % k.cy, "my_depth": "%f" % depth.cy,
        "numColorFrames": frames * FRAME_STEP, "numDepthFrames": frames * FRAME_STEP, "numIMUmeasurements": 0,
        "sceneType": room.scene_type,
    }
    path.write_text("".join(f"{key} = {value}\n" for key, value in values.items()))


def write_ply(path: Path, mesh: SceneMesh) -> None:
    """Binary little-endian PLY: vertex (float x y z, uchar red green blue alpha), face (list uchar int)."""
    n, m = len(mesh.xyz), len(mesh.faces)
    header = ("ply\nformat binary_little_endian 1.0\ncomment SynthRooms annotation mesh (unaligned scan frame)\n"
              f"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
              f"element face {m}\nproperty list uchar int vertex_indices\nend_header\n")
    vertices = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                  ("blue", "u1"), ("alpha", "u1")])
    vertices["x"], vertices["y"], vertices["z"] = mesh.xyz[:, 0], mesh.xyz[:, 1], mesh.xyz[:, 2]
    vertices["red"], vertices["green"], vertices["blue"] = mesh.rgb[:, 0], mesh.rgb[:, 1], mesh.rgb[:, 2]
    vertices["alpha"] = 255
    faces = np.zeros(m, dtype=[("n", "u1"), ("v", "<i4", (3,))])
    faces["n"], faces["v"] = 3, mesh.faces
    path.write_bytes(header.encode("ascii") + vertices.tobytes() + faces.tobytes())


def write_segments(path: Path, scene_id: str, mesh: SceneMesh) -> None:
    write_json(path, {"params": SEGMENT_PARAMS, "sceneId": scene_id, "segIndices": mesh.segments.tolist()})


def write_aggregation(path: Path, scene_id: str, mesh: SceneMesh) -> None:
    groups = [{"id": g.object_id, "objectId": g.object_id, "segments": g.segments, "label": g.label}
              for g in mesh.groups]
    write_json(path, {"sceneId": f"scannet.{scene_id}", "appId": "SynthRooms.v1", "segGroups": groups,
                      "segmentsFile": f"scannet.{scene_id}_vh_clean_2.0.010000.segs.json"})


def write_label_map(path: Path, counts: dict[str, int]) -> None:
    """`scannetv2-labels.combined.tsv` rows for the structure labels and every SynthRooms category."""
    rows = ["\t".join(LABEL_MAP_COLUMNS)]
    for i, cat in enumerate([*STRUCTURE.values(), *CATEGORIES.values()], start=1):
        rows.append("\t".join(str(v) for v in (
            i, cat.name, cat.name, counts.get(cat.name, 0), cat.nyu40id, cat.eigen13id, cat.nyu_class,
            cat.nyu40_class, cat.eigen13_class, "", "", "", "", "", "", cat.mpcat40, cat.mpcat40index)))
    write_lines(path, rows)


def write_sparse_masks(path: Path, masks: np.ndarray) -> None:
    """Proposal masks [P, N] bool as `scipy.sparse.save_npz` would store a uint8 CSR matrix, but with fixed zip
    timestamps so the bytes are reproducible; `scipy.sparse.load_npz` reads it."""
    m = scipy.sparse.csr_matrix(masks.astype(np.uint8))
    arrays = {"indices": m.indices, "indptr": m.indptr, "format": np.array(m.format.encode("ascii")),
              "shape": np.array(m.shape), "data": m.data}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
