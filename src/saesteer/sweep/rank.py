"""Rank a sweep's results: the best value of each feature, sorted by a metric, optionally about a word.

The default order is ``steer`` (``evaluation.steer_score``): the firing-word rank (``evaluation.word_rank``,
from the folder's feature facts) and the model-internal readback rank (``evaluation.readback``, where the
sweep measured it) together, penalising less fluent text and loops."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from saesteer.errors import SaesteerError
from saesteer.evaluation.chance import measure_weights
from saesteer.evaluation.feature_facts import FactsTable
from saesteer.evaluation.readback import own_readback, readback_ranks
from saesteer.evaluation.steer_score import explain, steer_score
from saesteer.evaluation.text_metrics import is_clear, repetition, words
from saesteer.evaluation.word_rank import word_ranks
from saesteer.sweep import store as st


def _num(x, missing=-math.inf) -> float:
    return missing if x is None else float(x)


SORTS: dict[str, Callable[[dict], tuple]] = {
    "steer": lambda r: (_num(r.get("steer")), _num(r.get("score"))),
    "readback": lambda r: (_num(r.get("readback_rank")), _num(r.get("steer"))),
    "words": lambda r: (_num(r.get("word_rank")), _num(r.get("steer"))),
    "score": lambda r: (_num(r.get("score")), r.get("fire_hits", 0)),
    "on_target": lambda r: (r.get("fire_hits", 0) - r.get("base_fire_hits", 0), _num(r.get("score"))),
    "lens": lambda r: (r.get("lens_hits", 0) - r.get("base_lens_hits", 0), _num(r.get("score"))),
    "fluency": lambda r: (_num(r.get("fluency")), _num(r.get("score"))),
    "repetition": lambda r: (_num(r.get("repetition")), _num(r.get("score"))),
    "distinct": lambda r: (_num(r.get("distinct")), _num(r.get("score"))),
    "first_diff": lambda r: (-_num(r.get("first_diff"), math.inf), _num(r.get("score"))),
    "feature": lambda r: (-r["feature"], -_num(r.get("value"), 0.0)),
}
"""Sort keys, larger first: ``steer`` is the combined score, ``readback`` the model-internal rank, ``words`` the
firing-word rank, ``on_target`` and ``lens`` are hits above the unsteered text's, ``first_diff``
puts the earliest divergence first, ``feature`` sorts by feature index."""


@dataclass
class Row:
    """One line of a ``top`` table: a feature at its best value."""

    feature: int
    value: float
    score: float
    fire_hits: int
    lens_hits: int
    clear: bool | None
    """``text_metrics.is_clear`` where fluency was measured, else None."""
    text: str
    firing_words: list[str] = field(default_factory=list)
    lens_tokens: list[str] = field(default_factory=list)
    fluency_drop: float | None = None
    repetition: float = 0.0
    steer: float | None = None
    """The combined score (``evaluation.steer_score``) the default order uses."""
    readback: float | None = None
    """The feature's mean activation when the unsteered model reads the text (None: not measured)."""
    readback_rank: float | None = None
    """Its mid-rank among the other swept features' texts at the same value (1: above all; None: no evidence)."""
    word_rank: float | None = None
    """The firing words' count in the text ranked the same way (``evaluation.word_rank``; None: no evidence)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _matches(query: str, rec: dict, facts: FactsTable | None) -> bool:
    q = query.lower().strip()
    if q in words(rec.get("text", "")):
        return True
    if facts is not None:
        f = rec["feature"]
        if q in facts.words[f]:
            return True
        for t in facts.tensors["lens_top_ids"][f].tolist():
            if facts.token_texts.get(t, "").strip().lower() == q:
                return True
        for t in facts.tensors["fire_ids"][f].tolist():
            if t >= 0 and facts.token_texts.get(t, "").strip().lower() == q:
                return True
    return False


def annotate(records: Iterable[dict], firing_words: Sequence[Sequence[str]] | None = None, *,
             base_repetition: float | None = None) -> list[dict]:
    """The records with ``readback``, ``readback_rank``/``_p``/``_null``/``_chance`` (where measured),
    ``word_rank``/``_p``/``_null``/``_chance`` (with ``firing_words``, per feature: the feature facts'
    ``words``), ``base_repetition``, the measures' weights (``word_weight``, ``readback_weight``:
    ``evaluation.chance``) and ``steer`` added; ranks are taken over all the records given, so pass every result of one sweep (one
    prompt). ``base_repetition``: the unsteered text's repetition; None: a result whose text equals the
    unsteered one tells it (none such: not known)."""
    recs = [dict(r) for r in records]
    ranks = readback_ranks(recs)
    by_words = word_ranks(recs, firing_words) if firing_words is not None else {}
    if base_repetition is None:
        base_repetition = next((r.get("repetition") for r in recs if r.get("differs") is False), None)
    for r in recs:
        key = (r["feature"], float(r["value"]))
        if r.get("readback_ids") is not None:
            r["readback"] = own_readback(r["feature"], r["readback_ids"], r["readback_vals"])
            r.update(ranks.get(key, {}))
        r.update(by_words.get(key, {}))
        if base_repetition is not None:
            r["base_repetition"] = base_repetition
    return weigh(recs)


def weigh(records: list[dict]) -> list[dict]:
    """Set the measures' weights (``evaluation.chance.measure_weights``, pooled over ``records``) and ``steer``
    on :func:`annotate`d records, in place; returns them. :func:`annotate` does it for the records it is
    given; call it again on the union where one prompt's results were annotated in parts (several sweeps),
    so that every result of the prompt is scored with the same weights."""
    weights = measure_weights(records)
    for r in records:
        r["word_weight"], r["readback_weight"] = weights["word"], weights["readback"]
        r["steer"] = steer_score(r)
    return records


def explain_feature(records: Iterable[dict], feature: int) -> list[str]:
    """Why ``feature`` ranks where it does: one line per value (best first), from :func:`annotate`d records."""
    mine = [r for r in records if r["feature"] == feature]
    mine.sort(key=lambda r: (-r["steer"], -_num(r.get("score"))))
    return [f"value {st.format_value(r['value'])}: {explain(r)}\n    {r.get('text', '')!r}" for r in mine]


def rank(records: Iterable[dict], *, facts: FactsTable | None = None, n: int | None = 50, sort: str = "steer",
         query: str | None = None, all_values: bool = False) -> list[Row]:
    """The best result of each feature by ``sort`` (every result with ``all_values``), best first.

    ``query``: keep features whose firing words or top tokens are the word, or whose text contains it.
    """
    if sort not in SORTS:
        raise SaesteerError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    key = SORTS[sort]
    recs = [r if "steer" in r else annotate([r])[0] for r in records]
    if query:
        recs = [r for r in recs if _matches(query, r, facts)]
    if not all_values:
        best: dict[int, dict] = {}
        for r in recs:
            cur = best.get(r["feature"])
            if cur is None or key(r) > key(cur):
                best[r["feature"]] = r
        recs = list(best.values())
    recs.sort(key=lambda r: (key(r), -r["feature"]), reverse=True)
    if n is not None:
        recs = recs[:n]
    rows = []
    for r in recs:
        f = r["feature"]
        fw, lt = [], []
        if facts is not None and 0 <= f < len(facts):
            fw = list(facts.words[f])
            lt = [facts.token_texts.get(t, "") for t in facts.tensors["lens_top_ids"][f].tolist()]
        drop = r.get("fluency_drop")
        rows.append(Row(f, r["value"], float(r.get("score", 0.0)), r.get("fire_hits", 0), r.get("lens_hits", 0),
                        is_clear(r.get("fire_hits", 0), r.get("base_fire_hits", 0), drop) if drop is not None else None,
                        r.get("text", ""), fw, lt, drop, r.get("repetition", 0.0), r.get("steer"),
                        r.get("readback"), r.get("readback_rank"), r.get("word_rank")))
    return rows


def annotate_folder(directory: str | os.PathLike) -> tuple[list[dict], FactsTable | None]:
    """A sweep folder's records, :func:`annotate`d with its feature facts' firing words (where it holds them)
    and its unsteered text's repetition, and the facts."""
    facts = folder_facts(directory)
    manifest = st.read_manifest(Path(directory)) or {}
    base = (manifest.get("baseline") or {}).get("tokens")
    recs = annotate(load_folder_records(directory), facts.words if facts is not None else None,
                    base_repetition=repetition(base) if base is not None else None)
    return recs, facts


