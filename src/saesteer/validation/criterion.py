"""The clear-steering criterion of the validation, its chance control, and top-n counts."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from saesteer.errors import SaesteerError
from saesteer.evaluation.text_metrics import CLEAR_MAX_FLUENCY_DROP, CLEAR_MIN_HITS, hits, is_clear, score

N_BEST = 20


WORD_RULES = ("expected", "excess", "clean")
"""How the firing-word test treats occurrences the steered text would hold anyway (:func:`word_levels`)."""
WORD_RULE = "excess"


def word_levels(base_hits, expected, rule: str = WORD_RULE) -> list[float]:
    """Per feature, the firing-word occurrences a steered text must exceed by ``CLEAR_MIN_HITS`` (2):

    * ``excess`` (the default, chosen on seed 0 of ``docs/validation.md``): the unsteered text's count, so
      words already in the unsteered text can still count (2 occurrences more);
    * ``expected``: the larger of the unsteered text's count and the count a text the model writes anyway holds
      (``measures.expected_hits``): only occurrences beyond both are evidence, so words the model writes
      everywhere (its stock words) count for little;
    * ``clean`` (the rule before issue 16's second round): 0 when the unsteered text holds none of the words, else
      no text can pass (infinity).
    """
    if rule not in WORD_RULES:
        raise SaesteerError(f"unknown firing-word rule {rule!r}; choose one of {', '.join(WORD_RULES)}")
    if rule == "clean":
        return [0.0 if b == 0 else math.inf for b in base_hits]
    if rule == "excess":
        return [float(b) for b in base_hits]
    return [max(float(b), float(e)) for b, e in zip(base_hits, expected)]


def clear_at(m, level: float | None) -> bool:
    """Whether metrics ``m`` pass the firing-word test at ``level`` (None: ``text_metrics.is_clear``, the
    sweep's rule: 2 occurrences, the unsteered text none)."""
    if level is None:
        return is_clear(m.fire_hits, m.base_fire_hits, m.fluency_drop)
    return (m.fire_hits - level >= CLEAR_MIN_HITS and m.fluency_drop is not None
            and m.fluency_drop <= CLEAR_MAX_FLUENCY_DROP)


def clearest(results: Iterable, level: float | None = None):
    """One feature's results on one prompt (``SweepResult``s) -> its clearest continuation, or None.

    A continuation is *clear* when it holds at least 2 occurrences of the feature's firing words (function
    words removed) beyond ``level`` (:func:`word_levels`; None: the unsteered text must hold none,
    ``text_metrics.is_clear``), and its mean log-probability under the unsteered model is at most 1 nat/token
    below the unsteered text's. A feature *steers clearly* on a prompt when one of its values gives a clear
    continuation. Among clear ones this returns the one with the most firing-word occurrences, then the
    smallest fluency drop, then the first.
    """
    best = None
    for r in results:
        m = r.metrics
        if not clear_at(m, level):
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


def result_dict(rel: bool, r, level: float | None = None) -> dict:
    """One result as the report shows it (``clear`` at ``level``, see :func:`clearest`)."""
    m = r.metrics
    return {"value": r.value, "relative": rel, "clamp": round(r.clamp, 4), "text": r.text, "fire_hits": m.fire_hits,
            "fluency_drop": None if m.fluency_drop is None else round(m.fluency_drop, 4), "score": round(m.score, 4),
            "clear": bool(clear_at(m, level))}


def shown(rs: list, level: float | None = None) -> tuple[bool, object]:
    """The ``(relative, result)`` to show for one feature on one prompt: its clearest, else its best-scoring."""
    c = clearest((r for _, r in rs), level)
    if c is not None:
        return next(x for x in rs if x[1] is c)
    return max(rs, key=lambda x: x[1].metrics.score)
