"""`threedrs extract`: run the configured frozen teacher over every scene once and write the feature cache.

For each scene: its frame list comes from ``<teacher.cache_dir>/frame_lists.json`` (`frame_lists_for`, the file
the student dataset reads, so teacher and student see the same frames); the teacher encodes the frames in
batches of ``teacher.batch_frames`` (a multi-view teacher such as VGGT must see all S frames in one call: a
warning says so otherwise) under bf16/fp16 autocast on CUDA (``teacher.dtype``; fp32 on CPU); each frame's
token grid is average-pooled to ``teacher.grid`` and the scene is written as one float16 safetensors file
(see `threedrs.teachers.cache`).

Scenes: ``--scenes`` or, by default, every scene of the train AND val splits (the student trains on train and
is evaluated on val, and both need targets); a split whose list file is absent is skipped with a note.

Resumable: scenes whose file is complete for this config are skipped, truncated files are rewritten,
temporary files of an interrupted run are ignored and replaced. Each scene file records the fingerprint of the
files it was computed from (size and modification time of the frames, intrinsics and alignment; their sha256 with
``--verify``); a scene whose files changed since is extracted again. ``--verify`` on a scene extracted without it
hashes its files (unchanged in size and time) and records their sha256 without running the teacher again; later
``--verify`` runs compare content. ``--overwrite`` deletes the cache first (only a threedrs cache).
Several processes may extract into one cache at once: each scene is extracted by the one that holds its lock,
the others skip it (`threedrs.teachers.cache_writer`). Multi-GPU: launched by torchrun or accelerate
(RANK / WORLD_SIZE / LOCAL_RANK in the environment), rank r takes scenes[r::world] on cuda:LOCAL_RANK; only rank 0
writes the manifest, before any scene file, and every rank checks an existing manifest against its config.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from threedrs.config import ConfigError, ExperimentConfig, TeacherConfig, load_config
from threedrs.data.instances import SceneDataError
from threedrs.data.scene import FrameBatch, Scene, split_scene_ids
from threedrs.provenance import fingerprint_files, names
from threedrs.teachers.base import Teacher, build_teacher, weights_fingerprint
from threedrs.teachers.cache import CacheSpec, frame_lists_for, pool_to_grid
from threedrs.teachers.cache_writer import CacheWriter, clear_cache

__all__ = [
    "ExtractSummary",
    "autocast_dtype",
    "build_configured_teacher",
    "encode_scene",
    "extract",
    "extraction_scenes",
    "launch_rank",
    "main_extract",
    "teacher_options",
]

_OPTION_FIELDS = ("checkpoint", "layer", "channels")  # TeacherConfig fields handed to the teacher's constructor


@dataclass
class ExtractSummary:
    """What one process of `threedrs extract` did.

    scenes: the scenes this rank was responsible for; written: extracted now; skipped: already complete;
    rewritten: extracted now because their file was truncated or corrupt (also listed in written); stale:
    extracted now because their source files changed (also in written); fingerprinted: complete, but extracted
    without ``--verify``: their source files were hashed now and the sha256 recorded, the teacher not run (also
    in skipped); busy: left to another process that was extracting them.
    """

    cache_dir: Path
    teacher: str
    rank: int
    world: int
    scenes: list[str]
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    fingerprinted: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        """One paragraph for the terminal."""
        rate = len(self.written) / self.seconds if self.seconds > 0 else 0.0
        where = f" (rank {self.rank} of {self.world})" if self.world > 1 else ""
        text = (f"{self.teacher} features of {len(self.scenes)} scenes in {self.cache_dir}{where}: "
                f"{len(self.written)} extracted, {len(self.skipped)} already complete")
        if self.rewritten:
            text += f", {len(self.rewritten)} truncated/corrupt files rewritten"
        if self.stale:
            text += f", {len(self.stale)} re-extracted because their frames changed"
        if self.fingerprinted:
            text += (f", {len(self.fingerprinted)} fingerprinted by content (sha256 of their frames recorded, "
                     f"not re-extracted)")
        if self.busy:
            text += f", {len(self.busy)} left to another process extracting them ({names(self.busy, 3)})"
        return text + f"; {self.seconds:.1f} s ({rate:.2f} scenes/s)"


def launch_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from RANK / WORLD_SIZE / LOCAL_RANK; (0, 1, 0) when not launched."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun/accelerate set them)") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: need 0 <= RANK < WORLD_SIZE")
    return rank, world, local


def teacher_options(tc: TeacherConfig) -> dict[str, object]:
    """Constructor options from the config: the fields of ``_OPTION_FIELDS`` whose value differs from the
    TeacherConfig default (so a weight-free teacher is not handed a layer, nor VGGT a channel count)."""
    default = TeacherConfig()
    return {name: getattr(tc, name) for name in _OPTION_FIELDS if getattr(tc, name) != getattr(default, name)}


def build_configured_teacher(cfg: ExperimentConfig) -> Teacher:
    """The teacher named by ``cfg.teacher.name``, built with `teacher_options`."""
    options = teacher_options(cfg.teacher)
    try:
        return build_teacher(cfg.teacher.name, **options)
    except TypeError as exc:
        given = ", ".join(f"teacher.{k}={v!r}" for k, v in options.items()) or "no options"
        raise ConfigError(f"teacher {cfg.teacher.name!r} cannot be built with {given}: {exc}") from exc


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``teacher.dtype`` on ``device``; None = no autocast (fp32). CPU is always fp32."""
    if device.type != "cuda" or setting == "float32":
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[setting]


