"""Exclusive locks on output folders, so that two processes never write one folder at once.

``FolderLock(folder).acquire()`` takes an OS lock (``filelock``; ``flock`` on POSIX) on a hidden file beside
the folder, ``.NAME.lock`` (beside, not inside: a folder that is built elsewhere and renamed into place, such
as a merge output or a new SAE, is locked before it exists). The holder writes its pid, host and start time
into that file; a second process is refused at once with one line that names them. The OS drops the lock
when its holder dies (even on SIGKILL), so a lock left by a dead process never blocks the next run.

>>> with FolderLock("sweeps/l6", what="sweep folder"):      # doctest: +SKIP
...     ...
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path

from filelock import FileLock, Timeout

from saesteer.errors import SaesteerError


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``: ``.NAME.lock`` in its parent folder."""
    folder = Path(os.path.abspath(folder))
    return folder.parent / f".{folder.name}.lock"


class FolderLock:
    """An exclusive, non-blocking lock on ``folder`` for one run (re-entrant within one object)."""

    NAME = ".lock"
    """Suffix of lock files (so folder listings can skip them)."""

    def __init__(self, folder: str | os.PathLike, *, what: str = "folder"):
        self.folder = Path(folder)
        self.what = what
        self.path = lock_path(folder)
        self._lock: FileLock | None = None

    def acquire(self) -> "FolderLock":
        """Take the lock, or raise a one-line ``SaesteerError`` naming the process that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(self.path, timeout=0)
            lock.acquire()
        except Timeout:
            raise SaesteerError(f"{self.folder} is in use: another saesteer run ({self.holder()}) is writing this"
                                f" {self.what}; wait for it to end, or stop it") from None
        except OSError as e:
            raise SaesteerError(f"cannot lock {self.folder} ({e.strerror or e}): check that its parent folder is"
                                " writable") from None
        self._lock = lock
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        try:
            self.path.write_text(json.dumps(info) + "\n", encoding="utf-8")
        except OSError:
            pass  # the lock holds without its note
        return self

    def holder(self) -> str:
        """``pid P on HOST since T`` from the lock file (what is known of it)."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']}, since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    @property
    def held(self) -> bool:
        return self._lock is not None

    def release(self) -> None:
        if self._lock is not None:
            try:
                self.path.write_text("", encoding="utf-8")
            except OSError:
                pass
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
