"""Firing words read against the same null as the readback: is a feature's own text unusually full of its words?

A result's ``fire_hits`` counts its feature's firing words (``text_metrics.hits``) in its steered text. A
count alone says little: on a model that writes its stock words everywhere, or loops, most texts hold some
of a feature's words whichever feature was clamped. :func:`word_ranks` ranks the count as
``evaluation.readback.readback_ranks`` ranks the readback: within one value, feature ``f``'s occurrences in
its own steered text among ``f``'s occurrences in **every other swept feature's changed text** (the
mid-rank ``word_rank`` in [0, 1]: 1 = more than in every other text, ties count half; ``word_p`` the
one-sided permutation p-value ``(greater + equal / 2 + 1) / (n + 1)``; ``word_null`` how many texts;
``word_chance`` the chance that a text of its value passes at 5% if texts were reassigned to features at
random, ``evaluation.chance``). Texts equal to the unsteered one carry no evidence: their rank is None and
they are left out of every null.

So words every text holds (a loop of ``is a file`` in every text, for a feature whose words are ``file``)
give no credit, and words the unsteered text holds already are credited when the steered text holds
unusually many of them: the unsteered text's count is the same for every text of the null, so only the
excess over what other features' texts hold counts. It needs the features' firing words (the feature facts)
and the texts; nothing else.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable, Sequence

import torch

from saesteer.evaluation.chance import own_ranks
from saesteer.evaluation.text_metrics import words


def word_counts(texts: Sequence[str], firing_words: Sequence[Sequence[str]]) -> torch.Tensor:
    """Sparse ``[texts, features]`` (coalesced COO, float64): occurrences of each feature's firing words among
    each text's words (``text_metrics.words``; the count ``text_metrics.hits`` gives)."""
    vocab: dict[str, int] = {}
    for ws in firing_words:
        for w in ws:
            vocab.setdefault(w, len(vocab))
    rows, cols, vals = [], [], []
    for g, text in enumerate(texts):
        for w, c in Counter(w for w in words(text) if w in vocab).items():
            rows.append(g), cols.append(vocab[w]), vals.append(float(c))
    pairs = sorted((vocab[w], f) for f, ws in enumerate(firing_words) for w in set(ws))
    member_w = torch.tensor([w for w, _ in pairs], dtype=torch.long)
    member_f = torch.tensor([f for _, f in pairs], dtype=torch.long)
    degree = torch.bincount(member_w, minlength=len(vocab))   # features holding each word
    start = torch.cumsum(degree, 0) - degree
    text_w = torch.tensor(cols, dtype=torch.long)
    k = degree[text_w] if len(cols) else torch.zeros(0, dtype=torch.long)
    # every (text, word) count goes to each feature holding the word
    first = torch.repeat_interleave(torch.cumsum(k, 0) - k, k)
    at = torch.repeat_interleave(start[text_w] if len(cols) else text_w, k) + torch.arange(int(k.sum())) - first
    idx = torch.stack([torch.repeat_interleave(torch.tensor(rows, dtype=torch.long), k), member_f[at]])
    vals_t = torch.repeat_interleave(torch.tensor(vals, dtype=torch.float64), k)
    return torch.sparse_coo_tensor(idx, vals_t, (len(texts), len(firing_words)), check_invariants=True).coalesce()


def _group_ranks(texts: Sequence[str], firing_words: Sequence[Sequence[str]]) -> tuple[list, list, float]:
    """For ``m`` changed texts, text ``j`` being feature ``j``'s (``firing_words[j]``): per ``j``, the rank and
    p-value of its own count among its counts in the other ``m - 1`` texts; and the group's chance of a pass
    per text (``chance.own_ranks`` of the texts' firing-word counts)."""
    h = word_counts(texts, firing_words)
    rows, cols = h.indices()
    return own_ranks(rows, cols, h.values().round(), len(texts))


def word_ranks(records: Iterable[dict], firing_words: Sequence[Sequence[str]]) -> dict[tuple[int, float], dict]:
    """``{(feature, value): {"word_rank", "word_p", "word_null", "word_chance"}}`` for results (record dicts with ``feature``,
    ``value``, ``differs`` and ``text``), a feature's firing words being ``firing_words[feature]`` (none
    beyond the list); see the module docstring. Within each value, the null of feature ``f`` is ``f``'s count
    in every other feature's changed text."""
    by_value: dict[float, list[dict]] = defaultdict(list)
    for r in records:
        by_value[float(r["value"])].append(r)
    n_words = len(firing_words)
    out: dict[tuple[int, float], dict] = {}
    for value, recs in by_value.items():
        changed = [r for r in recs if r.get("differs")]
        n_null = len(changed) - 1
        for r in recs:
            out[(r["feature"], value)] = {"word_rank": None, "word_p": None, "word_null": max(n_null, 0),
                                          "word_chance": None}
        if n_null < 1:
            continue
        fw = [firing_words[r["feature"]] if 0 <= r["feature"] < n_words else () for r in changed]
        ranks, ps, chance = _group_ranks([r.get("text", "") for r in changed], fw)
        for r, rank, p in zip(changed, ranks, ps):
            out[(r["feature"], value)] = {"word_rank": rank, "word_p": p, "word_null": n_null, "word_chance": chance}
    return out
