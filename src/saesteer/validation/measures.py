"""The validation's measures of one prompt's sweep: both tests against their permutation null, and each
measure's top 20 measured by the other."""

from __future__ import annotations

import re

import torch

from saesteer.engine import GenerationConfig, generate_ids
from saesteer.evaluation.readback import top_fraction
from saesteer.evaluation.text_metrics import hits
from saesteer.sweep.rank import annotate, rank
from saesteer.validation.nulls import TOP_FRACTION, Group, group_of

TOP_N = 20


def model_opening(lm, n_words: int = 4) -> str:
    """The opening words of the text the model itself writes most readily (greedy, from BOS): a prompt that
    assumes nothing about the model's domain."""
    out = generate_ids(lm.model, [[lm.bos_token_id]], GenerationConfig(max_new_tokens=4 * n_words + 4),
                       eos_token_id=lm.eos_token_id, pad_token_id=lm.pad_token_id)[0]
    words = lm.decode(out).split()[:n_words]
    opening = re.sub(r"[\s,.;:!?]+$", "", " ".join(words))
    return opening or lm.decode(out[:4]).strip()


def null_groups(annotated: list[list[dict]], facts, n: int) -> list[Group]:
    """One :class:`~saesteer.validation.nulls.Group` per sweep value."""
    firing = [list(facts.words[f]) for f in range(n)]
    groups = []
    for recs in annotated:
        for value in dict.fromkeys(float(r["value"]) for r in recs):
            groups.append(group_of([r for r in recs if float(r["value"]) == value], n, firing))
    return groups


def base_clean(baseline, facts, n: int) -> torch.Tensor:
    """Per feature: the unsteered text holds none of its firing words (else it cannot be clear)."""
    return torch.tensor([hits(baseline.tokens, baseline.text, facts.targets(f)).words == 0 for f in range(n)])


def cross_top(annotated: list[list[dict]], n: int = TOP_N) -> dict:
    """The first ``n`` features by each ranking (each at its best value), measured by the other measure:
    ``steer`` (what ``saesteer top`` shows) by both; the firing-word ``score`` by the readback; the readback
    rank by firing words."""
    recs = [r for group in annotated for r in group]
    by_steer = rank(recs, n=n, sort="steer")
    by_score = rank(recs, n=n, sort="score")
    by_readback = rank(recs, n=n, sort="readback")

    def top5(rows):
        return sum(1 for r in rows if top_fraction(r.readback_rank, TOP_FRACTION))

    def clear(rows):
        return sum(1 for r in rows if r.clear)

    return {
        "top_steer": [r.feature for r in by_steer],
        "top_steer_readback_top5": top5(by_steer), "top_steer_clear": clear(by_steer),
        "top_score_readback_top5": top5(by_score), "top_score_clear": clear(by_score),
        "top_readback_clear": clear(by_readback), "top_readback_readback_top5": top5(by_readback),
    }
