"""A sweep's folder: ``manifest.json``, the append-only ``results.jsonl``, ``sentences.txt``, ``facts/``.

``results.jsonl`` is the one source of truth. Each batch of results is appended with a single write and
fsync'd, so a crash (even SIGKILL or power loss) leaves every earlier batch intact and at worst one cut
last line. On opening, the log is checked line by line: a cut or unreadable line is dropped, a repeated
``(feature, value)`` keeps its first copy, and the lines of a feature that lacks some of its values are
dropped too, so that feature is redone whole. If anything was dropped the log is rewritten atomically
before new lines are appended. ``sentences.txt`` is derived from the log, and rewritten atomically from it
at start, every manifest update and at the end, like everything else but the log (``saesteer.io``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from saesteer.errors import SaesteerError
from saesteer.io import atomic_path, atomic_write_json, escape_text

MANIFEST = "manifest.json"
RESULTS = "results.jsonl"
SENTENCES = "sentences.txt"
FACTS = "facts"
FORMAT = "saesteer-sweep"


def format_value(value: float) -> str:
    return f"{float(value):g}"


def sentence_line(record: dict) -> str:
    return f"{record['feature']}\t{format_value(record['value'])}\t{escape_text(record['text'])}\n"


def record_line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The sweep manifest of ``directory``, for the sweep and the commands that extend or trust it (resume,
    merge, top): None when there is none; a one-line error when it is unreadable or not a saesteer sweep's.
    The sweep browser reads leniently instead (:func:`read_manifest_lenient`)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise SaesteerError(f"{path} is not a readable sweep manifest; use another --out folder") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SaesteerError(f"{path} is not a saesteer sweep manifest; use another --out folder")
    return data


def read_manifest_lenient(directory: str | os.PathLike) -> dict:
    """The manifest of ``directory`` as it is, for readers that show what they can (the sweep browser): any
    JSON object, whatever its format (older versions, running sweeps); {} when missing or unreadable."""
    try:
        data = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class Scan:
    """What a results log holds once checked: where its good lines are, not the lines themselves."""

    entries: list[tuple[int, int, int, int]] = field(default_factory=list)
    """``(feature, value index, offset, length)`` of each kept line (complete features only), in file order."""
    complete: set[int] = field(default_factory=set)
    dropped: int = 0
    """Lines dropped: cut, unreadable, repeated, foreign, or of incomplete features."""
    cut_tail: bool = False

    @property
    def in_order(self) -> bool:
        """Whether the kept lines are sorted by feature, then value (in the sweep's order of values)."""
        keys = [e[:2] for e in self.entries]
        return all(a <= b for a, b in zip(keys, keys[1:]))

    def sorted_entries(self) -> list[tuple[int, int, int, int]]:
        return sorted(self.entries, key=lambda e: e[:2])


def _lines(path: Path):
    """``(offset, line)`` for each line of ``path``, the last one possibly without its newline."""
    with open(path, "rb") as f:
        offset = 0
        for line in f:
            yield offset, line
            offset += len(line)


def scan_results(path: str | os.PathLike, values: Sequence[float], features: set[int] | None = None) -> Scan:
    """Check ``results.jsonl`` line by line (streaming: memory holds four integers per line); keep the lines
    of features that have every value exactly once."""
    path = Path(path)
    scan = Scan()
    if not path.is_file():
        return scan
    index = {float(v): i for i, v in enumerate(values)}
    by_feature: dict[int, dict[int, tuple[int, int]]] = {}
    for offset, line in _lines(path):
        if not line.endswith(b"\n"):  # a write cut short
            if line.strip():
                scan.cut_tail = True
                scan.dropped += 1
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            f, vi = rec["feature"], index.get(float(rec["value"]))
            ok = (isinstance(f, int) and not isinstance(f, bool) and vi is not None
                  and (features is None or f in features) and isinstance(rec.get("text"), str))
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            scan.dropped += 1
            continue
        slot = by_feature.setdefault(f, {})
        if vi in slot:
            scan.dropped += 1
            continue
        slot[vi] = (offset, len(line))
    for f, slot in by_feature.items():
        if len(slot) == len(index):
            scan.complete.add(f)
            scan.entries.extend((f, vi, off, n) for vi, (off, n) in slot.items())
        else:
            scan.dropped += len(slot)
    scan.entries.sort(key=lambda e: e[2])
    return scan


def read_lines(path: str | os.PathLike, entries: Iterable[tuple[int, int, int, int]]):
    """The lines (bytes, with newline) at ``entries`` of ``path``, in the order given."""
    with open(path, "rb") as f:
        for _, _, offset, length in entries:
            f.seek(offset)
            yield f.read(length)


def sort_key(values: Sequence[float]):
    index = {float(v): i for i, v in enumerate(values)}
    return lambda rec: (rec["feature"], index.get(float(rec["value"]), len(index)))


def write_lines(directory: Path, lines: Iterable[bytes]) -> None:
    """Write ``results.jsonl`` (these lines) and ``sentences.txt`` (from them) atomically, in one pass."""
    with atomic_path(directory / RESULTS) as tmp_r, atomic_path(directory / SENTENCES) as tmp_s:
        with open(tmp_r, "wb") as fr, open(tmp_s, "w", encoding="utf-8") as fs:
            for line in lines:
                fr.write(line)
                fs.write(sentence_line(json.loads(line)))
            fr.flush()
            os.fsync(fr.fileno())


def write_records(directory: Path, records: Iterable[dict]) -> None:
    """Write ``results.jsonl`` and ``sentences.txt`` atomically from ``records`` (in the given order)."""
    write_lines(directory, (record_line(r) for r in records))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class ResultStore:
    """An open sweep folder: which features are done, and an append-only log for new ones.

    ``sentences.txt`` is derived from the log: its lines are kept in memory and the file is rewritten
    atomically by :meth:`flush_sentences` (the runner calls it with every manifest update) and on close.
    """

    def __init__(self, directory: str | os.PathLike, values: Sequence[float], features: set[int] | None = None):
        self.directory = Path(directory)
        self.values = tuple(float(v) for v in values)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / RESULTS
        scan = scan_results(path, self.values, features)
        self.done: set[int] = scan.complete
        self.repaired = scan.dropped
        self._index = {v: i for i, v in enumerate(self.values)}
        repair = bool(scan.dropped) or not path.exists()
        entries = scan.sorted_entries() if repair else scan.entries
        self._sentences = [sentence_line(json.loads(line)) for line in read_lines(path, entries)] if path.exists() else []
        self._flushed = -1
        if repair:  # rewrite the log with its good lines only (and sorted, which costs nothing more)
            self._rewrite(entries)
            self._flushed = len(self._sentences)
        self._sorted = all(a[:2] <= b[:2] for a, b in zip(entries, entries[1:]))
        self._last_key = entries[-1][:2] if entries else None
        self.flush_sentences()
        self._results_fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def _rewrite(self, entries) -> None:
        path = self.directory / RESULTS
        if path.exists():
            write_lines(self.directory, read_lines(path, entries))
        else:
            write_lines(self.directory, [])

    def append(self, records: Sequence[dict]) -> None:
        """Append the records of whole features (every value of each); durable when this returns."""
        if not records:
            return
        if self._results_fd is None:
            raise SaesteerError("this sweep folder was closed; open it again to add results")
        _write_all(self._results_fd, b"".join(record_line(r) for r in records))
        os.fsync(self._results_fd)
        self._sentences.extend(sentence_line(r) for r in records)
        for r in records:
            k = (r["feature"], self._index.get(float(r["value"]), len(self._index)))
            if self._last_key is not None and k < self._last_key:
                self._sorted = False
            self._last_key = k
        self.done.update(r["feature"] for r in records)

    def flush_sentences(self) -> None:
        """Rewrite ``sentences.txt`` (atomically) if results came since the last time."""
        if self._flushed == len(self._sentences):
            return
        with atomic_path(self.directory / SENTENCES) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(self._sentences)
        self._flushed = len(self._sentences)

    def close(self) -> None:
        fd = getattr(self, "_results_fd", None)
        if fd is not None:
            os.close(fd)
            self._results_fd = None
            self.flush_sentences()

    def finalise(self) -> None:
        """Close, and leave both files sorted by feature then value (rewritten only when needed)."""
        self.close()
        if not self._sorted:
            scan = scan_results(self.directory / RESULTS, self.values)
            self._rewrite(scan.sorted_entries())
            self._sorted = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_records(directory: str | os.PathLike, values: Sequence[float] | None = None) -> list[dict]:
    """The valid records of a sweep folder, in file order (values from its manifest unless given)."""
    directory = Path(directory)
    if values is None:
        manifest = read_manifest(directory)
        if manifest is None:
            raise SaesteerError(f"{directory} is not a sweep folder (no {MANIFEST}); run saesteer sweep --out {directory}")
        values = manifest["sweep"]["values"]
    scan = scan_results(directory / RESULTS, values)
    return [json.loads(line) for line in read_lines(directory / RESULTS, scan.entries)]


def write_manifest(directory: str | os.PathLike, manifest: dict) -> None:
    atomic_write_json(Path(directory) / MANIFEST, manifest)
