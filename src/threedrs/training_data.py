"""The training set of `threedrs train`: benchmark samples (data/) joined with the teacher feature cache (teachers/).

It sits above both layers: the data layer knows nothing of teachers, the teacher cache nothing of benchmark
samples; this module checks that the cache matches the run's config (teacher included) and the student's token
grid, and hands train.py the dataset and its `collate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from threedrs.data.batch import Batch, collate
from threedrs.data.dataset import Candidates, SceneSampleDataset, pixel_options
from threedrs.data.instances import SceneDataError
from threedrs.data.preflight import BenchmarkInputs, prepare_training
from threedrs.data.scene import Scene
from threedrs.teachers.base import expected_identity
from threedrs.teachers.cache import CacheSpec, FeatureCache, frame_lists_for


def open_training_cache(cfg) -> FeatureCache:
    """The feature cache in ``teacher.cache_dir`` (``teacher.grid`` set), refused with CacheMismatchError naming
    each field unless it holds what the run's config asks: teacher, layer, frame rule, grid, and the configured
    teacher's weights checksum and channels where they can be told without building the teacher
    (`threedrs.teachers.base.expected_identity`: weights that are not on this machine are not compared, and
    weights that kept the size and time recorded at extraction are not hashed again)."""
    cache = FeatureCache(cfg.teacher.cache_dir)
    checksum, channels = expected_identity(cfg.teacher.name, cfg.teacher.checkpoint, cfg.teacher.channels,
                                           cache.manifest)
    cache.check_spec(CacheSpec.from_config(cfg, checksum, channels))
    return cache


@dataclass
class TrainingData:
    """What `threedrs train` needs from the data side."""

    dataset: SceneSampleDataset
    collate: Callable[[list[dict]], Batch]
    teacher_channels: int | None


def build_training_data(cfg, adapter, split: str = "train", inputs: BenchmarkInputs | None = None) -> TrainingData:
    """Samples of cfg.train.tasks on `split` (`inputs`: already loaded and checked by
    `threedrs.data.preflight.prepare_training`, else loaded and checked now), frames from the cache's frame lists,
    teacher features when the alignment loss needs them (refusing a cache that does not match the config)."""
    root = Path(cfg.data.root)
    inputs = prepare_training(cfg, frame_lists_for(cfg), split) if inputs is None else inputs
    samples, gt = inputs.samples, inputs.objects
    scenes = sorted({s.scene_id for s in samples})
    candidates = {s: Candidates(boxes, ids) for s, (ids, boxes) in gt.items()}
    cache, channels = None, None
    if cfg.align.loss not in ("none", "correspondence"):
        first = Scene(root, scenes[0], cfg.data.axis_alignment)
        height, width = first.load_frame(first.frame_ids[0]).color.shape[:2]
        grid = tuple(adapter.token_grid(height, width))
        if cfg.teacher.grid is None:
            cfg = replace(cfg, teacher=replace(cfg.teacher, grid=grid))
        elif tuple(cfg.teacher.grid) != grid:
            raise SceneDataError(f"teacher.grid {list(cfg.teacher.grid)} does not match the student's token grid "
                                 f"{list(grid)} for {width}x{height} frames; extract with teacher.grid={list(grid)}")
        cache = open_training_cache(cfg)
        channels = int(cache.manifest["channels"])
    dataset = SceneSampleDataset(samples, root, frame_lists_for(cfg), adapter.footprints, candidates, gt, cache,
                                 cfg.data.axis_alignment, **pixel_options(cfg, adapter))
    return TrainingData(dataset, collate, channels)