def top(directory: str | os.PathLike, **kwargs) -> list[Row]:
    """:func:`rank` over a sweep folder (with its feature facts)."""
    recs, facts = annotate_folder(directory)
    return rank(recs, facts=facts, **kwargs)


def load_folder_records(directory: str | os.PathLike) -> list[dict]:
    """Every record of a sweep folder (one-line error where it is not one)."""
    directory = Path(directory)
    manifest = st.read_manifest(directory)
    if manifest is None:
        raise SaesteerError(f"{directory} is not a sweep folder (no {st.MANIFEST}); give the --out folder of saesteer sweep")
    return st.load_records(directory, manifest["sweep"]["values"])


def folder_facts(directory: str | os.PathLike) -> FactsTable | None:
    """The feature facts a sweep folder holds, if any."""
    directory = Path(directory)
    return FactsTable.load(directory / st.FACTS) if FactsTable.exists(directory / st.FACTS) else None


def _clip(text: str, width: int) -> str:
    text = st.escape_text(text)
    return text if len(text) <= width else text[:width - 1] + "…"


def format_table(rows: Sequence[Row], *, text_width: int = 60) -> str:
    """A plain-text table: feature, value, score, hits, firing words, logit-lens tokens, text."""
    header = ["feature", "value", "steer", "score", "hits", "words", "readback", "firing words", "top tokens", "text"]
    lines = []
    for r in rows:
        lines.append([
            str(r.feature), st.format_value(r.value), "-" if r.steer is None else f"{r.steer:.2f}", f"{r.score:.2f}",
            f"{r.fire_hits}/{r.lens_hits}", "-" if r.word_rank is None else f"{r.word_rank:.3f}",
            "-" if r.readback_rank is None else f"{r.readback_rank:.3f}",
            _clip(", ".join(r.firing_words[:3]), 28), _clip(" ".join(repr(t) for t in r.lens_tokens[:3]), 28),
            _clip(r.text, text_width),
        ])
    widths = [max(len(h), *(len(row[i]) for row in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for row in lines:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(out)
