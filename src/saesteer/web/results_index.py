"""Sweep results folders, indexed for the sweep browser: sorting, pagination, full-text search.

A results folder holds ``manifest.json`` (what was swept), ``results.jsonl`` (one JSON object per feature
and value: ``feature``, ``value``, ``tokens``, ``text`` and metrics such as ``score``; a nested
``metrics`` object is read too), ``sentences.txt`` (the same texts as lines) and ``facts/`` (the feature
facts its metrics used, a ``FactsTable``), as ``saesteer.sweep.store`` writes them. :func:`load_manifest`
and :func:`parse_record` are the one place here that reads them: more leniently than the sweep's own
reader (any manifest, any extra numeric field as a metric) and line by line, so that a sweep still running
can be followed without reading its log again.

Folders are given when the server starts and named by their position; nothing here takes a path from a
request. A running sweep keeps appending to ``results.jsonl``: a folder is checked for changes at most
every ``RELOAD_INTERVAL_S`` seconds, and lines appended since are read and indexed on their own; a file
that was rewritten (a new file in its place, or shorter) is read again whole. A last line without its
newline is left for the next look.

Rows are kept as columns (``array``/numpy), texts as one list, and the word index as arrays of row numbers,
so a sweep over every feature of a 32k-latent SAE at several values stays a few hundred MB at most.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from saesteer.errors import SaesteerError
from saesteer.sweep.store import FACTS, MANIFEST, RESULTS

RELOAD_INTERVAL_S = 5.0
_CORE = ("feature", "value", "tokens", "text", "metrics")
_WORD = re.compile(r"\w+")
_QUERY = re.compile(r'"([^"]*)"|(\S+)')
_HEAD = 1 << 16
"""Bytes at the start of results.jsonl compared to tell an append from a rewrite."""


@dataclass
class Row:
    feature: int
    value: float | None
    text: str
    metrics: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"feature": self.feature, "value": self.value, "text": self.text, "metrics": self.metrics}


def _number(v) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


# --------------------------------------------------------------------------- the format
def load_manifest(path: str | os.PathLike) -> dict:
    """A results folder's ``manifest.json`` ({} when missing or unreadable)."""
    try:
        data = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def parse_record(line: bytes | str) -> Row | None:
    """One line of ``results.jsonl`` as a :class:`Row`; None for a line that is not a record."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    feature = obj.get("feature")
    if isinstance(feature, bool) or not isinstance(feature, int):
        return None
    metrics: dict[str, float | None] = {}
    nested = obj.get("metrics")
    for source in (obj, nested if isinstance(nested, dict) else {}):
        for k, v in source.items():
            if k in _CORE:
                continue
            num = _number(v)
            if num is not None:
                metrics[k] = num
            elif v is None:  # a metric not measured for this row (e.g. fluency)
                metrics.setdefault(k, None)
    text = obj.get("text")
    return Row(feature, _number(obj.get("value")), text if isinstance(text, str) else "", metrics)


def read_results_folder(path: str | os.PathLike) -> tuple[dict, list[Row]]:
    """The manifest and rows of a sweep results folder (lines that are not records are skipped)."""
    path = Path(path)
    rows = []
    with open(path / RESULTS, "rb") as f:
        for line in f:
            row = parse_record(line)
            if row is not None:
                rows.append(row)
    return load_manifest(path), rows


def is_results_folder(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / RESULTS).is_file()


def parse_query(q: str) -> tuple[list[str], list[str]]:
    """``'cat "the dog"'`` -> (words ``['cat']``, phrases ``['the dog']``), lower-cased."""
    words, phrases = [], []
    for phrase, word in _QUERY.findall(q.lower()):
        if phrase.strip():
            phrases.append(" ".join(phrase.split()))
        elif word:
            words.extend(_WORD.findall(word))
    return words, phrases


# --------------------------------------------------------------------------- one folder
class ResultsFolder:
    """One results folder: its rows as columns, a word index, cached sort orders."""

    def __init__(self, path: str | os.PathLike, label: str, id: int = 0):
        self.path = Path(path)
        self.label = label
        self.id = id
        self._lock = threading.RLock()
        self._checked = 0.0
        with self._lock:
            self._reset()
            self._read_new()

    # ----------------------------------------------------------------- loading
    def _reset(self) -> None:
        self.manifest = load_manifest(self.path)
        self._manifest_stamp = self._stamp(MANIFEST)
        self.texts: list[str] = []
        self._features = array("q")
        self._values = array("d")
        self._metrics: dict[str, array] = {}
        self._postings: dict[str, array] = {}
        self._offset = 0
        self._inode = None
        self._head = b""
        self._changed()

    def _changed(self) -> None:
        self._cols: dict[str, np.ndarray] | None = None
        self._vocab: list[str] | None = None
        self._orders: dict[tuple[str, str], np.ndarray] = {}

    def _stamp(self, name: str):
        try:
            st = (self.path / name).stat()
            return st.st_ino, st.st_size, st.st_mtime_ns
        except OSError:
            return None

    def _add(self, row: Row) -> None:
        n = len(self.texts)
        for k in row.metrics:
            if k not in self._metrics:
                self._metrics[k] = array("d", [np.nan]) * n
        for k, col in self._metrics.items():
            v = row.metrics.get(k)
            col.append(np.nan if v is None else v)
        self._features.append(row.feature)
        self._values.append(np.nan if row.value is None else row.value)
        self.texts.append(row.text)
        for w in set(_WORD.findall(row.text.lower())):
            post = self._postings.get(w)
            if post is None:
                post = self._postings[w] = array("q")
            post.append(n)

    def _read_new(self) -> None:
        """Index the complete lines after ``_offset`` (or everything again if the file was rewritten)."""
        try:
            f = open(self.path / RESULTS, "rb")
        except OSError:
            if self.texts:
                self._reset()
            return
        with f:
            st = os.fstat(f.fileno())
            head = f.read(min(self._offset, _HEAD)) if self._offset else b""
            if self._offset and (st.st_ino != self._inode or st.st_size < self._offset or head != self._head):
                self._reset()  # rewritten: read again from the start
            if st.st_size == self._offset and st.st_ino == self._inode:
                return
            f.seek(self._offset)
            added = 0
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a last line without its newline waits for the next look
                row = parse_record(line)
                if row is not None:
                    self._add(row)
                added += len(line)
            if not added:
                return
            self._offset += added
            self._inode = st.st_ino
            if len(self._head) < _HEAD:
                f.seek(0)
                self._head = f.read(min(self._offset, _HEAD))
        self._changed()

    def refresh(self, force: bool = False) -> None:
        """Pick up changes of the folder (checked at most every ``RELOAD_INTERVAL_S`` unless forced)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._checked < RELOAD_INTERVAL_S:
                return
            self._checked = now
            stamp = self._stamp(MANIFEST)
            if stamp != self._manifest_stamp:
                self.manifest, self._manifest_stamp = load_manifest(self.path), stamp
            self._read_new()

    # ----------------------------------------------------------------- columns
    @property
    def metrics(self) -> list[str]:
        names = list(self._metrics)
        if "score" in names:
            names.remove("score")
            names.insert(0, "score")
        return names

    def sort_keys(self) -> list[str]:
        return ["feature", "value", *self.metrics]

    def columns(self) -> dict[str, np.ndarray]:
        if self._cols is None:
            cols = {"feature": np.array(self._features, dtype=np.float64),
                    "value": np.array(self._values, dtype=np.float64)}
            for k, col in self._metrics.items():
                cols[k] = np.array(col, dtype=np.float64)
            self._cols = cols
        return self._cols

    def row(self, i: int) -> Row:
        value = self._values[i]
        return Row(int(self._features[i]), None if value != value else float(value), self.texts[i],
                   {k: (None if col[i] != col[i] else float(col[i])) for k, col in self._metrics.items()})

    def __len__(self) -> int:
        return len(self.texts)

    # ----------------------------------------------------------------- queries
    def _order(self, sort: str, order: str) -> np.ndarray:
        key = (sort, order)
        got = self._orders.get(key)
        if got is None:
            cols = self.columns()
            col = cols[sort]
            missing = np.isnan(col)
            vals = np.where(missing, 0.0, col)
            if order == "desc":
                vals = -vals
            value = np.where(np.isnan(cols["value"]), np.inf, cols["value"])
            # missing last; then the key; ties by feature, then value (ascending)
            got = np.lexsort((value, cols["feature"], vals, missing))
            self._orders[key] = got
        return got

    def _word_hits(self, word: str, n: int) -> np.ndarray:
        """Rows with a word starting with ``word``."""
        if self._vocab is None:
            self._vocab = sorted(self._postings)
        lo = bisect.bisect_left(self._vocab, word)
        hi = bisect.bisect_left(self._vocab, word + "\U0010ffff")
        hit = np.zeros(n, dtype=bool)
        for w in self._vocab[lo:hi]:
            hit[np.array(self._postings[w], dtype=np.int64)] = True
        return hit

    def _match(self, q: str) -> np.ndarray | None:
        """Boolean mask of rows matching ``q``; None for an empty query."""
        words, phrases = parse_query(q)
        if not words and not phrases:
            return None
        n = len(self.texts)
        mask = np.ones(n, dtype=bool)
        for w in words + [w for p in phrases for w in _WORD.findall(p)]:  # a phrase's words narrow it first
            mask &= self._word_hits(w, n)
        if phrases:
            for i in np.flatnonzero(mask).tolist():
                text = " ".join(self.texts[i].lower().split())
                if not all(p in text for p in phrases):
                    mask[i] = False
        return mask

    def search(self, q: str = "", sort: str = "score", order: str = "desc", *, feature: int | None = None,
               per_feature: bool = False, offset: int = 0, limit: int = 50) -> tuple[int, list[Row]]:
        """``(total matching, rows of the page)``. ``sort`` must be one of :meth:`sort_keys`."""
        with self._lock:
            if sort not in self.sort_keys():
                raise KeyError(sort)
            idx = self._order(sort, order)
            mask = self._match(q)
            features = self.columns()["feature"]
            if feature is not None:
                fmask = features == feature
                mask = fmask if mask is None else mask & fmask
            if mask is not None:
                idx = idx[mask[idx]]
            if per_feature and len(idx):
                _, first = np.unique(features[idx], return_index=True)
                idx = idx[np.sort(first)]
            page = idx[offset:offset + limit]
            return int(len(idx)), [self.row(i) for i in page.tolist()]

    def feature_rows(self, feature: int) -> list[Row]:
        """Rows of one feature, best score first (by value where there is no score)."""
        with self._lock:
            sort = "score" if "score" in self._metrics else "value"
            idx = self._order(sort, "desc" if sort == "score" else "asc")
            return [self.row(i) for i in idx[self.columns()["feature"][idx] == feature].tolist()]

    def summary(self) -> dict:
        with self._lock:
            short = {k: v for k, v in self.manifest.items() if len(json.dumps(v, default=str)) <= 200}
            baseline = self.manifest.get("baseline")
            unsteered = baseline.get("text") if isinstance(baseline, dict) else None
            prompt = self.manifest.get("prompt")
            return {"id": self.id, "label": self.label, "rows": len(self.texts),
                    "features": int(len(np.unique(self.columns()["feature"]))), "metrics": self.metrics,
                    "prompt": prompt if isinstance(prompt, str) else None,
                    "unsteered": unsteered if isinstance(unsteered, str) else None, "manifest": short}

    @property
    def facts_dir(self) -> Path:
        """Where the sweep keeps its feature facts."""
        return self.path / FACTS


class ResultsIndex:
    """The results folders given at start, by position (``id``)."""

    def __init__(self, paths=()):
        self.folders: list[ResultsFolder] = []
        labels: dict[str, int] = {}
        for i, p in enumerate(paths):
            p = Path(p).expanduser().resolve()
            if not is_results_folder(p):
                raise SaesteerError(f"{p} is not a sweep results folder (no {RESULTS} in it)")
            name = p.name or str(p)
            labels[name] = labels.get(name, 0) + 1
            label = name if labels[name] == 1 else f"{name} ({labels[name]})"
            self.folders.append(ResultsFolder(p, label, i))

    def __len__(self) -> int:
        return len(self.folders)

    def get(self, id: int) -> ResultsFolder:
        if not 0 <= id < len(self.folders):
            raise IndexError(id)
        folder = self.folders[id]
        folder.refresh()
        return folder
