"""The teacher-feature cache: one safetensors file per scene, already pooled to the student grid, plus a manifest.

Layout of a cache directory (``teacher.cache_dir``)::

    manifest.json              what the cache holds (CacheSpec fields + source grid, package version, format)
                               and "weights_files": {absolute path: [bytes, mtime_ns]} of the teacher's weight
                               files when they were hashed into weights_checksum (training trusts the checksum
                               while they keep both; `threedrs.teachers.base.expected_identity`)
    frame_lists.json           the frame list of every scene (data.sampling, data.frames): the ONE list that
                               `threedrs extract` and the student dataset both read (see `frame_lists_for`)
    <scene_id>.safetensors     tensors "tokens" [S, h, w, C] float16 and "valid" [S, h, w] bool; string
                               metadata repeats the spec and holds the scene's frame ids (JSON list) and
                               "sources": the fingerprint of every file the features were computed from
                               ({path under data.root: [bytes, mtime_ns(, sha256)]}, `threedrs.provenance`)
    .lock, .locks/<scene>.lock advisory locks: the manifest is checked and written under ``.lock``; a scene is
                               extracted only by the process holding its lock (`threedrs.locking`)

A file is written to ``<scene_id>.safetensors.tmp-<pid>``, flushed, fsync'ed and renamed into place, so a
final name always holds a whole file; leftover temporary files are ignored by readers and removed only by the
holder of the scene's lock, so a live writer's temporary file is never touched. A scene whose source files
changed since extraction (size or modification time; content with ``--verify``) is stale: `threedrs extract`
extracts it again and training refuses it. Readers check each file's header against its size (a truncated file is reported,
and `threedrs extract` rewrites it), memory-map it with ``safetensors.safe_open`` for each access and keep
nothing between accesses: no per-worker cache, so data-loader memory does not grow with the number of scenes.

Validity: a token with ``valid == False`` has no teacher target (e.g. the geometry oracle on a patch without
depth); its stored features are zeros and must be masked by the consumer, never used as a target.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor

from threedrs.config import ExperimentConfig
from threedrs.data.sampling import FrameLists, frame_lists_from_config
from threedrs.json_files import read_json_file
from threedrs.provenance import changed_files, refuse_if_different

__all__ = [
    "CacheError",
    "CacheMismatchError",
    "CacheSpec",
    "CorruptCacheFileError",
    "FeatureCache",
    "SceneFeatures",
    "check_cache_file",
    "file_sources",
    "file_spec",
    "frame_lists_for",
    "pool_to_grid",
    "read_manifest",
    "refuse_other_spec",
    "stale_sources",
]

FORMAT = "threedrs-feature-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FRAME_LISTS = "frame_lists.json"
SUFFIX = ".safetensors"
_REMEDY = "use another teacher.cache_dir, or extract again with --overwrite"
VALIDITY_RULE = "any"  # a pooled token is valid when any source token in its bin is valid (mean over valid ones)


class CacheError(ValueError):
    """A feature cache or one of its files cannot be used; the message names the directory or file."""


class CacheMismatchError(CacheError):
    """The cache (or one file) was written for another teacher, layer, frames or grid than the run asks."""


class CorruptCacheFileError(CacheError):
    """A cache file is truncated or not a valid safetensors file; re-running `threedrs extract` rewrites it."""


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds; every field is compared when a run opens a cache.

    teacher: registry name. weights_checksum: the teacher's ``weights_checksum`` (None: not compared, for
    readers that do not load the teacher). layer: ``teacher.layer`` as configured. sampling / frames /
    coverage_voxel: the frame rule (coverage_voxel is None for uniform sampling). grid: (rows, cols) of the
    student token grid the features were pooled to. channels: C (None: not compared). dtype: stored dtype.
    """

    teacher: str
    weights_checksum: str | None
    layer: int
    sampling: str
    frames: int
    coverage_voxel: float | None
    grid: tuple[int, int]
    channels: int | None
    dtype: str = "float16"

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, weights_checksum: str | None = None,
                    channels: int | None = None) -> CacheSpec:
        """The spec a run with ``cfg`` needs; ``teacher.grid`` must be set (the student's token grid)."""
        if cfg.teacher.grid is None:
            raise CacheError("teacher.grid: set the student's token grid (rows, cols) to pool teacher features "
                             "to, e.g. teacher.grid=[14,14] for LLaVA-Video")
        return cls(teacher=cfg.teacher.name, weights_checksum=weights_checksum, layer=cfg.teacher.layer,
                   sampling=cfg.data.sampling, frames=cfg.data.frames,
                   coverage_voxel=cfg.data.coverage_voxel if cfg.data.sampling == "max_coverage" else None,
                   grid=(int(cfg.teacher.grid[0]), int(cfg.teacher.grid[1])), channels=channels)

    @classmethod
    def from_mapping(cls, values: dict, source: Path) -> CacheSpec:
        """The spec fields of a manifest (or of a file's decoded metadata); CacheError if one is missing."""
        try:
            kwargs = {f.name: values[f.name] for f in fields(cls)}
            kwargs["grid"] = (int(kwargs["grid"][0]), int(kwargs["grid"][1]))
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise CacheError(f"{source}: not a threedrs feature-cache description (bad or missing {exc})") from None
        return cls(**kwargs)

    def to_metadata(self) -> dict[str, str]:
        """The spec as safetensors string metadata (values JSON-encoded)."""
        return {f.name: json.dumps(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class SceneFeatures:
    """One scene's cached teacher features.

    tokens: [S, h, w, C] float16 (zeros where invalid). valid: [S, h, w] bool, True where the token has a
    teacher target. frame_ids: the S frame ids, in order. source_grid: the teacher's native (rows, cols).
    """

    scene_id: str
    tokens: Tensor
    valid: Tensor
    frame_ids: list[str]
    source_grid: tuple[int, int]


def frame_lists_for(cfg: ExperimentConfig) -> FrameLists:
    """The run's frame lists, ``<teacher.cache_dir>/frame_lists.json``: extraction and the student read this file."""
    return frame_lists_from_config(cfg.data, Path(cfg.teacher.cache_dir) / FRAME_LISTS)


def pool_to_grid(tokens: Tensor, grid: tuple[int, int], valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Adaptive average pooling of each frame's token grid to ``grid``, ignoring invalid tokens.

    Bins follow ``torch.nn.functional.adaptive_avg_pool2d``: output row i averages source rows
    floor(i * h' / h) <= r < ceil((i + 1) * h' / h), columns likewise. A pooled token is the mean of the VALID
    source tokens of its bin and is valid when at least one of them is ("any valid"): a student token that
    partly covers pixels without a target still gets the target of the part that has one.

    Args:
        tokens: [S, h', w', C] float, any float dtype. grid: (h, w) target rows and columns, >= 1.
        valid: [S, h', w'] bool or None (all valid). Values at invalid tokens are ignored (may be NaN).
    Returns:
        pooled: [S, h, w, C] float32, zeros where invalid. valid: [S, h, w] bool.
    """
    if tokens.ndim != 4 or not tokens.is_floating_point():
        raise ValueError(f"tokens: expected a float tensor [S, h, w, C], got {tokens.dtype} {list(tokens.shape)}")
    if len(grid) != 2 or int(grid[0]) < 1 or int(grid[1]) < 1:
        raise ValueError(f"grid: expected (rows, cols) >= 1, got {grid}")
    if valid is not None and (valid.shape != tokens.shape[:3] or valid.dtype != torch.bool):
        raise ValueError(f"valid: expected a bool tensor of shape {list(tokens.shape[:3])}, got "
                         f"{valid.dtype} {list(valid.shape)}")
    size = (int(grid[0]), int(grid[1]))
    x = tokens.float().permute(0, 3, 1, 2)
    if valid is None or bool(valid.all()):
        pooled = F.adaptive_avg_pool2d(x, size).permute(0, 2, 3, 1)
        return pooled.contiguous(), torch.ones(pooled.shape[:3], dtype=torch.bool, device=pooled.device)
    mask = valid[:, None].to(x.device)
    total = F.adaptive_avg_pool2d(torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)), size)
    share = F.adaptive_avg_pool2d(mask.float(), size)
    out_valid = share > 0
    pooled = torch.where(out_valid, total / share.clamp(min=torch.finfo(torch.float32).tiny), 0.0)
    return pooled.permute(0, 2, 3, 1).contiguous(), out_valid[:, 0]


def check_cache_file(path: Path) -> dict:
    """Parse a cache file's safetensors header and check it against the file size.

    Returns the header (tensor entries and "__metadata__"); raises CorruptCacheFileError when the file is
    shorter or longer than its header says, the header is not JSON, or "tokens"/"valid" are missing.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise CorruptCacheFileError(f"{path}: truncated cache file ({size} bytes, no safetensors header)")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise CorruptCacheFileError(f"{path}: truncated cache file (header of {length} bytes, file "
                                            f"has {size}); re-run `threedrs extract` to rewrite it")
            header = json.loads(handle.read(length))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorruptCacheFileError(f"{path}: corrupt cache file (header is not JSON); re-run `threedrs extract` "
                                    f"to rewrite it") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if set(tensors) != {"tokens", "valid"} or "__metadata__" not in header:
        raise CorruptCacheFileError(f"{path}: not a threedrs cache file (tensors {sorted(tensors)})")
    end = max(int(v["data_offsets"][1]) for v in tensors.values())
    if size != 8 + length + end:
        raise CorruptCacheFileError(f"{path}: truncated or corrupt cache file ({size} bytes, header says "
                                    f"{8 + length + end}); re-run `threedrs extract` to rewrite it")
    return header


def file_spec(path: Path, header: dict) -> tuple[CacheSpec, list[str], tuple[int, int]]:
    """(spec, frame ids, source grid) from a checked file header."""
    meta = header["__metadata__"]
    try:
        decoded = {k: json.loads(v) for k, v in meta.items()}
        frame_ids = [str(f) for f in decoded["frame_ids"]]
        source_grid = (int(decoded["source_grid"][0]), int(decoded["source_grid"][1]))
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise CorruptCacheFileError(f"{path}: cache file metadata is incomplete ({exc})") from None
    return CacheSpec.from_mapping(decoded, path), frame_ids, source_grid


def file_sources(path: Path, header: dict) -> dict[str, list]:
    """The "sources" fingerprint of a checked file header ({} when absent)."""
    try:
        sources = json.loads(header["__metadata__"].get("sources", "{}"))
    except ValueError:
        raise CorruptCacheFileError(f"{path}: cache file metadata 'sources' is not JSON") from None
    if not isinstance(sources, dict):
        raise CorruptCacheFileError(f"{path}: cache file metadata 'sources' is not a mapping")
    return sources


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no feature cache here ({MANIFEST} not found); run `threedrs extract`")
    manifest = read_json_file(path, CacheError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CacheError(f"{path}: not a threedrs feature-cache manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CacheMismatchError(f"{path}: cache format version {manifest.get('format_version')}, this threedrs "
                                 f"reads version {FORMAT_VERSION}; extract again into a new cache_dir")
    return manifest


def refuse_other_spec(have: CacheSpec, expected: CacheSpec, what: str) -> None:
    """CacheMismatchError naming each field where ``have`` differs from ``expected`` (None there: any value)."""
    refuse_if_different(asdict(have), asdict(expected), what, _REMEDY, error=CacheMismatchError, any_none=True)


def stale_sources(sources: dict[str, list], root: Path, verify: bool = False,
                  fresh: dict[str, list] | None = None) -> list[str]:
    """The files of a scene file's "sources" fingerprint that changed since its extraction (paths under ``root``;
    `threedrs.provenance.changed_files` says what counts as changed, ``verify`` and ``fresh`` are its). A file
    without a fingerprint (written by an older threedrs) is stale as a whole."""
    return changed_files(sources, Path(root), verify, fresh) if sources else ["(no fingerprint of its frames)"]


class FeatureCache:
    """Read-only access to a cache directory; refuses a cache whose manifest differs from ``expected``.

    Every ``load`` memory-maps the file through ``safetensors.safe_open``: the returned tensors are views of the
    mapping (private, copy-on-write: writing to them never changes the file), pages are read when used and
    released when the tensors are freed. Nothing is kept between calls, so the object is cheap to pickle into
    data-loader workers and their memory does not grow with the number of scenes read.
    """

    def __init__(self, directory: str | Path, expected: CacheSpec | None = None):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.spec = CacheSpec.from_mapping(self.manifest, self.directory / MANIFEST)
        if expected is not None:
            self.check_spec(expected)

    def check_spec(self, expected: CacheSpec) -> None:
        """CacheMismatchError naming each field where the manifest differs from ``expected`` (None: any)."""
        refuse_other_spec(self.spec, expected, f"feature cache {self.directory}")

    def path(self, scene_id: str) -> Path:
        """The final file of a scene (it may not exist)."""
        return self.directory / f"{scene_id}{SUFFIX}"

    def scene_ids(self) -> list[str]:
        """Sorted ids of the scenes with a final file (temporary files are ignored; files are not checked)."""
        return sorted(p.name[: -len(SUFFIX)] for p in self.directory.glob(f"*{SUFFIX}") if p.is_file())

    def __contains__(self, scene_id: str) -> bool:
        return self.path(scene_id).is_file()

    def sources(self, scene_id: str) -> dict[str, list]:
        """The fingerprint of the files a scene's features were computed from ({} if the file has none)."""
        return file_sources(self.path(scene_id), check_cache_file(self.path(scene_id)))

    def load(self, scene_id: str, frame_ids: list[str] | None = None) -> SceneFeatures:
        """Read one scene; ``frame_ids`` (the run's frame list) must equal the stored ones when given.

        Raises FileNotFoundError (scene not extracted), CorruptCacheFileError, CacheMismatchError.
        """
        path = self.path(scene_id)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: scene {scene_id} is not in the feature cache; run `threedrs extract`")
        spec, stored_ids, source_grid = file_spec(path, check_cache_file(path))
        refuse_other_spec(spec, self.spec, f"cache file {path}")
        if frame_ids is not None and list(frame_ids) != stored_ids:
            raise CacheMismatchError(f"{path}: extracted for frames {stored_ids}, the run uses {list(frame_ids)}; "
                                     f"extract again (the frame lists changed)")
        try:
            with safe_open(str(path), framework="pt") as handle:
                tokens, valid = handle.get_tensor("tokens"), handle.get_tensor("valid")
        except Exception as exc:  # safetensors raises its own error type for damaged files
            raise CorruptCacheFileError(f"{path}: cannot read cache file ({exc})") from exc
        return SceneFeatures(scene_id, tokens, valid, stored_ids, source_grid)
