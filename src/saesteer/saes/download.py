"""Resumable HTTPS downloads into saesteer's cache: progress bar, size check, atomic rename.

Why not ``huggingface_hub``: OpenAI's SAEs live on Azure blob storage, not on the Hub. A file is
streamed into ``DEST.partial``; a cut connection is retried (with backoff) and resumed with an HTTP
``Range`` request, so a 200 MB file is never fetched twice. Only a complete file whose size matches
``Content-Length`` / ``Content-Range`` (and ``expected_size`` when given) is renamed onto ``DEST``,
so ``DEST`` is either absent or whole.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import requests
from tqdm.auto import tqdm

from saesteer import net
from saesteer.errors import SaesteerError
from saesteer.io import default_cache_dir  # re-exported: saes.download.default_cache_dir

OFFLINE_ENV_VARS = ("SAESTEER_OFFLINE", "HF_HUB_OFFLINE")
"""Either set to a true value forbids network access: uncached files fail at once."""

TIMEOUT = (10.0, 60.0)
"""(connect, read) timeouts in seconds for each request."""

_TRUE = {"1", "true", "yes", "on"}
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def is_offline() -> bool:
    """True when ``SAESTEER_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_ENV_VARS)


def how_to_fix(dest: Path) -> str:
    """The fix for a file we cannot fetch: get it some other way and pass its local path."""
    return f"download the file elsewhere and pass its local path, e.g. --sae /path/to/{dest.name}"


