"""Outputs: checked before any work starts, and folders replaced as a whole.

* :func:`check_output_file` / :func:`check_output_folder` fail in one line, before a model is even loaded,
  when a result could not be written there (``--out /proc/sae``, a read-only disk, a file where a folder
  should be). They write a nameless probe file (``O_TMPFILE`` on Linux), so a kill leaves nothing behind.
  A file output's folder must exist: a typo in ``--out missing/dir/f.txt`` is refused, not created.
* :func:`staged_folder` builds a folder in a hidden sibling and swaps it in only once complete, so a reader
  sees the old folder or the new one, never a mix (new weights with an old ``cfg.json``). Leftovers of a
  killed swap are cleaned (or the old folder restored) on the next call.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from saesteer.errors import SaesteerError


def _probe(folder: Path, shown: str, what: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise SaesteerError(f"cannot write {what} {shown}: {exc.strerror or exc} in {folder}; choose another"
                            " path") from None


def _valid(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, refused in one line when no file system could hold it (too long, NUL byte...)."""
    path = Path(path)
    try:
        os.lstat(path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        if not isinstance(exc, OSError) or exc.errno not in (errno.ENOTDIR, errno.EACCES):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SaesteerError(f"cannot use {what} {str(path)[:200]!r}: {reason}; choose another path") from None
    return path


def check_output_file(path: str | os.PathLike, what: str = "the output") -> Path:
    """Refuse (one line) unless ``path`` can be written as a file: its folder exists and takes new files."""
    path = _valid(path, what)
    if path.is_dir():
        raise SaesteerError(f"cannot write {what} {path}: it is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SaesteerError(f"cannot write {what} {path}: folder {parent} does not exist; create it first"
                            " (saesteer does not create folders for a single file)")
    _probe(parent, str(path), what)
    if path.exists() and not os.access(path, os.W_OK):
        raise SaesteerError(f"cannot write {what} {path}: the file is read-only")
    return path


def check_output_folder(path: str | os.PathLike, what: str = "the output folder") -> Path:
    """Refuse (one line) unless ``path`` is a writable folder or can be created (with its parents)."""
    path = _valid(path, what)
    if path.exists() and not path.is_dir():
        raise SaesteerError(f"cannot use {what} {path}: it is a file, not a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise SaesteerError(f"cannot create {what} {path}: {existing} is a file, not a folder")
    _probe(existing, str(path), what)
    return path


def _pid_alive(pid: int) -> bool:
    import psutil

    return pid == os.getpid() or psutil.pid_exists(pid)


def _leftovers(target: Path, kind: str) -> list[Path]:
    """Hidden siblings of ``target`` left by a dead process (``kind``: ``tmp`` or ``old``)."""
    out = []
    prefix = f".{target.name}.saesteer-{kind}-"
    for p in target.parent.glob(f".{target.name}.saesteer-{kind}-*") if target.parent.is_dir() else ():
        pid = p.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            out.append(p)
    return out


def clean_leftovers(target: str | os.PathLike) -> None:
    """Undo what a killed :func:`staged_folder` left: restore the old folder if the new one never arrived,
    remove half-built and replaced copies."""
    target = Path(target)
    olds = _leftovers(target, "old")
    if olds and not target.exists():
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.replace(newest, target)
        olds.remove(newest)
    for p in olds + _leftovers(target, "tmp"):
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike, *, replace: bool = False):
    """Yield an empty hidden sibling folder of ``target``; on success it becomes ``target``.

    ``target`` must be absent or empty unless ``replace``; an existing one is then renamed aside, the new
    one renamed in, and the old one deleted (a kill in between leaves the old folder aside, restored by the
    next call). On an error the staging folder is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    tag = f"{os.getpid()}-"
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saesteer-tmp-{tag}", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            if not replace:
                raise SaesteerError(f"{target} is not empty; nothing was replaced")
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.saesteer-old-{tag}", dir=target.parent))
            os.replace(target, aside)
            os.replace(staging, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, target)  # also replaces an empty folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