def extraction_scenes(root: str | Path, scenes: list[str] | None = None) -> list[str]:
    """``scenes`` (each checked to exist) or every scene of the train and val split lists, in list order."""
    root = Path(root)
    if scenes is not None:
        ids = list(dict.fromkeys(s.strip() for s in scenes if s.strip()))
        if not ids:
            raise ValueError("--scenes: no scene id given")
        missing = [s for s in ids if not (root / "scannet" / "posed_images" / s).is_dir()]
        if missing:
            raise SceneDataError(f"{root}: scenes not found: {', '.join(missing)}")
        return ids
    ids: list[str] = []
    for split in ("train", "val"):
        if (root / "metadata" / f"scannetv2_{split}.txt").is_file():
            ids += split_scene_ids(root, split)
        else:
            print(f"note: {root}/metadata/scannetv2_{split}.txt not found, no {split} scenes extracted")
    if not ids:
        raise SceneDataError(f"{root}: neither metadata/scannetv2_train.txt nor scannetv2_val.txt exists")
    return list(dict.fromkeys(ids))


def _frame_slice(batch: FrameBatch, start: int, stop: int) -> FrameBatch:
    return dataclasses.replace(batch, frame_ids=batch.frame_ids[start:stop], images=batch.images[start:stop],
                               depth=batch.depth[start:stop], poses=batch.poses[start:stop])


