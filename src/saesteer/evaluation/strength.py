"""How strongly to clamp each feature: a bisection per feature instead of a fixed grid of values.

For each feature, in multiples of its maximum activation on the reference text (``FactsTable``):

* ``change``: the smallest multiple (within ``lo .. hi``, to a factor ``(hi / lo) ** (1 / 2**steps)``) whose
  greedy continuation differs from the unsteered one;
* ``fluent``: the largest multiple from ``change`` up to ``hi`` whose continuation stays within the fluency
  threshold (at most 1 nat/token less likely under the unsteered model than the unsteered text,
  ``text_metrics.CLEAR_MAX_FLUENCY_DROP``).

Both are bisected on a log scale, all features at once: each step is one batched generation (one row per
feature, each at its own value), so ``2 * (steps + 2)`` generations in all. Steering is assumed monotone
in the strength (stronger clamps change more and read less fluently); the returned points are checked
values (the text at ``change`` differs, the text at ``fluent`` is fluent), not interpolations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from saesteer.errors import SaesteerError
from saesteer.evaluation.text_metrics import CLEAR_MAX_FLUENCY_DROP, mean_logprob


@dataclass(frozen=True)
class Strength:
    """The strengths found for one feature, as multiples of ``max_activation`` (None: not found in range)."""

    feature: int
    max_activation: float
    change: float | None
    """Smallest multiple found that changes the text."""
    fluent: float | None
    """Largest multiple found (at least ``change``) whose text stays fluent."""

    @property
    def best(self) -> float | None:
        """The strength to use: the strongest fluent one, else the first that changes the text."""
        return self.fluent if self.fluent is not None else self.change


class _Probe:
    """Generates each feature at a multiple of its max activation and tells change and fluency."""

    def __init__(self, steerer, features, scales, prompt, max_new_tokens, mode):
        self.st, self.features, self.scales = steerer, list(features), list(scales)
        self.kw = dict(prompt=prompt, max_new_tokens=max_new_tokens, mode=mode)
        base = steerer.generate(prompt, max_new_tokens=max_new_tokens)
        self.base_tokens, self.prompt_tokens = list(base.tokens), list(base.prompt_tokens)
        lm = steerer.lm
        self.base_fluency = mean_logprob(lm.model, self.prompt_tokens, [self.base_tokens],
                                         pad_token_id=lm.pad_token_id)[0]

    def __call__(self, idx: list[int], multiples: list[float]) -> list[tuple[bool, bool]]:
        """``(differs, fluent)`` for feature ``features[i]`` at ``multiples[j]``, per ``i`` in ``idx``."""
        if not idx:
            return []
        gens = self.st.batch_features([self.features[i] for i in idx],
                                      [m * self.scales[i] for i, m in zip(idx, multiples)], **self.kw)
        lm = self.st.lm
        flu = mean_logprob(lm.model, self.prompt_tokens, [g.tokens for g in gens], pad_token_id=lm.pad_token_id)
        out = []
        for g, f in zip(gens, flu):
            differs = list(g.tokens) != self.base_tokens
            drop = None if f is None or self.base_fluency is None else self.base_fluency - f
            out.append((differs, not differs or (drop is not None and drop <= CLEAR_MAX_FLUENCY_DROP)))
        return out


def _bisect(probe: _Probe, idx: list[int], lo: dict, hi: dict, steps: int, test: int) -> None:
    """Log-scale bisection of ``lo[i] < hi[i]`` where ``probe(...)[test]`` flips: ``lo`` keeps the side where it
    is False for ``test == 0`` (no change yet), True for ``test == 1`` (still fluent)."""
    for _ in range(steps):
        mids = [math.sqrt(lo[i] * hi[i]) for i in idx]
        for i, m, r in zip(idx, mids, probe(idx, mids)):
            moves_lo = (not r[0]) if test == 0 else r[1]
            if moves_lo:
                lo[i] = m
            else:
                hi[i] = m


def strength_search(steerer, features: Sequence[int], facts, *, prompt: str | None = None, max_new_tokens: int = 32,
                    lo: float = 0.125, hi: float = 4.0, steps: int = 4, mode: str = "delta") -> list[Strength]:
    """:class:`Strength` of each feature (see the module docstring); ``facts`` gives the max activations."""
    if not 0 < lo < hi or steps < 0:
        raise SaesteerError(f"need 0 < lo < hi and steps >= 0, got lo={lo}, hi={hi}, steps={steps}")
    features = [int(f) for f in features]
    scales = [float(facts.max_activation[f]) for f in features]
    probe = _Probe(steerer, features, scales, prompt, max_new_tokens, mode)
    live = [i for i, s in enumerate(scales) if s > 0]           # a feature that never fired has no scale
    at_lo = dict(zip(live, probe(live, [lo] * len(live))))
    at_hi = dict(zip(live, probe(live, [hi] * len(live))))
    change: dict[int, float] = {i: lo for i in live if at_lo[i][0]}
    todo = [i for i in live if not at_lo[i][0] and at_hi[i][0]]
    a, b = {i: lo for i in todo}, {i: hi for i in todo}
    _bisect(probe, todo, a, b, steps, test=0)
    change.update(b)
    # The largest fluent strength, from the change point up.
    fluent: dict[int, float] = {i: hi for i in change if at_hi[i][1]}
    start = [i for i in change if i not in fluent]
    at_change = dict(zip(start, probe(start, [change[i] for i in start])))
    todo = [i for i in start if at_change[i][1]]
    a, b = {i: change[i] for i in todo}, {i: hi for i in todo}
    _bisect(probe, todo, a, b, steps, test=1)
    fluent.update(a)
    return [Strength(f, s, change.get(i), fluent.get(i)) for i, (f, s) in enumerate(zip(features, scales))]


def best_scales(steerer, features: Sequence[int], facts, *, prompt: str | None = None, max_new_tokens: int = 32,
                mode: str = "delta", lo: float = 0.125, hi: float = 4.0, steps: int = 4) -> dict[int, float]:
    """``{feature: clamp of one unit}`` for a sweep with an automatic strength: value ``v`` clamps feature
    ``f`` to ``v * best * max_activation`` (:attr:`Strength.best`; ``hi`` where no strength in range changes
    the text, 0 for a feature that never fired)."""
    found = strength_search(steerer, features, facts, prompt=prompt, max_new_tokens=max_new_tokens, mode=mode,
                            lo=lo, hi=hi, steps=steps)
    return {s.feature: (s.best if s.best is not None else hi) * s.max_activation for s in found}
