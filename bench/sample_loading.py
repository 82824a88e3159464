"""Benchmark: loading one training / evaluation sample at the paper's setting, before and after issue 10.

A scan export as ScanNet's posed-image layout gives it: --frames frames (default 5,578, a full export; 3DRS's
`--fast` exports hold ~560) of 1296x968 JPEG colour, 640x480 16-bit depth PNGs and a pose file each, ScanNet-like
intrinsics and an axisAlignment. Eight distinct colour/depth images are hard-linked across the frames (decoding
cost does not depend on which file it is); every pose file is its own file. Each sample reads 32 frames
(uniform, V3D's linspace over the valid frames) and their tokens' world points on a 27x27 grid per frame.

- before: the pre-issue-10 item: the scene is opened per sample, which read every pose file of the scan, and the
  token points went through the full [32, 480, 640, 3] float64 world map (`depth_to_world` then
  `token_world_points`);
- after: `SceneSampleDataset.__getitem__` as shipped: the scene's small facts are read once per process
  (only the listed frames' poses), colour is converted to float32 straight into place (no uint8
  stack, no strided torch conversion) and `depth_token_points` sums the depth at the token boxes.
Both produce the same frames and the same token points (checked). Each path runs in its own worker-like process
(one torch thread, a data-loader worker's setting): a warm-up item, then --items timed items of the same scene;
--rounds such processes per path, alternating before / after. The page cache is warm for both. Reported: medians
over all timed items of wall time and of the process's CPU time (what a worker with a core of its own pays; on a
shared, busy machine wall times swing with the other processes).

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/sample_loading.py [--frames 5578] [--rounds 3] [--items 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from threedrs.data.dataset import SceneSampleDataset
from threedrs.data.sampling import FrameLists
from threedrs.data.scene import Scene, read_depth
from threedrs.data.tasks import Sample
from threedrs.geometry import depth_to_world, grid_footprints, token_world_points

SCENE, FRAMES_PER_SAMPLE, GRID = "scene0000_00", 32, (27, 27)
COLOUR_K = "1170.187988 0 647.75 0\n0 1170.187988 483.75 0\n0 0 1 0\n0 0 0 1\n"
DEPTH_K = "577.590698 0 318.905426 0\n0 578.729797 242.683609 0\n0 0 1 0\n0 0 0 1\n"
ALIGNMENT = ("axisAlignment = 0.945519 0.325568 0.000000 -5.384390 -0.325568 0.945519 0.000000 -2.871780 "
             "0.000000 0.000000 1.000000 -0.064350 0.000000 0.000000 0.000000 1.000000\n")


def write_export(root: Path, frames: int) -> None:
    """The scan export described in the module docstring."""
    folder = root / "scannet" / "posed_images" / SCENE
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:968, 0:1296]
    sources = []
    for k in range(8):
        base = (128 + 60 * np.sin(cols / (37 + 5 * k))[..., None] * np.array([1.0, 0.6, 0.3])
                + 50 * np.cos(rows / (23 + k))[..., None] * np.array([0.2, 0.8, 1.0]))
        colour = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        depth = (1500 + 800 * np.sin(np.arange(640) / 50.0)[None] + rng.normal(0, 5, (480, 640))).astype(np.uint16)
        depth[rng.random((480, 640)) < 0.05] = 0  # holes, as real depth has
        Image.fromarray(colour).save(root / f"src{k}.jpg", quality=90)
        Image.fromarray(depth).save(root / f"src{k}.png")
        sources.append((root / f"src{k}.jpg", root / f"src{k}.png"))
    for i in range(frames):
        name = f"{10 * i:05d}"
        os.link(sources[i % 8][0], folder / f"{name}.jpg")
        os.link(sources[i % 8][1], folder / f"{name}.png")
        pose = np.eye(4)
        angle = 0.01 * i
        pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        pose[:3, 3] = rng.normal(size=3)
        (folder / f"{name}.txt").write_text("".join(" ".join("%f" % v for v in row) + "\n" for row in pose))
    (folder / "intrinsic.txt").write_text(COLOUR_K)
    (folder / "depth_intrinsic.txt").write_text(DEPTH_K)
    scan = root / "scannet" / "scans" / SCENE
    scan.mkdir(parents=True)
    (scan / f"{SCENE}.txt").write_text(ALIGNMENT)


def footprints(height: int, width: int) -> torch.Tensor:
    return grid_footprints(height, width, *GRID)


def before_item(root: Path, frame_lists: FrameLists, sample: Sample) -> dict:
    """The item as built before issue 10 (module docstring), with that version's frame decoding."""
    scene = Scene(root, sample.scene_id)
    _ = scene.frame_ids  # opening a scene read every pose file of the scan
    frame_ids = frame_lists(sample.scene_id)
    colours = []
    for frame_id in frame_ids:
        with Image.open(scene.frame_dir / f"{frame_id}.jpg") as img:
            colours.append(np.asarray(img.convert("RGB")))
    images = torch.from_numpy(np.stack(colours)).permute(0, 3, 1, 2).float().div_(255.0)
    depth = torch.from_numpy(np.stack([read_depth(scene.frame_dir / f"{f}.png") for f in frame_ids]))
    poses = torch.from_numpy(np.stack([scene.pose(f) for f in frame_ids]))
    height, width = images.shape[-2:]
    world, valid = depth_to_world(depth.double(), torch.from_numpy(scene.depth_K), poses)
    points, token_valid = token_world_points(world, valid, footprints(height, width), (height, width))
    return {"frames": images, "token_points": torch.nan_to_num(points).float(), "token_valid": token_valid}


