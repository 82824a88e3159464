"""SynthRooms: files, determinism, exact geometry, alignment, proposals and annotation consistency.

The checks read the written files with small readers written here (PLY, text matrices, label map) and compare
against independent computations: a brute-force float64 ray caster, point-to-box distances, V3D's eval-type rule
and box geometry. The scene graph comes from `build_room` (the same pure function the generator calls).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from PIL import Image

from threedrs.cli import main as cli_main
from threedrs.config import ConfigError, SynthConfig
from threedrs.data.instances import SceneDataError
from threedrs.data.tasks import load_benchmark
from threedrs.data.synthetic import SynthOutputError, SynthSummary, generate
from threedrs.data.synthetic.catalog import CATEGORIES, COLOURS
from threedrs.data.synthetic.render import Renderer, RenderScene
from threedrs.data.synthetic.rooms import build_room

CFG = SynthConfig(scenes=3, frames=4, width=64, height=48, seed=7, invalid_pose_frames=1)
PLURAL = {c.plural: name for name, c in CATEGORIES.items()}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen"]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "a"
    summary = generate(CFG, root, progress=False)
    assert isinstance(summary, SynthSummary)
    return root


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """More rooms, one tiny frame each: enough annotations for distribution checks."""
    root = tmp_path_factory.mktemp("synth") / "big"
    generate(SynthConfig(scenes=16, frames=1, width=16, height=16, seed=3, invalid_pose_frames=0), root,
             progress=False)
    return root


# ------------------------------------------------------------------ small independent readers


def read_matrix(path: Path) -> np.ndarray:
    return np.array(path.read_text().split(), dtype=np.float64).reshape(4, 4)


def read_meta(path: Path) -> dict[str, str]:
    return dict(line.split(" = ", 1) for line in path.read_text().splitlines())


def read_alignment(out: Path, sid: str) -> np.ndarray:
    return np.array(read_meta(out / "scannet/scans" / sid / f"{sid}.txt")["axisAlignment"].split(),
                    dtype=np.float64).reshape(4, 4)


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyz [N, 3] float32, rgba [N, 4] uint8, faces [M, 3]) of a binary little-endian PLY as SynthRooms writes."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode().splitlines()
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0"
    n = int(next(h for h in header if h.startswith("element vertex")).split()[2])
    m = int(next(h for h in header if h.startswith("element face")).split()[2])
    props = [h.split()[2] for h in header if h.startswith("property ") and "list" not in h]
    assert props == ["x", "y", "z", "red", "green", "blue", "alpha"]
    vdt = np.dtype([("xyz", "<f4", 3), ("rgba", "u1", 4)])
    verts = np.frombuffer(data, dtype=vdt, count=n, offset=end)
    fdt = np.dtype([("n", "u1"), ("v", "<i4", 3)])
    faces = np.frombuffer(data, dtype=fdt, count=m, offset=end + n * vdt.itemsize)
    assert end + n * vdt.itemsize + m * fdt.itemsize == len(data)
    assert (faces["n"] == 3).all()
    return verts["xyz"], verts["rgba"], faces["v"]


def vertex_objects(out: Path, sid: str) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(aligned vertices [N, 3] float64, objectId per vertex [N] (-1 = none), objectId -> label)."""
    scan = out / "scannet/scans" / sid
    xyz, _, _ = read_ply(scan / f"{sid}_vh_clean_2.ply")
    seg = np.array(json.loads((scan / f"{sid}_vh_clean_2.0.010000.segs.json").read_text())["segIndices"])
    agg = json.loads((scan / f"{sid}.aggregation.json").read_text())
    owner = np.full(len(xyz), -1)
    labels = {}
    for g in agg["segGroups"]:
        owner[np.isin(seg, g["segments"])] = g["objectId"]
        labels[g["objectId"]] = g["label"]
    a = read_alignment(out, sid)
    return xyz.astype(np.float64) @ a[:3, :3].T + a[:3, 3], owner, labels


