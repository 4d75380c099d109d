"""Sweep results folders indexed in SQLite for the sweep browser: sorting, pagination, full-text search.

Each folder gets one database file, ``browse.sqlite`` beside its ``results.jsonl`` (in memory when the
folder is read-only), built from ``results.jsonl`` when missing or stale (another version of this index, or
a log that was rewritten) and written as a whole under a temporary name. Rows are a table with one column
per metric, texts are in an FTS5 table (word-prefix and phrase search), and each sort order gets its index
when first asked for, so a sweep of every feature of a 1M-latent SAE (3M rows) pages instantly once built.

A running sweep keeps appending to ``results.jsonl``: a folder is checked for changes at most every
``RELOAD_INTERVAL_S`` seconds, and lines appended since are added on their own; a file that was rewritten
(a new file in its place, or shorter, or a different start) is indexed again whole. A last line without its
newline is left for the next look. Folders are given when the server starts and named by their position;
nothing here takes a path from a request.

The ranks ``saesteer top`` shows (``steer``, ``word_rank``, ``readback_rank``...; ``results_ranks``) are
computed for the whole folder when it is opened and the index does not hold them for the folder as it is
(before serving it up to ``RANK_WAIT_BYTES`` of log, else in the background), and again after lines were
added (or the facts or manifest changed), in a background thread, at most every ``RANK_INTERVAL_S`` seconds
and at most ``RANK_SHARE`` of the time, so that a page never waits for them.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from pathlib import Path

from saesteer.errors import SaesteerError
from saesteer.evaluation.facts_table import FactsTable
from saesteer.sweep.store import FACTS, MANIFEST, RESULTS, read_manifest_lenient
from saesteer.web.results_db import ResultsDB
from saesteer.web.results_format import Row, is_results_folder
from saesteer.web.results_ranks import RANK_FIELDS, folder_ranks

RELOAD_INTERVAL_S = 5.0
RANK_INTERVAL_S = 60.0
"""A running sweep's ranks are computed again at most this often (seconds), and only once lines were added."""
RANK_WAIT_BYTES = 64 << 20
"""A folder whose indexed ``results.jsonl`` is at most this large is ranked before it is served (seconds);
a larger one in the background (a 694 MB one with readback vectors takes minutes: docs/sweeps.md)."""
RANK_MAX_ROWS = 131_072
"""A folder with more rows is browsed without ranks: computing them holds about 0.1 MB of memory per row
(docs/sweeps.md), too much for a server beside a model; ``saesteer top`` ranks such a sweep."""
TOO_LARGE = "too many rows"
"""The ranks stamp of an index whose folder has more than ``RANK_MAX_ROWS`` rows."""
_RANKING = threading.Lock()
"""One folder's ranks computed at a time in a process (a large sweep's take gigabytes of memory)."""
RANK_SHARE = 0.1
"""...and at most this share of the time: after a recompute that took ``t`` seconds, the next waits at least
``t / RANK_SHARE`` (a 100k-row sweep with readback vectors takes a minute or more)."""
LENS_SHOWN = 8
"""Logit-lens tokens kept per feature for the search by meaning."""
DB_NAME = "browse.sqlite"
_HEAD = 1 << 16
"""Bytes at the start of results.jsonl compared to tell an append from a rewrite."""

__all__ = ["RELOAD_INTERVAL_S", "ResultsFolder", "ResultsIndex", "Row"]


