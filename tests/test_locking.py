"""Advisory locks: a second taker is refused naming the holder, and a killed holder never blocks anyone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from threedrs.locking import FileLock, LockedError, describe_holder


def is_locked(path) -> bool:
    """True when some holder has the lock on ``path``: a second FileLock (another open file) cannot take it."""
    try:
        FileLock(path, "probe").acquire().release()
    except LockedError:
        return True
    return False


def test_second_taker_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "run" / ".lock"
    with FileLock(path, "the run folder run"):
        assert is_locked(path)
        with pytest.raises(LockedError, match=rf"the run folder run is in use by process {os.getpid()} on .* since"):
            FileLock(path, "the run folder run").acquire(wait=0.3)
    assert not is_locked(path)
    FileLock(path, "again").acquire().release()
    (tmp_path / "garbage").write_text("not json")
    assert describe_holder(tmp_path / "garbage") == "another process"


def test_a_killed_holder_leaves_the_lock_free(tmp_path):
    path = tmp_path / ".lock"
    code = (f"import time; from threedrs.locking import FileLock; held = FileLock({str(path)!r}, 'x').acquire(); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert is_locked(path)
    with pytest.raises(LockedError, match=f"process {holder.pid}"):
        FileLock(path, "x").acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with FileLock(path, "x").acquire(wait=5.0):  # the file is still there, the lock is not
        assert path.is_file()