def box_of(points: np.ndarray) -> np.ndarray:
    lo, hi = points.min(axis=0), points.max(axis=0)
    return np.concatenate([(lo + hi) / 2, hi - lo])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    lo = np.maximum(a[:3] - a[3:] / 2, b[:3] - b[3:] / 2)
    hi = np.minimum(a[:3] + a[3:] / 2, b[:3] + b[3:] / 2)
    inter = np.prod(np.clip(hi - lo, 0, None))
    return float(inter / (np.prod(a[3:]) + np.prod(b[3:]) - inter + 1e-8))


def scene_ids(out: Path, split: str) -> list[str]:
    return (out / f"metadata/scannetv2_{split}.txt").read_text().split()


def load(out: Path, rel: str):
    return json.loads((out / rel).read_text())


def unproject(out: Path, sid: str, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aligned points [H, W, 3] of a frame's depth PNG, its depth in metres [H, W] and the ray factor |d| [H, W]."""
    frames = out / "scannet/posed_images" / sid
    depth = np.asarray(Image.open(frames / f"{name}.png")).astype(np.float64) / 1000.0
    k = read_matrix(frames / "depth_intrinsic.txt")
    pose = read_alignment(out, sid) @ read_matrix(frames / f"{name}.txt")
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    cam = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(depth)], axis=-1)
    pts = (cam * depth[..., None]) @ pose[:3, :3].T + pose[:3, 3]
    return pts, depth, np.linalg.norm(cam, axis=-1)


