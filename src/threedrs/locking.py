"""Advisory file locks (``fcntl.flock``) so that two threedrs processes never write the same output at once.

A lock is a small file next to what it protects (``<run>/.lock``, ``<predictions>.jsonl.lock``,
``<cache_dir>/.lock``, ``<cache_dir>/.locks/<scene>.lock``). The holder writes who it is into the file (pid,
host, command line, start time) so that a refused process can name it. The operating system releases a flock
when its holder exits, however it exits (kill -9 included), so a lock file left on disk never blocks anyone: it
is only a name to lock, and stale holder text is overwritten by the next holder.

flock locks belong to an open file: two `FileLock` objects on one path conflict even inside one process, which
is what the tests use. On network file systems flock is only as reliable as the server's lock support.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

__all__ = ["FileLock", "LockedError", "describe_holder"]


class LockedError(RuntimeError):
    """Another process holds the lock; the message names what is locked and who holds it."""


class FileLock:
    """An exclusive advisory lock on ``path`` (created if missing), held from `acquire` until `release`.

    what: words for messages ("the run folder runs/x"). Use as a context manager or call acquire/release.
    """

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.what = what
        self._handle = None

    def acquire(self, wait: float = 0.0) -> FileLock:
        """Take the lock, waiting up to ``wait`` seconds; LockedError naming the holder when it stays taken."""
        if self._handle is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = describe_holder(self.path)
                    handle.close()
                    raise LockedError(f"{self.what} is in use by {holder} (lock {self.path}); wait for it to "
                                      f"finish, or stop it") from None
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "command": " ".join(sys.argv)[:300], "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Give the lock back (the lock file stays: it is only a name to lock)."""
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


def describe_holder(path: Path) -> str:
    """"process 123 on host (threedrs eval ..., since 2025-01-01 12:00:00)" from a lock file, or a vaguer text."""
    try:
        info = json.loads(path.read_text())
        return (f"process {info['pid']} on {info['host']} ({info['command'] or 'unknown command'}, "
                f"since {info['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"

