"""How much of a measure's evidence chance explains, within one sweep: the weights of ``steer``'s two measures.

Both measures of a result (``evaluation.readback`` and ``evaluation.word_rank``) rank the feature's own text
among every other feature's changed text at the same value, and call the top ``TOP_FRACTION`` (5%) a pass.
Even a measure that carries no information passes some texts: the question is how many it would pass if
the texts belonged to other features. That is countable exactly from what the ranks are made of. For each
feature ``f`` and each other text ``g`` of the group, ``f``'s value on ``g`` has a mid-rank among ``f``'s
values on the other texts; :func:`chance_passes` counts the pairs whose mid-rank reaches the top 5% (the
expectation, over random reassignments of texts to features, of the passes in a group).

:func:`measure_weights` pools a sweep's groups: ``weight = max(0, 1 - chance / observed)``, the share of a
measure's observed passes that chance does not explain (an estimate of the measure's true-discovery rate at
5%). Both weights are divided by the larger one, so the stronger measure keeps weight 1; when neither beats
chance, both are 1, and a measure the sweep did not measure (no ranks: no firing words known, or no
readback stored) has weight 1 and leaves the other's at 1. On a model whose texts carry the feature's words, both measures
weigh about the same; on one whose texts are loops of a few stock words, the word measure passes about as
many texts as chance and stops deciding the ranking, while the readback still does.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import torch

TOP_FRACTION = 0.05
"""A pass: a mid-rank in the top 5% of the null (``readback.top_fraction``'s default)."""
MEASURES = ("word", "readback")
"""The measures weighed: their ``{name}_rank`` and ``{name}_chance`` record fields."""


def chance_passes(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, m: int,
                  fraction: float = TOP_FRACTION) -> int:
    """Of the ``m x (m - 1)`` off-diagonal entries of a square ``[texts, features]`` matrix (text ``j``
    belongs to feature ``j``) given by its stored non-negative entries (``rows``, ``cols``, ``vals``; every
    other entry is 0), how many have a mid-rank within their column, among the column's other ``m - 1``
    entries, of at least ``1 - fraction``. Zeros never pass (at most half the others are below them)."""
    if m < 2:
        return 0
    keep = vals > 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep].double()
    if vals.numel() == 0:
        return 0
    order = _by_column_then_value(cols, vals)
    r, c, v = rows[order], cols[order], vals[order]
    stored = torch.bincount(c, minlength=m)
    col_start = torch.cumsum(stored, 0) - stored
    new_run = torch.ones_like(c, dtype=torch.bool)
    new_run[1:] = (c[1:] != c[:-1]) | (v[1:] != v[:-1])
    run = torch.cumsum(new_run.long(), 0) - 1
    run_start = torch.nonzero(new_run).flatten()
    run_len = torch.bincount(run)
    less = (m - stored[c]) + (run_start[run] - col_start[c])       # the column's zeros, then smaller values
    rank = (less + 0.5 * (run_len[run] - 1)) / (m - 1)
    return int(((rank >= 1.0 - fraction) & (r != c)).sum())


def own_ranks(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, m: int) -> tuple[list, list, float]:
    """For a square ``[texts, features]`` matrix of ``m >= 2`` changed texts (text ``j`` belongs to feature
    ``j``) given by its stored non-negative entries (every other entry is 0): per feature, the mid-rank of its
    own text's entry among its entries on the other ``m - 1`` texts and the one-sided p-value
    ``(greater + equal / 2 + 1) / m``; and the chance of a pass per text (:func:`chance_passes` per pair).
    Both ranks, the readback's and the firing words', are this of their matrix."""
    n_null = m - 1
    vals = vals.double()
    own = torch.zeros(m, dtype=torch.float64)
    mine = rows == cols
    own[cols[mine]] = vals[mine]
    other_cols, other_vals = cols[~mine], vals[~mine]
    above = torch.bincount(other_cols[other_vals > own[other_cols]], minlength=m).double()
    equal = torch.bincount(other_cols[other_vals == own[other_cols]], minlength=m).double()
    equal = torch.where(own == 0, n_null - above, equal)   # texts without the entry tie with an own 0
    below = n_null - above - equal
    ranks = ((below + 0.5 * equal) / n_null).tolist()
    ps = ((above + 0.5 * equal + 1) / (n_null + 1)).tolist()
    return ranks, ps, chance_passes(rows, cols, vals, m) / (m * n_null)


def _by_column_then_value(cols: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """The order of the entries by column, then by value: one sort of a combined integer key where the values
    are small non-negative integers (word counts), else a stable sort by value, then by column."""
    top = float(vals.max())
    if top < 2 ** 31 and bool((vals == vals.round()).all()):
        return torch.argsort(cols.long() * 2 ** 31 + vals.long())
    by_value = torch.argsort(vals, stable=True)
    return by_value[torch.argsort(cols[by_value], stable=True)]


def _is_pass(rank) -> bool:
    return rank is not None and rank == rank and rank >= 1.0 - TOP_FRACTION


def _share_beyond(observed: float, chance: float) -> float:
    """``max(0, 1 - chance / observed)``; 0 where the excess is within rounding of the summed chances."""
    excess = observed - chance
    return excess / observed if excess > 1e-9 * max(1.0, observed) else 0.0


def measure_passes(records: Iterable[dict]) -> dict[str, tuple[int, float]]:
    """``{name: (observed passes, passes expected by chance)}`` for each measure a sweep's records were
    annotated with (``{name}_rank`` and ``{name}_chance``, the group's :func:`chance_passes` per pair)."""
    observed: dict[str, int] = defaultdict(int)
    chance: dict[str, float] = defaultdict(float)
    for r in records:
        for name in MEASURES:
            share = r.get(f"{name}_chance")
            if share is None or r.get(f"{name}_rank") is None:
                continue
            observed[name] += _is_pass(r[f"{name}_rank"])
            chance[name] += share
    return {name: (observed[name], chance[name]) for name in chance}


def measure_weights(records: Iterable[dict]) -> dict[str, float]:
    """``{"word": w, "readback": w}`` for one sweep's records (see :func:`measure_passes` and the module
    docstring)."""
    raw = {name: _share_beyond(obs, chance) for name, (obs, chance) in measure_passes(records).items()}
    top = max(raw.values(), default=0.0)
    return {name: 1.0 if top == 0 or name not in raw else raw[name] / top for name in MEASURES}