def encode_scene(teacher: Teacher, batch: FrameBatch, grid: tuple[int, int], batch_frames: int,
                 device: torch.device, dtype: torch.dtype | None) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Teacher tokens of one scene's frames, pooled to ``grid``.

    Returns (tokens [S, h, w, C] float32 on ``device``, valid [S, h, w] bool, the teacher's native (h', w')).
    Raises ValueError when the teacher returns non-finite values at valid tokens (fp16 overflow, bad weights).
    """
    parts, valids = [], []
    frames = len(batch.frame_ids)
    for start in range(0, frames, batch_frames):
        part = _frame_slice(batch, start, start + batch_frames)
        context = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with context:
            tokens, valid = teacher.encode_with_validity(part.images.to(device), part)
        parts.append(tokens)
        valids.append(valid.to(tokens.device))
    tokens, valid = torch.cat(parts), torch.cat(valids)
    if not bool(torch.isfinite(tokens[valid]).all()):
        raise ValueError(f"scene {batch.scene_id}: teacher {teacher.name!r} returned non-finite features "
                         f"(overflow under {dtype or torch.float32}? try teacher.dtype=float32)")
    pooled, pooled_valid = pool_to_grid(tokens, grid, valid)
    return pooled, pooled_valid, (int(tokens.shape[1]), int(tokens.shape[2]))


def extract(cfg: ExperimentConfig, scenes: list[str] | None = None, overwrite: bool = False,
            verify: bool = False) -> ExtractSummary:
    """Extract the teacher features of ``scenes`` (default: train + val) into ``cfg.teacher.cache_dir``.

    overwrite: delete the cache first (one process only). verify: fingerprint the source files by sha256 (and
    compare existing scene files by content), not only by size and modification time.
    """
    start = time.perf_counter()
    rank, world, local_rank = launch_rank()
    root = Path(cfg.data.root)
    scene_ids = extraction_scenes(root, scenes)
    spec = CacheSpec.from_config(cfg)  # checks teacher.grid before the teacher (possibly GBs of weights) loads
    if overwrite:
        if world > 1:
            raise ValueError(f"--overwrite with {world} processes: delete {cfg.teacher.cache_dir} (or run "
                             f"`threedrs extract --overwrite` once in one process) before launching them")
        clear_cache(cfg.teacher.cache_dir)
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    weights_files = weights_fingerprint(cfg.teacher.name, cfg.teacher.checkpoint)  # before the weights are hashed
    teacher = build_configured_teacher(cfg).to(device)
    spec = dataclasses.replace(spec, weights_checksum=teacher.weights_checksum, channels=teacher.channels)
    if teacher.multi_view and cfg.teacher.batch_frames < cfg.data.frames:
        warnings.warn(f"teacher {teacher.name!r} is multi-view but sees the {cfg.data.frames} frames of a scene in "
                      f"batches of {cfg.teacher.batch_frames}: frames only attend within a batch; set "
                      f"teacher.batch_frames >= {cfg.data.frames} to match the paper", stacklevel=2)
    first_scene = Scene(root, scene_ids[0], cfg.data.axis_alignment)
    source_grid = teacher.grid_for(*first_scene.load_frame(first_scene.frame_ids[0]).color.shape[:2])
    writer = CacheWriter(cfg.teacher.cache_dir, spec, source_grid, write_manifest=rank == 0,
                         weights_files=weights_files)
    frame_lists = frame_lists_for(cfg)
    dtype = autocast_dtype(cfg.teacher.dtype, device)
    summary = ExtractSummary(Path(cfg.teacher.cache_dir), teacher.name, rank, world, scene_ids[rank::world])
    bar = tqdm(summary.scenes, desc=f"extract {teacher.name}", unit="scene", disable=rank != 0)
    for scene_id in bar:
        if writer.claim(scene_id) is None:
            bar.write(f"{writer.path(scene_id)}: another process is extracting this scene, leaving it to it")
            summary.busy.append(scene_id)
            continue
        try:  # under the scene's lock: no one else writes it, and its leftover temporary files are dead
            frame_ids = frame_lists(scene_id)
            fresh: dict[str, list] = {}  # sha256 of the files status hashed: not read again below
            state, changed = writer.status(scene_id, frame_ids, root, verify, fresh)
            scene = Scene(root, scene_id, cfg.data.axis_alignment)
            if state in ("done", "unhashed"):
                if state == "unhashed":
                    writer.record_sources(scene_id, fingerprint_files(scene.source_files(frame_ids), root, True))
                    summary.fingerprinted.append(scene_id)
                summary.skipped.append(scene_id)
                continue
            if state == "corrupt":
                bar.write(f"{writer.path(scene_id)}: truncated or corrupt, extracting again")
                summary.rewritten.append(scene_id)
            if state == "stale":
                bar.write(f"{writer.path(scene_id)}: its source files changed since extraction "
                          f"({names(changed, 3)}), extracting again")
                summary.stale.append(scene_id)
            sources = fingerprint_files(scene.source_files(frame_ids), root, verify, known=fresh)
            batch = scene.load_frames(frame_ids)
            tokens, valid, native = encode_scene(teacher, batch, spec.grid, cfg.teacher.batch_frames, device, dtype)
            writer.write(scene_id, tokens, valid, frame_ids, native, sources)
            summary.written.append(scene_id)
        finally:
            writer.release(scene_id)
    summary.seconds = time.perf_counter() - start
    return summary


def main_extract(args: argparse.Namespace) -> None:
    """`threedrs extract CONFIG [k=v ...] [--scenes id1,id2] [--overwrite] [--verify]`."""
    cfg = load_config(args.config, args.overrides)
    scenes = args.scenes.split(",") if args.scenes else None
    summary = extract(cfg, scenes, overwrite=args.overwrite, verify=args.verify)
    print(summary.describe())
