"""Reading one JSON file, with the one-line error that names the file, and writing a file atomically (a foundation
module: any layer uses it).

Every whole-file JSON read of a user's or a run's file goes through `read_json_file`; the caller passes its own
error class, so a damaged annotation file stays a SceneDataError, a damaged checkpoint a CorruptCheckpointError,
and so on. Readers of JSON Lines (one record per line, errors naming the line) and of JSON inside other files
(a safetensors header) are not this: they report lines and offsets.

Every file threedrs replaces in place (records, manifests, cache files, metrics, frame lists, logs) is written by
`write_atomic`: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_KINDS = {dict: "a JSON object", list: "a JSON list"}


def read_json_file(path: str | Path, error: type[Exception] = ValueError, *, expect: type | None = None,
                   what: str = "file", shape: str | None = None, hint: str | None = None) -> Any:
    """The parsed content of the JSON file `path` (UTF-8, as JSON files are).

    error: the exception class raised for every problem below, with a message that starts with the path.
    expect: dict or list: the top-level value must be one (None = any JSON value).
    what: what the file is, for a missing file: "<path>: <what> not found".
    shape: the expected value in words for a wrong top-level type (default "a JSON object" / "a JSON list"):
        "<path>: expected <shape>".
    hint: what the user can do, appended to every message as "; <hint>".
    A file that is not UTF-8 or not JSON: "<path>: not valid JSON (<the parser's message>)".
    """
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if not path.is_file():
        raise error(f"{path}: {what} not found{tail}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc}){tail}") from None
    if expect is not None and not isinstance(value, expect):
        raise error(f"{path}: expected {shape or _KINDS[expect]}{tail}")
    return value


def write_atomic(path: str | Path, data: str | bytes, fsync: bool = True) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a temporary sibling ``<name>.tmp-<pid>`` renamed
    onto it, so a crash never leaves a half-written ``path``.

    fsync: flush the temporary file to disk before the rename (a power cut keeps the old or the new file).
    On any error the temporary file is removed and the error raised again (``path`` is left as it was).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, value: object, indent: int | None = 1, fsync: bool = True) -> None:
    """`write_atomic` of ``value`` as JSON text (``indent`` as json.dumps, a final newline); creates the parent."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(value, indent=indent) + "\n", fsync)
