"""`threedrs probe`: how 3D-aware a model's tokens are, as the multi-view correspondence score (METHOD.md).

One function per kind of model; `main_probe` runs the one the config asks for. So far:
- `probe_teacher`: the score of a teacher's features, pooled to the student grid ``teacher.grid``, on every
  scene of ``data.split`` (frames from the run's frame lists, `threedrs.teachers.cache.frame_lists_for`).
  Features come from the feature cache when ``teacher.cache_dir`` holds a cache matching the config and the
  scene, otherwise they are computed on the fly (nothing is written). Compare teachers before training:
  the geometry oracle scores near 1, a 2D appearance baseline far lower.

Each token's world point is the mean of the valid depth pixels in its footprint on the student grid
(`grid_footprints` over the colour frame); tokens without depth or without a teacher target are left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from threedrs.config import CorrespondenceConfig, ExperimentConfig, load_config
from threedrs.data.scene import FrameBatch, Scene, split_scene_ids
from threedrs.extract import autocast_dtype, build_configured_teacher, encode_scene, extraction_scenes
from threedrs.geometry import depth_to_world, grid_footprints, token_world_points
from threedrs.metrics.correspondence import (
    CorrespondenceResult,
    DatasetCorrespondence,
    correspondence_score,
    dataset_score,
)
from threedrs.teachers.cache import CacheError, CacheSpec, FeatureCache, frame_lists_for

__all__ = ["ProbeResult", "SceneScore", "main_probe", "probe_teacher", "score_scene"]


@dataclass(frozen=True)
class SceneScore:
    """One scene's score; source: "cache" or "computed" (where the features came from)."""

    scene_id: str
    score: float
    pairs: int
    voxels: int
    tokens: int
    source: str


@dataclass(frozen=True)
class ProbeResult:
    """Per-scene scores and their means for one model on one split, with the definition used."""

    model: str
    description: str
    split: str
    grid: tuple[int, int]
    frames: int
    sampling: str
    voxel: float
    variant: str
    same_frame: bool
    scenes: list[SceneScore]
    summary: DatasetCorrespondence
    seconds: float

    def table(self) -> str:
        """Markdown: one row per scene, then the mean over scenes and the pooled mean over all pairs."""
        lines = [f"# 3D-awareness of {self.model} on {self.split}", "", self.description, "",
                 f"{len(self.scenes)} scenes, {self.frames} frames ({self.sampling}), {self.grid[0]}x{self.grid[1]} "
                 f"tokens per frame, voxel {self.voxel} m, variant `{self.variant}`"
                 f"{', same-frame pairs included' if self.same_frame else ', pairs across frames'}.", "",
                 "| scene | score | pairs | voxels | tokens | features |", "|---|---|---|---|---|---|"]
        for s in self.scenes:
            lines.append(f"| {s.scene_id} | {s.score:.4f} | {s.pairs} | {s.voxels} | {s.tokens} | {s.source} |")
        lines += ["", f"Mean over scenes: {self.summary.sample_mean:.4f} ({self.summary.scored_samples} of "
                      f"{self.summary.samples} scenes have pairs); pooled over all pairs: {self.summary.pooled:.4f}."]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        """Plain data for ``probe_<model>.json`` (NaN written as null)."""
        def clean(value: object) -> object:
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))


def score_scene(features: Tensor, valid: Tensor, batch: FrameBatch, corr: CorrespondenceConfig) -> CorrespondenceResult:
    """Correspondence score of one scene's tokens.

    Args:
        features: [S, h, w, C] float tokens on the student grid (h, w). valid: [S, h, w] bool, tokens with features.
        batch: the S frames (depth in metres, depth intrinsics, aligned poses; the colour size sets the footprints).
        corr: voxel size (metres), variant and same-frame rule.
    """
    frames, rows, cols = features.shape[:3]
    height, width = batch.images.shape[-2:]
    world, depth_valid = depth_to_world(batch.depth.double(), batch.depth_K.double(), batch.poses.double())
    points, point_valid = token_world_points(world, depth_valid, grid_footprints(height, width, rows, cols),
                                             (height, width))
    return correspondence_score(features.float().cpu(), points, point_valid & valid.cpu(), voxel_size=corr.voxel,
                                variant=corr.variant, same_frame=corr.same_frame)


def _matching_cache(cfg: ExperimentConfig, spec: CacheSpec) -> FeatureCache | None:
    """The cache at ``teacher.cache_dir`` when it matches ``spec``; None (with a note) otherwise."""
    try:
        return FeatureCache(cfg.teacher.cache_dir, expected=spec)
    except FileNotFoundError:
        return None
    except CacheError as exc:
        print(f"note: not using the feature cache ({exc}); computing features on the fly")
        return None


def probe_teacher(cfg: ExperimentConfig, scenes: list[str] | None = None) -> ProbeResult:
    """Score the configured teacher's pooled features on every scene of ``cfg.data.split`` (or ``scenes``).

    Writes ``<output_dir>/probe_<teacher>.json`` and returns the result (print ``result.table()``).
    """
    start = time.perf_counter()
    root = Path(cfg.data.root)
    scene_ids = extraction_scenes(root, scenes) if scenes is not None else split_scene_ids(root, cfg.data.split)
    spec = CacheSpec.from_config(cfg)  # checks teacher.grid before the teacher loads
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    teacher = build_configured_teacher(cfg).to(device)
    spec = dataclasses.replace(spec, weights_checksum=teacher.weights_checksum, channels=teacher.channels)
    cache = _matching_cache(cfg, spec)
    frame_lists = frame_lists_for(cfg)
    dtype = autocast_dtype(cfg.teacher.dtype, device)
    scores = []
    for scene_id in tqdm(scene_ids, desc=f"probe {teacher.name}", unit="scene"):
        frame_ids = frame_lists(scene_id)
        batch = Scene(root, scene_id).load_frames(frame_ids)
        if cache is not None and scene_id in cache:
            cached = cache.load(scene_id, frame_ids)
            features, valid, source = cached.tokens, cached.valid, "cache"
        else:
            features, valid, _ = encode_scene(teacher, batch, spec.grid, cfg.teacher.batch_frames, device, dtype)
            source = "computed"
        result = score_scene(features, valid, batch, cfg.correspondence)
        scores.append((scene_id, result, source))
    corr = cfg.correspondence
    probe = ProbeResult(
        model=teacher.name, description=teacher.describe(),
        split=cfg.data.split if scenes is None else "selected scenes", grid=spec.grid, frames=cfg.data.frames,
        sampling=cfg.data.sampling, voxel=corr.voxel, variant=corr.variant, same_frame=corr.same_frame,
        scenes=[SceneScore(s, r.score, r.pairs, r.voxels, r.tokens, src) for s, r, src in scores],
        summary=dataset_score([r for _, r, _ in scores]), seconds=time.perf_counter() - start)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"probe_{teacher.name}.json").write_text(json.dumps(probe.to_json(), indent=1) + "\n")
    return probe


def main_probe(args: argparse.Namespace) -> None:
    """`threedrs probe CONFIG [k=v ...] [--scenes id1,id2]` (fields: config, overrides, scenes)."""
    cfg = load_config(args.config, args.overrides)
    result = probe_teacher(cfg, args.scenes.split(",") if args.scenes else None)
    print(result.table())
    print(f"Wrote {Path(cfg.output_dir) / f'probe_{result.model}.json'}")
