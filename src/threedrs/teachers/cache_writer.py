"""Writing the teacher-feature cache (`threedrs extract`); the layout and the readers are in `threedrs.teachers.cache`.

Several processes may extract into one cache at once (the ranks of a multi-GPU launch, or two runs started by
hand): the manifest is checked and written under the cache's ``.lock``, and each scene is extracted only by the
process that holds its lock ``.locks/<scene_id>.lock`` (`claim`); another process skips that scene and says so.
Temporary files of a scene are removed only by the holder of its lock, so a live writer's file is never touched.
"""

from __future__ import annotations

import errno
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from threedrs import __version__
from threedrs.json_files import read_json_file, write_atomic, write_json_atomic
from threedrs.locking import FileLock, LockedError
from threedrs.teachers.cache import (FORMAT, FORMAT_VERSION, FRAME_LISTS, MANIFEST, SUFFIX, VALIDITY_RULE,
                                     CacheError, CacheMismatchError, CacheSpec, CorruptCacheFileError,
                                     check_cache_file, file_sources, file_spec, read_manifest,
                                     refuse_other_spec, stale_sources)

__all__ = ["CacheWriter", "DiskFullError", "clear_cache"]

_STORED_DTYPE = torch.float16
_LOCK_WAIT = 60.0  # seconds a process waits for the cache's .lock (held only while the manifest is written)


class DiskFullError(CacheError):
    """The disk ran full while writing a cache file; the temporary file was removed."""


