"""`threedrs probe`: how 3D-aware a model's tokens are, as the multi-view correspondence score (METHOD.md).

One function per kind of model; `main_probe` runs the one ``probe.target`` names:
- `probe_teacher` (``probe.target=teacher``): the score of a teacher's features, pooled to the student grid
  ``teacher.grid``, on every scene of ``data.split`` (frames from the run's frame lists,
  `threedrs.teachers.cache.frame_lists_for`). Features come from the feature cache when ``teacher.cache_dir``
  holds a cache matching the config and the scene, otherwise they are computed on the fly (nothing is written).
  Compare teachers before training: the geometry oracle scores near 1, a 2D appearance baseline far lower.
  Each token's world point is the mean of the valid depth pixels in its footprint on the student grid
  (`grid_footprints` over the colour frame); tokens without depth or without a teacher target are left out.
- `probe_model` (``probe.target=model``): the score of an MLLM's visual tokens at the LLM hidden states
  ``probe.layers`` (0 = the input embeddings, -1 = the last layer after the final norm), one scene at a time:
  the adapter of ``model.*`` (or a training checkpoint, ``probe.checkpoint``) sees the scene's frames followed by
  ``probe.prompt``, with the 3D position encoding added to the visual embeddings when ``probe.posenc`` (of the
  points ``align.posenc_points`` names, as in training; a folder from ``threedrs convert-official`` is probed as
  the authors run it with configs/official_3drs.yaml). Token
  world points come from the adapter's own footprints, as in training. A frame the sampling rule repeats (the
  uniform rule repeats frames when a scan has fewer valid frames than ``data.frames``) is fed to the model as in
  training, but only its first copy is scored: a copy is the same view, not a second one, and would pair every
  token with itself (cosine 1 at the input layer). The prompt follows the frames in every supported family, so
  for these causal LLMs the visual states, and the score, do not depend on it; text BEFORE the frames would
  matter. A checkpoint is probed with the settings its run trained with (`threedrs.run_config`): model, heads,
  position encoding, frames and layers come from ``<run>/config.yaml`` unless set explicitly.

Every score comes with its background and contrast (`threedrs.metrics.correspondence`), and with the
correspondence recall and its chance level when ``correspondence.recall``. Both write
``<output_dir>/probe_<teacher>.json`` or ``<output_dir>/probe_model_<family>.json`` with the definition of the
score (variant, same-frame rule, voxel size) next to the numbers, and print a markdown table.
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

from threedrs.align.posenc import position_encoding
from threedrs.config import ConfigError, CorrespondenceConfig, ExperimentConfig, explicit_keys, load_config
from threedrs.data.dataset import pixel_point_sets
from threedrs.data.sampling import first_views
from threedrs.data.scene import FrameBatch, Scene, split_scene_ids
from threedrs.evaluate import load_task
from threedrs.extract import autocast_dtype, build_configured_teacher, encode_scene, extraction_scenes
from threedrs.geometry import grid_footprints
from threedrs.metrics.awareness import number
from threedrs.metrics.correspondence import (
    CorrespondenceResult,
    DatasetCorrespondence,
    correspondence_score,
    dataset_score,
)
from threedrs.models.base import MLLMAdapter
from threedrs.models.loading import compute_device, inference_placement
from threedrs.models.registry import build_adapter
from threedrs.run_config import checkpoint_and_run, non_default_keys, settings_from_run
from threedrs.teachers.cache import CacheError, CacheSpec, FeatureCache, frame_lists_for

__all__ = ["ModelProbeResult", "ProbeResult", "SceneLayerScores", "SceneScore", "main_probe",
           "probe_model", "probe_teacher", "score_scene"]


@dataclass(frozen=True)
class SceneScore:
    """One scene's measures (CorrespondenceResult's fields); source: "cache" or "computed" (the features)."""

    scene_id: str
    score: float
    pairs: int
    voxels: int
    tokens: int
    source: str
    background: float = math.nan
    contrast: float = math.nan
    recall: float | None = None
    recall_chance: float | None = None

    @classmethod
    def of(cls, scene_id: str, r: CorrespondenceResult, source: str) -> SceneScore:
        return cls(scene_id, r.score, r.pairs, r.voxels, r.tokens, source, r.background, r.contrast, r.recall,
                   r.recall_chance)


def _measures(summary: DatasetCorrespondence, pooled: bool) -> list[str]:
    """Score, background, contrast (and recall, its chance) of a dataset summary: the means over scenes or the
    pooled ones."""
    if pooled:
        cells = [summary.pooled, summary.background_pooled, summary.contrast_pooled]
        recall = [summary.recall_pooled, summary.recall_chance]
    else:
        cells = [summary.sample_mean, summary.background_mean, summary.contrast_mean]
        recall = [summary.recall_mean, None]
    return [number(x, 4) for x in cells + (recall if summary.recall_mean is not None else [])]


READING = ("score: mean cosine of corresponding tokens (the paper's number); background: mean cosine of tokens "
           "in different voxels; contrast = score - background (0 for collapsed or geometry-blind features); "
           "recall: share of tokens whose most similar token in another view corresponds (chance: what "
           "features unrelated to the scene would get).")


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
                 READING, ""]
        recall = self.summary.recall_mean is not None
        header = ["scene", "score", "background", "contrast", *(["recall", "chance"] if recall else []),
                  "pairs", "voxels", "tokens", "features"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for s in self.scenes:
            values = [s.score, s.background, s.contrast, *([s.recall, s.recall_chance] if recall else [])]
            lines.append(f"| {s.scene_id} | " + " | ".join(number(v, 4) for v in values)
                         + f" | {s.pairs} | {s.voxels} | {s.tokens} | {s.source} |")
        for label, pooled in (("mean over scenes", False), ("pooled", True)):
            lines.append(f"| {label} | " + " | ".join(_measures(self.summary, pooled)) + " | | | | |")
        lines += ["", f"{self.summary.scored_samples} of {self.summary.samples} scenes have pairs; pooled: over "
                      "all pairs (and all recall queries) of all scenes."]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        """Plain data for ``probe_<model>.json`` (NaN written as null)."""
        return _json_ready(asdict(self))


def _json_ready(value: object) -> object:
    """``value`` with NaN floats replaced by None (JSON null), through dicts, lists and tuples."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def score_scene(features: Tensor, valid: Tensor, batch: FrameBatch, corr: CorrespondenceConfig,
                device: torch.device | None = None) -> CorrespondenceResult:
    """Correspondence measures of one scene's tokens.

    Args:
        features: [S, h, w, C] float tokens on the student grid (h, w). valid: [S, h, w] bool, tokens with features.
        batch: the S frames (depth in metres, depth intrinsics, aligned poses; the colour size sets the footprints).
        corr: voxel size (metres), variant, same-frame rule, recall settings.
        device: where to compute (None: the features' device).
    """
    rows, cols = features.shape[1:3]
    points, point_valid = batch.token_points(grid_footprints(*batch.images.shape[-2:], rows, cols))
    scored = point_valid & valid.cpu() & first_views(batch.frame_ids)[:, None, None]  # a repeated frame counts once
    return correspondence_score(features.float().to(device or features.device), points, scored,
                                **corr.score_options())


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
        batch = Scene(root, scene_id, cfg.data.axis_alignment).load_frames(frame_ids)
        if cache is not None and scene_id in cache:
            cached = cache.load(scene_id, frame_ids)
            features, valid, source = cached.tokens, cached.valid, "cache"
        else:
            features, valid, _ = encode_scene(teacher, batch, spec.grid, cfg.teacher.batch_frames, device, dtype)
            source = "computed"
        result = score_scene(features, valid, batch, cfg.correspondence, device)
        scores.append((scene_id, result, source))
    corr = cfg.correspondence
    probe = ProbeResult(
        model=teacher.name, description=teacher.describe(),
        split=cfg.data.split if scenes is None else "selected scenes", grid=spec.grid, frames=cfg.data.frames,
        sampling=cfg.data.sampling, voxel=corr.voxel, variant=corr.variant, same_frame=corr.same_frame,
        scenes=[SceneScore.of(s, r, src) for s, r, src in scores],
        summary=dataset_score([r for _, r, _ in scores]), seconds=time.perf_counter() - start)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"probe_{teacher.name}.json").write_text(json.dumps(probe.to_json(), indent=1) + "\n")
    return probe


