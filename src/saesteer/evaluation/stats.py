"""What a comparison summarises per setting, and the statistics it uses: mean/sd/se and a paired sign-flip test."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Sequence

METRICS = ("kl", "hits_words", "hits_lens", "hits_tokens", "fluency", "repetition", "distinct", "score")
"""Per-setting summaries, in display order."""
TESTED = ("hits_words", "hits_lens", "fluency", "repetition")
"""Metrics with a paired test against the baseline (KL of the baseline is 0 by definition)."""
METRIC_LABELS = {
    "kl": "mean KL (nats)",
    "hits_words": "firing-word hits",
    "hits_lens": "promoted-token hits",
    "hits_tokens": "firing-token hits",
    "fluency": "fluency (mean log p)",
    "repetition": "repetition",
    "distinct": "distinct tokens",
    "score": "score",
}
_EXACT_FLIPS = 14
"""Up to this many samples the sign-flip test enumerates every flip; beyond, 20 000 seeded random flips."""

@dataclass(frozen=True)
class Stat:
    """Mean, standard deviation (n - 1) and standard error of one metric over a setting's samples."""

    mean: float | None
    sd: float | None
    se: float | None
    n: int

    @staticmethod
    def of(values: Sequence[float | None]) -> "Stat":
        xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not xs:
            return Stat(None, None, None, 0)
        m = sum(xs) / len(xs)
        if len(xs) < 2:
            return Stat(m, None, None, len(xs))
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
        return Stat(m, sd, sd / math.sqrt(len(xs)), len(xs))

    def to_dict(self) -> dict:
        return {"mean": self.mean, "sd": self.sd, "se": self.se, "n": self.n}


def paired_sign_flip_p(a: Sequence[float], b: Sequence[float], *, seed: int = 0) -> float | None:
    """Two-sided paired sign-flip (permutation) test of ``mean(a - b) == 0``.

    The share of the ``2^n`` ways of flipping the signs of the differences whose mean is at least as far from
    0 as the observed one (exact up to 14 pairs; beyond, 20 000 seeded random flips). None with fewer than two
    pairs. All differences 0 give 1.0. With ``n`` differences all of one sign and equal size the answer is
    ``2 / 2^n`` (the observed signs and their mirror image).
    """
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    if len(pairs) < 2:
        return None
    d = [x - y for x, y in pairs]
    observed = abs(sum(d))
    tol = 1e-9 * max(1.0, observed)
    if len(d) <= _EXACT_FLIPS:
        total = hits = 0
        for signs in itertools.product((1, -1), repeat=len(d)):
            total += 1
            hits += abs(sum(s * x for s, x in zip(signs, d))) >= observed - tol
        return hits / total
    rng = random.Random(seed)
    draws = 20_000
    hits = sum(abs(sum(x if rng.random() < 0.5 else -x for x in d)) >= observed - tol for _ in range(draws))
    return (hits + 1) / (draws + 1)
