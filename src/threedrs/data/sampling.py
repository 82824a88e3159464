"""Which frames of a scan a model sees: one rule, one frame list per scene, shared by teacher and student.

Rules (METHOD.md, FORMATS.md §1.8):
- `uniform`: `numpy.linspace(0, n - 1, k)` cast to int over the scan's VALID frames (duplicates when n < k),
  exactly as Video-3D LLM and 3DRS sample 32 frames;
- `max_coverage`: greedily add the frame that covers the most not-yet-covered voxels (0.1 m by default) of the
  depth back-projected into the aligned world, as Video-3D LLM's maximum-coverage selection; once no frame adds a
  voxel, the remaining slots are filled uniformly from the unused frames; the chosen frames are returned in
  temporal order.

The rule chooses among a scene's candidate frames (`threedrs.data.frame_sources`: all valid frames, EmbodiedScan's
image list, or Video-3D LLM's max-coverage file, which is already a selection and bypasses the rule; a selection
of fewer than k frames is filled up with repeats as uniform sampling fills a short scan, so every list has k).

`FrameLists` computes the list of each scene once and stores it in a JSON file, so that `threedrs extract` (the
teacher) and the training dataset (the student) read the very same frames — the authors' release sampled them
twice, from different lists.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from threedrs.data.frame_sources import FrameSource
from threedrs.data.instances import SceneDataError
from threedrs.data.scene import Scene, read_depth
from threedrs.geometry import depth_to_world, voxel_keys
from threedrs.json_files import read_json_file, write_json_atomic
from threedrs.locking import FileLock

RULES = ("uniform", "max_coverage")


def uniform_indices(n: int, k: int) -> list[int]:
    """`k` indices spread over `n` frames: `linspace(0, n - 1, k)` floored (duplicates when n < k)."""
    if n < 1:
        raise ValueError(f"n: need at least one frame to sample from, got {n}")
    if k < 1:
        raise ValueError(f"k: need to sample at least one frame, got {k}")
    return np.linspace(0, n - 1, k).astype(int).tolist()


def greedy_coverage(voxel_sets: list[np.ndarray], k: int) -> list[int]:
    """Greedy maximum coverage: indices (in selection order) of at most `k` sets covering the most elements.

    voxel_sets: per candidate frame a 1-D int64 array of unique voxel keys. Stops early when no set adds anything.
    Ties go to the earliest frame.
    """
    covered: set[int] = set()
    remaining = [set(v.tolist()) for v in voxel_sets]
    chosen: list[int] = []
    for _ in range(min(k, len(remaining))):
        gains = [len(s - covered) if i not in chosen else -1 for i, s in enumerate(remaining)]
        best = int(np.argmax(gains))
        if gains[best] <= 0:
            break
        chosen.append(best)
        covered |= remaining[best]
    return chosen


def frame_voxels(scene: Scene, frame_id: str, voxel_size: float, stride: int = 4) -> np.ndarray:
    """Unique voxel keys [V] int64 of one frame's valid depth pixels (every `stride`-th pixel) in the aligned world."""
    depth = torch.from_numpy(read_depth(scene.frame_dir / f"{frame_id}.png")[::stride, ::stride].copy())
    K = torch.from_numpy(scene.depth_K.copy())
    K[:2] /= stride  # intrinsics of the strided image (pixel centres at multiples of stride)
    world, valid = depth_to_world(depth[None].double(), K, torch.from_numpy(scene.pose(frame_id))[None])
    return torch.unique(voxel_keys(world[valid], voxel_size)).numpy()


def max_coverage_indices(scene: Scene, k: int, voxel_size: float = 0.1,
                         candidates: list[str] | None = None) -> list[int]:
    """Indices into `candidates` (default `scene.frame_ids`) chosen by maximum voxel coverage, `k` of them, in
    temporal order."""
    candidates = scene.frame_ids if candidates is None else candidates
    n = len(candidates)
    if k >= n:
        return uniform_indices(n, k)
    sets = [frame_voxels(scene, f, voxel_size) for f in candidates]
    chosen = greedy_coverage(sets, k)
    if len(chosen) < k:
        unused = [i for i in range(n) if i not in chosen]
        chosen += [unused[j] for j in uniform_indices(len(unused), k - len(chosen))]
    return sorted(chosen)


def select_frames(scene: Scene, rule: str, k: int, voxel_size: float = 0.1,
                  candidates: list[str] | None = None) -> list[str]:
    """The `k` frame ids chosen by `rule` ("uniform" or "max_coverage") among `candidates` (default: all valid
    frames of `scene`)."""
    candidates = scene.frame_ids if candidates is None else candidates
    if rule == "uniform":
        idx = uniform_indices(len(candidates), k)
    elif rule == "max_coverage":
        idx = max_coverage_indices(scene, k, voxel_size, candidates)
    else:
        raise ValueError(f"rule: unknown frame sampling rule {rule!r}; known: {', '.join(RULES)}")
    return [candidates[i] for i in idx]


def first_views(frame_ids: list[str]) -> torch.Tensor:
    """[S] bool: True at the first occurrence of each frame id, False at repeats of an earlier frame.

    Uniform sampling repeats frames when a scan has fewer valid frames than asked; a repeat is a copy of a view,
    not a second view, so the 3D-awareness score and the correspondence loss must count it once.
    """
    seen: set[str] = set()
    keep = []
    for frame_id in frame_ids:
        keep.append(frame_id not in seen)
        seen.add(frame_id)
    return torch.tensor(keep, dtype=torch.bool)