def surface_distance(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[N] distance from each point to the nearest SURFACE of any box [B, 6] (inside or outside)."""
    best = np.full(len(points), np.inf)
    for lo, hi in zip(boxes[:, :3], boxes[:, 3:]):
        outside = np.linalg.norm(np.maximum(np.maximum(lo - points, points - hi), 0), axis=1)
        inside = np.minimum(points - lo, hi - points).min(axis=1)
        best = np.minimum(best, np.where(inside > 0, inside, outside))
    return best


# ------------------------------------------------------------------ tests


def test_same_seed_same_bytes_other_seed_differs(out: Path, tmp_path: Path) -> None:
    again = tmp_path / "b"  # a fresh process with another hash seed: no dependence on set/dict order
    code = ("import sys; from threedrs.config import SynthConfig; from threedrs.data.synthetic import generate; "
            f"generate(SynthConfig(**{CFG.__dict__!r}), sys.argv[1], progress=False)")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(again)], check=True, env=env)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    # per scene: frames x (jpg, png, txt) + 2 intrinsics + 4 scan files; 1 val mask; 5 metadata; label map;
    # 13 benchmark files; manifest
    assert len(files) == CFG.scenes * (CFG.frames * 3 + 2 + 4) + 1 + 5 + 1 + 13 + 1
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "c"
    generate(SynthConfig(**{**CFG.__dict__, "seed": 8}), other, progress=False)
    for rel in ("scannet/posed_images/scene0000_00/00000.jpg", "scannet/scans/scene0000_00/scene0000_00.txt",
                "scanrefer/ScanRefer_filtered_train.json"):
        assert (out / rel).read_bytes() != (other / rel).read_bytes(), rel


def test_layout_files_exist_and_parse(out: Path) -> None:
    manifest = load(out, "synthrooms.json")
    assert manifest["complete"] and manifest["seed"] == CFG.seed
    train, val = scene_ids(out, "train"), scene_ids(out, "val")
    assert sorted(train + val) == [f"scene{i:04d}_00" for i in range(CFG.scenes)] and len(val) == 1
    assert manifest["splits"] == {"train": train, "val": val}
    gt = {**load(out, "metadata/scannet_train_gt_box.json"), **load(out, "metadata/scannet_val_gt_box.json")}
    assert set(load(out, "metadata/scannet_val_pred_box.json")) == {f"scannet/{s}" for s in val}
    for sid in train + val:
        frames = out / "scannet/posed_images" / sid
        names = sorted(p.stem for p in frames.glob("*.jpg"))
        assert names == [f"{10 * i:05d}" for i in range(CFG.frames)]
        for name in names:
            with Image.open(frames / f"{name}.jpg") as im:
                assert im.format == "JPEG" and im.mode == "RGB" and im.size == (CFG.width, CFG.height)
                assert np.asarray(im).dtype == np.uint8
            with Image.open(frames / f"{name}.png") as im:
                assert im.format == "PNG" and im.mode in ("I;16", "I") and im.size == (CFG.width, CFG.height)
                assert np.asarray(im).dtype == np.uint16
            lines = (frames / f"{name}.txt").read_text().splitlines()
            assert len(lines) == 4 and all(len(line.split(" ")) == 4 for line in lines)
        for name in ("intrinsic.txt", "depth_intrinsic.txt"):
            k = read_matrix(frames / name)
            assert abs(k[0, 0] / CFG.width - 0.9) < 0.02 and abs(k[0, 2] - CFG.width / 2) < 1
            assert abs(k[1, 2] - CFG.height / 2) < 1 and k[2, 2] == 1 and k[3, 3] == 1
        meta = read_meta(out / "scannet/scans" / sid / f"{sid}.txt")
        for key in ("axisAlignment", "colorWidth", "colorHeight", "depthWidth", "depthHeight", "fx_color",
                    "fy_color", "mx_color", "my_color", "fx_depth", "fy_depth", "mx_depth", "my_depth",
                    "numColorFrames", "numDepthFrames", "sceneType"):
            assert key in meta, key
        assert int(meta["colorWidth"]) == CFG.width and int(meta["depthHeight"]) == CFG.height
        xyz, rgba, faces = read_ply(out / "scannet/scans" / sid / f"{sid}_vh_clean_2.ply")
        assert 1000 < len(xyz) < 40000 and faces.max() < len(xyz) and (rgba[:, 3] == 255).all()
        segs = load(out, f"scannet/scans/{sid}/{sid}_vh_clean_2.0.010000.segs.json")
        assert segs["sceneId"] == sid and len(segs["segIndices"]) == len(xyz)
        agg = load(out, f"scannet/scans/{sid}/{sid}.aggregation.json")
        assert agg["sceneId"] == f"scannet.{sid}" and agg["segmentsFile"].endswith("_vh_clean_2.0.010000.segs.json")
        furniture = [g for g in agg["segGroups"] if g["label"] not in ("wall", "floor", "ceiling")]
        assert [g["objectId"] for g in furniture] == list(range(len(furniture))) and 5 <= len(furniture) <= 15
        assert len(gt[f"scannet/{sid}"]) == len(agg["segGroups"])
    for sid in val:
        masks = scipy.sparse.load_npz(out / "mask" / f"{sid}.mask.npz")
        assert masks.shape[1] == len(read_ply(out / "scannet/scans" / sid / f"{sid}_vh_clean_2.ply")[0])
    tsv = (out / "scannet/scannetv2-labels.combined.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:8] == ["id", "raw_category", "category", "count", "nyu40id", "eigen13id",
                                      "nyuClass", "nyu40class"]
    nyu = {row.split("\t")[1]: int(row.split("\t")[4]) for row in tsv[1:]}
    assert nyu["chair"] == 5 and nyu["table"] == 7 and nyu["wall"] == 1 and nyu["trash can"] == 39
    for rel in ("scanrefer/ScanRefer_filtered_train.json", "multi3drefer/multi3drefer_val.json",
                "scan2cap/scan2cap_val_corpus.json", "scanqa/ScanQA_v1.0_train.json",
                "sqa3d/balanced/v1_balanced_questions_val_scannetv2.json", "sqa3d/balanced/answer_dict.json"):
        assert load(out, rel), rel


def ray_cast_depth(room, pose: np.ndarray, k: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W] millimetres of an independent float64 ray cast of the scene graph (0 beyond 10 m)."""
    boxes = np.concatenate([o.parts for o in room.objects])
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    d = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones(u.shape)], -1) @ pose[:3, :3].T
    o = pose[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.min(np.where(d > 0, (room.size - o) / d, -o / d), axis=-1)  # the room shell from inside
        for lo, hi in zip(boxes[:, :3], boxes[:, 3:]):
            t1, t2 = (lo - o) / d, (hi - o) / d
            near, far = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
            t = np.where((near <= far) & (near > 0) & (near < t), near, t)
    return np.where(t <= 10.0, np.rint(t * 1000), 0)


def test_depth_is_exact_against_brute_force_ray_casting(out: Path) -> None:
    """Every depth pixel equals an independent float64 ray cast of the scene graph, to the millimetre."""
    sid = "scene0001_00"
    room = build_room(CFG, 1)
    frames = out / "scannet/posed_images" / sid
    k = read_matrix(frames / "depth_intrinsic.txt")
    for f in range(CFG.frames):
        depth = np.asarray(Image.open(frames / f"{10 * f:05d}.png")).astype(np.float64)
        expected = ray_cast_depth(room, room.poses[f], k, CFG.width, CFG.height)
        assert np.mean(np.abs(depth - expected) <= 1) > 0.999  # a silhouette pixel may flip in float32
        assert np.median(np.abs(depth - expected)) == 0


def test_depth_at_another_size_than_colour_as_scannet(tmp_path: Path) -> None:
    """synth.depth_*: a smaller depth PNG with its own intrinsics (ScanNet: 640x480 depth, 1296x968 colour)."""
    cfg = SynthConfig(scenes=2, frames=2, width=64, height=48, depth_width=40, depth_height=30, seed=7,
                      invalid_pose_frames=0)
    generate(cfg, tmp_path / "d", progress=False)
    sid, room = "scene0001_00", build_room(cfg, 1)
    frames = tmp_path / "d/scannet/posed_images" / sid
    colour_k, depth_k = read_matrix(frames / "intrinsic.txt"), read_matrix(frames / "depth_intrinsic.txt")
    np.testing.assert_allclose(depth_k[0, [0, 2]], colour_k[0, [0, 2]] * 40 / 64, atol=1e-6)
    np.testing.assert_allclose(depth_k[1, [1, 2]], colour_k[1, [1, 2]] * 30 / 48, atol=1e-6)
    meta = read_meta(tmp_path / "d/scannet/scans" / sid / f"{sid}.txt")
    sizes = (meta["colorWidth"], meta["colorHeight"], meta["depthWidth"], meta["depthHeight"])
    assert sizes == ("64", "48", "40", "30")
    for f in range(cfg.frames):
        assert Image.open(frames / f"{10 * f:05d}.jpg").size == (64, 48)
        depth = np.asarray(Image.open(frames / f"{10 * f:05d}.png")).astype(np.float64)
        expected = ray_cast_depth(room, room.poses[f], depth_k, 40, 30)
        assert depth.shape == (30, 40) and np.median(np.abs(depth - expected)) == 0
        assert np.mean(np.abs(depth - expected) <= 1) > 0.99
    with pytest.raises(ConfigError, match="synth.depth_width/depth_height: set both or neither"):
        generate(SynthConfig(depth_width=40), tmp_path / "e", progress=False)


def test_unprojected_depth_lies_on_scene_surfaces_with_instance_ids(out: Path) -> None:
    sid, index = "scene0002_00", 2
    room = build_room(CFG, index)
    shell = np.array([[-1, -1, -1, room.size[0] + 1, room.size[1] + 1, 0],  # floor slab etc.: surfaces = shell
                      [-1, -1, room.size[2], room.size[0] + 1, room.size[1] + 1, room.size[2] + 1],
                      [-1, -1, -1, 0, room.size[1] + 1, room.size[2] + 1],
                      [room.size[0], -1, -1, room.size[0] + 1, room.size[1] + 1, room.size[2] + 1],
                      [-1, -1, -1, room.size[0] + 1, 0, room.size[2] + 1],
                      [-1, room.size[1], -1, room.size[0] + 1, room.size[1] + 1, room.size[2] + 1]], dtype=float)
    parts = np.concatenate([o.parts for o in room.objects])
    renderer = Renderer(RenderScene.from_room(room), room.intrinsics)
    seen: dict[int, int] = {}
    for f in range(CFG.frames):
        pts, depth, ray = unproject(out, sid, f"{10 * f:05d}") if not room.invalid[f] else (None, None, None)
        if pts is None:
            continue
        valid = depth > 0
        tol = 0.002 + 0.0005 * ray[valid]
        assert (surface_distance(pts[valid], np.concatenate([parts, shell])) <= tol).all()
        instance = renderer.render(room.poses[f]).instance
        for obj in room.objects:
            mask = valid & (instance == obj.object_id)
            if mask.sum() >= 3:
                d = surface_distance(pts[mask], obj.parts)
                assert (d <= 0.002 + 0.0005 * ray[mask]).all(), obj.object_id
                seen[obj.object_id] = seen.get(obj.object_id, 0) + 1
    assert any(n >= 2 for n in seen.values())  # some object checked in two frames


def test_invalid_poses_are_all_minus_inf(out: Path) -> None:
    for sid in scene_ids(out, "train") + scene_ids(out, "val"):
        frames = out / "scannet/posed_images" / sid
        invalid = [p.stem for p in sorted(frames.glob("0*.txt")) if np.isneginf(read_matrix(p)).all()]
        assert len(invalid) == CFG.invalid_pose_frames and "00000" not in invalid
        for name in invalid:
            assert (frames / f"{name}.txt").read_text() == "-inf -inf -inf -inf\n" * 4
            assert (frames / f"{name}.jpg").is_file() and (frames / f"{name}.png").is_file()


def test_alignment_poses_and_gt_boxes(out: Path) -> None:
    for index in range(CFG.scenes):
        sid = f"scene{index:04d}_00"
        room = build_room(CFG, index)
        a = read_alignment(out, sid)
        assert np.allclose(a[2], [0, 0, 1, a[2, 3]]) and np.allclose(a[3], [0, 0, 0, 1])
        assert np.allclose(a[:3, :3] @ a[:3, :3].T, np.eye(3), atol=1e-5) and abs(a[:2, 3]).max() > 0
        for f in np.flatnonzero(~room.invalid):
            pose = read_matrix(out / "scannet/posed_images" / sid / f"{10 * f:05d}.txt")
            assert np.allclose(a @ pose, room.poses[f], atol=1e-9)
            assert not np.allclose(pose, room.poses[f], atol=1e-3)  # the files really are unaligned
            assert 1.15 <= room.poses[f][2, 3] <= 1.75 and room.poses[f][2, 2] < np.sin(np.deg2rad(6))
        aligned, owner, _ = vertex_objects(out, sid)
        split = "val" if sid in scene_ids(out, "val") else "train"
        table = np.array(load(out, f"metadata/scannet_{split}_gt_box.json")[f"scannet/{sid}"])
        for oid in range(len(table)):
            assert np.allclose(table[oid], box_of(aligned[owner == oid]), atol=1e-6)
        for obj in room.objects:  # and the box table is the scene graph's box
            assert np.allclose(table[obj.object_id], np.concatenate([obj.centre, obj.dims]), atol=1e-5)


def test_proposals_are_vertex_masks_near_the_objects(out: Path, big: Path) -> None:
    best = []
    for root in (out, big):
        preds = load(root, "metadata/scannet_val_pred_box.json")
        gt = load(root, "metadata/scannet_val_gt_box.json")
        for sid in scene_ids(root, "val"):
            aligned, _, labels = vertex_objects(root, sid)
            masks = np.asarray(scipy.sparse.load_npz(root / "mask" / f"{sid}.mask.npz").todense()).astype(bool)
            boxes = np.array(preds[f"scannet/{sid}"])
            assert len(masks) == len(boxes) <= 50
            for mask, box in zip(masks, boxes):
                assert np.allclose(box, box_of(aligned[mask]), atol=1e-6)
            furniture = [oid for oid, lab in labels.items() if lab not in ("wall", "floor", "ceiling")]
            best += [max(iou(b, np.array(gt[f"scannet/{sid}"][oid])) for b in boxes) for oid in furniture]
    best = np.array(best)
    assert 0.5 <= np.median(best) <= 0.95 and (best >= 0.5).mean() >= 0.6 and (best < 0.5).any()


def test_annotation_object_ids_exist_and_names_match(out: Path) -> None:
    for split in ("train", "val"):
        labels = {sid: vertex_objects(out, sid)[2] for sid in scene_ids(out, split)}
        furniture = {sid: {o for o, lab in ls.items() if lab not in ("wall", "floor", "ceiling")}
                     for sid, ls in labels.items()}
        for r in load(out, f"scanrefer/ScanRefer_filtered_{split}.json"):
            assert isinstance(r["object_id"], str) and isinstance(r["ann_id"], str)
            assert int(r["object_id"]) in furniture[r["scene_id"]]
            assert labels[r["scene_id"]][int(r["object_id"])] == r["object_name"].replace("_", " ")
            assert r["token"] and r["description"].startswith(r["token"][0])
        for r in load(out, f"multi3drefer/multi3drefer_{split}.json"):
            assert isinstance(r["ann_id"], int) and set(r["object_ids"]) <= furniture[r["scene_id"]]
            assert all(labels[r["scene_id"]][o] == r["object_name"].replace("_", " ") for o in r["object_ids"])
        for r in load(out, f"scanqa/ScanQA_v1.0_{split}.json"):
            assert re.fullmatch(rf"{split}-scene\d{{4}}-\d+", r["question_id"]) and r["answers"]
            assert set(r["object_ids"]) <= furniture[r["scene_id"]]
            assert r["object_names"] == [labels[r["scene_id"]][o].replace(" ", "_") for o in r["object_ids"]]
        corpus = load(out, f"scan2cap/scan2cap_{split}_corpus.json")
        for key, refs in corpus.items():
            sid, oid, name = key.split("|")
            assert int(oid) in furniture[sid] and labels[sid][int(oid)] == name.replace("_", " ")
            assert all(ref.startswith("sos ") and ref.endswith(" eos") for ref in refs)


def test_scanrefer_is_written_as_the_official_files_and_labelled_by_the_v3d_rule(big: Path) -> None:
    tsv = (big / "scannet/scannetv2-labels.combined.tsv").read_text().splitlines()[1:]
    nyu = {row.split("\t")[1]: int(row.split("\t")[4]) for row in tsv}
    kept = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39}
    for split in ("train", "val"):
        records = load(big, f"scanrefer/ScanRefer_filtered_{split}.json")
        for r in records:  # the official fields, ids as digit strings, and no eval_type
            assert set(r) == {"scene_id", "object_id", "object_name", "ann_id", "description", "token"}
            assert r["object_id"].isdigit() and r["ann_id"].isdigit() and all(isinstance(t, str) for t in r["token"])
        with pytest.raises(SceneDataError, match="no eval_type .* set data.label_map"):
            load_benchmark(big, "scanrefer", split)
        samples = load_benchmark(big, "scanrefer", split, "scannet/scannetv2-labels.combined.tsv")
        sem = [nyu[r["object_name"].replace("_", " ")] for r in records]
        sem = [v if v in kept else 39 for v in sem]
        for r, c, sample in zip(records, sem, samples):
            same = {(q["scene_id"], q["object_id"]) for q, d in zip(records, sem) if q["scene_id"] == r["scene_id"]
                    and d == c}
            assert sample.question_type == ("unique" if len(same) == 1 else "multiple")
        assert {s.question_type for s in samples} == {"unique", "multiple"}  # both labels occur in each split


