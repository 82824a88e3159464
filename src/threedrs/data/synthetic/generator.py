"""`generate`: write a whole SynthRooms set (frames, scans, boxes, proposals, five benchmarks) under one folder.

Layout under OUT (the real ScanNet / Video-3D LLM layout, FORMATS.md):
```
synthrooms.json                                     manifest (version, config, splits, categories, conventions)
scannet/posed_images/<scene>/NNNNN.{jpg,png,txt}, intrinsic.txt, depth_intrinsic.txt  (depth at synth.depth_*)
scannet/scans/<scene>/<scene>.txt, _vh_clean_2.ply, _vh_clean_2.0.010000.segs.json, .aggregation.json
scannet/scannetv2-labels.combined.tsv               ScanNet's label table (official columns) for every category
metadata/scannetv2_{train,val}.txt, scannet_{train,val}_gt_box.json, scannet_val_pred_box.json
mask/<val scene>.mask.npz
scanrefer/ScanRefer_filtered_{train,val}.json      multi3drefer/multi3drefer_{train,val}.json
scan2cap/scan2cap_{train,val}_corpus.json          scanqa/ScanQA_v1.0_{train,val}.json
sqa3d/balanced/v1_balanced_{questions,sqa_annotations}_{train,val}_scannetv2.json, answer_dict.json
```
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from threedrs.config import SynthConfig, to_dict, validate
from threedrs.data.synthetic.catalog import CATEGORIES, COLOURS
from threedrs.data.synthetic.mesh import build_mesh
from threedrs.data.synthetic.proposals import detector_proposals
from threedrs.data.synthetic.questions import scanqa_records, sqa3d_items
from threedrs.data.synthetic.referring import multi3drefer_records, scan2cap_corpus, scanrefer_records
from threedrs.data.synthetic.relations import Facts
from threedrs.data.synthetic.render import Renderer, RenderScene
from threedrs.data.synthetic.rooms import (STREAM_LANGUAGE, STREAM_MESH, STREAM_PROPOSALS, STREAM_SPLIT, Room,
                                           build_room, scene_name, scene_rng)
from threedrs.data.synthetic.writer import (matrix_text, write_aggregation, write_frame, write_json, write_label_map,
                                            write_lines, write_ply, write_scan_meta, write_segments,
                                            write_sparse_masks)
from threedrs.data.tasks import TASKS

VERSION = "1.0"
MANIFEST = "synthrooms.json"
GENERATED = ("scannet", "metadata", "mask", "scanrefer", "multi3drefer", "scan2cap", "scanqa", "sqa3d")
SPLITS = ("train", "val")


class SynthOutputError(ValueError):
    """The output path cannot receive a SynthRooms set; the message names it."""


@dataclass
class SynthSummary:
    """What `generate` wrote. samples: benchmark -> {split: number of items} (Scan2Cap: objects with captions)."""

    out: str
    scenes: dict[str, int]
    frames_per_scene: int
    frames: int
    invalid_frames: int
    objects: int
    categories: dict[str, int]
    samples: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        """Multi-line human summary."""
        lines = [f"SynthRooms written to {self.out} in {self.seconds:.1f} s",
                 f"  scenes: {self.scenes['train']} train, {self.scenes['val']} val; "
                 f"{self.frames} frames ({self.frames_per_scene} per scene, {self.invalid_frames} with invalid pose)",
                 f"  objects: {self.objects} in {len(self.categories)} categories: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.categories.items()))]
        for bench in TASKS:
            counts = self.samples.get(bench, {})
            lines.append(f"  {bench}: {counts.get('train', 0)} train, {counts.get('val', 0)} val")
        return "\n".join(lines)


def _prepare(out: Path) -> None:
    """Create `out`, or clear the generated folders of a previous SynthRooms set there; refuse anything else."""
    if out.exists() and not out.is_dir():
        raise SynthOutputError(f"synth output {out} is an existing file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise SynthOutputError(f"synth output {out} is a non-empty directory without {MANIFEST}; "
                                   "choose a new or empty directory")
        for name in GENERATED:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
    out.mkdir(parents=True, exist_ok=True)


def split_scenes(cfg: SynthConfig) -> dict[str, list[str]]:
    """Scene ids per split: round(val_fraction * scenes) val scenes (at least one, leaving one train), drawn from
    the master seed."""
    n_val = min(max(1, round(cfg.val_fraction * cfg.scenes)), cfg.scenes - 1)
    order = scene_rng(cfg.seed, cfg.scenes, STREAM_SPLIT).permutation(cfg.scenes)
    val = sorted(int(i) for i in order[:n_val])
    return {"train": [scene_name(i) for i in range(cfg.scenes) if i not in val],
            "val": [scene_name(i) for i in val]}


def _scene_info(room: Room) -> dict:
    """Per-scene facts for users of the set: room size and the window landmark, aligned frame, metres."""
    w = room.window
    return {"room_size": room.size.tolist(), "scene_type": room.scene_type,
            "window": {"centre": np.round(w.centre(room.size), 6).tolist(), "width": round(w.u1 - w.u0, 6),
                       "height": round(w.z1 - w.z0, 6)}}


def _manifest(cfg: SynthConfig, splits: dict[str, list[str]], scenes: dict[str, dict]) -> dict:
    """The finished set's manifest (while writing, the folder holds a stub with "complete": false only)."""
    return {
        "generator": "threedrs.synthrooms", "version": VERSION, "complete": True, "seed": cfg.seed,
        "config": to_dict(cfg), "splits": splits, "scenes": scenes,
        "categories": {name: {"nyu40id": c.nyu40id, "plural": c.plural} for name, c in CATEGORIES.items()},
        "colours": list(COLOURS), "textures": ["plain", "striped", "checkered", "speckled"],
        "conventions": {
            "frames": "NNNNN = 10 x frame index; colour JPEG RGB, depth uint16 PNG in mm (0 = invalid), "
                      "4x4 camera-to-world (OpenCV camera) in the UNALIGNED scan frame",
            "axis_alignment": "scans/<scene>/<scene>.txt axisAlignment A: aligned = A . scan (points and poses)",
            "boxes": "all boxes [cx, cy, cz, dx, dy, dz] in metres in the aligned frame; list index = objectId; "
                     "furniture objectIds are 0..K-1, then floor K, walls K+1..K+4, ceiling K+5",
            "left_right": "ScanRefer / Multi3DRefer / ScanQA left and right are as seen when facing the window wall",
            "sqa3d": "position {x, y, z=0} and rotation {_x, _y, _z, _w} are in the ALIGNED frame; rotation is the "
                     "yaw quaternion about +z whose +x axis is the direction the agent faces",
            "multi3drefer_shape": "the 'shape' flag marks a size word (small / large)",
            "pred_boxes": "val proposals are vertex masks over the PLY vertices (mask/<scene>.mask.npz); each "
                          "pred box is the min/max of the aligned vertices under its mask",
        },
    }


