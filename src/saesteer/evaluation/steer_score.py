"""One score for ranking steering results, from both measures, that penalises degenerate text.

``steer = evidence * fluency_factor * loop_factor`` (0 for a text equal to the unsteered one), where

* ``evidence = words + internal`` (each in [0, 1], so evidence is in [0, 2]):

  - ``words = min(gain, 2) / 2``: firing-word evidence; ``gain`` is the firing-word occurrences beyond the
    unsteered text's (as the sweep's ``score``), so 2 new occurrences, the "clear" threshold, give the full 1;
  - ``internal = max(0, 2 * readback_rank - 1)``: the model-internal evidence (``evaluation.readback``):
    0 at or below the median of the null, 1 above every other feature's text; 0 where not measured;

* ``fluency_factor = 1`` when the text is at most 1 nat/token less fluent than the unsteered one (or
  fluency was not measured), else ``exp(-(drop - 1))``;
* ``loop_factor = 1 - max(0, repetition - 0.25) / 0.75``: texts whose bigrams mostly repeat earlier ones
  (loops such as ``the the the``) go to 0; ordinary text (a quarter of repeated bigrams or fewer) is not
  touched. Fluency alone does not catch loops: a model finds its own loops likely.

A feature's rank is its best result by ``steer``. The two kinds of evidence add up, so a result with
its words *and* its own latent clearly present in the text ranks above one with either alone.
"""

from __future__ import annotations

import math

from saesteer.evaluation.text_metrics import CLEAR_MAX_FLUENCY_DROP, CLEAR_MIN_HITS

LOOP_FREE = 0.25
"""Share of repeated bigrams that ordinary text may have without penalty."""


def _num(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def steer_parts(rec: dict) -> dict:
    """The terms of ``steer`` for one result (a record dict with its readback rank, if any)."""
    hits, base = int(rec.get("fire_hits", 0) or 0), int(rec.get("base_fire_hits", 0) or 0)
    gain = float(max(0, hits - base))
    words = min(gain, float(CLEAR_MIN_HITS)) / CLEAR_MIN_HITS
    rank = _num(rec.get("readback_rank"))
    internal = max(0.0, 2.0 * rank - 1.0) if rank is not None else 0.0
    drop = _num(rec.get("fluency_drop"))
    fluency = 1.0 if drop is None or drop <= CLEAR_MAX_FLUENCY_DROP else math.exp(-(drop - CLEAR_MAX_FLUENCY_DROP))
    rep = _num(rec.get("repetition")) or 0.0
    loops = max(0.0, 1.0 - max(0.0, rep - LOOP_FREE) / (1.0 - LOOP_FREE))
    differs = rec.get("differs", True)
    steer = 0.0 if not differs else (words + internal) * fluency * loops
    return {"steer": steer, "words": words, "internal": internal, "fluency_factor": fluency, "loop_factor": loops,
            "differs": bool(differs)}


def steer_score(rec: dict) -> float:
    """``steer`` of one result (see the module docstring)."""
    return steer_parts(rec)["steer"]


def explain(rec: dict) -> str:
    """One line saying how a result's ``steer`` comes about."""
    p = steer_parts(rec)
    if not p["differs"]:
        return "steer 0: the text equals the unsteered one"
    rank = rec.get("readback_rank")
    rank_s = "not measured" if rank is None else f"rank {rank:.3f} of {rec.get('readback_null', '?')} texts"
    drop = rec.get("fluency_drop")
    drop_s = "not measured" if drop is None else f"{drop:+.2f} nats/token"
    return (f"steer {p['steer']:.3f} = (words {p['words']:.2f} [{rec.get('fire_hits', 0)} firing words, unsteered "
            f"{rec.get('base_fire_hits', 0)}] + internal {p['internal']:.2f} [readback {rank_s}]) x fluency "
            f"{p['fluency_factor']:.2f} [drop {drop_s}] x loops {p['loop_factor']:.2f} [repetition "
            f"{float(rec.get('repetition', 0) or 0):.2f}]")
