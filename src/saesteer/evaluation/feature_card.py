"""A feature card: everything one look at an SAE feature should show, as plain data.

* its decoder direction's norm (a clamp to ``v`` adds ``(v - z) * W_dec[j]``, times the token's ``std``
  for layer-normalised SAEs);
* the tokens it promotes and suppresses most (logit lens, from ``feature_facts``);
* its firing tokens and words, maximum activation and firing frequency on the reference text;
* the contexts where it is most active, with the active token marked;
* steered samples at a few clamp values next to the unsteered continuation.

The reference text is ``reference_text`` (a file) or, by default, text the model samples itself; facts
are cached by ``feature_facts`` (the first call computes them for every feature of the SAE).

>>> card = feature_card(steerer, 123, values=[-20, 20])       # doctest: +SKIP
>>> print(card.to_text())       # a terminal; in a notebook, ``card`` alone renders as HTML  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from saesteer.errors import SaesteerError
from saesteer.evaluation.compare_config import FeatureCardConfig
from saesteer.evaluation.facts_table import TokenScore
from saesteer.evaluation.feature_facts import feature_facts
from saesteer.evaluation.report import card_fragment, card_page, card_text
from saesteer.evaluation.token_text import token_pieces
from saesteer.io import atomic_write_text
from saesteer.strength import DEFAULT_MULTIPLES, Scale, feature_scale

DEFAULT_VALUES = (-20.0, 10.0, 20.0, 40.0)
"""Clamp values of the card's steered samples when none are given (the practical session clamps to 20)."""


Token = TokenScore
"""A token (its text) with a number: a logit (logit lens) or an activation (firing tokens)."""


@dataclass(frozen=True)
class Context:
    """A stretch of reference text around one of the feature's top activations."""

    activation: float
    pieces: list[str]
    """Token texts, in order."""
    index: int
    """Which of ``pieces`` is the active token."""

    @property
    def before(self) -> str:
        return "".join(self.pieces[:self.index])

    @property
    def token(self) -> str:
        return self.pieces[self.index]

    @property
    def after(self) -> str:
        return "".join(self.pieces[self.index + 1:])


@dataclass(frozen=True)
class SteeredSample:
    """The continuation of the card's prompt with the feature clamped to ``value`` (None: unsteered)."""

    value: float | None
    tokens: list[int]
    text: str
    """As ``Steerer.generate`` gives it (the continuation decoded alone)."""
    shown: str
    """As it reads after the prompt (``compare.token_pieces``: SentencePiece keeps its leading space)."""


@dataclass
class FeatureCard:
    """One feature at a glance (see the module docstring). ``to_text`` for terminals, ``_repr_html_`` for
    notebooks, ``to_dict`` for JSON."""

    feature: int
    hook: str
    sae: str
    decoder_norm: float
    max_activation: float
    frequency: float
    promoted: list[Token] = field(default_factory=list)
    suppressed: list[Token] = field(default_factory=list)
    firing_tokens: list[Token] = field(default_factory=list)
    firing_words: list[str] = field(default_factory=list)
    contexts: list[Context] = field(default_factory=list)
    prompt: str | None = None
    mode: str = "delta"
    unsteered: SteeredSample | None = None
    """The unsteered continuation of ``prompt`` (None when the card has no steered samples)."""
    samples: list[SteeredSample] = field(default_factory=list)
    reference: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        for c, ctx in zip(d["contexts"], self.contexts):
            c.update(before=ctx.before, token=ctx.token, after=ctx.after)
        return d

    def to_text(self, *, color: bool = False, width: int = 100) -> str:
        """A plain-text card; the active token of each context is shown as ``[[token]]``."""
        return card_text(self, color=color, width=width)

    def to_html(self) -> str:
        """A self-contained HTML page with this card."""
        return card_page(self)

    def save_html(self, path) -> None:
        atomic_write_text(path, self.to_html())

    def _repr_html_(self) -> str:
        return card_fragment(self)


