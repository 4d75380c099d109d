"""Writing files so that nothing is ever left half-written: write a temporary file, then rename it."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import unicodedata
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600, and writers that replace the file (safetensors) do too: give the finished
        # file the permissions the user's umask asks for, as open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def escape_text(text: str) -> str:
    """One line per result: backslashes, newlines, carriage returns, tabs and other control characters escaped."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return _escape_controls(text, keep="")


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters other than newline and tab (a NUL byte, an escape
    sequence, a carriage return) are shown as ``\\xNN`` instead of acting on the terminal."""
    return _escape_controls(text, keep="\n\t")


def _escape_controls(text: str, keep: str) -> str:
    if all(c.isprintable() or c in keep or c == " " for c in text):
        return text
    out = []
    for c in text:
        if c in keep or unicodedata.category(c) not in ("Cc", "Cs", "Co", "Cn"):
            out.append(c)
        else:
            code = ord(c)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def default_cache_dir() -> Path:
    """``$SAESTEER_CACHE`` or ``~/.cache/saesteer`` (read on every call, so tests can redirect it)."""
    env = os.environ.get("SAESTEER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "saesteer"