def clear_cache(directory: str | Path) -> None:
    """Delete what `threedrs extract` wrote into ``directory`` (scene files, temporaries, manifest, frame lists).

    Scene files are deleted only from a threedrs cache: a folder holding ``*.safetensors`` files without a
    readable threedrs manifest is refused (CacheError naming it), so ``teacher.cache_dir`` pointed at a model
    folder by mistake loses nothing. LockedError while another process extracts into it.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    if any(SUFFIX in p.name for p in directory.iterdir()):
        try:
            manifest = read_json_file(directory / MANIFEST, CacheError, expect=dict)
        except CacheError as exc:
            raise CacheError(f"{directory}: not a threedrs feature cache ({exc}), so --overwrite deletes nothing "
                             f"there; point teacher.cache_dir at the cache, or delete the folder yourself") from None
        if manifest.get("format") != FORMAT:
            raise CacheError(f"{directory}: not a threedrs feature cache ({MANIFEST} is another program's), so "
                             f"--overwrite deletes nothing there; point teacher.cache_dir at the cache")
    with FileLock(directory / ".lock", f"the feature cache {directory}").acquire(_LOCK_WAIT):
        busy = [p.stem for p in (directory / ".locks").glob("*.lock")] if (directory / ".locks").is_dir() else []
        for scene in busy:
            FileLock(directory / ".locks" / f"{scene}.lock", f"scene {scene} of {directory}").acquire().release()
        for path in directory.iterdir():
            if path.name in (MANIFEST, FRAME_LISTS) or SUFFIX in path.name or path.name.startswith(FRAME_LISTS):
                path.unlink()
        shutil.rmtree(directory / ".locks", ignore_errors=True)


class CacheWriter:
    """Writes scene files into a cache directory for one CacheSpec (used by `threedrs extract`).

    On creation the manifest is checked when present (mismatch: CacheMismatchError naming each field) or,
    when absent and ``write_manifest`` is true, written BEFORE any scene file (rank 0 of a multi-process
    extraction writes it; other ranks only check). ``source_grid`` is recorded for information;
    ``weights_files`` ({absolute path: [bytes, mtime_ns]} of the teacher's weight files, taken before they were
    hashed into ``spec.weights_checksum``) lets training trust that checksum while the files keep their size and
    modification time (`threedrs.teachers.base.expected_identity`); a matching manifest gets the current ones.
    """

    def __init__(self, directory: str | Path, spec: CacheSpec, source_grid: tuple[int, int],
                 write_manifest: bool = True, weights_files: dict[str, list] | None = None):
        self.directory = Path(directory)
        self.spec = spec
        self._claims: dict[str, FileLock] = {}
        if spec.weights_checksum is None or spec.channels is None:
            raise ValueError("spec: a writer needs the teacher's weights_checksum and channels")
        if self.directory.exists() and not self.directory.is_dir():
            raise CacheError(f"teacher.cache_dir {self.directory}: not a folder")
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest_path = self.directory / MANIFEST
        with FileLock(self.directory / ".lock", f"the feature cache {self.directory}").acquire(_LOCK_WAIT):
            if manifest_path.is_file():
                manifest = read_manifest(self.directory)
                refuse_other_spec(CacheSpec.from_mapping(manifest, manifest_path), spec,
                                  f"feature cache {self.directory}")
                if write_manifest and weights_files and manifest.get("weights_files") != weights_files:
                    write_json_atomic(manifest_path, {**manifest, "weights_files": weights_files})
            elif write_manifest:
                manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(spec),
                            "source_grid": list(source_grid), "validity": VALIDITY_RULE,
                            "package_version": __version__, "weights_files": weights_files or {}}
                write_json_atomic(manifest_path, manifest)

    def path(self, scene_id: str) -> Path:
        return self.directory / f"{scene_id}{SUFFIX}"

    def claim(self, scene_id: str) -> FileLock | None:
        """Take the scene's lock (held until `release`); None when another process holds it (extracting it)."""
        lock = FileLock(self.directory / ".locks" / f"{scene_id}.lock", f"scene {scene_id} of {self.directory}")
        try:
            self._claims[scene_id] = lock.acquire()
        except LockedError:
            return None
        return lock

    def release(self, scene_id: str) -> None:
        """Give back a scene taken with `claim`."""
        lock = self._claims.pop(scene_id, None)
        if lock is not None:
            lock.release()

    def status(self, scene_id: str, frame_ids: list[str], root: Path, verify: bool = False,
               fresh: dict[str, list] | None = None) -> tuple[str, list[str]]:
        """(state, the stale source files) of a scene's file; states:

        - "done": a whole file for this spec and these frames, computed from the current files under ``root``;
        - "missing", "corrupt": no file, or a truncated / damaged one;
        - "stale": its source files changed since (listed; `stale_sources`), or it has no fingerprint of them;
        - "unhashed" (only with ``verify``): done, but fingerprinted without sha256, so its content cannot be
          compared: `threedrs extract --verify` hashes the files now and records it (`record_sources`).

        "missing", "corrupt" and "stale" are extracted again. A whole file written for another spec or other
        frames raises CacheMismatchError: it is not redone silently. fresh: as `stale_sources`'s.
        """
        path = self.path(scene_id)
        if not path.is_file():
            return "missing", []
        try:
            header = check_cache_file(path)
            spec, stored_ids, _ = file_spec(path, header)
            sources = file_sources(path, header)
        except CorruptCacheFileError:
            return "corrupt", []
        refuse_other_spec(spec, self.spec, f"cache file {path}")
        if stored_ids != list(frame_ids):
            raise CacheMismatchError(f"{path}: extracted for frames {stored_ids}, the run's frame list is "
                                     f"{list(frame_ids)}; delete the file or use another teacher.cache_dir")
        changed = stale_sources(sources, Path(root), verify, fresh)
        if changed:
            return "stale", changed
        if verify and any(len(entry) < 3 for entry in sources.values()):
            return "unhashed", []
        return "done", []

    def record_sources(self, scene_id: str, sources: dict[str, list]) -> Path:
        """Replace the "sources" fingerprint of a scene's whole file (its features and other metadata are kept);
        what `threedrs extract --verify` does to an "unhashed" scene instead of running the teacher again."""
        path = self.path(scene_id)
        metadata = dict(check_cache_file(path)["__metadata__"])
        metadata["sources"] = json.dumps(sources)
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in ("tokens", "valid")}
        self._store(scene_id, safetensors_bytes(tensors, metadata=metadata))
        return path

    def write(self, scene_id: str, tokens: Tensor, valid: Tensor, frame_ids: list[str],
              source_grid: tuple[int, int], sources: dict[str, list] | None = None) -> Path:
        """Store one scene: tokens [S, h, w, C] (any float dtype; stored float16, zeros where invalid),
        valid [S, h, w] bool, the S frame ids, the teacher's native grid and the fingerprint of the source files
        (`threedrs.provenance.fingerprint_files`). Returns the final path. Takes the scene's lock unless
        `claim` did (LockedError naming the holder when another process has it).

        Raises ValueError for shapes that do not match the spec, CacheError for values beyond float16,
        DiskFullError when the disk runs full (no partial file is left behind).
        """
        frames = len(frame_ids)
        want = [frames, *self.spec.grid, self.spec.channels]
        if list(tokens.shape) != want or not tokens.is_floating_point():
            raise ValueError(f"tokens: expected a float tensor {want} for {scene_id}, got {tokens.dtype} "
                             f"{list(tokens.shape)}")
        if list(valid.shape) != want[:3] or valid.dtype != torch.bool:
            raise ValueError(f"valid: expected a bool tensor {want[:3]} for {scene_id}, got {valid.dtype} "
                             f"{list(valid.shape)}")
        valid = valid.detach().cpu().contiguous()
        stored = torch.where(valid[..., None], tokens.detach().cpu().float(), 0.0).to(_STORED_DTYPE).contiguous()
        if not bool(torch.isfinite(stored).all()):
            raise CacheError(f"{scene_id}: teacher features are non-finite or beyond the float16 range "
                             f"(|x| > 65504) at valid tokens; check the teacher's dtype (try teacher.dtype=float32)")
        metadata = {**self.spec.to_metadata(), "scene_id": json.dumps(scene_id),
                    "frame_ids": json.dumps(list(frame_ids)), "source_grid": json.dumps(list(source_grid)),
                    "validity": json.dumps(VALIDITY_RULE), "package_version": json.dumps(__version__),
                    "sources": json.dumps(sources or {})}
        data = safetensors_bytes({"tokens": stored, "valid": valid}, metadata=metadata)
        return self._store(scene_id, data)

    def _store(self, scene_id: str, data: bytes) -> Path:
        """Write a scene's file bytes atomically under its lock (taken here unless `claim` took it); DiskFullError
        when the disk runs full. Returns the final path."""
        final = self.path(scene_id)
        held = scene_id in self._claims
        lock = self._claims[scene_id] if held else FileLock(self.directory / ".locks" / f"{scene_id}.lock",
                                                            f"scene {scene_id} of {self.directory}").acquire()
        try:
            for leftover in self.directory.glob(f"{final.name}.tmp-*"):  # its writer is gone: we hold the lock
                leftover.unlink(missing_ok=True)
            try:
                write_atomic(final, data)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DiskFullError(f"disk full while writing {final} ({len(data) / 1e6:.1f} MB); the partial "
                                        f"file was removed: free space and re-run to complete the cache") from exc
                raise
        finally:
            if not held:
                lock.release()
        return final
