"""The clear-steering criterion of the validation, its chance control, and top-n counts."""

from __future__ import annotations

from typing import Iterable, Sequence

from saesteer.evaluation.text_metrics import hits, is_clear, score

N_BEST = 20


def clearest(results: Iterable):
    """One feature's results on one prompt (``SweepResult``s) -> its clearest continuation, or None.

    A continuation is *clear* (``text_metrics.is_clear``) when it holds at least 2 occurrences of the
    feature's firing words (function words removed), the unsteered continuation none, and its mean
    log-probability under the unsteered model is at most 1 nat/token below the unsteered text's. A feature
    *steers clearly* on a prompt when one of its values gives a clear continuation. Among clear ones this
    returns the one with the most firing-word occurrences, then the smallest fluency drop, then the first.
    """
    best = None
    for r in results:
        m = r.metrics
        if not is_clear(m.fire_hits, m.base_fire_hits, m.fluency_drop):
            continue
        if best is None or (m.fire_hits, -m.fluency_drop) > (best.metrics.fire_hits, -best.metrics.fluency_drop):
            best = r
    return best


def chance_clear(results: Sequence, facts, baseline_tokens: Sequence[int], baseline_text: str, shift: int) -> set[int]:
    """Features ``f`` whose continuations would be clear against feature ``(f + shift) % n``'s firing words.

    The control for :func:`clearest`: same texts, same fluency, someone else's words. Its size is what
    the clear count would be if steering had nothing to do with what a feature fires on.
    """
    n = len(facts)
    out: set[int] = set()
    base_hits: dict[int, int] = {}
    for r in results:
        g = (r.feature + shift) % n
        if g not in base_hits:
            base_hits[g] = hits(baseline_tokens, baseline_text, facts.targets(g)).words
        if r.feature in out or base_hits[g]:
            continue
        if is_clear(hits(r.tokens, r.text, facts.targets(g)).words, 0, r.metrics.fluency_drop):
            out.add(r.feature)
    return out


def no_fluency_score(m) -> float:
    """The score a sweep without ``--fluency`` gives the same continuation (coherence from repetition)."""
    return score(m.fire_hits, m.base_fire_hits, m.lens_hits, m.base_lens_hits, repetition=m.repetition)


def top_hits(best_scores: dict[int, float], clear: set[int], n: int = N_BEST) -> int:
    """How many of the ``n`` features with the highest score (ties: lower id first) are in ``clear``."""
    top = sorted(best_scores, key=lambda f: (-best_scores[f], f))[:n]
    return sum(1 for f in top if f in clear)


def result_dict(rel: bool, r) -> dict:
    """One result as the report shows it."""
    m = r.metrics
    return {"value": r.value, "relative": rel, "clamp": round(r.clamp, 4), "text": r.text, "fire_hits": m.fire_hits,
            "fluency_drop": None if m.fluency_drop is None else round(m.fluency_drop, 4), "score": round(m.score, 4),
            "clear": bool(is_clear(m.fire_hits, m.base_fire_hits, m.fluency_drop))}


def shown(rs: list) -> tuple[bool, object]:
    """The ``(relative, result)`` to show for one feature on one prompt: its clearest, else its best-scoring."""
    c = clearest(r for _, r in rs)
    if c is not None:
        return next(x for x in rs if x[1] is c)
    return max(rs, key=lambda x: x[1].metrics.score)
