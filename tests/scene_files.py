"""Writes tiny hand-made scenes in the ScanNet posed-image layout, for reader tests independent of SynthRooms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_matrix(path: Path, m: np.ndarray) -> None:
    path.write_text("\n".join(" ".join(f"{v:f}" for v in row) for row in m) + "\n")


def write_scene(root: Path, scene_id: str = "scene0000_00", poses: list[np.ndarray] | None = None,
                depth_mm: np.ndarray | None = None, size: tuple[int, int] = (6, 8),
                axis_align: np.ndarray | None = None) -> Path:
    """A scene of len(poses) frames (default 3, the second invalid), colour (H, W) = size, constant depth 2 m.

    Also writes the alignment file and an instance annotation with two objects (ids 0 and 1).
    """
    h, w = size
    frame_dir = root / "scannet" / "posed_images" / scene_id
    frame_dir.mkdir(parents=True, exist_ok=True)
    if poses is None:
        poses = [np.eye(4), np.full((4, 4), -np.inf), np.eye(4)]
        poses[2] = poses[2].copy()
        poses[2][0, 3] = 0.5
    if depth_mm is None:
        depth_mm = np.full((h, w), 2000, dtype=np.uint16)
    rng = np.random.default_rng(0)
    for i, pose in enumerate(poses):
        name = f"{i * 10:05d}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(frame_dir / f"{name}.jpg")
        Image.fromarray(depth_mm).save(frame_dir / f"{name}.png")
        write_matrix(frame_dir / f"{name}.txt", pose)
    K = np.array([[10.0, 0, w / 2, 0], [0, 10.0, h / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    write_matrix(frame_dir / "intrinsic.txt", K)
    write_matrix(frame_dir / "depth_intrinsic.txt", K)
    scan_dir = root / "scannet" / "scans" / scene_id
    scan_dir.mkdir(parents=True, exist_ok=True)
    A = np.eye(4) if axis_align is None else axis_align
    (scan_dir / f"{scene_id}.txt").write_text(
        "axisAlignment = " + " ".join(f"{v:f}" for v in A.ravel()) + f"\ncolorWidth = {w}\ncolorHeight = {h}\n")
    # two boxes worth of vertices (unaligned): object 0 = unit cube at origin, object 1 = [2,3]x[0,1]x[0,2]
    verts = np.array([[0, 0, 0], [1, 1, 1], [0.5, 0.2, 0.9], [2, 0, 0], [3, 1, 2], [2.5, 0.5, 1]], dtype=np.float32)
    write_ply(scan_dir / f"{scene_id}_vh_clean_2.ply", verts)
    (scan_dir / f"{scene_id}_vh_clean_2.0.010000.segs.json").write_text(
        json.dumps({"params": {}, "sceneId": scene_id, "segIndices": [7, 7, 7, 9, 9, 9]}))
    (scan_dir / f"{scene_id}.aggregation.json").write_text(json.dumps({
        "sceneId": f"scannet.{scene_id}", "appId": "test", "segmentsFile": "segs",
        "segGroups": [{"id": 0, "objectId": 0, "segments": [7], "label": "chair"},
                      {"id": 1, "objectId": 1, "segments": [9], "label": "table"}]}))
    meta = root / "metadata"
    meta.mkdir(exist_ok=True)
    split = meta / "scannetv2_val.txt"
    ids = split.read_text().split() if split.exists() else []
    split.write_text("\n".join(sorted(set(ids + [scene_id]))) + "\n")
    return frame_dir


def write_ply(path: Path, verts: np.ndarray) -> None:
    """Binary little-endian PLY with x, y, z float and red, green, blue, alpha uchar, plus an empty face element."""
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(verts)}\nproperty float x\n"
              "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
              "property uchar alpha\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n")
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1"), ("a", "u1")])
    data = np.zeros(len(verts), dtype=dtype)
    data["x"], data["y"], data["z"] = verts[:, 0], verts[:, 1], verts[:, 2]
    path.write_bytes(header.encode("ascii") + data.tobytes())