def _sqa3d_wrapper(kind: str, items: list[dict], split: str) -> dict:
    info = {"description": f"SynthRooms situated questions, {split} split (SQA3D format)", "version": VERSION}
    out = {"info": info, "license": "CC BY 4.0 (generated)", "data_type": "scannet", "data_subtype": "v2"}
    if kind == "questions":
        out["task_type"] = "Situated question answering"
    out[kind] = items
    return out


def generate(cfg: SynthConfig, out: str | Path, progress: bool = True) -> SynthSummary:
    """Generate the SynthRooms set described by `cfg` under `out` (created; a previous SynthRooms set there is
    replaced). The same config gives byte-identical files. Returns a summary of what was written."""
    validate(cfg)
    start = time.perf_counter()
    out = Path(out)
    _prepare(out)
    splits = split_scenes(cfg)
    split_of = {sid: split for split, ids in splits.items() for sid in ids}
    write_json(out / MANIFEST, {"generator": "threedrs.synthrooms", "version": VERSION, "complete": False})
    scene_info: dict[str, dict] = {}
    ann: dict[str, dict[str, list]] = {b: {s: [] for s in SPLITS} for b in (*TASKS, "sqa3d_ann")}
    gt_boxes: dict[str, dict] = {s: {} for s in SPLITS}
    pred_boxes: dict[str, list] = {}
    categories: Counter = Counter()
    for index in tqdm(range(cfg.scenes), desc="SynthRooms", unit="scene", disable=not progress):
        room = build_room(cfg, index)
        sid, split = room.scene_id, split_of[room.scene_id]
        frame_dir = out / "scannet" / "posed_images" / sid
        frame_dir.mkdir(parents=True, exist_ok=True)
        depth_k = room.intrinsics if cfg.depth_width is None else room.intrinsics.resized(cfg.depth_width,
                                                                                            cfg.depth_height)
        (frame_dir / "intrinsic.txt").write_text(matrix_text(room.intrinsics.matrix()))
        (frame_dir / "depth_intrinsic.txt").write_text(matrix_text(depth_k.matrix()))
        renderer = Renderer(RenderScene.from_room(room), room.intrinsics)
        depth_renderer = renderer if depth_k == room.intrinsics else Renderer(renderer.scene, depth_k)
        for f, pose in enumerate(room.poses):
            frame = renderer.render(pose)
            depth = frame.depth if depth_renderer is renderer else depth_renderer.render(pose).depth
            write_frame(frame_dir, f, frame.rgb, depth, None if room.invalid[f] else room.poses_scan[f])
        mesh = build_mesh(room, scene_rng(cfg.seed, index, STREAM_MESH))
        scan_dir = out / "scannet" / "scans" / sid
        scan_dir.mkdir(parents=True, exist_ok=True)
        write_ply(scan_dir / f"{sid}_vh_clean_2.ply", mesh)
        write_segments(scan_dir / f"{sid}_vh_clean_2.0.010000.segs.json", sid, mesh)
        write_aggregation(scan_dir / f"{sid}.aggregation.json", sid, mesh)
        write_scan_meta(scan_dir / f"{sid}.txt", room, cfg.frames, depth_k)
        gt_boxes[split][f"scannet/{sid}"] = np.round(mesh.boxes(), 6).tolist()
        if split == "val":
            masks, boxes = detector_proposals(mesh, len(room.objects), scene_rng(cfg.seed, index, STREAM_PROPOSALS))
            (out / "mask").mkdir(exist_ok=True)
            write_sparse_masks(out / "mask" / f"{sid}.mask.npz", masks)
            pred_boxes[f"scannet/{sid}"] = np.round(boxes, 6).tolist()
        facts = Facts(room)
        rng = scene_rng(cfg.seed, index, STREAM_LANGUAGE)
        ann["scanrefer"][split] += scanrefer_records(facts, rng)
        ann["multi3drefer"][split] += multi3drefer_records(facts, rng)
        ann["scanqa"][split] += scanqa_records(facts, split, rng)
        qs, anns = sqa3d_items(facts, rng)
        ann["sqa3d"][split] += qs
        ann["sqa3d_ann"][split] += anns
        categories.update(o.category for o in room.objects)
        scene_info[sid] = _scene_info(room)
    _write_tables(out, splits, gt_boxes, pred_boxes, categories)
    samples = _write_benchmarks(out, ann)
    write_json(out / MANIFEST, _manifest(cfg, splits, scene_info))
    return SynthSummary(
        out=str(out), scenes={s: len(splits[s]) for s in SPLITS}, frames_per_scene=cfg.frames,
        frames=cfg.scenes * cfg.frames, invalid_frames=cfg.scenes * cfg.invalid_pose_frames,
        objects=sum(categories.values()), categories=dict(categories), samples=samples,
        seconds=time.perf_counter() - start)