def _tokens(scores, n: int) -> list[Token]:
    return [Token(int(s.id), s.text, float(s.value)) for s in list(scores)[:n]]


def scaled_values(steerer, feature: int, multiples: Sequence[float] | None, config: FeatureCardConfig, *,
                  progress: bool = False) -> tuple[list[float], list[float], Scale]:
    """``(multiples, values, scale)``: the card's steered-sample values as ``multiples`` (default
    :data:`~saesteer.strength.DEFAULT_MULTIPLES`) of the feature's max activation on the reference text."""
    multiples = list(DEFAULT_MULTIPLES if multiples is None else multiples)
    scale = feature_scale(steerer, [feature], progress=progress, **config.scale_keywords())
    return multiples, [scale.value(feature, m) for m in multiples], scale


def feature_card(steerer, feature: int, config: FeatureCardConfig | None = None, *, facts=None,
                 progress: bool = False, **settings) -> FeatureCard:
    """The :class:`FeatureCard` of ``feature`` of ``steerer``'s SAE.

    ``values``: clamp values for the steered samples (default :data:`DEFAULT_VALUES`; ``()`` for none;
    ``relative``: multiples of the feature's max activation, default -2, 1, 2, 4), each a continuation of
    ``prompt`` (None: BOS alone) as ``Steerer.generate`` gives it. ``facts``: a ``FactsTable``, or None to get
    it from ``feature_facts`` (cached; on ``reference_text`` or on text the model samples). ``context``: tokens
    shown before the active token. The settings are a :class:`FeatureCardConfig` (``config``) and/or its
    fields as keywords.
    """
    c = FeatureCardConfig.build(config, settings, caller="feature_card")
    sae = steerer.need_sae()
    hook = steerer.need_hook()
    if isinstance(feature, bool) or not isinstance(feature, int):
        raise SaesteerError(f"feature must be an integer, got {feature!r}")
    sae.check_feature(feature)
    if facts is None:
        facts = feature_facts(steerer, **c.facts_keywords(), progress=progress, engine=steerer.engine)
    f = facts[feature]
    lm = steerer.lm
    contexts = [Context(float(act), token_pieces(lm, ids), int(idx))
                for act, ids, idx in facts.examples(feature, context=c.context)[:c.n_contexts]]
    if c.relative:
        values = scaled_values(steerer, feature, c.values, c, progress=progress)[1]
    else:
        values = list(DEFAULT_VALUES if c.values is None else c.values)
    unsteered, samples = _steered_samples(steerer, feature, values, c) if values else (None, [])
    return FeatureCard(
        feature=feature, hook=hook, sae=sae.cfg.source or "",
        decoder_norm=float(sae.W_dec[feature].detach().float().norm()),
        max_activation=f.max_activation, frequency=f.frequency,
        promoted=_tokens(f.lens_top, c.n_tokens), suppressed=_tokens(f.lens_bottom, c.n_tokens),
        firing_tokens=_tokens(f.firing_tokens, c.n_tokens), firing_words=list(f.firing_words)[:c.n_tokens],
        contexts=contexts, prompt=c.prompt, mode=c.mode, unsteered=unsteered, samples=samples,
        reference=dict(facts.meta.get("reference", {})),
    )


def _steered_samples(steerer, feature: int, values: list[float], c: FeatureCardConfig):
    """The unsteered continuation of the card's prompt, and one with the feature clamped to each value."""
    kw = dict(max_new_tokens=c.max_new_tokens, mode=c.mode, temperature=c.temperature, top_p=c.top_p, seed=c.seed,
              prepend_bos=c.prepend_bos)

    def sample(value):
        g = steerer.generate(c.prompt, clamps=None if value is None else {feature: float(value)}, **kw)
        shown = "".join(token_pieces(steerer.lm, g.tokens, g.prompt_tokens))
        return SteeredSample(None if value is None else float(value), list(g.tokens), g.text, shown)

    return sample(None), [sample(v) for v in values]