def test_multi3drefer_eval_types(big: Path) -> None:
    records = [r for s in ("train", "val") for r in load(big, f"multi3drefer/multi3drefer_{s}.json")]
    assert {r["eval_type"] for r in records} == {"zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt"}
    for r in records:
        labels = vertex_objects(big, r["scene_id"])[2]
        same_class = sum(lab == r["object_name"].replace("_", " ") for lab in labels.values())
        n = len(r["object_ids"])
        expected = "mt" if n >= 2 else ("zt" if n == 0 else "st") + ("_w_d" if same_class > n else "_wo_d")
        assert r["eval_type"] == expected, r
        for flag in ("spatial", "color", "texture", "shape"):
            assert isinstance(r[flag], bool)
        words = set(re.findall(r"[a-z]+", r["description"]))
        assert r["color"] == bool(words & set(COLOURS)) and r["shape"] == bool(words & {"small", "large"})
        assert r["texture"] == bool(words & {"plain", "striped", "checkered", "speckled"})


def test_counting_answers_match_the_scene(big: Path) -> None:
    checked = 0
    for split in ("train", "val"):
        gt = load(big, f"metadata/scannet_{split}_gt_box.json")
        for r in load(big, f"scanqa/ScanQA_v1.0_{split}.json"):
            m = re.fullmatch(r"How many (.+) are in the room\?", r["question"])
            if m:
                labels = vertex_objects(big, r["scene_id"])[2]
                assert r["answers"] == [NUMBERS[sum(lab == PLURAL[m.group(1)] for lab in labels.values())]]
                checked += 1
        questions = load(big, f"sqa3d/balanced/v1_balanced_questions_{split}_scannetv2.json")["questions"]
        annotations = {a["question_id"]: a for a in
                       load(big, f"sqa3d/balanced/v1_balanced_sqa_annotations_{split}_scannetv2.json")["annotations"]}
        for q in questions:
            m = re.fullmatch(r"How many (.+) are in front of me\?", q["question"])
            if not m:
                continue
            a = annotations[q["question_id"]]
            rot = a["rotation"]
            yaw = 2 * np.arctan2(rot["_z"], rot["_w"])
            pos = np.array([a["position"]["x"], a["position"]["y"]])
            labels = vertex_objects(big, q["scene_id"])[2]
            boxes = np.array(gt[f"scannet/{q['scene_id']}"])
            ahead = sum((boxes[o, :2] - pos) @ [np.cos(yaw), np.sin(yaw)] > 0
                        for o, lab in labels.items() if lab == PLURAL[m.group(1)])
            assert a["answers"][0]["answer"] == NUMBERS[ahead]
            checked += 1
    assert checked >= 10