class _Transient(Exception):
    """A failure worth retrying (connection dropped, timeout, HTTP 5xx/429, short body)."""


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    progress: bool = True,
    expected_size: int | None = None,
    chunk: int = 1 << 20,
    retries: int = 4,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` unless it is already there; return ``dest``.

    Resumes from ``dest.partial`` with ``Range``; retries ``retries`` times on connection errors
    (sleeping ``backoff * 2**i`` seconds), then raises a one-line :class:`SaesteerError`. A size that
    disagrees with the server's or with ``expected_size`` deletes the partial file and raises.
    """
    dest = Path(dest)
    if dest.is_file():
        if expected_size is None or dest.stat().st_size == expected_size:
            return dest
        dest.unlink()  # a cached file of the wrong size is not the file we want
    if is_offline():
        raise SaesteerError(
            f"{dest.name} is not cached at {dest} and downloads are disabled (SAESTEER_OFFLINE or"
            f" HF_HUB_OFFLINE is set); unset it to download {url}, or {how_to_fix(dest)}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest.with_name(dest.name + ".lock")):  # parallel workers must not share a .partial
        if not dest.is_file():  # else another process finished it while we waited
            _download_locked(url, dest, progress, expected_size, chunk, retries, backoff)
    return dest


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive ``flock`` on ``lock_path``, removed on exit (no-op where ``fcntl`` is missing).

    The file is unlinked while still locked; a waiter that then gets the lock on the unlinked file
    notices (its inode is no longer at ``lock_path``) and starts over, so two holders never overlap.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process guard
        yield
        return
    while True:
        handle = open(lock_path, "a+b")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            if os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        handle.close()


def _download_locked(url, dest: Path, progress, expected_size, chunk, retries, backoff) -> None:
    """The retry loop of :func:`download_file`, run while holding DEST's lock."""
    partial = dest.with_name(dest.name + ".partial")
    failures = 0
    with requests.Session() as session:
        while True:
            try:
                total = _fetch_once(session, url, dest, expected_size, chunk, progress)
                size = partial.stat().st_size
                if total is not None and size < total:
                    raise _Transient(f"connection closed after {size} of {total} bytes")
                break
            except _Transient as exc:
                reason = str(exc)
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
            ) as exc:
                reason = type(exc).__name__
                if isinstance(exc, requests.ConnectionError) and not net.host_reachable(url):
                    raise SaesteerError(  # no answer at all: retrying with backoff would only wait
                        f"could not download {url}: its host cannot be reached (no network?); {how_to_fix(dest)}"
                    ) from None
            failures += 1
            if failures > retries:
                raise SaesteerError(
                    f"could not download {url} ({reason}; no network?) after {failures} tries;"
                    f" run again to resume, or {how_to_fix(dest)}"
                )
            time.sleep(backoff * 2 ** (failures - 1))

    size = partial.stat().st_size
    if (total is not None and size != total) or (expected_size is not None and size != expected_size):
        partial.unlink(missing_ok=True)
        want = expected_size if expected_size is not None else total
        raise SaesteerError(
            f"downloaded {url} has {size} bytes, expected {want}; the partial file was deleted, run again"
            f" to retry, or {how_to_fix(dest)}"
        )
    os.replace(partial, dest)


def _fetch_once(
    session: requests.Session,
    url: str,
    dest: Path,
    expected_size: int | None,
    chunk: int,
    progress: bool,
) -> int | None:
    """One GET that appends to ``DEST.partial`` (resuming with ``Range``); returns the total size if known."""
    partial = dest.with_name(dest.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    if expected_size is not None and have > expected_size:
        partial.unlink()
        have = 0
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = session.get(url, headers=headers, stream=True, timeout=TIMEOUT)
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as exc:
        raise SaesteerError(f"invalid download URL {url!r}: {exc}") from None
    with response:
        if response.status_code == 416 and have:
            total = _parse_content_range(response.headers.get("Content-Range"))[2]
            if total == have:
                return total  # the partial file is already complete
            partial.unlink()
            raise _Transient("server refused the resume range; restarting")
        have, mode, total = _resume_point(response, url, dest, have, expected_size)
        _write_body(response, partial, mode, have, total, chunk, progress)
        return total


def _resume_point(response, url: str, dest: Path, have: int, expected_size: int | None) -> tuple[int, str, int | None]:
    """``(bytes kept, file mode, total size or None)`` from the answer's status and headers: append where the
    server resumed at ``have``, start over where it ignored ``Range``; refusals and retries as one-line errors."""
    partial = dest.with_name(dest.name + ".partial")
    status = response.status_code
    if status == 429 or status >= 500:
        raise _Transient(f"HTTP {status}")
    if status not in (200, 206):
        raise SaesteerError(
            f"could not download {url}: HTTP {status} {response.reason}; check the SAE spec (family,"
            f" location, layer) or the base URL, or {how_to_fix(dest)}"
        )
    if status == 206:
        start, _, total = _parse_content_range(response.headers.get("Content-Range"))
        if start != have:
            partial.unlink()
            raise _Transient(f"server resumed at byte {start}, not {have}; restarting")
        mode = "ab"
    else:  # the server ignored Range (or there was none): start over
        have, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
    if expected_size is not None and total is not None and total != expected_size:
        partial.unlink(missing_ok=True)
        raise SaesteerError(
            f"{url} is {total} bytes on the server, expected {expected_size}; the file has changed or"
            f" the URL is wrong; {how_to_fix(dest)}"
        )
    return have, mode, total


def _write_body(response, partial: Path, mode: str, have: int, total: int | None, chunk: int, progress: bool) -> None:
    """Stream the answer's body into ``partial`` (fsynced even when the connection breaks), with a progress bar."""
    name = partial.name.removesuffix(".partial")
    with open(partial, mode) as f, tqdm(
        total=total,
        initial=have,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not progress,
        leave=False,
    ) as bar:
        try:
            for block in response.iter_content(chunk_size=chunk):
                f.write(block)
                bar.update(len(block))
        finally:
            f.flush()
            os.fsync(f.fileno())


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes START-END/TOTAL`` (or ``bytes */TOTAL``) -> (start, end, total); unknowns are None."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        raise _Transient(f"bad Content-Range header {value!r}")
    start, end, total = match.groups()
    as_int = lambda s: int(s) if s and s != "*" else None  # noqa: E731
    return as_int(start), as_int(end), as_int(total)