def _write_tables(out: Path, splits: dict[str, list[str]], gt_boxes: dict, pred_boxes: dict,
                  categories: Counter) -> None:
    for split in SPLITS:
        write_lines(out / "metadata" / f"scannetv2_{split}.txt", splits[split])
        write_json(out / "metadata" / f"scannet_{split}_gt_box.json", gt_boxes[split])
    write_json(out / "metadata" / "scannet_val_pred_box.json", pred_boxes)
    n = sum(len(ids) for ids in splits.values())
    counts = {**categories, "wall": 4 * n, "floor": n, "ceiling": n}
    write_label_map(out / "scannet" / "scannetv2-labels.combined.tsv", counts)


def _write_benchmarks(out: Path, ann: dict[str, dict[str, list]]) -> dict[str, dict[str, int]]:
    samples: dict[str, dict[str, int]] = {b: {} for b in TASKS}
    answers: set[str] = set()
    for split in SPLITS:
        scanrefer = ann["scanrefer"][split]  # as the official files: no eval_type
        write_json(out / "scanrefer" / f"ScanRefer_filtered_{split}.json", scanrefer)
        write_json(out / "multi3drefer" / f"multi3drefer_{split}.json", ann["multi3drefer"][split])
        corpus = scan2cap_corpus(scanrefer)
        write_json(out / "scan2cap" / f"scan2cap_{split}_corpus.json", corpus)
        write_json(out / "scanqa" / f"ScanQA_v1.0_{split}.json", ann["scanqa"][split])
        balanced = out / "sqa3d" / "balanced"
        write_json(balanced / f"v1_balanced_questions_{split}_scannetv2.json",
                          _sqa3d_wrapper("questions", ann["sqa3d"][split], split))
        write_json(balanced / f"v1_balanced_sqa_annotations_{split}_scannetv2.json",
                          _sqa3d_wrapper("annotations", ann["sqa3d_ann"][split], split))
        answers.update(a["answers"][0]["answer"] for a in ann["sqa3d_ann"][split])
        for bench in TASKS:
            samples[bench][split] = len(corpus) if bench == "scan2cap" else len(ann[bench][split])
    vocab = sorted(answers)
    write_json(out / "sqa3d" / "balanced" / "answer_dict.json",
                      [{a: i for i, a in enumerate(vocab)}, {str(i): a for i, a in enumerate(vocab)}])
    return samples

