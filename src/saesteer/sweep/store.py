"""A sweep's folder: ``manifest.json``, the append-only ``results.jsonl``, ``sentences.txt``, ``facts/``.

``results.jsonl`` is the one source of truth. Each batch of results is appended with a single write and
fsync'd, so a crash (even SIGKILL or power loss) leaves every earlier batch intact and at worst one cut
last line. On opening, the log is checked line by line: a cut or unreadable line is dropped, a repeated
``(feature, value)`` keeps its first copy, and the lines of a feature that lacks some of its values are
dropped too, so that feature is redone whole. If anything was dropped the log is rewritten atomically
before new lines are appended. ``sentences.txt`` is rebuilt from the log at every start and at the end;
in between it grows with the log. Everything else is written atomically (``saesteer.io``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from saesteer.errors import SaesteerError
from saesteer.io import atomic_path, atomic_write_json

MANIFEST = "manifest.json"
RESULTS = "results.jsonl"
SENTENCES = "sentences.txt"
FACTS = "facts"
FORMAT = "saesteer-sweep"


def escape_text(text: str) -> str:
    """One line per result: backslashes, newlines, carriage returns and tabs escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def format_value(value: float) -> str:
    return f"{float(value):g}"


def sentence_line(record: dict) -> str:
    return f"{record['feature']}\t{format_value(record['value'])}\t{escape_text(record['text'])}\n"


def record_line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def read_manifest(directory: str | os.PathLike) -> dict | None:
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


@dataclass
class Scan:
    """What a results log holds once checked."""

    records: list[dict] = field(default_factory=list)
    """Valid records of complete features, in file order."""
    complete: set[int] = field(default_factory=set)
    dropped: int = 0
    """Lines dropped: cut, unreadable, repeated, foreign, or of incomplete features."""
    cut_tail: bool = False


def scan_results(path: str | os.PathLike, values: Sequence[float], features: set[int] | None = None) -> Scan:
    """Read ``results.jsonl``; keep the records of features that have every value exactly once."""
    path = Path(path)
    scan = Scan()
    if not path.is_file():
        return scan
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty unless a write was cut
    if tail.strip():
        scan.cut_tail = True
        scan.dropped += 1
    wanted = set(float(v) for v in values)
    by_feature: dict[int, dict[float, dict]] = {}
    order: list[int] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            f, v = rec["feature"], float(rec["value"])
            ok = isinstance(f, int) and not isinstance(f, bool) and v in wanted and (features is None or f in features)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            scan.dropped += 1
            continue
        slot = by_feature.get(f)
        if slot is None:
            slot = by_feature[f] = {}
            order.append(f)
        if v in slot:
            scan.dropped += 1
            continue
        slot[v] = rec
    for f in order:
        slot = by_feature[f]
        if len(slot) == len(wanted):
            scan.complete.add(f)
            scan.records.extend(slot[float(v)] for v in values)
        else:
            scan.dropped += len(slot)
    return scan


def sort_key(values: Sequence[float]):
    index = {float(v): i for i, v in enumerate(values)}
    return lambda rec: (rec["feature"], index.get(float(rec["value"]), len(index)))


def write_records(directory: Path, records: Iterable[dict]) -> None:
    """Write ``results.jsonl`` and ``sentences.txt`` atomically from ``records`` (in the given order)."""
    records = list(records)
    with atomic_path(directory / RESULTS) as tmp:
        with open(tmp, "wb") as f:
            for rec in records:
                f.write(record_line(rec))
            f.flush()
            os.fsync(f.fileno())
    with atomic_path(directory / SENTENCES) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(sentence_line(r) for r in records)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class ResultStore:
    """An open sweep folder: which features are done, and an append-only log for new ones."""

    def __init__(self, directory: str | os.PathLike, values: Sequence[float], features: set[int] | None = None):
        self.directory = Path(directory)
        self.values = tuple(float(v) for v in values)
        self.directory.mkdir(parents=True, exist_ok=True)
        scan = scan_results(self.directory / RESULTS, self.values, features)
        self.done: set[int] = scan.complete
        self.repaired = scan.dropped
        self._key = sort_key(self.values)
        self._sorted = all(self._key(a) <= self._key(b) for a, b in zip(scan.records, scan.records[1:]))
        self._last_key = self._key(scan.records[-1]) if scan.records else None
        if scan.dropped or not (self.directory / RESULTS).exists():
            write_records(self.directory, scan.records)
        else:  # the log is clean: only the derived sentences file is rebuilt
            with atomic_path(self.directory / SENTENCES) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.writelines(sentence_line(r) for r in scan.records)
        self._results_fd = os.open(self.directory / RESULTS, os.O_WRONLY | os.O_APPEND)
        self._sentences_fd = os.open(self.directory / SENTENCES, os.O_WRONLY | os.O_APPEND)

    def append(self, records: Sequence[dict]) -> None:
        """Append the records of whole features (every value of each); durable when this returns."""
        if not records:
            return
        _write_all(self._results_fd, b"".join(record_line(r) for r in records))
        os.fsync(self._results_fd)
        _write_all(self._sentences_fd, "".join(sentence_line(r) for r in records).encode("utf-8"))
        for r in records:
            k = self._key(r)
            if self._last_key is not None and k < self._last_key:
                self._sorted = False
            self._last_key = k
        self.done.update(r["feature"] for r in records)

    def close(self) -> None:
        for name in ("_results_fd", "_sentences_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def finalise(self) -> None:
        """Close, and leave both files sorted by feature then value (rewritten only when needed)."""
        self.close()
        if not self._sorted:
            records = load_records(self.directory, self.values)
            write_records(self.directory, sorted(records, key=sort_key(self.values)))
            self._sorted = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_records(directory: str | os.PathLike, values: Sequence[float] | None = None) -> list[dict]:
    """The valid records of a sweep folder (values from its manifest unless given)."""
    directory = Path(directory)
    if values is None:
        manifest = read_manifest(directory)
        if manifest is None:
            raise SaesteerError(f"{directory} is not a sweep folder (no {MANIFEST}); run saesteer sweep --out {directory}")
        values = manifest["sweep"]["values"]
    return scan_results(directory / RESULTS, values).records


def write_manifest(directory: str | os.PathLike, manifest: dict) -> None:
    atomic_write_json(Path(directory) / MANIFEST, manifest)
