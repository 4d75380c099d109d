"""The SQLite database of one results folder: rows with a column per metric, an FTS5 table over the texts,
one index per sort order asked for, and the first row of each feature per sort order, cached.

``ResultsDB.create(path)`` starts an empty index, ``append_lines(file)`` adds complete ``results.jsonl`` lines
from the file's position (one transaction, so a kill leaves the index as it was), ``search`` answers the
sweep browser. Row ids are the records' positions in the log, from 1.
"""

from __future__ import annotations

import sqlite3
from typing import BinaryIO

from saesteer.web.results_format import Row, fts_query, parse_record

VERSION = 2
"""Bumped when the layout changes: an index of another version is built again."""
BATCH = 20_000
_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value);
CREATE TABLE metrics(pos INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
CREATE TABLE rows(id INTEGER PRIMARY KEY, feature INTEGER NOT NULL, value REAL, text TEXT NOT NULL);
CREATE TABLE features(feature INTEGER PRIMARY KEY);
CREATE INDEX rows_feature ON rows(feature);
CREATE VIRTUAL TABLE rows_fts USING fts5(text, content='rows', content_rowid='id');
CREATE TABLE meaning(feature INTEGER PRIMARY KEY, words TEXT NOT NULL, lens TEXT NOT NULL);
CREATE VIRTUAL TABLE meaning_fts USING fts5(words, lens, content='meaning', content_rowid='feature');
"""
THEN = {"steer": "score"}
"""The metric that breaks ties of a sort (``saesteer top``'s order: steer, then score)."""
SEP = "\n"
"""Between the words (and tokens) of one feature in the ``meaning`` table."""


def _connect(path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


class ResultsDB:
    """An open index (one connection; the caller serialises calls)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        if meta.get("version") != VERSION:
            conn.close()
            raise sqlite3.DatabaseError(f"an index of another version ({meta.get('version')})")
        self.offset: int = meta.get("offset", 0)
        self.inode: int | None = meta.get("inode")
        self.head: bytes = meta.get("head", b"")
        self._metrics: list[str] | None = None
        self._count: int | None = None

    @classmethod
    def create(cls, path) -> "ResultsDB":
        conn = _connect(path)
        conn.executescript(_SCHEMA)
        conn.execute("INSERT INTO meta VALUES ('version', ?), ('offset', 0)", (VERSION,))
        return cls(conn)

    @classmethod
    def open(cls, path) -> "ResultsDB":
        return cls(_connect(path))

    def close(self) -> None:
        self.conn.close()

    # ----------------------------------------------------------------- writing
    def metric_names(self) -> list[str]:
        if self._metrics is None:
            self._metrics = [n for (n,) in self.conn.execute("SELECT name FROM metrics ORDER BY pos")]
        return list(self._metrics)

    def _add_metrics(self, names) -> None:
        known = self.metric_names()
        for name in names:
            if name not in known:
                pos = len(known)
                self.conn.execute("INSERT INTO metrics VALUES (?, ?)", (pos, name))
                self.conn.execute(f"ALTER TABLE rows ADD COLUMN m{pos} REAL")
                known.append(name)
        self._metrics = known

    def _insert(self, rows: list[Row]) -> None:
        for r in rows:
            self._add_metrics(r.metrics)
        names = self.metric_names()
        cols = "".join(f", m{i}" for i in range(len(names)))
        marks = ", ?" * len(names)
        self.conn.executemany(f"INSERT INTO rows(feature, value, text{cols}) VALUES (?, ?, ?{marks})",
                              [(r.feature, r.value, r.text, *(r.metrics.get(n) for n in names)) for r in rows])

    def append_lines(self, f: BinaryIO, *, inode: int, head: bytes) -> int:
        """Index the complete lines of ``f`` from ``self.offset`` on; the bytes consumed."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            first = c.execute("SELECT COALESCE(MAX(id), 0) FROM rows").fetchone()[0]
            f.seek(self.offset)
            read, batch = 0, []
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a last line without its newline waits for the next look
                read += len(line)
                row = parse_record(line)
                if row is not None:
                    batch.append(row)
                if len(batch) >= BATCH:
                    self._insert(batch)
                    batch = []
            if batch:
                self._insert(batch)
            if read:
                c.execute("INSERT INTO rows_fts(rowid, text) SELECT id, text FROM rows WHERE id > ?", (first,))
                c.execute("INSERT OR IGNORE INTO features SELECT DISTINCT feature FROM rows WHERE id > ?", (first,))
                self._drop_firsts()
                offset = self.offset + read
                c.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                              [("offset", offset), ("inode", inode), ("head", head[:min(offset, len(head))])])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            self._metrics = None
            raise
        if read:
            self.offset, self.inode, self.head = offset, inode, head[:min(offset, len(head))]
            self._count = None
        return read

    def _drop_firsts(self) -> None:
        for (name,) in self.conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'firsts_%'").fetchall():
            self.conn.execute(f"DROP TABLE {name}")

    def ranks_stamp(self):
        got = self.conn.execute("SELECT value FROM meta WHERE key = 'ranks_stamp'").fetchone()
        return got[0] if got else None

    def set_ranks(self, names, rows, stamp: str) -> None:
        """Replace the metric columns ``names`` (added where new) with ``rows`` of ``(feature, value, *numbers)``,
        every row of that feature and value; rows not given get NULL. One transaction."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            self._add_metrics(names)
            cols = [self._column(n) for n in names]
            if cols:
                c.execute("UPDATE rows SET " + ", ".join(f"{x} = NULL" for x in cols))
                c.executemany("UPDATE rows SET " + ", ".join(f"{x} = ?" for x in cols) + " WHERE feature = ? AND value = ?",
                              [(*nums, f, v) for f, v, *nums in rows])
            self._drop_firsts()
            c.execute("INSERT OR REPLACE INTO meta VALUES ('ranks_stamp', ?)", (stamp,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            self._metrics = None
            raise

    # ----------------------------------------------------------------- reading
    def best_sort(self) -> tuple[str, str]:
        """The order that puts a folder's best rows first: ``steer`` (``saesteer top``'s), else ``score``, else
        by value."""
        names = self.metric_names()
        return next(((m, "desc") for m in ("steer", "score") if m in names), ("value", "asc"))

    def count(self) -> int:
        if self._count is None:
            self._count = self.conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        return self._count

    def n_features(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM features").fetchone()[0]

    def _select(self) -> str:
        return "SELECT feature, value, text" + "".join(f", m{i}" for i in range(len(self.metric_names())))

    def _row(self, t) -> Row:
        return Row(int(t[0]), t[1], t[2], dict(zip(self.metric_names(), t[3:])))

    def rows_by_id(self, ids: list[int]) -> list[Row]:
        got = {t[0]: t[1:] for t in self.conn.execute(
            self._select().replace("SELECT", "SELECT id,", 1) + f" FROM rows WHERE id IN ({','.join('?' * len(ids))})",
            ids)}
        return [self._row(got[i]) for i in ids if i in got]

    def _column(self, sort: str) -> str:
        if sort in ("feature", "value"):
            return sort
        return f"m{self.metric_names().index(sort)}"

    def _order(self, sort: str, order: str) -> tuple[str, str]:
        """(ORDER BY terms, a name for them); the matching index is made on first use."""
        col, d = self._column(sort), "DESC" if order == "desc" else "ASC"
        then = THEN.get(sort)
        if then in self.metric_names():  # ties broken as saesteer top breaks them
            col2 = self._column(then)
            terms, name = f"{col} IS NULL, {col} {d}, {col2} IS NULL, {col2} {d}", f"{col}_{col2}_{d.lower()}"
        else:
            terms, name = f"{col} IS NULL, {col} {d}", f"{col}_{d.lower()}"
        terms += ", feature, value IS NULL, value"
        try:
            self.conn.execute(f"CREATE INDEX IF NOT EXISTS order_{name} ON rows({terms})")
        except sqlite3.OperationalError:  # a read-only file: sorted without the index
            pass
        return terms + ", id", name

    def _firsts(self, terms: str, name: str) -> str | None:
        """A table of each feature's first row in this order (made on first use, dropped on change); None
        where the file is read-only."""
        table = f"firsts_{name}"
        if self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
            return table
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS {table}(id INTEGER PRIMARY KEY)")
            self.conn.execute(f"INSERT OR IGNORE INTO {table} SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
                              f"(PARTITION BY feature ORDER BY {terms}) AS rn FROM rows) WHERE rn = 1")
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            return None
        return table

    def search(self, q: str, sort: str, order: str, *, feature: int | None = None, per_feature: bool = False,
               offset: int = 0, limit: int | None = 50) -> tuple[int, list[Row]]:
        """``(total matching, rows of the page)`` in the order of ``sort`` (a column or metric name)."""
        terms, name = self._order(sort, order)
        where, params = [], []
        match = fts_query(q)
        if match is not None:
            where.append("id IN (SELECT rowid FROM rows_fts WHERE rows_fts MATCH ?)")
            params.append(match)
        if feature is not None:
            where.append("feature = ?")
            params.append(feature)
        firsts = self._firsts(terms, name) if per_feature and match is None else None
        if firsts is not None:
            where.append(f"id IN (SELECT id FROM {firsts})")
        elif per_feature and where:
            inner = " AND ".join(where)
            where = [f"id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY feature ORDER BY {terms})"
                     f" AS rn FROM rows WHERE {inner}) WHERE rn = 1)"]
        elif per_feature:
            where = [f"id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY feature ORDER BY {terms})"
                     " AS rn FROM rows) WHERE rn = 1)"]
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        if not where:
            total = self.count()
        else:
            total = self.conn.execute(f"SELECT COUNT(*) FROM rows{cond}", params).fetchone()[0]
        page = self.conn.execute(f"{self._select()} FROM rows{cond} ORDER BY {terms} LIMIT ? OFFSET ?",
                                 [*params, -1 if limit is None else limit, offset]).fetchall()
        return total, [self._row(t) for t in page]

    # ----------------------------------------------------------------- meanings (firing words, lens tokens)
    def meanings_stamp(self):
        got = self.conn.execute("SELECT value FROM meta WHERE key = 'meanings_stamp'").fetchone()
        return got[0] if got else None

    def swept_features(self) -> list[int]:
        return [f for (f,) in self.conn.execute("SELECT feature FROM features ORDER BY feature")]

    def set_meanings(self, items, stamp: str) -> None:
        """Replace the features' firing words and lens tokens: ``items`` of ``(feature, words, tokens)``."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("DELETE FROM meaning")
            c.executemany("INSERT INTO meaning VALUES (?, ?, ?)",
                          [(f, SEP.join(w), SEP.join(t.replace(SEP, "\\n") for t in lens)) for f, w, lens in items])
            c.execute("INSERT INTO meaning_fts(meaning_fts) VALUES ('rebuild')")
            c.execute("INSERT OR REPLACE INTO meta VALUES ('meanings_stamp', ?)", (stamp,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def meanings(self, features) -> dict[int, tuple[list[str], list[str]]]:
        features = sorted(set(features))
        if not features:
            return {}
        got = self.conn.execute(f"SELECT feature, words, lens FROM meaning WHERE feature IN "
                                f"({','.join('?' * len(features))})", features)
        return {f: (w.split(SEP) if w else [], t.split(SEP) if t else []) for f, w, t in got}

    def _matching(self, sql: str, match: str) -> dict[int, int]:
        try:
            return dict(self.conn.execute(sql, (match,)).fetchall())
        except sqlite3.OperationalError:  # a query FTS5 cannot parse matches nothing
            return {}

    def meaning_search(self, q: str, offset: int = 0, limit: int = 25) -> tuple[int, list[dict]]:
        """Features whose firing words, lens tokens or steered texts match ``q``, best first: 3 points for the
        words, 2 for the lens tokens, plus the share of the feature's texts that match."""
        match = fts_query(q)
        if match is None:
            return 0, []
        words = self._matching("SELECT rowid, 1 FROM meaning_fts WHERE meaning_fts MATCH 'words : (' || ? || ')'",
                               match)
        lens = self._matching("SELECT rowid, 1 FROM meaning_fts WHERE meaning_fts MATCH 'lens : (' || ? || ')'",
                              match)
        texts = self._matching("SELECT feature, COUNT(*) FROM rows WHERE id IN (SELECT rowid FROM rows_fts WHERE "
                               "rows_fts MATCH ?) GROUP BY feature", match)
        found = set(words) | set(lens) | set(texts)
        sizes = self._counts(found)
        scored = sorted(((3.0 * (f in words) + 2.0 * (f in lens) + texts.get(f, 0) / max(1, sizes.get(f, 1)), f)
                         for f in found), key=lambda t: (-t[0], t[1]))
        page = scored[offset:offset + limit]
        means = self.meanings(f for _, f in page)
        out = []
        for score, f in page:
            w, t = means.get(f, ([], []))
            out.append({"feature": f, "score": round(score, 4), "in_words": f in words, "in_lens": f in lens,
                        "texts_matching": texts.get(f, 0), "texts": sizes.get(f, 0), "firing_words": w,
                        "lens_tokens": t, "best_text": self._best_text(f, match if f in texts else None)})
        return len(scored), out

    def _counts(self, features) -> dict[int, int]:
        features = sorted(features)
        out: dict[int, int] = {}
        for i in range(0, len(features), 900):
            part = features[i:i + 900]
            out.update(self.conn.execute(f"SELECT feature, COUNT(*) FROM rows WHERE feature IN "
                                         f"({','.join('?' * len(part))}) GROUP BY feature", part).fetchall())
        return out

    def _best_text(self, feature: int, match: str | None) -> str | None:
        terms, _ = self._order(*self.best_sort())
        where, params = "feature = ?", [feature]
        if match is not None:
            where += " AND id IN (SELECT rowid FROM rows_fts WHERE rows_fts MATCH ?)"
            params.append(match)
        got = self.conn.execute(f"SELECT text FROM rows WHERE {where} ORDER BY {terms} LIMIT 1", params).fetchone()
        return got[0] if got else None
