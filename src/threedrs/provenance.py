"""Provenance: what produced an output folder, so that nothing is reused for a run it does not belong to.

A record is a JSON mapping kept in ``<folder>/provenance.json`` (training run folders, evaluation run folders)
or inside the feature cache's manifest and scene files. Its sections, as each command fills them:

- ``code``: ``{"threedrs": package version, "source_sha256": digest of the package's .py files}``; only the
  version is compared (a local edit is recorded, not refused);
- ``config``: the config values that change the outputs (`config_fields`), dotted keys; ``data.root`` is kept
  but not compared (the files under it are fingerprinted, so a dataset moved with its times is the same data);
- ``checkpoint``: ``{"path", "sha256"}`` of the weights evaluated (eval);
- ``benchmarks``: per benchmark ``{"split", "limit", "ids", "files"}`` (eval);
- ``teacher``: ``{"weights_checksum", "channels"}`` of the feature cache (train);
- ``data``: file fingerprints and digests of what was read (annotation files, scene files, feature cache).

A file fingerprint is ``[size in bytes, mtime in ns]`` per file, plus its sha256 when asked to verify
(`fingerprint_files`); paths are relative to the dataset root, so a moved root keeps its fingerprints.

Before a command reuses a folder it compares the folder's record with its own (`differences`); any difference
is refused with the differing fields named (`ProvenanceError`), unless the user passes ``--overwrite``, which
starts the folder afresh. One comparison serves every command, the feature cache's spec included.
"""

from __future__ import annotations

import functools
import hashlib
import json
import reprlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from threedrs import __version__
from threedrs.config import ExperimentConfig, to_dict
from threedrs.json_files import read_json_file, write_json_atomic

__all__ = [
    "RECORD",
    "ProvenanceError",
    "changed_files",
    "code_version",
    "config_fields",
    "differences",
    "digest",
    "file_sha256",
    "fingerprint_files",
    "read_record",
    "names",
    "refuse_if_different",
    "relative_path",
    "scene_digest",
    "write_record",
]

RECORD = "provenance.json"
# recorded for people, never a reason to refuse: the content behind these paths is fingerprinted instead
NOT_COMPARED = ("code.source_sha256", "checkpoint.path", "config.data.root")
_short = reprlib.Repr()
_short.maxstring, _short.maxlist, _short.maxdict, _short.maxother = 48, 4, 4, 48

# config keys that never change what a command writes (prefix match on dotted keys)
_NOT_OUTPUTS = {
    "train": ("name", "output_dir", "data.split", "eval.", "probe.", "synth.", "teacher.cache_dir",
              "teacher.batch_frames", "teacher.dtype", "train.num_workers", "train.log_every", "train.save_every",
              "correspondence.recall"),
    "eval": ("name", "output_dir", "data.split", "train.", "probe.", "synth.", "teacher.", "eval.benchmarks",
             "eval.limit", "eval.split", "eval.checkpoint", "eval.meteor", "correspondence.recall_memory_mb"),
}


