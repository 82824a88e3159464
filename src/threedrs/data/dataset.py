"""Training and evaluation data: benchmark samples joined with their scene's frames and cached teacher features.

Each item is one `Sample` with the S frames of its scene (the SAME frame list the teacher cache was extracted
on: `FrameLists` file shared with `threedrs extract`), the world point of each visual token (depth unprojection
averaged over the adapter's token footprints), the cached teacher tokens, and the candidate boxes of the scene
(ground-truth objects in training; detector proposals at evaluation). Nothing heavy is kept between items: frames
are decoded and teacher files memory-mapped per item, so data-loader workers stay small; a scene's small facts
(intrinsics, alignment, the poses of its listed frames) are read once per process: each data-loader worker keeps
its own table of opened scenes, filled as its samples ask for them.

With a `pixel_grid` (align.posenc_points=pixel_blocks or align.object_features=pixel_share, the Video-3D LLM / 3DRS
rules of pixel_blocks.py) an item also carries "posenc_points" [S, g, g, 3], the pooled tokens' block means the
position encoding reads, and with `keep_pixels` "pixel_points" [S, n p, n p, 3], the world point of every pixel the
vision patches cover (their grounding features count pixels per patch and per token).

A sample whose scene is missing from the teacher cache is an error at start-up that lists the missing scenes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from threedrs.data.instances import SceneDataError
from threedrs.data.sampling import FrameLists, first_views
from threedrs.data.scene import Scene
from threedrs.data.tasks import OBJECT_TASKS, Sample
from threedrs.pixel_blocks import PixelGrid, block_points, pixel_world


@dataclass
class Candidates:
    """The boxes a grounding head scores for one scene, and which object id each is (None for proposals)."""

    boxes: Tensor
    object_ids: list[int] | None


class SceneSampleDataset(Dataset):
    """Samples + frames + token world points + teacher features (optional) + candidate boxes.

    footprints: function (H, W) -> [h, w, 4] pixel boxes of the student's tokens in the original frame.
    candidates: scene id -> Candidates (GT objects for training, proposals for evaluation).
    cache: a feature cache or None (no distillation target): anything with `scene in cache`, `cache.directory`
    and `cache.load(scene_id, frame_ids) -> .tokens, .valid` (teachers/cache.py FeatureCache; training_data.py
    builds it, this layer never imports it).
    pixel_grid / keep_pixels: the Video-3D LLM point sets (module docstring); None / False = none.
    """

    def __init__(self, samples: list[Sample], root: str | Path, frame_lists: FrameLists,
                 footprints: Callable[[int, int], Tensor], candidates: dict[str, Candidates],
                 gt_boxes: dict[str, tuple[list[int], Tensor]], cache=None, axis_alignment: str = "required",
                 pixel_grid: PixelGrid | None = None, keep_pixels: bool = False):
        if keep_pixels and pixel_grid is None:
            raise ValueError("keep_pixels: needs the vision input's pixel_grid")
        self.pixel_grid, self.keep_pixels = pixel_grid, keep_pixels
        self.samples, self.root, self.frame_lists = samples, Path(root), frame_lists
        self.axis_alignment = axis_alignment
        self._scenes: dict[str, Scene] = {}  # opened in this process: intrinsics, alignment, poses read so far
        self.footprints, self.candidates, self.gt_boxes, self.cache = footprints, candidates, gt_boxes, cache
        scenes = sorted({s.scene_id for s in samples})
        with frame_lists.save_once():  # compute (and persist) every list now, not in a worker
            for scene_id in scenes:
                frame_lists(scene_id)
        if cache is not None:
            missing = [s for s in scenes if s not in cache]
            if missing:
                shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
                raise SceneDataError(f"feature cache {cache.directory} lacks {len(missing)} scene(s) of the "
                                     f"samples: {shown}; run `threedrs extract` on them")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        scene = self._scene(sample.scene_id)
        frame_ids = self.frame_lists(sample.scene_id)
        batch = scene.load_frames(frame_ids)
        points, token_valid = batch.token_points(self.footprints(*batch.images.shape[-2:]))
        item = {"sample": sample, "frames": batch.images, "token_points": torch.nan_to_num(points).float(),
                "token_valid": token_valid, "first_view": first_views(frame_ids)}
        if self.pixel_grid is not None:
            item.update(pixel_point_sets(batch.depth, batch.depth_K, batch.poses, self.pixel_grid, self.keep_pixels))
        cand = self.candidates.get(sample.scene_id)
        item["boxes"] = cand.boxes.float() if cand is not None else torch.zeros(0, 6)  # the model's dtype
        item["target_ids"] = self._target_indices(sample, cand)
        item["coord_box"] = self._coord_box(sample, cand)
        if self.cache is not None:
            feats = self.cache.load(sample.scene_id, frame_ids)
            item["teacher"], item["teacher_valid"] = feats.tokens, feats.valid
        return item

    def _scene(self, scene_id: str) -> Scene:
        """The scene, opened once in this process and shared by all its samples (only the poses of the listed
        frames are ever read: `Scene.pose`)."""
        if scene_id not in self._scenes:
            self._scenes[scene_id] = Scene(self.root, scene_id, self.axis_alignment)
        return self._scenes[scene_id]

    def _target_indices(self, sample: Sample, cand: Candidates | None) -> list[int]:
        """Indices into the candidates of the sample's targets (training: object ids; proposals: none known)."""
        if cand is None or cand.object_ids is None:
            return []
        where = {oid: i for i, oid in enumerate(cand.object_ids)}
        missing = [t for t in sample.target_ids if t not in where]
        if missing and sample.task in OBJECT_TASKS:
            raise SceneDataError(f"sample {sample.id}: object id(s) {missing} not in scene {sample.scene_id}")
        return [where[t] for t in sample.target_ids if t in where]

    def _coord_box(self, sample: Sample, cand: Candidates | None) -> Tensor:
        """Scan2Cap prompt box [6]: the GT box in training, the best proposal (IoU >= 0.5) at evaluation; NaN
        when the sample is not captioning or no proposal qualifies."""
        nan = torch.full((6,), math.nan)
        if sample.task != "scan2cap" or not sample.target_ids:
            return nan
        ids, gt = self.gt_boxes.get(sample.scene_id, ([], torch.zeros(0, 6)))
        if sample.target_ids[0] not in ids:
            raise SceneDataError(f"sample {sample.id}: object {sample.target_ids[0]} not in scene {sample.scene_id}")
        box = gt[ids.index(sample.target_ids[0])]
        if cand is None or cand.object_ids is not None:
            return box.float()
        from threedrs.metrics.grounding import best_proposal

        best, _ = best_proposal(box, cand.boxes, min_iou=0.5) if len(cand.boxes) else (None, 0.0)
        return nan if best is None else cand.boxes[best].float()


def pixel_point_sets(depth: Tensor, depth_K: Tensor, poses: Tensor, grid: PixelGrid, keep_pixels: bool) -> dict:
    """{"posenc_points": [S, g, g, 3]} (+ {"pixel_points": [S, n p, n p, 3]} with keep_pixels), float32 metres, from
    S frames' depth [S, Hd, Wd] (metres), depth intrinsics [3, 3] and aligned poses [S, 4, 4] (pixel_blocks.py;
    computed in float32 as their code does)."""
    pixels = pixel_world(depth.float(), depth_K.float(), poses.float(), grid.side)
    out = {"posenc_points": block_points(pixels, grid)}
    if keep_pixels:
        span = grid.patches * grid.patch
        out["pixel_points"] = pixels[:, :span, :span].contiguous()
    return out


def pixel_options(cfg, adapter) -> dict:
    """The dataset's `pixel_grid` / `keep_pixels` for cfg.align's point rules (the adapter's `pixel_grid()`)."""
    a = cfg.align
    if a.posenc_points != "pixel_blocks" and a.object_features != "pixel_share":
        return {}
    return {"pixel_grid": adapter.pixel_grid(), "keep_pixels": a.object_features == "pixel_share"}
