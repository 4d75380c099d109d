"""Clamp strengths in the feature's own units: multiples of its maximum activation on reference text.

A clamp of 20 suits GPT-2's v5 SAE and wrecks a model whose features peak near 2, so the commands' default
strengths are multiples of each feature's largest activation on reference text (the cached feature facts:
text the model samples itself, or ``--text FILE``). An absolute value stays one flag away (``--value``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from saesteer.errors import SaesteerError
from saesteer.evaluation.feature_facts import feature_facts

DEFAULT_MULTIPLE = 2.0
"""Default strength: twice the strongest activation the feature reaches on its own."""

DEFAULT_MULTIPLES = (-2.0, 1.0, 2.0, 4.0)
"""Default strength scan (feature cards, compare): against the feature, at its peak, twice, four times."""


@dataclass(frozen=True)
class Scale:
    """Each feature's maximum activation on the reference text, and where that text came from."""

    max_activation: dict[int, float]
    source: str

    def value(self, feature: int, multiple: float) -> float:
        """``multiple`` times the feature's maximum activation; a feature that never fires is refused."""
        peak = self.max_activation[int(feature)]
        if peak <= 0:
            raise SaesteerError(f"feature {feature} never fires on {self.source}, so it has no scale for a"
                                " relative strength; pass an absolute value (--value V)")
        return float(multiple) * peak

    def describe(self, feature: int, multiple: float | None = None) -> str:
        """``feature 12: max activation 2.26 on ...`` (and ``, so 2 x = 4.52`` with a multiple)."""
        peak = self.max_activation[int(feature)]
        text = f"feature {feature}: max activation {peak:.3g} on {self.source}"
        if multiple is not None and peak > 0:
            text += f"; {multiple:g} x {peak:.3g} = {multiple * peak:.4g}"
        return text


def feature_scale(steerer, features: Iterable[int], *, reference_text=None, reference_samples: int = 256,
                  reference_length: int = 64, reference_seed: int = 0, cache_dir=None, progress: bool = False) -> Scale:
    """The :class:`Scale` of ``features`` of ``steerer``'s SAE, from the (cached) feature facts."""
    facts = feature_facts(steerer, reference_text=reference_text, samples=reference_samples,
                          length=reference_length, seed=reference_seed, cache_dir=cache_dir, progress=progress)
    peaks = facts.max_activation
    source = (f"{reference_text}" if reference_text is not None
              else f"the model's own text ({reference_samples} samples x {reference_length} tokens)")
    return Scale({int(f): float(peaks[int(f)]) for f in features}, source)


def absolute_values(scale: Scale, features: Sequence[int], multiples: Sequence[float]) -> dict[int, list[float]]:
    """Per feature, each multiple turned into a clamp value."""
    return {int(f): [scale.value(f, m) for m in multiples] for f in features}


def relative_settings(steerer, pairs: Sequence[tuple[int, float | None]], values: Sequence[float] | None, *,
                      relative: bool, progress: bool = False,
                      **reference) -> tuple[list[tuple[int, float | None]], list[float] | None, Scale]:
    """Clamp settings in each feature's own units, turned into absolute values: ``(pairs, values, scale)``.

    ``values`` (when given) are multiples for the single feature of ``pairs``; otherwise each pair's value is a
    multiple when ``relative`` (else absolute), and a pair without a value gets :data:`DEFAULT_MULTIPLE`.
    ``reference``: :func:`feature_scale`'s reference keywords."""
    feats = [f for f, _ in pairs]
    scale = feature_scale(steerer, feats, progress=progress, **reference)
    if values is not None:  # --relative --values: one multiple per setting; only one feature has one scale
        if len(set(feats)) != 1:
            raise SaesteerError("--relative --values needs a single --clamp feature (each feature has its own"
                                " scale); write --relative --clamp F=MULTIPLE for several")
        return list(pairs), [scale.value(feats[0], m) for m in values], scale
    pairs = [(f, scale.value(f, DEFAULT_MULTIPLE if v is None else v) if (relative or v is None) else v)
             for f, v in pairs]
    return pairs, None, scale