def test_on_top_and_bigger_answers_match_the_boxes(big: Path) -> None:
    checked = 0
    for split in ("train", "val"):
        gt = load(big, f"metadata/scannet_{split}_gt_box.json")
        for r in load(big, f"scanqa/ScanQA_v1.0_{split}.json"):
            boxes = np.array(gt[f"scannet/{r['scene_id']}"])
            if r["question"].startswith("Where is"):
                top, below = boxes[r["object_ids"][0]], boxes[r["object_ids"][1]]
                assert abs((top[2] - top[5] / 2) - (below[2] + below[5] / 2)) < 1e-5
                assert (np.abs(top[:2] - below[:2]) <= below[3:5] / 2).all()
                assert r["answers"][0] == f"on top of the {r['object_names'][1].replace('_', ' ')}"
                checked += 1
            if r["question"].startswith("Which is bigger"):
                a, b = r["object_ids"]
                bigger = a if np.prod(boxes[a, 3:]) > np.prod(boxes[b, 3:]) else b
                assert r["answers"][-1] == r["object_names"][r["object_ids"].index(bigger)].replace("_", " ")
                checked += 1
    assert checked >= 5


def test_sqa3d_files_join_on_question_id(out: Path) -> None:
    answers = load(out, "sqa3d/balanced/answer_dict.json")
    for split in ("train", "val"):
        q = load(out, f"sqa3d/balanced/v1_balanced_questions_{split}_scannetv2.json")
        a = load(out, f"sqa3d/balanced/v1_balanced_sqa_annotations_{split}_scannetv2.json")
        assert q["task_type"] == "Situated question answering" and a["data_type"] == "scannet"
        qids = [x["question_id"] for x in q["questions"]]
        assert len(set(qids)) == len(qids) and sorted(qids) == sorted(x["question_id"] for x in a["annotations"])
        assert all(isinstance(i, int) and len(str(i)) == 12 for i in qids)
        by_id = {x["question_id"]: x for x in a["annotations"]}
        for item in q["questions"]:
            ann = by_id[item["question_id"]]
            assert ann["scene_id"] == item["scene_id"] and item["situation"].startswith("I am")
            assert len(ann["answers"]) == 1 and ann["answers"][0]["answer"] in answers[0]
            assert ann["position"]["z"] == 0 and abs(np.hypot(ann["rotation"]["_z"], ann["rotation"]["_w"]) - 1) < 1e-5
            assert len(item["alternative_situation"]) <= 2


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(SynthOutputError, match="existing file"):
        generate(CFG, a_file, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SynthOutputError, match="without synthrooms.json"):
        generate(CFG, foreign, progress=False)
    with pytest.raises(ConfigError, match="synth.scenes"):
        generate(SynthConfig(scenes=1), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="synth.invalid_pose_frames"):
        generate(SynthConfig(frames=2, invalid_pose_frames=2), tmp_path / "x", progress=False)
    assert cli_main(["synth", str(a_file), "--scenes", "2"]) == 1


