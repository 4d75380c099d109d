"""The model-internal measure of steering: does the model, reading the steered text, find the feature in it?

After a steered continuation is generated, the *unsteered* model reads the prompt and the continuation
(one teacher-forced prefill per text, stopped at the SAE's hook) and the SAE encodes every position. A
text's **readback vector** is the mean activation of every latent over the generated positions; a result's
**readback** is its own feature's entry: how much the model wrote about that feature, in the model's own
terms rather than in words.

The readback of one feature means little alone (scales differ from feature to feature), so it is read
against a **null**: the same feature's readback on every *other* swept feature's text at the same value.
:func:`readback_ranks` gives each result the mid-rank of its own readback among them (``readback_rank`` in
[0, 1]: 1 = above every other text; ties count half), the number of texts in the null, and a one-sided
permutation p-value ``(greater + equal / 2 + 1) / (n + 1)``, and ``readback_chance``, the chance that a text of
its value passes at 5% if texts were reassigned to features at random (``evaluation.chance``). Texts equal to
the unsteered continuation carry no evidence: their own rank is None and they are left out of every null.

Each result stores its text's readback vector sparsely (``readback_ids``/``readback_vals``: the latents with
a positive mean, values rounded to 6 significant digits), so ranks are computed from the stored results
alone (``saesteer top``, reports, merged shards) without the model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

import torch
from torch import Tensor

from saesteer.evaluation.activations import hook_activations
from saesteer.evaluation.chance import own_ranks

DIGITS = 6
"""Significant digits of stored readback values (the own value is read from the same rounded vector)."""


def _round(x: float) -> float:
    return float(f"{x:.{DIGITS}g}")


@torch.no_grad()
def readback_vectors(model, sae, hook: str, prompt: Sequence[int], continuations: Sequence[Sequence[int]], *,
                     pad_token_id: int = 0, rows_per_call: int = 64) -> Tensor:
    """``[n, d_sae]`` mean SAE activations over each continuation's generated positions, as the unsteered
    ``model`` reads ``prompt + continuation`` (0 for an empty continuation).

    Rows are right-padded: in a causal model later (pad) positions do not change earlier ones, so no mask
    is needed and every real position's activation is the one of the row alone.
    """
    prompt = [int(t) for t in prompt]
    n = len(continuations)
    out = torch.zeros(n, sae.d_sae)
    todo = [i for i, c in enumerate(continuations) if len(c) > 0]
    for s in range(0, len(todo), rows_per_call):
        rows = todo[s:s + rows_per_call]
        width = len(prompt) + max(len(continuations[i]) for i in rows)
        ids = torch.full((len(rows), width), int(pad_token_id), dtype=torch.long)
        valid = torch.zeros(len(rows), width - len(prompt))
        for b, i in enumerate(rows):
            seq = prompt + [int(t) for t in continuations[i]]
            ids[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            valid[b, :len(continuations[i])] = 1
        acts = hook_activations(model, hook, ids)[:, len(prompt):]
        z = sae.encode(acts.reshape(-1, acts.shape[-1]).to(sae.device)).float().clamp(min=0).cpu()
        z = z.reshape(len(rows), -1, sae.d_sae) * valid[..., None]
        out[rows] = z.sum(1) / valid.sum(1, keepdim=True)
    return out


def attach_readback(results: Sequence, lm, sae, hook: str, prompt_tokens: Sequence[int]) -> None:
    """Measure each result's text (``SweepResult``s of one prompt) and store its readback vector in its metrics."""
    vectors = readback_vectors(lm.model, sae, hook, prompt_tokens, [r.tokens for r in results],
                               pad_token_id=lm.pad_token_id)
    for r, v in zip(results, vectors):
        r.metrics.readback_ids, r.metrics.readback_vals = sparse(v)


def sparse(vector: Tensor) -> tuple[list[int], list[float]]:
    """The positive entries of a readback vector: ``(latent ids, values rounded)``."""
    idx = torch.nonzero(vector > 0).flatten().tolist()
    vals = vector[idx].tolist() if idx else []
    return idx, [_round(v) for v in vals]


def own_readback(feature: int, ids: Sequence[int] | None, vals: Sequence[float] | None) -> float | None:
    """The stored readback vector's entry for ``feature`` (0 when absent; None without a vector)."""
    if ids is None or vals is None:
        return None
    for i, v in zip(ids, vals):
        if i == feature:
            return float(v)
    return 0.0


def readback_ranks(records: Iterable[dict]) -> dict[tuple[int, float], dict]:
    """``{(feature, value): {"readback_rank", "readback_p", "readback_null", "readback_chance"}}`` for results
    (record dicts with ``feature``, ``value``, ``differs`` and ``readback_ids``/``readback_vals``); see the
    module docstring.

    Within each value, the null of feature ``f`` is ``f``'s readback on every other feature's changed text.
    Cost: one vectorised pass over the stored vectors per value, O(stored entries log stored entries).
    """
    by_value: dict[float, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("readback_ids") is not None:
            by_value[float(r["value"])].append(r)
    out: dict[tuple[int, float], dict] = {}
    for value, recs in by_value.items():
        changed = [r for r in recs if r.get("differs")]
        n_null = len(changed) - 1
        ranked, chance = _group_ranks(changed) if n_null >= 1 else ({}, None)
        for r in recs:
            f = r["feature"]
            rank, p = ranked.get(f, (None, None))
            out[(f, value)] = {"readback_rank": rank, "readback_p": p, "readback_null": max(n_null, 0),
                               "readback_chance": chance if rank is not None else None}
    return out


def _group_ranks(changed: list[dict]) -> tuple[dict[int, tuple[float, float]], float]:
    """For the changed texts of one value (text ``j`` is feature ``j``'s): per feature, the rank and p-value
    of its readback on its own text among the other texts, and the chance of a pass per text
    (``chance.own_ranks`` of the square [text, feature] matrix of the stored vectors)."""
    m = len(changed)
    feats = [r["feature"] for r in changed]
    lengths = torch.tensor([len(r["readback_ids"]) for r in changed], dtype=torch.long)
    ids = torch.cat([torch.zeros(0, dtype=torch.long)] +
                    [torch.as_tensor(r["readback_ids"], dtype=torch.long) for r in changed])
    vals = torch.cat([torch.zeros(0, dtype=torch.float64)] +
                     [torch.as_tensor(r["readback_vals"], dtype=torch.float64) for r in changed])
    rows = torch.repeat_interleave(torch.arange(m), lengths)
    size = max(max(feats), int(ids.max()) if ids.numel() else 0) + 1
    column = torch.full((size,), -1, dtype=torch.long)
    column[torch.tensor(feats, dtype=torch.long)] = torch.arange(m)
    cols = column[ids]
    held = cols >= 0                                   # entries of swept features: a square [text, feature] matrix
    ranks, ps, chance = own_ranks(rows[held], cols[held], vals[held], m)
    return dict(zip(feats, zip(ranks, ps))), chance


def top_fraction(rank: float | None, fraction: float = 0.05) -> bool:
    """Whether a ``readback_rank`` puts the feature's own text in the top ``fraction`` of its null."""
    return rank is not None and not math.isnan(rank) and rank >= 1.0 - fraction
