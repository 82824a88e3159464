"""`threedrs demo` (what `make demo` runs): the pipeline in miniature on SynthRooms, no weights, no downloads.

Stages so far:
1. generate the default SynthRooms set (reused when its manifest matches the requested settings);
2. score the 3D-awareness (multi-view correspondence) of two reference feature sets on the val scenes:
   `position` (a fixed function of each token's world point: the ideal a 3D-aware model approaches) and
   `colour` (each token's own pixels: what a purely 2D appearance model sees), with a progress bar;
3. print the table and write `report.md` and `scores.json` under the output folder.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from threedrs.config import SynthConfig, load_config
from threedrs.data.sampling import FrameLists
from threedrs.data.scene import Scene, split_scene_ids
from threedrs.geometry import depth_to_world, grid_footprints, token_world_points
from threedrs.metrics.correspondence import CorrespondenceResult, correspondence_score

TOKEN_GRID = (14, 14)  # tokens per frame, as LLaVA-Video's 14x14 pooled grid


def ensure_synthrooms(cfg: SynthConfig, root: Path, regenerate: bool = False) -> None:
    """Generate SynthRooms into `root` unless a set made with the same settings is already there."""
    from threedrs.data.synthetic import generate

    manifest = root / "synthrooms.json"
    if manifest.is_file() and not regenerate:
        try:
            stored = json.loads(manifest.read_text()).get("config")
        except json.JSONDecodeError:
            stored = None
        if stored == asdict(cfg):
            print(f"[1/2] SynthRooms: reusing {root} ({cfg.scenes} rooms x {cfg.frames} frames)")
            return
    print(f"[1/2] SynthRooms: generating {cfg.scenes} rooms x {cfg.frames} frames at {cfg.width}x{cfg.height}")
    summary = generate(cfg, root, progress=True)
    print(summary.describe())


def reference_features(images: torch.Tensor, points: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Two reference feature sets for tokens of S frames.

    images: [S, 3, H, W] in [0, 1]; points: [S, h, w, 3] token world points (metres).
    Returns name -> [S, h, w, C]:
      position: 64 sinusoids of fixed random projections of the world point (wavelengths 0.5-4 m);
      colour: the token's pixels average-pooled to 4x4 RGB (48 channels), minus the scene's mean token.
    """
    gen = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(32, 3, generator=gen, dtype=torch.float64), dim=1)
    wavelengths = 0.5 * 8.0 ** torch.rand(32, generator=gen, dtype=torch.float64)
    phase = (points.double() @ directions.T) * (2 * math.pi / wavelengths)
    position = torch.cat([phase.sin(), phase.cos()], dim=-1)
    h, w = grid
    pooled = torch.nn.functional.adaptive_avg_pool2d(images, (h * 4, w * 4))  # [S, 3, 4h, 4w]
    s = pooled.shape[0]
    colour = pooled.reshape(s, 3, h, 4, w, 4).permute(0, 2, 4, 1, 3, 5).reshape(s, h, w, 48)
    colour = colour - colour.reshape(-1, 48).mean(0)
    return {"position": position, "colour": colour.double()}


def score_references(root: Path, frame_lists: FrameLists, scene_ids: list[str], voxel: float,
                     variant: str, same_frame: bool) -> dict[str, list[CorrespondenceResult]]:
    """Per-scene correspondence scores of the reference feature sets, with a progress bar over scenes."""
    results: dict[str, list[CorrespondenceResult]] = {"position": [], "colour": []}
    for scene_id in tqdm(scene_ids, desc="[2/2] 3D-awareness of reference features", unit="scene"):
        scene = Scene(root, scene_id)
        batch = scene.load_frames(frame_lists(scene))
        world, valid = depth_to_world(batch.depth.double(), batch.depth_K, batch.poses)
        height, width = batch.images.shape[-2:]
        foot = grid_footprints(height, width, *TOKEN_GRID)
        points, token_valid = token_world_points(world, valid, foot, (height, width))
        for name, feats in reference_features(batch.images, points, TOKEN_GRID).items():
            results[name].append(correspondence_score(feats, points, token_valid, voxel_size=voxel,
                                                      variant=variant, same_frame=same_frame))
    return results


def run_demo(out: str | Path = "demo_out", regenerate: bool = False) -> dict[str, float]:
    """Run the demo; returns the mean score per reference feature set."""
    start = time.perf_counter()
    out = Path(out)
    cfg = load_config(None, [f"output_dir={out}", f"data.root={out / 'synthrooms'}"])
    root = Path(cfg.data.root)
    ensure_synthrooms(cfg.synth, root, regenerate)
    frame_lists = FrameLists(out / f"frame_lists_{cfg.data.sampling}_{cfg.data.frames}.json", root,
                             cfg.data.sampling, cfg.data.frames, cfg.data.coverage_voxel)
    val = split_scene_ids(root, "val")
    corr = cfg.correspondence
    results = score_references(root, frame_lists, val, corr.voxel, corr.variant, corr.same_frame)
    means = {name: sum(r.score for r in rs) / len(rs) for name, rs in results.items()}
    lines = [
        "# threedrs demo: 3D-awareness of reference features on SynthRooms val",
        "",
        f"{len(val)} val rooms, {cfg.data.frames} frames each ({cfg.data.sampling} sampling), "
        f"{TOKEN_GRID[0]}x{TOKEN_GRID[1]} tokens per frame, voxel {corr.voxel} m, variant `{corr.variant}`"
        f"{' incl. same-frame pairs' if corr.same_frame else ', pairs across frames'}.",
        "",
        "| features | mean score | min | max | mean pairs per room |",
        "|---|---|---|---|---|",
    ]
    for name, rs in results.items():
        scores = [r.score for r in rs]
        pairs = sum(r.pairs for r in rs) / len(rs)
        lines.append(f"| {name} | {means[name]:.3f} | {min(scores):.3f} | {max(scores):.3f} | {pairs:.0f} |")
    lines += ["", f"Total time: {time.perf_counter() - start:.1f} s."]
    report = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report)
    (out / "scores.json").write_text(json.dumps(
        {name: [asdict(r) | {"scene_id": s} for r, s in zip(rs, val)] for name, rs in results.items()}, indent=1))
    print()
    print(report)
    print(f"Wrote {out / 'report.md'} and {out / 'scores.json'}")
    return means