def test_cli_regenerates_in_place(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["synth", str(tmp_path / "s"), "--scenes", "2", "--frames", "2", "--size", "32x24", "--invalid-poses", "0"]
    assert cli_main(args) == 0
    assert "scanrefer:" in capsys.readouterr().out
    first = (tmp_path / "s/scannet/posed_images/scene0001_00/00010.png").read_bytes()
    assert cli_main(args) == 0  # a SynthRooms folder is replaced, with the same bytes
    assert (tmp_path / "s/scannet/posed_images/scene0001_00/00010.png").read_bytes() == first
    assert json.loads((tmp_path / "s/synthrooms.json").read_text())["config"]["invalid_pose_frames"] == 0


def test_left_right_questions_match_the_window_viewpoint(big: Path) -> None:
    """'X to the left of Y when facing the window': X's centre is left of Y's for a viewer facing the window."""
    scenes = load(big, "synthrooms.json")["scenes"]
    checked = 0
    for split in ("train", "val"):
        gt = load(big, f"metadata/scannet_{split}_gt_box.json")
        for r in load(big, f"scanqa/ScanQA_v1.0_{split}.json"):
            m = re.search(r"to the (left|right) of the .+ when facing the window", r["question"])
            if not m:
                continue
            info = scenes[r["scene_id"]]
            size, centre = np.array(info["room_size"]), np.array(info["window"]["centre"])
            wall = [(abs(centre[0]) < 1e-6, (-1, 0)), (abs(centre[0] - size[0]) < 1e-6, (1, 0)),
                    (abs(centre[1]) < 1e-6, (0, -1)), (abs(centre[1] - size[1]) < 1e-6, (0, 1))]
            facing = np.array(next(f for on_wall, f in wall if on_wall), dtype=float)
            right = np.array([facing[1], -facing[0]])
            boxes = np.array(gt[f"scannet/{r['scene_id']}"])
            target, anchor = r["object_ids"][:2]
            lateral = (boxes[target, :2] - boxes[anchor, :2]) @ right
            assert lateral < -0.29 if m.group(1) == "left" else lateral > 0.29
            checked += 1
    assert checked >= 1


def test_scene_graphs_are_physically_valid() -> None:
    """No interpenetration, objects inside the room, stacked objects rest on their support, camera in free space."""
    cfg = SynthConfig(scenes=40, frames=16, width=16, height=16, seed=11)
    stacked = 0
    for index in range(30):
        room = build_room(cfg, index)
        objs = room.objects
        assert 5 <= len(objs) <= 15 and [o.object_id for o in objs] == list(range(len(objs)))
        assert 4.0 <= room.size[0] <= 8.0 and 3.5 <= room.size[1] <= 7.0 and 2.6 <= room.size[2] <= 3.0
        for i, a in enumerate(objs):
            assert (a.lo >= -1e-9).all() and (a.hi <= room.size + 1e-9).all()
            for b in objs[i + 1:]:
                for p in a.parts:
                    overlap = np.minimum(p[3:], b.parts[:, 3:]) - np.maximum(p[:3], b.parts[:, :3])
                    assert (overlap.min(axis=1) <= 1e-9).all(), (a.category, b.category)
            if a.support is None:
                assert abs(a.lo[2]) < 1e-9
            else:
                s = objs[a.support]
                assert abs(a.lo[2] - s.hi[2]) < 1e-9 and (a.lo[:2] >= s.lo[:2]).all() and (a.hi[:2] <= s.hi[:2]).all()
                stacked += 1
        for pose in room.poses:
            eye = pose[:3, 3]
            assert 1.2 <= eye[2] <= 1.7 and (eye[:2] > 0.5).all() and (eye[:2] < room.size[:2] - 0.5).all()
            for o in objs:
                gap = np.maximum(np.maximum(o.lo[:2] - eye[:2], eye[:2] - o.hi[:2]), 0)
                assert np.linalg.norm(gap) > 0.4
            pitch = np.degrees(np.arcsin(pose[2, 2]))  # optical axis elevation
            assert -36 <= pitch <= 6
    assert stacked >= 30
