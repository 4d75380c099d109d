"""How the sweep browser reads a sweep results folder: the manifest, and ``results.jsonl`` line by line.

A results folder holds ``manifest.json`` (what was swept), ``results.jsonl`` (one JSON object per feature
and value: ``feature``, ``value``, ``tokens``, ``text`` and metrics such as ``score``; a nested ``metrics``
object is read too), ``sentences.txt`` and ``facts/`` (a ``FactsTable``), as ``saesteer.sweep.store`` writes
them. The browser reads them more leniently than the sweep itself (any manifest, any extra numeric field as
a metric), so that folders of older versions and of running sweeps can be browsed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from saesteer.sweep.store import RESULTS

CORE_FIELDS = ("feature", "value", "tokens", "text", "metrics")
WORD = re.compile(r"\w+")
_QUERY = re.compile(r'"([^"]*)"|(\S+)')


@dataclass
class Row:
    """One row of a sweep: a feature clamped to a value, its text and numeric fields."""

    feature: int
    value: float | None
    text: str
    metrics: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"feature": self.feature, "value": self.value, "text": self.text, "metrics": self.metrics}


def _number(v) -> float | None:
    if isinstance(v, (bool, int, float)):
        f = float(v)
        return f if f == f else None  # NaN: not measured
    return None


def parse_record(line: bytes | str) -> Row | None:
    """One line of ``results.jsonl`` as a :class:`Row`; None for a line that is not a record."""
    try:
        obj = json.loads(line.decode("utf-8", "replace") if isinstance(line, bytes) else line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    feature = obj.get("feature")
    if isinstance(feature, bool) or not isinstance(feature, int) or not -2**63 <= feature < 2**63:
        return None
    metrics: dict[str, float | None] = {}
    nested = obj.get("metrics")
    for source in (obj, nested if isinstance(nested, dict) else {}):
        for k, v in source.items():
            if k in CORE_FIELDS:
                continue
            num = _number(v)
            if num is not None:
                metrics[k] = num
            elif v is None:  # a metric not measured for this row (e.g. fluency)
                metrics.setdefault(k, None)
    text = obj.get("text")
    return Row(feature, _number(obj.get("value")), text if isinstance(text, str) else "", metrics)


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
            words.extend(WORD.findall(word))
    return words, phrases


def fts_query(q: str) -> str | None:
    """The SQLite FTS5 query of a search box text: every word a prefix, every quoted phrase as written;
    None when nothing is left to search for."""
    words, phrases = parse_query(q)
    terms = [f'"{w}"*' for w in words]
    terms += ['"' + " ".join(WORD.findall(p)) + '"' for p in phrases if WORD.findall(p)]
    return " AND ".join(terms) or None