class ProvenanceError(ValueError):
    """A folder was made by another run than this one (fields named), or its record cannot be read."""


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 16 MiB chunks (weights files are several GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def digest(value: object) -> str:
    """sha256 of a JSON value in canonical form (sorted keys): one short string for a large record section."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def code_version() -> dict[str, str]:
    """The package version and a digest of its source files (the ``code`` section)."""
    return {"threedrs": __version__, "source_sha256": _source_sha256()}


@functools.cache
def _source_sha256() -> str:
    """Digest of the package's .py files (paths and bytes), read once per process."""
    package = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def config_fields(cfg: ExperimentConfig, command: str) -> dict[str, object]:
    """The dotted config values that change what ``command`` ("train" or "eval") writes."""
    flat = _flatten(to_dict(cfg))
    return {k: v for k, v in flat.items() if not k.startswith(_NOT_OUTPUTS[command])}


def fingerprint_files(paths: Iterable[Path], root: Path | None, verify: bool = False,
                      known: dict[str, list] | None = None) -> dict[str, list]:
    """``{path relative to root: [size, mtime_ns]}`` (``[size, mtime_ns, sha256]`` with ``verify``).

    A path outside ``root`` (every path when ``root`` is None) is kept as given; a missing file raises
    FileNotFoundError naming it. known: ``[size, mtime_ns, sha256]`` of files this process has just hashed (the
    ``fresh`` of `changed_files`, same keys): a file whose size and mtime still match keeps that sha256 instead of
    being read again.
    """
    out: dict[str, list] = {}
    for path in paths:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: file not found") from None
        name = str(path) if root is None else relative_path(path, root)
        entry: list = [stat.st_size, stat.st_mtime_ns]
        if verify:
            seen = (known or {}).get(name)
            entry.append(seen[2] if seen is not None and list(seen[:2]) == entry else file_sha256(path))
        out[name] = entry
    return out


def changed_files(stored: dict[str, list], root: Path, verify: bool = False,
                  fresh: dict[str, list] | None = None) -> list[str]:
    """The files of a fingerprint that changed since (missing, other size, other mtime), in stored order.

    A file whose size or mtime changed but whose stored sha256 still matches is unchanged (a copy that lost its
    times). With ``verify`` every file with a stored sha256 is hashed and compared; a file recorded without one
    (fingerprinted without ``verify``) is unchanged when its size and mtime are: there is no content to compare
    it with. fresh: when given, receives ``[size, mtime_ns, sha256]`` of every file hashed here, for
    `fingerprint_files` (``known``) to reuse.
    """
    changed = []
    for name, entry in stored.items():
        path = Path(name) if Path(name).is_absolute() else root / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            changed.append(name)
            continue
        same_stat = [stat.st_size, stat.st_mtime_ns] == list(entry[:2])
        if len(entry) < 3:
            if not same_stat:
                changed.append(name)
            continue
        if same_stat and not verify:
            continue
        if stat.st_size != entry[0]:
            changed.append(name)
            continue
        sha = file_sha256(path)
        if fresh is not None:
            fresh[name] = [stat.st_size, stat.st_mtime_ns, sha]
        if sha != entry[2]:
            changed.append(name)
    return changed


def differences(stored: dict, current: dict, prefix: str = "", any_none: bool = False) -> list[str]:
    """One "key: recorded X, this run has Y" line per differing leaf of two nested mappings.

    A key present on one side only differs; with ``any_none``, a None in ``current`` matches anything. Keys that
    are recorded for people but never compared (`NOT_COMPARED`: the source digest, the checkpoint's path, the
    dataset root) are skipped.
    """
    out = []
    a, b = _flatten(stored, prefix), _flatten(current, prefix)
    for key in list(dict.fromkeys([*b, *a])):
        if key in NOT_COMPARED or (any_none and key in b and b[key] is None):
            continue
        if key not in a or key not in b or a[key] != b[key]:
            have = _short.repr(a[key]) if key in a else "nothing"
            want = _short.repr(b[key]) if key in b else "nothing"
            if (isinstance(a.get(key), list) and isinstance(b.get(key), list)
                    and max(len(a[key]), len(b[key])) > _short.maxlist):
                have, want = f"{len(a[key])} entries {have}", f"{len(b[key])} entries {want}"
            out.append(f"{key}: recorded {have}, this run has {want}")
    return out


def refuse_if_different(stored: dict, current: dict, what: str, remedy: str,
                        error: type[Exception] = ProvenanceError, any_none: bool = False) -> None:
    """``error`` naming up to 5 differing fields of ``what`` (`differences`, ``any_none`` as there) unless the two
    records agree: the one refusal of every folder and cache that another run made."""
    diff = differences(stored, current, any_none=any_none)
    if diff:
        more = f" (and {len(diff) - 5} more)" if len(diff) > 5 else ""
        raise error(f"{what} was made by another run: {'; '.join(diff[:5])}{more}; {remedy}")


def read_record(folder: Path) -> dict | None:
    """``folder/provenance.json`` as a mapping, None when absent; ProvenanceError naming the file if unreadable."""
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    return read_json_file(path, ProvenanceError, expect=dict, shape="a JSON mapping",
                          hint="delete the folder or rerun with --overwrite")


def write_record(folder: Path, record: dict) -> None:
    """Write ``folder/provenance.json`` atomically."""
    write_json_atomic(Path(folder) / RECORD, record)


def relative_path(path: Path, root: Path) -> str:
    """`path` relative to `root` in POSIX form (paths are recorded so that a moved dataset keeps them); a path
    outside `root` as it is."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    """Nested mappings to {"a.b.c": leaf}; lists and tuples are leaves (tuples as lists)."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(item, dict) and item:
                out.update(_flatten(item, name))
            else:
                out[name] = _leaf(item)
        return out
    return {prefix: _leaf(value)}


def _leaf(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return [_leaf(v) for v in value]
    return value


def scene_digest(root: Path, scene_id: str, frame_ids: list[str], axis_alignment: str) -> str:
    """Digest of the fingerprint (size, mtime) of every file of a scene that a run reads: the frames of its frame
    list, intrinsics, alignment, instances (`threedrs.data.scene.Scene.source_files`); one entry of a record's
    ``data.scenes`` / ``benchmarks.<name>.scenes``."""
    from threedrs.data.scene import Scene

    files = Scene(root, scene_id, axis_alignment).source_files(frame_ids, objects=True)
    return digest(fingerprint_files(files, root))


def names(values: Sequence[str], limit: int = 5) -> str:
    """"a, b, c and 4 more" for messages."""
    shown = ", ".join(values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")