@dataclass(frozen=True)
class SceneLayerScores:
    """One scene's measures at each probed layer: scores, backgrounds, contrasts and recalls (None when not
    computed) per layer. pairs, voxels, tokens and recall_chance depend on the token points only, so every layer
    shares them; repeated_frames: frames that repeat an earlier one of the list (fed, not scored)."""

    scene_id: str
    scores: dict[int, float]
    pairs: int
    voxels: int
    tokens: int
    repeated_frames: int
    backgrounds: dict[int, float] = dataclasses.field(default_factory=dict)
    contrasts: dict[int, float] = dataclasses.field(default_factory=dict)
    recalls: dict[int, float | None] = dataclasses.field(default_factory=dict)
    recall_chance: float | None = None

    @classmethod
    def of(cls, scene_id: str, results: dict[int, CorrespondenceResult], repeated: int) -> SceneLayerScores:
        first = next(iter(results.values()))
        return cls(scene_id, {k: r.score for k, r in results.items()}, first.pairs, first.voxels, first.tokens,
                   repeated, {k: r.background for k, r in results.items()},
                   {k: r.contrast for k, r in results.items()}, {k: r.recall for k, r in results.items()},
                   first.recall_chance)


@dataclass(frozen=True)
class ModelProbeResult:
    """Per-scene and mean measures of an MLLM's visual tokens at several LLM layers, with the definition used.

    model: the family; description: weights, position encoding and prompt; settings: where the token-shaping
    settings of a checkpoint came from (`threedrs.run_config`); grid: (h, w) tokens per frame of the first scene;
    summary: layer -> the dataset measures over the scenes (means over scenes and pooled).
    """

    model: str
    description: str
    checkpoint: str | None
    split: str
    layers: list[int]
    posenc: bool
    prompt: str
    grid: tuple[int, int]
    frames: int
    sampling: str
    voxel: float
    variant: str
    same_frame: bool
    scenes: list[SceneLayerScores]
    summary: dict[int, DatasetCorrespondence]
    seconds: float
    settings: list[str] = dataclasses.field(default_factory=list)

    def table(self) -> str:
        """Markdown: one row per scene with score, background, contrast (and recall) per layer, then the means."""
        recall = self.summary[self.layers[0]].recall_mean is not None
        names = ["score", "background", "contrast", *(["recall"] if recall else [])]
        setting = (f"{len(self.scenes)} scenes, {self.frames} frames ({self.sampling}), {self.grid[0]}x{self.grid[1]} "
                   f"tokens per frame, voxel {self.voxel} m, variant `{self.variant}`"
                   f"{', same-frame pairs included' if self.same_frame else ', pairs across frames'}; repeated "
                   "frames are not scored.")
        header = ["scene", *(f"L{k} {n}" for k in self.layers for n in names), *(["chance"] if recall else []),
                  "pairs", "voxels", "tokens"]
        lines = [f"# 3D-awareness of {self.model} on {self.split}", "", self.description, "", *self.settings,
                 *([""] if self.settings else []), setting, "", READING, "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for s in self.scenes:
            cells = [v for k in self.layers
                     for v in (s.scores[k], s.backgrounds[k], s.contrasts[k], *([s.recalls[k]] if recall else []))]
            lines.append(f"| {s.scene_id} | " + " | ".join(number(v, 4) for v in cells)
                         + (f" | {number(s.recall_chance, 4)}" if recall else "") + f" | {s.pairs} | {s.voxels} | "
                         f"{s.tokens} |")
        first = self.summary[self.layers[0]]
        for label, pooled in (("mean over scenes", False), ("pooled", True)):
            cells = [c for k in self.layers for c in _measures(self.summary[k], pooled)[:len(names)]]
            chance = [number(first.recall_chance, 4) if pooled else ""] if recall else []
            counts = [str(first.pairs), str(first.voxels), ""] if pooled else ["", "", ""]
            lines.append(f"| {label} | " + " | ".join(cells + chance + counts) + " |")
        lines += ["", f"{first.scored_samples} of {first.samples} scenes have pairs."]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        """Plain data for ``probe_model_<family>.json`` (NaN written as null, layer keys as strings)."""
        return _json_ready(asdict(self))


def _probed_adapter(cfg: ExperimentConfig, checkpoint: Path | None) -> tuple[MLLMAdapter, str]:
    """The adapter to probe (a checkpoint's through `evaluate.load_task`, else `build_adapter`) and its
    description."""
    m = cfg.model
    base = f"{m.family} from {m.path}" if m.path else f"{m.family} tiny random model (seed {m.tiny_seed})"
    placement = inference_placement(m, compute_device())
    base += f" ({placement.describe()})"
    if checkpoint is None:
        return build_adapter(m, placement).eval(), base
    return load_task(cfg, checkpoint, placement).adapter, f"{base}, weights of checkpoint {checkpoint}"


def _offsets(cfg: ExperimentConfig, adapter: MLLMAdapter, batch: FrameBatch, points: Tensor, valid: Tensor) -> Tensor:
    """[1, S, h, w, D] position encoding as training adds it: of the footprint points [S, h, w, 3] (valid [S, h, w]),
    or under align.posenc_points=pixel_blocks of every token's pixel-block mean (data/dataset.py)."""
    if cfg.align.posenc_points == "pixel_blocks":
        points = pixel_point_sets(batch.depth, batch.depth_K, batch.poses, adapter.pixel_grid(), False)["posenc_points"]
        valid = torch.isfinite(points).all(-1)
    return position_encoding(points, valid, adapter.hidden_size)[None]


def _check_layers(adapter: MLLMAdapter, layers: list[int]) -> None:
    """Raise ConfigError naming probe.layers when an index is outside the LLM's hidden states."""
    states = int(adapter.model.config.text_config.num_hidden_layers) + 1
    bad = [k for k in layers if not -states <= k < states]
    if bad:
        raise ConfigError(f"probe.layers: {bad} out of range for {adapter.family}'s {states} hidden states "
                          f"(indices {-states}..{states - 1}; 0 = input embeddings, -1 = last layer)")


@torch.no_grad()
def probe_model(cfg: ExperimentConfig, scenes: list[str] | None = None, progress: bool = True,
                explicit: set[str] | None = None) -> ModelProbeResult:
    """Score the MLLM's visual tokens at ``probe.layers`` on every scene of ``cfg.data.split`` (or ``scenes``).

    Per scene: frames [1, S, 3, H, W] from the run's frame lists and ``probe.prompt`` (no answer) go through the
    adapter, with the position encoding of the token world points added to the visual embeddings when
    ``probe.posenc``; each layer's tokens [S, h, w, D] are scored against the token points [S, h, w, 3] (metres,
    mean of the valid depth pixels of each token's footprint) with ``cfg.correspondence``; tokens without depth
    and repeated frames are left out. With ``probe.checkpoint`` (a checkpoint folder, or a run folder for its
    newest checkpoint) the settings that shaped the checkpoint's tokens come from the run's config.yaml except
    the keys in ``explicit`` (default: those that differ from the defaults); what was taken is printed. Writes
    ``<output_dir>/probe_model_<family>.json``; print ``result.table()``.
    """
    start = time.perf_counter()
    checkpoint, settings = None, []
    if cfg.probe.checkpoint is not None:
        checkpoint, run = checkpoint_and_run(cfg.probe.checkpoint)
        cfg, settings = settings_from_run(cfg, run, non_default_keys(cfg) if explicit is None else explicit)
        for line in settings:
            print(line)
    p, corr = cfg.probe, cfg.correspondence
    root = Path(cfg.data.root)
    scene_ids = extraction_scenes(root, scenes) if scenes is not None else split_scene_ids(root, cfg.data.split)
    adapter, description = _probed_adapter(cfg, checkpoint)
    _check_layers(adapter, p.layers)
    device = compute_device()
    adapter.to(device)
    frame_lists = frame_lists_for(cfg)
    rows, results, grid = [], {k: [] for k in p.layers}, None
    for scene_id in tqdm(scene_ids, desc=f"probe {adapter.family}", unit="scene", disable=not progress):
        frame_ids = frame_lists(scene_id)
        batch = Scene(root, scene_id, cfg.data.axis_alignment).load_frames(frame_ids)
        points, valid = batch.token_points(adapter.footprints(*batch.images.shape[-2:]))
        points = torch.nan_to_num(points).float()  # as the training data: invalid tokens hold zeros
        offsets = _offsets(cfg, adapter, batch, points, valid).to(device) if p.posenc else None
        out = adapter(batch.images[None].to(device), [p.prompt], None, layers=tuple(p.layers), visual_offsets=offsets)
        first = first_views(frame_ids)
        scored = valid & first[:, None, None]
        grid = grid or tuple(points.shape[1:3])
        scene = {layer: correspondence_score(out.visual.hidden[layer][0].float(), points, scored,
                                             **corr.score_options()) for layer in p.layers}
        for layer, result in scene.items():
            results[layer].append(result)
        rows.append(SceneLayerScores.of(scene_id, scene, len(frame_ids) - int(first.sum())))
    description += (f"; 3D position encoding {'added to' if p.posenc else 'not added to'} the visual embeddings; "
                    f"prompt after the frames: {p.prompt!r}")
    probe = ModelProbeResult(
        model=adapter.family, description=description, checkpoint=None if checkpoint is None else str(checkpoint),
        split=cfg.data.split if scenes is None else "selected scenes", layers=list(p.layers), posenc=p.posenc,
        prompt=p.prompt, grid=grid, frames=cfg.data.frames, sampling=cfg.data.sampling, voxel=corr.voxel,
        variant=corr.variant, same_frame=corr.same_frame, scenes=rows,
        summary={k: dataset_score(results[k]) for k in p.layers}, seconds=time.perf_counter() - start,
        settings=settings)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"probe_model_{probe.model}.json").write_text(json.dumps(probe.to_json(), indent=1) + "\n")
    return probe


def main_probe(args: argparse.Namespace) -> None:
    """`threedrs probe CONFIG [k=v ...] [--scenes id1,id2]` (fields: config, overrides, scenes): the teacher or the
    model, as ``probe.target`` says; keys set in CONFIG or as k=v win over a probed checkpoint's own settings."""
    cfg = load_config(args.config, args.overrides)
    scenes = args.scenes.split(",") if args.scenes else None
    if cfg.probe.target == "model":
        result = probe_model(cfg, scenes, explicit=explicit_keys(args.config, args.overrides))
        name = f"probe_model_{result.model}.json"
    else:
        result = probe_teacher(cfg, scenes)
        name = f"probe_{result.model}.json"
    print(result.table())
    print(f"Wrote {Path(cfg.output_dir) / name}")
