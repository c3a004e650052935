"""One job run at a time per output folder: an exclusive, non-blocking ``flock``.

The lock is held on ``OUT/job/lock`` for the whole run and released by the kernel when the
process ends, however it ends (kill -9 included), so a stale lock never blocks the next run.
The holder's pid and start time are written into the file for the "held by" message.
"""

from __future__ import annotations

import fcntl
import os
from datetime import datetime, timezone
from pathlib import Path

from pipeline.errors import P11lensError

EXIT_LOCKED = 3


class LockHeld(P11lensError):
    """Another run holds the job's lock (exit 3)."""

    exit_code = EXIT_LOCKED


class JobLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> JobLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            finally:
                os.close(fd)
            raise LockHeld(f"another job run holds {self.path} ({holder}); not starting") from None
        os.ftruncate(fd, 0)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()}, since {stamp}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
