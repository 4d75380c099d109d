"""One score for ranking steering results, from both measures, each read against the same null, that
penalises degenerate text.

``steer = evidence * fluency_factor * loop_factor`` (0 for a text equal to the unsteered one), where

* ``evidence = word_weight * words + readback_weight * internal`` (each term in [0, 1], so evidence is in
  [0, 2]), both read from ranks of the feature's own text among every other swept feature's changed text at
  the same value (mid-ranks, 1 = above all). The weights (``evaluation.chance``, set by ``sweep.rank.annotate``
  for one sweep; 1 where absent) are the share of each measure's passes at 5% that chance does not explain,
  the stronger measure's set to 1: a measure that passes no more texts than it would with the texts assigned
  to other features does not decide the ranking;

  - ``words = max(0, 2 * word_rank - 1) * min(gain, 2) / 2``: the firing-word evidence. ``word_rank``
    (``evaluation.word_rank``) ranks the feature's firing-word occurrences in its text against every other
    feature's text: 0 at or below the null's median, 1 when the text holds more of them than any other
    feature's text does, so words every text holds (a model's stock words, its loops) give nothing, and
    words the unsteered text holds already count when the steered text holds unusually many. ``gain`` is
    the occurrences beyond the unsteered text's, so 2 new ones, the "clear" threshold, give the full
    amount. Without a word rank (no firing words known, or no other changed text to rank against) the
    rank's factor is 1;
  - ``internal = max(0, 2 * readback_rank - 1)``: the model-internal evidence (``evaluation.readback``),
    the same transform of the readback's rank; 0 where not measured;

* ``fluency_factor = 1`` when the text is at most 1 nat/token less fluent than the unsteered one (or
  fluency was not measured), else ``exp(-(drop - 1))``;
* ``loop_factor = 1 - max(0, repetition - free) / (1 - free)`` with ``free = max(0.25,
  base_repetition)``: texts whose bigrams repeat earlier ones (loops such as ``the the the``) more than
  ordinary text (a quarter of repeated bigrams) *and* more than the unsteered text does go towards 0. A model
  that loops unsteered does not have every steered text penalised for looping as much as it does itself.
  Fluency alone does not catch loops: a model finds its own loops likely.

A feature's rank is its best result by ``steer``. The two kinds of evidence add up, so a result with its
words *and* its own latent unusually present in the text ranks above one with either alone.
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


def _words(rec: dict) -> float:
    gain = float(max(0, int(rec.get("fire_hits", 0) or 0) - int(rec.get("base_fire_hits", 0) or 0)))
    amount = min(gain, float(CLEAR_MIN_HITS)) / CLEAR_MIN_HITS
    rank = _num(rec.get("word_rank"))
    return amount if rank is None else max(0.0, 2.0 * rank - 1.0) * amount


def _weight(rec: dict, name: str) -> float:
    w = _num(rec.get(f"{name}_weight"))
    return 1.0 if w is None else w


def loop_factor(rep: float, base_rep: float | None) -> float:
    """``1 - max(0, rep - free) / (1 - free)``, ``free = max(LOOP_FREE, base_rep)`` (1 when ``free`` is 1)."""
    free = max(LOOP_FREE, base_rep or 0.0)
    if free >= 1.0:
        return 1.0
    return max(0.0, 1.0 - max(0.0, rep - free) / (1.0 - free))


def steer_parts(rec: dict) -> dict:
    """The terms of ``steer`` for one result (a record dict with its word and readback ranks, if any)."""
    words = _weight(rec, "word") * _words(rec)
    rank = _num(rec.get("readback_rank"))
    internal = _weight(rec, "readback") * max(0.0, 2.0 * rank - 1.0) if rank is not None else 0.0
    drop = _num(rec.get("fluency_drop"))
    fluency = 1.0 if drop is None or drop <= CLEAR_MAX_FLUENCY_DROP else math.exp(-(drop - CLEAR_MAX_FLUENCY_DROP))
    loops = loop_factor(_num(rec.get("repetition")) or 0.0, _num(rec.get("base_repetition")))
    differs = rec.get("differs", True)
    steer = 0.0 if not differs else (words + internal) * fluency * loops
    return {"steer": steer, "words": words, "internal": internal, "fluency_factor": fluency, "loop_factor": loops,
            "differs": bool(differs)}


def steer_score(rec: dict) -> float:
    """``steer`` of one result (see the module docstring)."""
    return steer_parts(rec)["steer"]


def _rank_text(rec: dict, key: str) -> str:
    rank = rec.get(f"{key}_rank")
    return "not measured" if rank is None else f"rank {rank:.3f} of {rec.get(f'{key}_null', '?')} texts"


def explain(rec: dict) -> str:
    """One line saying how a result's ``steer`` comes about."""
    p = steer_parts(rec)
    if not p["differs"]:
        return "steer 0: the text equals the unsteered one"
    drop = rec.get("fluency_drop")
    drop_s = "not measured" if drop is None else f"{drop:+.2f} nats/token"
    base_rep = rec.get("base_repetition")
    base_s = "" if base_rep is None else f", unsteered {float(base_rep):.2f}"
    return (f"steer {p['steer']:.3f} = (words {p['words']:.2f} [{rec.get('fire_hits', 0)} firing words, unsteered "
            f"{rec.get('base_fire_hits', 0)}; {_rank_text(rec, 'word')}; weight {_weight(rec, 'word'):.2f}] + "
            f"internal {p['internal']:.2f} [readback {_rank_text(rec, 'readback')}; weight "
            f"{_weight(rec, 'readback'):.2f}]) x fluency {p['fluency_factor']:.2f} [drop {drop_s}] x loops "
            f"{p['loop_factor']:.2f} [repetition {float(rec.get('repetition', 0) or 0):.2f}{base_s}]")
