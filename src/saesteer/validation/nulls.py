"""Counts of features that pass each test, next to a permutation null that cannot pass by chance.

The null hypothesis is that steering has nothing to do with *which* feature was clamped: then the texts
could belong to any feature. A permutation ``pi`` of the swept features judges the texts of feature
``pi(f)`` as if they were ``f``'s: against ``f``'s firing words and ``f``'s readback. The identity is the
observed count; random permutations (seeded) give the null distribution, its mean ("chance"), a 95%
interval, and the p-value ``(1 + #{null >= observed}) / (1 + permutations)``.

Per group of texts (one sweep value), with ``n`` swept features:

* ``hits[g, f]``: occurrences of feature ``f``'s firing words in text ``g``;
* ``rank[g, f]``: mid-rank of feature ``f``'s readback on text ``g`` among the other *changed* texts of the
  group (``evaluation.readback``; -1 for a text equal to the unsteered one, which carries no evidence);
  ``word_rank[g, f]``: the same for ``hits`` (``evaluation.word_rank``);
* ``fluent[g]``: text ``g`` is at most 1 nat/token less fluent than the unsteered text.

Tests (any value of the feature passes it): **words** = at least 2 firing-word occurrences in a fluent text
beyond the feature's level (``criterion.word_levels``: by default the unsteered text's count); **readback** = a fluent, changed text in the top
5% of its null; **both** = one text that passes both; **word_rank** = the readback's test applied to the
firing words: a fluent text whose count of the feature's firing words is in the top 5% of the same null
(``evaluation.word_rank``: the feature's count in every other changed text) and at least 1 beyond its level.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saesteer.evaluation.text_metrics import CLEAR_MAX_FLUENCY_DROP, CLEAR_MIN_HITS
from saesteer.evaluation.word_rank import word_counts

TOP_FRACTION = 0.05
PERMUTATIONS = 999
TESTS = ("words", "readback", "both", "word_rank")


@dataclass
class Group:
    """The texts of one sweep value, one per swept feature (row ``g`` = feature ``g``'s text)."""

    hits: torch.Tensor
    rank: torch.Tensor
    fluent: torch.Tensor
    changed: torch.Tensor
    word_rank: torch.Tensor = field(init=False)
    """``rank_matrix`` of ``hits``: derived from them."""

    def __post_init__(self) -> None:
        self.word_rank = rank_matrix(self.hits.float(), self.changed)


def hits_matrix(texts: list[str], firing_words: list[list[str]]) -> torch.Tensor:
    """``[texts, features]``: occurrences of each feature's firing words in each text (dense int32;
    ``evaluation.word_rank.word_counts``, the count ``top``'s word ranks use)."""
    return word_counts(texts, firing_words).to_dense().round().to(torch.int32)


def rank_matrix(readback: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    """``[texts, features]`` mid-ranks of ``readback[g, f]`` within column ``f`` among the other changed
    texts (the rule of ``evaluation.readback.readback_ranks``); -1 for unchanged texts."""
    n = readback.shape[0]
    out = torch.full(readback.shape, -1.0)
    rows = torch.nonzero(changed).flatten()
    m = rows.numel()
    if m < 2:
        return out
    cols = readback[rows].T.contiguous()          # [features, m]
    sorted_cols = cols.sort(dim=1).values
    less = torch.searchsorted(sorted_cols, cols, right=False)
    less_eq = torch.searchsorted(sorted_cols, cols, right=True)
    ties = less_eq - less - 1                      # others equal to it
    out[rows] = ((less + 0.5 * ties) / (m - 1)).T.float()
    assert out.shape[0] == n
    return out


def passes(groups: list[Group], levels: torch.Tensor, perm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Boolean ``[features]`` per test when feature ``f`` is judged on the texts of ``perm[f]``; ``levels``:
    per feature, the firing-word occurrences a text must exceed by 2 (``criterion.word_levels``; a boolean
    tensor is the older form: True = 0, False = no text passes)."""
    if levels.dtype == torch.bool:
        levels = torch.where(levels, 0.0, torch.inf)
    n = levels.numel()
    idx = torch.arange(n)
    out = {t: torch.zeros(n, dtype=torch.bool) for t in TESTS}
    for g in groups:
        fluent = g.fluent[perm]
        excess = g.hits[perm, idx] - levels
        w = fluent & (excess >= CLEAR_MIN_HITS)
        r = fluent & g.changed[perm] & (g.rank[perm, idx] >= 1.0 - TOP_FRACTION)
        out["words"] |= w
        out["readback"] |= r
        out["both"] |= w & r
        out["word_rank"] |= fluent & (excess >= 1) & (g.word_rank[perm, idx] >= 1.0 - TOP_FRACTION)
    return out


def null_counts(prompts: dict[str, tuple[list[Group], torch.Tensor]], *, permutations: int = PERMUTATIONS,
                seed: int = 0) -> dict[str, dict[str, dict]]:
    """Per prompt label (``groups, levels``), and ``"every_prompt"`` (features passing on all of them),
    per test: the ``observed`` count and its ``features``, and the permutation null's ``chance`` (mean),
    ``interval`` (2.5% and 97.5% quantiles), ``p`` and ``net`` (observed - chance). One permutation of the
    features is drawn per round and applied to every prompt."""
    n = next(iter(prompts.values()))[1].numel()
    labels = [*prompts, "every_prompt"]

    def count(perm: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        got = {lbl: passes(groups, clean, perm) for lbl, (groups, clean) in prompts.items()}
        got["every_prompt"] = {t: torch.stack([got[lbl][t] for lbl in prompts]).all(0) for t in TESTS}
        return got

    observed = count(torch.arange(n))
    gen = torch.Generator().manual_seed(seed)
    null = {lbl: {t: [] for t in TESTS} for lbl in labels}
    for _ in range(permutations):
        got = count(torch.randperm(n, generator=gen))
        for lbl in labels:
            for t in TESTS:
                null[lbl][t].append(int(got[lbl][t].sum()))
    return {lbl: {t: summary(observed[lbl][t], null[lbl][t]) for t in TESTS} for lbl in labels}


def summary(observed: torch.Tensor, null: list[int]) -> dict:
    """An observed pass vector against its null counts (see :func:`null_counts`)."""
    obs = int(observed.sum())
    dist = torch.tensor(null or [0], dtype=torch.float64)
    lo, hi = dist.quantile(torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    p = (1 + sum(1 for x in null if x >= obs)) / (1 + len(null))
    chance = float(dist.mean())
    return {"observed": obs, "chance": round(chance, 3), "interval": [lo, hi], "p": round(p, 6),
            "net": round(obs - chance, 3), "features": torch.nonzero(observed).flatten().tolist()}


def group_of(records: list[dict], n: int, firing_words: list[list[str]]) -> Group:
    """A :class:`Group` from the records of one value, one per feature ``0..n-1`` (readback vectors needed)."""
    by_f = {r["feature"]: r for r in records}
    texts = [by_f[f]["text"] if f in by_f else "" for f in range(n)]
    changed = torch.tensor([bool(by_f.get(f, {}).get("differs")) for f in range(n)])
    drops = [by_f.get(f, {}).get("fluency_drop") for f in range(n)]
    fluent = torch.tensor([d is not None and d <= CLEAR_MAX_FLUENCY_DROP for d in drops])
    readback = torch.zeros(n, n)
    rows, cols, vals = [], [], []
    for f, r in by_f.items():
        ids = r.get("readback_ids") or []
        rows += [f] * len(ids)
        cols += ids
        vals += r.get("readback_vals") or []
    rows_t, cols_t = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
    keep = cols_t < n                                    # latents beyond the swept features are not ranked
    readback[rows_t[keep], cols_t[keep]] = torch.tensor(vals, dtype=torch.float32)[keep]
    return Group(hits_matrix(texts, firing_words), rank_matrix(readback, changed), fluent, changed)