def worker(root: Path, side: str, items: int) -> None:
    """One data-loader-like process: a warm-up item, then `items` timed items; prints their times as JSON."""
    torch.set_num_threads(1)
    frame_lists = FrameLists(root / "frame_lists.json", root, "uniform", FRAMES_PER_SAMPLE)
    samples = [Sample(f"q{i}", "scanqa", SCENE, "What is it?", "a chair") for i in range(items + 1)]
    dataset = SceneSampleDataset(samples, root, frame_lists, footprints, {}, {})
    load = (lambda i: before_item(root, frame_lists, samples[i])) if side == "before" else dataset.__getitem__
    load(0)
    times = []
    for i in range(1, items + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        load(i)
        times.append((time.perf_counter() - start, time.process_time() - start_cpu))
    print(json.dumps(times))


def check_same_outputs(root: Path) -> None:
    """Both paths give the same frames and token points."""
    frame_lists = FrameLists(root / "frame_lists.json", root, "uniform", FRAMES_PER_SAMPLE)
    sample = Sample("q", "scanqa", SCENE, "What is it?", "a chair")
    old = before_item(root, frame_lists, sample)
    new = SceneSampleDataset([sample], root, frame_lists, footprints, {}, {})[0]
    assert torch.equal(old["frames"], new["frames"]) and torch.equal(old["token_valid"], new["token_valid"])
    assert torch.allclose(old["token_points"], new["token_points"], rtol=0, atol=1e-5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=5578, help="frames of the scan export")
    parser.add_argument("--rounds", type=int, default=3, help="worker processes per path, alternating")
    parser.add_argument("--items", type=int, default=4, help="timed items per worker process")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the export (default: a temp dir)")
    parser.add_argument("--worker", nargs=2, metavar=("ROOT", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), args.worker[1], args.items)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        write_export(root, args.frames)
        check_same_outputs(root)
        times: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            for side in times:
                out = subprocess.run([sys.executable, __file__, "--worker", str(root), side, "--items",
                                      str(args.items)], check=True, capture_output=True, text=True).stdout
                times[side] += json.loads(out.strip().splitlines()[-1])
    print(f"scan export: {args.frames} frames; {FRAMES_PER_SAMPLE} frames of 1296x968 JPEG + 640x480 depth per "
          f"sample; {GRID[0]}x{GRID[1]} tokens per frame; one torch thread; {args.rounds} alternating worker "
          f"processes per path x {args.items} timed items")
    print("| path | wall ms per sample | CPU ms per sample | samples/s per worker (wall) | (CPU) |")
    print("|---|---|---|---|---|")
    med = {side: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for side, v in times.items()}
    for side, (w, c) in med.items():
        print(f"| {side} | {1000 * w:.0f} | {1000 * c:.0f} | {1 / w:.2f} | {1 / c:.2f} |")
    print(f"speed-up in samples/s per worker (after / before): {med['before'][0] / med['after'][0]:.1f}x by wall "
          f"time, {med['before'][1] / med['after'][1]:.1f}x by CPU time")


if __name__ == "__main__":
    main()