class FrameLists:
    """The frame list of every scene for one (source, rule, k), computed once and kept in a JSON file.

    path: JSON file `{"rule": ..., "frames": k, "voxel": ..., "source": ..., "source_sha256": ..., "coverage_ratio":
    ..., "scenes": {scene_id: [frame ids]}}`; created or extended on demand (each new list is saved at once, or once
    for a whole loop over scenes inside `save_once`); a file written for another source (kind, list file content or
    coverage ratio), rule or k is refused.
    source: the candidate frames (default: all valid frames); axis_alignment: the scenes' alignment policy.
    """

    def __init__(self, path: str | Path, root: str | Path, rule: str, k: int, voxel_size: float = 0.1,
                 source: FrameSource | None = None, axis_alignment: str = "required"):
        if rule not in RULES:
            raise ValueError(f"rule: unknown frame sampling rule {rule!r}; known: {', '.join(RULES)}")
        self.path, self.root = Path(path), Path(root)
        self.rule, self.k, self.voxel_size = rule, k, voxel_size
        self.source = FrameSource() if source is None else source
        self.axis_alignment = axis_alignment
        self._identity = self.source.identity  # read once: the list file's digest
        self._lists: dict[str, list[str]] = self._read() if self.path.is_file() else {}
        self._deferred = 0  # depth of open `save_once` blocks
        self._unsaved = False  # lists computed inside them and not written yet

    def _read(self) -> dict[str, list[str]]:
        """The stored lists; SceneDataError naming the file (and key or scene) when it is damaged or foreign."""
        data = read_json_file(self.path, SceneDataError, hint="delete it to compute the frame lists again")
        if not isinstance(data, dict) or not isinstance(data.get("scenes"), dict):
            raise SceneDataError(f"{self.path}: expected a mapping with a 'scenes' mapping; delete it to compute "
                                 f"the frame lists again")
        wanted = self._header()
        stored = {key: data.get(key, "all" if key == "source" else None) for key in wanted}
        if stored != wanted:
            made = ", ".join(f"{k}={v}" for k, v in stored.items())
            want = ", ".join(f"{k}={v}" for k, v in wanted.items())
            raise SceneDataError(f"{self.path}: frame lists were made for {made}, not {want}; delete it to compute "
                                 f"the frame lists again")
        for scene_id, ids in data["scenes"].items():
            if not isinstance(ids, list) or not ids or not all(isinstance(f, str) for f in ids):
                raise SceneDataError(f"{self.path}: scene {scene_id!r} must map to a non-empty list of frame ids")
        return {s: list(v) for s, v in data["scenes"].items()}

    def _header(self) -> dict:
        """The settings a stored file must have been made with (rule, k, voxel and the source's identity)."""
        return {"rule": self.rule, "frames": self.k, "voxel": self.voxel_size, **self._identity}

    def __call__(self, scene: Scene | str) -> list[str]:
        """The frame ids of a scene (computed and saved on first request)."""
        scene_id = scene if isinstance(scene, str) else scene.scene_id
        if scene_id not in self._lists:
            obj = Scene(self.root, scene_id, self.axis_alignment) if isinstance(scene, str) else scene
            if self.source.kind == "select_frames":  # fewer than k frames repeat as uniform sampling's do
                chosen = self.source.selection(obj, self.k)
                self._lists[scene_id] = [chosen[i] for i in uniform_indices(len(chosen), self.k)]
            else:
                candidates = self.source.candidates(obj)
                self._lists[scene_id] = select_frames(obj, self.rule, self.k, self.voxel_size, candidates)
            if self._deferred:
                self._unsaved = True
            else:
                self._save()
        return self._lists[scene_id]

    @contextmanager
    def save_once(self) -> Iterator[FrameLists]:
        """A block whose new lists are written to the file once, when it ends (also when it fails: what was
        computed is kept), for callers that loop over many scenes: saving after each new scene rewrites the whole
        file every time, quadratic in the number of scenes."""
        self._deferred += 1
        try:
            yield self
        finally:
            self._deferred -= 1
            if not self._deferred and self._unsaved:
                self._unsaved = False
                self._save()

    def _save(self) -> None:
        """Merge this process's lists into the file, under its lock: processes that share a cache (the ranks of an
        extraction, a training next to an extraction) each add their scenes without losing the others'."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.path.with_name(self.path.name + ".lock"), f"{self.path}").acquire(wait=60.0):
            if self.path.is_file():
                self._lists = {**self._read(), **self._lists}
            write_json_atomic(self.path, {**self._header(), "scenes": self._lists}, fsync=False)


def frame_lists_from_config(data, path: str | Path) -> FrameLists:
    """The FrameLists of a `DataConfig` (`data.*`: root, frame_source and its files, sampling, frames, voxel,
    axis_alignment) kept in `path`; the source files are relative to `data.root` unless absolute."""
    root = Path(data.root)
    files = {"embodiedscan": data.embodiedscan_images, "select_frames": data.select_frames}
    source = FrameSource(data.frame_source, root / files[data.frame_source] if data.frame_source in files else None,
                         data.coverage_ratio)
    return FrameLists(path, root, data.sampling, data.frames, data.coverage_voxel, source, data.axis_alignment)