class ResultsFolder:
    """One results folder and its SQLite index."""

    def __init__(self, path: str | os.PathLike, label: str, id: int = 0):
        self.path = Path(path)
        self.label = label
        self.id = id
        self._lock = threading.RLock()
        self._checked = 0.0
        self._ranked_at = -math.inf
        self._rank_cost = 0.0
        """Seconds the last recompute took."""
        self._tried: tuple | None = None
        """``(id of the index, stamp)`` of the last ranks computed (a read-only index cannot keep its stamp)."""
        self.ranker: threading.Thread | None = None
        """The background thread computing the ranks, while one runs."""
        self.manifest = read_manifest_lenient(self.path)
        self._manifest_stamp = self._stamp(MANIFEST)
        self.db = self._open()
        self._read_new()
        self._read_meanings()
        self._update_ranks(wait=self.db.offset <= RANK_WAIT_BYTES)

    # ----------------------------------------------------------------- the database file
    def _stamp(self, name: str):
        try:
            st = (self.path / name).stat()
            return st.st_ino, st.st_size, st.st_mtime_ns
        except OSError:
            return None

    def _log_state(self) -> tuple[int | None, int, bytes]:
        """(inode, size, first bytes) of results.jsonl now."""
        try:
            with open(self.path / RESULTS, "rb") as f:
                st = os.fstat(f.fileno())
                return st.st_ino, st.st_size, f.read(_HEAD)
        except OSError:
            return None, 0, b""

    def _fresh(self, db: ResultsDB) -> bool:
        """The index still describes results.jsonl (it may lag behind appended lines)."""
        inode, size, head = self._log_state()
        offset = db.offset
        return db.inode == inode and size >= offset and head[:min(offset, _HEAD)] == db.head

    def _open(self) -> ResultsDB:
        target = self.path / DB_NAME
        if target.exists():
            try:
                db = ResultsDB.open(target)
                if self._fresh(db):
                    return db
                db.close()
            except sqlite3.DatabaseError:
                pass
        return self._build()

    def _build(self) -> ResultsDB:
        """Index results.jsonl from its start into a new file (renamed into place), or in memory."""
        target = self.path / DB_NAME
        tmp = self.path / f".{DB_NAME}.{os.getpid()}.tmp"
        try:
            tmp.unlink(missing_ok=True)
            db = ResultsDB.create(tmp)
        except (OSError, sqlite3.OperationalError):  # a read-only folder: the index lives in memory
            db = ResultsDB.create(":memory:")
            self._append(db)
            return db
        try:
            self._append(db)
        except BaseException:
            db.close()
            tmp.unlink(missing_ok=True)
            raise
        db.close()
        os.replace(tmp, target)
        return ResultsDB.open(target)

    def _append(self, db: ResultsDB) -> int:
        """Add the complete lines after the index's offset; the number of bytes read."""
        try:
            f = open(self.path / RESULTS, "rb")
        except OSError:
            return 0
        with f:
            st = os.fstat(f.fileno())
            head = f.read(_HEAD)
            if st.st_size == db.offset and st.st_ino == db.inode:
                return 0
            f.seek(db.offset)
            return db.append_lines(f, inode=st.st_ino, head=head)

    def _read_new(self) -> None:
        if self.db.offset and not self._fresh(self.db):  # rewritten: index again from the start
            self.db.close()
            self.db = self._build()
            return
        self._append(self.db)

    def refresh(self, force: bool = False) -> None:
        """Pick up changes of the folder (checked at most every ``RELOAD_INTERVAL_S`` unless forced)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._checked < RELOAD_INTERVAL_S:
                return
            self._checked = now
            stamp = self._stamp(MANIFEST)
            if stamp != self._manifest_stamp:
                self.manifest, self._manifest_stamp = read_manifest_lenient(self.path), stamp
            self._read_new()
            self._read_meanings()
            self._update_ranks(wait=force)

    def _rank_stamp(self) -> str:
        """What the ranks were computed from: the indexed log, the facts and the manifest."""
        return json.dumps([self.db.offset, self._stamp(f"{FACTS}/facts.json"), self._manifest_stamp])

    def _update_ranks(self, wait: bool = False) -> None:
        """Compute the ranks again where the folder changed since: now with ``wait``, else in the background
        (at once for an index without ranks, else after ``RANK_INTERVAL_S`` and ``RANK_SHARE``)."""
        stamp, held = self._rank_stamp(), self.db.ranks_stamp()
        if self.db.count() > RANK_MAX_ROWS:  # once: ranks of a smaller past cleared, none computed
            if held != TOO_LARGE and self.ranker is None:
                self._clear_ranks()
            return
        if self.ranker is not None or stamp == held or (id(self.db), stamp) == self._tried:
            return
        wait_s = max(RANK_INTERVAL_S, self._rank_cost / RANK_SHARE)
        if not wait and held is not None and time.monotonic() - self._ranked_at < wait_s:
            return
        self._ranked_at, self._tried = time.monotonic(), (id(self.db), stamp)
        args = (self.db, stamp, [n for n in RANK_FIELDS if n in self.db.metric_names()])
        if wait:
            self._rank(*args)
            return
        self.ranker = threading.Thread(target=self._rank, args=args, daemon=True, name=f"ranks of {self.label}")
        self.ranker.start()

    def _clear_ranks(self) -> None:
        try:
            self.db.set_ranks([n for n in RANK_FIELDS if n in self.db.metric_names()], [], TOO_LARGE)
        except sqlite3.Error:
            pass

    def _rank(self, db: ResultsDB, stamp: str, known: list[str]) -> None:
        """Compute the folder's ranks (outside the lock) and write them into ``db`` if it is still the index."""
        t0 = time.monotonic()
        try:
            with _RANKING:
                names, rows = folder_ranks(self.path, known)
            self._rank_cost = time.monotonic() - t0
            with self._lock:
                if db is self.db:
                    db.set_ranks(names, rows, stamp)
        except sqlite3.Error:  # a read-only index file, or one closed meanwhile: shown without ranks
            pass
        finally:
            self.ranker = None

    def _read_meanings(self) -> None:
        """Index the firing words and lens tokens of the swept features, from ``facts/`` (when it changed)."""
        stamp = self._stamp(f"{FACTS}/facts.json")
        if stamp is None or self.db.meanings_stamp() == str(stamp):
            return
        try:
            table = FactsTable.load(self.facts_dir)
        except (OSError, ValueError, KeyError):
            return
        ids = table.tensors["lens_top_ids"]
        items = [(f, list(table.words[f]), [table.token_texts.get(i, "") for i in ids[f, :LENS_SHOWN].tolist() if i >= 0])
                 for f in self.db.swept_features() if 0 <= f < len(table)]
        try:
            self.db.set_meanings(items, str(stamp))
        except sqlite3.OperationalError:  # a read-only index file: searched without meanings
            pass

    def meanings(self, features) -> dict[int, tuple[list[str], list[str]]]:
        """``{feature: (firing words, lens tokens)}`` of those that have facts."""
        with self._lock:
            return self.db.meanings(features)

    def meaning_search(self, q: str, offset: int = 0, limit: int = 25) -> tuple[int, list[dict]]:
        """Features ranked by how well their firing words, lens tokens and texts match ``q``."""
        with self._lock:
            return self.db.meaning_search(q, offset, limit)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # ----------------------------------------------------------------- queries
    @property
    def metrics(self) -> list[str]:
        """Metric names, ``steer`` and ``score`` first, then in order of first appearance (no ranks where the
        folder has too many rows)."""
        names = self.db.metric_names()
        if self.db.ranks_stamp() == TOO_LARGE:
            names = [n for n in names if n not in RANK_FIELDS]
        first = [n for n in ("steer", "score") if n in names]
        return first + [n for n in names if n not in first]

    def sort_keys(self) -> list[str]:
        return ["feature", "value", *self.metrics]

    def __len__(self) -> int:
        with self._lock:
            return self.db.count()

    def row(self, i: int) -> Row:
        """The ``i``-th record of the log (0-based)."""
        with self._lock:
            return self.db.rows_by_id([i + 1])[0]

    def default_sort(self) -> str:
        """The sort of a search that names none: ``steer`` (``saesteer top``'s order), else ``score``, else feature."""
        with self._lock:
            return next((m for m in ("steer", "score") if m in self.metrics), "feature")

    def search(self, q: str = "", sort: str | None = None, order: str = "desc", *, feature: int | None = None,
               per_feature: bool = False, offset: int = 0, limit: int = 50) -> tuple[int, list[Row]]:
        """``(total matching, rows of the page)``. ``sort`` must be one of :meth:`sort_keys` (None:
        :meth:`default_sort`); rows without it go last, ties by feature then value (``steer``'s by ``score``
        first, as ``saesteer top``)."""
        with self._lock:
            sort = sort or self.default_sort()
            if sort not in self.sort_keys():
                raise KeyError(sort)
            return self.db.search(q, sort, order, feature=feature, per_feature=per_feature, offset=offset,
                                  limit=limit)

    def feature_rows(self, feature: int) -> list[Row]:
        """Rows of one feature, best first (``ResultsDB.best_sort``: by steer, else score)."""
        with self._lock:
            return self.db.search("", *self.db.best_sort(), feature=feature, offset=0, limit=None)[1]

    def summary(self) -> dict:
        with self._lock:
            short = {k: v for k, v in self.manifest.items() if len(json.dumps(v, default=str)) <= 200}
            baseline = self.manifest.get("baseline")
            unsteered = baseline.get("text") if isinstance(baseline, dict) else None
            prompt = self.manifest.get("prompt")
            return {"id": self.id, "label": self.label, "rows": self.db.count(), "features": self.db.n_features(),
                    "metrics": self.metrics, "prompt": prompt if isinstance(prompt, str) else None,
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

    def close(self) -> None:
        for f in self.folders:
            f.close()
